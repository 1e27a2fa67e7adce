"""Real data: QaTa-COV19 chest X-rays with LViT reports. Image-only nnU-Net vs. BiPVL / TMCA on one fixed CPU budget.

Convert the subset (nnunet_vl.data.qata.convert_qata; fold 0 of splits_final.json = LViT's train / valid), plan
with the VL planner (2d), train `nnUNetTrainer_<budget>` and `nnUNetTrainer<method>_<budget>` on fold 0 with
`nnUNetv2_train`, predict the fold-0 validation images with `nnUNetv2_predict` (image only) and
`nnUNetv2_predict_vl --text-mode report|shuffled|none`, and score Dice and IoU with nnU-Net's evaluation.
Every step is the command a user would type, with nnU-Net's folders pointed into the work directory; finished
steps (conversion, planning, trained checkpoints) are reused on a re-run, interrupted training resumes (--c).
Writes <out>/qata.json, qata.md (table with the published rows, clearly labelled) and qata_cases.png.

    python benchmarks/qata.py --batch-size 8 --disable-tta     # 1200 train / 300 val, demo budget (~2.5 h on 2 cores)
    python benchmarks/qata.py --budget cpu --max-val 20         # plumbing check on the real subset
    python benchmarks/qata.py --smallest                        # 12 train / 4 val copied from --src, cpu budget
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from nnunet_vl.cli.demo import _bin, _run, demo_environment  # noqa: E402
from nnunet_vl.planning.api import plans_with_batch_size  # noqa: E402

DEFAULT_SRC = REPO.parent / "shared" / "data" / "qata_cov19_subset"
DEFAULT_WORKDIR = REPO / "benchmarks" / "results" / "work_qata"
DEFAULT_WORKDIR_SMALLEST = REPO / "benchmarks" / "results" / "work_qata_smallest"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DATASET_ID = 980
DATASET_NAME = "QaTaCOV19"
CONFIGURATION = "2d"
SMALLEST_SIZES = {"train": 12, "valid": 4}
TEXT_MODES = ("report", "shuffled", "none")
MODE_LABELS = {"image": "— (image only)", "report": "own report", "shuffled": "shuffled reports", "none": "no text"}
GOAL_MARGIN = 0.03
# "shuffled below own reports" must be a real difference, not float noise from a handful of changed pixels
SHUFFLE_MARGIN = 0.01
GOALS = (f"goal on the same budget: BiPVL or TMCA with own reports >= image-only + {GOAL_MARGIN:.2f} Dice, "
         f"and shuffled reports at least {SHUFFLE_MARGIN:.2f} Dice below own reports")
# Published Dice on the full QaTa-COV19 test set (2113 images), as quoted in the subset's README.
PUBLISHED = [("U-Net", 0.7902), ("nnU-Net", 0.8042), ("LViT", 0.8366), ("GuideDecoder (LanGuideMedSeg)", 0.8978)]
PUBLISHED_SETTING = "published, full data (5716 train), GPU, their test set"
NUM_FIGURE_CASES = 4


def _say(started: float, message: str) -> None:
    print(f"[{time.time() - started:6.0f}s] {message}", flush=True)


# ----- data ---------------------------------------------------------------------------------------------------
def make_smallest_source(src: Path, target: Path, sizes: dict[str, int] = SMALLEST_SIZES) -> Path:
    """A mini copy of an annotation.json-layout source: the first entries of each split, files copied."""
    annotation = src / "annotation.json"
    if not annotation.is_file():
        raise SystemExit(f"--smallest needs a source in annotation.json layout; {annotation} does not exist. "
                         f"Fix: pass --src with the folder holding annotation.json")
    data = json.loads(annotation.read_text(encoding="utf-8"))
    mini: dict[str, list[dict]] = {}
    for split, n in sizes.items():
        entries = data.get(split) or []
        if len(entries) < n:
            raise SystemExit(f"{annotation}: '{split}' has {len(entries)} entries, --smallest needs {n}")
        mini[split] = entries[:n]
    if (target / "annotation.json").is_file() and json.loads((target / "annotation.json").read_text()) == mini:
        return target
    shutil.rmtree(target, ignore_errors=True)
    for entries in mini.values():
        for entry in entries:
            for key in ("image", "mask"):
                (target / entry[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / entry[key], target / entry[key])
    (target / "annotation.json").write_text(json.dumps(mini, indent=1), encoding="utf-8")
    return target


def convert(src: Path, raw_root: Path, preprocessed_root: Path, started: float) -> tuple[Path, bool]:
    """The raw dataset and whether it was converted now (else reused: a previous run converted the same source)."""
    from nnunet_vl.data.qata import convert_qata

    folder = raw_root / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if (folder / "dataset.json").is_file():
        converted_from = json.loads((folder / "dataset.json").read_text()).get("source", {}).get("converted_from")
        if converted_from is not None and Path(converted_from) != src:
            raise SystemExit(f"{folder} was converted from {converted_from}, not from --src {src}. Fix: use another "
                             f"--workdir (or delete that work dir)")
        _say(started, f"using existing dataset {folder}")
        return folder, False
    _say(started, f"converting {src}")
    return convert_qata(src, DATASET_ID, raw_root=raw_root, preprocessed_root=preprocessed_root,
                        name=DATASET_NAME), True


def plan(preprocessed: Path, encoder: str, results: Path, env: dict, log: Path, started: float) -> tuple[dict, bool]:
    """Plan + preprocess with the VL planner unless plans for this encoder and their data exist; return the plans
    and whether planning ran now."""
    plans_file = preprocessed / "nnUNetPlans.json"
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text())
        config = plans["configurations"].get(CONFIGURATION, {})
        planned_encoder = config.get("text", {}).get("encoder")
        data_folder = preprocessed / config.get("data_identifier", "nnUNetPlans_2d")
        expected = json.loads((preprocessed / "dataset.json").read_text())["numTraining"] \
            if (preprocessed / "dataset.json").is_file() else -1
        complete = data_folder.is_dir() and len(list(data_folder.glob("*.pkl"))) == expected  # one per case
        if planned_encoder == encoder and complete:
            _say(started, f"using existing plans ({plans_file}, text encoder '{encoder}')")
            return plans, False
        if planned_encoder != encoder and any(results.glob("*/fold_0/checkpoint_*.pth")):
            raise SystemExit(f"{plans_file} was planned with text encoder '{planned_encoder}' and models were trained "
                             f"with it in {results}; --text-encoder is '{encoder}'. Fix: use another --workdir")
    _run("plan and preprocess", [_bin("nnUNetv2_plan_and_preprocess_vl"), "-d", str(DATASET_ID), "-c",
                                 CONFIGURATION, "-np", "1", "-npfp", "1", "--text-encoder", encoder], env, log, started)
    return json.loads(plans_file.read_text()), True


def ensure_splits(dataset_folder: Path, preprocessed: Path, started: float) -> dict[str, list[str]]:
    """Make sure nnU-Net's fold 0 is the converter's split (LViT train / valid) before training; return fold 0."""
    raw_splits = json.loads((dataset_folder / "splits_final.json").read_text())
    target = preprocessed / "splits_final.json"
    if not target.is_file() or json.loads(target.read_text()) != raw_splits:
        _say(started, f"copying the converter's splits_final.json to {target}")
        target.write_text(json.dumps(raw_splits, indent=2) + "\n", encoding="utf-8")
    mapping = json.loads((dataset_folder / "case_mapping.json").read_text())
    valid = [case for case, info in mapping.items() if info["split"] == "valid"]
    train = [case for case, info in mapping.items() if info["split"] == "train"]
    fold0 = raw_splits[0]
    if sorted(fold0["val"]) != sorted(valid) or sorted(fold0["train"]) != sorted(train):
        raise RuntimeError(f"{target}: fold 0 is not the source's train / valid split")
    return fold0


class StepTimes:
    """Seconds of each step, kept in the work dir so a re-run that reuses a step still reports what it cost."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, step: str, seconds: float, add: bool = False) -> None:
        self.steps[step] = (self.steps.get(step, 0.0) if add else 0.0) + seconds
        self.path.write_text(json.dumps(self.steps, indent=1) + "\n", encoding="utf-8")


