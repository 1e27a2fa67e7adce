"""Smoke run of benchmarks/text_matters.py (and with it the demo pipeline) on the smallest setting."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_text_matters_smallest(tmp_path, tiny_bert):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # an earlier 3D run in the old file format (command at the top level): kept beside the new 2D results
    earlier_3d = {"rows": {"nnUNetTrainer (image only)": {"report": 0.5}}, "wall_time_s": 60.0,
                  "dataset": "Dataset991_SynthVL3D", "configuration": "3d_fullres", "budget": "demo"}
    # an earlier 2D run of the same setting with another method: its TMCA row is kept after the new BiPVL row
    earlier_2d = {"rows": {"nnUNetTrainer (image only)": {"report": 0.25},
                           "nnUNetTrainerTMCA_cpu": {"report": 0.75, "shuffled": 0.5, "none": 0.5}},
                  "budget": "cpu"}
    (tmp_path / "text_matters.json").write_text(json.dumps(
        {"results": {"2D": earlier_2d, "3D": earlier_3d}, "rule": "position", "command": "python earlier 3d"}))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "text_matters.py"), "--smallest",
                             "--methods", "BiPVL", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path),
                             "--text-encoder", str(tiny_bert), "--batch-size", "3"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "text_matters.json").read_text())
    rows = report["results"]["2D"]["rows"]
    assert list(rows) == ["nnUNetTrainer (image only)", "nnUNetTrainerBiPVL_cpu", "nnUNetTrainerTMCA_cpu"]
    assert rows["nnUNetTrainer (image only)"]["report"] != 0.25  # this run's image-only model
    assert rows["nnUNetTrainerTMCA_cpu"] == earlier_2d["rows"]["nnUNetTrainerTMCA_cpu"]
    assert report["results"]["2D"]["kept_rows"] == [
        {"rows": ["nnUNetTrainerTMCA_cpu"], "command": "python earlier 3d", "image_only": 0.25}]
    for row in rows.values():
        assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in row.values())
    assert set(rows["nnUNetTrainerBiPVL_cpu"]) == {"report", "shuffled", "none"}
    # every model trained (and predicted) with the batch-3 copy of the plans
    assert report["results"]["2D"]["plans"] == "nnUNetPlans_bs3"
    results = tmp_path / "work" / "2d" / "results" / "Dataset990_SynthVL2D"
    assert sorted(p.name for p in results.iterdir()) == [f"{t}__nnUNetPlans_bs3__2d" for t in
                                                         ("nnUNetTrainerBiPVL_cpu", "nnUNetTrainer_cpu")]
    assert json.loads((results / "nnUNetTrainer_cpu__nnUNetPlans_bs3__2d" / "plans.json").read_text())[
        "configurations"]["2d"]["batch_size"] == 3
    assert (tmp_path / "text_matters.png").stat().st_size > 0
    md = (tmp_path / "text_matters.md").read_text()
    assert "| model | with report |" in md
    assert "rows nnUNetTrainerTMCA_cpu from an earlier run, `python earlier 3d` (its image-only model: 0.250)" in md
    assert report["results"]["3D"] == {"command": "python earlier 3d", **earlier_3d}
    assert list(report["results"]) == ["2D", "3D"] and "--smallest" in report["results"]["2D"]["command"]
    assert md.index("**2D**") < md.index("**3D**") and "command `python earlier 3d`" in md
    assert "plans `nnUNetPlans_bs3`" in md and "plans `nnUNetPlans`, budget `demo`" in md  # earlier: planned batch
