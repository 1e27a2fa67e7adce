#!/usr/bin/env python
"""How the cost of BiPVL's text branch grows with patch voxels, fused stages and report length (issue part 3).

On one synthetic dataset planned with a preset (default: 3D, `bipvl`), `nnUNetTrainerBiPVL` and the image-only
`nnUNetTrainer` are built from the same plans with one planned value changed at a time:

- patch voxels: the planned patch times `--patch-factors` per axis (rounded to the network's total stride);
- fused stages: `--stages` deepest encoder stages (`all` = every stage; the planner drops the
  highest-resolution stages first, so `n` means the `n` deepest);
- report length: reports made exactly `--lengths` tokens long (the case's report repeated, then truncated)
  with the planned `max_tokens` set to the same length;

the other two stay at the base value (first patch factor, last stage value, `--base-length` tokens).
Measured per setting, on a real batch of the planned batch size:

- text-branch time = median(forward + DC/CE deep-supervision loss [+ text loss] + backward of BiPVL) minus
  the same for the image-only U-Net; both run interleaved in one process, after warm-up;
- text-branch activation memory = peak above the memory held before the pass (parameters and gradients
  already allocated), BiPVL minus image-only, each in its own fresh (forked) process (CPU: peak RSS with every
  allocation mmap-ed; CUDA: max allocated);
- the planner's VRAM estimate for the same setting, from the planner's own cost function
  (`VLPlannerMixin._fusion_stages`, called with the setting): what its budget counts as held at once (with
  the preset's recomputed stages) and per fused stage.

    python benchmarks/scaling.py                  # 3D, bipvl preset, 3 values per axis
    python benchmarks/scaling.py --dim 2 --threads 1
    python benchmarks/scaling.py --smallest --workdir /tmp/w --out /tmp/o --text-encoder DIR   # smoke test
    python benchmarks/scaling.py --size 160 --patch-edges 96,128 --batch-size 1 --stages all --lengths 64 \
        --repeats 2 --warmup 1 --num-train 8 --stem scaling_clinical      # clinical patches: 96³, 128³ at batch 1

--size plans images of that edge (so nnU-Net plans the deeper network such images get) in a dataset of its own;
--patch-edges sets the patch edges themselves (rounded to the network's total stride) instead of --patch-factors.

Writes OUT/scaling.json and OUT/scaling.md (OUT defaults to benchmarks/results) and prints the table.
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
DEFAULT_SIZE = {2: 64, 3: 32}
SMALLEST_SIZE = {2: 32, 3: 24}


def parse_args(argv=None) -> argparse.Namespace:
    p = common.benchmark_parser(__doc__.split("\n\n")[0], "scaling.json/.md")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3)
    p.add_argument("--preset", default="bipvl", help="preset the dataset is planned with (fusion width, heads)")
    p.add_argument("--patch-factors", default="1,1.5,2", help="patch edge multipliers (first one is the base)")
    p.add_argument("--stages", default="1,3,all", help="numbers of fused (deepest) stages; the last is the base")
    p.add_argument("--lengths", default="16,64,128", help="report lengths in tokens")
    p.add_argument("--base-length", type=int, default=64, help="report length of the other two axes")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per model and setting (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-train", type=int, default=40)
    p.add_argument("--size", type=int, default=None, help="image edge of the synthetic dataset (default: 32 in 3D, "
                                                          "64 in 2D)")
    p.add_argument("--patch-edges", default=None, help="patch edges, e.g. 96,128 (instead of --patch-factors)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of every setting (default: planned)")
    p.add_argument("--stem", default="scaling", help="output file names: OUT/<stem>.json, .md")
    p.add_argument("--smallest", action="store_true",
                   help="smoke-test setting: 2D, light preset, tiny images, one value per axis, 1 repetition")
    args = p.parse_args(argv)
    if args.smallest:
        args.dim, args.preset, args.patch_factors, args.stages, args.lengths = 2, "light", "1", "all", "16"
        args.base_length, args.repeats, args.warmup, args.num_train = 16, 1, 1, min(args.num_train, 8)
    if args.size is None:
        args.size = (SMALLEST_SIZE if args.smallest else DEFAULT_SIZE)[args.dim]
    return args


# ----- settings ---------------------------------------------------------------------------------------------
def total_strides(arch_kwargs: dict) -> list[int]:
    strides = [s if isinstance(s, (list, tuple)) else [s] * len(arch_kwargs["strides"][0])
               for s in arch_kwargs["strides"]]
    return [math.prod(axis) for axis in zip(*strides)]


def scaled_patch(patch: list[int], factor: float, strides: list[int]) -> list[int]:
    return [max(s, int(round(p * factor / s)) * s) for p, s in zip(patch, strides)]


def fused_stages(value: str, n_stages: int) -> list[int]:
    n = n_stages if value == "all" else min(int(value), n_stages)
    return list(range(n_stages - n, n_stages))


def make_settings(args, conf: dict, preset: dict) -> list[dict]:
    """One dict per (axis, value); equal settings on different axes are measured once (see `key`)."""
    from nnunet_vl.planning.planners import stage_grids, token_pools

    strides = total_strides(conf["architecture"]["arch_kwargs"])
    if args.patch_edges:
        edges = [int(e) for e in args.patch_edges.split(",")]
        patches = {f"{e}^{args.dim}": scaled_patch([e] * args.dim, 1.0, strides) for e in edges}
    else:
        patches = {float(f): scaled_patch(conf["patch_size"], float(f), strides)
                   for f in args.patch_factors.split(",")}
    factors = list(patches)
    stages = [s.strip() for s in args.stages.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    base = {"factor": factors[0], "stages": stages[-1], "length": args.base_length}
    arch = conf["architecture"]["arch_kwargs"]
    max_voxels = preset.get("fusion_max_voxels")
    out = []
    for axis, key, values in (("patch voxels", "factor", factors), ("fused stages", "stages", stages),
                              ("report tokens", "length", lengths)):
        for value in values:
            s = dict(base, **{key: value})
            patch = patches[s["factor"]]
            fused = fused_stages(str(s["stages"]), arch["n_stages"])
            out.append({"axis": axis, "value": value, "patch_size": patch, "voxels": math.prod(patch),
                        "fusion_stages": fused,
                        "fusion_pool": token_pools(stage_grids(patch, arch["strides"]), arch["strides"], fused,
                                                   max_voxels),
                        "report_tokens": s["length"], "key": f"p{'x'.join(map(str, patch))}_s{s['stages']}_l{s['length']}"})
    return out


def setting_plans(plans: dict, configuration: str, setting: dict, model: str, batch_size: int | None = None) -> dict:
    plans = json.loads(json.dumps(plans))
    conf = plans["configurations"][configuration]
    conf["patch_size"] = setting["patch_size"]
    if batch_size is not None:
        conf["batch_size"] = batch_size
    if model != "image":
        conf["text"]["fusion_stages"] = setting["fusion_stages"]
        conf["text"]["fusion_pool"] = setting["fusion_pool"]
        conf["text"]["max_tokens"] = setting["report_tokens"]
    return plans


def planner_estimate(preset: dict, conf: dict, setting: dict, num_classes: int) -> dict:
    """The planner's fusion VRAM estimate (MB) for the setting, from VLPlannerMixin._fusion_stages itself.

    `_fusion_stages` is a method that reads only `self.text_spec['preset']` and `self.UNet_vram_target_GB`, so it
    is called with a stand-in `self` (a target so large that no stage is dropped). `held_mb` is what its budget
    counts as held at once (recomputed blocks once), `per_stage_mb` each fused stage's estimate.
    """
    from nnunet_vl.planning.planners import VLPlannerMixin

    conf = dict(conf, patch_size=setting["patch_size"])
    tokens = setting["report_tokens"] + num_classes  # one token per class joins the report, as the planner counts
    planner = common.fake_self(text_spec={"preset": dict(preset, fusion_stages=len(setting["fusion_stages"]))},
                               UNet_vram_target_GB=1e9)
    stages, _, per_stage, held, _ = VLPlannerMixin._fusion_stages(planner, conf, tokens)
    assert stages == setting["fusion_stages"], (stages, setting)
    return {"held_mb": held, "per_stage_mb": per_stage}


# ----- workers ----------------------------------------------------------------------------------------------
def _setup_worker(spec: dict):
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # reports made longer than max_tokens are truncated on purpose
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for model in ("image", "bipvl"):
        common.trainer_class(model)
    import transformers.models.bert.modeling_bert  # noqa: F401
    return torch


def _build(spec: dict, setting: dict, model: str):
    """Trainer of the setting's plans (VL: reports exactly report_tokens long) and its batch."""
    plans, dataset_json = common.load_plans(spec["dataset_id"])
    trainer = common.make_trainer(model, setting_plans(plans, spec["configuration"], setting, model,
                                                       spec.get("batch_size")),
                                  dataset_json, spec["configuration"], spec["device"])
    batch = common.real_batch(trainer, seed=0)
    if model != "image":
        _set_report_length(trainer, setting["report_tokens"])
    return trainer, batch


