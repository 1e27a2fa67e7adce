"""Each training patch's place in its preprocessed image, from the crop box nnU-Net's data loader draws.

The place (networks.positions) is (centre, half extent) per spatial axis in the image's normalised coordinates.
nnU-Net's loader crops a box of the initial patch size (larger than the patch when rotation or scaling follow)
and its SpatialTransform takes the final patch around that box's centre, so the place is the final patch's nominal
box: its centre is exact, its extent is exact without scaling. With scaling (p = 0.2 per sample, factor 0.7-1.4 in
nnU-Net) the patch shows 0.7-1.4 times that extent; with rotation (up to 15 degrees in the VL trainers) a corner of
the patch lies up to sin(15 deg) = 0.26 of the other axis's half extent away from the box's corner.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_vl.networks.positions import place_of_box


class PlacedDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader; its batches also hold `place` (B, dims, 2): where each sample's patch lies."""

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations, overwrite_class=None,
                 verbose: bool = False):
        bbox_lbs, bbox_ubs = super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        self._boxes.append((list(bbox_lbs), list(data_shape)))
        return bbox_lbs, bbox_ubs

    def generate_train_batch(self) -> dict:
        self._boxes: list[tuple[list[int], list[int]]] = []
        batch = super().generate_train_batch()
        # 2D patches are held as 3D ones with a leading 1 (the slice of a 3D image, or the 1 of a 2D image)
        final = [int(p) for p in self.final_patch_size][1 if self.patch_size_was_2d else 0:]
        dims = len(final)
        drawn = [int(p) for p in self.patch_size][-dims:]
        places = []
        for lbs, shape in self._boxes:
            start = [lb + (d - f) / 2.0 for lb, d, f in zip(lbs[-dims:], drawn, final)]
            places.append(place_of_box(start, final, shape[-dims:]))
        batch["place"] = torch.stack(places)
        return batch


@contextmanager
def placed_data_loaders() -> Iterator[None]:
    """nnUNetTrainer.get_dataloaders builds nnUNetDataLoader by name and has no hook for the class: within this
    context that name is PlacedDataLoader."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = PlacedDataLoader
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original
