"""TMCA target-informed multi-level contrastive alignment loss.

Our reading of arXiv 2412.13533 (abstract only; the choices are ours). At every aligned level i, per
sample, the stage features (`TMCAUNet` aux `features_l{i}`) are averaged over the foreground and over the
background of the label map, each region downsampled to the stage grid by area (a stage voxel weighs
by the fraction of it that is foreground / background; ignore-label voxels count for neither). With
region-based training the foreground is the union of the regions: the report describes the whole target,
and the union is the foreground of the label map the regions came from. The
level's linear image head (`image_head_l{i}`) maps them to the target and background embeddings,
L2-normalised. InfoNCE, with the report embedding (`text_l{i}`) as anchor:

    positive:  its own target
    negatives: other samples' targets in the batch, targets in a FIFO queue of earlier batches,
               and its own background (weighted by `background_weight` in the denominator)

Targets described by the same report (equal `report_key`) are never negatives. A sample without
foreground at input resolution is no anchor and no negative; a level with no anchor in the batch
gives 0, still connected to the graph so every parameter gets a (zero) gradient.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_vl.losses.pooling import region_means
from nnunet_vl.losses.targets import foreground_background


def region_weights(
    target: torch.Tensor, spatial_size: Sequence[int], ignore_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background weights, each (B, N), on a stage grid of `spatial_size`.

    target: (B, 1, *spatial) label map or region channels (`nnunet_vl.losses.targets`). A weight is the fraction
    of the stage voxel covered by foreground (label > 0, or any region) or background (label 0, or no region);
    voxels with `ignore_label` count for neither.
    """
    regions = torch.stack(foreground_background(target, ignore_label), dim=1).float()
    pooled = F.interpolate(regions, size=tuple(spatial_size), mode="area").flatten(2)
    return pooled[:, 0], pooled[:, 1]


class TargetInformedAlignmentLoss(nn.Module):
    """Multi-level target-informed InfoNCE between report and target embeddings (see module docstring).

    Args:
        level_weights: one weight per aligned level (len must match the network's align_stages).
        temperature: InfoNCE temperature.
        queue_size: target embeddings kept per level from earlier training batches (0 disables it).
        background_weight: weight of the own-background negative in the denominator (0 drops it).
        ignore_label: label value excluded from foreground and background.

    The queue holds detached embeddings, is filled only in training mode with gradients enabled (not in
    nnU-Net's no-grad validation), and is not saved in the state dict. Under DDP each rank keeps its own.
    """

    def __init__(
        self,
        level_weights: Sequence[float],
        temperature: float = 0.1,
        queue_size: int = 256,
        background_weight: float = 1.0,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0 or queue_size < 0 or background_weight < 0:
            raise ValueError("need temperature > 0, queue_size >= 0 and background_weight >= 0")
        self.level_weights = list(level_weights)
        self.temperature = temperature
        self.queue_size = queue_size
        self.background_weight = background_weight
        self.ignore_label = ignore_label
        for level in range(len(self.level_weights)):
            self.register_buffer(f"queue_l{level}", torch.zeros(0, 0), persistent=False)
            self.register_buffer(f"queue_keys_l{level}", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, aux: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """aux: TMCAUNet's aux outputs; target: (B, 1, *spatial) label map or region channels at input resolution.

        Returns {'align_l{i}': loss of level i, 'total': weighted sum over levels}.
        """
        num_levels = sum(key.startswith("features_l") for key in aux)
        if num_levels != len(self.level_weights):
            raise ValueError(f"aux has {num_levels} aligned levels but level_weights has {len(self.level_weights)}")
        losses: dict[str, torch.Tensor] = {}
        total = target.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=target.device.type, enabled=False):
            for level, weight in enumerate(self.level_weights):
                losses[f"align_l{level}"] = self._level_loss(level, aux, target)
                total = total + weight * losses[f"align_l{level}"]
        losses["total"] = total
        return losses

    def _level_loss(self, level: int, aux: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        features = aux[f"features_l{level}"]  # the network's dtype: region_means pools it in fp32 without a full copy
        head = aux[f"image_head_l{level}"].float()
        report = aux[f"text_l{level}"].float()
        keys = aux["report_key"]
        foreground, background = region_weights(target, features.shape[2:], self.ignore_label)
        has_foreground = foreground.sum(dim=1) > 0
        flat = features.flatten(2)
        target_mean, background_mean = region_means(flat, torch.stack([foreground, background], dim=1)).unbind(1)
        targets = F.normalize(F.linear(target_mean, head), dim=-1)

        positive = (report * targets).sum(dim=-1, keepdim=True) / self.temperature
        same_report = keys[:, None] == keys[None, :]
        in_batch = report @ targets.T / self.temperature
        in_batch = in_batch.masked_fill(same_report | ~has_foreground[None, :], -math.inf)
        queue, queue_keys = self._queue(level, report)
        queued = (report @ queue.T / self.temperature).masked_fill(keys[:, None] == queue_keys[None, :], -math.inf)
        logits = [positive, in_batch, queued]
        if self.background_weight > 0:
            backgrounds = F.normalize(F.linear(background_mean, head), dim=-1)
            own_background = (report * backgrounds).sum(dim=-1, keepdim=True) / self.temperature
            own_background = own_background + math.log(self.background_weight)
            logits.append(own_background.masked_fill(~(background.sum(dim=1) > 0)[:, None], -math.inf))
        per_sample = -torch.log_softmax(torch.cat(logits, dim=1), dim=1)[:, 0]

        if self.training and torch.is_grad_enabled():
            # a non-finite embedding (an fp16 overflow in the network, a step the GradScaler then skips) would
            # stay in the queue and make every later loss NaN: only finite ones are kept
            kept = has_foreground & torch.isfinite(targets).all(dim=1)
            self._enqueue(level, targets[kept].detach(), keys[kept])
        anchors = has_foreground.float()
        return (per_sample * anchors).sum() / anchors.sum().clamp_min(1.0)

    def _queue(self, level: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The level's queued target embeddings (Q, D) and report keys (Q,), on `like`'s device."""
        queue = getattr(self, f"queue_l{level}")
        keys = getattr(self, f"queue_keys_l{level}")
        if queue.shape[0] == 0:
            return like.new_zeros(0, like.shape[1]), keys.to(like.device)
        return queue.to(like.device), keys.to(like.device)

    def _enqueue(self, level: int, embeddings: torch.Tensor, keys: torch.Tensor) -> None:
        """Put the newest embeddings first and drop the oldest beyond queue_size."""
        queue, queue_keys = self._queue(level, embeddings)
        setattr(self, f"queue_l{level}", torch.cat([embeddings, queue])[: self.queue_size])
        setattr(self, f"queue_keys_l{level}", torch.cat([keys, queue_keys])[: self.queue_size])
