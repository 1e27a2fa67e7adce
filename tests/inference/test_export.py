"""nnU-Net's export/install round trip for a VL model, and offline prediction from the installed copy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"
TRAINER = "nnUNetTrainerBiPVL_cpu"


def _command(*cmd: str) -> list[str]:
    return [str(BIN / cmd[0]), *cmd[1:]]


def _checked(cmd: tuple[str, ...], result: subprocess.CompletedProcess, ok: bool) -> subprocess.CompletedProcess:
    if ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run(*cmd: str, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(*cmd), capture_output=True, text=True, env=env or os.environ)
    return _checked(cmd, result, ok)


@contextmanager
def running(*cmd: str, env: dict[str, str] | None = None, ok: bool = True) -> Iterator[list]:
    """Run a command in the background while the block runs; the yielded list then holds its result."""
    result: list[subprocess.CompletedProcess] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(_command(*cmd), stdout=out, stderr=err, text=True, env=env or os.environ)
        try:
            yield result
        finally:
            process.wait()
        out.seek(0), err.seek(0)
        result.append(_checked(cmd, subprocess.CompletedProcess(cmd, process.returncode, out.read(), err.read()), ok))


@pytest.fixture(scope="module")
def trained(planned_2d, nnunet_folders) -> Path:
    """The trained fold folder (trained here unless another test module already did)."""
    folder = nnunet_folders["nnUNet_results"] / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    if not (folder / "checkpoint_final.pth").is_file():
        run("nnUNetv2_train", str(planned_2d), "2d", "0", "-tr", TRAINER, "-device", "cpu")
    return folder


@pytest.fixture(scope="module")
def test_reports(planned_2d, nnunet_folders, tmp_path_factory) -> Path:
    """reports.json holding the reports of the raw dataset's test cases only."""
    raw = nnunet_folders["nnUNet_raw"] / DATASET
    cases = [p.name[: -len("_0000.png")] for p in (raw / "imagesTs").glob("*_0000.png")]
    reports = json.loads((raw / "reports.json").read_text())
    path = tmp_path_factory.mktemp("reports") / "reports.json"
    path.write_text(json.dumps({c: reports[c] for c in cases}))
    return path


@contextmanager
def hidden(folder: Path) -> Iterator[None]:
    """Move a folder away for the duration (so a subprocess cannot read it), then put it back."""
    away = folder.with_name(folder.name + "_hidden")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


def _predict_args(out: Path, images: Path, *extra: str) -> tuple[str, ...]:
    return ("nnUNetv2_predict_vl", "-i", str(images), "-o", str(out), "-d", "801", "-c", "2d", "-f", "0", "-tr",
            TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", *extra)


def test_export_install_and_predict_offline(trained, test_reports, nnunet_folders, tiny_bert, tmp_path):
    images = nnunet_folders["nnUNet_raw"] / DATASET / "imagesTs"
    archive = tmp_path / "model.zip"
    run("nnUNetv2_export_model_to_zip", "-d", "801", "-o", str(archive), "-c", "2d", "-tr", TRAINER, "-f", "0")
    assert archive.is_file()
    fresh = {var: tmp_path / "fresh" / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in fresh.values():
        folder.mkdir(parents=True)
    env = {**os.environ, **{k: str(v) for k, v in fresh.items()}, "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "fresh" / "hf_home")}
    with_reports = ("--reports", str(test_reports), "--save_probabilities")
    # predictions run side by side (startup dominates); the encoder directory named in the plans stays hidden
    with hidden(tiny_bert), running(*_predict_args(tmp_path / "original", images, *with_reports)):
        run("nnUNetv2_install_pretrained_model_from_zip", str(archive), env=env)
        assert (fresh["nnUNet_results"] / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
                / "checkpoint_final.pth").is_file()
        with running(*_predict_args(tmp_path / "no_reports", images), env=env, ok=False) as no_reports:
            run(*_predict_args(tmp_path / "installed", images, *with_reports), env=env)
    failed = no_reports[0]
    assert not any(fresh["nnUNet_preprocessed"].iterdir())  # no text cache appeared

    errors = [line for line in failed.stderr.splitlines() if line.startswith("ERROR:")]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr and len(errors) == 1, failed.stderr
    assert "--reports" in errors[0] and "have no report" in errors[0]
    assert not list((tmp_path / "no_reports").glob("*.png"))

    cases = sorted(json.loads(test_reports.read_text()))
    for case in cases:
        image = np.asarray(Image.open(images / f"{case}_0000.png"))
        installed = np.asarray(Image.open(tmp_path / "installed" / f"{case}.png"))
        original = np.asarray(Image.open(tmp_path / "original" / f"{case}.png"))
        assert installed.shape == image.shape
        assert np.array_equal(installed, original)
        probabilities = [np.load(tmp_path / run_name / f"{case}.npz")["probabilities"]
                         for run_name in ("installed", "original")]
        assert np.array_equal(*probabilities)  # not only the argmax: the installed model is the same model
