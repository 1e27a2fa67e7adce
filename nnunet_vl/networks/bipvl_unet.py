"""BiPVL-Seg on nnU-Net: an nnU-Net encoder interleaved with progressive text chunks and fusion blocks."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_vl.networks.fusion import BidirectionalFusionBlock, fusion_width
from nnunet_vl.networks.recompute import run_block
from nnunet_vl.networks.text_branch import ProgressiveTextEncoder
from nnunet_vl.networks.text_inputs import TextInputs, require_text
from nnunet_vl.networks.unet_stages import encoder_stage_channels, run_encoder


class BiPVLUNet(nn.Module):
    """nnU-Net's U-Net with bidirectional progressive vision-language fusion (BiPVL-Seg).

    After each encoder stage in `fusion_stages` the next chunk of text layers runs, then a
    `BidirectionalFusionBlock` exchanges information between the stage's feature map and the text;
    the fused map replaces the stage output (next stage and skip), the fused text feeds the next
    chunk. All fusion gates start at zero, so an untrained network computes exactly `image_unet(x)`.
    A fusion block is `fusion_dim` wide, or as wide as its stage where that is narrower (fusion_width).
    Fusion blocks at `recompute_stages` recompute their activations in the backward pass (run_block).
    `fusion_pool` gives each fused stage the average-pooling kernel of its image tokens (planned by
    `planning.planners.token_pools` for high-resolution stages; None: every voxel is a token).

    Aux outputs (`return_aux=True`), all embeddings L2-normalised except the maps:
      text_class      (B, C, P)  class text: each class's token in the final fused text (`class_text` "token"), or
                                 the mean of its description's fused tokens ("sentences")
      visual_{k}      (B, C_k, *S_k) fused output of encoder stage k
      projection_{k}  (P, C_k)   weight of stage k's linear visual head (a Parameter). The loss mask-pools
                                 visual_{k} and applies the head afterwards (pooling commutes with it), so
                                 no P-channel map is built at every voxel of a high-resolution stage
      concept_text    (C, K, P)  each concept sentence through the full, unfused text encoder (no gradient
                                 reaches the encoder from it unless `train_concepts`); (B, C, K, P) when the
                                 samples read different class text sets (TextInputs.class_set)
      concept_present (C, K)     bool
      log_vars        (2,)       learned log-variances of (global, local), only with uncertainty_weighting
    """


    def __init__(
        self,
        image_unet: nn.Module,
        text_encoder: nn.Module,
        fusion_stages: Sequence[int],
        fusion_dim: int,
        fusion_heads: int,
        fusion_depth: int,
        num_classes: int,
        proj_dim: int = 128,
        uncertainty_weighting: bool = False,
        recompute_stages: Sequence[int] = (),
        fusion_pool: Sequence[Sequence[int]] | None = None,
        class_text: str = "token",
        train_concepts: bool = False,
    ) -> None:
        super().__init__()
        channels = encoder_stage_channels(image_unet)
        stages = sorted(set(int(k) for k in fusion_stages))
        if not stages or stages[0] < 0 or stages[-1] >= len(channels):
            raise ValueError(f"fusion_stages {list(fusion_stages)} must index the {len(channels)} encoder stages")
        if fusion_pool is not None and len(fusion_pool) != len(stages):
            raise ValueError(f"fusion_pool needs one kernel per fusion stage {stages}, got {len(fusion_pool)}")
        self.image_unet = image_unet
        self.fusion_stages = stages
        self.recompute_stages = sorted(set(int(k) for k in recompute_stages))
        self.num_classes = num_classes
        self.train_concepts = train_concepts
        self.text_branch = ProgressiveTextEncoder(text_encoder, n_chunks=len(stages), num_segments=1 + num_classes,
                                                  class_text=class_text)
        hidden = self.text_branch.hidden_size
        conv_op = image_unet.encoder.conv_op
        self.fusion = nn.ModuleList(
            BidirectionalFusionBlock(conv_op, channels[k], hidden, *fusion_width(channels[k], fusion_dim, fusion_heads),
                                     fusion_depth, pool=fusion_pool[i] if fusion_pool is not None else None)
            for i, k in enumerate(stages)
        )
        self.visual_projections = nn.ModuleList(nn.Linear(channels[k], proj_dim, bias=False) for k in stages)
        self.text_projection = nn.Linear(hidden, proj_dim)
        self.log_vars = nn.Parameter(torch.zeros(2)) if uncertainty_weighting else None

    @property
    def text_encoder(self) -> nn.Module:
        """The wrapped Hugging Face model (load pretrained weights into it; give it its own learning rate)."""
        return self.text_branch.text_encoder

    def text_encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.text_encoder.parameters()

    @property
    def decoder(self) -> nn.Module:
        """image_unet's decoder, so nnU-Net's set_deep_supervision_enabled works unchanged."""
        return self.image_unet.decoder

    def forward(
        self, x: torch.Tensor, text: TextInputs | None = None, return_aux: bool = False
    ) -> torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor]]:
        """x (B, in_channels, *spatial) -> what image_unet(x) returns, plus the aux dict if return_aux.

        text=None raises TextRequiredError (`--text-mode none` passes an empty report instead).
        """
        text = require_text(text, type(self).__name__)
        if text.num_classes != self.num_classes:
            raise ValueError(f"text has {text.num_classes} class descriptions, the network {self.num_classes} classes")
        hidden, mask = self.text_branch.embed(text)
        layer_mask = self.text_branch.layer_mask(hidden, mask)
        block_of_stage = {k: i for i, k in enumerate(self.fusion_stages)}
        visual: dict[str, torch.Tensor] = {}

        def fuse(k: int, features: torch.Tensor) -> torch.Tensor:
            nonlocal hidden
            i = block_of_stage.get(k)
            if i is None:
                return features
            hidden = self.text_branch.run_chunk(i, hidden, layer_mask)
            features, hidden = run_block(self.fusion[i], k in self.recompute_stages, features, hidden, mask,
                                         text.place)
            if return_aux:
                visual[f"visual_{k}"] = features
                visual[f"projection_{k}"] = self.visual_projections[i].weight
            return features

        seg = self.image_unet.decoder(run_encoder(self.image_unet, x, fuse))
        if not return_aux:
            return seg
        return seg, {**self._text_embeddings(text, hidden), **visual}

    def _text_embeddings(self, text: TextInputs, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class embeddings from the final fused text (B, T, H) and concept embeddings from the unfused encoder."""
        class_text = self.text_branch.class_states(text, hidden)  # one fused state per class
        shape = text.concept_ids.shape[:-1]  # (C, K), or (S, C, K) with one class text set per sample
        lk = text.concept_ids.shape[-1]
        # fixed anchors unless train_concepts: then the local loss also adapts the text encoder (BiPVL-Seg's purpose
        # for it), at the cost of the C*K concept sentences' activations and backward through the encoder
        with nullcontext() if self.train_concepts else torch.no_grad():
            concepts = self.text_branch.encode(text.concept_ids.reshape(-1, lk), text.concept_mask.reshape(-1, lk))
        # normalised in fp32: under fp16 autocast the projection is fp16, and F.normalize's eps underflows there
        concept_text = F.normalize(self.text_projection(concepts).float(), dim=-1).reshape(*shape, -1)
        aux = {
            "text_class": F.normalize(self.text_projection(class_text).float(), dim=-1),
            # each sample's own concept anchors when its class texts differ from another sample's
            "concept_text": concept_text if text.class_set is None else concept_text[text.class_set],
            "concept_present": text.concept_present.bool(),
        }
        if self.log_vars is not None:
            aux["log_vars"] = self.log_vars
        return aux
