#!/usr/bin/env python
"""Cost of the VL trainers as a ratio to nnU-Net's image-only `nnUNetTrainer` (issue part 2).

For each preset (default `bipvl`, and `light`) x dimension (2D, 3D): a synthetic dataset is made and planned
with `plan_and_preprocess_vl(..., preset=...)`; then the real trainers `nnUNetTrainer`, `nnUNetTrainerBiPVL`
and `nnUNetTrainerTMCA` are built from those same plans and measured:

- training iteration: the trainer's own `train_step` (nnU-Net's DC+CE deep-supervision loss for every model;
  VL: + text-aware mirroring, report tokens, text loss; backward, gradient clipping, the optimizer step of each
  trainer: SGD for nnUNetTrainer, AdamW for the VL trainers) on one real batch
  of the planned batch and patch size from nnU-Net's data loader (augmentation left out: it runs in nnU-Net's
  background workers);
- sliding-window inference per case: `predict_sliding_window_return_logits` of nnU-Net's predictor (image-only)
  or `nnUNetPredictorVL` (report of the case bound once per case, as in the trainers' final validation), on a
  preprocessed case tiled to `--infer-scale` x the patch per axis so there are several tiles; without test-time
  mirroring unless `--tta` (a VL predictor skips mirror axes its report names, so with TTA the models would
  not run the same number of network evaluations);
- peak memory of a training iteration and of inference: CUDA max allocated, or peak RSS on CPU, each model in
  its own fresh (forked) process (allocations forced to mmap, peak reset via /proc/self/clear_refs) above the
  memory after imports and a throw-away image-only step (one-time process memory); it includes parameters,
  gradients and optimizer state.

One worker process per preset x dimension imports everything once, forks the memory measurements, then times
the three models interleaved round by round (rotating order) after warm-up, so load changes on a shared
machine hit all models alike; the median over repetitions is reported.
`--profile` adds a per-component breakdown of the VL training iteration (torch.profiler; backward time is
attributed to the component whose forward op created it) and of one sliding-window prediction of every model
(forward time per component, image-only's encoder stages and decoder beside the VL models'; parameter MB per part).

    python benchmarks/cost.py                       # full run: 2 presets x 2D/3D x 3 models
    python benchmarks/cost.py --threads 1 --profile  # steadier on a shared CPU, plus the breakdown
    python benchmarks/cost.py --smallest --workdir /tmp/w --out /tmp/o --text-encoder DIR   # smoke test
    python benchmarks/cost.py --dataset 980 --plans nnUNetPlans_bs8 --preprocessed DIR   # a planned real dataset

Writes OUT/cost.json and OUT/cost.md (with --dataset: OUT/cost_<dataset name>[_<plans>].json/.md, the plans
named unless nnUNetPlans; OUT defaults to benchmarks/results) and prints the table, with where the training
memory goes (parameters, gradients, optimizer state, the rest of the peak).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
GOALS = {"train": 1.3, "infer": 1.2, "train_memory": 1.3, "infer_memory": 1.3}
DEFAULT_SIZE = {2: 64, 3: 32}
SMALLEST_SIZE = {2: 32, 3: 24}


def parse_args(argv=None) -> argparse.Namespace:
    p = common.benchmark_parser(__doc__.split("\n\n")[0], "cost.json/.md")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per model (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per model first")
    p.add_argument("--presets", default="bipvl,light")
    p.add_argument("--dims", default="2,3")
    p.add_argument("--num-train", type=int, default=40, help="synthetic training cases per dataset")
    p.add_argument("--infer-scale", type=float, default=1.5,
                   help="inference case = a preprocessed case tiled to this many patch sizes per axis")
    p.add_argument("--tta", action="store_true", help="also time inference with test-time mirroring as deployed")
    p.add_argument("--profile", action="store_true", help="also break training and inference down by component")
    p.add_argument("--smallest", action="store_true",
                   help="smoke-test setting: 2D, light preset, tiny images, 1 repetition")
    common.add_planned_dataset_arguments(p, "--presets, --dims, --num-train do not apply")
    args = p.parse_args(argv)
    common.check_planned_dataset_arguments(p, args)
    if args.smallest:
        args.presets, args.dims, args.repeats, args.warmup = "light", "2", 1, 1
        args.num_train, args.infer_scale = min(args.num_train, 8), 1.0
    args.sizes = SMALLEST_SIZE if args.smallest else DEFAULT_SIZE
    return args


# ----- workers (each runs in its own process) ---------------------------------------------------------------
def _setup_worker(spec: dict):
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # import everything any model needs before a memory baseline is taken, so no model is charged for imports
    for model in common.MODELS:
        common.trainer_class(model)
    import nnunet_vl.inference.predictor  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401
    return torch


def _batch_copy(batch: dict) -> dict:
    """train_step mirrors samples in place (VL trainers): every call gets its own copy."""
    target = batch["target"]
    return {"data": batch["data"].clone(), "keys": batch["keys"],
            "target": [t.clone() for t in target] if isinstance(target, list) else target.clone()}


def _interleaved(fns: dict, device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warm up each callable, then time them round by round in rotating order."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name] += common.timed(fns[name], device, 0, 1)
    return times


def measure_time(spec: dict) -> tuple[dict, dict, dict, tuple[str, object]]:
    """Training and inference times of all models, interleaved; also returns the trainers, the batch and the
    inference case (id, data)."""
    plans, dataset_json = common.load_plans(spec["dataset_id"], spec["plans"])
    device, models = spec["device"], spec["models"]
    trainers = {m: common.make_trainer(m, plans, dataset_json, spec["configuration"], device) for m in models}
    batch = common.real_batch(trainers[models[0]], seed=0)
    train = _interleaved({m: (lambda t=trainers[m]: t.train_step(_batch_copy(batch))) for m in models},
                         device, spec["warmup"], spec["repeats"])

    case, data = common.inference_case(trainers[models[0]], spec["infer_scale"])
    result = {"train_s": train, "batch_size": int(batch["data"].shape[0]),
              "patch_size": list(trainers[models[0]].configuration_manager.patch_size),
              "parameters": {m: common.count_parameters(t.network) for m, t in trainers.items()},
              "inference_case": case, "inference_input_shape": list(data.shape)}
    for tta in ([False, True] if spec["tta"] else [False]):
        predictors = {m: common.make_predictor(trainers[m], m, use_mirroring=tta) for m in models}
        for m, predictor in predictors.items():
            if common.is_vl(m):
                predictor.select_case(case)
        key = "infer_tta_s" if tta else "infer_s"
        result[key] = _interleaved({m: (lambda p=p: p.predict_sliding_window_return_logits(data))
                                    for m, p in predictors.items()}, device, 1, spec["repeats"])
        if tta:
            result["tta_mirror_axes"] = {m: list(p.allowed_mirroring_axes or ()) for m, p in predictors.items()}
        result["tiles"] = common.num_tiles(predictors[models[0]], data)
    return result, trainers, batch, (case, data)


def _warm_up_process(spec: dict, plans: dict, dataset_json: dict) -> None:
    """Pay the process's one-time memory (lazily imported modules, data-loading libraries, oneDNN/BLAS buffers,
    allocator arenas: ~100 MB on CPU) with a throw-away image-only step and prediction, so that the measured
    peak is the model's own and not a constant that every model shares (CUDA's max allocated has none)."""
    import gc

    trainer = common.make_trainer("image", plans, dataset_json, spec["configuration"], spec["device"])
    trainer.train_step(_batch_copy(common.real_batch(trainer, seed=0)))
    predictor = common.make_predictor(trainer, "image", use_mirroring=False)
    predictor.predict_sliding_window_return_logits(common.inference_case(trainer, spec["infer_scale"])[1])
    del trainer, predictor
    gc.collect()


def measure_memory(spec: dict, model: str) -> dict:
    """Peak memory of training steps and of one inference of `model`; run it in common.in_fresh_process."""
    import torch

    device = spec["device"]
    plans, dataset_json = common.load_plans(spec["dataset_id"], spec["plans"])
    _warm_up_process(spec, plans, dataset_json)
    memory = common.PeakMemory(device)
    memory.reset()
    baseline = memory.baseline_mb  # before the measured model exists
    trainer = common.make_trainer(model, plans, dataset_json, spec["configuration"], device)
    batch = common.real_batch(trainer, seed=0)
    parameters_mb = sum(p.numel() * p.element_size() for p in trainer.network.parameters()) / 2 ** 20
    # the peak restarts from the current memory (network built; the pretrained encoder's temporary copy freed)
    memory.reset(baseline_mb=baseline)
    for _ in range(2):  # the first step also allocates gradients and momentum
        trainer.train_step(_batch_copy(batch))
    train_mb = memory.peak_mb()
    held = {"parameters_mb": parameters_mb,
            "gradients_mb": sum(p.grad.nbytes for p in trainer.network.parameters() if p.grad is not None) / 2 ** 20,
            "optimizer_state_mb": sum(t.nbytes for state in trainer.optimizer.state.values() for t in state.values()
                                      if torch.is_tensor(t)) / 2 ** 20}

    trainer.optimizer.zero_grad(set_to_none=True)  # what an inference process does not hold
    trainer.optimizer.state.clear()
    predictor = common.make_predictor(trainer, model, use_mirroring=False)
    case, data = common.inference_case(trainer, spec["infer_scale"])
    if common.is_vl(model):
        predictor.select_case(case)
    memory.reset(baseline_mb=baseline)
    with torch.no_grad():
        predictor.predict_sliding_window_return_logits(data)
    infer_mb = memory.peak_mb()
    return {"train_peak_mb": train_mb, "infer_peak_mb": infer_mb, **held, "baseline_mb": baseline,
            "method": memory.method}


def _label_components(trainer, model: str) -> set[str]:
    """Wrap the network's parts (image-only: its encoder stages and decoder), the losses and the VL trainer's text
    steps in profiler labels; once per trainer (later calls return the same labels)."""
    import torch
    from torch.profiler import record_function

    from nnunet_vl.training.vl_trainer import unwrap

    if getattr(trainer, "_cost_labels", None) is not None:
        return trainer._cost_labels
    labels: set[str] = set()
    trainer._cost_labels = labels

    def module(mod, name):
        labels.add(name)
        stack = []

        def pre(_m, _a):
            stack.append(record_function(name))
            stack[-1].__enter__()

        def post(_m, _a, _o):
            stack.pop().__exit__(None, None, None)

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)

    def method(owner, attr, name, names=()):
        labels.update(names or [name])
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            label = name(*args) if callable(name) else name
            with record_function(label):
                return original(*args, **kwargs)

        setattr(owner, attr, wrapped)

    net = unwrap(trainer.network)
    image_unet = net if model == "image" else net.image_unet
    for k, stage in enumerate(image_unet.encoder.stages):
        module(stage, f"image encoder stage {k}")
    module(image_unet.decoder, "image decoder")
    if model == "image":
        module(trainer.loss, "loss: DC+CE deep supervision")
        return labels
    if model == "bipvl":
        tb = net.text_branch
        method(tb, "embed", "text: embeddings (report + class tokens)")
        chunk = [f"text: encoder layers before fusion {k}" for k in net.fusion_stages]
        method(tb, "run_chunk", lambda i, *_: chunk[i], chunk)
        method(tb, "encode", "text: concept sentences through the full encoder")
        for i, k in enumerate(net.fusion_stages):
            module(net.fusion[i], f"fusion block at stage {k}")
        module(net.text_projection, "aux: text projection")
    else:
        module(net.text_encoder, "text: report through the full encoder")
        for s, block in net.enhancements.items():
            module(block, f"target enhancement at stage {s}")
        for head in list(net.text_heads) + list(net.image_heads):
            module(head, "aux: alignment heads")
    module(trainer.loss, "loss: DC+CE deep supervision")
    module(trainer.text_loss, "loss: text loss")
    method(trainer.text_provider, "inputs", "trainer: report tokens")
    method(trainer, "_mirror", "trainer: mirroring (text-aware)")
    method(torch.nn.utils, "clip_grad_norm_", "trainer: gradient clipping")
    return labels


def _attribute(events, labels: set[str], device: str) -> dict[str, dict[str, float]]:
    """Forward time per label (nested labels excluded) and the backward time of the autograd nodes its ops created.

    A backward event carries the sequence number of its node; a forward op records the autograd counter when it
    starts, and the counter only advances when an op creates a node, so a number's owner is the *last* forward op
    that recorded it (ops that create no node, e.g. under no_grad, record the number of the next node).
    Microseconds.
    """
    def dur(e):
        return e.device_time_total if device.startswith("cuda") else e.cpu_time_total

    unlabelled = "forward, unlabelled ops"
    result: dict[str, dict[str, float]] = {}

    def add(name, key, value):
        result.setdefault(name, {"forward": 0.0, "backward": 0.0, "other": 0.0})[key] += value

    def is_backward(event):
        return event.name.startswith("autograd::engine::evaluate_function")

    forward_ops: list[tuple[float, int, str]] = []

    def collect(event, label):
        if event.sequence_nr >= 0:
            forward_ops.append((event.time_range.start, event.sequence_nr, label))
        for child in event.cpu_children:
            collect(child, child.name if child.name in labels else label)

    def nested_label_time(event):
        return sum(dur(c) if c.name in labels else nested_label_time(c) for c in event.cpu_children)

    top = [e for e in events if e.cpu_parent is None]
    for event in top:
        if not is_backward(event):
            collect(event, event.name if event.name in labels else unlabelled)
    owner = {seq: label for _, seq, label in sorted(forward_ops, key=lambda t: t[0])}  # the last one wins
    for event in events:
        if event.name in labels:
            add(event.name, "forward", dur(event) - nested_label_time(event))
    for event in top:
        if event.name in labels:
            continue
        if is_backward(event):
            if "AccumulateGrad" in event.name:
                add("backward: gradient accumulation into parameters", "backward", dur(event))
            else:
                add(owner.get(event.sequence_nr, "backward of unlabelled ops"), "backward", dur(event))
        elif event.name.startswith("Optimizer.step"):
            add("optimizer: step (SGD for image only, AdamW for the VL trainers)", "other", dur(event))
        elif event.name.startswith("Optimizer.zero_grad"):
            add("optimizer: zero_grad", "other", dur(event))
        else:
            add(unlabelled, "forward", dur(event))
    return result


def profile_training(trainer, model: str, batch: dict, spec: dict) -> dict:
    """Median per-component time of the trainer's train_step over several profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    device = spec["device"]
    trainer.set_deep_supervision_enabled(True)  # back from inference
    trainer.network.train()
    step = lambda: trainer.train_step(_batch_copy(batch))  # noqa: E731
    wall = common.timed(step, device, 1, spec["repeats"])
    labels = _label_components(trainer, model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    steps = max(spec["repeats"], 3)
    per_step, profiled_wall = [], []
    for _ in range(steps):  # one profile per step: the median per component resists a step slowed by other load
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            step()
            common.synchronize(device)
            profiled_wall.append(time.perf_counter() - start)
        per_step.append(_attribute(prof.events(), labels, device))
    rows = []
    for name in {n for parts in per_step for n in parts}:
        values = {key: common.median([parts.get(name, {}).get(key, 0.0) / 1e3 for parts in per_step])
                  for key in ("forward", "backward", "other")}
        total = common.median([sum(parts.get(name, {}).values()) / 1e3 for parts in per_step])
        rows.append({"component": name, "forward_ms": values["forward"], "backward_ms": values["backward"],
                     "other_ms": values["other"], "total_ms": total})
    rows.sort(key=lambda r: -r["total_ms"])
    return {"components": rows, "attributed_ms": sum(r["total_ms"] for r in rows),
            "profiled_wall_ms": common.median(profiled_wall) * 1e3,
            "unprofiled_wall_ms_median": common.median(wall) * 1e3, "steps": steps}


def profile_inference(trainer, model: str, case: str, data, spec: dict) -> dict:
    """Median per-component forward time of one sliding-window prediction (no test-time mirroring), and the
    parameter memory of each part of the network (what inference holds besides activations and logits)."""
    from torch.profiler import ProfilerActivity, profile

    device = spec["device"]
    labels = _label_components(trainer, model)
    predictor = common.make_predictor(trainer, model, use_mirroring=False)
    if common.is_vl(model):
        predictor.select_case(case)
    predict = lambda: predictor.predict_sliding_window_return_logits(data)  # noqa: E731
    wall = common.timed(predict, device, 1, spec["repeats"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    per_case = []
    for _ in range(max(spec["repeats"], 3)):
        with profile(activities=activities) as prof:
            predict()
            common.synchronize(device)
        per_case.append(_attribute(prof.events(), labels, device))
    rows = [{"component": name, "forward_ms": common.median([sum(parts.get(name, {}).values()) / 1e3
                                                             for parts in per_case])}
            for name in {n for parts in per_case for n in parts}]
    rows.sort(key=lambda r: -r["forward_ms"])
    return {"components": rows, "unprofiled_wall_ms_median": common.median(wall) * 1e3,
            "parameter_mb": parameter_memory(trainer, model)}


def parameter_memory(trainer, model: str) -> dict[str, float]:
    """Parameter MB per part of the network: image U-Net, text encoder, and the rest (fusion or enhancement
    blocks, projections, heads)."""
    from nnunet_vl.training.vl_trainer import unwrap

    net = unwrap(trainer.network)

    def mb(module) -> float:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 2 ** 20

    if model == "image":
        return {"image U-Net": mb(net)}
    parts = {"image U-Net": mb(net.image_unet), "text encoder": mb(net.text_encoder)}
    parts["fusion / enhancement, projections, heads"] = mb(net) - sum(parts.values())
    return parts


def worker(spec: dict) -> dict:
    """Everything for one preset x dimension, in one process: memory of each model in a forked child first
    (before this process computes anything), then the interleaved timings, then the optional profiles."""
    _setup_worker(spec)
    memory = {m: common.in_fresh_process(measure_memory, spec, m) for m in spec["models"]}
    timing, trainers, batch, (case, data) = measure_time(spec)
    profiles, inference_profiles = {}, {}
    if spec["profile"]:
        inference_profiles = {m: profile_inference(trainers[m], m, case, data, spec) for m in spec["models"]}
        profiles = {m: profile_training(trainers[m], m, batch, spec) for m in spec["models"] if common.is_vl(m)}
    return {"memory": memory, "timing": timing, "profile": profiles, "inference_profile": inference_profiles}


def run_as_worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    common.set_nnunet_env(Path(spec["workdir"]), spec["preprocessed"] and Path(spec["preprocessed"]))
    common.write_result(spec, worker(spec))


# ----- driver -----------------------------------------------------------------------------------------------
def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def summarise(setting: dict, timing: dict, memory: dict) -> list[dict]:
    """One row per VL model of a setting: medians and ratios to image-only, with the goals."""
    rows = []
    med = {k: {m: common.median(v) for m, v in timing[k].items()} for k in ("train_s", "infer_s", "infer_tta_s")
           if k in timing}
    for model in [m for m in timing["train_s"] if common.is_vl(m)]:
        row = dict(setting, model=model,
                   train_s=med["train_s"][model], train_image_s=med["train_s"]["image"],
                   infer_s=med["infer_s"][model], infer_image_s=med["infer_s"]["image"],
                   train_memory_mb=memory[model]["train_peak_mb"], train_memory_image_mb=memory["image"]["train_peak_mb"],
                   infer_memory_mb=memory[model]["infer_peak_mb"], infer_memory_image_mb=memory["image"]["infer_peak_mb"],
                   parameters=timing["parameters"][model], parameters_image=timing["parameters"]["image"])
        row["train_ratio"] = ratio(row["train_s"], row["train_image_s"])
        row["infer_ratio"] = ratio(row["infer_s"], row["infer_image_s"])
        row["train_memory_ratio"] = ratio(row["train_memory_mb"], row["train_memory_image_mb"])
        row["infer_memory_ratio"] = ratio(row["infer_memory_mb"], row["infer_memory_image_mb"])
        if "infer_tta_s" in med:
            row["infer_tta_s"], row["infer_tta_image_s"] = med["infer_tta_s"][model], med["infer_tta_s"]["image"]
            row["infer_tta_ratio"] = ratio(row["infer_tta_s"], row["infer_tta_image_s"])
        row["goals_met"] = {k: bool(row[f"{k}_ratio"] <= g) for k, g in GOALS.items()}
        rows.append(row)
    return rows


def markdown(payload: dict) -> str:
    rows = payload["rows"]
    tta = any("infer_tta_ratio" in r for r in rows)
    header = ["preset", "dim", "model", "train s/it (img)", "train ×", "infer s/case (img)", "infer ×",
              "train mem MB (img)", "train mem ×", "infer mem MB (img)", "infer mem ×"] + (["infer+TTA ×"] if tta else [])

    def mark(row, key):
        return f"{row[f'{key}_ratio']:.2f}{'' if row['goals_met'][key] else ' ✗'}"

    body = [[r["preset"], f"{r['dim']}D", r["model"], f"{r['train_s']:.3f} ({r['train_image_s']:.3f})",
             mark(r, "train"), f"{r['infer_s']:.2f} ({r['infer_image_s']:.2f})", mark(r, "infer"),
             f"{r['train_memory_mb']:.0f} ({r['train_memory_image_mb']:.0f})", mark(r, "train_memory"),
             f"{r['infer_memory_mb']:.0f} ({r['infer_memory_image_mb']:.0f})", mark(r, "infer_memory")]
            + ([f"{r.get('infer_tta_ratio', math.nan):.2f}"] if tta else []) for r in rows]
    m = payload["machine"]
    lines = [
        "# Cost of the VL trainers relative to image-only nnUNetTrainer",
        "",
        *([f"Dataset `{payload['runs'][0]['dataset']}`, plans `{payload['runs'][0]['plans']}`, configuration "
           f"`{payload['runs'][0]['configuration']}` (text preset it was planned with: "
           f"`{payload['runs'][0]['preset']}`).", ""] if "dataset" in payload["runs"][0] else []),
        f"Medians of {payload['settings']['repeats']} repetitions after {payload['settings']['warmup']} warm-up "
        f"iterations, models interleaved; device `{m['device']}`, {m['torch_threads']} torch thread(s) on "
        f"{m['cpu_count']} CPUs, load average at start {m.get('load_average_at_start')}; text encoder "
        f"`{payload['settings']['text_encoder']}`. × = VL / image-only on the same plans; ✗ = goal missed "
        f"(train ≤ {GOALS['train']}, inference ≤ {GOALS['infer']}, memory ≤ {GOALS['train_memory']}).",
        "",
        markdown_table_raw(header, body),
        "",
        "Settings (per preset and dimension): " + "; ".join(
            f"{s['preset']} {s['dim']}D: patch {s['patch_size']}, batch {s['batch_size']}, inference input "
            f"{s['inference_input_shape'][1:]} = {s['tiles']} tiles, parameters image {s['parameters']['image']:,}"
            + "".join(f", {k} {v:,}" for k, v in s["parameters"].items() if k != "image")
            for s in payload["settings_per_run"]) + ".",
        "",
        "Training iteration = the trainer's `train_step` on a real batch (planned batch and patch size). Inference "
        "= `predict_sliding_window_return_logits` on one case, no test-time mirroring"
        + (" (TTA column: mirroring as each predictor deploys it)" if tta else "") + ". Memory = peak above the "
        f"process after imports and a throw-away image-only step ({payload['memory_method']}), each model in its "
        "own fresh process; it includes "
        "parameters, gradients and optimizer state (training) or parameters and the logits buffers (inference).",
    ]
    lines += ["", "## Where the training memory goes", "",
              "Held after two training steps (parameters, gradients, optimizer state: tensor sizes) and the rest of the "
              "peak (activations kept for backward, workspace), MB:", "",
              markdown_table_raw(["preset", "dim", "model", "peak", "parameters", "gradients", "optimizer state",
                                  "rest of the peak"], memory_breakdown(payload))]
    if payload.get("profile"):
        lines += ["", "## Where the VL training iteration goes (torch.profiler)", ""]
        for prof in payload["profile"]:
            lines += [f"### {prof['model']} — {prof['preset']} {prof['dim']}D: {prof['unprofiled_wall_ms_median']:.0f} ms "
                      f"per iteration unprofiled, {prof['profiled_wall_ms']:.0f} ms profiled "
                      f"({prof['attributed_ms']:.0f} ms attributed to ops)", ""]
            total = prof["attributed_ms"] or 1.0
            lines.append(markdown_table_raw(
                ["component", "forward ms", "backward ms", "other ms", "total ms", "share"],
                [[c["component"], f"{c['forward_ms']:.1f}", f"{c['backward_ms']:.1f}", f"{c['other_ms']:.1f}",
                  f"{c['total_ms']:.1f}", f"{100 * c['total_ms'] / total:.0f}%"]
                 for c in prof["components"] if c["total_ms"] >= 0.005 * total]))
            lines.append("")
    if payload.get("inference_profile"):
        lines += inference_profile_lines(payload["inference_profile"])
    return "\n".join(lines)


def inference_profile_lines(profiles: list[dict]) -> list[str]:
    """Per setting: forward ms of each component of one sliding-window prediction, per model side by side
    (image-only's own parts beside the VL models' same parts), and the parameter MB per part."""
    lines = ["## Where inference goes (torch.profiler, one case, no test-time mirroring)", ""]
    settings = {}
    for prof in profiles:
        settings.setdefault((prof["preset"], prof["dim"], prof.get("dataset")), []).append(prof)
    for (preset, dim, dataset), profs in settings.items():
        models = [p["model"] for p in profs]
        by_model = {p["model"]: {c["component"]: c["forward_ms"] for c in p["components"]} for p in profs}
        names = sorted({n for m in by_model.values() for n in m},
                       key=lambda n: -max(m.get(n, 0.0) for m in by_model.values()))
        walls = ", ".join(f"{p['model']} {p['unprofiled_wall_ms_median']:.0f} ms" for p in profs)
        lines += [f"### {dataset or preset} {dim}D: per case unprofiled {walls}", ""]
        lines.append(markdown_table_raw(["component"] + [f"{m} ms" for m in models],
                                        [[n] + [f"{by_model[m].get(n, 0.0):.1f}" if n in by_model[m] else "–"
                                                for m in models] for n in names]))
        lines += ["", "Parameters held at inference, MB: " + "; ".join(
            f"{p['model']}: " + ", ".join(f"{k} {v:.1f}" for k, v in p["parameter_mb"].items()) for p in profs), ""]
    return lines


def memory_breakdown(payload: dict) -> list[list[str]]:
    """Rows of the training-memory breakdown of every model of every measured setting."""
    rows = []
    for run in payload["runs"]:
        for model, mem in run["memory"].items():
            held = [mem[key] for key in ("parameters_mb", "gradients_mb", "optimizer_state_mb")]
            rows.append([run["preset"], f"{run['dim']}D", model, f"{mem['train_peak_mb']:.0f}",
                         *(f"{v:.0f}" for v in held), f"{mem['train_peak_mb'] - sum(held):.0f}"])
    return rows


def markdown_table_raw(header, rows) -> str:
    return common.markdown_table(header, [[str(v) for v in row] for row in rows])


def settings_to_measure(args: argparse.Namespace) -> list[tuple[dict, int, str, str]]:
    """(setting, dataset id, configuration, plans identifier) of every run: the synthetic dataset of each preset x
    dimension (made and planned here), or the one planned dataset given with --dataset."""
    if args.dataset is not None:
        dataset, config = common.planned_configuration(args)
        dim = len(config["patch_size"])
        setting = {"preset": config["text"]["preset"], "dim": dim, "dataset": dataset, "plans": args.plans}
        return [(setting, args.dataset, args.configuration, args.plans)]
    runs = []
    for preset in [p for p in args.presets.split(",") if p]:
        for dim in [int(d) for d in args.dims.split(",") if d]:
            did, configuration = common.prepare_dataset(dim, preset, args.text_encoder, args.num_train,
                                                        args.sizes[dim], log=lambda s: print(s, flush=True))
            runs.append(({"preset": preset, "dim": dim}, did, configuration, "nnUNetPlans"))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_as_worker(args.worker)
        return 0
    common.set_nnunet_env(args.workdir, args.preprocessed)
    started = time.time()
    machine = common.machine_info(args.device)  # load average at the start
    if args.threads:
        machine["torch_threads"] = args.threads  # what the workers use
    base = {"workdir": str(args.workdir), "device": args.device, "threads": args.threads,
            "repeats": args.repeats, "warmup": args.warmup, "infer_scale": args.infer_scale, "tta": args.tta,
            "profile": args.profile, "preprocessed": args.preprocessed and str(args.preprocessed)}
    rows, runs, profiles, inference_profiles, memory_method = [], [], [], [], ""
    for setting, did, configuration, plans_id in settings_to_measure(args):
        spec = dict(base, dataset_id=did, configuration=configuration, plans=plans_id, models=list(common.MODELS))
        name = f"{setting['preset']} {setting['dim']}D"
        print(f"[{time.time() - started:6.0f}s] {name}: memory (a child process per model), "
              f"timing{', profile' if args.profile else ''}", flush=True)
        result = common.run_worker(SCRIPT, dict(spec, name=name), args.workdir / "worker_results"
                                   / f"cost_{setting.get('dataset', setting['preset'])}_{setting['dim']}d.json")
        timing, memory = result["timing"], result["memory"]
        memory_method = memory["image"]["method"] + ", " + memory["image"]["process"]
        profiles += [dict(setting, model=m, **p) for m, p in result["profile"].items()]
        inference_profiles += [dict(setting, model=m, **p) for m, p in result.get("inference_profile", {}).items()]
        runs.append(dict(setting, dataset_id=did, configuration=configuration, timing=timing, memory=memory,
                         **{k: timing[k] for k in ("patch_size", "batch_size", "parameters", "tiles",
                                                   "inference_input_shape")}))
        rows += summarise(setting, timing, memory)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "sizes")}
    settings.update(workdir=str(args.workdir), out=str(args.out), sizes={str(k): v for k, v in args.sizes.items()},
                    preprocessed=args.preprocessed and str(args.preprocessed))
    payload = {"goals": GOALS, "settings": settings, "machine": machine,
               "memory_method": memory_method, "rows": rows, "runs": runs, "profile": profiles,
               "inference_profile": inference_profiles,
               "settings_per_run": [{k: r[k] for k in ("preset", "dim", "patch_size", "batch_size", "parameters",
                                                       "tiles", "inference_input_shape")} for r in runs],
               "elapsed_s": time.time() - started}
    text = markdown(payload)
    stem = "cost" if args.dataset is None else f"cost_{runs[0]['dataset']}" + (
        "" if args.plans == "nnUNetPlans" else f"_{args.plans}")
    common.publish(args.out, stem, payload, text, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
