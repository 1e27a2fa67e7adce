"""Does the text help? Image-only nnU-Net vs. the VL trainers on the synthetic text-dependent datasets.

Same plans, same epoch budget, fixed seeds, held-out test cases; every VL model is predicted with its
own reports, with shuffled reports (another case's) and with no text. Writes
benchmarks/results/text_matters.{json,md,png}.

    python benchmarks/text_matters.py                 # 2D and 3D, demo budget (CPU: about an hour)
    python benchmarks/text_matters.py --smallest      # smoke run: 2D, tiny data (16 + 4 cases of 32x32), 2 x 5 iterations
    python benchmarks/text_matters.py --dims 3 --methods BiPVL --budget 5epochs --batch-size 4

Results of dimensions and settings not run now are kept from the existing JSON, so `--dims 3` adds 3D beside an
earlier 2D run, and a run with another --budget or --batch-size is a table of its own. A run of a setting that
exists with other --methods keeps the earlier run's VL rows beside its own (noted in the markdown).
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnunet_vl.cli.demo import DATASET_IDS, demo_environment, format_table, run_demo  # noqa: E402

METHODS = ["BiPVL", "TMCA", "BiPVL_noText", "TMCA_noText"]
# --smallest: the demo's quick dataset (its 16 training / 4 test cases) at half the demo's 64x64 image edge
SMALLEST_DATASET = {"num_train": 16, "num_test": 4, "size": 32}
GOALS = "goals: VL with reports >= image-only + 0.25 Dice; shuffled reports >= 0.2 below own reports"


def make_smallest_dataset(workdir: Path, dim: int, rule: str) -> None:
    """Write the --smallest dataset where run_demo looks for its dataset (run_demo reuses a dataset made with the
    same rule and number of training cases), so the smoke run plans, trains and predicts on 4x fewer pixels."""
    from nnunet_vl.data.synthetic import make_synthetic_dataset

    raw_root = Path(demo_environment(workdir.resolve())["nnUNet_raw"])
    if not list(raw_root.glob(f"Dataset{DATASET_IDS[dim]:03d}_*")):
        make_synthetic_dataset(raw_root, DATASET_IDS[dim], dim=dim, seed=0, rule=rule, **SMALLEST_DATASET)


def plot(results: dict[str, dict], out: Path, rule: str) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), squeeze=False)
    modes = [("report", "own report"), ("shuffled", "shuffled reports"), ("none", "no text")]
    for ax, (dim, summary) in zip(axes[0], results.items()):
        rows = summary["rows"]
        names = list(rows)
        width = 0.8 / len(modes)
        for j, (mode, label) in enumerate(modes):
            values = [rows[n].get(mode, rows[n]["report"] if n.startswith("nnUNetTrainer (") else 0) for n in names]
            ax.bar([i + j * width for i in range(len(names))], values, width, label=label)
        ax.set_xticks([i + width for i in range(len(names))])
        ax.set_xticklabels([n.replace("nnUNetTrainer", "").strip("_ ") or "image only" for n in names],
                           rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean Dice (test cases)")
        ax.set_title(f"{dim} synthetic text-dependent data\n(reports name the target by {rule})", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def earlier_results(path: Path, rule: str) -> dict[str, dict]:
    """Results of an earlier run's JSON with the same rule, each with its command."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("rule", "position") != rule:
        return {}
    # files written before results carried their own command kept it (and a note) at the top level
    return {dim: {"command": report.get("command"), **({"note": report["note"]} if "note" in report else {}),
                  **summary} for dim, summary in report["results"].items()}


def keep_earlier_rows(summary: dict, earlier: dict) -> None:
    """Add the VL rows of an earlier run of the same setting (same dataset, seed and plans) that this run did not
    train; `kept_rows` records which rows came from which command and that run's image-only Dice."""
    kept = {name: row for name, row in earlier["rows"].items()
            if name not in summary["rows"] and not name.startswith("nnUNetTrainer (")}
    if not kept:
        return
    image_only, *trained = summary["rows"].items()
    order = {f"nnUNetTrainer{m}_{summary['budget']}": i for i, m in enumerate(METHODS)}
    summary["rows"] = dict([image_only, *sorted([*trained, *kept.items()], key=lambda r: order.get(r[0], len(order)))])
    groups = earlier.get("kept_rows", [])
    own = [name for name in kept if not any(name in g["rows"] for g in groups)]
    groups = [{**g, "rows": [n for n in g["rows"] if n in kept]} for g in groups]
    if own:
        groups.append({"rows": own, "command": earlier["command"],
                       "image_only": earlier["rows"]["nnUNetTrainer (image only)"]["report"]})
    summary["kept_rows"] = [g for g in groups if g["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="benchmarks/results/work_text_matters")
    parser.add_argument("--out", default="benchmarks/results", help="where the JSON, markdown and PNG go")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--rule", default="position", choices=["position", "side", "size", "mixed"],
                        help="what the reports say to pick the target; results of another rule than 'position' "
                             "go to text_matters_RULE.*")
    parser.add_argument("--budget", default="demo", choices=["demo", "5epochs"],
                        help="training length of every model: demo = 12 x 25 iterations, 5epochs = 5 x 250")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="train every model with a copy of the plans with this batch size (default: planned)")
    parser.add_argument("--smallest", action="store_true", help="2D only, tiny data, CPU smoke budget")
    args = parser.parse_args()
    dims = [2] if args.smallest else args.dims
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "text_matters" if args.rule == "position" else f"text_matters_{args.rule}"
    command = shlex.join(["python", "benchmarks/text_matters.py", *sys.argv[1:]])
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only"
    started = time.time()
    results = {}
    for dim in dims:
        if args.smallest:
            make_smallest_dataset(Path(args.workdir) / f"{dim}d", dim, args.rule)
        summary = run_demo(Path(args.workdir) / f"{dim}d", dim=dim, encoder=args.text_encoder, methods=args.methods,
                           quick=args.smallest, rule=args.rule, budget=None if args.smallest else args.budget,
                           batch_size=args.batch_size)
        setting = "" if args.smallest or (args.budget, args.batch_size) == ("demo", None) else \
            f", {summary['budget']} budget, {summary['plans']}"
        results[f"{dim}D{setting}"] = {"command": command, "machine": machine, **summary}
    wall = time.time() - started
    earlier = earlier_results(out / f"{stem}.json", args.rule)
    for dim, summary in results.items():
        if dim in earlier:
            keep_earlier_rows(summary, earlier[dim])
    results = dict(sorted({**earlier, **results}.items()))
    report = {"results": results, "wall_time_s": wall, "machine": machine, "goals": GOALS, "rule": args.rule,
              "command": command}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [f"Reports name the target by {args.rule}. {GOALS}.", ""]
    for dim, summary in results.items():
        notes = [summary["note"]] if summary.get("note") else []
        notes += [f"rows {', '.join(g['rows'])} from an earlier run, `{g['command']}` (its image-only model: "
                  f"{g['image_only']:.3f})" for g in summary.get("kept_rows", [])]
        note = f" ({'; '.join(notes)})" if notes else ""
        plans = summary.get("plans", "nnUNetPlans")
        lines += [f"**{dim}** ({summary['dataset']}, configuration {summary['configuration']}, plans `{plans}`, "
                  f"budget `{summary['budget']}`) — command `{summary['command']}`, {summary.get('machine', machine)}, "
                  f"{summary['wall_time_s'] / 60:.0f} min{note}", "", format_table(summary["rows"]), ""]
    (out / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")
    plot(results, out / f"{stem}.png", args.rule)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
