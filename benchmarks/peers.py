#!/usr/bin/env python
"""The BiPVL-Seg reference architecture side by side with nnU-Net and this project's VL trainers (issue #25, part 1).

The reference, built from public library classes with random weights (enough to time it):

- image: MONAI's `SwinUNETR(use_v2=True, feature_size=48)`, its encoder run stage by stage;
- text: a BERT-base-size `transformers.BertModel` (12 layers, hidden 768, 12 heads, MLP 3072; PubMedBERT's size),
  its layers split into chunks [0, 1), [1, 6), [6, 8), [8, 10), [10, 12) that run before the image and after
  image stages 1-4, on one class definition per class and, unfused beside it, six concept sentences per class;
- after image stages 1-4: a SAM-style two-way fusion (depth 2, 8 heads, MLP 2048, cross-attention at half width,
  then a last text-to-image attention) at the stage's width, the text projected in and out (768 <-> stage
  width) as in BiPVL-Seg's code. Every fusion block is a registered, trained module, as the paper describes it
  (its public code keeps them in a plain list, so there they are neither trained nor saved). The data flow
  follows the public code: a stage's skip feature is taken before its fusion, the fused map feeds the next stage;
- loss: MONAI's DiceCE plus one InfoNCE of mask-pooled bottleneck features against the class tokens and one
  against the concept sentences (the shape of BiPVL-Seg's global-local loss, not its weighting); AdamW
  (lr 1e-4, weight decay 1e-5) as BiPVL-Seg trains.

Ours: `nnUNetTrainer`, `nnUNetTrainerBiPVL` and `nnUNetTrainerTMCA` built from one synthetic 3D dataset's plans
(images of --image-size³, so nnU-Net plans a deep network), with the patch set to --patch³ and the text blocks'
token pooling re-planned for it (the planner's own `token_pools`); their real `train_step` on a batch from
nnU-Net's data loader, and nnU-Net's sliding window (no test-time mirroring for anyone).

Measured in one worker process, every model interleaved round by round after warm-up: one training step (forward,
loss, backward, optimizer) at batch 1 and 2; sliding-window inference of one --case³ volume at the reference's
overlap (0.75, MONAI's sliding_window_inference, Gaussian) and at nnU-Net's (0.5; ours: tile step 0.5 and 0.25);
peak memory of two training steps at batch 1 and of one inference at overlap 0.5, each model in its own forked
process (common.PeakMemory). Medians of --repeats.

    python benchmarks/peers.py --threads 2                 # 96³ patches, 160³ case (about 2 h on 2 CPU cores)
    python benchmarks/peers.py --smallest                  # plumbing check: tiny widths, 64³ patches

Needs MONAI, a benchmark-only dependency: `pip install -c constraints.txt ".[peers]"`.
Writes OUT/peers.json and OUT/peers.md (OUT defaults to benchmarks/results).
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
import cost  # noqa: E402

SCRIPT = Path(__file__).resolve()
MODELS = ("image", "bipvl", "tmca", "reference")
LABELS = {"image": "nnUNetTrainer", "bipvl": "nnUNetTrainerBiPVL", "tmca": "nnUNetTrainerTMCA",
          "reference": "BiPVL-Seg reference (SwinUNETR-v2 + BERT-base)"}
REFERENCE = {"feature_size": 48, "text_hidden": 768, "text_layers": 12, "text_heads": 12, "text_mlp": 3072,
             "chunks": [1, 6, 8, 10, 12], "fusion_depth": 2, "fusion_heads": 8, "fusion_mlp": 2048,
             "fusion_downsample": 2, "class_tokens": 32, "concepts": 6, "concept_tokens": 16, "lr": 1e-4,
             "weight_decay": 1e-5, "overlap": 0.75}
SMALLEST_REFERENCE = dict(REFERENCE, feature_size=12, text_hidden=64, text_layers=4, text_heads=4, text_mlp=128,
                          chunks=[1, 2, 3, 3, 4], fusion_heads=4, fusion_mlp=64, class_tokens=8, concept_tokens=6)
NNUNET_OVERLAP = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = common.benchmark_parser(__doc__.split("\n\n")[0], "peers.json/.md")
    p.set_defaults(workdir=common.DEFAULT_RESULTS / "work_peers")
    p.add_argument("--patch", type=int, default=96, help="patch edge (voxels) of every model")
    p.add_argument("--batches", default="1,2", help="training batch sizes")
    p.add_argument("--case", type=int, default=160, help="edge of the volume predicted with the sliding window")
    p.add_argument("--image-size", type=int, default=128, help="edge of the synthetic images our plans come from")
    p.add_argument("--num-train", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--smallest", action="store_true", help="plumbing check: tiny reference, 64³ patches (the smallest SwinUNETR trains on), 1 repeat")
    args = p.parse_args(argv)
    args.reference = dict(REFERENCE)
    if args.smallest:
        args.patch, args.case, args.image_size, args.num_train = 64, 80, 64, 4
        args.repeats, args.warmup, args.batches, args.reference = 1, 0, "1", dict(SMALLEST_REFERENCE)
    return args


# ----- the reference architecture -------------------------------------------------------------------------------
def build_reference(num_classes: int, r: dict):
    """The BiPVL-Seg reference network (see the module docstring) as an nn.Module."""
    import torch.nn.functional as F
    from monai.networks.nets import SwinUNETR
    from torch import nn
    from transformers import BertConfig, BertModel

    class Attention(nn.Module):
        """SAM-style attention: queries, keys and values projected to dim / downsample, split into heads."""

        def __init__(self, dim: int, heads: int, downsample: int = 1):
            super().__init__()
            inner = dim // downsample
            self.heads = heads
            self.q, self.k, self.v, self.out = (nn.Linear(dim, inner), nn.Linear(dim, inner),
                                                nn.Linear(dim, inner), nn.Linear(inner, dim))

        def forward(self, q, k, v):
            def split(t):
                return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

            out = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)), split(self.v(v)))
            return self.out(out.transpose(1, 2).flatten(2))

    class TwoWayBlock(nn.Module):
        """Text self-attention, text to image, text MLP, image to text; post-norm, as SAM's two-way block."""

        def __init__(self, dim: int):
            super().__init__()
            heads, down = r["fusion_heads"], r["fusion_downsample"]
            self.self_attn, self.text_to_image = Attention(dim, heads), Attention(dim, heads, down)
            self.image_to_text = Attention(dim, heads, down)
            self.mlp = nn.Sequential(nn.Linear(dim, r["fusion_mlp"]), nn.ReLU(), nn.Linear(r["fusion_mlp"], dim))
            self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

        def forward(self, text, image):
            text = self.norms[0](text + self.self_attn(text, text, text))
            text = self.norms[1](text + self.text_to_image(text, image, image))
            text = self.norms[2](text + self.mlp(text))
            image = self.norms[3](image + self.image_to_text(image, text, text))
            return text, image

    class TwoWayFusion(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.blocks = nn.ModuleList(TwoWayBlock(dim) for _ in range(r["fusion_depth"]))
            self.final = Attention(dim, r["fusion_heads"], r["fusion_downsample"])
            self.norm = nn.LayerNorm(dim)

        def forward(self, text, image):
            for block in self.blocks:
                text, image = block(text, image)
            return self.norm(text + self.final(text, image, image)), image

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            fs, hidden = r["feature_size"], r["text_hidden"]
            self.unet = SwinUNETR(in_channels=1, out_channels=num_classes, feature_size=fs, use_v2=True)
            self.bert = BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=r["text_layers"],
                                             num_attention_heads=r["text_heads"], intermediate_size=r["text_mlp"]),
                                  add_pooling_layer=False)
            dims = [fs * 2 ** k for k in range(1, 5)]  # stage 1-4 outputs: 96, 192, 384, 768 at feature size 48
            self.text_in = nn.ModuleList(nn.Linear(hidden, d) if d != hidden else nn.Identity() for d in dims)
            self.text_out = nn.ModuleList(nn.Linear(d, hidden) if d != hidden else nn.Identity() for d in dims)
            self.fusion = nn.ModuleList(TwoWayFusion(d) for d in dims)
            self.visual = nn.Conv3d(dims[-1], hidden, kernel_size=1)  # bottleneck features for the contrastive loss

        def chunk(self, k: int, hidden):
            bounds = [0] + list(r["chunks"])
            for layer in self.bert.encoder.layer[bounds[k]:bounds[k + 1]]:
                out = layer(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
            return hidden

        def forward(self, x, class_ids, concept_ids):
            swin, unet = self.unet.swinViT, self.unet
            c, length = class_ids.shape
            x_in = x
            x = swin.pos_drop(swin.patch_embed(x))
            skips = [swin.proj_out(x, True)]
            x = swin.layers1c[0](x.contiguous())
            text = self.chunk(0, self.bert.embeddings(input_ids=class_ids))
            concepts = self.chunk(0, self.bert.embeddings(input_ids=concept_ids))
            stages = [swin.layers1, swin.layers2, swin.layers3, swin.layers4]
            convs = [swin.layers2c, swin.layers3c, swin.layers4c, None]
            for k in range(1, 5):
                x = stages[k - 1][0](x.contiguous())
                skips.append(swin.proj_out(x, True))
                if convs[k - 1] is not None:
                    x = convs[k - 1][0](x.contiguous())
                text, concepts = self.chunk(k, text), self.chunk(k, concepts)
                b, d, *spatial = x.shape
                tokens = self.text_in[k - 1](text.reshape(1, c * length, -1).expand(b, -1, -1))
                tokens, image = self.fusion[k - 1](tokens, x.flatten(2).transpose(1, 2))
                x = image.transpose(1, 2).reshape(b, d, *spatial)
                text = self.text_out[k - 1](tokens).mean(0).reshape(c, length, -1)
            enc0, enc1 = unet.encoder1(x_in), unet.encoder2(skips[0])
            enc2, enc3 = unet.encoder3(skips[1]), unet.encoder4(skips[2])
            dec4 = unet.encoder10(skips[4])
            out = unet.decoder1(unet.decoder2(unet.decoder3(unet.decoder4(unet.decoder5(dec4, skips[3]), enc3),
                                                            enc2), enc1), enc0)
            return unet.out(out), self.visual(dec4), text.mean(1), concepts.mean(1)

    return Reference()


class ReferenceRun:
    """The reference's training step and sliding-window inference on fixed random inputs."""

    def __init__(self, num_classes: int, r: dict, patch: int, batch: int, device: str, seed: int = 0):
        import torch
        from monai.losses import DiceCELoss

        torch.manual_seed(seed)
        self.r, self.patch, self.num_classes, self.device = r, patch, num_classes, device
        self.model = build_reference(num_classes, r).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        vocab = self.model.bert.config.vocab_size
        self.class_ids = torch.randint(1000, vocab, (num_classes, r["class_tokens"]), device=device)
        self.concept_ids = torch.randint(1000, vocab, (num_classes * r["concepts"], r["concept_tokens"]),
                                         device=device)
        self.set_batch(batch)

    def set_batch(self, batch: int) -> None:
        import torch

        g = torch.Generator().manual_seed(batch)
        shape = (batch, 1, *(self.patch,) * 3)
        self.image = torch.randn(shape, generator=g).to(self.device)
        self.target = torch.randint(0, self.num_classes, shape, generator=g).to(self.device)

    def loss(self, logits, visual, class_emb, concept_emb):
        import torch
        import torch.nn.functional as F

        masks = F.one_hot(F.interpolate(self.target.float(), size=visual.shape[2:]).long()[:, 0],
                          self.num_classes).movedim(-1, 1).float()  # (B, C, *grid)
        pooled = (masks[:, :, None] * visual[:, None]).flatten(3).sum(-1) / masks.flatten(2).sum(-1)[..., None]
        pooled = F.normalize(pooled.clamp(min=-1e4, max=1e4).mean(0), dim=-1)  # (C, H) per class over the batch
        labels = torch.arange(self.num_classes, device=self.device)
        concepts = F.normalize(concept_emb.reshape(self.num_classes, self.r["concepts"], -1).mean(1), dim=-1)
        contrast = (F.cross_entropy(pooled @ F.normalize(class_emb, dim=-1).T / 0.1, labels)
                    + F.cross_entropy(pooled @ concepts.T / 0.1, labels))
        return self.seg_loss(logits, self.target) + 0.1 * contrast

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(*self.model(self.image, self.class_ids, self.concept_ids))
        loss.backward()
        self.optimizer.step()

    def infer(self, volume, overlap: float):
        import torch
        from monai.inferers import sliding_window_inference

        self.model.eval()
        with torch.no_grad():
            return sliding_window_inference(volume, (self.patch,) * 3, 1,
                                            lambda x: self.model(x, self.class_ids, self.concept_ids)[0],
                                            overlap=overlap, mode="gaussian")


# ----- ours ---------------------------------------------------------------------------------------------------
def peer_plans(plans: dict, configuration: str, patch: int, batch: int) -> dict:
    """The plans with every model's patch set to patch³ and batch size `batch`; the text blocks' token pooling
    re-planned for that patch by the planner's own rule."""
    from nnunet_vl.planning.planners import load_preset, stage_grids, token_pools

    plans = json.loads(json.dumps(plans))
    conf = plans["configurations"][configuration]
    conf["patch_size"], conf["batch_size"] = [patch] * 3, batch
    arch = conf["architecture"]["arch_kwargs"]
    grids = stage_grids(conf["patch_size"], arch["strides"])
    text = conf["text"]
    preset = load_preset(text["preset"])
    text["fusion_pool"] = token_pools(grids, arch["strides"], text["fusion_stages"], preset.get("fusion_max_voxels"))
    tmca = text["tmca"]
    tmca["enhance_pool"] = token_pools(grids, arch["strides"], tmca["enhance_stages"],
                                       preset["tmca"].get("enhance_max_voxels"))
    return plans


def _ours(spec: dict, model: str, batch: int):
    plans, dataset_json = common.load_plans(spec["dataset_id"])
    trainer = common.make_trainer(model, peer_plans(plans, "3d_fullres", spec["patch"], batch), dataset_json,
                                  "3d_fullres", spec["device"])
    return trainer, common.real_batch(trainer, seed=0)


def _copy(batch: dict) -> dict:
    target = batch["target"]
    return {"data": batch["data"].clone(), "keys": batch["keys"], **({"place": batch["place"]} if "place" in batch
                                                                     else {}),
            "target": [t.clone() for t in target] if isinstance(target, list) else target.clone()}


def _volume(spec: dict):
    import torch

    return torch.randn((1, *(spec["case"],) * 3), generator=torch.Generator().manual_seed(7))


class Runner:
    """One model's training step (at a batch size) and inference (at an overlap), built lazily."""

    def __init__(self, spec: dict, model: str):
        self.spec, self.model, self._built, self._predictors = spec, model, {}, {}

    def _get(self, batch: int):
        if batch not in self._built:
            if self.model == "reference":
                self._built[batch] = ReferenceRun(self.spec["num_classes"], self.spec["reference"], self.spec["patch"],
                                                  batch, self.spec["device"])
            else:
                self._built[batch] = _ours(self.spec, self.model, batch)
        return self._built[batch]

    def train(self, batch: int) -> None:
        built = self._get(batch)
        if self.model == "reference":
            built.train_step()
        else:
            trainer, data = built
            trainer.network.train()
            trainer.set_deep_supervision_enabled(True)
            trainer.train_step(_copy(data))

    def infer(self, overlap: float, volume) -> None:
        if self.model == "reference":
            self._get(1).infer(volume[None], overlap)
            return
        trainer, _ = self._get(1)
        if overlap not in self._predictors:
            predictor = common.make_predictor(trainer, self.model, use_mirroring=False)
            predictor.tile_step_size = 1 - overlap
            if common.is_vl(self.model):
                case = sorted(trainer.text_provider.reports)[0]
                predictor.select_case(case)
            self._predictors[overlap] = predictor
        self._predictors[overlap].predict_sliding_window_return_logits(volume)

    def parameters(self) -> int:
        built = self._get(1)
        return common.count_parameters(built.model if self.model == "reference" else built[0].network)


def measure_memory(spec: dict, model: str) -> dict:
    """Peak memory of two training steps at batch 1 and of one inference at nnU-Net's overlap (a forked child)."""
    import torch

    memory = common.PeakMemory(spec["device"])
    memory.reset()
    baseline = memory.baseline_mb
    runner = Runner(spec, model)
    runner._get(1)
    memory.reset(baseline_mb=baseline)
    for _ in range(2):
        runner.train(1)
    train_mb = memory.peak_mb()
    volume = _volume(spec)
    memory.reset(baseline_mb=baseline)
    with torch.no_grad():
        runner.infer(NNUNET_OVERLAP, volume)
    return {"train_peak_mb": train_mb, "infer_peak_mb": memory.peak_mb(), "method": memory.method}


def worker(spec: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    for model in ("image", "bipvl", "tmca"):
        common.trainer_class(model)
    import monai.networks.nets  # noqa: F401  (imported before any memory baseline)
    import nnunet_vl.inference.predictor  # noqa: F401  (likewise)

    models = spec["models"]
    memory = {m: common.in_fresh_process(measure_memory, spec, m) for m in models}
    runners = {m: Runner(spec, m) for m in models}
    result = {"memory": memory, "parameters": {m: runners[m].parameters() for m in models}, "train_s": {},
              "infer_s": {}}
    for batch in spec["batches"]:
        result["train_s"][str(batch)] = cost._interleaved(
            {m: (lambda r=runners[m]: r.train(batch)) for m in models}, spec["device"], spec["warmup"], spec["repeats"])
    volume = _volume(spec)
    for overlap in sorted({spec["reference"]["overlap"], NNUNET_OVERLAP}):
        result["infer_s"][str(overlap)] = cost._interleaved(
            {m: (lambda r=runners[m]: r.infer(overlap, volume)) for m in models}, spec["device"], min(spec["warmup"], 1),
            spec["repeats"])
    return result


# ----- driver and report ----------------------------------------------------------------------------------------
def summarise(result: dict, spec: dict) -> list[dict]:
    """One row per model: medians, and ratios to nnUNetTrainer."""
    rows = []
    image = "image" if "image" in spec["models"] else None
    for model in spec["models"]:
        row = {"model": model, "label": LABELS[model], "parameters": result["parameters"][model],
               **{f"train_b{b}_s": common.median(v[model]) for b, v in result["train_s"].items()},
               **{f"infer_o{o}_s": common.median(v[model]) for o, v in result["infer_s"].items()},
               "train_peak_mb": result["memory"][model]["train_peak_mb"],
               "infer_peak_mb": result["memory"][model]["infer_peak_mb"]}
        rows.append(row)
    if image is not None:
        base = next(r for r in rows if r["model"] == image)
        for row in rows:
            for key in [k for k in row if k.endswith("_s") or k.endswith("_mb")]:
                row[key.rsplit("_", 1)[0] + "_ratio"] = row[key] / base[key] if base[key] > 0 else math.nan
    return rows


def markdown(payload: dict) -> str:
    spec, rows = payload["spec"], payload["rows"]
    batches = [str(b) for b in spec["batches"]]
    overlaps = sorted({str(spec["reference"]["overlap"]), str(NNUNET_OVERLAP)})
    header = (["model", "parameters (M)"] + [f"train step b{b} s (×)" for b in batches]
              + [f"infer {spec['case']}³ overlap {o} s (×)" for o in overlaps]
              + ["train peak MB (×)", "infer peak MB (×)"])

    def cell(row, key):
        ratio = row.get(key.rsplit("_", 1)[0] + "_ratio")
        return f"{row[key]:.3g}" + (f" ({ratio:.2f})" if ratio is not None and math.isfinite(ratio) else "")

    body = [[r["label"], f"{r['parameters'] / 1e6:.1f}"] + [cell(r, f"train_b{b}_s") for b in batches]
            + [cell(r, f"infer_o{o}_s") for o in overlaps] + [cell(r, "train_peak_mb"), cell(r, "infer_peak_mb")]
            for r in rows]
    lines = [f"Patch {spec['patch']}³ for every model, {spec['repeats']} interleaved repeats (median), "
             f"{payload['machine'].get('torch_threads')} torch threads on {payload['machine'].get('processor')}; "
             f"× = ratio to nnUNetTrainer. Memory: {payload.get('memory_method', '')}.", "",
             common.markdown_table(header, body), "",
             "The reference differs in more than the architecture: DiceCE plus an InfoNCE of the shape of BiPVL-Seg's "
             "global-local loss (not its weighting), AdamW lr 1e-4 with weight decay 1e-5, random weights, its "
             "sliding window is MONAI's (overlap 0.75 = tile step 0.25 of ours); ours train with nnU-Net's deep "
             "supervision and their own text losses. No test-time mirroring for any model."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.set_nnunet_env(Path(spec["workdir"]))
        common.write_result(spec, worker(spec))
        return 0
    try:
        import monai  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/peers.py needs MONAI (a benchmark-only dependency): "
                         "pip install -c constraints.txt \".[peers]\"")
    common.set_nnunet_env(args.workdir)
    started = time.time()
    machine = common.machine_info(args.device)
    if args.threads:
        machine["torch_threads"] = args.threads
    did, _ = common.prepare_dataset(3, "bipvl", args.text_encoder, args.num_train, args.image_size,
                                    log=lambda s: print(s, flush=True))
    plans, dataset_json = common.load_plans(did)
    conf = plans["configurations"]["3d_fullres"]
    strides = [math.prod(s[a] if isinstance(s, (list, tuple)) else s for s in conf["architecture"]["arch_kwargs"]
                         ["strides"]) for a in range(3)]
    if any(args.patch % s for s in strides):
        raise SystemExit(f"--patch {args.patch} is not divisible by the planned network's total strides {strides}")
    models = [m for m in args.models.split(",") if m]
    spec = {"workdir": str(args.workdir), "device": args.device, "threads": args.threads, "dataset_id": did,
            "patch": args.patch, "batches": [int(b) for b in args.batches.split(",")], "case": args.case,
            "repeats": args.repeats, "warmup": args.warmup, "models": models, "reference": args.reference,
            "num_classes": len(dataset_json["labels"]), "name": "peers"}
    print(f"[{time.time() - started:6.0f}s] measuring {', '.join(models)} at {args.patch}³ (memory, then timing)",
          flush=True)
    result = common.run_worker(SCRIPT, spec, args.workdir / "worker_results" / "peers.json")
    rows = summarise(result, spec)
    payload = {"spec": spec, "machine": machine, "memory_method": result["memory"][models[0]]["method"],
               "rows": rows, "raw": result, "planned_network": {"n_stages": conf["architecture"]["arch_kwargs"]
                                                                ["n_stages"], "planned_patch": conf["patch_size"]},
               "elapsed_s": time.time() - started}
    text = markdown(payload)
    common.publish(args.out, "peers", payload, text, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
