"""Real 3D data: left-atrium LGE-MRI (80 volumes, one foreground class, a class description, no reports: BiPVL-Seg's
own setting). Does the class text help as a prior, or at least cost nothing, at one CPU budget?

Steps, each the command a user would type, with nnU-Net's folders in the work directory:
- convert the shared folder to two nnU-Net raw datasets (images and labels are symlinks, nothing is copied):
  Dataset960_LeftAtrium with the folder's `label_texts` (the description), and Dataset961_LeftAtriumNameOnly, same
  images, whose `label_texts` is only the label name (the ablation: the text branch without the description's words);
- `nnunet_vl check`, then `nnUNetv2_plan_and_preprocess_vl -c 3d_fullres` for each (the image part of both plans
  must be the same; the script checks it);
- one splits_final.json (nnU-Net's own 5-fold split, seed 12345) written for the first dataset and copied to the
  second, so fold 0 is the same 64 / 16 cases in every row;
- `nnUNetv2_train D 3d_fullres 0 -tr <budget trainer>` per row: nnUNetTrainer, nnUNetTrainerBiPVL with each
  class-text option (CLASS_TEXT_OPTIONS: a preset key, each planned by the planner with `--preset FILE
  -overwrite_plans_name`, so a row reads what it says whatever the preset's default; listed as "not run (option not
  built)" while its key exists in no preset nor planning source), BiPVL on the name-only dataset; TMCA only with --tmca (no reports here). The
  budget trainers are written into the work dir (nnUNet_extTrainer);
- scores: fold 0's validation cases predicted without test-time mirroring (`nnUNetv2_predict`, VL rows
  `nnUNetv2_predict_vl`), the same protocol for every row, scored by nnU-Net's evaluation (Dice, per case): the
  comparisons and the goal use these; nnU-Net's own final validation (validation/summary.json, from the
  preprocessed data; without test-time mirroring unless --final-validation-mirroring, which costs 8x the
  prediction time in 3D) is reported beside them;
- time per epoch: nnU-Net's "Epoch time" log lines; peak memory: the max RSS of the `nnUNetv2_train` process as the
  kernel reports it to os.wait4 (ru_maxrss: the largest of that process and the worker processes it reaped, not
  their sum; the final validation included).

Rows resume one by one: a scored row is reused, a trained one only validated (--val), an interrupted one continues
(--c); a row whose work dir is gone is taken from <out>/real3d.json when that was written at the same budget and
validation cases (its code commit is shown beside its run; --retrain trains it again). nnU-Net's training is not seeded: one run per row; `--repeat N` adds runs 2..N as further rows (trainer name
suffix `_run<k>`, own output folders), resumable like the first. Writes <out>/real3d.{json,md,png}.

    python benchmarks/real3d.py                          # 10 epochs x 50 iterations, 1 run per row
    python benchmarks/real3d.py --repeat 2               # a second run of every row (adds rows; the first are reused)
    python benchmarks/real3d.py --smallest               # plumbing check: 8 train / 4 val, 1 x 2 iterations
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "la_mri_stride2"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR = DEFAULT_OUT / "work_real3d"
DEFAULT_WORKDIR_SMALLEST = DEFAULT_OUT / "work_real3d_smallest"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
TRAINER_MODULE = "real3d_budgets.py"
DATASETS = {"description": (960, "LeftAtrium"), "name_only": (961, "LeftAtriumNameOnly")}
SPLIT_SEED = 12345  # nnU-Net's own seed for splits_final.json
SMALLEST_SIZES = {"train": 8, "val": 4}
SMALLEST_BUDGET = (1, 2, 1)  # epochs, iterations, validation iterations per epoch
GOAL_MARGIN = 0.005  # Dice: every VL row >= image-only - 0.5 points
GOAL = "every VL row's mean Dice >= image-only's - 0.5 Dice points, same budget, same fold-0 validation cases"
TMCA_REASON = ("not run: TMCA reads only reports and this dataset has none, so its text is one empty report for "
               "every case and carries no information (its trainer logs this); --tmca trains it as an architecture "
               "control")


@dataclass(frozen=True)
class ClassTextOption:
    """One way BiPVL reads a class description. `key` None: the plans as planned; else a plans copy whose
    configuration's text section has `key` = `value` (identifier `nnUNetPlans_classtext_<value>`). An option whose
    key appears in no preset nor planning source is listed as not built."""

    name: str
    label: str
    key: str | None = None
    value: str | None = None


CLASS_TEXT_OPTIONS = (
    ClassTextOption("token", "one token (mean of word embeddings)", "class_text", "token"),
    ClassTextOption("sentences", "sentences through the fusion", "class_text", "sentences"),
)
OPTION_SOURCES = (REPO / "nnunet_vl" / "planning", REPO / "planners")


def _say(started: float, message: str) -> None:
    print(f"[{time.time() - started:6.0f}s] {message}", flush=True)


# ----- class-text options ------------------------------------------------------------------------------------
def option_group(option: ClassTextOption) -> str:
    """The table group of BiPVL's row with this option (bipvl_token, bipvl_sentences)."""
    return f"bipvl_{option.name}"


def option_built(option: ClassTextOption, sources: tuple[Path, ...] = OPTION_SOURCES) -> bool:
    """Whether the option exists: no key (the default), or its key quoted in a preset (.json) or planning source."""
    if option.key is None:
        return True
    pattern = re.compile(rf"[\"']{re.escape(option.key)}[\"']")
    for root in sources:
        for file in sorted(Path(root).rglob("*")):
            if file.suffix in (".py", ".json") and pattern.search(file.read_text(encoding="utf-8", errors="replace")):
                return True
    return False


