"""Fingerprint text stats, VL plans (image part = nnU-Net's), text cache, and safe re-runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_vl.planning.planners import (direction_axes_from_geometry, load_preset, PresetError, stage_grids,
                                         token_pools)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _image_part(configuration: dict) -> dict:
    return {k: v for k, v in configuration.items() if k not in ("text", "data_identifier")}


def test_fingerprint_has_text_section(planned_2d, nnunet_folders):
    fp = _load(nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "dataset_fingerprint.json")
    text = fp["text"]
    assert text["num_training_cases"] == 12 and text["training_cases_with_report"] == 12
    assert text["num_test_cases"] == 3 and text["report_coverage"] == 1.0
    stats = text["report_tokens"]
    assert 3 <= stats["min"] <= stats["median"] <= stats["p95"] <= stats["max"] < 60
    assert text["direction_mentions"]["left_right"] > 0  # synthetic position reports name sides
    assert text["concepts_present"]["texture"] == 2  # background and target
    assert "spacings" in fp  # nnU-Net's own fingerprint is still there


def test_plans_text_section_and_stock_image_plans(planned_2d, nnunet_folders, tiny_bert):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    plans = _load(folder / "nnUNetPlans.json")
    conf = plans["configurations"]["2d"]
    text = conf["text"]
    assert text["encoder"] == str(tiny_bert) and text["hidden_size"] == 32 and text["num_text_layers"] == 2
    n_stages = conf["architecture"]["arch_kwargs"]["n_stages"]
    assert text["fusion_stages"] == list(range(n_stages))  # tiny patches: every stage fits the budget
    assert 8 <= text["max_tokens"] <= 128 and text["max_tokens"] % 8 == 0
    assert text["class_names"] == ["background", "target"]
    assert text["direction_axes"] == {"left_right": 1, "superior_inferior": 0, "anterior_posterior": None}
    assert text["tmca"]["align_stages"] == [0, 1, 2] and len(text["tmca"]["level_weights"]) == 3
    assert "within" in text["fusion_reason"]
    # stage 0 is narrower than fusion_dim: the estimate must size its block as the network does (capped width),
    # i.e. below the channel term alone of an uncapped block
    from nnunet_vl.planning.planners import _FUSION_BYTES_PER_TOKEN_CHANNEL

    arch = conf["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"][0] < text["fusion_dim"]
    tokens = np.prod(conf["patch_size"]) / np.prod(arch["strides"][0])
    uncapped_floor = conf["batch_size"] * tokens * text["fusion_dim"] * _FUSION_BYTES_PER_TOKEN_CHANNEL / 1024 ** 2
    assert 0 < text["fusion_vram_estimate_mb"]["stage_0"] < uncapped_floor

    plan_experiment_dataset(801, overwrite_plans_name="StockPlans")
    stock = _load(folder / "StockPlans.json")
    for name, configuration in stock["configurations"].items():
        assert _image_part(plans["configurations"][name]) == _image_part(configuration)
    assert (folder / "text" / "text_cache.json").is_file()
    assert (folder / "nnUNetPlans_2d").is_dir() and any((folder / "gt_segmentations").iterdir())


def test_rerun_is_safe_and_does_not_retokenize(planned_2d, tiny_bert, capsys):
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True)
    assert "(0 tokenized, the rest unchanged)" in capsys.readouterr().out


def test_small_vram_target_drops_high_resolution_stages(planned_2d, tiny_bert, nnunet_folders):
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, gpu_memory_target=0.0005, plans_name="TinyVRAMPlans")
    text = _load(nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "TinyVRAMPlans.json")[
        "configurations"]["2d"]["text"]
    assert 0 not in text["fusion_stages"] and len(text["fusion_stages"]) >= 1
    assert "dropped" in text["fusion_reason"]


def test_recomputed_stages_count_once_in_the_text_budget(planned_2d, nnunet_folders):
    """A budget that drops stage 0 keeps it when stages 0 and 1 are recomputed (only the larger one counts)."""
    from types import SimpleNamespace

    from nnunet_vl.planning.planners import VLPlannerMixin

    conf = _load(nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans.json")[
        "configurations"]["2d"]
    preset = load_preset("bipvl")

    def fused(recompute: int | str, target_gb: float, max_voxels: int | None = None) -> tuple[list[int], dict, float]:
        planner = SimpleNamespace(text_spec={"preset": dict(preset, recompute_stages=recompute,
                                                            fusion_max_voxels=max_voxels)},
                                  UNet_vram_target_GB=target_gb)
        stages, pools, estimate, held, _ = VLPlannerMixin._fusion_stages(planner, conf, 30)
        assert len(pools) == len(stages)
        return stages, estimate, held

    stages, estimate, held = fused(0, 1e9)
    assert stages[:2] == [0, 1] and estimate["stage_0"] > estimate["stage_1"] > 0
    assert held == pytest.approx(sum(estimate.values()), abs=0.01)
    assert fused("all", 1e9)[2] == pytest.approx(estimate["stage_0"], abs=0.01)  # the largest block, once
    budget_mb = sum(estimate.values()) - estimate["stage_1"] / 2  # below all stages, above all but stage 1's half
    target_gb = budget_mb / 1024 / preset["text_vram_fraction"]
    assert 0 not in fused(0, target_gb)[0]
    assert fused(2, target_gb)[0] == stages
    assert fused("all", target_gb)[0] == stages
    # stage 0's tokens pooled to stage 1's grid: its blocks' estimate shrinks by the pooling factor, two fp16
    # tensors at stage 0's resolution join it (the block's output and the interpolated update), and it fits again
    arch = conf["architecture"]["arch_kwargs"]
    strides = arch["strides"]
    stage1_voxels = int(np.prod(np.asarray(conf["patch_size"]) // np.prod(strides[:2], axis=0)))
    pooled_stages, pooled, _ = fused(0, target_gb, stage1_voxels)
    assert pooled_stages == stages
    stage0_voxels = np.prod(conf["patch_size"]) / np.prod(strides[0])
    stage0_tensors_mb = 2 * conf["batch_size"] * stage0_voxels * arch["features_per_stage"][0] * 2 / 1024 ** 2
    assert pooled["stage_0"] == pytest.approx(estimate["stage_0"] / np.prod(strides[1]) + stage0_tensors_mb,
                                              abs=0.01)
    assert all(pooled[f"stage_{k}"] == estimate[f"stage_{k}"] for k in stages[1:])
    # recomputing drops the pooled block's activations, not its stage-resolution tensors
    pooled_blocks = {k: v - (stage0_tensors_mb if k == "stage_0" else 0) for k, v in pooled.items()}
    assert fused("all", 1e9, stage1_voxels)[2] == pytest.approx(stage0_tensors_mb + max(pooled_blocks.values()),
                                                                abs=0.02)


def test_token_pools_reach_the_voxel_cap_with_the_following_strides() -> None:
    strides = [[1, 1], [2, 2], [2, 2], [2, 2]]
    grids = stage_grids([224, 224], strides)
    assert token_pools(grids, strides, [0, 1, 2, 3], 4096) == [[4, 4], [2, 2], [1, 1], [1, 1]]
    assert token_pools(grids, strides, [1, 3], None) == [[1, 1], [1, 1]]
    assert token_pools(grids, strides, [0], 1) == [[8, 8]]  # never past the deepest stage
    # anisotropic: only the axes the following stages downsample are pooled
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert token_pools(stage_grids([20, 192, 160], strides), strides, [0, 1], 20000) == [[2, 4, 4], [2, 2, 2]]


def test_recompute_preset_reaches_plans_and_network(planned_2d, tiny_bert, nnunet_folders, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_vl.networks.bipvl_unet import BiPVLUNet
    from nnunet_vl.planning.api import plan_and_preprocess_vl
    from nnunet_vl.training.network_builder import build_vl_network

    preset = tmp_path / "recompute.json"
    preset.write_text(json.dumps(dict(load_preset("bipvl"), recompute_stages=1)), encoding="utf-8")
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, plans_name="RecomputePlans", preset=str(preset))
    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    default = _load(folder / "nnUNetPlans.json")["configurations"]["2d"]
    n_stages = default["architecture"]["arch_kwargs"]["n_stages"]
    assert default["text"]["recompute_stages"] == list(range(n_stages))  # the bipvl preset recomputes every block
    plans = PlansManager(str(folder / "RecomputePlans.json"))
    assert plans.get_configuration("2d").configuration["text"]["recompute_stages"] == [0]
    network = build_vl_network("bipvl", plans, plans.get_configuration("2d"), 1, 2)
    assert isinstance(network, BiPVLUNet) and network.recompute_stages == [0]
    assert any(p.requires_grad for p in network.text_encoder.parameters())  # BiPVL fine-tunes its encoder
    # the shipped tmca preset recomputes every enhanced stage
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, plans_name="TMCAPresetPlans", preset="tmca")
    plans = PlansManager(str(folder / "TMCAPresetPlans.json"))
    text = plans.get_configuration("2d").configuration["text"]
    assert text["recompute_stages"] == text["tmca"]["enhance_stages"] == list(range(n_stages))
    network = build_vl_network("tmca", plans, plans.get_configuration("2d"), 1, 2)
    assert network.recompute_stages == list(range(n_stages))
    # TMCA trains on the pretrained report states: the preset's tmca section freezes the encoder
    assert text["tmca"]["text_lr_factor"] == 0 and not any(p.requires_grad for p in network.text_encoder.parameters())
    # a voxel cap below stage 0's grid: stage 0's enhancement attends from stage 1's grid, the others as they are
    conf = plans.get_configuration("2d")
    stage1_voxels = int(np.prod(np.asarray(conf.patch_size) // np.prod(conf.pool_op_kernel_sizes[:2], axis=0)))
    tmca_preset = load_preset("tmca")
    capped = tmp_path / "tmca_capped.json"
    capped.write_text(json.dumps(dict(tmca_preset, tmca=dict(tmca_preset["tmca"], enhance_max_voxels=stage1_voxels))),
                      encoding="utf-8")
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, plans_name="TMCACappedPlans", preset=str(capped))
    plans = PlansManager(str(folder / "TMCACappedPlans.json"))
    pools = plans.get_configuration("2d").configuration["text"]["tmca"]["enhance_pool"]
    assert pools[0] == list(conf.pool_op_kernel_sizes[1]) and all(k == [1, 1] for k in pools[1:])
    network = build_vl_network("tmca", plans, plans.get_configuration("2d"), 1, 2)
    assert network.enhancements["0"].pool == tuple(conf.pool_op_kernel_sizes[1])
    assert all(network.enhancements[str(s)].pool is None for s in range(1, n_stages))
    # the same cap for BiPVL's fusion: stage 0's image tokens come from stage 1's grid
    bipvl_capped = tmp_path / "bipvl_capped.json"
    bipvl_capped.write_text(json.dumps(dict(load_preset("bipvl"), fusion_max_voxels=stage1_voxels)), encoding="utf-8")
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, plans_name="BiPVLCappedPlans", preset=str(bipvl_capped))
    plans = PlansManager(str(folder / "BiPVLCappedPlans.json"))
    text = plans.get_configuration("2d").configuration["text"]
    assert text["fusion_stages"][0] == 0 and text["fusion_pool"][0] == list(conf.pool_op_kernel_sizes[1])
    assert all(k == [1, 1] for k in text["fusion_pool"][1:])
    network = build_vl_network("bipvl", plans, plans.get_configuration("2d"), 1, 2)
    assert network.fusion[0].pool == tuple(conf.pool_op_kernel_sizes[1])
    assert all(block.pool is None for block in network.fusion[1:])


def test_plans_with_batch_size_changes_only_the_batch_size(planned_2d, nnunet_folders, tmp_path):
    from nnunet_vl.planning.api import plans_with_batch_size

    plans = _load(nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans.json")
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    planned = plans["configurations"]["2d"]["batch_size"]
    assert plans_with_batch_size(tmp_path, "2d", None) == plans_with_batch_size(tmp_path, "2d", planned) \
        == "nnUNetPlans"
    assert [p.name for p in tmp_path.iterdir()] == ["nnUNetPlans.json"]
    identifier = plans_with_batch_size(tmp_path, "2d", planned + 1)
    assert identifier == f"nnUNetPlans_bs{planned + 1}"
    copy = _load(tmp_path / f"{identifier}.json")
    assert copy["configurations"]["2d"].pop("batch_size") == planned + 1 and copy.pop("plans_name") == identifier
    plans["configurations"]["2d"].pop("batch_size")
    plans.pop("plans_name")
    assert copy == plans  # same data identifier and text section: the preprocessed data is shared


def test_resenc_planner_keeps_its_image_plans(planned_2d, tiny_bert, nnunet_folders):
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
        nnUNetPlannerResEncM
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    from nnunet_vl.planning.api import plan_and_preprocess_vl

    plan_and_preprocess_vl(801, configurations=["2d"], planner="nnUNetPlannerResEncM", text_encoder=str(tiny_bert),
                           num_processes_fingerprint=1, no_preprocessing=True, plans_name="VLResEncM")
    plan_experiment_dataset(801, nnUNetPlannerResEncM, overwrite_plans_name="StockResEncM")
    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    vl, stock = _load(folder / "VLResEncM.json"), _load(folder / "StockResEncM.json")
    assert "ResidualEncoderUNet" in vl["configurations"]["2d"]["architecture"]["network_class_name"]
    assert _image_part(vl["configurations"]["2d"]) == _image_part(stock["configurations"]["2d"])
    assert "text" in vl["configurations"]["2d"]


def test_text_errors_stop_planning_before_anything_is_written(tiny_bert, nnunet_folders):
    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl
    from nnunet_vl.text.contract import TextContractError

    folder = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], 802, dim=2, num_train=4, num_test=1, size=32)
    reports = _load(folder / "reports.json")
    del reports["case_001"]
    reports["case_999"] = "stray"
    (folder / "reports.json").write_text(json.dumps(reports))
    with pytest.raises(TextContractError) as e:
        plan_and_preprocess_vl(802, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1)
    assert "case_001" in str(e.value) and "case_999" in str(e.value)
    assert not (nnunet_folders["nnUNet_preprocessed"] / folder.name).exists()


def test_direction_axes_from_image_geometry(tmp_path):
    # an axial CT stored with identity direction: numpy (z, y, x) = (S-I, A-P, L-R)
    axes, source = direction_axes_from_geometry({"sitk_stuff": {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}, [0, 1, 2])
    assert axes == {"left_right": 2, "anterior_posterior": 1, "superior_inferior": 0} and "cosines" in source
    # index axes permuted (x runs S-I, z runs L-R) and nnU-Net transposing (2, 0, 1)
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), dtype=np.float32))
    image.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    axes, _ = direction_axes_from_geometry({"sitk_stuff": {"direction": image.GetDirection()}}, [2, 0, 1])
    assert axes == {"superior_inferior": 0, "left_right": 1, "anterior_posterior": 2}
    axes, source = direction_axes_from_geometry({"spacing": [1, 1, 1]}, [0, 1, 2])
    assert axes["left_right"] == 2 and "convention" in source


def test_presets():
    assert load_preset("light")["fusion_stages"] == 2
    with pytest.raises(PresetError, match="bipvl"):
        load_preset("nope")


def test_class_text_auto_is_sentences_without_reports_and_token_with():
    from nnunet_vl.planning.planners import class_text_mode

    preset = dict(load_preset("bipvl"), class_text="auto")
    assert class_text_mode(preset, 0)[0] == "sentences"
    mode, why = class_text_mode(preset, 3)
    assert mode == "token" and "3 training case(s) with a report" in why
    assert class_text_mode(dict(preset, class_text="sentences"), 3)[0] == "sentences"
    assert class_text_mode({k: v for k, v in preset.items() if k != "class_text"}, 0)[0] == "token"
    with pytest.raises(PresetError, match="or \"auto\""):
        class_text_mode(dict(preset, class_text="words"), 0)


def test_class_text_sentences_reach_plans_network_and_text_budget(planned_2d, tiny_bert, nnunet_folders, tmp_path):
    """The preset's class_text and train_concepts reach the plans and the network; read as sentences, the class
    descriptions' tokens count in the fusion estimate (C * max_label_tokens instead of C tokens)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_vl.planning.api import plan_and_preprocess_vl
    from nnunet_vl.training.network_builder import build_vl_network

    preset = tmp_path / "sentences.json"
    preset.write_text(json.dumps(dict(load_preset("bipvl"), class_text="sentences", train_concepts=True)),
                      encoding="utf-8")
    plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                           no_preprocessing=True, plans_name="SentencesPlans", preset=str(preset))
    folder = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    token = _load(folder / "nnUNetPlans.json")["configurations"]["2d"]["text"]
    plans = PlansManager(str(folder / "SentencesPlans.json"))
    sentences = plans.get_configuration("2d").configuration["text"]
    assert (token["class_text"], token["train_concepts"]) == ("token", False)
    assert token["class_text_source"] == "preset 'bipvl': class_text token"
    assert (sentences["class_text"], sentences["train_concepts"]) == ("sentences", True)
    assert sum(sentences["fusion_vram_estimate_mb"].values()) > sum(token["fusion_vram_estimate_mb"].values())
    network = build_vl_network("bipvl", plans, plans.get_configuration("2d"), 1, 2)
    assert network.text_branch.class_text == "sentences" and network.train_concepts
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(load_preset("bipvl"), class_text="words")), encoding="utf-8")
    with pytest.raises(PresetError, match="class_text 'words'"):
        plan_and_preprocess_vl(801, configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                               no_preprocessing=True, plans_name="BadPlans", preset=str(bad))
