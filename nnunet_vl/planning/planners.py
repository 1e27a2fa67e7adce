"""VL experiment planners: nnU-Net's image plans, untouched, plus a `text` section per configuration."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)

from nnunet_vl.networks.fusion import fusion_width
from nnunet_vl.networks.text_branch import CLASS_TEXT_MODES
from nnunet_vl.package_data import PRESETS, data_dir, data_files

# bytes per fusion token and channel in one fusion block (activations kept for backward, fp16 + attention I/O)
_FUSION_BYTES_PER_TOKEN_CHANNEL = 24
_FUSION_BYTES_PER_ATTENTION_ENTRY = 4
# a pooled block's tensors at its stage's resolution, fp16 like the above: its output, held beside the stage
# output, and the update interpolated back
_POOLED_BYTES_PER_STAGE_VOXEL_CHANNEL = 4


class PresetError(ValueError):
    pass


def presets_dir() -> Path:
    """The installed presets (`planners/` of the source tree, shipped as nnunet_vl.planner_presets)."""
    return data_dir(PRESETS)


def available_presets() -> list[str]:
    return [p.stem for p in data_files(PRESETS)]


def load_preset(name_or_path: str) -> dict:
    """A preset by name (planners/NAME.json) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = presets_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise PresetError(f"unknown planner preset '{name_or_path}': use one of {available_presets()} or a JSON file")
    preset = json.loads(path.read_text(encoding="utf-8"))
    preset["name"] = path.stem
    return preset


CLASS_TEXT_AUTO = "auto"  # sentences when the dataset has no reports, token when it has


def class_text_mode(preset: dict, training_reports: int) -> tuple[str, str]:
    """How class descriptions enter BiPVL's fused text (networks.text_branch.CLASS_TEXT_MODES) and why: the preset's
    `class_text` ("token" when it has none); "auto" is "sentences" on a dataset whose training cases have no report
    (the class text is its only text) and "token" on one with reports."""
    mode = preset.get("class_text", "token")
    if mode == CLASS_TEXT_AUTO:
        chosen = "token" if training_reports > 0 else "sentences"
        why = (f"{training_reports} training case(s) with a report" if training_reports > 0
               else "no reports: the class descriptions are the only text")
        return chosen, f"preset '{preset.get('name')}': class_text auto -> {chosen} ({why})"
    if mode not in CLASS_TEXT_MODES:
        raise PresetError(f"preset '{preset.get('name')}': class_text '{mode}' is not one of "
                          f"{(*CLASS_TEXT_MODES, CLASS_TEXT_AUTO)}. Fix: set \"class_text\" to \"token\" (one token "
                          f"per class), \"sentences\" (each description read through the text layers and the fusion) "
                          f"or \"auto\" (sentences without reports, token with)")
    return mode, f"preset '{preset.get('name')}': class_text {mode}"


def _round_up(n: float, multiple: int = 8) -> int:
    return int(math.ceil(max(n, 1) / multiple) * multiple)


def direction_axes_from_geometry(image_properties: dict, transpose_forward: list[int]) -> tuple[dict, str]:
    """Transposed array axis of each anatomical axis, read from the image's direction cosines.

    Arrays from nnU-Net readers are (z, y, x); SimpleITK's direction matrix gives each index axis's
    world (LPS) direction. Without geometry (PNG, TIFF) the convention of 2D images is assumed: the last
    axis runs left-right, the one before it top-bottom.
    """
    sitk = image_properties.get("sitk_stuff")
    direction = np.asarray(sitk["direction"], dtype=float) if sitk else np.zeros(0)
    if direction.size == 9:
        matrix = direction.reshape(3, 3)
        world_to_name = {0: "left_right", 1: "anterior_posterior", 2: "superior_inferior"}
        numpy_axes = {world_to_name[int(np.argmax(np.abs(matrix[:, 2 - i])))]: i for i in range(3)}
        source = "image direction cosines"
    else:
        numpy_axes = {"left_right": 2, "superior_inferior": 1, "anterior_posterior": None}
        source = "2D image convention (last axis left-right, second-last top-bottom)"
    return ({name: (transpose_forward.index(a) if a is not None else None) for name, a in numpy_axes.items()},
            source)


