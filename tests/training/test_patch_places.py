"""Positions relative to the image: training patches carry their crop box, prediction tiles their slicer."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_vl.networks.positions import place_of_box, token_coordinates
from nnunet_vl.networks.text_inputs import TextInputs

# nnU-Net sums the tiles' logits in fp16 (unweighted here: its gaussian weights underflow fp16 at the corners of
# these tiny patches); a tile placed one voxel off would be 2 / 28 = 0.07 off
ATOL = 2e-3


def _box_of(place: torch.Tensor, image_shape) -> list[int]:
    """First voxel of the box a place describes (inverse of place_of_box)."""
    return [round((c.item() + 1) * n / 2 - h.item() * n / 2) for (c, h), n in zip(place, image_shape)]


@pytest.mark.parametrize("drawn", [(16, 16), (24, 20)])
def test_loader_place_is_the_box_the_patch_was_cut_from(planned_2d, nnunet_folders, drawn):
    """Whatever the loader draws (the patch itself, or a larger box the spatial transform crops the patch from
    around its centre), the place names the voxels the patch shows."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_vl.training.patch_places import PlacedDataLoader

    folder = str(nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans_2d")
    dataset = infer_dataset_class(folder)(folder)
    crop = SpatialTransform((16, 16), 0, random_crop=False, p_elastic_deform=0, p_rotation=0, p_scaling=0)
    loader = PlacedDataLoader(dataset, 6, drawn, (16, 16), LabelManager({"background": 0, "target": 1}, None),
                              oversample_foreground_percent=0.5, transforms=crop)
    np.random.seed(3)
    batch = loader.generate_train_batch()
    assert batch["place"].shape == (6, 2, 2)
    assert torch.all(batch["place"][:, :, 1] == 0.5)  # 16 of 32 voxels per axis
    for i, key in enumerate(batch["keys"]):
        image = torch.from_numpy(np.asarray(dataset.load_case(key)[0][:]))[:, 0]  # (c, 32, 32)
        y, x = _box_of(batch["place"][i], image.shape[1:])
        padded = torch.nn.functional.pad(image, (16, 16, 16, 16))
        torch.testing.assert_close(batch["data"][i], padded[:, y + 16:y + 32, x + 16:x + 32])


def test_training_step_mirrors_the_places_with_the_patches(planned_2d, nnunet_folders, vl_trainer):
    trainer = vl_trainer("nnUNetTrainerBiPVL_cpu", nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D")
    places = torch.stack([place_of_box((4 * i, 2), (16, 16), (32, 32)) for i in range(4)])
    batch = {"data": torch.randn(4, 1, 16, 16), "target": torch.zeros(4, 1, 16, 16), "keys": ["a"] * 4,
             "place": places.clone()}
    torch.manual_seed(0)
    flips = trainer._mirror(batch)
    assert len(set(flips)) > 1
    for i, axes in enumerate(flips):
        for axis in range(2):
            sign = -1 if axis in axes else 1
            assert batch["place"][i, axis, 0] == sign * places[i, axis, 0]
            assert batch["place"][i, axis, 1] == places[i, axis, 1]
    text = trainer._with_place(_text(), batch)
    assert text.place is batch["place"]
    trainer.image_positions = False  # the _patchPositions ablations
    try:
        assert trainer._with_place(_text(), batch).place is None
    finally:
        trainer.image_positions = True


class _CoordinateProbe(nn.Module):
    """Outputs, per voxel of the tile it is given, the image coordinates its place says that voxel has."""

    def forward(self, x: torch.Tensor, text: TextInputs) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        coords = token_coordinates(spatial, x.device, text.place)  # (1, N, dims), or (N, dims) without a place
        coords = coords if text.place is not None else coords[None]
        return coords.transpose(1, 2).reshape(x.shape[0], len(spatial), *spatial)


def _text() -> TextInputs:
    one = torch.ones(1, 3, dtype=torch.long)
    return TextInputs(one, one, one, one, one[None], one[None], one.bool())


def _probe_predictor(patch, mirror_axes):
    from nnunet_vl.training.text_predictor import TextPredictor

    predictor = TextPredictor(tile_step_size=0.5, use_gaussian=False, use_mirroring=mirror_axes is not None,
                              perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.network = _CoordinateProbe()
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch), configuration={"text": {}})
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=len(patch))
    predictor.dataset_json = {"labels": {"background": 0, "target": 1}}
    predictor.allowed_mirroring_axes = mirror_axes
    predictor._remember_model_settings()
    predictor._case_text = _text()
    return predictor


