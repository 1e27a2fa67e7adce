"""Per-case text for training and prediction: report lookup, text modes, direction swaps, tokenization."""
from __future__ import annotations

import hashlib
import itertools
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.text.directions import ANATOMICAL_AXES, DirectionWords, array_axes_to_anatomical, direction_words
from nnunet_vl.text.laterality import class_text_swaps
from nnunet_vl.text.tokens import TextTokenizer

TEXT_MODES = ("report", "none", "shuffled")


class MissingReportError(ValueError):
    pass


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The files tokenizer.save_pretrained writes, as bytes (to store them in a checkpoint)."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            (Path(d) / name).write_bytes(content)
        return AutoTokenizer.from_pretrained(d, local_files_only=True)


def shuffled_partner(reports: dict[str, str], case: str, order: Sequence[str] | None = None) -> str:
    """The case whose report `--text-mode shuffled` gives to `case`: a fixed other case with another report.

    order: sorted(reports), when the caller already holds it."""
    others = [c for c in (sorted(reports) if order is None else order) if reports[c] != reports[case]]
    if not others:
        return case
    digest = int(hashlib.sha1(case.encode()).hexdigest(), 16)
    return others[digest % len(others)]


LabelTexts = Sequence[tuple[str, dict[str, str]]]  # (class name, concept -> text) in network output order


def swapped_label_texts(label_texts: LabelTexts, axes: Sequence[str], directions: DirectionWords,
                        lateral_pairs: Sequence[Sequence[str]] = ()) -> list[tuple[str, dict[str, str]]]:
    """The class texts as they read for an image mirrored along the anatomical axes: every name and concept
    sentence with those axes' direction words swapped. A lateral pair member keeps its left-right words (its label
    id swaps instead, so its text still describes the label it names); unchanged classes are returned as given."""
    paired = {name for pair in lateral_pairs for name in pair}
    out = []
    for name, concepts in label_texts:
        own = [a for a in axes if not (a == "left_right" and name in paired)]
        if not own:
            out.append((name, concepts))
            continue
        spoken = name.replace("_", " ")  # as class_description writes it ("left_lung" is one word to a regex)
        swapped_name = directions.swap(spoken, own)
        swapped = {c: directions.swap(t, own) for c, t in concepts.items()}
        changed = swapped_name != spoken or swapped != concepts
        out.append((swapped_name, swapped) if changed else (name, concepts))
    return out