def option_plans_name(option: ClassTextOption) -> str:
    """nnUNetPlans for the default, else nnUNetPlans_<key without underscores>_<value> (nnUNetPlans_classtext_sentences)."""
    return PLANS if option.key is None else f"{PLANS}_{option.key.replace('_', '')}_{option.value}"


def option_preset(option: ClassTextOption, folder: Path, base: Path = REPO / "planners" / "bipvl.json") -> Path:
    """A preset file for the planner: the shipped `bipvl` preset with the option's key set (rewritten when changed)."""
    preset = json.loads(base.read_text(encoding="utf-8"))
    preset[option.key] = option.value
    preset["description"] = f"{base.stem} with {option.key} = {option.value} (written by benchmarks/real3d.py)"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"preset_{base.stem}_{option.key}_{option.value}.json"
    text = json.dumps(preset, indent=1) + "\n"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return target


def option_plans(option: ClassTextOption, dataset_id: int, preprocessed: Path, workdir: Path, encoder: str, env: dict,
                 log: Path, started: float) -> str:
    """The plans identifier of a class-text option: nnUNetPlans, or the planner's own plans for the option's preset
    (`nnUNetv2_plan_and_preprocess_vl --preset FILE -overwrite_plans_name ...`; its image part must match nnUNetPlans)."""
    if option.key is None:
        return PLANS
    identifier = option_plans_name(option)
    plans = plan(dataset_id, preprocessed, encoder, env, log, started, plans_name=identifier,
                 preset=option_preset(option, workdir / "presets"), expect_text={option.key: option.value})
    default = json.loads((preprocessed / f"{PLANS}.json").read_text())
    drop = ("data_identifier",)
    if {k: v for k, v in image_part(plans).items() if k not in drop} != \
            {k: v for k, v in image_part(default).items() if k not in drop}:
        raise RuntimeError(f"{identifier} differs from {PLANS} outside the text section: the rows would not train the "
                           f"same U-Net")
    return identifier


# ----- data ------------------------------------------------------------------------------------------------------
def source_cases(src: Path) -> list[str]:
    ending = json.loads((src / "dataset.json").read_text())["file_ending"]
    return sorted(f.name[: -len(ending)] for f in (src / "labelsTr").iterdir() if f.name.endswith(ending))


def fold_splits(cases: list[str], smallest: bool) -> list[dict[str, list[str]]]:
    """nnU-Net's 5-fold split of all source cases (what nnUNetv2_train would write); --smallest: one fold of 8 of
    fold 0's training and 4 of its validation cases."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = generate_crossval_split(sorted(cases), seed=SPLIT_SEED, n_splits=5)
    if not smallest:
        return splits
    fold0 = splits[0]
    return [{"train": sorted(fold0["train"])[:SMALLEST_SIZES["train"]],
             "val": sorted(fold0["val"])[:SMALLEST_SIZES["val"]]}]


def convert(src: Path, raw_root: Path, dataset_id: int, name: str, label_texts: dict | None, cases: list[str],
            started: float) -> Path:
    """A raw dataset of symlinks to the source's images and labels; dataset.json is the source's, with `label_texts`
    replaced when given. Reused when an earlier run wrote the same dataset.json."""
    source_json = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    ending = source_json["file_ending"]
    dataset_json = dict(source_json, numTraining=len(cases), source={"converted_from": str(src)})
    if label_texts is not None:
        dataset_json["label_texts"] = label_texts
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    if (folder / "dataset.json").is_file() and json.loads((folder / "dataset.json").read_text()) == dataset_json:
        _say(started, f"using existing dataset {folder}")
        return folder
    _say(started, f"converting {src} -> {folder} ({len(cases)} cases, symlinks)")
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    channels = sorted(source_json["channel_names"], key=int)
    for case in cases:
        for c in channels:
            image = f"{case}_{int(c):04d}{ending}"
            os.symlink(src / "imagesTr" / image, folder / "imagesTr" / image)
        os.symlink(src / "labelsTr" / f"{case}{ending}", folder / "labelsTr" / f"{case}{ending}")
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1) + "\n", encoding="utf-8")
    return folder


def name_only_texts(src: Path) -> dict[str, str]:
    """Every foreground label's text is its own name ({"left atrium": "left atrium"})."""
    labels = json.loads((src / "dataset.json").read_text())["labels"]
    return {name: name.replace("_", " ") for name in labels if name != "background"}


def plan(dataset_id: int, preprocessed: Path, encoder: str, env: dict, log: Path, started: float,
         plans_name: str = PLANS, preset: Path | None = None, expect_text: dict | None = None) -> dict:
    """`nnunet_vl check` (default plans only) and `nnUNetv2_plan_and_preprocess_vl -c 3d_fullres` (with --preset and
    -overwrite_plans_name when given) unless complete plans for this encoder exist; returns the plans."""
    from nnunet_vl.cli.demo import _bin, _run

    plans_file = preprocessed / f"{plans_name}.json"
    wanted = {"encoder": encoder, **(expect_text or {})}
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text())
        config = plans["configurations"].get(CONFIGURATION, {})
        identifier = config.get("data_identifier")
        data = preprocessed / str(identifier)
        expected = json.loads((preprocessed / "dataset.json").read_text())["numTraining"] \
            if (preprocessed / "dataset.json").is_file() else -1
        text = config.get("text", {})
        if all(text.get(k) == v for k, v in wanted.items()) and identifier == f"{plans_name}_{CONFIGURATION}" \
                and data.is_dir() and len(list(data.glob("*.pkl"))) == expected:
            _say(started, f"using existing plans {plans_file}")
            return plans
    if plans_name == PLANS:
        _run(f"check {dataset_id}", [_bin("nnunet_vl"), "check", "-d", str(dataset_id), "--text-encoder", encoder],
             env, log, started)
    extra = (["--preset", str(preset)] if preset is not None else []) + \
        (["-overwrite_plans_name", plans_name] if plans_name != PLANS else [])
    _run(f"plan and preprocess {dataset_id} ({plans_name})",
         [_bin("nnUNetv2_plan_and_preprocess_vl"), "-d", str(dataset_id), "-c", CONFIGURATION, "-np", "1", "-npfp",
          "1", "--text-encoder", encoder, *extra], env, log, started)
    return json.loads(plans_file.read_text())


