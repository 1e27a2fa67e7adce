"""One orientation per dataset: planning refuses images whose axes run along different anatomical axes, and the
plans show the dataset's lateral pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_vl.planning.orientation import (MixedOrientationError, check_dataset_orientations, check_orientations,
                                            orientation_code)

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
SAGITTAL = (0, 0, 1, 1, 0, 0, 0, 1, 0)  # index x runs A-P... (axes permuted)


def _raw_dataset(folder: Path, directions: dict[str, tuple], labels: dict | None = None, **extra) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case, direction in directions.items():
        image = sitk.GetImageFromArray(rng.random((8, 8, 8)).astype(np.float32))
        seg = sitk.GetImageFromArray((np.arange(512).reshape(8, 8, 8) % 3).astype(np.uint8))
        for im in (image, seg):
            im.SetDirection(direction)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(seg, str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "a": 1, "b": 2},
               "numTraining": len(directions), "file_ending": ".nii.gz", **extra}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def test_orientation_codes():
    assert orientation_code(IDENTITY) == "LPS" and orientation_code(RAS) == "RAS"
    assert orientation_code(SAGITTAL) == "PSL"
    assert orientation_code((1, 0, 0, 1)) is None  # 2D
    check_orientations({"a": "LPS", "b": "RAS", "c": "LPI"})  # signs differ only: same axes, accepted


def test_mixed_orientations_are_refused_naming_the_cases(tmp_path):
    folder = _raw_dataset(tmp_path / "raw", {"case_0": IDENTITY, "case_1": RAS, "case_2": SAGITTAL})
    with pytest.raises(MixedOrientationError) as e:
        check_dataset_orientations(folder, json.loads((folder / "dataset.json").read_text()))
    message = str(e.value)
    assert "\n" not in message and "case_2 (PSL)" in message and "case_0 (LPS)" in message
    assert "case_1" not in message.split(":", 1)[1].split(";")[0]  # case_1 only flips signs: not named
    assert "reorient" in message and "RAS" in message


def test_planning_refuses_mixed_orientations_before_writing(tiny_bert, nnunet_folders):
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    name = "Dataset881_MixedOrientation"
    _raw_dataset(nnunet_folders["nnUNet_raw"] / name, {"case_0": IDENTITY, "case_1": SAGITTAL})
    with pytest.raises(MixedOrientationError, match="case_1"):
        plan_and_preprocess_vl(881, configurations=["3d_fullres"], text_encoder=str(tiny_bert),
                               num_processes_fingerprint=1, allow_missing_reports=True, no_preprocessing=True)
    assert not (nnunet_folders["nnUNet_preprocessed"] / name).exists()


def test_plans_text_section_shows_the_lateral_pairs(tiny_bert):
    from nnunet_vl.planning.planners import load_preset, nnUNetPlannerVL
    from nnunet_vl.text.encoders import encoder_config
    from nnunet_vl.text.laterality import dataset_lateral_pairs

    planner = object.__new__(nnUNetPlannerVL)  # the text section only: the image plans are nnU-Net's
    planner.UNet_vram_target_GB = 8
    tokens = {"p95": 16}
    fingerprint = {"report_tokens": tokens, "label_text_tokens": tokens, "concept_tokens": tokens,
                   "training_cases_with_report": 4}
    conf = {"patch_size": [8, 8, 8], "batch_size": 2,
            "architecture": {"arch_kwargs": {"n_stages": 2, "strides": [[1, 1, 1], [2, 2, 2]],
                                             "features_per_stage": [8, 16]}}}
    properties = {"sitk_stuff": {"direction": IDENTITY}}
    labels = {"background": 0, "kidney_left": 1, "kidney_right": 2}
    for dataset_json, pairs, source in (({"labels": labels}, [["kidney_left", "kidney_right"]], "detected"),
                                        ({"labels": labels, "lateral_pairs": []}, [], "dataset.json")):
        planner.configure_text(load_preset("bipvl"), str(tiny_bert), encoder_config(str(tiny_bert)), fingerprint,
                               list(labels), properties, lateral_pairs=dataset_lateral_pairs(dataset_json))
        text = planner.text_section(conf, "3d_fullres", [0, 1, 2])
        assert text["lateral_pairs"] == pairs and source in text["lateral_pairs_source"]
        assert text["direction_axes"]["left_right"] == 2
