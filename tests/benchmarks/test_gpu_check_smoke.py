"""benchmarks/gpu_check.py cannot rot while no GPU is around: its CPU smoke mode runs every step on a tiny 3D
dataset, and without CUDA and without the flag it refuses in one line."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu_check would run for real")
def test_without_cuda_it_says_so_and_fails(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA" in lines[0] and "--cpu-smoke" in lines[0]
    assert not list(tmp_path.glob("gpu_check*"))


def test_cpu_smoke_runs_every_trainer_and_writes_the_table(tmp_path, tiny_bert):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--workdir", str(tmp_path / "work"),
                             "--out", str(out), "--text-encoder", str(tiny_bert)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    payload = json.loads((out / "gpu_check_cpu_smoke.json").read_text())
    rows = {r["model"]: r for r in payload["rows"]}
    assert list(rows) == ["image", "bipvl", "tmca"] and payload["failures"] == []
    for model, row in rows.items():
        assert row["loss_finite_every_step"] and row["prediction_finite"], model
        assert len(row["losses"]) == 2 and all(math.isfinite(v) for v in row["losses"])  # warm-up + timed step
        assert row["it_per_s"] > 0 and row["peak_mb"] > 0 and row["predict_s"] > 0 and row["predict_tiles"] >= 1
        assert row["amp"] == "CPU autocast bf16" and not row["compiled"]
        assert (row["gate_moved"] is None) == (model == "image")
    assert rows["bipvl"]["gate_moved"] > 0 and rows["tmca"]["gate_moved"] > 0
    markdown = (out / "gpu_check_cpu_smoke.md").read_text()
    assert markdown.startswith("# GPU check (CPU smoke)") and "nnUNetTrainerBiPVL" in markdown
    assert "all checks passed" in markdown and "DDP: not run" in markdown
    assert (out / "gpu_check_cpu_smoke.png").stat().st_size > 1000
