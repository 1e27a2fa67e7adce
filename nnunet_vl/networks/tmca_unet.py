"""TMCA network: an nnU-Net image U-Net with multi-level report alignment and language-guided enhancement.

Our reading of Li et al., "Language-guided Medical Image Segmentation with Target-informed Multi-level
Contrastive Alignments" (arXiv 2412.13533); only the abstract is available, so the choices below are ours:

- The report (`TextInputs.report_ids/mask`) runs through the whole Hugging Face encoder; its report
  embedding is the masked mean of the last hidden states. Class and concept texts are not used: the
  report alone says which target to segment. The HF pooler is removed (it would get no gradient).
  The presets freeze the encoder for TMCA (`tmca.text_lr_factor` 0, applied by the network builder); a
  factor > 0 fine-tunes it at that fraction of the learning rate.
- Alignment (`align_stages`): each level has a text head (MLP, hidden → proj_dim) and a linear image
  head (stage channels → proj_dim, no bias). Because the image head is linear, it commutes with mask
  pooling, so the loss (`nnunet_vl.losses.tmca`) pools the raw stage features with the ground-truth
  mask and applies the head afterwards: no (B, proj_dim, *spatial) map is ever built. The aligned
  features are the stage output *before* enhancement, so the alignment cannot be solved by the text
  that enhancement injects.
- Enhancement (`enhance_stages`): `TargetEnhancement` replaces the stage output, so it feeds both the
  next stage and the decoder skip. Its gates start at zero, so an untrained TMCAUNet is the image U-Net.
  At high-resolution stages the plans pool its token grid (`enhance_pool`, see `planning.planners.token_pools`),
  so a stage attends from at most `enhance_max_voxels` tokens per sample, whatever its resolution.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_vl.networks.fusion import fusion_width
from nnunet_vl.networks.pooling import upsample
from nnunet_vl.networks.recompute import run_block
from nnunet_vl.networks.target_enhancement import TargetEnhancement
from nnunet_vl.networks.text_branch import masked_mean
from nnunet_vl.networks.text_inputs import TextInputs, require_text
from nnunet_vl.networks.unet_stages import encoder_stage_channels, run_encoder

_KEY_MODULUS = 2**31 - 1


def report_keys(report_ids: torch.Tensor, report_mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 fingerprint of each report's real tokens (padding ignored).

    Equal reports get equal keys, so the loss never uses a target described by the same report as a
    negative (templated reports repeat across cases).
    """
    coefficients = torch.tensor(
        [pow(31, position, _KEY_MODULUS) for position in range(report_ids.shape[1])], device=report_ids.device
    )
    return ((report_ids.long() + 1) * report_mask.long() * coefficients).sum(dim=1)


