"""nnU-Net's own predictor refuses VL models at once (it would call them without text); ours asks for text."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"
TRAINER = "nnUNetTrainerBiPVL_cpu"
NO_TEXT = "nnUNetTrainerBiPVL_noText_cpu"
COPY_PLANS = "StockRefusalCopy"  # the _noText stand-in lives under its own plans folder name, never a real run's


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=os.environ)


@pytest.fixture(scope="module")
def model_folders(planned_2d, nnunet_folders) -> dict[str, Path]:
    """A trained BiPVL model folder, and a copy whose checkpoint names the _noText ablation as its trainer."""
    results = nnunet_folders["nnUNet_results"] / DATASET
    folder = results / f"{TRAINER}__nnUNetPlans__2d"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        result = run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", TRAINER, "-device", "cpu")
        assert result.returncode == 0, result.stderr[-3000:]
    no_text = results / f"{NO_TEXT}__{COPY_PLANS}__2d"
    if not no_text.is_dir():
        (no_text / "fold_0").mkdir(parents=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copy(folder / name, no_text / name)
        checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        checkpoint["trainer_name"] = NO_TEXT
        torch.save(checkpoint, no_text / "fold_0" / "checkpoint_final.pth")
    return {TRAINER: folder, NO_TEXT: no_text}


@pytest.mark.parametrize("trainer, plans, command", [(TRAINER, "nnUNetPlans", "nnUNetv2_predict"),
                                                     (NO_TEXT, COPY_PLANS, "nnUNetv2_predict_from_modelfolder")])
def test_stock_commands_fail_at_once_naming_predict_vl(model_folders, nnunet_folders, tmp_path, trainer, plans,
                                                       command):
    images = nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs"
    out = tmp_path / "out"
    if command == "nnUNetv2_predict":
        args = ["-d", DATASET, "-tr", trainer, "-p", plans, "-c", "2d"]
    else:
        args = ["-m", str(model_folders[trainer])]
    result = run(command, "-i", str(images), "-o", str(out), *args, "-f", "0", "-device", "cpu", "-npp", "1",
                 "-nps", "1", "--disable_progress_bar")
    assert result.returncode != 0
    assert "StockPredictorError" in result.stderr and "nnUNetv2_predict_vl" in result.stderr
    assert f"-d {DATASET} -tr {trainer} -p nnUNetPlans -c 2d -f 0" in result.stderr  # the command to run instead
    assert "--text-mode none" in result.stderr
    assert "cases in the source folder" not in result.stdout  # refused while loading the model, before any case
    assert not list(out.glob("*.png"))


def test_stock_predictor_in_python_refused_and_network_needs_text(model_folders):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_vl.inference.predictor import nnUNetPredictorVL
    from nnunet_vl.networks.text_inputs import TextRequiredError
    from nnunet_vl.training.network_builder import StockPredictorError

    stock = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(StockPredictorError, match="nnUNetv2_predict_vl"):
        stock.initialize_from_trained_model_folder(str(model_folders[TRAINER]), (0,))
    ours = nnUNetPredictorVL(device=torch.device("cpu"), allow_tqdm=False)
    ours.initialize_from_trained_model_folder(str(model_folders[TRAINER]), (0,))
    # a VL network handed to nnU-Net's predictor by hand still never predicts without text
    stock.manual_initialization(ours.network, ours.plans_manager, ours.configuration_manager,
                                ours.list_of_parameters, ours.dataset_json, ours.trainer_name, None)
    image = torch.zeros(1, 1, *ours.configuration_manager.patch_size)  # (c, 1, x, y): a 2D case
    with pytest.raises(TextRequiredError, match="--text-mode none"):
        stock.predict_logits_from_preprocessed_data(image)