def stage_count(wanted: int | str, n_stages: int) -> int:
    """How many of `n_stages` stages a preset value means: "all", or a count capped at n_stages."""
    return n_stages if wanted == "all" else min(int(wanted), n_stages)


def recompute_stages(preset: dict, n_stages: int) -> list[int]:
    """The preset's `recompute_stages` highest-resolution stages ("all", a count; none when the preset does not say)."""
    return list(range(stage_count(preset.get("recompute_stages", 0), n_stages)))


def stage_grids(patch_size: list[int], strides: list[list[int]]) -> list[np.ndarray]:
    """Spatial shape of every encoder stage's output for one patch (the patch divided by the strides so far)."""
    grids, spatial = [], np.asarray(patch_size, dtype=float)
    for stride in strides:
        spatial = spatial / np.asarray(stride)
        grids.append(spatial)
    return grids


def token_pools(grids: list[np.ndarray], strides: list[list[int]], stages: list[int],
                max_voxels: int | None) -> list[list[int]]:
    """Average-pooling kernel of the text-attention token grid after each of `stages` (BiPVL fusion, TMCA).

    grids: every stage's spatial shape (stage_grids). A stage whose grid (per sample) has more than `max_voxels`
    voxels attends from a coarser grid: the following stages' strides, as many as it takes to reach
    `max_voxels` or the deepest stage. None: no pooling.
    """
    pools = []
    for s in stages:
        kernel, k = np.ones(len(grids[0]), dtype=int), s
        while max_voxels is not None and np.prod(grids[k]) > max_voxels and k + 1 < len(strides):
            k += 1
            kernel = kernel * np.asarray(strides[k], dtype=int)
        pools.append([int(v) for v in kernel])
    return pools


# bytes per text-encoder parameter: fp32 weights; a trained one adds its fp32 gradient and AdamW's two moments;
# one that feeds a matmul adds the fp16 copy autocast makes of it for the step (embedding tables are looked up)
_ENCODER_WEIGHT_BYTES = 4
_ENCODER_TRAINED_EXTRA_BYTES = 4 + 8
_ENCODER_AUTOCAST_COPY_BYTES = 2
# above this share of the text budget the encoder's fixed cost is reported as a warning
_ENCODER_WARN_FRACTION = 0.5


def encoder_parameter_counts(encoder_config: dict) -> dict[str, int]:
    """Parameters of the planned encoder as the VL networks hold it (pooler removed): total and word embeddings.

    Counted on PyTorch's meta device, so any Hugging Face architecture is counted exactly without allocating it.
    """
    import torch

    from nnunet_vl.text.encoders import build_encoder_from_config

    with torch.device("meta"):
        encoder = build_encoder_from_config(encoder_config)
    pooler = getattr(encoder, "pooler", None)
    total = sum(p.numel() for p in encoder.parameters()) - (sum(p.numel() for p in pooler.parameters()) if pooler else 0)
    embeddings = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Embedding))
    return {"total": int(total), "word_embeddings": int(encoder.get_input_embeddings().weight.numel()),
            "embedding_tables": int(embeddings)}


def encoder_vram_mb(counts: dict[str, int], lr_factor: float, train_word_embeddings: bool) -> float:
    """Fixed training memory of the text encoder (MB): weights, autocast copies, and for a fine-tuned encoder
    (lr_factor > 0) gradients and AdamW state of what it trains (the word embeddings only if the plans say so)."""
    trained = 0
    if lr_factor > 0:
        trained = counts["total"] - (0 if train_word_embeddings else counts["word_embeddings"])
    matmul_weights = counts["total"] - counts["embedding_tables"]
    total = (counts["total"] * _ENCODER_WEIGHT_BYTES + matmul_weights * _ENCODER_AUTOCAST_COPY_BYTES
             + trained * _ENCODER_TRAINED_EXTRA_BYTES)
    return total / 1024 ** 2


