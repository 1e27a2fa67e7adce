"""Training budgets shared by the short variants, so image-only and VL runs compare on equal terms."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


@dataclass(frozen=True)
class Budget:
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    save_every: int | None = None  # epochs between checkpoint_latest.pth saves (None: nnU-Net's 50)
    validation_mirroring: bool = True  # False: nnU-Net's final validation without test-time mirroring

    def apply(self, trainer: nnUNetTrainer) -> None:
        trainer.num_epochs = self.epochs
        trainer.num_iterations_per_epoch = self.iterations_per_epoch
        trainer.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        if self.save_every is not None:
            trainer.save_every = self.save_every


CPU_SMOKE = Budget(epochs=2, iterations_per_epoch=5, val_iterations_per_epoch=2)
DEMO = Budget(epochs=12, iterations_per_epoch=25, val_iterations_per_epoch=4)
# nnU-Net's own nnUNetTrainer_5epochs: 5 epochs at its default 250 / 50 iterations
FIVE_EPOCHS = Budget(epochs=5, iterations_per_epoch=250, val_iterations_per_epoch=50)
# by the trainer variants' name suffix
BUDGETS = {"cpu": CPU_SMOKE, "demo": DEMO, "5epochs": FIVE_EPOCHS}


class WithBudget:
    """Mixin for trainer variants that only change the training length: set `budget` on the class."""

    budget: Budget

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget.apply(self)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's final validation of the trainer; without test-time mirroring when the budget says so (the
        checkpoint keeps its mirror axes)."""
        if self.budget.validation_mirroring:
            return super().perform_actual_validation(save_probabilities)
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes


class nnUNetTrainer_cpu(WithBudget, nnUNetTrainer):
    """Stock nnU-Net on the CPU smoke budget (proves VL plans stay nnU-Net compatible)."""

    budget = CPU_SMOKE


class nnUNetTrainer_demo(WithBudget, nnUNetTrainer):
    """Stock nnU-Net, image only, on the demo budget."""

    budget = DEMO
