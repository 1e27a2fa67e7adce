"""The README's main job: does the text help? Synthetic data -> plan -> train -> predict -> Dice table.

Every step runs the same command a user would type (nnUNetv2_train for training, so the stock entry
point is exercised), with nnU-Net's environment variables pointed into the work directory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from nnunet_vl.cli.environment import trainer_dir

DATASET_IDS = {2: 990, 3: 991}


def demo_environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        env[var] = str(workdir / sub)
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    env["nnUNet_extTrainer"] = str(trainer_dir())
    env.setdefault("HF_HUB_OFFLINE", "1")
    # small jobs: starting process pools takes longer than the work they would share
    env.setdefault("nnUNet_def_n_proc", "1")
    env.setdefault("nnUNet_n_proc_DA", "2")
    return env


class EpochProgress:
    """Turns nnU-Net's training log lines into one line per epoch: epoch k/N, train loss, pseudo Dice, elapsed."""

    _EPOCH = re.compile(r": Epoch (\d+)$")
    _LOSS = re.compile(r": train_loss (\S+)$")
    _DICE = re.compile(r": Pseudo dice \[(.*)\]$")
    _TIME = re.compile(r": Epoch time: [\d.]+ s$")
    _FLOAT = re.compile(r"nan|[-+]?\d*\.\d+(?:e[-+]?\d+)?")

    def __init__(self, num_epochs: int | None, started: float) -> None:
        self.num_epochs, self.started = num_epochs, started
        self.epoch: int | None = None
        self.loss = self.dice = float("nan")

    def feed(self, line: str) -> str | None:
        """The progress line to print when `line` closes an epoch, else None."""
        line = line.rstrip()
        if m := self._EPOCH.search(line):
            self.epoch, self.loss, self.dice = int(m.group(1)), float("nan"), float("nan")
        elif m := self._LOSS.search(line):
            self.loss = float(m.group(1))
        elif m := self._DICE.search(line):
            values = [float(v) for v in self._FLOAT.findall(m.group(1))]
            self.dice = sum(values) / len(values) if values else float("nan")
        elif self._TIME.search(line) and self.epoch is not None:
            total = f"/{self.num_epochs}" if self.num_epochs else ""
            return (f"    epoch {self.epoch + 1}{total}: train loss {self.loss:.3f}, pseudo Dice {self.dice:.3f}, "
                    f"{time.time() - self.started:.0f} s elapsed")
        return None


def _run(step: str, cmd: list[str], env: dict[str, str], log: Path, started: float,
         progress: EpochProgress | None = None) -> float:
    """Run cmd with its output appended to log; with progress, print one line per finished training epoch. Returns
    the process's max RSS in MB (os.wait4's ru_maxrss: the largest of it and its reaped children)."""
    print(f"[{time.time() - started:6.0f}s] {step}: {' '.join(cmd)}", flush=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", bufsize=1)
        for line in process.stdout:
            f.write(line)
            if progress is not None and (summary := progress.feed(line)) is not None:
                print(summary, flush=True)
        _, status, usage = os.wait4(process.pid, 0)
        returncode = process.returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-30:]
        raise RuntimeError(f"step '{step}' failed (exit {returncode}); last lines of {log}:\n" + "\n".join(tail))
    return usage.ru_maxrss / 1024  # Linux: kB


