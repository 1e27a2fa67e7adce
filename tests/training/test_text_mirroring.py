"""Mirroring and reports never disagree: in training the words swap exactly when their axis flips,
at test time an axis named by the report is not mirrored."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def trainer(planned_2d, nnunet_folders):
    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL_cpu

    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["fixed_side_names"] = ["left target lobe"]  # a user's structure name that must never swap
    trainer = nnUNetTrainerBiPVL_cpu(plans, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    return trainer


def test_training_mirrors_in_the_step_not_in_the_workers(trainer):
    rotation, _, _, worker_mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert worker_mirror_axes is None  # the augmentation workers no longer mirror
    assert trainer.text_mirror_axes == (0, 1)
    assert trainer.inference_allowed_mirroring_axes == (0, 1)
    assert max(abs(r) for r in rotation) <= torch.pi / 12 + 1e-9  # 2D nnU-Net would rotate up to 180 degrees


def test_dataset_structure_names_reach_the_trainers_text(trainer):
    words = trainer.text_provider.directions
    assert words.swap("mass left of the left target lobe", ["left_right"]) == "mass right of the left target lobe"
    assert words.named_axes("the left target lobe") == set()


def test_report_words_swap_exactly_when_their_axis_flips(trainer):
    provider = trainer.text_provider
    cases = [c for c, r in sorted(provider.reports.items()) if "left" in r.lower() or "right" in r.lower()][:8]
    assert len(cases) == 8
    torch.manual_seed(3)
    data = torch.arange(8 * 32 * 32, dtype=torch.float32).reshape(8, 1, 32, 32)
    target = [torch.arange(8 * 32 * 32).reshape(8, 1, 32, 32), torch.arange(8 * 16 * 16).reshape(8, 1, 16, 16)]
    batch = {"data": data.clone(), "target": [t.clone() for t in target], "keys": cases}
    flips = trainer._mirror(batch)
    assert any(1 in f for f in flips) and any(1 not in f for f in flips)  # both cases occur with this seed
    text = trainer.training_text(cases, flips)
    tokenizer = provider.tokenizer.tokenizer
    for i, (case, axes) in enumerate(zip(cases, flips)):
        dims = [a + 1 for a in axes]
        expected = torch.flip(data[i], dims) if dims else data[i]
        assert torch.equal(batch["data"][i], expected)
        for t_mirrored, t_orig in zip(batch["target"], target):
            assert torch.equal(t_mirrored[i], torch.flip(t_orig[i], dims) if dims else t_orig[i])
        words = tokenizer.decode(text.report_ids[i][text.report_mask[i].bool()], skip_special_tokens=True)
        original = tokenizer.decode(tokenizer(provider.reports[case])["input_ids"], skip_special_tokens=True)
        lr_flipped = 1 in axes  # axis 1 of a 2D patch is the image's left-right axis
        ud_flipped = 0 in axes
        for word, partner, flipped in (("left", "right", lr_flipped), ("upper", "lower", ud_flipped)):
            if word in original.split():
                assert (partner in words.split()) == flipped, (case, axes, original, words)
                assert (word in words.split()) == (not flipped or partner in original.split())


def test_prediction_leaves_out_axes_the_report_names(trainer):
    from nnunet_vl.inference.predictor import nnUNetPredictorVL
    from nnunet_vl.text.provider import TextProvider

    predictor = nnUNetPredictorVL(device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, "nnUNetTrainerBiPVL_cpu", (0, 1))
    reports = {"side": "lesion on the left", "both": "upper left lesion", "neither": "round lesion"}
    provider = trainer.text_provider
    predictor.set_text_provider(TextProvider(provider.tokenizer, trainer.network.text_assets.label_texts, reports,
                                             provider.direction_axes))
    expected = {"side": (0,), "both": None, "neither": (0, 1)}
    for case, axes in expected.items():
        predictor.select_case(case)
        assert predictor.allowed_mirroring_axes == axes, case
    predictor.text_mode = "none"
    predictor.select_case("both")
    assert predictor.allowed_mirroring_axes == (0, 1)


def test_naive_mirror_ablation_keeps_the_words(trainer, monkeypatch):
    provider = trainer.text_provider
    cases = [c for c, r in sorted(provider.reports.items()) if "left" in r.lower() or "right" in r.lower()][:4]
    flips = [(1,)] * len(cases)  # every sample mirrored left-right
    swapped = trainer.training_text(cases, flips)
    monkeypatch.setattr(trainer, "swap_words_when_mirroring", False)
    naive = trainer.training_text(cases, flips)
    assert torch.equal(naive.report_ids, provider.inputs(cases).report_ids)  # the words as written
    assert not torch.equal(naive.report_ids, swapped.report_ids)


def test_class_texts_swap_per_sample_in_training(trainer, monkeypatch, loader_batch):
    """A sample mirrored along an axis its class texts name trains with those texts swapped, the others with the texts
    as written; the network and the BiPVL loss take the per-sample sets (finite), the naive ablation keeps them."""
    from nnunet_vl.text.provider import TextProvider

    provider = trainer.text_provider
    assert len(provider.class_sets) == 1  # the synthetic class texts name no direction: nothing is swapped, no cost
    sided = [("background", {"definition": "everything else"}),
             ("target", {"definition": "the bright round object", "location": "in the left upper region"})]
    monkeypatch.setattr(trainer, "text_provider", TextProvider(provider.tokenizer, sided, provider.reports,
                                                               provider.direction_axes))
    batch = loader_batch(trainer)
    cases = list(batch["keys"])
    flips = [(1,)] + [()] * (len(cases) - 1)  # axis 1: left-right
    text = trainer.training_text(cases, flips)
    assert text.class_set is not None and text.class_set[0] != text.class_set[1]
    assert torch.equal(text.class_ids[text.class_set[1]], trainer.text_provider.label_tensors["class_ids"])
    tokenizer = provider.tokenizer.tokenizer
    location = text.concept_ids[text.class_set[0], 1, 2]
    assert tokenizer.decode(location, skip_special_tokens=True) == "in the right upper region"
    with torch.no_grad():
        _, aux = trainer.network(batch["data"], trainer._with_place(text, batch), return_aux=True)
        losses = trainer.text_loss(aux, batch["target"][0])
    assert aux["concept_text"].shape[0] == len(cases) and all(torch.isfinite(v) for v in losses.values())
    monkeypatch.setattr(trainer, "swap_words_when_mirroring", False)
    assert trainer.training_text(cases, flips).class_set is None  # the ablation leaves every word as written
