"""Positions relative to the whole image: a patch's place maps its token coordinates into the image's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_vl.networks.fusion import BidirectionalFusionBlock
from nnunet_vl.networks.positions import mirror_place, place_of_box, token_coordinates
from nnunet_vl.networks.target_enhancement import TargetEnhancement


def test_a_patch_covering_its_image_has_the_patch_coordinates():
    place = place_of_box([0, 0, 0], [4, 6, 8], [4, 6, 8])
    torch.testing.assert_close(place, torch.tensor([[0.0, 1.0]] * 3))
    torch.testing.assert_close(token_coordinates((4, 6, 8), torch.device("cpu"), place[None])[0],
                               token_coordinates((4, 6, 8), torch.device("cpu")))


def test_every_voxel_gets_the_same_image_coordinate_from_any_patch_that_holds_it():
    image_shape = (20, 12)
    whole = token_coordinates(image_shape, torch.device("cpu")).reshape(*image_shape, 2)
    for start in [(0, 0), (5, 3), (12, 4), (-2, 0)]:  # the last one reaches into padding
        place = place_of_box(start, (8, 8), image_shape)
        coords = token_coordinates((8, 8), torch.device("cpu"), place[None])[0].reshape(8, 8, 2)
        for i in range(8):
            for j in range(8):
                y, x = start[0] + i, start[1] + j
                if 0 <= y < image_shape[0] and 0 <= x < image_shape[1]:
                    torch.testing.assert_close(coords[i, j], whole[y, x])


def test_a_pooled_grid_token_sits_at_the_centre_of_the_voxels_it_pools():
    place = place_of_box((4, 0), (8, 8), (16, 8))
    fine = token_coordinates((8, 8), torch.device("cpu"), place[None])[0].reshape(8, 8, 2)
    coarse = token_coordinates((2, 4), torch.device("cpu"), place[None])[0].reshape(2, 4, 2)
    torch.testing.assert_close(coarse, fine.reshape(2, 4, 4, 2, 2).mean(dim=(1, 3)))


def test_a_mirrored_patch_lies_where_it_shows_in_the_mirrored_image():
    image_shape = (10, 16)
    place = place_of_box((2, 3), (4, 8), image_shape)
    mirrored = mirror_place(place, [1])
    # the patch flipped along axis 1 shows the mirrored image's columns 16 - 11 .. 16 - 3 = 5 .. 12
    torch.testing.assert_close(mirrored, place_of_box((2, 16 - 3 - 8), (4, 8), image_shape))
    torch.testing.assert_close(mirror_place(place, []), place)


def _block(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "fusion":
        block = BidirectionalFusionBlock(nn.Conv2d, 8, 12, 16, 2, 1)
        nn.init.constant_(block.image_gate, 0.7)
    else:
        block = TargetEnhancement(nn.Conv2d, 8, 12, 16, 2)
        nn.init.constant_(block.attention_gate, 0.7)
        nn.init.constant_(block.text_gate, 0.7)
    return block.eval()


@pytest.mark.parametrize("kind", ["fusion", "enhancement"])
def test_blocks_read_the_place(kind: str):
    """The same features and text give the same update for the same place, another for another place, and a
    patch covering its image gives today's patch-relative update."""
    block = _block(kind)
    image, text, mask = torch.ones(1, 8, 6, 6), torch.randn(1, 5, 12), torch.ones(1, 5, dtype=torch.bool)
    run = (lambda place: block(image, text, mask, place)[0])
    left = place_of_box((0, 0), (6, 6), (6, 18))[None]
    right = place_of_box((0, 12), (6, 6), (6, 18))[None]
    assert (run(left) - run(right)).abs().max() > 1e-4
    torch.testing.assert_close(run(left), run(left.clone()))
    torch.testing.assert_close(run(place_of_box((0, 0), (6, 6), (6, 6))[None]), run(None))
