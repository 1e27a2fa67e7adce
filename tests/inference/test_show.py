"""`nnunet_vl show`: overlay PNG of image, reference, prediction and report; clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_vl.inference.show import _pick_slice, case_report, show_case, wrap_to_width

DATASET = "Dataset801_SynthVL2D"


@pytest.fixture(scope="module")
def raw(planned_2d, nnunet_folders) -> Path:
    return nnunet_folders["nnUNet_raw"] / DATASET


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_show_training_case_with_label_as_prediction(raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = show_case("case_000", 801, prediction=raw / "labelsTr" / "case_000.png")
    assert out == tmp_path / "case_000_overlay.png"
    pixels = _png(out)
    assert pixels.shape[0] > 600 and pixels.shape[1] > 600  # image plus text, not a thumbnail
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # grey image plus coloured overlays


def test_show_test_case_prediction_folder_and_dataset_name(raw, tmp_path):
    out = show_case("case_012", DATASET, prediction=raw / "labelsTs", out=tmp_path / "sub" / "x.png")
    assert out == tmp_path / "sub" / "x.png"
    _png(out)
    _png(show_case("case_013", 801, out=tmp_path / "no_prediction.png"))  # image, reference and report only


def test_show_3d_case_without_text_cache(nnunet_folders, tmp_path):
    from nnunet_vl.data.synthetic import make_synthetic_dataset

    folder = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], 804, dim=3, num_train=2, num_test=1, size=24)
    out = show_case("case_002", 804, prediction=folder / "labelsTs", out=tmp_path / "three.png")
    _png(out)
    report, source = case_report("case_002", folder.name, folder)
    assert report == json.loads((folder / "reports.json").read_text())["case_002"] and folder.name in source


def test_report_sources_in_order(raw, tmp_path):
    reports = tmp_path / "reports.json"
    reports.write_text(json.dumps({"case_012": "lower left lesion"}))
    assert case_report("case_012", DATASET, raw, str(reports)) == ("lower left lesion", str(reports))
    report, source = case_report("case_012", DATASET, raw)
    assert source.endswith("text_cache.json")
    assert report == json.loads((raw / "reports.json").read_text())["case_012"]
    with pytest.raises(ValueError, match="has no report for case 'case_013'"):
        case_report("case_013", DATASET, raw, str(reports))


def test_slice_through_the_centre_of_the_foreground():
    label, prediction = np.zeros((10, 4, 4), np.uint8), np.zeros((10, 4, 4), np.uint8)
    assert _pick_slice(10, [None, None]) == 5 and _pick_slice(10, [prediction, label]) == 5
    label[2:7, 1, 1] = 1
    assert _pick_slice(10, [prediction, label]) == 4
    prediction[[1, 8], 2, 2] = 1  # prediction first; never a slice without foreground
    assert _pick_slice(10, [prediction, label]) in (1, 8)


def test_long_reports_wrap_within_the_width():
    lines = wrap_to_width("a b " + "x" * 25 + " c\nd", lambda s: len(s) <= 10)
    assert lines == ["a b", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx c", "d"]


def test_show_errors(raw, tmp_path):
    with pytest.raises(ValueError, match=r"case 'case_999' is not in .*imagesTr or imagesTs"):
        show_case("case_999", 801, out=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match=r"missing\.png does not exist.*--prediction"):
        show_case("case_000", 801, prediction=tmp_path / "missing.png", out=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match=r"has no case_000\.png"):
        show_case("case_000", 801, prediction=tmp_path, out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="no dataset with id 977"):
        show_case("case_000", 977, out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnunet_vl.cli.main", "show", *args], capture_output=True,
                          text=True, env=os.environ, cwd=cwd)


def test_show_cli(raw, tmp_path):
    result = _cli("case_012", "-d", "801", "--prediction", str(raw / "labelsTs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'case_012_overlay.png'}" in result.stdout
    _png(tmp_path / "case_012_overlay.png")
    result = _cli("case_012", "-d", "801", "--prediction", str(tmp_path / "nope.png"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "nope.png does not exist" in result.stderr