def _set_report_length(trainer, length: int) -> None:
    provider = trainer.text_provider
    hf = provider.tokenizer.tokenizer
    limit = int(trainer.text_plan["encoder_config"].get("max_position_embeddings", 512))
    if length > limit:
        raise ValueError(f"report length {length} exceeds the encoder's {limit} positions")
    reports = {}
    for case, text in provider.reports.items():
        long = text or "lesion"
        while len(hf(long)["input_ids"]) < length:
            long = f"{long} {text or 'lesion'}"
        reports[case] = long
    provider.reports, provider.report_token_ids = reports, {}


def _pass(trainer, model: str, batch: dict, device: str):
    """Forward + seg loss (+ text loss) + backward, as in train_step but without mirroring, clipping and step."""
    import torch

    data = batch["data"].to(device)
    target = [t.to(device) for t in batch["target"]] if isinstance(batch["target"], list) else batch["target"].to(device)
    trainer.network.zero_grad(set_to_none=False)  # gradients stay allocated: the peak is activations only
    with torch.autocast(device, enabled=True) if device.startswith("cuda") else _null():
        if model == "image":
            loss = trainer.loss(trainer.network(data), target)
        else:
            text = trainer.text_provider.inputs(list(batch["keys"])).to(device)
            assert int(text.report_mask.sum(1).min()) == text.report_ids.shape[1]  # exactly report_tokens long
            with trainer._text_bound(text, text_loss=True):
                loss = trainer.loss(trainer.network(data), target)
    loss.backward()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure_time(spec: dict) -> dict:
    """All settings in one process; per setting BiPVL and image-only alternate after warm-up."""
    import gc

    device, out = spec["device"], {}
    image: dict[str, tuple] = {}
    for setting in spec["settings"]:
        if setting["key"] in out:
            continue
        patch_key = "x".join(map(str, setting["patch_size"]))
        if patch_key not in image:
            image[patch_key] = _build(spec, setting, "image")
        vl, vl_batch = _build(spec, setting, "bipvl")
        img, img_batch = image[patch_key]
        fns = {"image": lambda: _pass(img, "image", img_batch, device),
               "bipvl": lambda: _pass(vl, "bipvl", vl_batch, device)}
        for fn in fns.values():
            for _ in range(spec["warmup"]):
                fn()
        times = {name: [] for name in fns}
        for r in range(spec["repeats"]):
            for name in (("image", "bipvl") if r % 2 == 0 else ("bipvl", "image")):
                times[name] += common.timed(fns[name], device, 0, 1)
        out[setting["key"]] = times
        del vl, vl_batch, fns
        gc.collect()
    return out


