"""The cascade with a VL trainer: 3d_lowres exports the next stage's input in its final validation,
3d_cascade_fullres trains and validates on it, and nnUNetv2_predict_vl -prev_stage_predictions predicts with it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

DATASET_ID = 815
DATASET = "Dataset815_SynthVL3D"
TRAINER = "nnUNetTrainerBiPVL_cpu"
NUM_TRAIN = 5


@pytest.fixture(scope="module")
def cascade_planned(tiny_bert, nnunet_folders) -> Path:
    """A tiny 3D dataset planned for 3d_fullres, plus the 3d_lowres (spacing x2, next_stage 3d_cascade_fullres) and
    3d_cascade_fullres (previous_stage 3d_lowres) configurations nnU-Net's planner adds for larger images; 3d_lowres
    preprocessed with nnU-Net's preprocessor. Returns the preprocessed dataset folder."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    make_synthetic_dataset(nnunet_folders["nnUNet_raw"], DATASET_ID, dim=3, num_train=NUM_TRAIN, num_test=1, size=24,
                           seed=3)
    plan_and_preprocess_vl(DATASET_ID, configurations=["3d_fullres"], text_encoder=str(tiny_bert),
                           num_processes_fingerprint=1, num_processes=[1])
    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    configurations = plans["configurations"]
    fullres = configurations["3d_fullres"]
    configurations["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
        "spacing": [2 * s for s in fullres["spacing"]], "median_image_size_in_voxels": [12, 12, 12],
        "patch_size": [12, 12, 12], "next_stage": "3d_cascade_fullres"}
    configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=1))
    preprocess_dataset(DATASET_ID, "nnUNetPlans", ["3d_lowres"], [1])
    return folder


def train(configuration: str):
    """TRAINER on fold 'all' in this process as nnUNetv2_train runs it (training, then the final validation),
    shortened to 1 epoch of 2 iterations."""
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), configuration, "all", TRAINER, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.run_training()
    trainer.perform_actual_validation()
    return trainer


@pytest.fixture(scope="module")
def lowres_trained(cascade_planned):
    return train("3d_lowres")


@pytest.fixture(scope="module")
def cascade_trained(lowres_trained):
    return train("3d_cascade_fullres")


def test_lowres_validation_writes_next_stage_input(lowres_trained, cascade_planned):
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = Path(lowres_trained.output_folder_base) / "predicted_next_stage" / "3d_cascade_fullres"
    fullres = nnUNetDatasetBlosc2(str(cascade_planned / "nnUNetPlans_3d_fullres"))
    assert sorted(p.name for p in folder.glob("*.b2nd")) == sorted(f"{k}.b2nd" for k in fullres.identifiers)
    for case in fullres.identifiers:
        seg = blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:]
        data = fullres.load_case(case)[0]
        assert seg.shape[-3:] == data.shape[1:] and set(np.unique(seg)) <= {0, 1}


def test_cascade_trains_on_lowres_predictions_and_validates(cascade_trained, lowres_trained):
    assert cascade_trained.is_cascaded
    assert cascade_trained.folder_with_segs_from_previous_stage == str(
        Path(lowres_trained.output_folder_base) / "predicted_next_stage" / "3d_cascade_fullres")
    first_conv = next(m for m in cascade_trained.network.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 2  # the image plus the previous stage's one foreground label
    summary = json.loads((Path(cascade_trained.output_folder) / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == NUM_TRAIN and "foreground_mean" in summary


def predict_vl(nnunet_folders, configuration: str, out: Path, *extra: str) -> int:
    from nnunet_vl.cli.predict import main

    images = nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs"
    return main(["-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", configuration, "-f", "all", "-tr",
                 TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", "--disable_tta",
                 *extra])


def test_predict_vl_with_prev_stage_predictions(cascade_trained, nnunet_folders, tmp_path, capsys):
    import SimpleITK as sitk

    assert predict_vl(nnunet_folders, "3d_cascade_fullres", tmp_path / "x") == 1
    assert "-prev_stage_predictions" in capsys.readouterr().err
    assert predict_vl(nnunet_folders, "3d_lowres", tmp_path / "lowres") == 0
    assert predict_vl(nnunet_folders, "3d_cascade_fullres", tmp_path / "cascade", "-prev_stage_predictions",
                      str(tmp_path / "lowres")) == 0
    for image_file in (nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs").glob("*.nii.gz"):
        seg = sitk.ReadImage(str(tmp_path / "cascade" / image_file.name.replace("_0000", "")))
        assert seg.GetSize() == sitk.ReadImage(str(image_file)).GetSize()
