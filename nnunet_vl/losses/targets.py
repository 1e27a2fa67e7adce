"""Class masks from nnU-Net's training target, whether a label map or region channels.

nnU-Net gives the loss either a label map (B, 1, *spatial) of integer labels, or, for region-based training
(dataset.json `labels` mapping a region to a list of labels, `regions_class_order`), one binary channel per
region (B, R, *spatial), followed by a binary ignore channel when the dataset has an ignore label
(ConvertSegmentationToRegionsTransform). Regions overlap: a voxel may be in several of them.
"""
from __future__ import annotations

import torch


def is_region_target(target: torch.Tensor, num_classes: int | None = None) -> bool:
    """True for region channels, False for a label map.

    A label map has one channel. A target with more channels holds regions; a single channel holds regions only
    when the network has a single class (one region without an ignore label: its label-map reading would find
    background only).
    """
    return target.shape[1] > 1 or num_classes == 1


def _split_ignore(target: torch.Tensor, ignore_label: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Region channels (B, R, *spatial) bool and the valid voxels (B, *spatial) bool of a region target."""
    if ignore_label is None:
        return target > 0, torch.ones_like(target[:, 0], dtype=torch.bool)
    return target[:, :-1] > 0, target[:, -1] == 0


def class_masks(target: torch.Tensor, num_classes: int, ignore_label: int | None = None) -> torch.Tensor:
    """(B, num_classes, *spatial) bool: the voxels of each class, ignore-label voxels in none.

    Label map: class c is label c (background included). Region channels: class r is region r's own binary mask,
    so a voxel counts for every region it belongs to.
    """
    if not is_region_target(target, num_classes):
        labels = target[:, 0].long()
        masks = labels[:, None] == torch.arange(num_classes, device=target.device).view(1, -1, *[1] * (labels.dim() - 1))
        return masks if ignore_label is None else masks & (labels != ignore_label)[:, None]
    expected = num_classes + (ignore_label is not None)
    if target.shape[1] != expected:
        raise ValueError(f"the region target has {target.shape[1]} channels, expected {expected}: {num_classes} "
                         f"regions (one per class text){' + the ignore channel' if ignore_label is not None else ''}")
    regions, valid = _split_ignore(target, ignore_label)
    return regions & valid[:, None]


def foreground_background(target: torch.Tensor, ignore_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background voxels, each (B, *spatial) bool; ignore-label voxels are in neither.

    Label map: foreground is every label > 0. Region channels: foreground is every voxel in any region (the union of
    the regions, the same voxels as label > 0 of the label map they came from), background the voxels in none.
    """
    if not is_region_target(target):
        labels = target[:, 0]
        valid = torch.ones_like(labels, dtype=torch.bool) if ignore_label is None else labels != ignore_label
        return (labels > 0) & valid, (labels == 0) & valid
    regions, valid = _split_ignore(target, ignore_label)
    foreground = regions.any(dim=1)
    return foreground & valid, ~foreground & valid
