"""Budget: the training length and nnU-Net's final validation with or without test-time mirroring."""
import types

import pytest

from nnunet_vl.training.budgets import Budget, WithBudget


class _Recorder:
    """Stands in for nnU-Net's trainer: records the mirror axes its final validation sees."""

    def __init__(self):
        self.inference_allowed_mirroring_axes = (0, 1, 2)
        self.seen = []

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.seen.append((self.inference_allowed_mirroring_axes, save_probabilities))
        if save_probabilities == "fail":
            raise RuntimeError("validation failed")


def _trainer(budget: Budget):
    cls = type("Budgeted", (WithBudget, _Recorder), {"budget": budget})
    trainer = cls.__new__(cls)
    _Recorder.__init__(trainer)
    return trainer


def test_budget_sets_the_training_length_and_checkpoint_interval():
    trainer = types.SimpleNamespace(save_every=50)
    Budget(3, 7, 2, save_every=1).apply(trainer)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch,
            trainer.save_every) == (3, 7, 2, 1)


def test_final_validation_mirrors_by_default():
    trainer = _trainer(Budget(1, 1, 1))
    trainer.perform_actual_validation(True)
    assert trainer.seen == [((0, 1, 2), True)]


def test_final_validation_without_mirroring_keeps_the_checkpoint_axes():
    trainer = _trainer(Budget(1, 1, 1, validation_mirroring=False))
    trainer.perform_actual_validation(False)
    assert trainer.seen == [(None, False)]
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)
    with pytest.raises(RuntimeError):
        trainer.perform_actual_validation("fail")
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)  # restored when validation fails too