def image_part(plans: dict) -> dict:
    """The configuration as nnU-Net's planner wrote it (the text section left out)."""
    return {k: v for k, v in plans["configurations"][CONFIGURATION].items() if k != "text"}


def class_text_named_axes(label_texts: dict | None, label_names: list[str]) -> list[str]:
    """The anatomical axes whose direction words the class texts name, as nnunet_vl's TextProvider finds them (names
    like "left atrium" are fixed, "posterior" is not): nnunet_vl swaps those words in samples mirrored along them."""
    from nnunet_vl.text.directions import direction_words

    words = direction_words(())
    texts = [name.replace("_", " ") for name in label_names]
    for value in (label_texts or {}).values():
        texts += list(value.values()) if isinstance(value, dict) else [str(value)]
    return sorted(set().union(*(words.named_axes(t) for t in texts)))


def write_splits(target: Path, splits: list[dict], started: float) -> None:
    if not target.is_file() or json.loads(target.read_text()) != splits:
        _say(started, f"writing {target}")
        target.write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")


# ----- rows and training ------------------------------------------------------------------------------------------
def budget_name(epochs: int, iterations: int) -> str:
    return f"{epochs}x{iterations}"


def trainer_name(base: str, epochs: int, iterations: int, run: int) -> str:
    """nnUNetTrainerBiPVL_10x50, nnUNetTrainerBiPVL_10x50_run2, ..."""
    return f"{base}_{budget_name(epochs, iterations)}" + (f"_run{run}" if run > 1 else "")


def write_budget_trainers(folder: Path, epochs: int, iterations: int, val_iterations: int, runs: int,
                          final_mirroring: bool = False) -> None:
    """One class per (model, run) in `folder`, found by nnU-Net through nnUNet_extTrainer. Runs differ only by name
    (their own output folders); nnU-Net's final validation is run, with test-time mirroring only when
    `final_mirroring`. Every epoch saves checkpoint_latest.pth, so an interrupted row continues (--c) from its last
    epoch."""
    bases = {"nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
             "nnUNetTrainerBiPVL": "nnunet_vl.training.nnUNetTrainerBiPVL",
             "nnUNetTrainerTMCA": "nnunet_vl.training.nnUNetTrainerTMCA"}
    lines = ['"""Budget variants for benchmarks/real3d.py (written by it)."""',
             "from nnunet_vl.training.budgets import Budget, WithBudget"]
    lines += [f"from {module} import {base}" for base, module in bases.items()] + [""]
    for run in range(1, runs + 1):
        for base in bases:
            lines += [f"class {trainer_name(base, epochs, iterations, run)}(WithBudget, {base}):",
                      f"    budget = Budget({epochs}, {iterations}, {val_iterations}, save_every=1, "
                      f"validation_mirroring={final_mirroring})", ""]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    target = folder / TRAINER_MODULE
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


def plan_rows(epochs: int, iterations: int, runs: int, tmca: bool,
              options: tuple[ClassTextOption, ...] = CLASS_TEXT_OPTIONS,
              sources: tuple[Path, ...] = OPTION_SOURCES) -> list[dict]:
    """Every row of the table, run or not: per run image-only, BiPVL per class-text option, BiPVL name only, TMCA."""
    rows = []
    for run in range(1, runs + 1):
        def row(label: str, base: str, dataset: str, vl: bool, **extra) -> dict:
            return {"row": label, "run": run, "trainer": trainer_name(base, epochs, iterations, run),
                    "dataset": dataset, "vl": vl, "group": extra.pop("group"), **extra}

        rows.append(row("nnU-Net (image only)", "nnUNetTrainer", "description", False, group="image"))
        for option in options:
            entry = row(f"BiPVL, class text: {option.label}", "nnUNetTrainerBiPVL", "description", True,
                        group=option_group(option), option=option.name)
            if not option_built(option, sources):
                entry["status"] = "not run (option not built)"
            rows.append(entry)
        rows.append(row(f"BiPVL, label name only, {options[0].label}", "nnUNetTrainerBiPVL",
                        "name_only", True, group="bipvl_name_only", option=options[0].name))
        entry = row("TMCA (no reports: empty text)", "nnUNetTrainerTMCA", "description", True, group="tmca")
        if not tmca:
            entry["status"] = TMCA_REASON
        rows.append(entry)
    return rows


def fold_dir(results: Path, trainer: str, plans_id: str) -> Path:
    return results / f"{trainer}__{plans_id}__{CONFIGURATION}" / "fold_0"


