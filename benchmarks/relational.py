"""Reading reports, not keywords (issue #23): image-only nnU-Net vs. BiPVL and TMCA on the relational synthetic
datasets, where the report names the target by its rank among 3-5 freely placed look-alikes ("the second lesion
from the left", "the smaller of the two upper nodules").

text_matters.py's protocol (nnunet_vl.cli.demo.run_demo: same plans and budget for every row, 200 training / 40
test cases, data seed 0), with one more column: the test cases predicted by the same trained models with their
reports in held-out wording (templates and synonyms no training case uses; `reports_heldout.json` in the raw
dataset folder, passed as `nnUNetv2_predict_vl --reports`) and scored with nnU-Net's evaluation like the others.

    python benchmarks/relational.py --smallest                    # plumbing: 2D, 16 + 4 cases of 32x32, 2 x 5 iterations
    python benchmarks/relational.py --dims 2 --budget-factor 1    # 2D, the demo budget (12 x 25 iterations)
    python benchmarks/relational.py --dims 2 3 --budget-factor 4 --methods BiPVL TMCA BiPVL_noText TMCA_noText

--budget-factor F trains every row for F x the demo budget's epochs (12F x 25 iterations); for F != 1 the budget
trainers (`nnUNetTrainer_demox4`, `nnUNetTrainerBiPVL_demox4`, ...) are written into the work directory and found
through nnUNet_extTrainer. Rows resume one by one: a scored row is reused, a trained row is only predicted again,
an interrupted training continues (--c). Settings (dim, rule, budget) not run now are kept from the existing JSON.
Writes <out>/relational.{json,md,png} (--smallest: into its work directory).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_matters import make_smallest_dataset  # noqa: E402

from nnunet_vl.cli import demo  # noqa: E402
from nnunet_vl.cli.demo import DATASET_IDS, _bin, _run, demo_environment, run_demo  # noqa: E402

RULES = ("relational", "rank", "size_rank", "combined")
METHODS = ["BiPVL", "TMCA"]
IMAGE_ONLY = "nnUNetTrainer (image only)"
DEFAULT_WORKDIR = REPO / "benchmarks" / "results" / "work_relational"
DEFAULT_WORKDIR_SMALLEST = REPO / "benchmarks" / "results" / "work_relational_smallest"
TRAINER_MODULE = "relational_budgets.py"
DEMO_EPOCHS, DEMO_ITERATIONS, DEMO_VAL_ITERATIONS = 12, 25, 4  # nnunet_vl.training.budgets.DEMO
CPU_EPOCHS, CPU_ITERATIONS = 2, 5  # budgets.CPU_SMOKE (--smallest)
MODES = ("report", "shuffled", "heldout", "none")
MODE_LABELS = {"report": "own report", "shuffled": "shuffled reports", "heldout": "held-out wording",
               "none": "no text"}

# issue #23's goals, per row of the relational rules, at the demo budget x GOAL_BUDGET_FACTOR
GOAL_BUDGET_FACTOR = 4
GOAL_GAIN = 0.4  # own report >= image-only + this
GOAL_SHUFFLED_DROP = 0.3  # shuffled <= own report - this
GOAL_HELDOUT_RATIO = 0.9  # held-out wording >= this x own report
TOLERANCE = 1e-9  # a Dice exactly at a threshold meets it (thresholds are sums of floats)
GOALS = (f"goals (issue #23, at the demo budget x{GOAL_BUDGET_FACTOR}, per row): BiPVL and TMCA with their own "
         f"report >= image-only + {GOAL_GAIN}; shuffled <= own report - {GOAL_SHUFFLED_DROP}; held-out wording >= "
         f"{GOAL_HELDOUT_RATIO} x own report; BiPVL no worse than TMCA (own report and held-out wording)")


# ----- budgets ---------------------------------------------------------------------------------------------
def budget_suffix(factor: int, smallest: bool = False) -> str:
    """The trainer variants' suffix: `cpu` (--smallest), `demo` (factor 1: the shipped trainers), else `demox<F>`."""
    return "cpu" if smallest else "demo" if factor == 1 else f"demox{factor}"


