"""The cascade with a VL trainer: 3d_lowres exports the next stage's input in its final validation,
3d_cascade_fullres trains and validates on it, and nnUNetv2_predict_vl -prev_stage_predictions predicts with it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

DATASET_ID = 815
DATASET = "Dataset815_SynthVL3D"
TRAINER = "nnUNetTrainerBiPVL_cpu"
NUM_TRAIN = 2  # fold 'all' validates on the training cases, so every case gets a lowres prediction


@pytest.fixture(scope="module")
def cascade_planned(tiny_bert, nnunet_folders) -> Path:
    """A tiny 3D dataset planned for 3d_fullres, plus the 3d_lowres (spacing x2, next_stage 3d_cascade_fullres) and
    3d_cascade_fullres (previous_stage 3d_lowres) configurations nnU-Net's planner adds for larger images. Both
    preprocessed as nnUNetv2_preprocess does, case by case in this process (its pool costs more than the tiny cases).
    Returns the preprocessed dataset folder."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    raw = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], DATASET_ID, dim=3, num_train=NUM_TRAIN, num_test=0,
                                 size=24, seed=3)
    plan_and_preprocess_vl(DATASET_ID, configurations=["3d_fullres"], text_encoder=str(tiny_bert),
                           num_processes_fingerprint=1, no_preprocessing=True)
    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    configurations = plans["configurations"]
    configurations["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
        "spacing": [2 * s for s in configurations["3d_fullres"]["spacing"]],
        "median_image_size_in_voxels": [12, 12, 12], "patch_size": [12, 12, 12], "next_stage": "3d_cascade_fullres"}
    configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=1))
    plans_manager = PlansManager(plans)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    (folder / "gt_segmentations").mkdir()
    for case, files in get_filenames_of_train_images_and_targets(str(raw), dataset_json).items():
        shutil.copy(files["label"], folder / "gt_segmentations" / f"{case}{dataset_json['file_ending']}")
        for configuration in ("3d_fullres", "3d_lowres"):
            manager = plans_manager.get_configuration(configuration)
            (folder / manager.data_identifier).mkdir(exist_ok=True)
            DefaultPreprocessor(verbose=False).run_case_save(str(folder / manager.data_identifier / case),
                                                             files["images"], files["label"], plans_manager, manager,
                                                             dataset_json)
    return folder


def trainer_for(configuration: str, trainer: str = TRAINER):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(DATASET_ID), configuration, "all", trainer, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def lowres_validated(cascade_planned):
    """The 3d_lowres final validation as `nnUNetv2_train ... --val` runs it, here on the untrained network."""
    trainer = trainer_for("3d_lowres")
    trainer.initialize()
    trainer.perform_actual_validation()
    return trainer


@pytest.fixture(scope="module")
def cascade_trained(lowres_validated):
    """3d_cascade_fullres on fold 'all' in this process as nnUNetv2_train runs it (training, then the final
    validation), shortened to 1 epoch of 1 iteration."""
    trainer = trainer_for("3d_cascade_fullres")
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 1, 1
    trainer.logger.plot_progress_png = lambda output_folder: None  # seconds per epoch; tested with nnUNetv2_train
    trainer.run_training()
    trainer.perform_actual_validation()
    return trainer


def test_lowres_validation_writes_next_stage_input(lowres_validated, cascade_planned):
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = Path(lowres_validated.output_folder_base) / "predicted_next_stage" / "3d_cascade_fullres"
    fullres = nnUNetDatasetBlosc2(str(cascade_planned / "nnUNetPlans_3d_fullres"))
    assert sorted(p.name for p in folder.glob("*.b2nd")) == sorted(f"{k}.b2nd" for k in fullres.identifiers)
    for case in fullres.identifiers:
        seg = blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:]
        data = fullres.load_case(case)[0]
        assert seg.shape[-3:] == data.shape[1:] and set(np.unique(seg)) <= {0, 1}


def test_cascade_trains_on_lowres_predictions_and_validates(cascade_trained, lowres_validated):
    assert cascade_trained.is_cascaded
    assert cascade_trained.folder_with_segs_from_previous_stage == str(
        Path(lowres_validated.output_folder_base) / "predicted_next_stage" / "3d_cascade_fullres")
    first_conv = next(m for m in cascade_trained.network.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 2  # the image plus the previous stage's one foreground label
    summary = json.loads((Path(cascade_trained.output_folder) / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == NUM_TRAIN and "foreground_mean" in summary


def test_tmca_network_takes_the_previous_stage_channels(cascade_planned):
    """The other method, cheaper: TMCA's trainer builds its network for 3d_cascade_fullres with nnU-Net's input channel
    count (image + one-hot previous stage) and predicts from such input."""
    trainer = trainer_for("3d_cascade_fullres", "nnUNetTrainerTMCA_cpu")
    trainer.initialize()
    assert trainer.num_input_channels == 2
    trainer.network.eval()
    with torch.no_grad():
        output = trainer.network(torch.zeros(1, 2, 24, 24, 24), trainer.text_provider.inputs(["case_000"]))
    assert output[0].shape == (1, 2, 24, 24, 24)


def predict_vl(nnunet_folders, images: Path, out: Path, *extra: str) -> int:
    from nnunet_vl.cli.predict import main

    return main(["-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_cascade_fullres", "-f", "all",
                 "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", "--disable_tta",
                 *extra])


def test_predict_vl_with_prev_stage_predictions(cascade_trained, nnunet_folders, tmp_path, capsys):
    import SimpleITK as sitk

    raw = nnunet_folders["nnUNet_raw"] / DATASET
    images, previous = tmp_path / "images", tmp_path / "lowres"
    images.mkdir()
    previous.mkdir()
    # a training case, its label standing in for the lowres prediction (nnUNetv2_predict_vl -c 3d_lowres writes
    # the same files)
    image_file = images / "case_000_0000.nii.gz"
    shutil.copy(raw / "imagesTr" / image_file.name, image_file)
    shutil.copy(raw / "labelsTr" / "case_000.nii.gz", previous / "case_000.nii.gz")
    assert predict_vl(nnunet_folders, images, tmp_path / "x") == 1
    assert "-prev_stage_predictions FOLDER" in capsys.readouterr().err
    assert predict_vl(nnunet_folders, images, tmp_path / "cascade", "-prev_stage_predictions", str(previous)) == 0
    seg = sitk.ReadImage(str(tmp_path / "cascade" / "case_000.nii.gz"))
    assert seg.GetSize() == sitk.ReadImage(str(image_file)).GetSize()