class RunRecords:
    """Per trained row, kept in the work dir: seconds and max RSS of each nnUNetv2_train invocation (fresh, --c, --val)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, list[dict]] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, key: str, kind: str, seconds: float, peak_mb: float) -> None:
        self.rows.setdefault(key, []).append({"kind": kind, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb)})
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n", encoding="utf-8")


def train_row(dataset_id: int, trainer: str, plans_id: str, results: Path, env: dict, log: Path, started: float,
              records: RunRecords, epochs: int) -> None:
    """Train + validate one row on fold 0: skip when scored, only --val when trained, --c when interrupted."""
    from nnunet_vl.cli.demo import EpochProgress, _bin, _run

    folder = fold_dir(results, trainer, plans_id)
    if (folder / "validation" / "summary.json").is_file():
        _say(started, f"{trainer} ({plans_id}, dataset {dataset_id}): already trained and scored")
        return
    kind = "validate" if (folder / "checkpoint_final.pth").is_file() else \
        "continue" if (folder / "checkpoint_latest.pth").is_file() else "train"
    extra = {"validate": ["--val"], "continue": ["--c"], "train": []}[kind]
    t0 = time.time()
    peak = _run(f"{kind} {trainer}", [_bin("nnUNetv2_train"), str(dataset_id), CONFIGURATION, "0", "-tr", trainer,
                                      "-p", plans_id, "-device", "cpu", *extra], env, log, started,
                EpochProgress(epochs, started))
    records.add(f"{dataset_id}/{trainer}/{plans_id}", kind, time.time() - t0, peak)


_EPOCH_TIME = re.compile(r"Epoch time: ([\d.]+) s")


def epoch_times(folder: Path) -> list[float]:
    """nnU-Net's "Epoch time" of every epoch in the fold's training logs (oldest log first)."""
    times: list[float] = []
    for log in sorted(folder.glob("training_log_*.txt")):
        times += [float(m.group(1)) for m in _EPOCH_TIME.finditer(log.read_text(encoding="utf-8", errors="replace"))]
    return times


def scores_from_summary(summary_file: Path) -> dict:
    """Foreground-mean Dice and per-case Dice of an nnU-Net evaluation summary.json."""
    summary = json.loads(summary_file.read_text())
    per_case = {}
    for entry in summary["metric_per_case"]:
        case = Path(entry["reference_file"]).name.split(".")[0]
        per_case[case] = float(next(iter(entry["metrics"].values()))["Dice"])
    return {"dice": float(summary["foreground_mean"]["Dice"]), "per_case_dice": per_case}


def validation_scores(folder: Path) -> dict:
    """nnU-Net's final validation of the fold (validation/summary.json)."""
    return scores_from_summary(folder / "validation" / "summary.json")


def validation_folders(dataset_folder: Path, cases: list[str], workdir: Path) -> tuple[Path, Path]:
    """Folders of symlinks to fold 0's validation images and labels (both datasets share them), rebuilt each run."""
    dataset_json = json.loads((dataset_folder / "dataset.json").read_text())
    ending, channels = dataset_json["file_ending"], sorted(dataset_json["channel_names"], key=int)
    images, labels = workdir / "val_images", workdir / "val_labels"
    for folder in (images, labels):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for case in cases:
        for c in channels:
            name = f"{case}_{int(c):04d}{ending}"
            os.symlink(os.path.realpath(dataset_folder / "imagesTr" / name), images / name)
        os.symlink(os.path.realpath(dataset_folder / "labelsTr" / f"{case}{ending}"), labels / f"{case}{ending}")
    return images, labels


def predict_and_score(row: dict, dataset_id: int, plans_id: str, dataset_folder: Path, images: Path, labels: Path,
                      cases: list[str], workdir: Path, env: dict, log: Path, started: float) -> dict:
    """fold 0's validation cases predicted without test-time mirroring (`nnUNetv2_predict`, VL: `nnUNetv2_predict_vl`,
    the dataset's text) and scored by nnU-Net's evaluation; reused when every case is predicted and scored."""
    from nnunet_vl.cli.demo import _bin, _run
    from nnunet_vl.inference.evaluate import folder_metrics

    ending = json.loads((dataset_folder / "dataset.json").read_text())["file_ending"]
    out = workdir / "predictions_no_mirroring" / f"{dataset_id}_{row['trainer']}__{plans_id}"
    if (out / "summary.json").is_file() and all((out / f"{c}{ending}").is_file() for c in cases):
        scored = scores_from_summary(out / "summary.json")
        if sorted(scored["per_case_dice"]) == sorted(cases):
            return scored
    shutil.rmtree(out, ignore_errors=True)
    command = "nnUNetv2_predict_vl" if row["vl"] else "nnUNetv2_predict"
    _run(f"predict {row['trainer']} (no mirroring)",
         [_bin(command), "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", CONFIGURATION, "-f", "0",
          "-tr", row["trainer"], "-p", plans_id, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
          "--disable_progress_bar"], env, log, started)
    folder_metrics(labels, out, dataset_folder)
    return scores_from_summary(out / "summary.json")


# ----- comparisons (pure: tested without training) ----------------------------------------------------------------
def _t975(df: int) -> float:
    """Two-sided 95% Student t quantile."""
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with nnU-Net
        return 1.96


def paired(a: dict[str, float], b: dict[str, float]) -> dict:
    """Per-case differences a - b in Dice points over the cases both have: mean, SD, 95% t interval, range, wins."""
    cases = sorted(set(a) & set(b))
    diffs = [100 * (a[c] - b[c]) for c in cases]
    n = len(diffs)
    out = {"n": n, "per_case_points": dict(zip(cases, [round(d, 3) for d in diffs]))}
    if n == 0:
        return out
    mean = sum(diffs) / n
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    half = _t975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    out.update(mean=mean, sd=sd, ci95=[mean - half, mean + half], min=min(diffs), max=max(diffs),
               median=statistics.median(diffs), wins=sum(d > 0 for d in diffs), ties=sum(d == 0 for d in diffs),
               losses=sum(d < 0 for d in diffs))
    return out


def per_case(row: dict, score: str | None = None) -> dict[str, float]:
    """A row's per-case Dice: the primary score (no mirroring), or `score` ("final_validation")."""
    return row["per_case_dice"] if score is None else row[score]["per_case_dice"]


