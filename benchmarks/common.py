"""What benchmarks/cost.py and benchmarks/scaling.py share.

- nnU-Net folders inside a work dir (set before nnunetv2 is imported), synthetic datasets planned with a preset;
- the real trainers (`nnUNetTrainer`, `nnUNetTrainerBiPVL`, `nnUNetTrainerTMCA`) built from those plans, so the
  segmentation loss, the text loss, the optimizer and `train_step` are exactly what training runs;
- a real batch from nnU-Net's data loader (planned batch and patch size, deep-supervision targets);
- nnU-Net's predictors set up like the trainers' final validation;
- peak memory: CUDA max allocated, or on CPU the peak RSS (Linux VmHWM, reset through /proc/self/clear_refs),
  measured in a forked child process per model whose allocations all go to mmap, so freed memory really leaves
  the process and no model's peak hides in another's;
- worker subprocesses, medians, markdown tables.

Nothing here writes outside the work dir and the output dir given on the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results"
DEFAULT_WORKDIR = DEFAULT_RESULTS / "work"

MODELS = ("image", "bipvl", "tmca")
TRAINER_NAMES = {"image": "nnUNetTrainer", "bipvl": "nnUNetTrainerBiPVL", "tmca": "nnUNetTrainerTMCA"}
CONFIGURATION = {2: "2d", 3: "3d_fullres"}
_PRESET_NUMBER = {"bipvl": 1, "light": 2, "tmca": 3}


# ----- environment and data -------------------------------------------------------------------------------
def benchmark_parser(description: str, outputs: str) -> argparse.ArgumentParser:
    """The arguments cost.py and scaling.py share: folders, encoder, device, threads; `outputs` names the files."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="nnU-Net raw/preprocessed/results folders go here (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help=f"where {outputs} go")
    p.add_argument("--text-encoder", default="minilm", help="encoder alias or local directory (default: minilm)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def add_planned_dataset_arguments(p: argparse.ArgumentParser, not_applying: str) -> None:
    """--dataset, --plans, -c and --preprocessed: measure on an already planned dataset instead of synthetic data."""
    p.add_argument("--dataset", type=int, default=None,
                   help="measure on this already planned dataset (id) instead of synthetic data; its text preset is "
                        f"the one it was planned with ({not_applying})")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier with --dataset (default: %(default)s)")
    p.add_argument("-c", "--configuration", default="2d", help="configuration with --dataset (default: %(default)s)")
    p.add_argument("--preprocessed", type=Path, default=None,
                   help="nnUNet_preprocessed folder holding --dataset (default: the nnUNet_preprocessed env var)")


def check_planned_dataset_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """With --dataset, --preprocessed defaults to $nnUNet_preprocessed and must be a folder."""
    if args.dataset is None:
        return
    args.preprocessed = args.preprocessed or (Path(os.environ["nnUNet_preprocessed"])
                                              if os.environ.get("nnUNet_preprocessed") else None)
    if args.preprocessed is None or not args.preprocessed.is_dir():
        p.error("--dataset needs the nnUNet_preprocessed folder holding it: pass --preprocessed DIR or set "
                "nnUNet_preprocessed")


def planned_configuration(args: argparse.Namespace) -> tuple[str, dict]:
    """The --dataset's name and its configuration of --plans, which must have a text section (nnunet_vl planned it)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    plans, _ = load_plans(args.dataset, args.plans)
    config = plans["configurations"].get(args.configuration)
    if config is None or "text" not in config:
        raise SystemExit(f"{args.preprocessed}: configuration '{args.configuration}' of plans '{args.plans}' "
                         f"{'does not exist' if config is None else 'has no text section'}. Fix: plan it with "
                         f"nnUNetv2_plan_and_preprocess_vl -d {args.dataset} -c {args.configuration}")
    return convert_id_to_dataset_name(args.dataset), config


def set_nnunet_env(workdir: Path, preprocessed: Path | None = None) -> dict[str, Path]:
    """Point nnU-Net's folders into workdir (nnUNet_preprocessed to `preprocessed` when given: an already planned
    dataset is read there, nothing is written to it). Must run before nnunetv2 is imported (it reads them at import)."""
    if "nnunetv2.paths" in sys.modules:
        raise RuntimeError("set_nnunet_env must be called before nnunetv2 is imported")
    folders = {var: Path(workdir) / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    if preprocessed is not None:
        folders["nnUNet_preprocessed"] = Path(preprocessed)
    for var, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
    os.environ["nnUNet_extTrainer"] = str(REPO / "nnunet_vl" / "trainers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("nnUNet_compile", "false")  # same eager code for every model (nnU-Net compiles on CUDA)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return folders


def dataset_id(dim: int, preset: str) -> int:
    """One synthetic dataset per (dim, preset): the presets plan the same images, with different text sections."""
    return 900 + 10 * dim + _PRESET_NUMBER[preset]


def prepare_dataset(dim: int, preset: str, text_encoder: str, num_train: int, size: int,
                    num_processes: int = 2, log=print, own_dataset: bool = False) -> tuple[int, str]:
    """Make (or reuse) the synthetic dataset and plan + preprocess it with the preset; returns (id, configuration).

    Reused when a previous run wrote the same settings (the preset's content included, so an edited preset
    re-plans); nnU-Net's and our planning output goes to a log file. `own_dataset`: an id and name of its own
    (5 above the usual id, the size in the name), so images of another size do not re-plan the usual dataset.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_vl.planning.planners import load_preset

    did, configuration = dataset_id(dim, preset) + (5 if own_dataset else 0), CONFIGURATION[dim]
    name = f"Bench{dim}D{preset}" + (f"{size}" if own_dataset else "")
    settings = {"dim": dim, "preset": preset, "preset_content": load_preset(preset), "text_encoder": str(text_encoder),
                "num_train": num_train, "size": size, "configuration": configuration}
    marker = Path(nnUNet_preprocessed) / f"Dataset{did:03d}_{name}" / "benchmark_settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return did, configuration
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    log(f"planning {name} (dataset {did}): {num_train} cases of {size}^{dim}, preset '{preset}'")
    make_synthetic_dataset(Path(nnUNet_raw), did, dim=dim, num_train=num_train, num_test=2, size=size, seed=dim,
                           rule="mixed", name=name, overwrite=True)
    log_file = marker.parent.parent / f"planning_{did}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        plan_and_preprocess_vl(did, configurations=[configuration], preset=preset, text_encoder=str(text_encoder),
                               num_processes_fingerprint=num_processes, num_processes=[num_processes], clean=True)
    marker.write_text(json.dumps(settings, indent=1))
    return did, configuration


