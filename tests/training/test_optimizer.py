"""The VL trainer's optimizer: text encoder at its own learning rate, word embeddings frozen by the plans."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def trainer(planned_2d, nnunet_folders):
    from nnunet_vl.training.nnUNetTrainerTMCA import nnUNetTrainerTMCA_cpu

    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    trainer = nnUNetTrainerTMCA_cpu(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()),
                                    torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_word_embeddings_frozen_and_text_encoder_at_its_factor(trainer):
    network = trainer.network
    word_embeddings = network.text_encoder.get_input_embeddings().weight
    assert trainer.text_plan["train_word_embeddings"] is False and not word_embeddings.requires_grad
    main, text = trainer.optimizer.param_groups
    assert all(p is not word_embeddings for p in main["params"] + text["params"])
    assert len(main["params"]) + len(text["params"]) == sum(p.requires_grad for p in network.parameters())
    trainer.lr_scheduler.step(0)
    assert text["lr"] == pytest.approx(main["lr"] * trainer.text_plan["text_lr_factor"])
    # the frozen table still holds the pretrained vocabulary, so prediction needs nothing else
    assert word_embeddings.abs().sum() > 0 and "text_encoder.embeddings.word_embeddings.weight" in network.state_dict()


def test_optimizer_keeps_two_state_tensors_per_trained_parameter(trainer):
    # AdamW without AMSGrad: exp_avg and exp_avg_sq, no third max_exp_avg_sq (6% of the training peak at QaTa)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    assert params and all(trainer.optimizer.state[p].keys() == {"step", "exp_avg", "exp_avg_sq"} for p in params)
    assert sum(sum(t.numel() for k, t in trainer.optimizer.state[p].items() if k != "step") for p in params) == \
        2 * sum(p.numel() for p in params)