def budget_iterations(factor: int, smallest: bool = False) -> tuple[int, int]:
    """(epochs, iterations per epoch) of a budget."""
    return (CPU_EPOCHS, CPU_ITERATIONS) if smallest else (DEMO_EPOCHS * factor, DEMO_ITERATIONS)


def write_budget_trainers(folder: Path, factor: int, methods: list[str]) -> None:
    """One trainer class per model at factor x the demo epochs (nnUNetTrainer_demox4, nnUNetTrainerBiPVL_demox4, ...),
    in a module of `folder` that nnU-Net's trainer lookup imports (rewritten only when it changes)."""
    epochs, iterations = budget_iterations(factor)
    bases = {"": ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer")}
    for method in methods:
        family = method.split("_")[0]
        bases[method] = (f"nnunet_vl.training.nnUNetTrainer{family}", f"nnUNetTrainer{method}")
    lines = ['"""Budget variants for benchmarks/relational.py (written by it)."""',
             "from nnunet_vl.training.budgets import Budget, WithBudget"]
    lines += [f"from {module} import {name}" for module, name in sorted(set(bases.values()))]
    for module, name in bases.values():
        lines += ["", "", f"class {name}_{budget_suffix(factor)}(WithBudget, {name}):",
                  f"    budget = Budget({epochs}, {iterations}, {DEMO_VAL_ITERATIONS})"]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    target = folder / TRAINER_MODULE
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def trainer_lookup(folder: Path | None) -> Iterator[None]:
    """Point run_demo's nnUNet_extTrainer (and its check that the trainers exist) at `folder` (None: unchanged).

    run_demo has no parameter for another trainer folder and nnunet_vl/ is not this benchmark's to change, so its
    module's `trainer_dir` is replaced for the duration."""
    if folder is None:
        yield
        return
    with mock.patch.object(demo, "trainer_dir", lambda: folder):
        yield


# ----- running ---------------------------------------------------------------------------------------------
def setting_key(dim: int, rule: str, factor: int, smallest: bool, batch_size: int | None) -> str:
    budget = "smallest (CPU smoke budget)" if smallest else f"demo budget x{factor}"
    return f"{dim}D, {rule}, {budget}" + (f", batch {batch_size}" if batch_size else "")


def is_trained(workdir: Path, dim: int, trainer: str, batch_size: int | None) -> bool:
    """Whether `trainer` has a final checkpoint in the setting's work dir (under nnUNetPlans or its batch copy)."""
    configuration = "2d" if dim == 2 else "3d_fullres"
    plans = ["nnUNetPlans"] + ([f"nnUNetPlans_bs{batch_size}"] if batch_size else [])
    folders = list((workdir / "results").glob(f"Dataset{DATASET_IDS[dim]:03d}_*"))
    return any((f / f"{trainer}__{p}__{configuration}" / "fold_0" / "checkpoint_final.pth").is_file()
               for f in folders for p in plans)


def predict_heldout(workdir: Path, dim: int, summary: dict, trainer: str) -> float:
    """Mean Dice of `trainer`'s test predictions with the test reports in held-out wording (nnU-Net's evaluation)."""
    from nnunet_vl.data.synthetic import HELDOUT_REPORTS
    from nnunet_vl.inference.evaluate import mean_dice

    env = demo_environment(workdir)
    dataset_folder = Path(env["nnUNet_raw"]) / summary["dataset"]
    out = workdir / "predictions" / f"{trainer}__{summary['plans']}_heldout"
    _run(f"predict {trainer} (held-out wording)",
         [_bin("nnUNetv2_predict_vl"), "-i", str(dataset_folder / "imagesTs"), "-o", str(out),
          "-d", str(DATASET_IDS[dim]), "-c", summary["configuration"], "-f", "0",
          "-p", summary["plans"], "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
          "--disable_progress_bar", "--reports", str(dataset_folder / HELDOUT_REPORTS)],
         env, workdir / "demo.log", time.time())
    return mean_dice(dataset_folder / "labelsTs", out, dataset_folder)


def run_setting(workdir: Path, dim: int, rule: str, factor: int, smallest: bool, methods: list[str],
                encoder: str, batch_size: int | None, earlier: dict, deadline: datetime.datetime | None,
                save) -> dict:
    """Train and score the rows of one setting one by one, reusing the rows of `earlier` (the same setting's entry
    of an earlier JSON); `save(setting)` is called after every row."""
    suffix = budget_suffix(factor, smallest)
    epochs, iterations = budget_iterations(factor, smallest)
    setting = {"dim": dim, "rule": rule, "budget": suffix, "budget_factor": None if smallest else factor,
               "epochs": epochs, "iterations_per_epoch": iterations, "batch_size": batch_size,
               "rows": dict(earlier.get("rows", {})), "not_run": {}}
    for key in ("dataset", "configuration", "plans"):
        if key in earlier:
            setting[key] = earlier[key]
    folder = None
    if not smallest and factor != 1:
        folder = workdir / "relational_trainers"
        write_budget_trainers(folder, factor, methods)
    if smallest:
        make_smallest_dataset(workdir, dim, rule)
    for method in methods:
        trainer = f"nnUNetTrainer{method}_{suffix}"
        if trainer in setting["rows"] and IMAGE_ONLY in setting["rows"]:
            print(f"{trainer}: scored in the earlier run, reused", flush=True)
            continue
        untrained = [t for t in (f"nnUNetTrainer_{suffix}", trainer) if not is_trained(workdir, dim, t, batch_size)]
        if untrained and deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= deadline:
            setting["not_run"][trainer] = f"not run: no new training after {deadline:%H:%M} UTC (--no-training-after)"
            print(f"{trainer}: {setting['not_run'][trainer]}", flush=True)
            continue
        started = time.time()
        with trainer_lookup(folder):
            summary = run_demo(workdir, dim=dim, encoder=encoder, methods=[method], quick=smallest, rule=rule,
                               budget=None if smallest else suffix, batch_size=batch_size)
            row = dict(summary["rows"][trainer])
            row["heldout"] = predict_heldout(workdir, dim, summary, trainer)
        row.update(runs=1, wall_time_s=time.time() - started, trained_now=trainer in untrained)
        setting["rows"].setdefault(IMAGE_ONLY, {**summary["rows"][IMAGE_ONLY], "runs": 1,
                                                "trainer": f"nnUNetTrainer_{suffix}"})
        setting["rows"][trainer] = row
        setting.update(dataset=summary["dataset"], configuration=summary["configuration"], plans=summary["plans"])
        save(setting)
    if not setting["not_run"]:
        del setting["not_run"]
    return setting


# ----- goals, table, plot ----------------------------------------------------------------------------------
def method_of(trainer: str) -> str:
    """'BiPVL', 'TMCA', 'BiPVL_noText', ... from a row name; IMAGE_ONLY stays as it is."""
    if trainer == IMAGE_ONLY:
        return trainer
    return trainer.removeprefix("nnUNetTrainer").rsplit("_", 1)[0]


def check_goals(setting: dict) -> list[dict]:
    """Issue #23's goals for every BiPVL / TMCA row of a setting: one entry per check with its value, threshold and
    whether it is met (rows without the needed columns are left out)."""
    rows = setting["rows"]
    image_only = rows.get(IMAGE_ONLY, {}).get("report")
    checks = []
    by_method = {method_of(name): (name, row) for name, row in rows.items()}
    for method in ("BiPVL", "TMCA"):
        if method not in by_method:
            continue
        name, row = by_method[method]
        report = row["report"]
        if image_only is not None:
            checks.append({"row": name, "goal": f"own report >= image-only + {GOAL_GAIN}", "value": report,
                           "threshold": image_only + GOAL_GAIN, "met": report >= image_only + GOAL_GAIN - TOLERANCE})
        if "shuffled" in row:
            checks.append({"row": name, "goal": f"shuffled <= own report - {GOAL_SHUFFLED_DROP}",
                           "value": row["shuffled"], "threshold": report - GOAL_SHUFFLED_DROP,
                           "met": row["shuffled"] <= report - GOAL_SHUFFLED_DROP + TOLERANCE})
        if "heldout" in row:
            checks.append({"row": name, "goal": f"held-out wording >= {GOAL_HELDOUT_RATIO} x own report",
                           "value": row["heldout"], "threshold": GOAL_HELDOUT_RATIO * report,
                           "met": row["heldout"] >= GOAL_HELDOUT_RATIO * report - TOLERANCE})
    if "BiPVL" in by_method and "TMCA" in by_method:
        (bipvl, b), (_, t) = by_method["BiPVL"], by_method["TMCA"]
        for mode in ("report", "heldout"):
            if mode in b and mode in t:
                checks.append({"row": bipvl, "goal": f"BiPVL >= TMCA ({MODE_LABELS[mode]})", "value": b[mode],
                               "threshold": t[mode], "met": b[mode] >= t[mode] - TOLERANCE})
    return checks


def format_setting(key: str, setting: dict) -> str:
    """A setting's markdown: its budget and commands, the table (runs per row), not-run rows and the goal checks."""
    budget = (f"`{setting['budget']}`: {setting['epochs']} x {setting['iterations_per_epoch']} iterations"
              + (f" (demo budget x{setting['budget_factor']})" if setting.get("budget_factor") else ""))
    lines = [f"### {key}", "",
             f"{setting.get('dataset', '?')}, configuration {setting.get('configuration', '?')}, plans "
             f"`{setting.get('plans', '?')}`, budget {budget}. Commands: "
             + "; ".join(f"`{c}`" for c in setting.get("commands", [])) + ".", "",
             "| model | runs | own report | shuffled reports | held-out wording | no text |", "|---|---|---|---|---|---|"]
    for name, row in setting["rows"].items():
        if name == IMAGE_ONLY:
            cells = [f"{row['report']:.3f}"] + ["(ignores text)"] * 3
        else:
            cells = [f"{row[m]:.3f}" if m in row else "n/a" for m in MODES]
        lines.append(f"| {name} | {row.get('runs', 1)} | " + " | ".join(cells) + " |")
    for name, why in setting.get("not_run", {}).items():
        lines.append(f"| {name} | 0 | {why} | | | |")
    timed = [f"{method_of(n)} {r['wall_time_s'] / 60:.0f} min ({'trained' if r.get('trained_now') else 'reused'})"
             for n, r in setting["rows"].items() if "wall_time_s" in r]
    if timed:
        lines += ["", "Wall time per VL row (planning, image-only prediction, training when trained in that call "
                      "(the first also trains image-only), 4 predictions): " + ", ".join(timed) + "."]
    checks = check_goals(setting)
    factor = setting.get("budget_factor")
    at = "the goal budget" if factor == GOAL_BUDGET_FACTOR else \
        f"this budget ({'smoke run' if factor is None else f'x{factor}'}, not the x{GOAL_BUDGET_FACTOR} goal budget)"
    if checks:
        lines += ["", f"Goals checked at {at}:", ""]
        lines += [f"- {c['row']}: {c['goal']}: {c['value']:.3f} vs {c['threshold']:.3f} "
                  f"{'met' if c['met'] else '✗ missed'}" for c in checks]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    lines = ["## Relational reports (issue #23)", "", GOALS + ".", "",
             "Mean test Dice (40 test cases unless `--smallest`); `runs` = training runs (seeds) behind each row.", ""]
    for key, setting in results["settings"].items():
        lines += [format_setting(key, setting), ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """One panel per setting: bars per row and column, image-only and image-only + GOAL_GAIN as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(7 * max(1, len(settings)), 5), squeeze=False)
    for ax, (key, setting) in zip(axes[0], settings.items()):
        rows = {n: r for n, r in setting["rows"].items() if n != IMAGE_ONLY}
        width = 0.8 / len(MODES)
        for j, mode in enumerate(MODES):
            ax.bar([i + j * width for i in range(len(rows))], [r.get(mode, 0.0) for r in rows.values()], width,
                   label=MODE_LABELS[mode])
        image_only = setting["rows"].get(IMAGE_ONLY, {}).get("report")
        if image_only is not None:
            ax.axhline(image_only, color="k", ls="--", lw=1, label=f"image only ({image_only:.3f})")
            ax.axhline(min(1.0, image_only + GOAL_GAIN), color="grey", ls=":", lw=1, label=f"image only + {GOAL_GAIN}")
        ax.set_xticks([i + 1.5 * width for i in range(len(rows))])
        ax.set_xticklabels([method_of(n) for n in rows])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean Dice (test cases)")
        runs = sorted({r.get("runs", 1) for r in setting["rows"].values()})
        ax.set_title(f"{key}\n{setting['epochs']} x {setting['iterations_per_epoch']} iterations; "
                     f"{'/'.join(map(str, runs))} run(s) per bar", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_results(results: dict, out: Path) -> None:
    (out / "relational.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "relational.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "relational.png")


def parse_deadline(text: str | None) -> datetime.datetime | None:
    """HH:MM (UTC, today) -> an aware datetime."""
    if not text:
        return None
    hours, minutes = (int(x) for x in text.split(":"))
    return datetime.datetime.now(datetime.timezone.utc).replace(hour=hours, minute=minutes, second=0, microsecond=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    p.add_argument("--rule", default="relational", choices=RULES)
    p.add_argument("--methods", nargs="+", default=METHODS,
                   help="VL trainer families (BiPVL TMCA BiPVL_noText TMCA_noText); image-only is always a row")
    p.add_argument("--budget-factor", type=int, default=GOAL_BUDGET_FACTOR,
                   help="every row trains factor x the demo budget's 12 epochs of 25 iterations (default: the goals' "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="a copy of the plans with this batch size")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--smallest", action="store_true", help="plumbing: 2D, 16 + 4 cases of 32x32, 2 x 5 iterations")
    p.add_argument("--workdir", type=Path, default=None,
                   help=f"nnU-Net folders (default {DEFAULT_WORKDIR}, --smallest: {DEFAULT_WORKDIR_SMALLEST})")
    p.add_argument("--out", type=Path, default=None,
                   help="where relational.{json,md,png} go (default benchmarks/results; --smallest: its work dir)")
    p.add_argument("--no-training-after", default=None, metavar="HH:MM",
                   help="UTC time after which no row starts a training (it is listed as not run)")
    args = p.parse_args(argv)
    dims = [2] if args.smallest else args.dims
    workdir = (args.workdir or (DEFAULT_WORKDIR_SMALLEST if args.smallest else DEFAULT_WORKDIR)).resolve()
    out = (args.out or (workdir if args.smallest else REPO / "benchmarks" / "results")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/relational.py", *(argv if argv is not None else sys.argv[1:])])
    path = out / "relational.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results.update(goals=GOALS, machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only")
    results.setdefault("settings", {})
    deadline = parse_deadline(args.no_training_after)
    for dim in dims:
        key = setting_key(dim, args.rule, args.budget_factor, args.smallest, args.batch_size)
        earlier = results["settings"].get(key, {})
        commands = list(dict.fromkeys([*earlier.get("commands", []), command]))

        def save(setting: dict, key: str = key, commands: list[str] = commands) -> None:
            results["settings"][key] = {**setting, "commands": commands}
            write_results(results, out)

        setting = run_setting(workdir / args.rule / f"{dim}d", dim, args.rule, args.budget_factor, args.smallest,
                              args.methods, args.text_encoder, args.batch_size, earlier, deadline, save)
        save(setting)
    print(markdown(results))
    print(f"\nwrote {out / 'relational.json'}, .md, .png")


if __name__ == "__main__":
    main()
