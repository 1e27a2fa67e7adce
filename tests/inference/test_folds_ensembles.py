"""Folds and ensembles as with nnU-Net: predict with several folds, --save_probabilities + nnUNetv2_ensemble,
nnUNetv2_train --val --npz, nnUNetv2_find_best_configuration with its printed command run as nnUNetv2_predict_vl,
attention maps over folds.

One VL model family (TMCA, the one with attention maps) serves every test: the three predictions (fold 0, fold 1,
folds 0 1) save probabilities and attention maps at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"
TRAINER = "nnUNetTrainerTMCA_cpu"
FOLDS = ("0", "1")


def run(*cmd: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def two_folds(planned_2d: int, folder: Path, trainer: str) -> Path:
    """Fold 0 trained (2 short epochs, shared with other tests) and fold 1 a copy of it with every weight scaled
    by a random factor near 1: another model at the cost of none (a second training would add minutes)."""
    import torch

    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", trainer, "-device", "cpu")
    target = folder / "fold_1" / "checkpoint_final.pth"
    if not target.is_file():
        checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        generator = torch.Generator().manual_seed(1)
        for name, value in checkpoint["network_weights"].items():
            if torch.is_tensor(value) and value.is_floating_point():
                noise = torch.randn(value.shape, generator=generator, dtype=torch.float32).to(value.dtype)
                checkpoint["network_weights"][name] = value * (1 + 0.2 * noise)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, target)
    return folder


@pytest.fixture(scope="module")
def model_folder(planned_2d, nnunet_folders) -> Path:
    """TMCA on folds 0 and 1."""
    return two_folds(planned_2d, nnunet_folders["nnUNet_results"] / DATASET / f"{TRAINER}__nnUNetPlans__2d", TRAINER)


def predict(out: Path, *folds: str, extra: tuple[str, ...] = ()) -> Path:
    images = Path(os.environ["nnUNet_raw"]) / DATASET / "imagesTs"
    run("nnUNetv2_predict_vl", "-i", str(images), "-o", str(out), "-d", DATASET, "-c", "2d", "-tr", TRAINER,
        "-f", *folds, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", "--save_probabilities",
        "--save-attention", *extra)
    return out


def probabilities(folder: Path) -> dict[str, np.ndarray]:
    return {p.name[:-4]: np.load(p)["probabilities"].astype(np.float64) for p in sorted(folder.glob("*.npz"))}


@pytest.fixture(scope="module")
def predictions(model_folder, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folds")
    return {"0": predict(root / "f0", "0"), "1": predict(root / "f1", "1"), "01": predict(root / "f01", *FOLDS)}


def test_several_folds_average_their_logits(predictions):
    """nnU-Net averages the folds' logits: for two classes the logit difference of -f 0 1 is the folds' mean."""
    p0, p1, p01 = (probabilities(predictions[k]) for k in ("0", "1", "01"))
    assert p01 and p01.keys() == p0.keys() == p1.keys()
    for case in p01:
        margin = [np.log(p[case][1]) - np.log(p[case][0]) for p in (p0, p1, p01)]
        moderate = np.all([(p[case] > 1e-4) & (p[case] < 1 - 1e-4) for p in (p0, p1, p01)], axis=(0, 1))
        assert moderate.mean() > 0.5
        # probabilities are saved as float16: their log ratio carries about 1e-3 relative error
        np.testing.assert_allclose(margin[2][moderate], (margin[0][moderate] + margin[1][moderate]) / 2, rtol=2e-3,
                                   atol=5e-3)
        assert not np.allclose(p0[case], p1[case])  # two different models


def test_nnunet_ensemble_of_vl_predictions(predictions, tmp_path):
    out = tmp_path / "ensemble"
    run("nnUNetv2_ensemble", "-i", str(predictions["0"]), str(predictions["1"]), "-o", str(out), "-np", "1",
        "--save_npz")
    p0, p1 = probabilities(predictions["0"]), probabilities(predictions["1"])
    for case in p0:
        mean = (p0[case] + p1[case]) / 2
        np.testing.assert_allclose(np.load(out / f"{case}.npz")["probabilities"], mean, atol=1e-5)
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert np.array_equal(seg, mean.argmax(0)[0])


def test_val_npz_and_find_best_configuration(model_folder, planned_2d, nnunet_folders, tmp_path):
    fold = model_folder / "fold_1"
    assert not (fold / "validation" / "summary.json").exists()
    run("nnUNetv2_train", str(planned_2d), "2d", "1", "-tr", TRAINER, "-device", "cpu", "--val", "--npz")
    assert (fold / "validation" / "summary.json").is_file()
    cases = sorted(p.name[:-4] for p in (fold / "validation").glob("*.npz"))
    assert cases and all((fold / "validation" / f"{c}.png").is_file() for c in cases)

    run("nnUNetv2_find_best_configuration", str(planned_2d), "-c", "2d", "-tr", TRAINER, "-f", *FOLDS, "-np", "1",
        "--disable_ensembling")
    instructions = (nnunet_folders["nnUNet_results"] / DATASET / "inference_instructions.txt").read_text()
    command = next(line for line in instructions.splitlines() if line.startswith("nnUNetv2_predict "))
    assert f"-tr {TRAINER}" in command and "-f  0 1" in command
    # the printed command, run as README documents it: nnUNetv2_predict -> nnUNetv2_predict_vl, same flags
    images = nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs"
    vl = command.replace("nnUNetv2_predict ", "nnUNetv2_predict_vl ", 1).replace("INPUT_FOLDER", str(images)) \
        .replace("OUTPUT_FOLDER", str(tmp_path / "best")).split()
    run(*vl, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar")
    assert sorted(p.name for p in (tmp_path / "best").glob("*.png")) == \
        sorted(p.name.replace("_0000", "") for p in images.glob("*.png"))


def test_attention_maps_over_folds_are_the_folds_mean(predictions):
    maps = {name: {p.name: np.asarray(Image.open(p)).astype(float) for p in sorted((out / "attention").glob("*"))}
            for name, out in predictions.items()}
    assert maps["01"] and maps["01"].keys() == maps["0"].keys()
    for case, both in maps["01"].items():
        assert np.abs(both - (maps["0"][case] + maps["1"][case]) / 2).max() <= 1.0  # uint8 rounding
        assert not np.array_equal(maps["0"][case], maps["1"][case])
