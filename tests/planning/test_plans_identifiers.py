"""Plans identifiers as nnU-Net names them: each planner writes its own, -overwrite_plans_name replaces it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
DATASET = "Dataset801_SynthVL2D"


def test_resenc_planner_writes_nnunets_identifier_and_leaves_the_default_plans(planned_2d, tiny_bert, nnunet_folders):
    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    default_plans = (folder / "nnUNetPlans.json").read_bytes()
    result = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess_vl"), "-d", str(planned_2d), "-pl",
                             "nnUNetPlannerResEncM", "-c", "2d", "--no_pp", "-npfp", "1", "--text-encoder",
                             str(tiny_bert)], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    plans = json.loads((folder / "nnUNetResEncUNetMPlans.json").read_text())
    assert plans["plans_name"] == "nnUNetResEncUNetMPlans"
    assert "ResidualEncoderUNet" in plans["configurations"]["2d"]["architecture"]["network_class_name"]
    assert "text" in plans["configurations"]["2d"]
    assert plans["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"  # shares the preprocessed data
    assert (folder / "nnUNetPlans.json").read_bytes() == default_plans  # the default planner's plans untouched
    assert "-p nnUNetResEncUNetMPlans" in result.stdout


def test_overwrite_plans_name_and_the_default_identifier(planned_2d, tiny_bert, nnunet_folders):
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    folder = nnunet_folders["nnUNet_preprocessed"] / DATASET
    common = dict(configurations=["2d"], text_encoder=str(tiny_bert), num_processes_fingerprint=1,
                  no_preprocessing=True)
    assert plan_and_preprocess_vl(planned_2d, planner="nnUNetPlannerResEncL", plans_name="MyResEncL",
                                  **common) == "MyResEncL"
    assert json.loads((folder / "MyResEncL.json").read_text())["plans_name"] == "MyResEncL"
    assert not (folder / "nnUNetResEncUNetLPlans.json").exists()
    assert plan_and_preprocess_vl(planned_2d, **common) == "nnUNetPlans"  # ExperimentPlanner: no -p needed
