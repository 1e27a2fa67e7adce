"""Region means of stage feature maps over up to millions of voxels, in fp32 whatever the map's dtype."""
from __future__ import annotations

import torch

# elements of the map cast to fp32 at once (2**24 x 4 B = 64 MB per chunk)
_FP32_CHUNK_ELEMENTS = 2 ** 24


def region_means(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """features (B, Ch, N) of any float dtype, weights (B, R, N) >= 0 -> (B, R, Ch) fp32 weighted means.

    A region whose weights sum to 0 gets 0. Runs with autocast off: under fp16 autocast a matmul of the weights
    and a stage map runs in fp16 even when both were cast to fp32, and a sum over the ~10^6 voxels of a
    3d_fullres stage exceeds fp16's 65504. The weights are normalised before the matmul, so every partial
    result is a mean; the map is cast to fp32 a few channels at a time, so no fp32 copy of a whole
    high-resolution stage map is built (autograd's backward of the split is one concatenation).
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        weights = weights.float()
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-6)
        b, channels, n = features.shape
        step = max(1, min(channels, _FP32_CHUNK_ELEMENTS // max(b * n, 1)))
        parts = [weights @ chunk.float().transpose(1, 2) for chunk in features.split(step, dim=1)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