def measure_memory(spec: dict, setting: dict, model: str) -> dict:
    """Activation peak of one pass of one model in one setting; run it in common.in_fresh_process."""
    device = spec["device"]
    trainer, batch = _build(spec, setting, model)
    _pass(trainer, model, batch, device)  # allocates gradients; later passes reuse them
    memory = common.PeakMemory(device)
    memory.reset()
    _pass(trainer, model, batch, device)
    return {"activation_peak_mb": memory.peak_mb(), "method": memory.method,
            "parameters": common.count_parameters(trainer.network)}


def memory_key(setting: dict, model: str) -> str:
    return setting["key"] if model != "image" else "image_" + "x".join(map(str, setting["patch_size"]))


def worker(spec: dict) -> dict:
    """Memory of every (setting, model) in a forked child each, before this process computes anything; then
    the interleaved timings."""
    _setup_worker(spec)
    memory = {}
    for setting in spec["settings"]:
        for model in ("image", "bipvl"):
            key = memory_key(setting, model)
            if key not in memory:
                memory[key] = common.in_fresh_process(measure_memory, spec, setting, model)
    return {"memory": memory, "times_s": measure_time(spec)}


def run_as_worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    common.set_nnunet_env(Path(spec["workdir"]))
    common.write_result(spec, worker(spec))


