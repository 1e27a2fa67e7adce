"""Bidirectional image-text fusion block of BiPVL-Seg, for 2D and 3D feature maps.

Only image x text attention is computed (no image self-attention), so the cost is linear in the
number of voxels. Attention uses `scaled_dot_product_attention`; text padding is masked everywhere.
At high-resolution stages the image tokens can come from an average-pooled grid (`pool`); the image
update is then computed there and interpolated back to the stage's grid.
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


def fusion_width(stage_channels: int, fusion_dim: int, fusion_heads: int) -> tuple[int, int]:
    """(width, heads) of the fusion block after a stage: at most the stage's own width.

    High-resolution stages are narrow and hold the most voxels; capping the fusion width there keeps
    the cost of the image-side projections close to the stage's own convolutions.
    """
    dim = min(fusion_dim, stage_channels)
    heads = max(1, min(fusion_heads, dim // 16))
    while dim % heads:
        heads -= 1
    return dim, heads


class MultiHeadAttention(nn.Module):
    """Multi-head attention of `query` tokens over `context` tokens, optionally masking context keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)  # a key bias cancels in the softmax
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, D), context (B, Lk, D), key_mask (B, 1, 1, Lk) bool (True = attend) -> (B, Lq, D)."""
        b, lq, d = query.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(query)), split(self.key(context)), split(self.value(context)), attn_mask=key_mask
        )
        return self.out(attended.transpose(1, 2).reshape(b, lq, d))


class TwoWayFusionLayer(nn.Module):
    """Pre-norm: text self-attention -> text attends to image -> text MLP -> image attends to text."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.text_norm_self = nn.LayerNorm(dim)
        self.text_self = MultiHeadAttention(dim, heads)
        self.text_norm_cross = nn.LayerNorm(dim)
        self.image_norm = nn.LayerNorm(dim)
        self.text_to_image = MultiHeadAttention(dim, heads)
        self.text_norm_mlp = nn.LayerNorm(dim)
        self.text_mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.text_norm_context = nn.LayerNorm(dim)
        self.image_to_text = MultiHeadAttention(dim, heads)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, N, D), text (B, T, D), key_mask (B, 1, 1, T) bool -> updated (image, text)."""
        normed = self.text_norm_self(text)
        text = text + self.text_self(normed, normed, key_mask)
        # The image does not change before the last step, so one normalisation serves as keys and queries.
        image_normed = self.image_norm(image)
        text = text + self.text_to_image(self.text_norm_cross(text), image_normed)
        text = text + self.text_mlp(self.text_norm_mlp(text))
        image = image + self.image_to_text(image_normed, self.text_norm_context(text), key_mask)
        return image, text


def coordinate_encoding(
    spatial_shape: tuple[int, ...], num_frequencies: int, device: torch.device, dtype: torch.dtype,
    place: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, ndim * (1 + 2F)) voxel-centre coordinates normalised to [-1, 1] per axis and their sin/cos at F octaves;
    (B, N, ...) in image coordinates given the patches' place (B, ndim, 2) (networks.positions)."""
    return fourier_features(token_coordinates(spatial_shape, device, place), num_frequencies).to(dtype)


class BidirectionalFusionBlock(nn.Module):
    """Fuses one encoder stage's feature map with the text tokens, both ways.

    Image features are projected to `dim` by a 1x1 conv (`conv_op`, so 2D and 3D alike) and get a
    learned projection of their normalised voxel coordinates added, so words such as "left" or
    "upper" can be tied to positions (relative to the whole image when the patch's `place` in it is given, else
    to the patch; networks.positions). Text is projected to
    `dim` by a linear layer. After `depth` two-way layers both are projected back to their own width
    and added through zero-initialised per-channel tanh gates: at initialisation the block is the
    identity for the image and for the text.

    With `pool` (a kernel > 1 on some axis) the image tokens are the feature map average-pooled by that
    kernel; the gated image update is computed on that grid and linearly interpolated back, so only the
    pooling, one interpolation and the addition run at the stage's resolution.
    """

    def __init__(
        self,
        conv_op: Type[_ConvNd],
        image_channels: int,
        text_channels: int,
        dim: int,
        heads: int,
        depth: int,
        num_frequencies: int = 6,
        pool: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        ndim = convert_conv_op_to_dim(conv_op)
        self.pool = pool_kernel(pool, ndim)
        self.image_in = conv_op(image_channels, dim, kernel_size=1)
        self.position = nn.Linear(ndim * (1 + 2 * num_frequencies), dim, bias=False)
        self.text_in = nn.Linear(text_channels, dim)
        self.layers = nn.ModuleList(TwoWayFusionLayer(dim, heads) for _ in range(depth))
        self.image_norm_out = nn.LayerNorm(dim)
        self.image_out = conv_op(dim, image_channels, kernel_size=1)
        self.text_norm_out = nn.LayerNorm(dim)
        self.text_out = nn.Linear(dim, text_channels)
        self.image_gate = nn.Parameter(torch.zeros(image_channels))
        self.text_gate = nn.Parameter(torch.zeros(text_channels))

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, place: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, Ci, *spatial), text (B, T, Ct), text_mask (B, T) bool (True = real token), place (B, ndim, 2)
        or None -> same shapes."""
        b, _, *spatial = image.shape
        pooled = pool_grid(image, self.pool)
        grid = tuple(pooled.shape[2:])
        tokens = self.image_in(pooled).flatten(2).transpose(1, 2)
        position = coordinate_encoding(grid, self.num_frequencies, image.device, tokens.dtype, place)
        tokens = tokens + self.position(position)
        text_tokens = self.text_in(text)
        key_mask = text_mask[:, None, None, :]
        for layer in self.layers:
            tokens, text_tokens = layer(tokens, text_tokens, key_mask)
        tokens = self.image_norm_out(tokens).transpose(1, 2).reshape(b, -1, *grid)
        gate_shape = (1, -1) + (1,) * len(grid)
        update = self.image_out(tokens)
        # gates in the update's (autocast) dtype and results in the inputs' dtype: fp32 gates would promote an fp16
        # stage output, and the skip the decoder keeps of it, to fp32
        update = upsample(torch.tanh(self.image_gate).to(update.dtype).view(gate_shape) * update, spatial)
        image = image + update.to(image.dtype)
        text_update = self.text_out(self.text_norm_out(text_tokens))
        text = text + (torch.tanh(self.text_gate).to(text_update.dtype) * text_update).to(text.dtype)
        return image, text