class TextProvider:
    """Builds TextInputs for a list of cases.

    direction_axes maps anatomical axes to the spatial array axes of the configuration; a sample
    mirrored along such an axis gets its report with that axis's direction words swapped, and its class
    texts too: the class tensors under each swap that changes some class text are built once here, and a
    batch whose samples need different ones carries them with a per-sample index (TextInputs.class_set).
    lateral_pairs (the plans' `lateral_pairs`) are the classes whose left-right words never swap.
    fixed_side_names (dataset.json's `fixed_side_names`) adds structure names that never swap to the shipped ones.
    """

    def __init__(self, tokenizer: TextTokenizer, label_texts: LabelTexts,
                 reports: dict[str, str], direction_axes: dict[str, int | None],
                 report_token_ids: dict[str, list[int]] | None = None, source: str = "reports",
                 fixed_side_names: Sequence[str] = (), lateral_pairs: Sequence[Sequence[str]] = ()):
        self.tokenizer = tokenizer
        self.directions = direction_words(tuple(fixed_side_names))
        self.label_texts = [(name, dict(concepts)) for name, concepts in label_texts]
        self.lateral_pairs = tuple(tuple(p) for p in lateral_pairs)
        self.label_tensors = tokenizer.label_tensors(label_texts)
        self.direction_axes = direction_axes
        # class tensor sets: 0 = as written, then one per distinct swapped version; _class_set_of: swapped axes -> set
        self.class_sets: list[dict[str, torch.Tensor]] = [self.label_tensors]
        self.class_set_texts: list[list[tuple[str, dict[str, str]]]] = [self.label_texts]
        self._class_set_of: dict[frozenset[str], int] = {}
        self._named_by_class_texts: dict[tuple, set[str]] = {}
        self._class_set_axes = frozenset(a for a in ANATOMICAL_AXES if direction_axes.get(a) is not None
                                         and a in self.class_text_named_axes())
        self._build_class_sets()
        self.reports = reports
        self.report_token_ids = report_token_ids or {}
        self.source = source
        self._shuffle_order = sorted(reports)

    def _build_class_sets(self) -> None:
        """Tokenize the class texts once under every combination of the mapped axes their words name."""
        axes = [a for a in ANATOMICAL_AXES if a in self._class_set_axes]
        for n in range(1, len(axes) + 1):
            for combination in itertools.combinations(axes, n):
                texts = swapped_label_texts(self.label_texts, combination, self.directions, self.lateral_pairs)
                if texts == self.label_texts:
                    continue  # e.g. only a pair member names this axis
                if texts not in self.class_set_texts:
                    self.class_set_texts.append(texts)
                    with warnings.catch_warnings():  # truncation was reported for the texts as written
                        warnings.simplefilter("ignore")
                        self.class_sets.append(self.tokenizer.label_tensors(texts))
                self._class_set_of[frozenset(combination)] = self.class_set_texts.index(texts)

    def class_set(self, flipped_axes: Sequence[int]) -> int:
        """Index into class_sets of the class texts for a sample mirrored along these spatial array axes."""
        swapped = frozenset(array_axes_to_anatomical(self.direction_axes, flipped_axes))
        return self._class_set_of.get(swapped & self._class_set_axes, 0)

    def class_text_named_axes(self, lateral_pairs: Sequence[Sequence[str]] | None = None) -> set[str]:
        """The anatomical axes whose directions the class texts name (names and concept sentences). A lateral pair
        member's left-right words do not count (its label id swaps instead); lateral_pairs None: the provider's."""
        pairs = self.lateral_pairs if lateral_pairs is None else tuple(tuple(p) for p in lateral_pairs)
        if pairs not in self._named_by_class_texts:
            swaps = class_text_swaps(self.label_texts, pairs, self.directions)
            self._named_by_class_texts[pairs] = {axis for by_axis in swaps.values() for axis in by_axis}
        return set(self._named_by_class_texts[pairs])

    def class_tensors(self, flipped_axes: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """The TextInputs class fields of a batch: the one set all samples share, or the sets the samples use
        stacked (S, C, ...) with each sample's index (`class_set`)."""
        sets = [self.class_set(flips) for flips in flipped_axes]
        used = sorted(set(sets))
        if len(used) <= 1:
            return dict(self.class_sets[used[0] if used else 0])
        stacked = {k: torch.stack([self.class_sets[s][k] for s in used]) for k in self.label_tensors
                   if k != "concept_present"}
        return {**stacked, "concept_present": self.label_tensors["concept_present"],
                "class_set": torch.tensor([used.index(s) for s in sets], dtype=torch.long)}

    def report(self, case: str, mode: str = "report") -> str:
        if mode == "none":
            return ""
        if case not in self.reports:
            raise MissingReportError(f"no report for case '{case}' in {self.source}: add it (or pass --reports FILE "
                                     f"with it), or predict with --text-mode none")
        if mode == "report":
            return self.reports[case]
        if mode == "shuffled":
            return self.reports[self.shuffled_partner(case)]
        raise ValueError(f"unknown text mode '{mode}': use one of {TEXT_MODES}")

    def shuffled_partner(self, case: str) -> str:
        """A fixed other case whose report differs (deterministic, independent of call order)."""
        return shuffled_partner(self.reports, case, self._shuffle_order)

    def check_reports(self, cases: Sequence[str], mode: str = "report") -> None:
        """Fail before any work when cases lack the report the text mode needs."""
        missing = [c for c in cases if c not in self.reports] if mode != "none" else []
        if missing:
            raise MissingReportError(f"{len(missing)} case(s) have no report in {self.source}: "
                                     f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. Pass "
                                     f"--reports FILE with their reports, or predict with --text-mode none")

    def anatomical_axes_named(self, case: str, mode: str = "report") -> set[str]:
        return self.directions.named_axes(self.report(case, mode)) if mode != "none" else set()

    def inputs(self, cases: Sequence[str], flipped_axes: Sequence[Sequence[int]] | None = None,
               mode: str = "report") -> TextInputs:
        """TextInputs for the cases; flipped_axes[i] lists the spatial array axes mirrored in sample i (its report's
        and class texts' direction words of those axes swap)."""
        flipped_axes = flipped_axes or [()] * len(cases)
        rows: list[torch.Tensor] = []
        todo: dict[int, str] = {}
        for i, (case, flips) in enumerate(zip(cases, flipped_axes)):
            swapped = array_axes_to_anatomical(self.direction_axes, flips)
            text = self.report(case, mode)
            if swapped:
                text = self.directions.swap(text, swapped)
            cached = self.report_token_ids.get(case) if mode == "report" and not swapped else None
            if cached is not None and text == self.reports.get(case):
                rows.append(torch.tensor(cached, dtype=torch.long))
            else:
                rows.append(torch.empty(0, dtype=torch.long))
                todo[i] = text
        ids = torch.full((len(cases), self.tokenizer.max_report_tokens), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row[: ids.shape[1]]
            mask[i, :len(row)] = 1
        if todo:
            enc_ids, enc_mask = self.tokenizer.encode(list(todo.values()), self.tokenizer.max_report_tokens,
                                                      [cases[i] for i in todo])
            index = torch.tensor(list(todo))
            ids[index], mask[index] = enc_ids, enc_mask
        return TextInputs(report_ids=ids, report_mask=mask, **self.class_tensors(flipped_axes))