# ----- driver -----------------------------------------------------------------------------------------------
def _pooling(stages: list[int], pools: list[list[int]] | None) -> str:
    """Kernels of the pooled stages, e.g. "s0 2×2×2" ("none" when no stage pools)."""
    pooled = [f"s{k} " + "×".join(map(str, p)) for k, p in zip(stages, pools or []) if max(p) > 1]
    return ", ".join(pooled) or "none"


def markdown(payload: dict) -> str:
    s, m = payload["settings"], payload["machine"]
    header = ["axis", "value", "patch", "voxels", "fused stages", "token pooling", "text tokens", "BiPVL s",
              "image s", "text branch s", "text / image", "text act. MB (measured)", "planner MB"]
    body = [[r["axis"], r["value"], "×".join(map(str, r["patch_size"])), r["voxels"], str(r["fusion_stages"]),
             _pooling(r["fusion_stages"], r.get("fusion_pool")), r["text_tokens"], f"{r['bipvl_s']:.3f}",
             f"{r['image_s']:.3f}", f"{r['text_branch_s']:.3f}", f"{r['text_branch_relative']:.2f}",
             f"{r['text_activation_mb']:.1f}", f"{r['planner_mb']:.1f}"]
            for r in payload["rows"]]
    lines = [
        "# Scaling of BiPVL's text branch",
        "",
        f"{s['dim']}D, preset `{s['preset']}`, text encoder `{s['text_encoder']}`, batch {payload['batch_size']}, "
        f"images {payload.get('image_size')}^{s['dim']}, planned patch {payload['planned_patch']} "
        f"({payload.get('n_stages')} stages); device `{m['device']}`, {m['torch_threads']} torch thread(s) "
        f"on {m['cpu_count']} CPUs, load average at start {m.get('load_average_at_start')}. Medians of "
        f"{s['repeats']} repetitions after {s['warmup']} warm-up passes; BiPVL and image-only interleaved.",
        "",
        common.markdown_table(header, [[str(v) for v in row] for row in body]),
        "",
        "Text branch s = BiPVL − image-only time of forward + loss + backward (no optimizer step); text tokens = "
        "report tokens + one per class; token pooling = the average-pooling kernel of a fused stage's image tokens "
        "(the preset's `fusion_max_voxels`; `planning.planners.token_pools`). Text act. MB = peak memory of "
        "that pass above the memory held before it (parameters and gradients), BiPVL − image-only, each in its "
        f"own process ({payload['memory_method']}); recomputed stages: {payload['recompute_stages']}. "
        "Planner MB = what `VLPlannerMixin._fusion_stages` counts against its budget for the fused stages "
        "(fusion blocks only, each as wide as the network builds it: 24 B per token·channel + 2·heads·tokens·4 B "
        "of attention per image token, a recomputed block once; a pooled stage adds 2 fp16 tensors at its own "
        "resolution). The measured figure also holds the text encoder's own activations, the per-class "
        "concept encoding and the auxiliary projections, and on CPU everything is fp32 (the planner assumes fp16 "
        "activations).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_as_worker(args.worker)
        return 0
    common.set_nnunet_env(args.workdir)
    started = time.time()
    machine = common.machine_info(args.device)
    if args.threads:
        machine["torch_threads"] = args.threads
    did, configuration = common.prepare_dataset(args.dim, args.preset, args.text_encoder, args.num_train,
                                                args.size, log=lambda s: print(s, flush=True),
                                                own_dataset=args.size != DEFAULT_SIZE[args.dim] and not args.smallest)
    plans, dataset_json = common.load_plans(did)
    conf = plans["configurations"][configuration]
    num_classes = len(conf["text"]["class_names"])
    from nnunet_vl.planning.planners import load_preset

    preset = load_preset(args.preset)
    settings = make_settings(args, conf, preset)
    spec = {"workdir": str(args.workdir), "device": args.device, "threads": args.threads, "repeats": args.repeats,
            "warmup": args.warmup, "dataset_id": did, "configuration": configuration, "batch_size": args.batch_size}
    print(f"[{time.time() - started:6.0f}s] {len({s['key'] for s in settings})} settings: memory (a child process "
          f"per setting and model), then timing", flush=True)
    result = common.run_worker(SCRIPT, dict(spec, settings=settings, name="scaling"),
                               args.workdir / "worker_results" / f"{args.stem}_{args.preset}_{args.dim}d.json")
    timing, memory = result["times_s"], result["memory"]
    first = next(iter(memory.values()))
    memory_method = f"{first['method']}, {first['process']}"
    rows = []
    for setting in settings:
        times = timing[setting["key"]]
        bipvl_s, image_s = common.median(times["bipvl"]), common.median(times["image"])
        vl_mb = memory[memory_key(setting, "bipvl")]["activation_peak_mb"]
        image_mb = memory[memory_key(setting, "image")]["activation_peak_mb"]
        estimate = planner_estimate(preset, conf, setting, num_classes)
        rows.append({**{k: setting[k] for k in ("axis", "value", "patch_size", "voxels", "fusion_stages",
                                                "fusion_pool", "report_tokens")},
                     "text_tokens": setting["report_tokens"] + num_classes,
                     "bipvl_s": bipvl_s, "image_s": image_s, "text_branch_s": bipvl_s - image_s,
                     "text_branch_relative": (bipvl_s - image_s) / image_s if image_s > 0 else math.nan,
                     "bipvl_times_s": times["bipvl"], "image_times_s": times["image"],
                     "bipvl_activation_mb": vl_mb, "image_activation_mb": image_mb,
                     "text_activation_mb": vl_mb - image_mb, "planner_mb": estimate["held_mb"],
                     "planner_per_stage_mb": estimate["per_stage_mb"]})
    settings_out = {k: v for k, v in vars(args).items() if k != "worker"}
    settings_out.update(workdir=str(args.workdir), out=str(args.out))
    payload = {"settings": settings_out, "machine": machine, "memory_method": memory_method,
               "batch_size": args.batch_size or conf["batch_size"], "planned_batch_size": conf["batch_size"],
               "planned_patch": conf["patch_size"], "image_size": args.size,
               "recompute_stages": conf["text"]["recompute_stages"],
               "n_stages": conf["architecture"]["arch_kwargs"]["n_stages"],
               "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"],
               "rows": rows, "elapsed_s": time.time() - started}
    text = markdown(payload)
    common.publish(args.out, args.stem, payload, text, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
