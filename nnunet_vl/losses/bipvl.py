"""BiPVL-Seg global-local contrastive alignment between mask-pooled image features and text."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_vl.losses.pooling import region_means
from nnunet_vl.losses.targets import class_masks


def _info_nce(logits: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of logits (..., C, C) whose positive is the diagonal, and the anchor count.

    anchors (..., C) selects the rows scored; candidates (broadcastable to logits) the columns allowed.
    """
    c = logits.shape[-1]
    rows = logits.masked_fill(~candidates, float("-inf"))[anchors]
    if rows.shape[0] == 0:
        return logits.sum() * 0.0, 0  # keeps every input in the graph (zero gradients, never None)
    positives = torch.arange(c, device=logits.device).expand(anchors.shape)[anchors]
    return F.cross_entropy(rows, positives, reduction="sum"), rows.shape[0]


class GlobalLocalContrastiveLoss(nn.Module):
    """Class-level (global) and concept-level (local) InfoNCE of BiPVL-Seg; no learnable parameters.

    For every fused stage `visual_{k}` in aux, the feature map is averaged over each class's mask
    (area-downsampled to the stage resolution, so small classes survive), mapped by the
    stage's linear head `projection_{k}` and L2-normalised. Global: each class present in a sample
    (background included) must pick its own class text among all class texts of that sample. Local:
    the same against each concept sentence (of the batch, or of the sample when aux["concept_text"] has a
    batch axis: a mirrored sample's swapped class texts), only among classes that have that concept. Terms are
    averaged over anchors and stages; a term without any anchor (no class present, e.g. all voxels
    ignored) is zero. With region-based training the classes are the regions (no background class): each
    region pools over its own binary mask, so a voxel in several overlapping regions counts for each.

    total = global_weight * global + local_weight * local, or with uncertainty weighting (Kendall et
    al.) sum_i exp(-s_i) * L_i + s_i with s = aux["log_vars"] (the weights are then unused; a term
    without anchors contributes nothing, so its s_i does not drift).
    """

    def __init__(
        self,
        temperature: float = 0.2,
        global_weight: float = 0.1,
        local_weight: float = 0.1,
        uncertainty_weighting: bool = False,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.global_weight = global_weight
        self.local_weight = local_weight
        self.uncertainty_weighting = uncertainty_weighting
        self.ignore_label = ignore_label

    def forward(self, aux: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """aux from BiPVLUNet(..., return_aux=True); target (B, 1, *spatial) integer labels, or region channels
        (B, C[+1 ignore], *spatial) (see `nnunet_vl.losses.targets`) -> scalar fp32 losses.

        Autocast is off here, as in the TMCA loss: under fp16 autocast the voxel sums of mask pooling overflow and
        logits / temperature lose precision. The stage maps come in the network's (autocast) dtype.
        """
        with torch.autocast(device_type=target.device.type, enabled=False):
            return self._losses(aux, target)

    def _losses(self, aux: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        text_class = aux["text_class"].float()
        concept_text = aux["concept_text"].float()
        concept_present = aux["concept_present"].bool()
        stages = sorted(key.removeprefix("visual_") for key in aux if key.startswith("visual_"))
        if not stages:
            raise ValueError("aux holds no visual_{stage} feature maps")
        maps = [(aux[f"visual_{k}"], aux[f"projection_{k}"].float()) for k in stages]  # maps stay in their dtype
        masks = class_masks(target, text_class.shape[1], self.ignore_label)  # (B, C, *spatial) bool
        present = masks.flatten(2).any(2)  # (B, C)
        local_anchors = present[:, None, :] & concept_present.T[None]  # (B, K, C)
        local_candidates = concept_present.T[None, :, None, :]  # (1, K, 1, C)
        # concept anchors shared by the batch (C, K, P), or each sample's own (B, C, K, P)
        concept_scores = "bcp,dkp->bkcd" if concept_text.dim() == 3 else "bcp,bdkp->bkcd"

        global_sum = local_sum = 0.0
        global_count = local_count = 0
        for fmap, projection in maps:
            spatial = fmap.shape[2:]
            # one class at a time: a float copy of all class masks at input resolution would be large in 3D
            weights = torch.cat(
                [F.interpolate(masks[:, c:c + 1].float(), size=spatial, mode="area") for c in range(masks.shape[1])],
                dim=1,
            ).flatten(2)  # (B, C, N)
            pooled = region_means(fmap.flatten(2), weights)  # (B, C, channels) fp32
            visual = F.normalize(F.linear(pooled, projection), dim=-1)  # (B, C, P)
            logits = torch.einsum("bcp,bdp->bcd", visual, text_class) / self.temperature
            term, count = _info_nce(logits, present, torch.ones_like(logits, dtype=torch.bool))
            global_sum, global_count = global_sum + term, global_count + count
            logits = torch.einsum(concept_scores, visual, concept_text) / self.temperature
            term, count = _info_nce(logits, local_anchors, local_candidates)
            local_sum, local_count = local_sum + term, local_count + count
        losses = {"global": global_sum / max(global_count, 1), "local": local_sum / max(local_count, 1)}

        if self.uncertainty_weighting:
            log_vars = aux["log_vars"].float()
            has_anchors = [float(global_count > 0), float(local_count > 0)]
            total = sum(
                has * (torch.exp(-s) * losses[name] + s)
                for has, s, name in zip(has_anchors, log_vars, ("global", "local"))
            )
        else:
            total = self.global_weight * losses["global"] + self.local_weight * losses["local"]
        return {**losses, "total": total}
