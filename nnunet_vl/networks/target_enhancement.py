"""TMCA language-guided target enhancement: report tokens re-weight one encoder stage toward the target.

Image tokens (the stage features projected to `fusion_dim`, plus an encoding of their normalised
coordinates, in the whole image where the patch's place is known, because reports locate targets with words
like "left" or "upper") cross-attend to the report tokens. From what they attend to, each voxel gets a logit; its sigmoid is the spatial attention
map A. The stage output becomes

    features * (1 + tanh(attention_gate) * (2A - 1)) + tanh(text_gate) * projected attended text

with both gates zero-initialised, so an untrained module returns its input unchanged. Attention runs
from image tokens to text tokens only (no image self-attention), so its cost is linear in voxels.

With `pool` (a kernel > 1 on some axis) the tokens are the stage output average-pooled by that kernel:
A and the gated text term are computed on the coarser grid and interpolated back to the stage's grid,
where the features are modulated. At a high-resolution stage this leaves only the pooling, one
interpolation and the modulation at full resolution.
"""
from __future__ import annotations

from typing import Sequence, Type

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_vl.networks.pooling import pool_grid, pool_kernel, upsample
from nnunet_vl.networks.positions import fourier_features, token_coordinates


class CoordinateEncoding(nn.Module):
    """Fourier features of normalised coordinates (raw, sin, cos at `num_frequencies` octaves) → width."""

    def __init__(self, dims: int, width: int, num_frequencies: int = 4) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        self.proj = nn.Linear(dims * (1 + 2 * num_frequencies), width)

    def forward(self, spatial_shape: tuple[int, ...], place: torch.Tensor | None = None) -> torch.Tensor:
        """(N, width) encoding of every voxel of a grid of `spatial_shape`, relative to the patch; (B, N, width)
        relative to the image given the patches' place (B, dims, 2) (networks.positions)."""
        coords = token_coordinates(spatial_shape, self.proj.weight.device, place)
        return self.proj(fourier_features(coords, self.num_frequencies))


class TargetEnhancement(nn.Module):
    """Language-guided target enhancement of one encoder stage, for 2D or 3D conv ops.

    Args:
        conv_op: the U-Net's conv op (nn.Conv2d / nn.Conv3d); decides 2D or 3D.
        channels: channels of the stage output it enhances.
        text_dim: hidden size of the text encoder.
        fusion_dim, num_heads: width and heads of the image→text cross-attention.
        pool: average-pooling kernel of the token grid per spatial axis (None or all 1: the stage's grid).
    """

    def __init__(
        self,
        conv_op: Type[_ConvNd],
        channels: int,
        text_dim: int,
        fusion_dim: int,
        num_heads: int,
        num_frequencies: int = 4,
        pool: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if fusion_dim % num_heads:
            raise ValueError(f"fusion_dim {fusion_dim} is not divisible by num_heads {num_heads}")
        dims = convert_conv_op_to_dim(conv_op)
        self.pool = pool_kernel(pool, dims)
        self.num_heads = num_heads
        self.image_in = conv_op(channels, fusion_dim, kernel_size=1)
        self.position = CoordinateEncoding(dims, fusion_dim, num_frequencies)
        self.query_norm = nn.LayerNorm(fusion_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.query = nn.Linear(fusion_dim, fusion_dim)
        self.key_value = nn.Linear(text_dim, 2 * fusion_dim)
        self.attended_out = nn.Linear(fusion_dim, fusion_dim)
        self.score = nn.Sequential(
            nn.LayerNorm(fusion_dim), nn.Linear(fusion_dim, fusion_dim), nn.GELU(), nn.Linear(fusion_dim, 1)
        )
        self.text_out = conv_op(fusion_dim, channels, kernel_size=1)
        self.attention_gate = nn.Parameter(torch.zeros(channels))
        self.text_gate = nn.Parameter(torch.zeros(channels))

    def forward(
        self, features: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
        place: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Enhance one stage output.

        features:    (B, C, *spatial) stage output
        text_tokens: (B, L, text_dim) report token states
        text_mask:   (B, L) 1 for real tokens, 0 for padding
        place:       (B, dims, 2) the patches' place in their images, or None (positions relative to the patch)
        Returns the enhanced features (B, C, *spatial) and the attention map A (B, 1, *grid) in [0, 1] on the
        token grid (the stage's grid, or the pooled one).
        """
        batch, _, *spatial = features.shape
        spatial = tuple(spatial)
        tokens = pool_grid(features, self.pool)
        grid = tuple(tokens.shape[2:])
        image = self.image_in(tokens).flatten(2).transpose(1, 2)  # (B, N, fusion_dim)
        image = image + self.position(grid, place).to(image.dtype)

        attend = text_mask.bool()
        # an all-padding row would make the softmax NaN: let such a row see its first token
        attend = torch.cat([attend[:, :1] | ~attend.any(dim=1, keepdim=True), attend[:, 1:]], dim=1)
        query = self._split_heads(self.query(self.query_norm(image)))
        key, value = map(self._split_heads, self.key_value(self.text_norm(text_tokens)).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attend[:, None, None, :])
        attended = self.attended_out(attended.transpose(1, 2).flatten(2))  # (B, N, fusion_dim)

        attention = torch.sigmoid(self.score(image + attended)).transpose(1, 2).reshape(batch, 1, *grid)
        attended_text = self.text_out(attended.transpose(1, 2).reshape(batch, -1, *grid))
        view = (1, -1) + (1,) * len(grid)
        # everything at the stage's resolution in the stage's dtype: fp32 gates times an fp16 (autocast) update
        # would promote the enhanced stage output, and the decoder's skip of it, to fp32
        dtype = features.dtype
        added = (torch.tanh(self.text_gate).to(attended_text.dtype).view(view) * attended_text).to(dtype)
        added = added.contiguous()  # standard layout for the result
        attention_map = attention.to(dtype)
        if self.pool is not None:  # one interpolation for both; the modulation is affine in A, so it commutes
            both = upsample(torch.cat([attention_map, added], dim=1), spatial)
            attention_map, added = both.split([1, added.shape[1]], dim=1)
        modulation = 1 + torch.tanh(self.attention_gate).to(dtype).view(view) * (2 * attention_map - 1)
        return torch.addcmul(added, features, modulation), attention

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) → (B, heads, L, D / heads)."""
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
