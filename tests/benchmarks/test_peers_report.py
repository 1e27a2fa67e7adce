"""benchmarks/peers.py and benchmarks/class_text_cost.py without measuring: ratios, tables, the reference network."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peers_result() -> tuple[dict, dict]:
    models = ["image", "bipvl", "reference"]
    spec = {"models": models, "batches": [1], "case": 160, "patch": 96, "repeats": 3,
            "reference": {"overlap": 0.75}}
    result = {"parameters": {"image": 30e6, "bipvl": 60e6, "reference": 120e6},
              "train_s": {"1": {"image": [2.0, 1.0, 3.0], "bipvl": [3.0, 3.0, 3.0], "reference": [8.0, 9.0, 10.0]}},
              "infer_s": {"0.5": {m: [10.0] for m in models}, "0.75": {"image": [20.0], "bipvl": [30.0],
                                                                     "reference": [100.0]}},
              "memory": {"image": {"train_peak_mb": 1000.0, "infer_peak_mb": 500.0, "method": "VmHWM"},
                         "bipvl": {"train_peak_mb": 1500.0, "infer_peak_mb": 900.0, "method": "VmHWM"},
                         "reference": {"train_peak_mb": 4000.0, "infer_peak_mb": 2000.0, "method": "VmHWM"}}}
    return spec, result


def test_peers_rows_are_medians_and_ratios_to_nnunet():
    peers = _load("peers")
    spec, result = _peers_result()
    rows = {r["model"]: r for r in peers.summarise(result, spec)}
    assert rows["image"]["train_b1_s"] == 2.0 and rows["image"]["train_b1_ratio"] == 1.0
    assert rows["reference"]["train_b1_ratio"] == pytest.approx(4.5)
    assert rows["reference"]["infer_o0.75_ratio"] == pytest.approx(5.0)
    assert rows["bipvl"]["train_peak_ratio"] == pytest.approx(1.5)
    table = peers.markdown({"spec": spec, "rows": list(rows.values()), "machine": {"torch_threads": 2},
                            "memory_method": "VmHWM"})
    assert "| BiPVL-Seg reference (SwinUNETR-v2 + BERT-base) | 120.0 | 9 (4.50) |" in table
    assert "overlap 0.75" in table and "overlap 0.5" in table


def test_peer_plans_set_patch_batch_and_replan_token_pools(planned_2d, nnunet_folders):
    import json

    peers = _load("peers")
    plans = json.loads((nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D" / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["2d"]
    plans["configurations"]["3d_fullres"] = json.loads(json.dumps(conf))
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["strides"] = [[s, s, s] if isinstance(s, int) else [s[0], *s] for s in arch["strides"]]
    out = peers.peer_plans(plans, "3d_fullres", 64, 2)["configurations"]["3d_fullres"]
    assert out["patch_size"] == [64, 64, 64] and out["batch_size"] == 2
    assert all(len(kernel) == 3 for kernel in out["text"]["fusion_pool"])
    assert plans["configurations"]["3d_fullres"]["patch_size"] != [64, 64, 64]  # the input plans are untouched


def test_reference_network_runs_at_tiny_width():
    pytest.importorskip("monai")  # benchmark-only dependency (pip install ".[peers]")
    import torch

    peers = _load("peers")
    run = peers.ReferenceRun(3, peers.SMALLEST_REFERENCE, 64, 1, "cpu")
    assert len(run.model.fusion) == 4  # registered modules: trained and saved
    assert any(name.startswith("fusion.3.") for name in run.model.state_dict())
    before = [p.detach().clone() for p in run.model.fusion.parameters()]
    run.train_step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, run.model.fusion.parameters()))
    out = run.infer(torch.randn(1, 1, 80, 72, 64), 0.5)
    assert out.shape == (1, 3, 80, 72, 64)


def test_class_text_cost_table_reads_ratios():
    ctc = _load("class_text_cost")
    variants = list(ctc.VARIANTS)
    result = {"train_s": {v: [1.0 + i] for i, v in enumerate(variants)},
              "infer_s": {v: [2.0] for v in variants},
              "memory": {v: {"train_peak_mb": 100.0 * (i + 1), "infer_peak_mb": 50.0, "method": "VmHWM"}
                         for i, v in enumerate(variants)},
              "planner_held_mb": {v: 10.0 for v in variants[1:]},
              "text_tokens": {"max_tokens": 24, "max_label_tokens": 16, "classes": 3}, "patch_size": [32, 32],
              "batch_size": 2}
    table = ctc.markdown({"dim": 2, "settings": {"repeats": 1}, "machine": {}, "result": result})
    assert "| image-only | 1.000 (1.00×) | 2.00 (1.00×) | 100 (1.00×) | 50 (1.00×) | – |" in table
    assert "| sentences | 3.000 (3.00×) |" in table and "300 (3.00×)" in table
