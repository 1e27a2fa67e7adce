"""Where the tokens of a patch lie, for the position encodings that tie words such as "left" or "upper" to places.

Coordinates are voxel centres normalised to [-1, 1] per axis. Without a place they are relative to the patch (its
first voxel near -1, its last near +1). A patch's place in its image, (B, dims, 2) of (centre, half extent) per axis
in the image's own normalised coordinates, maps them into the whole image, so that a report's "left upper" means the
same place in every patch and every sliding-window tile. A patch that covers its image has place (0, 1) on every
axis: the same coordinates as without one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def normalised_coordinates(spatial_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(N, dims) voxel-centre coordinates in [-1, 1], in the row-major order of `flatten`."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1 for n in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial_shape))


def token_coordinates(spatial_shape: tuple[int, ...], device: torch.device,
                      place: torch.Tensor | None = None) -> torch.Tensor:
    """(N, dims) patch coordinates of a token grid, or (B, N, dims) image coordinates given the patches' place."""
    coords = normalised_coordinates(spatial_shape, device)
    if place is None:
        return coords
    place = place.to(device=device, dtype=torch.float32)
    return place[:, None, :, 0] + place[:, None, :, 1] * coords


def fourier_features(coords: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """(..., dims * (1 + 2F)): the coordinates and their sin/cos at F octaves."""
    frequencies = math.pi * 2.0 ** torch.arange(num_frequencies, device=coords.device, dtype=coords.dtype)
    angles = (coords[..., None] * frequencies).flatten(-2)
    return torch.cat([coords, angles.sin(), angles.cos()], dim=-1)


def place_of_box(start: Sequence[float], size: Sequence[float], image_shape: Sequence[int]) -> torch.Tensor:
    """(dims, 2) place of a patch of `size` voxels whose first voxel is `start` (may be negative: padding) in an
    image of `image_shape` voxels: centre 2 * (start + size / 2) / n - 1 and half extent size / n per axis."""
    place = [(2.0 * (s + p / 2.0) / n - 1.0, p / n) for s, p, n in zip(start, size, image_shape)]
    return torch.tensor(place, dtype=torch.float32)


def mirror_place(place: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """The (dims, 2) place of a patch mirrored along the spatial `axes`: mirroring the patch shows it as the
    same-sized patch of the mirrored image, whose centre is the negated one."""
    if not axes:
        return place
    out = place.clone()
    out[list(axes), 0] = -out[list(axes), 0]
    return out
