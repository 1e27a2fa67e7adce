"""nnU-Net's Python API on nnUNetPredictorVL: predict_single_npy_array(..., report=), predict_from_files(...,
reports=), and nnUNetv2_predict_vl --report for one image."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"
TRAINER = "nnUNetTrainerBiPVL_cpu"


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=os.environ)


@pytest.fixture(scope="module")
def model_folder(planned_2d, nnunet_folders) -> Path:
    folder = nnunet_folders["nnUNet_results"] / DATASET / f"{TRAINER}__nnUNetPlans__2d"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        result = run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", TRAINER, "-device", "cpu")
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


def make_predictor(model_folder: Path, text_mode: str = "report"):
    from nnunet_vl.inference.predictor import nnUNetPredictorVL

    predictor = nnUNetPredictorVL(device=torch.device("cpu"), allow_tqdm=False, text_mode=text_mode)
    predictor.initialize_from_trained_model_folder(str(model_folder), (0,))
    return predictor


@pytest.fixture(scope="module")
def predictor(model_folder):
    return make_predictor(model_folder)


@pytest.fixture(scope="module")
def case(nnunet_folders, predictor) -> dict:
    """One test case: its image file, the image as nnU-Net's reader gives it, and its report."""
    image_file = sorted((nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs").glob("*_0000.png"))[0]
    image, properties = predictor.plans_manager.image_reader_writer_class().read_images([str(image_file)])
    name = image_file.name[: -len("_0000.png")]
    return {"file": image_file, "name": name, "image": image, "properties": properties,
            "report": predictor.text_provider.reports[name]}


def other_report(predictor, name: str) -> str:
    return next(r for c, r in sorted(predictor.text_provider.reports.items()) if r != predictor.text_provider.reports[name])


def test_single_npy_array_returns_what_nnunet_returns_and_reads_the_report(predictor, case):
    seg = predictor.predict_single_npy_array(case["image"], case["properties"], report=case["report"])
    assert isinstance(seg, np.ndarray) and seg.shape == case["image"].shape[1:]  # (1, H, W) for a 2D image
    assert set(np.unique(seg)) <= {0, 1}
    seg2, probabilities = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                             save_or_return_probabilities=True, report=case["report"])
    assert np.array_equal(seg, seg2)
    assert probabilities.shape == (2, *case["image"].shape[1:])
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-5)
    _, shuffled = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                     save_or_return_probabilities=True,
                                                     report=other_report(predictor, case["name"]))
    assert not np.allclose(shuffled, probabilities)  # the report reaches the output


def test_single_npy_array_by_case_name_and_missing_report(predictor, case, tmp_path):
    from nnunet_vl.text.provider import MissingReportError

    written = tmp_path / case["name"]
    predictor.predict_single_npy_array(case["image"], case["properties"], output_file_truncated=str(written),
                                       save_or_return_probabilities=True)  # report looked up by case name
    with_report = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                     save_or_return_probabilities=True, report=case["report"])[1]
    np.testing.assert_allclose(np.load(f"{written}.npz")["probabilities"], with_report, atol=1e-5)
    assert (tmp_path / f"{case['name']}.png").is_file()
    with pytest.raises(MissingReportError, match="report=.*text_mode='none'"):
        predictor.predict_single_npy_array(case["image"], case["properties"])
    with pytest.raises(MissingReportError):
        predictor.predict_single_npy_array(case["image"], case["properties"], output_file_truncated=str(tmp_path / "x"))
    assert not (tmp_path / "x.png").exists()


def test_single_npy_array_image_only_when_asked(model_folder, predictor, case):
    image_only = make_predictor(model_folder, text_mode="none")
    _, none = image_only.predict_single_npy_array(case["image"], case["properties"], save_or_return_probabilities=True)
    _, ignored = image_only.predict_single_npy_array(case["image"], case["properties"],
                                                     save_or_return_probabilities=True, report=case["report"])
    np.testing.assert_allclose(none, ignored, atol=1e-6)  # mode none predicts with the empty text, whatever is given
    _, with_report = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                        save_or_return_probabilities=True, report=case["report"])
    assert not np.allclose(none, with_report)


def test_predict_from_files_with_reports(predictor, case, tmp_path):
    from nnunet_vl.text.provider import MissingReportError

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(case["file"], folder / case["file"].name)
    other = other_report(predictor, case["name"])
    before = dict(predictor.text_provider.reports)
    predictor.predict_from_files(str(folder), str(tmp_path / "given"), save_probabilities=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1,
                                 reports={case["name"]: other})
    assert predictor.text_provider.reports == before  # reports= holds for that call only
    given = np.load(tmp_path / "given" / f"{case['name']}.npz")["probabilities"]
    _, expected = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                     save_or_return_probabilities=True, report=other)
    np.testing.assert_allclose(given, expected, atol=1e-5)
    reports_file = tmp_path / "reports.csv"
    reports_file.write_text(f"case_id,report\nsomeone_else,{other}\n")
    with pytest.raises(MissingReportError, match=case["name"]):
        predictor.predict_from_files(str(folder), str(tmp_path / "missing"), num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1, reports=str(reports_file))
    assert not list((tmp_path / "missing").glob("*.png"))


def test_cli_report_for_one_image(model_folder, predictor, case, planned_2d, tmp_path):
    other = other_report(predictor, case["name"])
    common = ["-d", str(planned_2d), "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1",
              "--disable_progress_bar"]
    result = run("nnUNetv2_predict_vl", "-i", str(case["file"]), "-o", str(tmp_path / "one"), "--report", other,
                 "--save_probabilities", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    written = np.load(tmp_path / "one" / f"{case['name']}.npz")["probabilities"]
    _, expected = predictor.predict_single_npy_array(case["image"], case["properties"],
                                                     save_or_return_probabilities=True, report=other)
    np.testing.assert_allclose(written, expected, atol=1e-5)  # the given text, not the case's own report
    images = case["file"].parent
    result = run("nnUNetv2_predict_vl", "-i", str(images), "-o", str(tmp_path / "many"), "--report", other, *common)
    assert result.returncode == 1 and "--report gives the report of one image" in result.stderr
    assert "Traceback" not in result.stderr and not list((tmp_path / "many").glob("*.png"))
