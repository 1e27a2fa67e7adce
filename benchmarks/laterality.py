"""Laterality: mirroring with a left/right label pair. Synthetic data (`make-synthetic --rule lateral`): two look-alike
objects, one per left/right half, labelled `kidney_left` / `kidney_right` (a lateral pair: the plans list it under
`lateral_pairs`), and a report naming the side whose kidney is enlarged.

Rows, 2D and 3D, at one budget per setting: {image-only, BiPVL} x {no mirroring, naive mirroring (nnU-Net's: the pair's label ids
and the report's words stay as they are), laterality-aware mirroring (ids and words swap with a left-right flip)}:

    image-only: nnUNetTrainerNoMirroring / nnUNetTrainer / nnUNetTrainerLateral
    BiPVL:      BiPVL without mirroring / BiPVL with `lateral = None`, `swap_words_when_mirroring = False` /
                nnUNetTrainerBiPVL as shipped

and a 3D setting whose images (32x32x64) are longer along left-right than the patch (32^3: a copy of the plans with
that patch, same network): BiPVL (image-level positions) against nnUNetTrainerBiPVL_patchPositions (positions
relative to the patch), and image-only laterality-aware as the reference without text or positions. A row whose
trainer does not exist is listed as "not run (trainer missing)".

Every budget is a trainer variant written into the work directory (found through nnUNet_extTrainer; nnU-Net's final
validation left out). Each row: `nnUNetv2_train` on fold 0, `nnUNetv2_predict` (image-only) or `nnUNetv2_predict_vl`
(own reports) of the held-out test cases without test-time mirroring, nnU-Net's evaluation per label. Rows resume: a
scored row is reused, a trained one only predicted, an interrupted one continues (--c). Writes
<out>/laterality.{json,md,png}.

    python benchmarks/laterality.py                       # everything, 2D + 3D + 3D image > patch
    python benchmarks/laterality.py --settings 2D --smallest   # plumbing check: tiny data, 1 x 3 iterations
    python benchmarks/laterality.py --code-snapshot HEAD       # every row on one commit's nnunet_vl

--code-snapshot COMMIT runs every step on `git archive COMMIT` of nnunet_vl (and its data packages) unpacked in the
work dir and put first on PYTHONPATH, so edits to the working tree during a long run do not reach later rows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR = DEFAULT_OUT / "work_laterality"
TRAINER_MODULE = "laterality_budgets_{suffix}.py"  # one module per budget: runs of other budgets keep theirs
PATCH_POSITIONS_TRAINER = "nnUNetTrainerBiPVL_patchPositions"
LABELS = ("kidney_left", "kidney_right")
SEED = 0  # make-synthetic seed of every dataset

# name -> data and plans; "patch": a plans copy with this patch size (the planned one is the whole image)
SETTINGS = {
    "2D": {"dim": 2, "dataset_id": 971, "size": [64, 64], "configuration": "2d", "patch": None},
    "3D": {"dim": 3, "dataset_id": 972, "size": [32, 32, 32], "configuration": "3d_fullres", "patch": None},
    "3D, image > patch": {"dim": 3, "dataset_id": 973, "size": [32, 32, 64], "configuration": "3d_fullres",
                          "patch": [32, 32, 32]},
}
MIRRORING = {"none": "no mirroring", "naive": "naive mirroring (nnU-Net's)",
             "aware": "laterality-aware (ids + words)"}
# (model, mirroring) -> the trainer family the budget variant is made from
FAMILIES = {("image-only", "none"): "nnUNetTrainerNoMirroring", ("image-only", "naive"): "nnUNetTrainer",
            ("image-only", "aware"): "nnUNetTrainerLateral", ("BiPVL", "none"): "nnUNetTrainerBiPVL_noMirror",
            ("BiPVL", "naive"): "nnUNetTrainerBiPVL_naiveLabels", ("BiPVL", "aware"): "nnUNetTrainerBiPVL"}


def budget_suffix(epochs: int, iterations: int) -> str:
    return f"lat{epochs}x{iterations}"


def rows_for(setting: str) -> list[dict]:
    """The rows of one setting: model, mirroring, positions (BiPVL in the image > patch setting) and trainer family."""
    if SETTINGS[setting]["patch"] is None:
        return [{"setting": setting, "model": model, "mirroring": mirroring, "family": FAMILIES[model, mirroring]}
                for model in ("image-only", "BiPVL") for mirroring in MIRRORING]
    return [{"setting": setting, "model": "BiPVL", "mirroring": "aware", "positions": "image-level",
             "family": "nnUNetTrainerBiPVL"},
            {"setting": setting, "model": "BiPVL", "mirroring": "aware", "positions": "patch-relative",
             "family": PATCH_POSITIONS_TRAINER},
            {"setting": setting, "model": "image-only", "mirroring": "aware", "family": "nnUNetTrainerLateral"}]


def row_key(row: dict) -> str:
    return "|".join([row["setting"], row["model"], row["mirroring"], row.get("positions", "")])


def _bin(name: str) -> str:
    from nnunet_vl.cli.demo import _bin as demo_bin

    return demo_bin(name)


def _run(step: str, cmd: list[str], env: dict, log: Path, started: float) -> None:
    from nnunet_vl.cli.demo import _run as demo_run

    demo_run(step, cmd, env, log, started)


def find_trainer_module(name: str) -> str | None:
    """The module defining trainer `name`: found by nnU-Net's lookup (nnunetv2 and nnunet_vl's trainers), else
    defined in one of nnunet_vl.training's modules (the budget variant written here imports it from there)."""
    import importlib
    import pkgutil

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    import nnunet_vl.training
    from nnunet_vl.cli.environment import trainer_dir

    package = nnunetv2.__path__[0]
    found = recursive_find_python_class(os.path.join(package, "training", "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer", package)
    if found is None:
        ours = str(trainer_dir())
        found = recursive_find_python_class(ours, name, None, base_folder=ours, cleanup_imports_from_base_folder=True)
    if found is None:
        for module in pkgutil.iter_modules(nnunet_vl.training.__path__, "nnunet_vl.training."):
            found = getattr(importlib.import_module(module.name), name, None)
            if found is not None:
                break
    return None if found is None else found.__module__


def image_positions_of(family: str, module: str | None) -> bool | None:
    """The trainer family's `image_positions` setting (None: the class has none, or is not found)."""
    import importlib

    if module is None:
        return None
    return getattr(getattr(importlib.import_module(module), family, None), "image_positions", None)


def write_budget_trainers(folder: Path, epochs: int, iterations: int, val_iterations: int,
                          patch_positions_module: str | None) -> None:
    """One class per trainer family at the budget in `folder`/laterality_budgets_<budget>.py, e.g.
    nnUNetTrainerLateral_lat6x20.

    The BiPVL families without a shipped class are defined here: `_noMirror` (no mirroring in training or at test
    time, as nnUNetTrainerNoMirroring) and `_naiveLabels` (mirrored as nnU-Net mirrors: no label swap, no word swap)."""
    suffix = budget_suffix(epochs, iterations)
    lines = ['"""Budget variants for benchmarks/laterality.py (written by it)."""',
             "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer",
             "from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import "
             "nnUNetTrainerNoMirroring",
             "from nnunet_vl.training.budgets import Budget, WithBudget",
             "from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL",
             "from nnunet_vl.training.nnUNetTrainerLateral import nnUNetTrainerLateral"]
    if patch_positions_module:
        lines.append(f"from {patch_positions_module} import {PATCH_POSITIONS_TRAINER}")
    lines += ["", f"BUDGET = Budget({epochs}, {iterations}, {val_iterations})", "", "",
              "class _ScoredByTheBenchmark:",
              "    def perform_actual_validation(self, save_probabilities: bool = False) -> None:",
              "        self.print_to_log_file('final validation left out: benchmarks/laterality.py scores every row on "
              "the held-out test cases')", "", "",
              "class _BiPVLNoMirror(nnUNetTrainerBiPVL):",
              '    """BiPVL without mirroring, in training and at test time (as nnUNetTrainerNoMirroring)."""', "",
              "    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):",
              "        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()",
              "        self.text_mirror_axes = ()",
              "        self.inference_allowed_mirroring_axes = None",
              "        self.print_to_log_file('no mirroring (benchmarks/laterality.py)')",
              "        return configured", "", "",
              "class _BiPVLNaiveLabels(nnUNetTrainerBiPVL):",
              '    """BiPVL mirrored as nnU-Net mirrors: the lateral pair\'s label ids and the report\'s words stay."""', "",
              "    swap_words_when_mirroring = False", "",
              "    def __init__(self, *args, **kwargs):",
              "        super().__init__(*args, **kwargs)",
              "        self.lateral = None",
              "        self.lateral_region_channels = None", "", ""]
    bases = {"nnUNetTrainerNoMirroring": "nnUNetTrainerNoMirroring", "nnUNetTrainer": "nnUNetTrainer",
             "nnUNetTrainerLateral": "nnUNetTrainerLateral", "nnUNetTrainerBiPVL": "nnUNetTrainerBiPVL",
             "nnUNetTrainerBiPVL_noMirror": "_BiPVLNoMirror", "nnUNetTrainerBiPVL_naiveLabels": "_BiPVLNaiveLabels"}
    if patch_positions_module:
        bases[PATCH_POSITIONS_TRAINER] = PATCH_POSITIONS_TRAINER
    for family, base in bases.items():
        lines += [f"class {family}_{suffix}(_ScoredByTheBenchmark, WithBudget, {base}):", "    budget = BUDGET", "", ""]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    target = folder / TRAINER_MODULE.format(suffix=suffix)
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


def _say(started: float, message: str) -> None:
    print(f"[{time.time() - started:6.0f}s] {message}", flush=True)


def prepare_setting(setting: str, env: dict, log: Path, started: float, num_train: int, num_test: int,
                    encoder: str, batch_size: int | None) -> tuple[Path, str]:
    """Make (or reuse) the setting's dataset, plan it with text, and return (raw dataset folder, plans identifier)."""
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plans_with_batch_size

    spec = SETTINGS[setting]
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    name = dataset_name(spec)
    folder = raw_root / f"Dataset{spec['dataset_id']:03d}_{name}"
    wanted = {"size": spec["size"], "num_train": num_train, "num_test": num_test, "seed": SEED, "rule": "lateral"}
    marker = folder / "benchmark_settings.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        _say(started, f"{setting}: writing {num_train} + {num_test} cases of {'x'.join(map(str, spec['size']))}")
        make_synthetic_dataset(raw_root, spec["dataset_id"], dim=spec["dim"], num_train=num_train, num_test=num_test,
                               size=spec["size"], seed=SEED, rule="lateral", name=name, overwrite=True)
        marker.write_text(json.dumps(wanted))
        shutil.rmtree(pre_root / folder.name, ignore_errors=True)
    preprocessed = pre_root / folder.name
    planned = preprocessed / "benchmark_planned.json"
    if not (planned.is_file() and json.loads(planned.read_text()) == {**wanted, "encoder": encoder}):
        _run(f"plan {setting}", [_bin("nnUNetv2_plan_and_preprocess_vl"), "-d", str(spec["dataset_id"]), "-c",
                                 spec["configuration"], "-np", "1", "-npfp", "1", "--text-encoder", encoder],
             env, log, started)
        planned.write_text(json.dumps({**wanted, "encoder": encoder}))
    plans_id = plans_with_batch_size(preprocessed, spec["configuration"], batch_size)
    if spec["patch"]:
        plans_id = plans_with_patch_size(preprocessed, spec["configuration"], spec["patch"], plans_id)
    return folder, plans_id


def dataset_name(spec: dict) -> str:
    return f"Lateral{spec['dim']}D" + ("_long" if spec["patch"] else "")


def scored_rows(rows_dir: Path, spec: dict) -> list[Path]:
    """The rows of a setting scored by earlier runs (kept as JSON in rows_dir)."""
    return sorted(rows_dir.glob(f"*__Dataset{spec['dataset_id']:03d}_{dataset_name(spec)}.json"))


def plans_with_patch_size(preprocessed: Path, configuration: str, patch: list[int], plans_name: str) -> str:
    """A copy of the plans with a smaller patch (same network, same data identifier), as one edits nnU-Net's plans;
    the patch must be divisible by the network's total stride."""
    import numpy as np

    plans = json.loads((preprocessed / f"{plans_name}.json").read_text())
    conf = plans["configurations"][configuration]
    total_stride = np.prod(np.asarray(conf["architecture"]["arch_kwargs"]["strides"]), axis=0)
    if any(p % s for p, s in zip(patch, total_stride)):
        raise SystemExit(f"patch {patch} is not divisible by the network's total stride {total_stride.tolist()}")
    identifier = f"{plans_name}_patch{'x'.join(map(str, patch))}"
    plans["plans_name"] = identifier
    conf["patch_size"] = list(patch)
    target = preprocessed / f"{identifier}.json"
    if not target.is_file() or json.loads(target.read_text()) != plans:
        target.write_text(json.dumps(plans, indent=1) + "\n")
    return identifier


def per_label_dice(labels: Path, predictions: Path, dataset_folder: Path) -> dict:
    """nnU-Net's evaluation: Dice of each label (mean over cases) and their mean."""
    from nnunet_vl.inference.evaluate import folder_metrics

    metrics = folder_metrics(labels, predictions, dataset_folder)
    values = json.loads((dataset_folder / "dataset.json").read_text())["labels"]
    means = {str(k): v for k, v in metrics["mean"].items()}
    dice = {name: float(means[str(values[name])]["Dice"]) for name in LABELS}
    return {**dice, "mean": float(metrics["foreground_mean"]["Dice"]), "n_cases": len(metrics["metric_per_case"])}


def run_row(row: dict, spec: dict, folder: Path, plans_id: str, suffix: str, env: dict, log: Path,
            started: float, rows_dir: Path) -> dict:
    """Train (or reuse), predict and score one row; the scored row is kept in rows_dir and reused on a re-run."""
    trainer = f"{row['family']}_{suffix}"
    saved = rows_dir / f"{trainer}__{plans_id}__{folder.name}.json"
    if saved.is_file():
        _say(started, f"{row_key(row)}: reusing {saved.name}")
        return json.loads(saved.read_text())
    configuration, did = spec["configuration"], str(spec["dataset_id"])
    fold = Path(env["nnUNet_results"]) / folder.name / f"{trainer}__{plans_id}__{configuration}" / "fold_0"
    train_s = None
    if not (fold / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (fold / "checkpoint_latest.pth").is_file() else []
        t0 = time.time()
        # augmentation in the training process (2 shared cores: worker processes would only compete with it)
        _run(f"train {trainer} ({row['setting']})", [_bin("nnUNetv2_train"), did, configuration, "0", "-tr", trainer,
                                                    "-p", plans_id, "-device", "cpu", *resume],
             {**env, "nnUNet_n_proc_DA": "0"}, log, started)
        train_s = time.time() - t0
    out = rows_dir.parent / "predictions" / folder.name / f"{trainer}__{plans_id}"
    shutil.rmtree(out, ignore_errors=True)
    command = _bin("nnUNetv2_predict") if row["model"] == "image-only" else _bin("nnUNetv2_predict_vl")
    t0 = time.time()
    _run(f"predict {trainer}", [command, "-i", str(folder / "imagesTs"), "-o", str(out), "-d", did, "-c",
                                configuration, "-f", "0", "-tr", trainer, "-p", plans_id, "-device", "cpu", "-npp",
                                "1", "-nps", "1", "--disable_tta", "--disable_progress_bar"], env, log, started)
    predict_s = time.time() - t0
    scored = per_label_dice(folder / "labelsTs", out, folder)
    result = {**row, "trainer": trainer, "plans": plans_id, "status": "done", "dice": scored, "code": common.git_state(),
              "train_s": train_s, "predict_s": predict_s, "pseudo_dice_per_epoch": pseudo_dice_curve(fold)}
    rows_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=1))
    _say(started, f"{row_key(row)}: Dice left {scored['kidney_left']:.3f}, right {scored['kidney_right']:.3f}")
    return result