def train(trainers: list[str], plans_id: str, results: Path, env: dict, log: Path, started: float,
          times: StepTimes) -> None:
    """nnUNetv2_train each trainer on fold 0 (skip when finished, --c when interrupted)."""
    for trainer in trainers:
        fold_dir = results / f"{trainer}__{plans_id}__{CONFIGURATION}" / "fold_0"
        if (fold_dir / "checkpoint_final.pth").is_file():
            _say(started, f"{trainer}: already trained")
            continue
        resume = ["--c"] if (fold_dir / "checkpoint_latest.pth").is_file() else []
        t0 = time.time()
        _run(f"train {trainer}", [_bin("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer,
                                  "-p", plans_id, "-device", "cpu", *resume], env, log, started)
        times.record(f"train {trainer}", time.time() - t0, add=bool(resume))


def validation_folders(dataset_folder: Path, cases: list[str], workdir: Path, ending: str) -> tuple[Path, Path]:
    """Folders of symlinks to the fold-0 validation images (imagesTr/<case>_0000) and labels, rebuilt each run."""
    images, labels = workdir / "val_images", workdir / "val_labels"
    for folder in (images, labels):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for case in cases:
        os.symlink(dataset_folder / "imagesTr" / f"{case}_0000{ending}", images / f"{case}_0000{ending}")
        os.symlink(dataset_folder / "labelsTr" / f"{case}{ending}", labels / f"{case}{ending}")
    return images, labels


def score(labels: Path, predictions: Path, dataset_folder: Path) -> dict:
    """Foreground-mean Dice and IoU (mean over cases, nnU-Net's evaluation) and the per-case Dice."""
    from nnunet_vl.inference.evaluate import folder_metrics

    metrics = folder_metrics(labels, predictions, dataset_folder)
    per_case = {}
    for entry in metrics["metric_per_case"]:
        case = Path(entry["prediction_file"]).name.rsplit(".", 1)[0]
        per_case[case] = float(next(iter(entry["metrics"].values()))["Dice"])
    return {"dice": float(metrics["foreground_mean"]["Dice"]), "iou": float(metrics["foreground_mean"]["IoU"]),
            "n_cases": len(per_case), "per_case_dice": per_case}


def trainer_validation_dice(results: Path, trainer: str, plans_id: str) -> float | None:
    """Mean Dice of nnU-Net's own final validation (all fold-0 val cases), written by nnUNetv2_train."""
    summary = results / f"{trainer}__{plans_id}__{CONFIGURATION}" / "fold_0" / "validation" / "summary.json"
    if not summary.is_file():
        return None
    return float(json.loads(summary.read_text())["foreground_mean"]["Dice"])


# ----- the run --------------------------------------------------------------------------------------------------
def run_benchmark(src: Path, workdir: Path, budget: str, methods: list[str], encoder: str,
                  max_val: int | None, batch_size: int | None = None, tta: bool = True) -> dict:
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    env = demo_environment(workdir)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[var] = env[var]  # this process imports nnunetv2 too (conversion, evaluation)
    log = workdir / "qata.log"
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    times = StepTimes(workdir / "qata_step_times.json")
    dataset_folder, converted = convert(src, raw_root, pre_root, started)
    if converted:
        times.record("convert", time.time() - started)
    preprocessed = pre_root / dataset_folder.name
    results = Path(env["nnUNet_results"]) / dataset_folder.name

    t0 = time.time()
    plans, planned = plan(preprocessed, encoder, results, env, log, started)
    if planned:
        times.record("plan and preprocess", time.time() - t0)
    fold0 = ensure_splits(dataset_folder, preprocessed, started)
    plans_id = plans_with_batch_size(preprocessed, CONFIGURATION, batch_size)
    if plans_id != "nnUNetPlans":
        _say(started, f"training with {plans_id} (nnUNetPlans with batch size {batch_size})")

    trainers = [f"nnUNetTrainer_{budget}"] + [f"nnUNetTrainer{m}_{budget}" for m in methods]
    train(trainers, plans_id, results, env, log, started, times)

    ending = json.loads((dataset_folder / "dataset.json").read_text())["file_ending"]
    val_cases = fold0["val"][:max_val] if max_val else list(fold0["val"])
    images, labels = validation_folders(dataset_folder, val_cases, workdir, ending)
    _say(started, f"predicting {len(val_cases)} of {len(fold0['val'])} validation cases ({images})")
    common = ["-i", str(images), "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "0", "-device", "cpu",
              "-p", plans_id, "-npp", "1", "-nps", "1", "--disable_progress_bar", *([] if tta else ["--disable_tta"])]
    predictions = workdir / "predictions"
    rows: list[dict] = []
    t0 = time.time()
    jobs = [(trainers[0], "image", "nnUNetv2_predict", [])]
    jobs += [(t, mode, "nnUNetv2_predict_vl", ["--text-mode", mode]) for t in trainers[1:] for mode in TEXT_MODES]
    for trainer, mode, command, extra in jobs:
        out = predictions / (f"{trainer}_{mode}" if mode != "image" else "image_only")
        shutil.rmtree(out, ignore_errors=True)  # a previous run may have predicted other cases
        _run(f"predict {trainer} ({mode})", [_bin(command), *common, "-o", str(out), "-tr", trainer, *extra], env,
             log, started)
        rows.append({"trainer": trainer, "model": "nnU-Net (image only)" if mode == "image" else trainer,
                     "text_mode": mode, "predictions": str(out), **score(labels, out, dataset_folder)})
        _say(started, f"{trainer} ({mode}): Dice {rows[-1]['dice']:.4f}, IoU {rows[-1]['iou']:.4f}")
    predict_s = time.time() - t0

    wall = time.time() - started
    budget_obj = _budget(budget)
    config = plans["configurations"][CONFIGURATION]
    summary = {
        "dataset": dataset_folder.name, "source": str(src), "configuration": CONFIGURATION,
        "data": {"train": len(fold0["train"]), "val": len(fold0["val"]), "val_evaluated": len(val_cases)},
        "budget": {"name": budget, "epochs": budget_obj.epochs, "iterations_per_epoch": budget_obj.iterations_per_epoch,
                   "batch_size": batch_size or config["batch_size"], "planned_batch_size": config["batch_size"],
                   "plans": plans_id, "patch_size": config["patch_size"]},
        "test_time_mirroring": tta,
        "text_encoder": encoder, "methods": methods, "trainers": trainers, "rows": rows,
        "trainer_final_validation_dice": {t: trainer_validation_dice(results, t, plans_id) for t in trainers},
        "goals": goal_check(rows), "wall_time_s": wall, "log": str(log),
        "step_seconds": {**{k: v for k, v in times.steps.items()
                            if not k.startswith("train ") or k[len("train "):] in trainers},
                         f"predict {len(val_cases)} val cases x {len(jobs)} runs (this run)": predict_s},
    }
    return summary


def _budget(name: str):
    from nnunet_vl.training.budgets import CPU_SMOKE, DEMO

    return {"cpu": CPU_SMOKE, "demo": DEMO}[name]


def goal_check(rows: list[dict]) -> dict:
    image = next(r["dice"] for r in rows if r["text_mode"] == "image")
    per_method = {}
    for trainer in dict.fromkeys(r["trainer"] for r in rows if r["text_mode"] != "image"):
        dice = {r["text_mode"]: r["dice"] for r in rows if r["trainer"] == trainer}
        gain = dice["report"] - image
        drop = dice["report"] - dice["shuffled"]
        per_method[trainer] = {"report_minus_image_only": gain, "report_minus_shuffled": drop,
                               "report_minus_no_text": dice["report"] - dice["none"],
                               "met": bool(gain >= GOAL_MARGIN and drop >= SHUFFLE_MARGIN)}
    return {"statement": GOALS, "per_method": per_method, "met": any(m["met"] for m in per_method.values())}


# ----- output ---------------------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.2f}"


def markdown(summary: dict, machine: dict, command: str) -> str:
    data, budget = summary["data"], summary["budget"]
    samples = budget["epochs"] * budget["iterations_per_epoch"] * budget["batch_size"]
    ours = (f"ours: {data['train']} train, {data['val_evaluated']} of {data['val']} val (LViT valid split), CPU, "
            f"`{budget['name']}` budget")
    lines = [
        "## QaTa-COV19 (real chest X-rays with LViT reports)",
        "",
        f"Command: `{command}`. Machine: {machine.get('processor')}, {machine.get('cpu_count')} cores "
        f"({machine.get('platform')}; load average at start {machine.get('load_average_at_start')}), CPU only, "
        f"torch {machine.get('torch')}. All steps {sum(summary['step_seconds'].values()) / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in summary["step_seconds"].items()) + "; steps reused from an "
        f"earlier run in the same work dir are counted with the time they took then); this invocation "
        f"{summary['wall_time_s'] / 60:.1f} min.",
        "",
        f"Our rows: {data['train']} training images and {data['val']} validation images of LViT's train / valid "
        f"splits (source `{summary['source']}`), configuration `{summary['configuration']}`, fold 0 = LViT train / "
        f"valid, scored on {data['val_evaluated']} validation image(s). Every model gets the same budget "
        f"`{budget['name']}`: "
        f"{budget['epochs']} epochs x {budget['iterations_per_epoch']} iterations x batch {budget['batch_size']} "
        f"(patch {'x'.join(map(str, budget['patch_size']))}) = {samples} training samples"
        + (f" (plans `{budget['plans']}`: nnUNetPlans with the planned batch {budget['planned_batch_size']} changed "
           f"to {budget['batch_size']})" if budget.get("plans", "nnUNetPlans") != "nnUNetPlans" else "")
        + f". Text encoder `{summary['text_encoder']}`. Predictions "
        + ("with" if summary.get("test_time_mirroring", True) else "without")
        + " test-time mirroring. Dice and IoU: nnU-Net's evaluation, infection class, mean over images, in %.",
        "",
        "Published rows: Dice on the full QaTa-COV19 test set (2113 images) after training on all 5716 training "
        "images on a GPU with each paper's protocol — for orientation only, not comparable with our rows.",
        "",
        "| model | text at prediction | Dice (%) | IoU (%) | setting |",
        "|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(f"| {row['model']} | {MODE_LABELS[row['text_mode']]} | {_pct(row['dice'])} | {_pct(row['iou'])} "
                     f"| {ours} |")
    for name, dice in PUBLISHED:
        lines.append(f"| {name} | {'report' if name in ('LViT', 'GuideDecoder (LanGuideMedSeg)') else '—'} | "
                     f"{_pct(dice)} | – | {PUBLISHED_SETTING} |")
    goals = summary["goals"]
    lines += ["", f"Goal ({goals['statement']}): **{'met' if goals['met'] else 'not met'}**."]
    for trainer, g in goals["per_method"].items():
        lines.append(f"- {trainer}: own report − image only = {100 * g['report_minus_image_only']:+.2f} Dice points; "
                     f"own report − shuffled = {100 * g['report_minus_shuffled']:+.2f}; own report − no text = "
                     f"{100 * g['report_minus_no_text']:+.2f}" + ("" if g["met"] else " (not met)") + ".")
    lines.append("- Reading: a VL model whose own-report, shuffled and no-text rows agree does not use the text; "
                 "its difference to image only then comes from its network and loss, not from the reports.")
    val = {t: v for t, v in summary["trainer_final_validation_dice"].items() if v is not None}
    if val:
        lines += ["", f"nnU-Net's own final validation after training (all {data['val']} val images; VL models "
                  f"with own reports): " + ", ".join(f"{t} {_pct(v)}" for t, v in val.items()) + " Dice (%)."]
    lines += ["", "![QaTa-COV19 validation cases](qata_cases.png)", "",
              "Figure: validation images at fixed positions of the split (not chosen by result); green = ground truth, "
              "red = prediction, Dice per image in the titles; the report under each row is the one the VL models "
              "were given."]
    return "\n".join(lines)


def _overlay(mask: np.ndarray, rgba: tuple[float, float, float, float]) -> np.ndarray:
    out = np.zeros((*mask.shape, 4))
    out[mask] = rgba
    return out


def figure(summary: dict, dataset_folder: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = summary["rows"]
    image_row = next(r for r in rows if r["text_mode"] == "image")
    vl_rows = [r for r in rows if r["text_mode"] == "report"]
    cases = list(image_row["per_case_dice"])
    order = json.loads((dataset_folder / "splits_final.json").read_text())[0]["val"]
    cases.sort(key=order.index)
    n = min(NUM_FIGURE_CASES, len(cases))
    picks = [cases[round(i * (len(cases) - 1) / max(n - 1, 1))] for i in range(n)]
    reports = json.loads((dataset_folder / "reports.json").read_text())
    ending = json.loads((dataset_folder / "dataset.json").read_text())["file_ending"]
    panels = [("image", None), ("ground truth", None), ("nnU-Net (image only)", image_row)]
    panels += [(r["trainer"].replace("nnUNetTrainer", "").rsplit("_", 1)[0] + " (own report)", r) for r in vl_rows]
    ncols = len(panels)
    height = 3.6 * n + 0.9
    fig, axes = plt.subplots(2 * n, ncols, figsize=(3.1 * ncols, height), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 0.2] * n})
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.95 / height, bottom=0.01, wspace=0.06, hspace=0.35)
    for i, case in enumerate(picks):
        image = np.asarray(Image.open(dataset_folder / "imagesTr" / f"{case}_0000{ending}").convert("L"))
        gt = np.asarray(Image.open(dataset_folder / "labelsTr" / f"{case}{ending}")) > 0
        for j, (title, row) in enumerate(panels):
            ax = axes[2 * i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if j == 0:
                ax.set_title("\n".join(textwrap.wrap(case, 34)), fontsize=8)
            elif j == 1:
                ax.imshow(_overlay(gt, (0.0, 0.9, 0.3, 0.55)), interpolation="nearest")
                ax.set_title(f"ground truth ({int(gt.sum())} px)", fontsize=10)
            else:
                pred = np.asarray(Image.open(Path(row["predictions"]) / f"{case}{ending}")) > 0
                ax.imshow(_overlay(pred, (1.0, 0.1, 0.0, 0.5)), interpolation="nearest")
                if gt.any():
                    ax.contour(gt, levels=[0.5], colors="lime", linewidths=1.0)
                ax.set_title(f"{title}\nDice {row['per_case_dice'][case]:.2f}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[2 * i + 1]:
            ax.axis("off")
        caption = "\n".join(textwrap.wrap(f"report: \u201c{reports.get(case, '')}\u201d", width=36 * ncols))
        axes[2 * i + 1, 0].text(0, 1.25, caption, fontsize=10, va="top", ha="left",
                                transform=axes[2 * i + 1, 0].transAxes)
    fig.suptitle(f"QaTa-COV19 validation images, budget '{summary['budget']['name']}', "
                 f"{summary['data']['train']} training images. Green = ground truth, red = prediction.", fontsize=12,
                 y=1 - 0.2 / height)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(DEFAULT_SRC), help=f"QaTa-COV19 copy (default {DEFAULT_SRC})")
    parser.add_argument("--workdir", default=None, help=f"nnU-Net folders and logs (default {DEFAULT_WORKDIR}, "
                                                        f"with --smallest {DEFAULT_WORKDIR_SMALLEST})")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where qata.json, qata.md and qata_cases.png go")
    parser.add_argument("--budget", choices=["demo", "cpu"], default="demo",
                        help="trainer suffix: demo (12 x 25 iterations) or cpu (2 x 5, smoke)")
    parser.add_argument("--methods", nargs="+", default=["BiPVL", "TMCA"], help="VL trainer families")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--max-val", type=int, default=None, help="predict only the first N validation cases")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="train with a copy of the plans at this batch size (nnUNetPlans_bsN); default: as planned")
    parser.add_argument("--disable-tta", action="store_true",
                        help="predict without test-time mirroring (all rows alike; the VL predictor otherwise skips "
                             "mirroring along axes a report names, so image-only and VL rows would differ in TTA)")
    parser.add_argument("--smallest", action="store_true",
                        help=f"{SMALLEST_SIZES['train']} train + {SMALLEST_SIZES['valid']} valid images copied from "
                             f"--src, cpu budget")
    args = parser.parse_args(argv)
    if args.max_val is not None and args.max_val < 1:
        parser.error("--max-val must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    command = "python benchmarks/qata.py " + " ".join(argv if argv is not None else sys.argv[1:])
    workdir = Path(args.workdir or (DEFAULT_WORKDIR_SMALLEST if args.smallest else DEFAULT_WORKDIR)).resolve()
    src = Path(args.src).expanduser().resolve()
    budget = "cpu" if args.smallest else args.budget
    if args.smallest:
        src = make_smallest_source(src, workdir / "source_smallest")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from common import machine_info

    machine = machine_info("cpu")
    summary = run_benchmark(src, workdir, budget, args.methods, args.text_encoder, args.max_val, args.batch_size,
                            not args.disable_tta)
    dataset_folder = Path(os.environ["nnUNet_raw"]) / summary["dataset"]
    figure(summary, dataset_folder, out / "qata_cases.png")
    report = {**summary, "machine": machine, "command": command.strip(),
              "published": [{"model": m, "dice": d, "setting": PUBLISHED_SETTING} for m, d in PUBLISHED]}
    (out / "qata.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md = markdown(summary, machine, command.strip())
    (out / "qata.md").write_text(md + "\n", encoding="utf-8")
    print("\n" + md)
    print(f"\nwrote {out / 'qata.json'}, {out / 'qata.md'}, {out / 'qata_cases.png'}; log: {summary['log']}")


if __name__ == "__main__":
    main()
