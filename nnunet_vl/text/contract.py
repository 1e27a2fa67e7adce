"""Read and validate the text a dataset carries: per-case reports and per-class label texts.

A dataset.json may hold (all optional, stock nnU-Net ignores them):
  "reports":     {"case": "text", ...} | "reports.json" | "reports.csv" | "reports.tsv"
                 (or a "report" key inside a per-case entry of nnU-Net's "dataset" key)
  "label_texts": {"label": "definition" | {concept: text}} | "<corpus name>" | "<file.json>"
  "text_encoder": a local Hugging Face directory, an installed package's model or an alias
  "fixed_side_names": ["left ventricle", ...] structure names that never swap under mirroring (text.directions)
  "lateral_pairs": [["kidney_left", "kidney_right"], ...] left/right labels whose ids swap under left-right
                 mirroring, replacing the detection (text.laterality); [] turns pairing off
Every problem is collected with the file it concerns and the fix, so a user sees them all at once.
Label texts without any reports (class text only, BiPVL-Seg's setting) are valid: every case gets an empty report.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_vl.text.corpora import CONCEPTS, CorpusError, available_corpora, label_texts_from_corpus
from nnunet_vl.text.directions import FIXED_SIDE_NAMES_KEY, check_fixed_side_names
from nnunet_vl.text.laterality import LATERAL_PAIRS_KEY, check_lateral_pairs

BACKGROUND_TEXT = {
    "definition": "Background: every image region that belongs to none of the labelled structures.",
}


@dataclass(frozen=True)
class TextProblem:
    """One thing wrong with a dataset's text, with the file it concerns and how to fix it."""

    file: str
    message: str
    fix: str
    severity: str = "error"  # "error" stops planning/training; "warning" is reported only

    def __str__(self) -> str:
        return f"[{self.severity}] {self.file}: {self.message} -> {self.fix}"