def pseudo_dice_curve(fold: Path) -> list[list[float]]:
    """nnU-Net's per-epoch validation pseudo Dice per label, from the final checkpoint's log."""
    import torch

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return [[float(v) for v in d] for d in checkpoint["logging"]["dice_per_class_or_region"]]


def run_benchmark(settings: list[str], workdir: Path, epochs: int, iterations: int, num_train: int, num_test: int,
                  encoder: str, batch_size: int | None, deadline_s: float | None) -> dict:
    from nnunet_vl.cli.demo import demo_environment

    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    env = demo_environment(workdir)
    trainer_folder = workdir / "laterality_trainers"
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(trainer_folder)])
    env.update(nnUNet_compile="false", TOKENIZERS_PARALLELISM="false")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[var] = env[var]  # this process imports nnunetv2 too (trainer lookup, evaluation)
    log = workdir / "laterality.log"
    patch_positions_module = find_trainer_module(PATCH_POSITIONS_TRAINER)
    write_budget_trainers(trainer_folder, epochs, iterations, 2, patch_positions_module)
    suffix = budget_suffix(epochs, iterations)
    results, data = [], {}
    rows_dir = workdir / "rows"
    for setting in settings:
        spec = SETTINGS[setting]
        if deadline_s is not None and time.time() - started > deadline_s and not scored_rows(rows_dir, spec):
            data[setting] = {"image": spec["size"], "not_run": "time", "budget": {"epochs": epochs,
                                                                                   "iterations_per_epoch": iterations}}
            results += [{**row, "status": "not run (time)"} for row in rows_for(setting)]
            continue
        folder, plans_id = prepare_setting(setting, env, log, started, num_train, num_test, encoder, batch_size)
        plans = json.loads((Path(env["nnUNet_preprocessed"]) / folder.name / f"{plans_id}.json").read_text())
        conf = plans["configurations"][spec["configuration"]]
        data[setting] = {"dataset": folder.name, "image": spec["size"], "patch": conf["patch_size"],
                         "batch_size": conf["batch_size"], "plans": plans_id, "configuration": spec["configuration"],
                         "budget": {"epochs": epochs, "iterations_per_epoch": iterations},
                         "lateral_pairs": conf["text"]["lateral_pairs"],
                         "left_right_axis": conf["text"]["direction_axes"]["left_right"]}
        for row in rows_for(setting):
            if row["family"] == PATCH_POSITIONS_TRAINER and patch_positions_module is None:
                results.append({**row, "status": "not run (trainer missing)"})
                continue
            scored = rows_dir / f"{row['family']}_{suffix}__{plans_id}__{folder.name}.json"
            if deadline_s is not None and time.time() - started > deadline_s and not scored.is_file():
                results.append({**row, "status": "not run (time)"})
                continue
            result = run_row(row, spec, folder, plans_id, suffix, env, log, started, rows_dir)
            if row["model"] == "BiPVL":
                module = patch_positions_module if row["family"] == PATCH_POSITIONS_TRAINER else \
                    "nnunet_vl.training.nnUNetTrainerBiPVL"
                result["image_positions"] = image_positions_of(
                    row["family"] if row["family"] in (PATCH_POSITIONS_TRAINER, "nnUNetTrainerBiPVL") else
                    "nnUNetTrainerBiPVL", module)
            results.append(result)
    return {"settings": data, "rows": results,
            "budget": {"epochs": epochs, "iterations_per_epoch": iterations, "batch_size": batch_size},
            "data": {"num_train": num_train, "num_test": num_test, "seed": SEED, "fold": 0},
            "test_time_mirroring": False, "text_encoder": encoder, "code": common.git_state(),
            "patch_positions_trainer": patch_positions_module, "wall_time_s": time.time() - started,
            "log": str(log)}


