"""The planner counts the text encoder's fixed training memory, records and reports it, and keeps the image plans
and the fusion stages as they were."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel, BertConfig

from nnunet_vl.planning.planners import (VLPlannerMixin, encoder_parameter_counts, encoder_vram_mb, load_preset)

# a 110M-parameter biomedical BERT (BERT-base shape, cased 29k vocabulary), as a config only
BERT_BASE = {"model_type": "bert", "vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}


def test_parameter_counts_match_the_network_encoder(tiny_bert):
    encoder = AutoModel.from_pretrained(tiny_bert)
    config = {k: v for k, v in encoder.config.to_dict().items()
              if k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size")}
    counts = encoder_parameter_counts(config)
    expected = sum(p.numel() for n, p in encoder.named_parameters() if not n.startswith("pooler."))
    assert counts["total"] == expected  # the networks drop the pooler
    assert counts["word_embeddings"] == encoder.get_input_embeddings().weight.numel()


def test_fine_tuned_encoder_costs_gradients_and_adamw_state():
    counts = encoder_parameter_counts(BERT_BASE)
    assert 105e6 < counts["total"] < 110e6
    frozen = encoder_vram_mb(counts, 0.0, train_word_embeddings=False)
    tuned = encoder_vram_mb(counts, 0.1, train_word_embeddings=False)
    tuned_all = encoder_vram_mb(counts, 0.1, train_word_embeddings=True)
    assert 400 < frozen < 700  # fp32 weights + fp16 autocast copies
    assert 1300 < tuned < 1800  # about 1.5 GB: + fp32 gradients and two AdamW moments of the trained weights
    assert tuned_all - tuned == pytest.approx(counts["word_embeddings"] * 12 / 1024 ** 2)


def _planner(encoder_config: dict, target_gb: float, text_lr_factor: float = 0.1) -> SimpleNamespace:
    preset = dict(load_preset("bipvl"), text_lr_factor=text_lr_factor)
    planner = SimpleNamespace(text_spec={"preset": preset, "encoder": "enc", "encoder_config": encoder_config},
                              UNet_vram_target_GB=target_gb)
    planner.encoder_cost = lambda factors: VLPlannerMixin.encoder_cost(planner, factors)
    return planner


def test_large_fine_tuned_encoder_is_reported_not_traded_for_fusion_stages(planned_2d, nnunet_folders):
    conf = json.loads((nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans.json").read_text())[
        "configurations"]["2d"]
    small = _planner({"model_type": "bert", "vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 64}, 8.0)
    large = _planner(BERT_BASE, 8.0)
    cost_small, _, warning_small = small.encoder_cost({"bipvl": 0.1, "tmca": 0.0})
    cost_large, parameters, warning_large = large.encoder_cost({"bipvl": 0.1, "tmca": 0.0})
    assert warning_small is None and parameters > 100e6
    assert cost_large["bipvl"] > cost_large["tmca"] > cost_small["bipvl"]  # TMCA's encoder is frozen
    assert warning_large and "enc" in warning_large and "text budget" in warning_large
    # the fusion stages are the same whichever encoder: its cost does not push them out
    assert (VLPlannerMixin._fusion_stages(small, conf, 30)[0] == VLPlannerMixin._fusion_stages(large, conf, 30)[0])
    # a frozen large encoder costs weights only
    frozen_cost, _, _ = _planner(BERT_BASE, 8.0, text_lr_factor=0.0).encoder_cost({"bipvl": 0.0})
    assert frozen_cost["bipvl"] == pytest.approx(cost_large["tmca"], abs=0.1)


def test_plans_record_the_encoder_cost(planned_2d, nnunet_folders, tiny_bert):
    plans = json.loads((nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans.json").read_text())
    text = plans["configurations"]["2d"]["text"]
    counts = encoder_parameter_counts(text["encoder_config"])
    assert text["text_encoder_parameters"] == counts["total"] > 0
    preset = load_preset(text["preset"])
    expected = {"bipvl": encoder_vram_mb(counts, preset["text_lr_factor"], False),
                "tmca": encoder_vram_mb(counts, preset["tmca"]["text_lr_factor"], False)}
    assert text["text_encoder_vram_mb"] == pytest.approx(expected, abs=0.1)
    assert text["text_encoder_vram_warning"] is None  # a tiny encoder


def test_estimate_matches_what_the_trainer_allocates(tiny_bert):
    """Weights, gradients and AdamW state of a fine-tuned encoder with frozen word embeddings, counted by bytes."""
    encoder = AutoModel.from_pretrained(tiny_bert)
    encoder.pooler = None
    encoder.get_input_embeddings().weight.requires_grad_(False)
    trained = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained)
    sum(p.sum() for p in trained).backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    allocated = (sum(p.numel() * p.element_size() for p in encoder.parameters())
                 + sum(p.grad.numel() * p.grad.element_size() for p in trained) + state)
    config = BertConfig.from_pretrained(tiny_bert).to_dict()
    counts = encoder_parameter_counts({k: config[k] for k in ("model_type", "vocab_size", "hidden_size",
                                                               "num_hidden_layers", "num_attention_heads",
                                                               "intermediate_size", "max_position_embeddings")})
    autocast_copies = (counts["total"] - counts["embedding_tables"]) * 2
    assert encoder_vram_mb(counts, 0.1, False) * 1024 ** 2 == pytest.approx(allocated + autocast_copies, rel=1e-6)