class TextContractError(ValueError):
    """Raised with every error-level problem of a dataset's text, one per line."""

    def __init__(self, problems: list[TextProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class DatasetText:
    """The validated text of one dataset."""

    reports: dict[str, str]
    label_texts: dict[str, dict[str, str]]  # label name -> concept -> text; includes "background"
    text_encoder: str | None
    train_cases: list[str]
    test_cases: list[str]
    problems: list[TextProblem] = field(default_factory=list)
    class_text_only: bool = False  # label_texts and no reports at all: BiPVL-Seg's own setting

    @property
    def errors(self) -> list[TextProblem]:
        return [p for p in self.problems if p.severity == "error"]

    def training_reports(self) -> dict[str, str]:
        """The reports, plus an empty one for each training case without (class text only, or allowed missing)."""
        return {**{case: "" for case in self.train_cases if case not in self.reports}, **self.reports}

    def raise_on_errors(self) -> None:
        if self.errors:
            raise TextContractError(self.errors)


def _decode(raw: bytes, where: str, problems: list[TextProblem], report_lines: bool = True) -> tuple[str, dict[int, str]]:
    """UTF-8 text of a file; undecodable bytes become U+FFFD so the rest is still read.

    Returns the text and, per line number holding a bad byte, what was found there. With report_lines the
    bad lines are reported here; otherwise the caller reports them with what it knows of the line (the case).
    """
    try:
        return raw.decode("utf-8-sig"), {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, str] = {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[number] = f"byte 0x{line[e.start]:02X} at column {e.start + 1}"
    if report_lines:
        for number, found in bad.items():
            problems.append(TextProblem(where, f"line {number} is not UTF-8 text ({found})",
                                        "re-save the file with UTF-8 encoding"))
    return raw.decode("utf-8-sig", errors="replace"), bad


def _read_reports_table(path: Path, text: str, problems: list[TextProblem],
                        lines: dict[str, int]) -> dict[str, object]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "case_id" not in columns or "report" not in columns:
        problems.append(TextProblem(str(path), f"needs the columns 'case_id' and 'report', found {columns}",
                                    "rename the header row to case_id,report"))
        return {}
    reports: dict[str, object] = {}
    for row in reader:
        row = {k.strip().lower(): v for k, v in row.items() if k is not None}
        case = (row.get("case_id") or "").strip()
        if case in reports:
            problems.append(TextProblem(str(path), f"case '{case}' has more than one report",
                                        "keep one row per case_id"))
        reports[case] = row.get("report")
        lines[case] = reader.line_num
    return reports


def _json_key_lines(text: str, keys: list[str]) -> dict[str, int]:
    """Line number of each key's first occurrence as a JSON object key in text."""
    lines = {}
    for key in keys:
        at = text.find(json.dumps(key, ensure_ascii=False))
        if at < 0:  # written with \u escapes
            at = text.find(json.dumps(key))
        if at >= 0:
            lines[key] = text.count("\n", 0, at) + 1
    return lines


def _report_bad_bytes(path: Path, reports: dict[str, object], lines: dict[str, int], bad: dict[int, str],
                      problems: list[TextProblem]) -> None:
    """One problem per undecodable line, naming the case whose report holds it where one does."""
    cases_at = {line: case for case, line in lines.items()}
    for number, found in bad.items():
        case = cases_at.get(number)
        where = f"line {number}, case '{case}'" if case else f"line {number}"
        problems.append(TextProblem(str(path), f"{where}: not UTF-8 text ({found})",
                                    "re-save the file with UTF-8 encoding"))
        if case is not None:
            reports.pop(case, None)  # reported here once, not again as undecodable characters


def read_reports_file(path: Path, problems: list[TextProblem], lines: dict[str, int] | None = None
                      ) -> dict[str, object]:
    """Reports from a .json object or a .csv/.tsv table with columns case_id,report.

    A bad byte is reported with its line (and case) and the rest of the file is still read. lines, if given,
    receives the line number of each case's row in a table.
    """
    if not path.is_file():
        problems.append(TextProblem(str(path), "reports file does not exist",
                                    "fix the 'reports' path in dataset.json (relative to the dataset folder)"))
        return {}
    text, bad = _decode(path.read_bytes(), str(path), problems, report_lines=False)
    lines = {} if lines is None else lines
    if path.suffix.lower() in (".csv", ".tsv"):
        reports = _read_reports_table(path, text, problems, lines)
        _report_bad_bytes(path, reports, lines, bad, problems)
        return reports
    try:
        reports = json.loads(text)
    except json.JSONDecodeError as e:
        _report_bad_bytes(path, {}, {}, bad, problems)
        problems.append(TextProblem(str(path), f"is not valid JSON ({e.msg}, line {e.lineno})",
                                    "write a JSON object {\"case_id\": \"report\", ...}"))
        return {}
    if not isinstance(reports, dict):
        problems.append(TextProblem(str(path), "must hold a JSON object mapping case ids to reports",
                                    "write {\"case_id\": \"report\", ...}"))
        return {}
    if bad:
        undecodable = [c for c, r in reports.items() if isinstance(r, str) and "\ufffd" in r]
        _report_bad_bytes(path, reports, _json_key_lines(text, undecodable), bad, problems)
    return reports


def _collect_reports(folder: Path, dataset_json: dict, problems: list[TextProblem],
                     lines: dict[str, int]) -> tuple[dict[str, object], str]:
    spec = dataset_json.get("reports")
    where = str(folder / "dataset.json")
    reports: dict[str, object] = {}
    if isinstance(spec, dict):
        reports.update(spec)
    elif isinstance(spec, str):
        where = str(folder / spec)
        reports.update(read_reports_file(folder / spec, problems, lines))
    elif spec is not None:
        problems.append(TextProblem(where, "'reports' must be an object or a file path",
                                    "use {\"case\": \"text\"} or \"reports.json\""))
    for case, entry in (dataset_json.get("dataset") or {}).items():
        if isinstance(entry, dict) and "report" in entry:
            reports[case] = entry["report"]
    return reports, where


def _clean_reports(raw: dict[str, object], where: str, problems: list[TextProblem],
                   lines: dict[str, int] | None = None) -> dict[str, str]:
    reports = {}
    lines = lines or {}
    for case, text in raw.items():
        at = f"line {lines[case]}: " if case in lines else ""
        if isinstance(text, bytes):
            text, bad = _decode(text, f"{where} (case '{case}')", problems)
            if bad:
                continue
        if not isinstance(text, str) or not text.strip():
            problems.append(TextProblem(where, f"{at}report of case '{case}' is empty",
                                        "write the report, or remove the case's entry and plan with "
                                        "--allow-missing-reports"))
            continue
        if "\ufffd" in text:
            problems.append(TextProblem(where, f"{at}report of case '{case}' contains undecodable characters (U+FFFD)",
                                        "re-export the reports as UTF-8"))
            continue
        reports[str(case)] = " ".join(text.split())
    return reports


def load_reports_file(path: str | os.PathLike) -> dict[str, str]:
    """Reports from a .json/.csv/.tsv file given on its own (e.g. `--reports`); raises TextContractError with
    every problem (not UTF-8, duplicates, empty), each naming the file and the line or case."""
    problems: list[TextProblem] = []
    lines: dict[str, int] = {}
    reports = _clean_reports(read_reports_file(Path(path), problems, lines), str(path), problems, lines)
    if problems:
        raise TextContractError(problems)
    return reports


def _normalise_label_entry(label: str, value: object, where: str,
                           problems: list[TextProblem]) -> dict[str, str] | None:
    if isinstance(value, str):
        value = {"definition": value}
    if not isinstance(value, dict):
        problems.append(TextProblem(where, f"label text of '{label}' must be a string or an object of concepts",
                                    f"use a definition string or keys from {list(CONCEPTS)}"))
        return None
    unknown = [k for k in value if k not in CONCEPTS]
    if unknown:
        problems.append(TextProblem(where, f"label '{label}' has unknown concepts {unknown}",
                                    f"use only {list(CONCEPTS)}"))
    entry = {k: " ".join(str(v).split()) for k, v in value.items() if k in CONCEPTS and str(v).strip()}
    if not entry:
        problems.append(TextProblem(where, f"label text of '{label}' is empty", "write at least a definition"))
        return None
    return entry


def _collect_label_texts(folder: Path, dataset_json: dict, label_names: list[str],
                         problems: list[TextProblem]) -> dict[str, dict[str, str]]:
    spec = dataset_json.get("label_texts")
    where = str(folder / "dataset.json")
    raw: dict = {}
    if isinstance(spec, str):
        if (folder / spec).is_file():
            where = str(folder / spec)
            text, _ = _decode((folder / spec).read_bytes(), where, problems)
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(TextProblem(where, f"is not valid JSON ({e.msg})", "fix the JSON syntax"))
        else:
            try:
                raw = label_texts_from_corpus(spec, label_names)
            except CorpusError as e:
                problems.append(TextProblem(where, str(e), f"use a file path relative to {folder} or one of the "
                                                           f"corpora {available_corpora()}"))
    elif isinstance(spec, dict):
        raw = spec
    elif spec is not None:
        problems.append(TextProblem(where, "'label_texts' must be an object, a corpus name or a file",
                                    "see README section 'Text in dataset.json'"))
    known = {n.lower(): n for n in label_names}
    label_texts: dict[str, dict[str, str]] = {}
    rejected: set[str] = set()  # given but invalid: already reported as an error
    for label, value in raw.items():
        name = known.get(str(label).lower())
        if name is None:
            problems.append(TextProblem(where, f"label_texts names unknown label '{label}'",
                                        f"use one of the labels {label_names}"))
            continue
        entry = _normalise_label_entry(name, value, where, problems)
        if entry is not None:
            label_texts[name] = entry
        else:
            rejected.add(name)
    for name in label_names:
        if name not in label_texts:
            # a label without text is described by its own name; the background by a generic sentence
            label_texts[name] = dict(BACKGROUND_TEXT) if name == "background" else {"definition": name.replace("_", " ")}
            if spec is not None and name != "background" and name not in rejected:
                problems.append(TextProblem(where, f"label '{name}' has no label text; its name is used instead",
                                            "add it under label_texts", severity="warning"))
    return label_texts


def dataset_case_ids(folder: Path, dataset_json: dict) -> tuple[list[str], list[str]]:
    """Training case ids (as nnU-Net finds them) and test case ids (imagesTs)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    train = sorted(get_filenames_of_train_images_and_targets(str(folder), dict(dataset_json)).keys())
    ending = dataset_json["file_ending"]
    test_dir = folder / "imagesTs"
    test = sorted({f.name[: -len(ending) - 5] for f in test_dir.iterdir() if f.name.endswith(ending)}) \
        if test_dir.is_dir() else []
    return train, test


def load_dataset_text(folder: str | os.PathLike, dataset_json: dict | None = None,
                      require_reports: bool = True) -> DatasetText:
    """Read and validate the text of a raw nnU-Net dataset folder; problems are collected, not raised."""
    folder = Path(folder)
    if dataset_json is None:
        dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    problems: list[TextProblem] = []
    lines: dict[str, int] = {}
    raw_reports, where = _collect_reports(folder, dataset_json, problems, lines)
    unreadable = not raw_reports and any(p.severity == "error" for p in problems)  # one error says it all
    reports = _clean_reports(raw_reports, where, problems, lines)
    train, test = dataset_case_ids(folder, dataset_json)
    known = set(train) | set(test)
    for case in sorted(set(reports) - known):
        at = f"line {lines[case]}: " if case in lines else ""
        problems.append(TextProblem(where, f"{at}report for unknown case '{case}' (no such image in imagesTr/imagesTs)",
                                    "fix the case id or remove the report"))
        del reports[case]
    class_text_only = False
    if dataset_json.get("reports") is None and not raw_reports:
        class_text_only = dataset_json.get("label_texts") is not None
        if require_reports and not class_text_only:
            problems.append(TextProblem(str(folder / "dataset.json"), "dataset has no reports",
                                        "add \"reports\": \"reports.json\" (case id -> report) or \"label_texts\" "
                                        "(class descriptions) to dataset.json, or plan with --allow-missing-reports "
                                        "to use the label names as text"))
    elif not unreadable:
        for case in train:
            if case not in reports and not any(f"case '{case}'" in p.message for p in problems):
                problems.append(TextProblem(where, f"training case '{case}' has no report",
                                            "add its report, or plan with --allow-missing-reports",
                                            severity="error" if require_reports else "warning"))
        for case in test:
            if case not in reports:
                problems.append(TextProblem(where, f"test case '{case}' has no report",
                                            "add its report (needed to predict it with text)", severity="warning"))
    label_texts = _collect_label_texts(folder, dataset_json, list(dataset_json["labels"].keys()), problems)
    if FIXED_SIDE_NAMES_KEY in dataset_json:
        problems += [TextProblem(str(folder / "dataset.json"), message, "give a list of structure names, e.g. "
                                 "[\"left ventricle\", \"superior vena cava\"]", severity)
                     for message, severity in check_fixed_side_names(dataset_json[FIXED_SIDE_NAMES_KEY])]
    if LATERAL_PAIRS_KEY in dataset_json:
        problems += [TextProblem(str(folder / "dataset.json"), message, "give [[\"left label\", \"right label\"], "
                                 "...] with label names of this dataset, each label in one pair at most ([] for none)")
                     for message in check_lateral_pairs(dataset_json[LATERAL_PAIRS_KEY], dataset_json["labels"])]
    return DatasetText(reports, label_texts, dataset_json.get("text_encoder"), train, test, problems, class_text_only)


def class_text_only_note(dataset: str) -> str:
    """The one line check and planning print for a dataset with label texts and no reports."""
    return (f"{dataset}: class text only (label_texts, no reports): every case is planned with an empty report; "
            f"nnUNetTrainerBiPVL fuses the class descriptions (predict new cases with --text-mode none); "
            f"nnUNetTrainerTMCA reads only reports, so its text is one empty report for every case and carries no "
            f"information")