# ----- report -----------------------------------------------------------------------------------------------------
def _row_name(row: dict) -> str:
    return f"{row['model']}, {row['positions']} positions" if "positions" in row else row["model"]


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _gap(a: dict | None, b: dict | None, label: str) -> str:
    if not a or not b:
        return "–"
    return f"{a['dice'][label] - b['dice'][label]:+.3f}"


def markdown(summary: dict, command: str) -> str:
    """The results as markdown: one table per setting, then the per-label gaps between mirroring modes."""
    lines = ["## Laterality: mirroring with a left/right label pair", "",
             f"{summary['data']['num_train']} training cases per setting (fold 0 of nnU-Net's split trains on 80%), "
             f"{summary['data']['num_test']} held-out test cases, dataset seed {summary['data']['seed']}; no test-time "
             "mirroring; Dice per label by nnU-Net's evaluation (mean over test cases). One run per row.", ""]
    for setting, info in summary["settings"].items():
        rows = [r for r in summary["rows"] if r["setting"] == setting]
        b = info.get("budget", summary["budget"])
        if info.get("not_run"):
            lines += [f"**{setting}** (image {'x'.join(map(str, info['image']))}): not run ({info['not_run']}).", ""]
            continue
        lines += [f"**{setting}** (`{info['dataset']}`, image {'x'.join(map(str, info['image']))}, patch "
                  f"{'x'.join(map(str, info['patch']))}, batch {info['batch_size']}, plans `{info['plans']}`, "
                  f"lateral pairs {info['lateral_pairs']}, left-right axis {info['left_right_axis']}; "
                  f"{b['epochs']} x {b['iterations_per_epoch']} iterations per row). Command: "
                  f"`{info.get('command', command)}`, code {info.get('code', summary['code'])}.", "",
                  "| model | mirroring | kidney_left | kidney_right | mean | training (min) | trainer |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            name, mirroring = _row_name(row), MIRRORING[row["mirroring"]]
            if row.get("status") != "done":
                lines.append(f"| {name} | {mirroring} | {row.get('status', 'not run')} | | | | |")
                continue
            d = row["dice"]
            minutes = f"{row['train_s'] / 60:.1f}" if row.get("train_s") else "(earlier run)"
            lines.append(f"| {name} | {mirroring} | {_f(d['kidney_left'])} | {_f(d['kidney_right'])} | "
                         f"{_f(d['mean'])} | {minutes} | `{row['trainer']}` |")
        done = {(r["model"], r["mirroring"]): r for r in rows if r.get("status") == "done" and "positions" not in r}
        if SETTINGS.get(setting, {}).get("patch") is None and done:
            lines += ["", "| model | label | no mirroring − naive | aware − naive | aware − no mirroring |",
                      "|---|---|---|---|---|"]
            for model in ("image-only", "BiPVL"):
                none, naive, aware = (done.get((model, m)) for m in MIRRORING)
                for label in LABELS:
                    lines.append(f"| {model} | {label} | {_gap(none, naive, label)} | {_gap(aware, naive, label)} | "
                                 f"{_gap(aware, none, label)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def figure(summary: dict, out: Path) -> None:
    """Bars of Dice per label for every row, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary["settings"])
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        rows = [r for r in summary["rows"] if r["setting"] == setting]
        names = [f"{_row_name(r)}\n{MIRRORING[r['mirroring']] if 'positions' not in r else ''}".strip() for r in rows]
        for j, (label, colour) in enumerate(zip(LABELS, ("tab:blue", "tab:orange"))):
            values = [r["dice"][label] if r.get("status") == "done" else 0.0 for r in rows]
            ax.bar([i + 0.4 * j - 0.2 for i in range(len(rows))], values, 0.4, label=label, color=colour)
        for i, r in enumerate(rows):
            if r.get("status") != "done":
                ax.text(i, 0.02, r.get("status", "not run"), rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice (held-out test cases)")
        ax.set_title(setting, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    p.add_argument("--num-train", type=int, default=60)
    p.add_argument("--num-test", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=None, help="a plans copy with this batch (default: planned)")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="train no new row after this many minutes (the rest are listed as not run; scored rows are "
                        "still reused)")
    p.add_argument("--code-snapshot", metavar="COMMIT", default=None,
                   help="run nnunet_vl of this commit (unpacked in the work dir), not the working tree")
    p.add_argument("--smallest", action="store_true",
                   help="plumbing check: 10 + 4 cases, 1 x 3 iterations; results go to the work dir")
    args = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    command = common.benchmark_command("laterality.py", argv)
    if args.smallest:
        args.epochs, args.iterations, args.num_train, args.num_test = 1, 3, 10, 4
        if args.workdir == str(DEFAULT_WORKDIR):
            args.workdir = str(DEFAULT_WORKDIR) + "_smallest"
    common.run_on_code_snapshot(args.code_snapshot, Path(args.workdir).resolve(), Path(args.out).resolve(),
                                Path(__file__).resolve(), argv, command)
    summary = run_benchmark(args.settings, Path(args.workdir).resolve(), args.epochs, args.iterations,
                            args.num_train, args.num_test, args.text_encoder, args.batch_size,
                            None if args.max_minutes is None else 60 * args.max_minutes)
    summary["command"] = command
    for info in summary["settings"].values():
        info.update(command=command, code=summary["code"], wall_time_s=summary["wall_time_s"])
    if not args.smallest:
        keep_earlier_settings(summary, Path(args.out).resolve() / "laterality.json")
    write_outputs(summary, Path(args.workdir if args.smallest else args.out).resolve())


def keep_earlier_settings(summary: dict, earlier_file: Path) -> None:
    """Add the settings (and their rows) of an earlier run's JSON that this run did not run, in SETTINGS order."""
    if not earlier_file.is_file():
        return
    earlier = json.loads(earlier_file.read_text(encoding="utf-8"))
    kept = {s: info for s, info in earlier.get("settings", {}).items() if s not in summary["settings"]}
    if not kept:
        return
    merged = {**kept, **summary["settings"]}
    order = {s: i for i, s in enumerate(SETTINGS)}
    summary["settings"] = dict(sorted(merged.items(), key=lambda item: order.get(item[0], len(order))))
    rows = [r for r in earlier["rows"] if r["setting"] in kept] + summary["rows"]
    summary["rows"] = sorted(rows, key=lambda r: order.get(r["setting"], len(order)))


def write_outputs(summary: dict, out: Path, stem: str = "laterality") -> None:
    """<out>/<stem>.json, .md and .png; prints the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    md = markdown(summary, summary["command"])
    (out / f"{stem}.md").write_text(md + "\n", encoding="utf-8")
    figure(summary, out / f"{stem}.png")
    print("\n" + md)
    print(f"\nwrote {out / f'{stem}.json'}, {out / f'{stem}.md'}, {out / f'{stem}.png'}")


if __name__ == "__main__":
    main()
