#!/usr/bin/env python
"""What BiPVL's class-text options cost (issue #22, parts 1 and 2): class descriptions as one token or as
sentences (`class_text`), and a trainable concept path (`train_concepts`), against image-only nnU-Net.

On the synthetic dataset of benchmarks/cost.py (same work dir, planned with the `bipvl` preset), nnUNetTrainer and
nnUNetTrainerBiPVL are built from the same plans with only these two text-section keys changed, and measured as
cost.py measures: the trainer's own train_step on one real batch (interleaved round by round after warm-up, median),
sliding-window inference of a case tiled to 2x the patch per axis (no test-time mirroring), and the peak memory of
two training steps and of that inference, each variant in its own forked process. Beside it, the planner's fusion
estimate for the variant (its text tokens: the report plus one token per class, or plus every class's
description tokens).

    python benchmarks/class_text_cost.py --threads 1          # 3D (default), then read OUT/class_text_cost.md
    python benchmarks/class_text_cost.py --dim 2 --smallest   # plumbing check
    python benchmarks/class_text_cost.py --dataset 960 -c 3d_fullres --preprocessed DIR --infer-scale 1.5   # real plans

Writes OUT/class_text_cost.json and .md (with --dataset: OUT/class_text_cost_<dataset name>.json/.md; OUT defaults
to benchmarks/results).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import cost  # noqa: E402

SCRIPT = Path(__file__).resolve()
VARIANTS = {  # name -> (model, text-section keys)
    "image-only": ("image", {}),
    "token": ("bipvl", {"class_text": "token", "train_concepts": False}),
    "sentences": ("bipvl", {"class_text": "sentences", "train_concepts": False}),
    "token + train_concepts": ("bipvl", {"class_text": "token", "train_concepts": True}),
    "sentences + train_concepts": ("bipvl", {"class_text": "sentences", "train_concepts": True}),
}


def parse_args(argv=None):
    p = common.benchmark_parser(__doc__.split("\n\n")[0], "class_text_cost.json/.md")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-train", type=int, default=40)
    p.add_argument("--infer-scale", type=float, default=2.0,
                   help="inference case = a preprocessed case tiled to this many patch sizes per axis")
    p.add_argument("--smallest", action="store_true", help="tiny images, 1 repetition")
    common.add_planned_dataset_arguments(p, "--dim, --num-train do not apply")
    args = p.parse_args(argv)
    common.check_planned_dataset_arguments(p, args)
    if args.smallest:
        args.repeats, args.warmup, args.num_train = 1, 1, min(args.num_train, 8)
    args.size = (cost.SMALLEST_SIZE if args.smallest else cost.DEFAULT_SIZE)[args.dim]
    return args


def variant_plans(plans: dict, configuration: str, keys: dict) -> dict:
    plans = json.loads(json.dumps(plans))
    plans["configurations"][configuration]["text"].update(keys)
    return plans


def planner_estimate_mb(plans: dict, configuration: str, class_text: str) -> float:
    """The planner's held fusion estimate (MB) with this variant's text tokens (VLPlannerMixin._fusion_stages)."""
    from nnunet_vl.planning.planners import VLPlannerMixin, load_preset

    conf = plans["configurations"][configuration]
    text = conf["text"]
    preset = load_preset(text["preset"])
    classes = len(text["class_names"])
    tokens = text["max_tokens"] + classes * (1 if class_text == "token" else text["max_label_tokens"])
    planner = common.fake_self(text_spec={"preset": preset}, UNet_vram_target_GB=1e9)
    return float(VLPlannerMixin._fusion_stages(planner, conf, tokens)[3])


def _build(spec: dict, variant: str):
    plans, dataset_json = common.load_plans(spec["dataset_id"], spec["plans"])
    model, keys = VARIANTS[variant]
    trainer = common.make_trainer(model, variant_plans(plans, spec["configuration"], keys) if keys else plans,
                                  dataset_json, spec["configuration"], spec["device"])
    return model, trainer


def measure_memory(spec: dict, variant: str) -> dict:
    """Peak memory of two training steps and of one inference of the variant (run in common.in_fresh_process)."""
    import torch

    memory = common.PeakMemory(spec["device"])
    memory.reset()
    baseline = memory.baseline_mb
    model, trainer = _build(spec, variant)
    batch = common.real_batch(trainer, seed=0)
    memory.reset(baseline_mb=baseline)
    for _ in range(2):
        trainer.train_step(cost._batch_copy(batch))
    train_mb = memory.peak_mb()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.optimizer.state.clear()
    predictor = common.make_predictor(trainer, model, use_mirroring=False)
    case, data = common.inference_case(trainer, spec["infer_scale"])
    if common.is_vl(model):
        predictor.select_case(case)
    memory.reset(baseline_mb=baseline)
    with torch.no_grad():
        predictor.predict_sliding_window_return_logits(data)
    return {"train_peak_mb": train_mb, "infer_peak_mb": memory.peak_mb(), "method": memory.method}


def worker(spec: dict) -> dict:
    cost._setup_worker(spec)
    variants = list(VARIANTS)
    memory = {v: common.in_fresh_process(measure_memory, spec, v) for v in variants}
    built = {v: _build(spec, v) for v in variants}
    batch = common.real_batch(built["image-only"][1], seed=0)
    train = cost._interleaved({v: (lambda t=t: t.train_step(cost._batch_copy(batch))) for v, (_, t) in built.items()},
                              spec["device"], spec["warmup"], spec["repeats"])
    case, data = common.inference_case(built["image-only"][1], spec["infer_scale"])
    predictors = {}
    for v, (model, trainer) in built.items():
        predictors[v] = common.make_predictor(trainer, model, use_mirroring=False)
        if common.is_vl(model):
            predictors[v].select_case(case)
    infer = cost._interleaved({v: (lambda p=p: p.predict_sliding_window_return_logits(data))
                               for v, p in predictors.items()}, spec["device"], 1, spec["repeats"])
    plans, _ = common.load_plans(spec["dataset_id"], spec["plans"])
    text = plans["configurations"][spec["configuration"]]["text"]
    return {"memory": memory, "train_s": train, "infer_s": infer,
            "planner_held_mb": {v: planner_estimate_mb(plans, spec["configuration"], keys.get("class_text", "token"))
                                for v, (model, keys) in VARIANTS.items() if model != "image"},
            "text_tokens": {"max_tokens": text["max_tokens"], "max_label_tokens": text["max_label_tokens"],
                            "classes": len(text["class_names"])},
            "patch_size": list(built["image-only"][1].configuration_manager.patch_size),
            "batch_size": int(batch["data"].shape[0])}


def markdown(payload: dict) -> str:
    r = payload["result"]
    image = {"train": common.median(r["train_s"]["image-only"]), "infer": common.median(r["infer_s"]["image-only"]),
             "train_mb": r["memory"]["image-only"]["train_peak_mb"], "infer_mb": r["memory"]["image-only"]["infer_peak_mb"]}
    rows = []
    for v in VARIANTS:
        train, infer = common.median(r["train_s"][v]), common.median(r["infer_s"][v])
        m = r["memory"][v]
        rows.append([v, f"{train:.3f} ({train / image['train']:.2f}×)", f"{infer:.2f} ({infer / image['infer']:.2f}×)",
                     f"{m['train_peak_mb']:.0f} ({m['train_peak_mb'] / image['train_mb']:.2f}×)",
                     f"{m['infer_peak_mb']:.0f} ({m['infer_peak_mb'] / image['infer_mb']:.2f}×)",
                     f"{r['planner_held_mb'][v]:.0f}" if v in r["planner_held_mb"] else "–"])
    t = r["text_tokens"]
    data = payload.get("dataset") or f"{payload['dim']}D synthetic"
    head = (f"{data}, plans `{payload.get('plans', 'nnUNetPlans')}`, patch {r['patch_size']}, batch "
            f"{r['batch_size']}; text: report ≤ "
            f"{t['max_tokens']} tokens, {t['classes']} classes of ≤ {t['max_label_tokens']} tokens; "
            f"{payload['settings']['repeats']} interleaved repeats (median), {payload['machine'].get('torch_threads')} "
            f"threads, load at start {payload['machine'].get('load_average_at_start')}; × = ratio to image-only. "
            f"Memory: {r['memory']['image-only']['method']}.")
    table = common.markdown_table(["variant", "train s/step", "infer s/case", "train peak MB", "infer peak MB",
                                   "planner fusion estimate MB (GPU, fp16)"], rows)
    return "# Cost of BiPVL's class-text options relative to image-only nnUNetTrainer\n\n" + head + "\n\n" + table


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.set_nnunet_env(Path(spec["workdir"]), spec.get("preprocessed") and Path(spec["preprocessed"]))
        common.write_result(spec, worker(spec))
        return 0
    common.set_nnunet_env(args.workdir, args.preprocessed)
    started = time.time()
    machine = common.machine_info(args.device)
    if args.threads:
        machine["torch_threads"] = args.threads
    dataset, plans_id = None, "nnUNetPlans"
    if args.dataset is not None:
        did, configuration, plans_id = args.dataset, args.configuration, args.plans
        dataset, config = common.planned_configuration(args)
        args.dim = len(config["patch_size"])
    else:
        did, configuration = common.prepare_dataset(args.dim, "bipvl", args.text_encoder, args.num_train, args.size,
                                                    log=lambda s: print(s, flush=True))
    spec = {"workdir": str(args.workdir), "device": args.device, "threads": args.threads, "dataset_id": did,
            "configuration": configuration, "plans": plans_id, "repeats": args.repeats, "warmup": args.warmup,
            "infer_scale": args.infer_scale, "preprocessed": args.preprocessed and str(args.preprocessed),
            "name": "class_text_cost"}
    stem = "class_text_cost" + (f"_{dataset}" if dataset else "")
    result = common.run_worker(SCRIPT, spec, args.workdir / "worker_results" / f"{stem}_{args.dim}d.json")
    settings = {k: v for k, v in vars(args).items() if k != "worker"} | {
        "workdir": str(args.workdir), "out": str(args.out), "preprocessed": args.preprocessed and str(args.preprocessed)}
    payload = {"dim": args.dim, "dataset": dataset, "plans": plans_id, "settings": settings, "machine": machine,
               "result": result, "elapsed_s": time.time() - started}
    text = markdown(payload)
    common.publish(args.out, stem, payload, text, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
