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
    """It runs end to end on the smallest setting and writes its figures (JSON, markdown, plot)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "text_matters.py"), "--smallest",
                             "--methods", "BiPVL", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path),
                             "--text-encoder", str(tiny_bert), "--batch-size", "3"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "text_matters.json").read_text())["results"]["2D"]["rows"]
    assert list(rows) == ["nnUNetTrainer (image only)", "nnUNetTrainerBiPVL_cpu"]
    assert set(rows["nnUNetTrainerBiPVL_cpu"]) == {"report", "shuffled", "none"}
    for row in rows.values():
        assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in row.values())
    assert (tmp_path / "text_matters.png").stat().st_size > 0
    assert "| nnUNetTrainerBiPVL_cpu |" in (tmp_path / "text_matters.md").read_text()
