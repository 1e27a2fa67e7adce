"""Coarser token grids for text attention at high-resolution stages: average-pool in, interpolate back."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def pool_kernel(pool: Sequence[int] | None, dims: int) -> tuple[int, ...] | None:
    """The validated kernel, or None when it pools nothing (None, or 1 on every axis)."""
    kernel = tuple(int(k) for k in pool) if pool is not None else (1,) * dims
    if len(kernel) != dims or min(kernel) < 1:
        raise ValueError(f"pool {list(kernel)} must give a kernel >= 1 for each of the {dims} spatial axes")
    return kernel if max(kernel) > 1 else None


def pool_grid(features: torch.Tensor, kernel: tuple[int, ...] | None) -> torch.Tensor:
    """(B, C, *spatial) average-pooled by `kernel` (a partial last window averages what it covers)."""
    if kernel is None:
        return features
    return _AVG_POOL[len(kernel)](features, kernel, kernel, ceil_mode=True)


def upsample(t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(B, C, *grid) linearly interpolated to `spatial` (identity when the grid already is `spatial`)."""
    if tuple(t.shape[2:]) == tuple(spatial):
        return t
    return F.interpolate(t, size=tuple(spatial), mode=INTERPOLATION[len(spatial)], align_corners=False)
