"""Class text only (label_texts, no reports key): valid for check and the contract; a partial reports key is not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_vl.data.synthetic import make_synthetic_dataset
from nnunet_vl.text.contract import load_dataset_text

BIN = Path(sys.executable).parent


def _without_reports(folder: Path, **keys) -> Path:
    """Drop the synthetic dataset's reports key (and file); set the given dataset.json keys."""
    dataset_json = json.loads((folder / "dataset.json").read_text())
    del dataset_json["reports"]
    (folder / "reports.json").unlink()
    dataset_json.update(keys)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    make_synthetic_dataset(tmp_path, 871, dim=2, num_train=4, num_test=1, size=24)
    return tmp_path


def _check(raw: Path, tiny_bert: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nnunet_vl"), "check", "-d", "871", "--raw", str(raw), "--text-encoder",
                           str(tiny_bert), *flags], capture_output=True, text=True, env=os.environ)


def test_label_texts_without_reports_is_valid(raw):
    text = load_dataset_text(_without_reports(raw / "Dataset871_SynthVL2D"))
    assert text.errors == [] and text.class_text_only and text.reports == {}
    assert text.training_reports() == {case: "" for case in text.train_cases} and len(text.train_cases) == 4
    assert "shape" in text.label_texts["target"]  # the class descriptions are what the model reads


def test_no_reports_and_no_label_texts_is_still_an_error(raw):
    folder = _without_reports(raw / "Dataset871_SynthVL2D")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    del dataset_json["label_texts"]
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    text = load_dataset_text(folder)
    assert [p.message for p in text.errors] == ["dataset has no reports"] and not text.class_text_only
    assert "label_texts" in text.errors[0].fix


def test_a_reports_key_missing_cases_stays_an_error(raw):
    folder = _without_reports(raw / "Dataset871_SynthVL2D", reports={"case_000": "The target is on the left."})
    text = load_dataset_text(folder)
    assert not text.class_text_only
    assert [p.message for p in text.errors] == [f"training case 'case_00{i}' has no report" for i in (1, 2, 3)]
    allowed = load_dataset_text(folder, require_reports=False)
    assert allowed.errors == [] and allowed.training_reports()["case_001"] == ""
    assert allowed.training_reports()["case_000"] == "The target is on the left."


def test_check_accepts_class_text_only_in_one_line(raw, tiny_bert):
    _without_reports(raw / "Dataset871_SynthVL2D")
    result = _check(raw, tiny_bert)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "class text only" in line]
    assert len(notes) == 1 and "TMCA" in notes[0]
    assert "[error]" not in result.stdout and "0 error(s)" in result.stdout


def test_check_still_fails_on_a_partial_reports_key(raw, tiny_bert):
    _without_reports(raw / "Dataset871_SynthVL2D", reports={"case_000": "The target is on the left."})
    result = _check(raw, tiny_bert)
    assert result.returncode == 1 and result.stdout.count("[error]") == 3
    assert "class text only" not in result.stdout