@pytest.mark.parametrize("image_shape, patch", [((20, 28), (8, 8)), ((20, 6), (8, 8)), ((9, 14, 11), (6, 8, 8))])
def test_every_tile_gets_its_place_in_the_image(image_shape, patch):
    """Sliding-window tiles (padded where the image is smaller than the patch) each see their own place: every
    tile agrees on every voxel's coordinates, which are the whole image's."""
    predictor = _probe_predictor(patch, None)
    data = torch.zeros(1, *image_shape) if len(image_shape) == 3 else torch.zeros(1, 1, *image_shape)  # 2D: (c, 1, x, y)
    logits = predictor.predict_sliding_window_return_logits(data).float()
    expected = token_coordinates(image_shape, torch.device("cpu")).T.reshape(len(image_shape), *image_shape)
    torch.testing.assert_close(logits if len(image_shape) == 3 else logits[:, 0], expected, atol=ATOL, rtol=0)


def test_a_2d_model_on_a_3d_image_places_each_slice_tile():
    predictor = _probe_predictor((8, 8), None)
    logits = predictor.predict_sliding_window_return_logits(torch.zeros(1, 3, 12, 20))
    expected = token_coordinates((12, 20), torch.device("cpu")).T.reshape(2, 12, 20)
    for d in range(3):
        torch.testing.assert_close(logits[:, d].float(), expected, atol=ATOL, rtol=0)


def test_mirrored_tiles_get_mirrored_places():
    """A tile flipped along axis 1 is placed in the mirrored image: flipped back, its axis-1 coordinates are the
    negated ones (the mean with the straight view is 0 there), its axis-0 coordinates unchanged."""
    predictor = _probe_predictor((8, 8), (1,))
    logits = predictor.predict_sliding_window_return_logits(torch.zeros(1, 1, 20, 28)).float()[:, 0]
    expected = token_coordinates((20, 28), torch.device("cpu")).T.reshape(2, 20, 28)
    torch.testing.assert_close(logits[0], expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], torch.zeros(20, 28), atol=ATOL, rtol=0)


def test_patch_positions_ablation_predicts_without_places():
    """Each tile then sees patch-relative coordinates: the lower tile of a 16 x 8 image the same as a lone 8 x 8."""
    predictor = _probe_predictor((8, 8), None)
    predictor.image_positions = False
    predictor.tile_step_size = 1.0  # two tiles, no overlap
    logits = predictor.predict_sliding_window_return_logits(torch.zeros(1, 1, 16, 8)).float()[:, 0]
    torch.testing.assert_close(logits[:, 8:], token_coordinates((8, 8), torch.device("cpu")).T.reshape(2, 8, 8),
                               atol=ATOL, rtol=0)


def test_trainer_loaders_carry_places_through_the_augmentation_workers(planned_2d, nnunet_folders, vl_trainer,
                                                                       monkeypatch):
    """nnU-Net's get_dataloaders builds the loader inside the trainer; batches from its worker processes (and from
    the single-threaded path) hold the places."""
    trainer = vl_trainer("nnUNetTrainerBiPVL_cpu", nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D")
    for workers in ("1", "0"):
        monkeypatch.setenv("nnUNet_n_proc_DA", workers)
        train, val = trainer.get_dataloaders()
        try:
            for batch in (next(train), next(val)):
                assert batch["place"].shape == (trainer.batch_size, 2, 2)
                assert torch.all(batch["place"][:, :, 1] > 0)
        finally:
            for loader in (train, val):
                getattr(loader, "_finish", lambda: None)()