def load_plans(did: int, plans_identifier: str = "nnUNetPlans") -> tuple[dict, dict]:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    folder = Path(nnUNet_preprocessed) / convert_id_to_dataset_name(did)
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise SystemExit(f"{plans_file} does not exist: plan the dataset first (nnUNetv2_plan_and_preprocess_vl) or "
                         f"pass the plans identifier that exists there")
    return json.loads(plans_file.read_text()), json.loads((folder / "dataset.json").read_text())


# ----- trainers, batches, predictors ------------------------------------------------------------------------
def trainer_class(model: str):
    if model == "image":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        return nnUNetTrainer
    if model == "bipvl":
        from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL
        return nnUNetTrainerBiPVL
    if model == "tmca":
        from nnunet_vl.training.nnUNetTrainerTMCA import nnUNetTrainerTMCA
        return nnUNetTrainerTMCA
    raise ValueError(f"unknown model '{model}': use one of {MODELS}")


def make_trainer(model: str, plans: dict, dataset_json: dict, configuration: str, device: str):
    """The trainer as `nnUNetv2_train` builds it, initialised (network, loss, optimizer; VL: text provider with
    the pretrained encoder) and with its mirroring configured; nnU-Net's console output is suppressed."""
    import torch

    plans = json.loads(json.dumps(plans))
    plans["continue_training"] = False
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer = trainer_class(model)(plans=plans, configuration=configuration, fold=0, dataset_json=dataset_json,
                                       device=torch.device(device))
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    return trainer


def real_batch(trainer, seed: int = 0) -> dict:
    """One batch from nnU-Net's data loader: planned batch and patch size, foreground oversampling, nnU-Net's
    validation transforms (label -1 -> 0, deep-supervision targets). Augmentation is left out: it runs in
    nnU-Net's background workers and does not change what the network computes."""
    import numpy as np
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(), trainer.is_cascaded, lm.foreground_labels,
        lm.foreground_regions if lm.has_regions else None, lm.ignore_label)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder)
    patch = trainer.configuration_manager.patch_size
    loader = nnUNetDataLoader(dataset, trainer.batch_size, patch, patch, lm,
                              oversample_foreground_percent=trainer.oversample_foreground_percent,
                              transforms=transforms)
    np.random.seed(seed)
    return loader.generate_train_batch()


def is_vl(model: str) -> bool:
    return model != "image"


