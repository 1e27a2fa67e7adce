"""nnUNetTrainerLateral: nnU-Net's image-only trainer whose mirroring swaps the lateral label pairs.

A sample mirrored along the patient's left-right axis gets the pair's label ids swapped (the mirrored patient's
left kidney lies where the right one belongs); test-time mirroring leaves out the left-right axis, so stock
`nnUNetv2_predict` (which cannot swap channels back) predicts it correctly. Without lateral pairs it trains and
predicts exactly as nnUNetTrainer. `_cpu` and `_demo` are the budgets of nnUNetTrainer_cpu / _demo.
"""
from __future__ import annotations

import os

from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_vl.training.budgets import CPU_SMOKE, DEMO, WithBudget
from nnunet_vl.training.lateral import LateralMirrorTransform, LateralSwap, lateral_swap_for_image_only


class nnUNetTrainerLateral(nnUNetTrainer):
    def lateral_swap(self) -> LateralSwap | None:
        """The plans' lateral pairs, or without a text section in the plans those of dataset.json and the geometry
        of the first preprocessed case (its properties file)."""
        if not hasattr(self, "_lateral_swap"):
            folder = self.preprocessed_dataset_folder
            cases = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".pkl")) if os.path.isdir(folder) else []
            self._lateral_swap = lateral_swap_for_image_only(self.plans_manager, self.configuration_manager,
                                                             self.dataset_json, folder, cases[0] if cases else None)
        return self._lateral_swap

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        swap = self.lateral_swap()
        if swap is not None and mirror_axes:
            kept = tuple(a for a in mirror_axes if a != swap.left_right_axis)
            self.inference_allowed_mirroring_axes = kept or None
            self.print_to_log_file(f"lateral pairs {[list(p) for p in swap.names]}: their label ids swap when axis "
                                   f"{swap.left_right_axis} (left-right) is mirrored in training; test-time "
                                   f"mirroring axes {self.inference_allowed_mirroring_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training transforms with its MirrorTransform replaced by LateralMirrorTransform."""
        transforms = super().get_training_transforms(*args, **kwargs)
        swap = self.lateral_swap()
        if swap is not None:
            transforms.transforms = [LateralMirrorTransform(t.allowed_axes, swap) if type(t) is MirrorTransform
                                     else t for t in transforms.transforms]
        return transforms


class nnUNetTrainerLateral_cpu(WithBudget, nnUNetTrainerLateral):
    """CPU smoke budget (2 epochs of 5 iterations), same as nnUNetTrainer_cpu."""

    budget = CPU_SMOKE


class nnUNetTrainerLateral_demo(WithBudget, nnUNetTrainerLateral):
    """Demo budget, same as nnUNetTrainer_demo."""

    budget = DEMO
