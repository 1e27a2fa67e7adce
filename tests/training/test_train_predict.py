"""The stock nnU-Net commands on VL plans: train (incl. resume), validate, predict with every text mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"


def run(*cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=os.environ)
    if ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def fold_dir(folders: dict, trainer: str) -> Path:
    return folders["nnUNet_results"] / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0"


def _trained(planned_2d, nnunet_folders, trainer: str) -> None:
    if not (fold_dir(nnunet_folders, trainer) / "checkpoint_final.pth").is_file():
        run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", trainer, "-device", "cpu")


def test_stock_trainer_trains_on_vl_plans(planned_2d, nnunet_folders):
    run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", "nnUNetTrainer_cpu", "-device", "cpu")
    assert (fold_dir(nnunet_folders, "nnUNetTrainer_cpu") / "checkpoint_final.pth").is_file()


@pytest.fixture(scope="module", params=["nnUNetTrainerBiPVL_cpu", "nnUNetTrainerTMCA_cpu"])
def trained(request, planned_2d, nnunet_folders) -> str:
    _trained(planned_2d, nnunet_folders, request.param)
    return request.param


def test_training_writes_checkpoint_with_text_assets_and_log(trained, nnunet_folders):
    folder = fold_dir(nnunet_folders, trained)
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    assert any("text_encoder.encoder.layer" in k for k in weights)  # encoder weights travel with the model
    assets = weights["text_assets._extra_state"]
    assert "tokenizer.json" in assets["tokenizer_files"] or "vocab.txt" in assets["tokenizer_files"]
    assert [name for name, _ in assets["label_texts"]] == ["background", "target"]
    logging = checkpoint["logging"]
    terms = [k for k in logging if k.startswith("train_") and k != "train_losses"]
    assert terms and all(len(logging[k]) == 2 and np.all(np.isfinite(logging[k])) for k in terms)
    # the segmentation part of the training loss is logged apart (progress.png compares it with val_losses)
    assert "train_segmentation" in terms and len(terms) > 1
    assert not np.allclose(logging["train_segmentation"], logging["train_losses"])
    assert (folder / "progress.png").is_file()
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary


def test_resume_with_c_continues_to_the_same_folder(trained, planned_2d, nnunet_folders):
    folder = fold_dir(nnunet_folders, trained)
    final = folder / "checkpoint_final.pth"
    epochs_before = torch.load(final, map_location="cpu", weights_only=False)["current_epoch"]
    # an interrupted run: only the checkpoint after the first epoch is left
    best = torch.load(folder / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    best["current_epoch"] = 1
    torch.save(best, folder / "checkpoint_latest.pth")
    final.unlink()
    result = run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", trained, "-device", "cpu", "--c")
    assert "epoch:  1" in result.stdout.replace("Epoch 1", "epoch:  1")
    assert "epoch:  0" not in result.stdout.replace("Epoch 0", "epoch:  0")
    assert torch.load(final, map_location="cpu", weights_only=False)["current_epoch"] == epochs_before


def _predict(planned_2d, nnunet_folders, trainer, out: Path, *extra: str, ok: bool = True):
    images = nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs"
    return run("nnUNetv2_predict_vl", "-i", str(images), "-o", str(out), "-d", str(planned_2d), "-c", "2d",
               "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
               *extra, ok=ok)


def test_predict_matches_input_geometry_and_reads_the_text(trained, planned_2d, nnunet_folders, tmp_path):
    raw = nnunet_folders["nnUNet_raw"] / DATASET
    _predict(planned_2d, nnunet_folders, trained, tmp_path / "report", "--save_probabilities")
    _predict(planned_2d, nnunet_folders, trained, tmp_path / "shuffled", "--text-mode", "shuffled",
             "--save_probabilities")
    cases = sorted(p.name[: -len("_0000.png")] for p in (raw / "imagesTs").glob("*.png"))
    for case in cases:
        image = np.asarray(Image.open(raw / "imagesTs" / f"{case}_0000.png"))
        seg = np.asarray(Image.open(tmp_path / "report" / f"{case}.png"))
        assert seg.shape == image.shape and set(np.unique(seg)) <= {0, 1}
    changed = [not np.allclose(np.load(tmp_path / "report" / f"{c}.npz")["probabilities"],
                               np.load(tmp_path / "shuffled" / f"{c}.npz")["probabilities"]) for c in cases]
    assert all(changed)  # the report reaches the output for every case


def test_predict_errors_and_continue(trained, planned_2d, nnunet_folders, tmp_path):
    reports = tmp_path / "reports.csv"
    reports.write_text("case_id,report\ncase_012,left\ncase_012,right\n")
    result = _predict(planned_2d, nnunet_folders, trained, tmp_path / "dup", "--reports", str(reports), ok=False)
    assert result.returncode == 1 and "more than one report" in result.stderr and "Traceback" not in result.stderr
    reports.write_text("case_id,report\ncase_012,left lesion\n")
    result = _predict(planned_2d, nnunet_folders, trained, tmp_path / "missing", "--reports", str(reports), ok=False)
    assert result.returncode == 1 and "have no report" in result.stderr and "--text-mode none" in result.stderr
    assert not list((tmp_path / "missing").glob("*.png"))  # failed before predicting anything
    out = tmp_path / "none"
    _predict(planned_2d, nnunet_folders, trained, out, "--text-mode", "none")
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    _predict(planned_2d, nnunet_folders, trained, out, "--text-mode", "none", "--continue_prediction")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == first


def test_training_without_text_plans_fails_clearly(planned_2d, nnunet_folders):
    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    for conf in plans["configurations"].values():
        conf.pop("text", None)
    (folder / "NoTextPlans.json").write_text(json.dumps(plans))
    result = run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", "nnUNetTrainerBiPVL_cpu", "-device", "cpu",
                 "-p", "NoTextPlans", ok=False)
    assert result.returncode != 0
    assert "planned without text" in result.stderr + result.stdout
    assert f"nnUNetv2_plan_and_preprocess_vl -d {DATASET}" in result.stderr + result.stdout



def test_tmca_attention_maps_match_the_input(planned_2d, nnunet_folders, tmp_path):
    _trained(planned_2d, nnunet_folders, "nnUNetTrainerTMCA_cpu")
    out = tmp_path / "att"
    _predict(planned_2d, nnunet_folders, "nnUNetTrainerTMCA_cpu", out, "--save-attention")
    raw = nnunet_folders["nnUNet_raw"] / DATASET
    for image_file in (raw / "imagesTs").glob("*.png"):
        case = image_file.name[: -len("_0000.png")]
        attention = np.asarray(Image.open(out / "attention" / f"{case}.png"))
        assert attention.shape == np.asarray(Image.open(image_file)).shape
        assert attention.dtype == np.uint8 and attention.std() > 0  # a spatial map, not a constant
        assert (out / f"{case}.png").is_file()


def test_attention_export_needs_a_tmca_model(planned_2d, nnunet_folders, tmp_path):
    _trained(planned_2d, nnunet_folders, "nnUNetTrainerBiPVL_cpu")
    result = _predict(planned_2d, nnunet_folders, "nnUNetTrainerBiPVL_cpu", tmp_path / "x", "--save-attention",
                      ok=False)
    assert result.returncode == 1 and "--save-attention needs a model with attention maps" in result.stderr


def test_3d_fullres_train_and_predict(tiny_bert, nnunet_folders, tmp_path):
    import SimpleITK as sitk

    from nnunet_vl.data.synthetic import make_synthetic_dataset

    raw = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], 803, dim=3, num_train=6, num_test=2, size=32, seed=2)
    run("nnUNetv2_plan_and_preprocess_vl", "-d", "803", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
        "--text-encoder", str(tiny_bert))
    plans = json.loads((nnunet_folders["nnUNet_preprocessed"] / raw.name / "nnUNetPlans.json").read_text())
    axes = plans["configurations"]["3d_fullres"]["text"]["direction_axes"]
    assert axes == {"left_right": 2, "anterior_posterior": 1, "superior_inferior": 0}  # identity direction, LPS
    run("nnUNetv2_train", "803", "3d_fullres", "0", "-tr", "nnUNetTrainerBiPVL_cpu", "-device", "cpu")
    out = tmp_path / "pred3d"
    run("nnUNetv2_predict_vl", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "803", "-c", "3d_fullres", "-f",
        "0", "-tr", "nnUNetTrainerBiPVL_cpu", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar")
    for image_file in (raw / "imagesTs").glob("*.nii.gz"):
        image = sitk.ReadImage(str(image_file))
        seg = sitk.ReadImage(str(out / image_file.name.replace("_0000", "")))
        assert seg.GetSize() == image.GetSize() and seg.GetDirection() == image.GetDirection()