def make_predictor(trainer, model: str, use_mirroring: bool):
    """nnU-Net's predictor for image-only, nnUNetPredictorVL for VL models, set up as in the trainers' final
    validation (tile step 0.5, Gaussian weighting, everything on the device)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_vl.inference.predictor import nnUNetPredictorVL
    from nnunet_vl.training.vl_trainer import unwrap

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    kwargs = dict(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                  perform_everything_on_device=True, device=trainer.device, verbose=False,
                  verbose_preprocessing=False, allow_tqdm=False)
    network = unwrap(trainer.network) if is_vl(model) else trainer.network
    predictor = nnUNetPredictorVL(text_mode="report", **kwargs) if is_vl(model) else nnUNetPredictor(**kwargs)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                    [network.state_dict()], trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    if is_vl(model):
        predictor.set_text_provider(trainer.text_provider)
    return predictor


def inference_case(trainer, scale: float) -> tuple[str, "object"]:
    """(case id, data) of a preprocessed training case, tiled (periodically repeated) to `scale` x the patch
    size along each spatial axis, so the sliding window has several tiles as on real scans."""
    import numpy as np
    import torch

    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder)
    case = sorted(dataset.identifiers)[0]
    data = np.asarray(dataset.load_case(case)[0][:])
    patch = list(trainer.configuration_manager.patch_size)
    if len(patch) == 2:
        patch = [data.shape[1]] + patch  # a 2D configuration predicts slice by slice
        target = [data.shape[1]] + [max(int(round(p * scale)), 1) for p in patch[1:]]
    else:
        target = [max(int(round(p * scale)), 1) for p in patch]
    reps = [1] + [math.ceil(t / s) for t, s in zip(target, data.shape[1:])]
    data = np.tile(data, reps)[(slice(None), *[slice(0, t) for t in target])]
    return case, torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def num_tiles(predictor, data) -> int:
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, _ = pad_nd_image(data, predictor.configuration_manager.patch_size, "constant", {"value": 0}, True, None)
    return len(predictor._internal_get_sliding_window_slicers(padded.shape[1:]))


def fake_self(**attributes) -> SimpleNamespace:
    """An object standing in for `self` when calling a package method that only reads these attributes."""
    return SimpleNamespace(**attributes)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----- timing and memory ------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def timed(fn, device: str, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `fn()` for each of `repeats` calls after `warmup` calls."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _proc_status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory of a code region above a baseline, in MB.

    CUDA: torch.cuda.max_memory_allocated over memory_allocated at `reset()`. CPU: peak RSS (VmHWM) over RSS
    at `reset()`; the peak is reset through /proc/self/clear_refs (Linux >= 4.0). Without it (other OS), the
    process-lifetime ru_maxrss is used, which is only right for the first region of a fresh process.
    Measure on CPU inside `in_fresh_process`, else freed memory stays in the heap and hides later peaks.
    """

    def __init__(self, device: str):
        self.device = device
        self.baseline_mb = 0.0
        self.method = ""

    def current_mb(self) -> float:
        if self.device.startswith("cuda"):
            import torch
            return torch.cuda.memory_allocated() / 2 ** 20
        rss = _proc_status_kb("VmRSS")
        if rss is not None:
            return rss / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2 ** 20)

    def reset(self, baseline_mb: float | None = None) -> None:
        """Start a region; its baseline is the current memory unless given (e.g. one taken earlier)."""
        import gc

        gc.collect()
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM (reset via /proc/self/clear_refs)"
            except OSError:
                self.method = "ru_maxrss (process lifetime)"
        self.baseline_mb = self.current_mb() if baseline_mb is None else baseline_mb

    def peak_mb(self) -> float:
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            hwm = _proc_status_kb("VmHWM") if "VmHWM" in self.method else None
            if hwm is None:
                import resource
                ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                peak = ru / (1024 if sys.platform != "darwin" else 2 ** 20)
            else:
                peak = hwm / 1024
        return max(peak - self.baseline_mb, 0.0)


def median(values) -> float:
    return float(statistics.median(values))


def machine_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import nnunetv2
        import transformers
        info["nnunetv2"] = getattr(nnunetv2, "__version__", None) or _dist_version("nnunetv2")
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