class VLPlannerMixin:
    """Adds the text section to every configuration the parent planner writes; the image part is the parent's."""

    text_spec: dict  # set by configure_text before plan_experiment

    def configure_text(self, preset: dict, encoder: str, encoder_config: dict, fingerprint_text: dict,
                       class_names: list[str], image_properties: dict,
                       lateral_pairs: tuple[list[tuple[str, str]], str] = ((), "none given")) -> None:
        """lateral_pairs: (left, right) label names whose ids swap with a left-right flip, and their source."""
        self.text_spec = {"preset": preset, "encoder": encoder, "encoder_config": encoder_config,
                          "fingerprint": fingerprint_text, "class_names": class_names,
                          "image_properties": image_properties, "lateral_pairs": lateral_pairs}

    def _token_limits(self) -> tuple[int, int, int]:
        """Report, class-description and concept lengths: the p95 under the tokenizer, capped."""
        preset, fp, cfg = self.text_spec["preset"], self.text_spec["fingerprint"], self.text_spec["encoder_config"]
        limit = int(cfg.get("max_position_embeddings", 512))
        reports = min(limit, preset["max_report_tokens_cap"], _round_up(fp["report_tokens"]["p95"]))
        labels = min(limit, preset["max_label_tokens_cap"], _round_up(fp["label_text_tokens"]["p95"]))
        concepts = min(limit, preset["max_label_tokens_cap"], _round_up(fp["concept_tokens"]["p95"]))
        return max(reports, 8), max(labels, 8), max(concepts, 8)

    def _fusion_stages(self, conf: dict, num_text_tokens: int) -> tuple[list[int], list[list[int]], dict, float, str]:
        """Fused stages, the pooling kernel of each one's image tokens, their activation estimate (MB per stage),
        what of it the budget counts as held at once (MB) and why.

        A stage's image tokens are its grid pooled to at most the preset's `fusion_max_voxels` (token_pools); a
        pooled block also holds two fp16 tensors at its stage's resolution. Stages among the preset's
        `recompute_stages` highest-resolution ones keep no block activations between forward and backward: only
        the largest of them counts, once (while it is recomputed); the stage-resolution tensors count always.
        """
        preset = self.text_spec["preset"]
        arch = conf["architecture"]["arch_kwargs"]
        n_stages = arch["n_stages"]
        stages = list(range(n_stages - stage_count(preset["fusion_stages"], n_stages), n_stages))
        grids = stage_grids(conf["patch_size"], arch["strides"])
        pools = dict(zip(stages, token_pools(grids, arch["strides"], stages, preset.get("fusion_max_voxels"))))
        tokens = {k: int(np.prod(np.ceil(grids[k] / np.asarray(pools[k])))) for k in stages}
        depth, batch = preset["fusion_depth"], conf["batch_size"]
        widths = [fusion_width(c, preset["fusion_dim"], preset["fusion_heads"]) for c in arch["features_per_stage"]]

        def blocks(k: int) -> float:
            dim, heads = widths[k]  # the network caps each block's width at its stage's width
            per_block = tokens[k] * (dim * _FUSION_BYTES_PER_TOKEN_CHANNEL
                                     + 2 * heads * num_text_tokens * _FUSION_BYTES_PER_ATTENTION_ENTRY)
            return batch * depth * per_block

        def stage_resolution(k: int) -> float:
            if np.prod(pools[k]) == 1:
                return 0.0
            voxels = float(np.prod(grids[k]))
            return batch * voxels * arch["features_per_stage"][k] * _POOLED_BYTES_PER_STAGE_VOXEL_CHANNEL

        recomputed = set(recompute_stages(preset, n_stages))

        def kept(fused: list[int]) -> float:
            return (sum(blocks(k) for k in fused if k not in recomputed) + sum(stage_resolution(k) for k in fused)
                    + max((blocks(k) for k in fused if k in recomputed), default=0.0))

        budget = preset["text_vram_fraction"] * self.UNet_vram_target_GB * 1024 ** 3
        dropped = []
        while len(stages) > 1 and kept(stages) > budget:
            dropped.append(stages.pop(0))  # highest resolution first: it has the most tokens
        estimate = {f"stage_{k}": round((blocks(k) + stage_resolution(k)) / 1024 ** 2, 2) for k in stages}
        held_mb = kept(stages) / 1024 ** 2
        if dropped:
            reason = (f"stages {dropped} dropped: fusion at them would exceed {preset['text_vram_fraction']:.0%} of "
                      f"the {self.UNet_vram_target_GB} GB target ({budget / 1024 ** 2:.0f} MB)")
        else:
            reason = (f"{len(stages)} of {n_stages} stages fused (preset '{preset['name']}': {preset['fusion_stages']}); "
                      f"estimate {held_mb:.1f} MB within the "
                      f"{budget / 1024 ** 2:.0f} MB text budget")
        return stages, [pools[k] for k in stages], estimate, round(held_mb, 2), reason

    def encoder_cost(self, lr_factors: dict[str, float]) -> tuple[dict[str, float], int, str | None]:
        """Fixed training memory of the text encoder per method (MB), its parameter count, and a warning when it
        takes most of the text budget.

        The fusion budget (`_fusion_stages`) does not include it: the encoder is the same whichever stages are
        fused, so dropping stages for it would only lose fusion; it is recorded and reported instead.
        """
        preset, cfg = self.text_spec["preset"], self.text_spec["encoder_config"]
        if "encoder_counts" not in self.text_spec:  # once per planner: every configuration has the same encoder
            self.text_spec["encoder_counts"] = encoder_parameter_counts(cfg)
        counts = self.text_spec["encoder_counts"]
        train_embeddings = bool(preset.get("train_word_embeddings", False))
        cost = {m: round(encoder_vram_mb(counts, f, train_embeddings), 1) for m, f in lr_factors.items()}
        budget_mb = preset["text_vram_fraction"] * self.UNet_vram_target_GB * 1024
        worst = max(cost, key=cost.get)
        warning = None
        if cost[worst] > _ENCODER_WARN_FRACTION * budget_mb:
            warning = (f"the text encoder '{self.text_spec['encoder']}' ({counts['total'] / 1e6:.0f}M parameters) "
                       f"needs {cost[worst]:.0f} MB to train with {worst} (weights"
                       f"{', gradients and AdamW state' if lr_factors[worst] > 0 else ''}), "
                       f"{cost[worst] / budget_mb:.0%} of the {budget_mb:.0f} MB text budget "
                       f"({preset['text_vram_fraction']:.0%} of {self.UNet_vram_target_GB} GB); it comes on top of "
                       f"the image network and the fusion stages planned here. A GPU with less headroom needs a "
                       f"smaller encoder, a frozen one (text_lr_factor 0 in the preset) or a larger -gpu_memory_target")
        return cost, counts["total"], warning

    def text_section(self, conf: dict, configuration_name: str, transpose_forward: list[int]) -> dict:
        preset, cfg = self.text_spec["preset"], self.text_spec["encoder_config"]
        max_report, max_label, max_concept = self._token_limits()
        class_names = self.text_spec["class_names"]
        class_text, class_text_source = class_text_mode(
            preset, int(self.text_spec["fingerprint"]["training_cases_with_report"]))
        # each class joins the report in fusion as one token, or as its description's tokens ("sentences")
        num_text_tokens = max_report + len(class_names) * (1 if class_text == "token" else max_label)
        stages, pools, estimate_mb, held_mb, reason = self._fusion_stages(conf, num_text_tokens)
        axes, source = direction_axes_from_geometry(self.text_spec["image_properties"], transpose_forward)
        if len(conf["patch_size"]) == 2:  # a 2D configuration sees transposed axes 1 and 2
            axes = {k: (v - 1 if v is not None and v > 0 else None) for k, v in axes.items()}
        arch = conf["architecture"]["arch_kwargs"]
        n_stages = arch["n_stages"]
        tmca = dict(preset["tmca"])
        align = list(range(stage_count(tmca.pop("align_stages"), n_stages)))
        enhance = list(range(n_stages - stage_count(tmca.pop("enhance_stages"), n_stages), n_stages))
        weights = tmca.pop("level_weights")
        grids = stage_grids(conf["patch_size"], arch["strides"])
        tmca["enhance_pool"] = token_pools(grids, arch["strides"], enhance, tmca.pop("enhance_max_voxels", None))
        tmca.update(align_stages=align, enhance_stages=enhance,
                    level_weights=[1.0 / len(align)] * len(align) if weights == "equal" else list(weights))
        encoder_mb, encoder_parameters, encoder_warning = self.encoder_cost(
            {"bipvl": float(preset["text_lr_factor"]),
             "tmca": float(tmca.get("text_lr_factor", preset["text_lr_factor"]))})
        print(f"{configuration_name}: text encoder {encoder_parameters / 1e6:.1f}M parameters, fixed training memory "
              + ", ".join(f"{m} {v:.0f} MB" for m, v in encoder_mb.items()) + f"; class text as {class_text}; fusion "
              + reason)
        if encoder_warning:
            print(f"WARNING ({configuration_name}): {encoder_warning}")
        return {
            "preset": preset["name"],
            "encoder": self.text_spec["encoder"],
            "encoder_config": cfg,
            "hidden_size": int(cfg["hidden_size"]),
            "num_text_layers": int(cfg["num_hidden_layers"]),
            "max_tokens": max_report,
            "max_label_tokens": max_label,
            "max_concept_tokens": max_concept,
            "class_names": class_names,
            "fusion_stages": stages,
            "fusion_pool": pools,
            "fusion_dim": preset["fusion_dim"],
            "fusion_heads": preset["fusion_heads"],
            "fusion_depth": preset["fusion_depth"],
            "fusion_vram_estimate_mb": estimate_mb,
            "fusion_vram_held_mb": held_mb,
            "recompute_stages": recompute_stages(preset, n_stages),
            "fusion_reason": reason,
            "text_encoder_parameters": encoder_parameters,
            "text_encoder_vram_mb": encoder_mb,
            "text_encoder_vram_warning": encoder_warning,
            "train_word_embeddings": bool(preset.get("train_word_embeddings", False)),
            "class_text": class_text,
            "class_text_source": class_text_source,
            "train_concepts": bool(preset.get("train_concepts", False)),
            "text_lr_factor": preset["text_lr_factor"],
            "contrastive": dict(preset["contrastive"]),
            "tmca": tmca,
            "direction_axes": axes,
            "direction_axes_source": source,
            "lateral_pairs": [list(p) for p in self.text_spec.get("lateral_pairs", ((), ""))[0]],
            "lateral_pairs_source": self.text_spec.get("lateral_pairs", ((), "none given"))[1],
        }

    def save_plans(self, plans: dict) -> None:
        for name, conf in plans["configurations"].items():
            if "patch_size" in conf:  # 3d_cascade_fullres only inherits
                conf["text"] = self.text_section(conf, name, plans["transpose_forward"])
        super().save_plans(plans)


class nnUNetPlannerVL(VLPlannerMixin, ExperimentPlanner):
    pass


class nnUNetPlannerVLResEncM(VLPlannerMixin, nnUNetPlannerResEncM):
    pass


class nnUNetPlannerVLResEncL(VLPlannerMixin, nnUNetPlannerResEncL):
    pass


class nnUNetPlannerVLResEncXL(VLPlannerMixin, nnUNetPlannerResEncXL):
    pass


# keys are nnU-Net's -pl names; the VL planner of each is used
PLANNERS = {"ExperimentPlanner": nnUNetPlannerVL, "nnUNetPlannerResEncM": nnUNetPlannerVLResEncM,
            "nnUNetPlannerResEncL": nnUNetPlannerVLResEncL, "nnUNetPlannerResEncXL": nnUNetPlannerVLResEncXL}
