"""The plugin's own commands: env, check, make-synthetic; clear one-line errors instead of tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def nnunet_vl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nnunet_vl"), *args], capture_output=True, text=True, env=os.environ)


def test_env_prints_the_trainer_directory():
    result = nnunet_vl("env")
    line = result.stdout.splitlines()[0]
    assert result.returncode == 0 and line.startswith("export nnUNet_extTrainer=")
    assert (Path(line.split("=", 1)[1]) / "nnunet_vl_trainers.py").is_file()


def test_make_synthetic_then_check(tmp_path, tiny_bert):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert nnunet_vl("make-synthetic", "-d", "870", "--num-train", "4", "--num-test", "1", "--size", "32",
                     "--raw", str(raw)).returncode == 0
    folder = raw / "Dataset870_SynthVL2D"
    ok = nnunet_vl("check", "-d", "870", "--raw", str(raw), "--text-encoder", str(tiny_bert))
    assert ok.returncode == 0 and "0 error(s)" in ok.stdout
    again = nnunet_vl("make-synthetic", "-d", "870", "--raw", str(raw))
    assert again.returncode == 1 and "overwrite" in again.stderr and "Traceback" not in again.stderr

    reports = json.loads((folder / "reports.json").read_text())
    reports["case_000"] = "  "
    reports["nobody"] = "text"
    (folder / "reports.json").write_text(json.dumps(reports))
    bad = nnunet_vl("check", "-d", "870", "--raw", str(raw), "--text-encoder", str(tmp_path / "no_encoder"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "case_000" in bad.stdout and "unknown case 'nobody'" in bad.stdout and "does not exist" in bad.stdout
    assert bad.stdout.count("[error]") == 3  # every error, one line each with file and fix
    assert bad.stderr.strip().splitlines() == [f"ERROR: {folder}: 3 text error(s), listed above with file and fix; "
                                               "fix them and run `nnunet_vl check -d 870` again"]


def test_check_prints_lateral_pairs_and_class_texts_that_swap(tmp_path, tiny_bert):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert nnunet_vl("make-synthetic", "-d", "871", "--num-train", "4", "--num-test", "1", "--size", "32",
                     "--rule", "lateral", "--raw", str(raw)).returncode == 0
    detected = nnunet_vl("check", "-d", "871", "--raw", str(raw), "--text-encoder", str(tiny_bert))
    assert detected.returncode == 0, detected.stderr
    lines = [line for line in detected.stdout.splitlines() if "lateral pair" in line or "class text '" in line]
    assert lines == ["lateral pair 'kidney_left' / 'kidney_right' (detected from label names and class texts "
                     "(bilateral_structures.json)): their label ids swap when a sample is mirrored left-right, their "
                     "class texts stay with them"]  # the pair's side words stay: nothing else swaps

    folder = raw / "Dataset871_SynthVL2D"
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["lateral_pairs"] = []  # no pairs: the kidneys' texts are plain class texts that name a side
    dataset["label_texts"]["background"] = {"definition": "everything above and below the kidneys"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    unpaired = nnunet_vl("check", "-d", "871", "--raw", str(raw), "--text-encoder", str(tiny_bert))
    assert unpaired.returncode == 0, unpaired.stderr
    lines = [line for line in unpaired.stdout.splitlines() if "lateral pair" in line or "class text '" in line]
    assert lines[0] == "lateral pairs: none (dataset.json 'lateral_pairs')"
    assert [line.split(" swaps")[0] for line in lines[1:]] == ["class text 'background'", "class text 'kidney_left'",
                                                                "class text 'kidney_right'"]
    assert "(superior-inferior: 'above', 'below')" in lines[1]
    assert "(left-right: 'left', 'right')" in lines[2] or "(left-right: 'right', 'left')" in lines[2]


def test_demo_refuses_a_work_dir_made_for_another_rule(tmp_path):
    """The demo reuses its work dir's dataset only when it was made with the same rule and size."""
    from nnunet_vl.cli.demo import DATASET_IDS
    from nnunet_vl.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "raw", DATASET_IDS[2], dim=2, num_train=16, num_test=4, rule="side")
    result = nnunet_vl("demo", "--quick", "--workdir", str(tmp_path))
    assert result.returncode != 0
    assert "was made with rule 'side' and 16 training cases, this run asks for rule 'position'" in result.stderr
    assert list((tmp_path / "preprocessed").iterdir()) == []  # stopped before planning


def test_demo_names_a_budget_without_that_trainer_before_doing_anything(tmp_path):
    from nnunet_vl.cli.demo import run_demo

    with pytest.raises(SystemExit, match=r"no trainer \['nnUNetTrainerBiPVL_naiveMirror_5epochs'\] for budget"):
        run_demo(tmp_path, methods=["BiPVL", "BiPVL_naiveMirror"], budget="5epochs")
    assert not list((tmp_path / "raw").iterdir())  # no dataset written
