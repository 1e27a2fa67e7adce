"""Warm start from a trained image-only nnU-Net: nnUNetv2_train_vl -pretrained_weights, and the stock flag refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"


def _plans(nnunet_folders) -> tuple[dict, dict]:
    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    return plans, json.loads((folder / "dataset.json").read_text())


def _trainer(cls, nnunet_folders):
    plans, dataset_json = _plans(nnunet_folders)
    trainer = cls(plans, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


@pytest.fixture(scope="module")
def image_checkpoint(planned_2d, nnunet_folders, tmp_path_factory) -> Path:
    """An image-only nnU-Net checkpoint as nnUNetTrainer saves it, its weights moved off their initialisation."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = _trainer(nnUNetTrainer, nnunet_folders)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no weight may keep a value a fresh network also has
    path = tmp_path_factory.mktemp("image_only") / "checkpoint_final.pth"
    trainer.save_checkpoint(str(path))
    return path


def _outputs_agree(vl_trainer, image_network: torch.nn.Module) -> bool:
    from nnunet_vl.training.text_predictor import unwrap

    network = unwrap(vl_trainer.network)
    network.eval()
    image_network.eval()
    keys = sorted(vl_trainer.text_provider.reports)[:2]
    text = vl_trainer.text_provider.inputs(keys, mode="report")
    x = torch.randn(2, 1, *vl_trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vl_out, image_out = network(x, text), image_network(x)
    return all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(vl_out, image_out))


@pytest.mark.parametrize("method", ["BiPVL", "TMCA"])
def test_warm_started_network_computes_the_image_only_model(method, image_checkpoint, nnunet_folders, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_vl.training import nnUNetTrainerBiPVL, nnUNetTrainerTMCA
    from nnunet_vl.training.warm_start import PRETRAINED_WEIGHTS_ENV

    cls = {"BiPVL": nnUNetTrainerBiPVL.nnUNetTrainerBiPVL_cpu, "TMCA": nnUNetTrainerTMCA.nnUNetTrainerTMCA_cpu}[method]
    image = _trainer(nnUNetTrainer, nnunet_folders).network
    image.load_state_dict(torch.load(image_checkpoint, map_location="cpu", weights_only=False)["network_weights"])
    cold = _trainer(cls, nnunet_folders)
    assert not _outputs_agree(cold, image)  # a fresh VL network is not the trained model
    monkeypatch.setenv(PRETRAINED_WEIGHTS_ENV, str(image_checkpoint))
    warm = _trainer(cls, nnunet_folders)
    assert _outputs_agree(warm, image)  # segmentation layers included, fusion gates closed
    gates = [p for n, p in warm.network.named_parameters() if n.endswith("_gate")]
    assert gates and all(float(g.detach().abs().max()) == 0.0 for g in gates)
    log = Path(warm.log_file).read_text()
    assert "Warm start:" in log and str(image_checkpoint) in log


def test_checkpoint_of_another_configuration_is_named_with_every_mismatch(image_checkpoint, nnunet_folders,
                                                                         tmp_path, monkeypatch):
    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL_cpu
    from nnunet_vl.training.warm_start import PRETRAINED_WEIGHTS_ENV, WarmStartError

    checkpoint = torch.load(image_checkpoint, map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    first = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 4)
    weights[first] = torch.zeros(*weights[first].shape[:-1], weights[first].shape[-1] + 2)
    dropped = next(k for k in weights if "seg_layers" in k)
    del weights[dropped]
    bad = tmp_path / "other.pth"
    torch.save(checkpoint, bad)
    monkeypatch.setenv(PRETRAINED_WEIGHTS_ENV, str(bad))
    with pytest.raises(WarmStartError) as error:
        _trainer(nnUNetTrainerBiPVL_cpu, nnunet_folders)
    message = str(error.value)
    assert str(bad) in message and first in message and dropped in message and "same plans" in message


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_vl_pretrained_weights"}
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=env)


def test_nnunetv2_train_vl_warm_starts_and_stock_flag_is_refused(image_checkpoint, planned_2d, nnunet_folders):
    # a copy of the plans under another name: its own results folder, the same preprocessed data
    preprocessed = nnunet_folders["nnUNet_preprocessed"] / DATASET
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansWarm"
    (preprocessed / "nnUNetPlansWarm.json").write_text(json.dumps(plans))
    args = [str(planned_2d), "2d", "0", "-tr", "nnUNetTrainerBiPVL_cpu", "-p", "nnUNetPlansWarm", "-device", "cpu",
            "-pretrained_weights", str(image_checkpoint)]

    stock = _run("nnUNetv2_train", *args)
    assert stock.returncode != 0
    assert "nnUNetv2_train_vl" in stock.stderr and "is missing" not in stock.stderr

    result = _run("nnUNetv2_train_vl", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    folder = nnunet_folders["nnUNet_results"] / DATASET / "nnUNetTrainerBiPVL_cpu__nnUNetPlansWarm__2d" / "fold_0"
    # the refused stock run left its own (earlier) log in the same folder: the last one is this training's
    log = max(folder.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime).read_text()
    assert "Warm start:" in log
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    gates = [v for k, v in final.items() if k.endswith("_gate")]
    assert any(float(g.abs().max()) > 0 for g in gates)  # training then opened the text path
    assert np.isfinite(json.loads((folder / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"])

    shutil.rmtree(folder.parent)


def test_continue_and_pretrained_weights_together_are_refused(image_checkpoint):
    from nnunet_vl.cli.train import training_argv

    with pytest.raises(ValueError, match="--c"):
        training_argv(["801", "2d", "0", "-tr", "nnUNetTrainerBiPVL_cpu", "-pretrained_weights",
                       str(image_checkpoint), "--c"])
    argv = ["801", "2d", "0", "-tr", "nnUNetTrainer_cpu", "-pretrained_weights", str(image_checkpoint)]
    assert training_argv(argv) == (argv, None)  # image-only: nnU-Net's own loader gets the flag