def mean_over_runs(rows: list[dict], score: str | None = None) -> dict[str, float]:
    """Per-case Dice averaged over the done runs of one group (cases every run has)."""
    done = [per_case(r, score) for r in rows if r.get("status") == "done"]
    if not done:
        return {}
    cases = set.intersection(*(set(d) for d in done))
    return {c: sum(d[c] for d in done) / len(done) for c in sorted(cases)}


def comparisons(rows: list[dict], score: str | None = None) -> list[dict]:
    """Paired per-case differences: every done VL row - image-only of the same run; the description - name only
    (what the description's words add); every other class-text option - the first (token); image-only run k - run 1
    (run-to-run noise); with >1 run, the means over runs. score: None = the primary per-case Dice (no mirroring),
    "final_validation" = nnU-Net's."""
    done = [r for r in rows if r.get("status") == "done"]
    by = {(r["group"], r["run"]): r for r in done}
    out = []
    for r in done:
        image = by.get(("image", r["run"]))
        if r["vl"] and image is not None:
            out.append({"what": f"{r['row']} − image only", "run": r["run"], "group": r["group"], "vs": "image",
                        **paired(per_case(r, score), per_case(image, score))})
    for r in done:
        name_only = by.get(("bipvl_name_only", r["run"]))
        if r["group"].startswith("bipvl_") and r["group"] != "bipvl_name_only" and name_only is not None:
            out.append({"what": f"{r['row']} − BiPVL label name only", "run": r["run"], "group": r["group"],
                        "vs": "bipvl_name_only", **paired(per_case(r, score), per_case(name_only, score))})
    default = option_group(CLASS_TEXT_OPTIONS[0])
    for r in done:  # what decides the class-text default: every other option - the first (token), same dataset
        base = by.get((default, r["run"]))
        if r["group"].startswith("bipvl_") and r["group"] not in (default, "bipvl_name_only") and base is not None:
            out.append({"what": f"{r['row']} − {base['row']}", "run": r["run"], "group": r["group"], "vs": default,
                        **paired(per_case(r, score), per_case(base, score))})
    first = by.get(("image", 1))
    for r in done:
        if r["group"] == "image" and r["run"] > 1 and first is not None:
            out.append({"what": f"image only run {r['run']} − run 1 (noise between runs)", "run": r["run"],
                        "group": "image", "vs": "image_run1", **paired(per_case(r, score), per_case(first, score))})
    runs = {r["run"] for r in done}
    if len(runs) > 1:
        groups = dict.fromkeys(r["group"] for r in done)
        image = mean_over_runs([r for r in done if r["group"] == "image"], score)
        for g in groups:
            members = [r for r in done if r["group"] == g]
            if g != "image" and image and len(members) > 1:
                out.append({"what": f"{members[0]['row']} − image only, mean of {len(members)} runs", "run": "mean",
                            "group": g, "vs": "image", **paired(mean_over_runs(members, score), image)})
    return out


def goal_check(rows: list[dict], pairs: list[dict], margin: float = GOAL_MARGIN) -> dict:
    """Per VL row vs image-only of the same run: met when mean Dice >= image-only - margin; 'shown' when the paired
    95% interval's lower end is above -margin too (else one fold cannot tell)."""
    per_row = []
    for p in pairs:
        if p["vs"] != "image" or p["run"] == "mean" or p.get("n", 0) == 0:
            continue
        per_row.append({"what": p["what"], "run": p["run"], "mean_points": p["mean"],
                        "met": bool(p["mean"] >= -100 * margin),
                        "shown": bool(p["ci95"][0] >= -100 * margin) if p["n"] > 1 else False})
    return {"statement": GOAL, "margin_points": 100 * margin, "per_row": per_row,
            "met": bool(per_row) and all(x["met"] for x in per_row),
            "shown": bool(per_row) and all(x["shown"] for x in per_row)}