# ----- worker subprocesses and forked measurement children ------------------------------------------------
def run_worker(script: Path, spec: dict, result_file: Path, extra_env: dict | None = None,
               timeout: float | None = None) -> dict:
    """Run `python script --worker SPEC_JSON` in a fresh process; the worker writes its result to result_file."""
    result_file.parent.mkdir(parents=True, exist_ok=True)
    if result_file.exists():
        result_file.unlink()
    env = dict(os.environ, **(extra_env or {}))
    spec = dict(spec, result_file=str(result_file))
    proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"worker {spec.get('name', spec)} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _force_mmap_allocations() -> bool:
    """glibc: serve every allocation of >= 64 KiB by its own mmap, unmapped when freed, so that RSS follows the
    live tensors (otherwise freed memory stays in the heap and a later peak can hide in it)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(ctypes.c_int(-3), ctypes.c_int(65536)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def in_fresh_process(fn, *args):
    """fn(*args) in a forked child process (its own memory accounting; the parent's imports are shared), with
    allocations forced to mmap; returns fn's JSON-serialisable result.

    Fork before the parent runs any torch computation or touches CUDA. Without os.fork (Windows) fn runs in
    this process and the result says so under "process".
    """
    if not hasattr(os, "fork"):
        return dict(fn(*args), process="same process (no fork on this platform): peaks may mix")
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        code = 0
        try:
            mmap = _force_mmap_allocations()
            payload = {"result": dict(fn(*args), process="forked child" + ("" if mmap else " (malloc default)"))}
        except BaseException:  # report everything to the parent, never fall through into its code
            import traceback
            payload, code = {"error": traceback.format_exc()}, 1
        with os.fdopen(write_end, "w") as f:
            f.write(json.dumps(payload))
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        data = f.read()
    os.waitpid(pid, 0)
    payload = json.loads(data) if data else {"error": "the measurement process died without a result"}
    if "error" in payload:
        raise RuntimeError(f"measurement in a child process failed:\n{payload['error']}")
    return payload["result"]


def write_result(spec: dict, result: dict) -> None:
    Path(spec["result_file"]).write_text(json.dumps(result, indent=1))


# ----- output -----------------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_outputs(out_dir: Path, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path.write_text(markdown + "\n")
    return json_path, md_path


def publish(out_dir: Path, stem: str, payload: dict, markdown: str, started: float) -> None:
    """save_outputs, then print the table and where it went."""
    json_path, md_path = save_outputs(out_dir, stem, payload, markdown)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path} in {time.time() - started:.0f}s")


# ----- which code a run measures ----------------------------------------------------------------------------

def code_snapshot(commit: str, workdir: Path) -> Path:
    """nnunet_vl of `commit` (with its data packages planners/ and text_corpora/) unpacked under the work dir."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    target = workdir / "code" / sha
    if not (target / "COMMIT").is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "nnunet_vl", "planners", "text_corpora"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        (target / "planners").rename(target / "nnunet_vl" / "planner_presets")
        (target / "text_corpora").rename(target / "nnunet_vl" / "text_corpora")
        (target / "COMMIT").write_text(sha + "\n")
    return target


def git_state() -> str:
    """The commit nnunet_vl is run from: a --code-snapshot's, or this repository's HEAD (and whether it is dirty)."""
    import nnunet_vl

    package = Path(nnunet_vl.__file__).resolve().parent
    if package != REPO / "nnunet_vl":
        commit = package.parent / "COMMIT"
        return f"{commit.read_text().strip()} (snapshot)" if commit.is_file() else str(package)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "nnunet_vl"],
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (nnunet_vl/ with uncommitted changes)" if dirty else "")


def run_on_code_snapshot(commit: str | None, workdir: Path, out: Path, script: Path, argv: list[str],
                         command: str) -> None:
    """Re-executes `script` with nnunet_vl of `commit` (unpacked under `workdir`) first on PYTHONPATH, so edits to the
    working tree during a long run do not reach later rows; returns at once without a commit or when already running
    on a snapshot. The snapshot's run writes to the same `workdir` and `out` and records `command` as its own."""
    if not commit or "NNUNET_VL_BENCHMARK_SNAPSHOT" in os.environ:
        return
    snapshot = code_snapshot(commit, workdir)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(snapshot), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["NNUNET_VL_BENCHMARK_SNAPSHOT"] = str(snapshot)
    os.environ["NNUNET_VL_BENCHMARK_COMMAND"] = command
    os.chdir(snapshot)  # a working directory holding nnunet_vl/ would shadow the snapshot
    os.execv(sys.executable, [sys.executable, str(script), *argv, "--workdir", str(workdir), "--out", str(out)])


def benchmark_command(script: str, argv: list[str]) -> str:
    """The command line this run records: the one typed before a --code-snapshot re-execution, else this one."""
    return os.environ.get("NNUNET_VL_BENCHMARK_COMMAND") or shlex.join(["python", f"benchmarks/{script}", *argv])
