"""Warm start on real data (QaTa-COV19): an image-only nnU-Net trained for M iterations, then a VL model trained
for K iterations from it (`nnUNetv2_train_vl -pretrained_weights`), against the VL model from scratch for M + K
and image-only nnU-Net for M + K. Same batch, patch and plans for every row; fold 0 = LViT's train / valid split.

Every step is the command a user would type (`nnUNetv2_train`, `nnUNetv2_train_vl`, `nnUNetv2_predict`,
`nnUNetv2_predict_vl`); the budgets are trainer variants written into the work directory (one class per budget,
found through nnUNet_extTrainer; they leave out nnU-Net's final validation, as every row is scored by the same
predictions of this script). Rows resume: a trained row is reused, an interrupted one continues (--c). The
conversion and plans are qata.py's (same default work directory). Writes <out>/warm_start.json, warm_start.md
and warm_start.png (validation pseudo Dice per epoch, warm rows drawn after their image-only M iterations).

    python benchmarks/warm_start.py                       # M = K = 4 x 25 iterations at batch 4, BiPVL and TMCA
    python benchmarks/warm_start.py --smallest            # plumbing check: 12 train / 4 val, 1 x 5 iterations
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qata import (CONFIGURATION, DATASET_ID, DEFAULT_SRC, DEFAULT_WORKDIR, StepTimes, _say, convert,  # noqa: E402
                  ensure_splits, make_smallest_source, plan, score, validation_folders)

from nnunet_vl.cli.demo import _bin, _run, demo_environment  # noqa: E402
from nnunet_vl.planning.api import plans_with_batch_size  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR_SMALLEST = REPO / "benchmarks" / "results" / "work_warm_start_smallest"
TRAINER_MODULE = "warm_start_budgets.py"


def budget_name(epochs: int, iterations: int, warm: bool = False) -> str:
    return f"{epochs}x{iterations}{'warm' if warm else ''}"


def write_budget_trainers(folder: Path, budgets: list[tuple[int, int, bool]], val_iterations: int) -> None:
    """One trainer class per (model, budget) in `folder`: nnUNetTrainer_<E>x<I>, nnUNetTrainerBiPVL_<E>x<I>warm, ..."""
    lines = ['"""Budget variants for benchmarks/warm_start.py (written by it)."""',
             "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer",
             "from nnunet_vl.training.budgets import Budget, WithBudget",
             "from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL",
             "from nnunet_vl.training.nnUNetTrainerTMCA import nnUNetTrainerTMCA", ""]
    for epochs, iterations, warm in budgets:
        for base in ("nnUNetTrainer", "nnUNetTrainerBiPVL", "nnUNetTrainerTMCA"):
            lines += [f"class {base}_{budget_name(epochs, iterations, warm)}(WithBudget, {base}):",
                      f"    budget = Budget({epochs}, {iterations}, {val_iterations})", "",
                      "    def perform_actual_validation(self, save_probabilities: bool = False) -> None:",
                      "        self.print_to_log_file('final validation left out: benchmarks/warm_start.py scores every "
                      "row on the same validation images itself')", ""]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    target = folder / TRAINER_MODULE
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


def fold_dir(results: Path, trainer: str, plans_id: str) -> Path:
    return results / f"{trainer}__{plans_id}__{CONFIGURATION}" / "fold_0"


def train_row(trainer: str, plans_id: str, results: Path, env: dict, log: Path, started: float, times: StepTimes,
              warm_from: Path | None = None) -> None:
    """Train one row on fold 0 (skip when finished, --c when interrupted; a warm row starts from `warm_from`)."""
    folder = fold_dir(results, trainer, plans_id)
    if (folder / "checkpoint_final.pth").is_file():
        _say(started, f"{trainer}: already trained")
        return
    resume = (folder / "checkpoint_latest.pth").is_file()
    command = "nnUNetv2_train_vl" if warm_from is not None else "nnUNetv2_train"
    extra = ["--c"] if resume else (["-pretrained_weights", str(warm_from)] if warm_from is not None else [])
    t0 = time.time()
    _run(f"train {trainer}", [_bin(command), str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer, "-p", plans_id,
                              "-device", "cpu", *extra], env, log, started)
    times.record(f"train {trainer}", time.time() - t0, add=resume)


def pseudo_dice_curve(results: Path, trainer: str, plans_id: str) -> list[float]:
    """nnU-Net's per-epoch validation pseudo Dice (mean over classes) from the final checkpoint's log."""
    import numpy as np
    import torch

    checkpoint = torch.load(fold_dir(results, trainer, plans_id) / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    return [float(np.nanmean(d)) for d in checkpoint["logging"]["dice_per_class_or_region"]]


def run_benchmark(src: Path, workdir: Path, methods: list[str], m: tuple[int, int], k: tuple[int, int],
                  batch_size: int, encoder: str, max_val: int | None, tta: bool, only: list[str] | None) -> dict:
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    env = demo_environment(workdir)
    trainer_folder = workdir / "warm_start_trainers"
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(trainer_folder)])
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[var] = env[var]
    log = workdir / "warm_start.log"
    raw_root, pre_root = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    times = StepTimes(workdir / "warm_start_step_times.json")
    dataset_folder, _ = convert(src, raw_root, pre_root, started)
    preprocessed = pre_root / dataset_folder.name
    results = Path(env["nnUNet_results"]) / dataset_folder.name
    plans, _ = plan(preprocessed, encoder, results, env, log, started)
    fold0 = ensure_splits(dataset_folder, preprocessed, started)
    plans_id = plans_with_batch_size(preprocessed, CONFIGURATION, batch_size)
    total = (m[0] + k[0], m[1]) if m[1] == k[1] else None
    if total is None:
        raise SystemExit("--iterations is shared by M and K: give both budgets the same iterations per epoch")
    write_budget_trainers(trainer_folder, [(*m, False), (*k, True), (*total, False)], val_iterations=4)

    image_m = f"nnUNetTrainer_{budget_name(*m)}"
    rows = [{"row": "image-only M", "trainer": image_m, "iterations": m[0] * m[1], "vl": False}]
    rows.append({"row": "image-only M+K", "trainer": f"nnUNetTrainer_{budget_name(*total)}",
                 "iterations": total[0] * total[1], "vl": False})
    for method in methods:
        rows.append({"row": f"{method}: image-only M, then VL K", "trainer": f"nnUNetTrainer{method}_"
                     f"{budget_name(*k, warm=True)}", "iterations": m[0] * m[1] + k[0] * k[1], "vl": True,
                     "warm_from": image_m})
        rows.append({"row": f"{method}: VL from scratch M+K", "trainer": f"nnUNetTrainer{method}_"
                     f"{budget_name(*total)}", "iterations": total[0] * total[1], "vl": True})
    # cheapest evidence first: the warm rows need image-only M, which is also a row
    order = [0] + [i for i, r in enumerate(rows) if "warm_from" in r] + [1] + \
            [i for i, r in enumerate(rows) if r["vl"] and "warm_from" not in r]
    ending = json.loads((dataset_folder / "dataset.json").read_text())["file_ending"]
    val_cases = fold0["val"][:max_val] if max_val else list(fold0["val"])
    images, labels = validation_folders(dataset_folder, val_cases, workdir, ending)
    common = ["-i", str(images), "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "0", "-device", "cpu",
              "-p", plans_id, "-npp", "1", "-nps", "1", "--disable_progress_bar", *([] if tta else ["--disable_tta"])]
    for i in order:
        row = rows[i]
        if only and not any(word in row["row"] for word in only):
            row["status"] = "not run (left out by --only)"
            continue
        warm_from = fold_dir(results, row["warm_from"], plans_id) / "checkpoint_final.pth" \
            if "warm_from" in row else None
        if warm_from is not None and not warm_from.is_file():
            row["status"] = f"not run: {row['warm_from']} is not trained"
            continue
        train_row(row["trainer"], plans_id, results, env, log, started, times, warm_from)
        row["train_s"] = times.steps.get(f"train {row['trainer']}")
        row["pseudo_dice_per_epoch"] = pseudo_dice_curve(results, row["trainer"], plans_id)
        for mode in (("report", "shuffled") if row["vl"] else ("image",)):
            out = workdir / "predictions_warm_start" / f"{row['trainer']}_{mode}"
            shutil.rmtree(out, ignore_errors=True)
            command = ["nnUNetv2_predict_vl", "--text-mode", mode] if row["vl"] else ["nnUNetv2_predict"]
            _run(f"predict {row['trainer']} ({mode})", [_bin(command[0]), *common, "-o", str(out), "-tr",
                                                        row["trainer"], *command[1:]], env, log, started)
            scored = score(labels, out, dataset_folder)
            row[mode] = {"dice": scored["dice"], "iou": scored["iou"], "n_cases": scored["n_cases"]}
            _say(started, f"{row['row']} ({mode}): Dice {scored['dice']:.4f}")
        row["status"] = "done"
    config = plans["configurations"][CONFIGURATION]
    return {"dataset": dataset_folder.name, "source": str(src), "configuration": CONFIGURATION,
            "data": {"train": len(fold0["train"]), "val": len(fold0["val"]), "val_evaluated": len(val_cases)},
            "budget": {"M": {"epochs": m[0], "iterations_per_epoch": m[1]},
                       "K": {"epochs": k[0], "iterations_per_epoch": k[1]}, "batch_size": batch_size,
                       "planned_batch_size": config["batch_size"], "plans": plans_id,
                       "patch_size": config["patch_size"]},
            "test_time_mirroring": tta, "text_encoder": encoder, "rows": rows, "wall_time_s": time.time() - started,
            "log": str(log)}


def _pct(entry: dict | None) -> str:
    return "–" if not entry else f"{100 * entry['dice']:.2f}"


def markdown(summary: dict, command: str) -> str:
    b, data = summary["budget"], summary["data"]
    m_it = b["M"]["epochs"] * b["M"]["iterations_per_epoch"]
    k_it = b["K"]["epochs"] * b["K"]["iterations_per_epoch"]
    lines = ["## Warm start on QaTa-COV19", "",
             f"Command: `{command}` ({summary['wall_time_s'] / 60:.1f} min this invocation). {data['train']} training "
             f"images, Dice on {data['val_evaluated']} of {data['val']} validation images (nnU-Net's evaluation, "
             f"infection class, %). M = {m_it} and K = {k_it} iterations at batch {b['batch_size']} (plans "
             f"`{b['plans']}`, patch {'x'.join(map(str, b['patch_size']))}), "
             f"{'with' if summary['test_time_mirroring'] else 'without'} test-time mirroring. One run per row.", "",
             "| row | iterations | own report | shuffled reports | training (min) |", "|---|---|---|---|---|"]
    for row in summary["rows"]:
        if row.get("status") != "done":
            lines.append(f"| {row['row']} | {row['iterations']} | {row.get('status', 'not run')} | | |")
            continue
        own = row["report"] if row["vl"] else row["image"]
        train_min = f"{row['train_s'] / 60:.1f}" if row.get("train_s") else "–"
        if "warm_from" in row:
            train_min += " (+ image-only M)"
        lines.append(f"| {row['row']} | {row['iterations']} | {_pct(own)} | "
                     f"{_pct(row.get('shuffled')) if row['vl'] else '(ignores text)'} | {train_min} |")
    return "\n".join(lines)


def figure(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = summary["budget"]
    per_epoch = b["M"]["iterations_per_epoch"]
    m_it = b["M"]["epochs"] * per_epoch
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in summary["rows"]:
        curve = row.get("pseudo_dice_per_epoch")
        if not curve:
            continue
        offset = m_it if "warm_from" in row else 0
        ax.plot([offset + per_epoch * (e + 1) for e in range(len(curve))], curve, marker="o", ms=3, label=row["row"],
                linestyle="--" if not row["vl"] else "-")
    ax.axvline(m_it, color="grey", lw=0.8)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("validation pseudo Dice (nnU-Net, per epoch)")
    ax.set_title("QaTa-COV19: warm start from image-only nnU-Net")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(DEFAULT_SRC), help=f"QaTa-COV19 copy (default {DEFAULT_SRC})")
    p.add_argument("--workdir", default=None, help=f"nnU-Net folders (default {DEFAULT_WORKDIR}, shared with qata.py)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--methods", nargs="+", default=["BiPVL", "TMCA"])
    p.add_argument("--m-epochs", type=int, default=4, help="image-only epochs before the warm start (M)")
    p.add_argument("--k-epochs", type=int, default=4, help="VL epochs after it (K)")
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch (M and K alike)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--max-val", type=int, default=100, help="score the first N validation images (0: all)")
    p.add_argument("--tta", action="store_true", help="predict with test-time mirroring (default: without)")
    p.add_argument("--only", nargs="+", default=None, help="train only rows whose name contains one of these words")
    p.add_argument("--smallest", action="store_true", help="12 train / 4 val images, 1 x 5 iterations (plumbing)")
    args = p.parse_args(argv)
    command = "python benchmarks/warm_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    src = Path(args.src).expanduser().resolve()
    workdir = Path(args.workdir or (DEFAULT_WORKDIR_SMALLEST if args.smallest else DEFAULT_WORKDIR)).resolve()
    m, k = (args.m_epochs, args.iterations), (args.k_epochs, args.iterations)
    if args.smallest:
        src = make_smallest_source(src, workdir / "source_smallest")
        m, k = (1, 5), (1, 5)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = run_benchmark(src, workdir, args.methods, m, k, args.batch_size, args.text_encoder,
                            args.max_val or None, args.tta, args.only)
    summary["command"] = command.strip()
    (out / "warm_start.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    md = markdown(summary, command.strip())
    (out / "warm_start.md").write_text(md + "\n", encoding="utf-8")
    figure(summary, out / "warm_start.png")
    print("\n" + md)
    print(f"\nwrote {out / 'warm_start.json'}, {out / 'warm_start.md'}, {out / 'warm_start.png'}")


if __name__ == "__main__":
    main()