class TMCAUNet(nn.Module):
    """Image U-Net + report encoder; multi-level target-informed alignment and target enhancement.

    Args:
        image_unet: PlainConvUNet or ResidualEncoderUNet (2D or 3D) as nnU-Net builds it from plans.
        text_encoder: Hugging Face encoder model (e.g. BertModel); its pooler is removed.
        align_stages: 0-based encoder stages aligned with the report; level i is align_stages[i].
        enhance_stages: 0-based encoder stages whose output is enhanced by the report.
        fusion_dim, fusion_heads: width and heads of the enhancement cross-attention.
        num_classes: segmentation classes (must match image_unet's output).
        proj_dim: width of the alignment embedding space.
        recompute_stages: enhanced stages whose enhancement recomputes its activations in backward (run_block).
        enhance_pool: per enhance stage, the average-pooling kernel of its token grid (None: no pooling).

    Aux outputs (`return_aux=True`), level i ↔ encoder stage align_stages[i]:
        features_l{i}:   (B, C_i, *spatial_i) stage output before enhancement
        image_head_l{i}: (proj_dim, C_i)      weight of the linear image head (a Parameter)
        text_l{i}:       (B, proj_dim)        L2-normalised projected report embedding
        report_key:      (B,) int64           see `report_keys`
    """

    def __init__(
        self,
        image_unet: nn.Module,
        text_encoder: nn.Module,
        align_stages: Sequence[int],
        enhance_stages: Sequence[int],
        fusion_dim: int,
        fusion_heads: int,
        num_classes: int,
        proj_dim: int = 128,
        recompute_stages: Sequence[int] = (),
        enhance_pool: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        channels = encoder_stage_channels(image_unet)
        for name, stages in (("align_stages", align_stages), ("enhance_stages", enhance_stages)):
            if len(set(stages)) != len(stages) or not all(0 <= s < len(channels) for s in stages):
                raise ValueError(f"{name} {list(stages)} must be distinct stages in [0, {len(channels) - 1}]")
        if enhance_pool is not None and len(enhance_pool) != len(enhance_stages):
            raise ValueError(f"enhance_pool needs one kernel per enhance stage {list(enhance_stages)}, "
                             f"got {len(enhance_pool)}")
        if image_unet.decoder.num_classes != num_classes:
            raise ValueError(f"num_classes {num_classes} != image_unet's {image_unet.decoder.num_classes}")
        if getattr(text_encoder, "pooler", None) is not None:
            text_encoder.pooler = None  # unused by TMCA; would get no gradient (DDP without unused params)
        text_dim = text_encoder.config.hidden_size

        self.image_unet = image_unet
        self.text_encoder = text_encoder
        self.align_stages = list(align_stages)
        self.enhance_stages = list(enhance_stages)
        self.recompute_stages = sorted(set(int(s) for s in recompute_stages))
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.text_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU(), nn.Linear(text_dim, proj_dim))
            for _ in self.align_stages
        )
        self.image_heads = nn.ModuleList(nn.Linear(channels[s], proj_dim, bias=False) for s in self.align_stages)
        conv_op = image_unet.encoder.conv_op
        self._report_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.enhancements = nn.ModuleDict(
            {
                str(s): TargetEnhancement(conv_op, channels[s], text_dim,
                                          *fusion_width(channels[s], fusion_dim, fusion_heads),
                                          pool=enhance_pool[i] if enhance_pool is not None else None)
                for i, s in enumerate(self.enhance_stages)
            }
        )

    def forward(
        self,
        x: torch.Tensor,
        text: TextInputs | None = None,
        return_aux: bool = False,
        return_attention: bool = False,
    ):
        """Segment `x` (B, C_in, *spatial), guided by `text.report_*` when given.

        Returns what image_unet(x) returns (a tensor, or a list with deep supervision), followed by
        `aux` (dict, see class docstring) if return_aux, then the attention map (B, 1, *spatial) in
        [0, 1] (mean over enhance stages, upsampled to the input size) if return_attention.
        text=None raises TextRequiredError (`--text-mode none` passes an empty report instead).
        """
        seg, aux, stage_attention = self._forward_with_report(x, require_text(text, type(self).__name__))
        outputs = [seg]
        if return_aux:
            outputs.append(aux)
        if return_attention:
            outputs.append(self._input_resolution_attention(x, stage_attention))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @contextmanager
    def reusing_report_encoding(self) -> Iterator[None]:
        """Within this context each report (its token-id tensor) is encoded once and reused (sliding-window
        inference calls the network once per tile with the same report, each tile with its own place). Leave it
        before changing weights."""
        self._report_cache = {}
        try:
            yield
        finally:
            self._report_cache = None

    def encode_report(self, text: TextInputs) -> torch.Tensor:
        """Last hidden states (B, Lr, H) of the report, from the cache inside `reusing_report_encoding`."""
        caching = self._report_cache is not None  # training: no cache, torch.compile traces the encoder with the rest
        tokens = self._cached_report(text) if caching else None
        if tokens is None:
            tokens = self.text_encoder(input_ids=text.report_ids, attention_mask=text.report_mask).last_hidden_state
            if caching:
                self._cache_report(text, tokens)
        return tokens

    # The cache is keyed by id(): traced by torch.compile, every new case's id (and every new cache dict) would be a
    # guard and recompile the network once per case. Run outside the graph, the lookup costs one graph break and
    # the compiled code only depends on whether it hit.
    @torch.compiler.disable
    def _cached_report(self, text: TextInputs) -> torch.Tensor | None:
        entry = self._report_cache.get(id(text.report_ids))
        return None if entry is None else entry[1]

    @torch.compiler.disable
    def _cache_report(self, text: TextInputs, tokens: torch.Tensor) -> None:
        self._report_cache[id(text.report_ids)] = (text.report_ids, tokens)  # held, so its id is not reused

    def _forward_with_report(
        self, x: torch.Tensor, text: TextInputs
    ) -> tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
        tokens = self.encode_report(text)
        aux: dict[str, torch.Tensor] = {}
        stage_attention: list[torch.Tensor] = []

        def after_stage(stage: int, features: torch.Tensor) -> torch.Tensor:
            if stage in self.align_stages:
                aux[f"features_l{self.align_stages.index(stage)}"] = features
            if stage in self.enhance_stages:
                features, attention = run_block(self.enhancements[str(stage)], stage in self.recompute_stages,
                                                features, tokens, text.report_mask, text.place)
                stage_attention.append(attention)
            return features

        seg = self.image_unet.decoder(run_encoder(self.image_unet, x, after_stage))
        report_embedding = masked_mean(tokens, text.report_mask)
        for level, (text_head, image_head) in enumerate(zip(self.text_heads, self.image_heads)):
            aux[f"text_l{level}"] = F.normalize(text_head(report_embedding).float(), dim=-1)  # fp32 under autocast
            aux[f"image_head_l{level}"] = image_head.weight
        aux["report_key"] = report_keys(text.report_ids, text.report_mask)
        return seg, aux, stage_attention

    @staticmethod
    def _input_resolution_attention(x: torch.Tensor, stage_attention: list[torch.Tensor]) -> torch.Tensor:
        """Mean of the stage attention maps, each upsampled to x's spatial size."""
        if not stage_attention:
            return x.new_full((x.shape[0], 1, *x.shape[2:]), 0.5)
        upsampled = [upsample(a, x.shape[2:]) for a in stage_attention]
        return torch.stack(upsampled).mean(dim=0).clamp(0.0, 1.0)