# ----- output -----------------------------------------------------------------------------------------------------
def _pts(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or value != value else f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def epoch_summary(times: list[float]) -> str:
    """'median s (first epoch s)'."""
    if not times:
        return "–"
    return f"{statistics.median(times):.0f} (first {times[0]:.0f})"


def reading(summary: dict) -> list[str]:
    """What the text adds, in words computed from the results (no claim beyond them)."""
    pairs, goal = summary["comparisons"], summary["goal"]
    lines = ["How to read it:",
             "- The class text is the same for every case and every sample (one foreground class, no reports), so it "
             "cannot tell cases apart: at most it acts as a learned prior. A VL − image-only difference also contains "
             "everything else that differs between the trainers (fusion blocks and gates, the contrastive loss, AdamW "
             "instead of SGD); the label-name-only row has all of that and none of the description's words, so "
             "description − name only is what the words add."]
    named = summary.get("class_text_named_axes", {}).get("description")
    if named:
        lines.append(f"- The description names directions along {', '.join(named)} (e.g. \"posterior\", \"below\"): "
                     "nnunet_vl swaps those words whenever a sample is mirrored along them (training augmentation, and "
                     "test-time mirroring as the installed nnunet_vl handles it), so the description rows' text changes "
                     "with mirroring and the name-only row's does not. The compared score (no test-time mirroring) is "
                     "the same protocol for every row; nnU-Net's final validation column is there for reference.")
    n_val = summary["data"]["val"]
    widths = [p["ci95"][1] - p["ci95"][0] for p in pairs if p.get("n", 0) > 1]
    width = f"the paired 95% intervals here are {min(widths):.1f}–{max(widths):.1f} points wide, " if widths else ""
    lines.append(f"- One fold of {n_val} validation cases is noisy: {width}against a 0.5-point goal. "
                 f"{summary['runs_note']}")
    for p in pairs:
        if p.get("n", 0) == 0:
            continue
        lines.append(f"- {p['what']} (run {p['run']}): {_num(p['mean'], sign=True)} points, 95% interval "
                     f"[{_num(p['ci95'][0], sign=True)}, {_num(p['ci95'][1], sign=True)}], "
                     f"{p['wins']} of {p['n']} cases better.")
    if goal["per_row"]:
        verdict = ("met and shown by the intervals" if goal["shown"] else
                   "met on the means, not resolved by the intervals" if goal["met"] else "not met")
        lines.append(f"- Goal ({goal['statement']}): **{verdict}**.")
        words = [p for p in pairs if p["vs"] == "bipvl_name_only" and p.get("n", 0) > 1]
        for p in words:
            inside = p["ci95"][0] <= 0 <= p["ci95"][1]
            lines.append(f"- What the description's words add over the label name ({p['what']}, run {p['run']}): "
                         + ("nothing this fold can tell apart from zero." if inside else
                            f"{_num(p['mean'], sign=True)} points, an interval that excludes zero, at this budget."))
    else:
        lines.append("- Goal: not evaluated (no VL row and image-only row of the same run are both done).")
    return lines


def _final_protocol(budget: dict) -> str:
    return ("with test-time mirroring" if budget.get("final_validation_mirroring", True) else
            "without test-time mirroring, from the preprocessed data")


def markdown(summary: dict, command: str) -> str:
    """The results table (every row, run or not), the paired differences and the reading."""
    b, data = summary["budget"], summary["data"]
    lines = ["## Real 3D: left atrium (LGE-MRI, class text only)", "",
             f"Command: `{command}` ({summary['wall_time_s'] / 60:.1f} min this invocation). Dataset "
             f"`{summary['dataset']}` (source `{summary['source']}`), `{CONFIGURATION}`, patch "
             f"{'x'.join(map(str, b['patch_size']))}, batch {b['batch_size']}. Fold 0: {data['train']} training / "
             f"{data['val']} validation cases, the same in every row. Budget: {b['epochs']} epoch(s) x "
             f"{b['iterations_per_epoch']} iterations ({b['val_iterations_per_epoch']} validation iterations per "
             f"epoch) for every row. Dice (nnU-Net's evaluation, mean over cases, %) of fold 0's validation cases "
             f"predicted without test-time mirroring, the same protocol for every row (the comparisons and the goal "
             f"use it); beside it nnU-Net's own final validation ({_final_protocol(b)}). Time per epoch: median of "
             f"nnU-Net's \"Epoch time\" lines "
             f"(first epoch in brackets). Peak memory: {summary['peak_memory_method']}. {summary['runs_note']}", "",
             "| row | run | Dice (%) | per-case SD | final validation Dice (%) | s per epoch | peak RSS (MB) | "
             "training + validation (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        if row.get("status") != "done":
            lines.append(f"| {row['row']} | {row['run']} | {row.get('status', 'not run')} | | | | | |")
            continue
        values = list(row["per_case_dice"].values())
        sd = 100 * statistics.stdev(values) if len(values) > 1 else float("nan")
        peak = max((i["peak_rss_mb"] for i in row.get("invocations", [])), default=None)
        minutes = sum(i["seconds"] for i in row.get("invocations", [])) / 60 if row.get("invocations") else None
        final = row.get("final_validation", {}).get("dice")
        run = f"{row['run']} (code {row['reused_from'][:7]})" if row.get("reused_from") else row["run"]
        lines.append(f"| {row['row']} | {run} | {_pts(row['dice'])} | {_num(sd)} | {_pts(final)} | "
                     f"{epoch_summary(row.get('epoch_times_s', []))} | {'–' if peak is None else f'{peak:.0f}'} | "
                     f"{_num(minutes, 1)} |")
    pairs = [p for p in summary["comparisons"] if p.get("n", 0) > 0]
    if pairs:
        lines += ["", "Paired per-case differences (Dice points, same cases, no mirroring):", "",
                  "| difference | run | n | mean | SD | 95% interval (t) | min / median / max | better / worse |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['what']} | {p['run']} | {p['n']} | {_num(p['mean'], sign=True)} | {_num(p['sd'])} | "
                         f"[{_num(p['ci95'][0], sign=True)}, {_num(p['ci95'][1], sign=True)}] | "
                         f"{_num(p['min'], sign=True)} / {_num(p['median'], sign=True)} / {_num(p['max'], sign=True)} "
                         f"| {p['wins']} / {p['losses']} |")
    final_pairs = [p for p in summary.get("comparisons_final_validation", []) if p.get("n", 0) > 1]
    if final_pairs:
        lines += ["", f"The same differences on nnU-Net's final validation ({_final_protocol(b)}): " + "; ".join(
            f"{p['what']} (run {p['run']}) {_num(p['mean'], sign=True)} "
            f"[{_num(p['ci95'][0], sign=True)}, {_num(p['ci95'][1], sign=True)}]" for p in final_pairs) + "."]
    lines += [""] + reading(summary) + ["", "![per-case Dice](real3d.png)"]
    return "\n".join(lines)


def short_name(group: str) -> str:
    """A plot label for a row group or a comparison's reference: image only, BiPVL token, BiPVL name only, ..."""
    if group == "image_run1":
        return "image only, run 1"
    if group.startswith("bipvl_"):
        return "BiPVL " + group[len("bipvl_"):].replace("_", " ")
    return {"image": "image only", "tmca": "TMCA"}.get(group, group)


def figure(summary: dict, out: Path) -> None:
    """Left: per-case Dice per done row, lines joining a case across rows, row means as bars. Right: per-case
    differences to image-only of the same run, mean and 95% interval, the -0.5 goal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in summary["rows"] if r.get("status") == "done"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    labels = [f"{short_name(r['group'])}\nrun {r['run']}" for r in done]
    cases = sorted(set.intersection(*(set(r["per_case_dice"]) for r in done))) if done else []
    for case in cases:
        left.plot(range(len(done)), [100 * r["per_case_dice"][case] for r in done], color="grey", lw=0.6, alpha=0.6,
                  marker="o", ms=3)
    for i, r in enumerate(done):
        left.hlines(100 * r["dice"], i - 0.3, i + 0.3, color="C3", lw=2.5)
    left.set_xticks(range(len(done)), labels, fontsize=8)
    left.set_ylabel("Dice (%) per validation case (red: mean)")
    left.set_title(f"{summary['dataset']}, fold 0 ({summary['data']['val']} cases)", fontsize=10)
    pairs = [p for p in summary["comparisons"] if p.get("n", 0) > 0 and p["vs"] in ("image", "bipvl_name_only",
                                                                                   "image_run1")]
    for i, p in enumerate(pairs):
        values = list(p["per_case_points"].values())
        right.scatter(values, [i] * len(values), s=12, color="grey", alpha=0.7)
        if p["n"] > 1:
            right.errorbar(p["mean"], i, xerr=[[p["mean"] - p["ci95"][0]], [p["ci95"][1] - p["mean"]]], fmt="D",
                           color="C0", capsize=4)
    right.axvline(0, color="black", lw=0.8)
    right.axvline(-100 * GOAL_MARGIN, color="C3", lw=0.8, ls="--", label="goal: ≥ −0.5 vs image only")
    right.set_yticks(range(len(pairs)), [f"{short_name(p['group'])}\n− {short_name(p['vs'])}, run {p['run']}"
                                         for p in pairs], fontsize=8)
    right.set_xlabel("per-case difference (Dice points), mean and 95% interval")
    right.set_title("paired differences, no test-time mirroring", fontsize=10)
    right.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def reusable_rows(earlier: dict | None, budget: dict, val_cases: list[str]) -> dict[tuple, dict]:
    """Scored rows of an earlier real3d.json with the same budget and validation cases, by (trainer, group, run,
    option): rows whose work dir is gone (a fresh checkout) are taken from it rather than retrained."""
    if not earlier or earlier.get("data", {}).get("val_cases") != val_cases:
        return {}
    same = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "final_validation_mirroring")
    if any(earlier.get("budget", {}).get(k) != budget.get(k) for k in same):
        return {}
    code = str(earlier.get("code") or "unknown").split()[0]
    return {(r["trainer"], r["group"], r["run"], r.get("option")): dict(r, reused_from=r.get("reused_from") or code)
            for r in earlier.get("rows", []) if r.get("status") == "done"}


# ----- the run ----------------------------------------------------------------------------------------------------
def run_benchmark(src: Path, workdir: Path, epochs: int, iterations: int, val_iterations: int, runs: int, tmca: bool,
                  encoder: str, smallest: bool, max_seconds: float | None = None, final_mirroring: bool = False,
                  earlier: dict | None = None) -> dict:
    from nnunet_vl.cli.demo import demo_environment

    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    env = demo_environment(workdir)
    trainer_folder = workdir / "real3d_trainers"
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(trainer_folder)])
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[var] = env[var]
    log = workdir / "real3d.log"
    raw_root, pre_root, res_root = (Path(env[v]) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    records = RunRecords(workdir / "real3d_runs.json")

    splits = fold_splits(source_cases(src), smallest)
    cases = sorted(splits[0]["train"] + splits[0]["val"]) if smallest else source_cases(src)
    folders, plans = {}, {}
    texts = {"description": None, "name_only": name_only_texts(src)}
    for key, (did, name) in DATASETS.items():
        folders[key] = convert(src, raw_root, did, name, texts[key], cases, started)
        plans[key] = plan(did, pre_root / folders[key].name, encoder, env, log, started)
    if image_part(plans["description"]) != image_part(plans["name_only"]):
        raise RuntimeError("the two datasets' plans differ outside the text section: the rows would not train the "
                           "same U-Net")
    first = pre_root / folders["description"].name / "splits_final.json"
    write_splits(first, splits, started)
    second = pre_root / folders["name_only"].name / "splits_final.json"
    if not second.is_file() or second.read_text() != first.read_text():
        shutil.copy2(first, second)
    write_budget_trainers(trainer_folder, epochs, iterations, val_iterations, runs, final_mirroring)

    rows = plan_rows(epochs, iterations, runs, tmca)
    options = {o.name: o for o in CLASS_TEXT_OPTIONS}
    images, labels = validation_folders(folders["description"], sorted(splits[0]["val"]), workdir)
    budget = {"epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations,
              "final_validation_mirroring": final_mirroring}
    reusable = reusable_rows(earlier, budget, sorted(splits[0]["val"]))
    for row in rows:
        if row.get("status"):
            continue
        done = reusable.get((row["trainer"], row["group"], row["run"], row.get("option")))
        own_plans = option_plans_name(options[row["option"]]) if "option" in row else PLANS
        if done is not None and not (fold_dir(res_root / folders[row["dataset"]].name, row["trainer"], own_plans)
                                     / "checkpoint_final.pth").is_file():
            row.update(done)
            _say(started, f"{row['row']} (run {row['run']}): scored earlier (code {row['reused_from']}), "
                          f"taken from the earlier real3d.json")
            continue
        key = row["dataset"]
        did = DATASETS[key][0]
        preprocessed = pre_root / folders[key].name
        plans_id = option_plans(options[row["option"]], did, preprocessed, workdir, encoder, env, log, started) \
            if "option" in row else PLANS
        results = res_root / folders[key].name
        folder = fold_dir(results, row["trainer"], plans_id)
        if max_seconds is not None and time.time() - started > max_seconds \
                and not (folder / "checkpoint_final.pth").is_file():
            row["status"] = "not run (time)"
            _say(started, f"{row['row']} (run {row['run']}): not run (--max-minutes reached)")
            continue
        train_row(did, row["trainer"], plans_id, results, env, log, started, records, epochs)
        scored = predict_and_score(row, did, plans_id, folders[key], images, labels, sorted(splits[0]["val"]),
                                   workdir, env, log, started)
        row.update(plans=plans_id, dataset_id=did, folder=str(folder), **scored,
                   final_validation=validation_scores(folder), epoch_times_s=epoch_times(folder),
                   invocations=records.rows.get(f"{did}/{row['trainer']}/{plans_id}", []), status="done")
        _say(started, f"{row['row']} (run {row['run']}): Dice {row['dice']:.4f} without mirroring, "
                      f"{row['final_validation']['dice']:.4f} in nnU-Net's final validation")
    pairs = comparisons(rows)
    config = plans["description"]["configurations"][CONFIGURATION]
    source_json = json.loads((src / "dataset.json").read_text())
    foreground = [n for n in source_json["labels"] if n != "background"]
    named = {"description": class_text_named_axes(source_json.get("label_texts"), foreground),
             "name_only": class_text_named_axes(texts["name_only"], foreground)}
    return {"dataset": folders["description"].name, "ablation_dataset": folders["name_only"].name,
            "source": str(src), "configuration": CONFIGURATION, "smallest": smallest,
            "data": {"train": len(splits[0]["train"]), "val": len(splits[0]["val"]),
                     "val_cases": sorted(splits[0]["val"])},
            "budget": {**budget, "batch_size": config["batch_size"], "patch_size": config["patch_size"]},
            "class_text_options": [{"name": o.name, "label": o.label, "key": o.key, "value": o.value,
                                    "built": option_built(o)} for o in CLASS_TEXT_OPTIONS],
            "label_texts": {"description": source_json.get("label_texts"), "name_only": texts["name_only"]},
            "class_text_named_axes": named,
            "text_encoder": encoder, "runs": runs,
            "runs_note": (f"nnU-Net's training is not seeded: {runs} run{'s' if runs > 1 else ''} per row"
                          + ("." if runs > 1 else " (no second seed yet: `--repeat 2` adds one).")),
            "peak_memory_method": "max RSS of the nnUNetv2_train process (os.wait4 ru_maxrss: the largest of it and "
                                  "its reaped workers, not their sum; final validation included), maximum over its "
                                  "invocations",
            "rows": rows, "comparisons": pairs, "goal": goal_check(rows, pairs),
            "comparisons_final_validation": comparisons(rows, score="final_validation"), "wall_time_s": time.time() - started,
            "log": str(log)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(DEFAULT_SRC), help=f"left-atrium folder (default {DEFAULT_SRC})")
    p.add_argument("--workdir", default=None, help=f"nnU-Net folders (default {DEFAULT_WORKDIR})")
    p.add_argument("--out", default=None, help=f"where real3d.* go (default {DEFAULT_OUT}; --smallest: the work dir)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=10, help="nnU-Net's pseudo-Dice iterations per epoch")
    p.add_argument("--repeat", type=int, default=1, help="runs per row (run 2.. are further rows, resumable)")
    p.add_argument("--tmca", action="store_true", help="also train TMCA (its text carries no information here)")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--smallest", action="store_true", help="8 train / 4 val cases, 1 x 2 iterations (plumbing)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="train no new row after this many minutes (the rest are listed as not run; trained rows are "
                        "still scored)")
    p.add_argument("--final-validation-mirroring", action="store_true",
                   help="nnU-Net's final validation with test-time mirroring (8 predictions per tile in 3D)")
    p.add_argument("--retrain", action="store_true",
                   help="retrain rows whose work dir is gone rather than take them from an earlier <out>/real3d.json "
                        "of the same budget")
    p.add_argument("--code-snapshot", metavar="COMMIT", default=None,
                   help="run nnunet_vl of this commit (unpacked in the work dir), not the working tree")
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    command = common.benchmark_command("real3d.py", argv)
    src = Path(args.src).expanduser().resolve()
    if not (src / "dataset.json").is_file():
        raise SystemExit(f"{src / 'dataset.json'} does not exist. Fix: pass --src with the left-atrium folder")
    workdir = Path(args.workdir or (DEFAULT_WORKDIR_SMALLEST if args.smallest else DEFAULT_WORKDIR)).resolve()
    epochs, iterations, val_iterations = (args.epochs, args.iterations, args.val_iterations)
    if args.smallest:
        epochs, iterations, val_iterations = SMALLEST_BUDGET
    out = Path(args.out or (workdir if args.smallest else DEFAULT_OUT)).resolve()
    common.run_on_code_snapshot(args.code_snapshot, workdir, out, Path(__file__).resolve(), argv, command)
    out.mkdir(parents=True, exist_ok=True)
    earlier_file = out / "real3d.json"
    earlier = None if args.retrain or not earlier_file.is_file() else json.loads(earlier_file.read_text())
    summary = run_benchmark(src, workdir, epochs, iterations, val_iterations, args.repeat, args.tmca,
                            args.text_encoder, args.smallest, None if args.max_minutes is None else 60 * args.max_minutes,
                            args.final_validation_mirroring, earlier)
    summary["code"] = common.git_state()
    summary["command"] = command
    (out / "real3d.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    md = markdown(summary, command)
    (out / "real3d.md").write_text(md + "\n", encoding="utf-8")
    figure(summary, out / "real3d.png")
    print("\n" + md)
    print(f"\nwrote {out / 'real3d.json'}, {out / 'real3d.md'}, {out / 'real3d.png'}")


if __name__ == "__main__":
    main()
