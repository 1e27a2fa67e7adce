"""BidirectionalFusionBlock: shapes in 2D/3D, identity at init, text padding, positions, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_vl.networks.fusion import BidirectionalFusionBlock, coordinate_encoding

TEXT_WIDTH = 24


def make_block(conv_op: type[nn.Module], gates: float | None = None,
               pool: tuple[int, ...] | None = None) -> BidirectionalFusionBlock:
    torch.manual_seed(0)
    block = BidirectionalFusionBlock(conv_op, image_channels=8, text_channels=TEXT_WIDTH, dim=16, heads=4, depth=2,
                                     pool=pool)
    if gates is not None:
        with torch.no_grad():
            block.image_gate.fill_(gates)
            block.text_gate.fill_(gates)
    return block.eval()


def text_batch(lengths: list[int], padded_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randn(len(lengths), padded_to, TEXT_WIDTH)
    mask = torch.arange(padded_to)[None] < torch.tensor(lengths)[:, None]
    return text, mask


@pytest.mark.parametrize("conv_op, spatial", [(nn.Conv2d, (6, 5)), (nn.Conv3d, (4, 3, 5))])
def test_shapes_and_identity_at_init(conv_op: type[nn.Module], spatial: tuple[int, ...]) -> None:
    block = make_block(conv_op)
    image = torch.randn(2, 8, *spatial)
    text, mask = text_batch([7, 4], padded_to=9)
    fused_image, fused_text = block(image, text, mask)
    assert fused_image.shape == image.shape and fused_text.shape == text.shape
    assert torch.equal(fused_image, image) and torch.equal(fused_text, text)


@pytest.mark.parametrize("conv_op, spatial", [(nn.Conv2d, (6, 5)), (nn.Conv3d, (4, 3, 5))])
def test_text_padding_has_no_effect(conv_op: type[nn.Module], spatial: tuple[int, ...]) -> None:
    block = make_block(conv_op, gates=0.7)
    image = torch.randn(2, 8, *spatial)
    text, mask = text_batch([7, 4], padded_to=7)
    longer = torch.cat([text, 100 * torch.randn(2, 5, TEXT_WIDTH)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    longer[1, 4:7] = 100 * torch.randn(3, TEXT_WIDTH)  # sample 1's own padding changes too
    image_a, text_a = block(image, text, mask)
    image_b, text_b = block(image, longer, longer_mask)
    assert not torch.allclose(image_a, image)
    torch.testing.assert_close(image_b, image_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_b[:, :7][mask], text_a[mask], rtol=1e-5, atol=1e-5)


def test_image_update_depends_on_text() -> None:
    block = make_block(nn.Conv2d, gates=0.7)
    image = torch.randn(1, 8, 6, 6)
    text, mask = text_batch([5], padded_to=5)
    out_a, _ = block(image, text, mask)
    out_b, _ = block(image, torch.randn_like(text), mask)
    assert (out_a - out_b).abs().max() > 1e-3


@pytest.mark.parametrize("conv_op, spatial", [(nn.Conv2d, (6, 6)), (nn.Conv3d, (4, 4, 4))])
def test_positions_reach_the_image_update(conv_op: type[nn.Module], spatial: tuple[int, ...]) -> None:
    """A spatially constant feature map must get a position-dependent update (left vs right)."""
    block = make_block(conv_op, gates=0.7)
    image = torch.ones(1, 8, *spatial)
    text, mask = text_batch([5], padded_to=5)
    update = block(image, text, mask)[0] - image
    assert update.flatten(2).std(-1).min() > 1e-4
    assert (update[..., 0] - update[..., -1]).abs().max() > 1e-4


def test_coordinate_encoding() -> None:
    enc = coordinate_encoding((3, 4, 1), num_frequencies=2, device=torch.device("cpu"), dtype=torch.float32)
    assert enc.shape == (12, 3 * (1 + 2 * 2))
    coords = enc[:, :3].reshape(3, 4, 1, 3)
    torch.testing.assert_close(coords[:, 0, 0, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]))  # voxel centres
    torch.testing.assert_close(coords[0, :, 0, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.all(coords[..., 2] == 0)


def test_every_parameter_gets_gradient_once_gates_open() -> None:
    block = make_block(nn.Conv3d, gates=0.5).train()
    text, mask = text_batch([6, 3], padded_to=6)
    image, fused_text = block(torch.randn(2, 8, 3, 4, 5), text, mask)
    (image.square().mean() + fused_text[mask].square().mean()).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dim", [2, 3])
def test_pooled_block_fuses_from_the_coarse_grid(dim: int) -> None:
    """With a pooling kernel, on features constant within each pooling block, the text equals an unpooled block's
    on the coarse features and the image update is that block's update interpolated; gradients reach the input."""
    conv_op = nn.Conv2d if dim == 2 else nn.Conv3d
    kernel = (2,) * (dim - 1) + (4,)
    pooled, plain = make_block(conv_op, gates=0.7, pool=kernel), make_block(conv_op, gates=0.7)
    coarse = torch.randn(2, 8, *(3,) * dim)
    fine = coarse
    for axis, k in enumerate(kernel):
        fine = fine.repeat_interleave(k, dim=2 + axis)
    fine.requires_grad_(True)
    text, mask = text_batch([7, 4], padded_to=7)
    image, fused_text = pooled(fine, text, mask)
    coarse_image, coarse_text = plain(coarse, text, mask)
    assert image.shape == fine.shape
    torch.testing.assert_close(fused_text, coarse_text, rtol=1e-5, atol=1e-5)
    mode = "bilinear" if dim == 2 else "trilinear"
    update = F.interpolate(coarse_image - coarse, size=fine.shape[2:], mode=mode, align_corners=False)
    torch.testing.assert_close(image, fine + update, rtol=1e-5, atol=1e-5)
    (image.square().mean() + fused_text[mask].square().mean()).backward()
    assert fine.grad is not None and pooled.layers[0].image_to_text.query.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pool"):
        make_block(conv_op, pool=(2,) * (dim + 1))