def _bin(name: str) -> str:
    """The console script installed next to this Python (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_demo(workdir: Path, dim: int = 2, encoder: str = "minilm", methods: list[str] | tuple[str, ...] = ("BiPVL",),
             quick: bool = False, num_train: int | None = None, rule: str = "position", budget: str | None = None,
             batch_size: int | None = None) -> dict:
    """Run the whole job; returns and prints the Dice table (also saved as workdir/demo_results.json).

    rule: what the reports say to pick the target (see make_synthetic_dataset); an existing dataset in
    workdir is reused when it was made with the same rule and size (else: an error naming it).
    budget: the trainer variants' suffix, `cpu` (quick), `demo` (default) or `5epochs` (5 x 250 iterations);
    batch_size: train every model with a copy of the plans with this batch size (plans_with_batch_size).
    """
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.inference.evaluate import mean_dice
    from nnunet_vl.planning.api import plans_with_batch_size
    from nnunet_vl.training.budgets import BUDGETS

    started = time.time()
    workdir = workdir.resolve()
    env = demo_environment(workdir)
    log = workdir / "demo.log"
    dataset_id = DATASET_IDS[dim]
    configuration = "2d" if dim == 2 else "3d_fullres"
    budget = budget or ("cpu" if quick else "demo")
    # methods name trainer families: "BiPVL", "TMCA", "BiPVL_noText", ... (variants with the same budget)
    trainers = [f"nnUNetTrainer_{budget}"] + [f"nnUNetTrainer{m}_{budget}" for m in methods]
    missing = [t for t in trainers if not _trainer_exists(t)]
    if missing:
        raise SystemExit(f"no trainer {missing} for budget '{budget}'. Fix: choose methods that have a "
                         f"'_{budget}' variant in nnunet_vl/training, or another budget")
    raw_root = Path(env["nnUNet_raw"])
    existing = list(raw_root.glob(f"Dataset{dataset_id:03d}_*"))
    sizes = {"num_train": 16, "num_test": 4} if quick else {"num_train": num_train or 200, "num_test": 40}
    if existing:
        dataset_folder = existing[0]
        made = json.loads((dataset_folder / "dataset.json").read_text())
        if (made.get("synthetic_rule"), made.get("numTraining")) != (rule, sizes["num_train"]):
            raise SystemExit(f"{dataset_folder} was made with rule '{made.get('synthetic_rule')}' and "
                             f"{made.get('numTraining')} training cases, this run asks for rule '{rule}' and "
                             f"{sizes['num_train']}. Fix: use another work dir, or delete {workdir}")
        print(f"[{time.time() - started:6.0f}s] using existing dataset {dataset_folder}")
    else:
        dataset_folder = make_synthetic_dataset(raw_root, dataset_id, dim=dim, seed=0, rule=rule, **sizes)
        print(f"[{time.time() - started:6.0f}s] wrote synthetic dataset {dataset_folder}")
    _run("plan and preprocess", [_bin("nnUNetv2_plan_and_preprocess_vl"), "-d", str(dataset_id), "-c", configuration,
                                 "-np", "1", "-npfp", "1", "--text-encoder", encoder], env, log, started)

    plans_id = plans_with_batch_size(Path(env["nnUNet_preprocessed"]) / dataset_folder.name, configuration,
                                     batch_size)
    results = Path(env["nnUNet_results"]) / dataset_folder.name
    for trainer in trainers:
        fold_dir = results / f"{trainer}__{plans_id}__{configuration}" / "fold_0"
        if (fold_dir / "checkpoint_final.pth").is_file():
            print(f"[{time.time() - started:6.0f}s] {trainer}: already trained")
            continue
        resume = ["--c"] if (fold_dir / "checkpoint_latest.pth").is_file() else []
        _run(f"train {trainer}", [_bin("nnUNetv2_train"), str(dataset_id), configuration, "0", "-tr", trainer,
                                  "-p", plans_id, "-device", "cpu", *resume], env, log, started,
             EpochProgress(BUDGETS[budget].epochs if budget in BUDGETS else None, time.time()))

    images = dataset_folder / "imagesTs"
    predictions = workdir / "predictions"
    common = ["-i", str(images), "-d", str(dataset_id), "-c", configuration, "-f", "0", "-p", plans_id,
              "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    rows: dict[str, dict[str, float]] = {}
    out = predictions / f"{trainers[0]}__{plans_id}"
    _run("predict image-only", [_bin("nnUNetv2_predict"), *common, "-o", str(out), "-tr", trainers[0]], env, log,
         started)
    rows["nnUNetTrainer (image only)"] = {"report": mean_dice(dataset_folder / "labelsTs", out, dataset_folder)}
    for trainer in trainers[1:]:
        row = {}
        for mode in ("report", "shuffled", "none"):
            out = predictions / f"{trainer}__{plans_id}_{mode}"
            _run(f"predict {trainer} ({mode})", [_bin("nnUNetv2_predict_vl"), *common, "-o", str(out), "-tr",
                                                 trainer, "--text-mode", mode], env, log, started)
            row[mode] = mean_dice(dataset_folder / "labelsTs", out, dataset_folder)
        rows[trainer] = row
    figure = comparison_figure(dataset_folder, predictions, trainers, plans_id, workdir / "demo_cases.png")
    elapsed = time.time() - started
    table = format_table(rows)
    print("\nDice on the held-out synthetic test cases (text decides which look-alike object is the target):\n")
    print(table)
    print(f"\nfigure: {figure}")
    print(f"wall time {elapsed / 60:.1f} min; log: {log}")
    summary = {"rows": rows, "wall_time_s": elapsed, "dataset": dataset_folder.name, "configuration": configuration,
               "budget": budget, "plans": plans_id, "figure": str(figure)}
    (workdir / "demo_results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def comparison_figure(dataset_folder: Path, predictions: Path, trainers: list[str], plans_id: str, out: Path,
                      num_cases: int = 3) -> Path:
    """A PNG of the first test cases: image-only prediction, then the first VL model with its own and a shuffled
    report, with both reports printed under each row."""
    from nnunet_vl.inference.comparison import Panel, render_comparison
    from nnunet_vl.text.contract import load_dataset_text
    from nnunet_vl.text.provider import shuffled_partner

    reports = load_dataset_text(dataset_folder, require_reports=False).reports
    image_only, vl = trainers[0], trainers[1]
    name = vl.removeprefix("nnUNetTrainer").split("_")[0]
    panels = [Panel("image only", predictions / f"{image_only}__{plans_id}"),
              Panel(f"{name}, own report", predictions / f"{vl}__{plans_id}_report"),
              Panel(f"{name}, shuffled", predictions / f"{vl}__{plans_id}_shuffled")]
    ending = json.loads((dataset_folder / "dataset.json").read_text(encoding="utf-8"))["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in panels[0].predictions.iterdir() if p.name.endswith(ending))
    cases = [c for c in cases if c in reports][:num_cases]
    texts = {c: [f"report:   {reports[c]}", f"shuffled: {reports[shuffled_partner(reports, c)]}"] for c in cases}
    return render_comparison(dataset_folder, cases, panels, texts, out)


def _trainer_exists(name: str) -> bool:
    """Whether nnU-Net's trainer lookup finds `name`: in nnunetv2, or in our nnUNet_extTrainer directory."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    package = nnunetv2.__path__[0]
    if recursive_find_python_class(os.path.join(package, "training", "nnUNetTrainer"), name,
                                   "nnunetv2.training.nnUNetTrainer", package) is not None:
        return True
    ours = str(trainer_dir())
    return recursive_find_python_class(ours, name, None, base_folder=ours,
                                       cleanup_imports_from_base_folder=True) is not None


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | with report | shuffled reports | no text |", "|---|---|---|---|"]
    for name, row in rows.items():
        cells = [f"{row[m]:.3f}" if m in row else "n/a" for m in ("report", "shuffled", "none")]
        if name.startswith("nnUNetTrainer ("):
            cells = [cells[0], "(ignores text)", "(ignores text)"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

