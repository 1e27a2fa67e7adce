"""The VL trainers' optimizer: text encoder at its own learning rate (TMCA: frozen), word embeddings frozen by the plans."""
from __future__ import annotations

import json

import pytest
import torch


def _trainer(cls, nnunet_folders):
    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    trainer = cls(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()), torch.device("cpu"))
    trainer.initialize()
    return trainer


@pytest.fixture(scope="module")
def bipvl_trainer(planned_2d, nnunet_folders):
    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL_cpu

    return _trainer(nnUNetTrainerBiPVL_cpu, nnunet_folders)


@pytest.fixture(scope="module")
def tmca_trainer(planned_2d, nnunet_folders):
    from nnunet_vl.training.nnUNetTrainerTMCA import nnUNetTrainerTMCA_cpu

    return _trainer(nnUNetTrainerTMCA_cpu, nnunet_folders)


def test_word_embeddings_frozen_and_text_encoder_at_its_factor(bipvl_trainer):
    trainer = bipvl_trainer
    network = trainer.network
    word_embeddings = network.text_encoder.get_input_embeddings().weight
    assert trainer.text_plan["train_word_embeddings"] is False and not word_embeddings.requires_grad
    main, text = trainer.optimizer.param_groups
    assert all(p is not word_embeddings for p in main["params"] + text["params"])
    assert len(main["params"]) + len(text["params"]) == sum(p.requires_grad for p in network.parameters())
    trainer.lr_scheduler.step(0)
    assert text["lr"] == pytest.approx(main["lr"] * trainer.text_plan["text_lr_factor"]) and text["lr"] > 0
    # the frozen table still holds the pretrained vocabulary, so prediction needs nothing else
    assert word_embeddings.abs().sum() > 0
    assert any(k.endswith("text_encoder.embeddings.word_embeddings.weight") for k in network.state_dict())


def test_tmca_text_encoder_frozen_by_its_plans(tmca_trainer):
    # the presets' tmca section sets text_lr_factor 0: TMCA trains on the encoder's pretrained report states
    from nnunet_vl.training.vl_trainer import TextBoundNetwork

    trainer, network = tmca_trainer, tmca_trainer.network
    assert trainer.text_plan["tmca"]["text_lr_factor"] == 0 and trainer.text_plan["text_lr_factor"] > 0
    assert not any(p.requires_grad for p in network.text_encoder.parameters())
    (main,) = trainer.optimizer.param_groups
    assert len(main["params"]) == sum(p.requires_grad for p in network.parameters()) > 0

    keys = sorted(trainer.text_provider.reports)[:2]
    x = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    bound = TextBoundNetwork(network, trainer.text_provider.inputs(keys, None, "report"))
    network.train()
    sum(out.square().mean() for out in bound(x)).backward()
    assert all(p.grad is None for p in network.text_encoder.parameters())
    assert all(e.text_gate.grad.abs().sum() > 0 for e in network.enhancements.values())
    network.zero_grad(set_to_none=True)


def test_optimizer_is_adamw_without_amsgrad(bipvl_trainer):
    groups = bipvl_trainer.optimizer.param_groups
    assert type(bipvl_trainer.optimizer) is torch.optim.AdamW and all(g["amsgrad"] is False for g in groups)
