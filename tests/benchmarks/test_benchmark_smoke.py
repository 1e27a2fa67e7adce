"""Smoke test of the cost benchmarks: each script runs on its smallest setting and writes sane results.

The benchmarks themselves are not part of the test suite; this only checks that they run end to end (plan a
tiny dataset, time, measure memory, profile-free) and write JSON with finite numbers, into tmp_path only.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One work dir for both scripts, so the second reuses the dataset the first planned."""
    root = tmp_path_factory.mktemp("benchmarks")
    return {"work": root / "work", "out": root / "out"}


def _run(script: str, dirs: dict[str, Path], tiny_bert: Path) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--smallest", "--threads", "1",
           "--workdir", str(dirs["work"]), "--out", str(dirs["out"]), "--text-encoder", str(tiny_bert)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    stem = script.removesuffix(".py")
    assert (dirs["out"] / f"{stem}.md").read_text().startswith("# ")
    return json.loads((dirs["out"] / f"{stem}.json").read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_cost_smallest(bench_dirs, tiny_bert):
    payload = _run("cost.py", bench_dirs, tiny_bert)
    assert {"goals", "settings", "machine", "rows", "runs"} <= set(payload)
    assert payload["settings"]["smallest"] and payload["machine"]["torch_threads"] == 1
    rows = payload["rows"]
    assert sorted(r["model"] for r in rows) == ["bipvl", "tmca"]
    for row in rows:
        assert (row["preset"], row["dim"]) == ("light", 2)
        for key in ("train_s", "train_image_s", "infer_s", "infer_image_s", "train_memory_mb",
                    "train_memory_image_mb", "infer_memory_mb", "infer_memory_image_mb", "train_ratio",
                    "infer_ratio", "train_memory_ratio", "infer_memory_ratio", "parameters", "parameters_image"):
            assert _positive(row[key]), (row["model"], key, row[key])
        assert row["parameters"] > row["parameters_image"]  # the text branch has weights
        assert set(row["goals_met"]) == {"train", "infer", "train_memory", "infer_memory"}
    run = payload["runs"][0]
    assert run["tiles"] >= 1 and run["batch_size"] >= 1
    memory = run["memory"]
    for model in ("image", "bipvl", "tmca"):
        assert memory[model]["gradients_mb"] > 0 and memory[model]["optimizer_state_mb"] > 0, memory[model]
    # SGD keeps one momentum buffer per parameter; the VL trainers' AdamW keeps more, over more parameters
    assert memory["bipvl"]["optimizer_state_mb"] > 2 * memory["image"]["optimizer_state_mb"]
    assert "Where the training memory goes" in (bench_dirs["out"] / "cost.md").read_text()
    assert all(len(times) == 1 for times in run["timing"]["train_s"].values())  # 1 repetition


def test_scaling_smallest(bench_dirs, tiny_bert):
    payload = _run("scaling.py", bench_dirs, tiny_bert)
    assert {"settings", "machine", "rows", "n_stages", "planned_patch"} <= set(payload)
    rows = payload["rows"]
    assert sorted(r["axis"] for r in rows) == ["fused stages", "patch voxels", "report tokens"]
    for row in rows:
        for key in ("bipvl_s", "image_s", "voxels", "text_tokens", "planner_mb", "bipvl_activation_mb"):
            assert _positive(row[key]), (row["axis"], key, row[key])
        for key in ("text_branch_s", "text_activation_mb", "image_activation_mb"):  # differences may be noisy
            assert math.isfinite(row[key]), (row["axis"], key, row[key])
        assert row["report_tokens"] == 16 and row["fusion_stages"] == list(range(payload["n_stages"]))
        assert len(row["fusion_pool"]) == len(row["fusion_stages"])  # the kernels the built network used
        # the `light` preset recomputes nothing: every fused stage's estimate is held at once
        assert row["planner_mb"] == pytest.approx(sum(row["planner_per_stage_mb"].values()), abs=0.05)


def _on_planned_dataset(script: str, dirs: dict[str, Path], tiny_bert: Path, workdir: str) -> tuple[Path, list[str]]:
    """The dataset test_cost_smallest planned, and `script`'s command measuring it with --dataset (1 repetition)."""
    preprocessed = dirs["work"] / "nnUNet_preprocessed"
    dataset = next(preprocessed.glob("Dataset*_Bench2Dlight"))
    did = int(dataset.name[len("Dataset"):].split("_")[0])
    return dataset, [sys.executable, str(REPO / "benchmarks" / script), "--dataset", str(did), "--preprocessed",
                     str(preprocessed), "--repeats", "1", "--warmup", "1", "--infer-scale", "1", "--threads", "1",
                     "--workdir", str(dirs["work"] / workdir), "--out", str(dirs["out"]), "--text-encoder",
                     str(tiny_bert)]


def test_cost_on_a_planned_dataset(bench_dirs, tiny_bert):
    """--dataset measures an existing planned dataset (here the one test_cost_smallest planned) with its own plans."""
    dataset, cmd = _on_planned_dataset("cost.py", bench_dirs, tiny_bert, "on_dataset")
    missing = subprocess.run(cmd + ["--plans", "nnUNetPlans_missing"], capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "nnUNetPlans_missing.json does not exist" in missing.stderr
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((bench_dirs["out"] / f"cost_{dataset.name}.json").read_text())
    assert sorted(r["model"] for r in payload["rows"]) == ["bipvl", "tmca"]
    assert all((r["preset"], r["dim"], r["dataset"], r["plans"]) == ("light", 2, dataset.name, "nnUNetPlans")
               and _positive(r["train_ratio"]) and _positive(r["train_memory_ratio"]) for r in payload["rows"])
    assert f"Dataset `{dataset.name}`, plans `nnUNetPlans`" in (bench_dirs["out"] / f"cost_{dataset.name}.md").read_text()


def test_scaling_patch_edges_are_rounded_to_the_network_stride():
    """--patch-edges gives the patch itself (each edge a multiple of the total stride), its token pooling
    re-planned, one setting per edge, the other axes at the first edge."""
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import scaling

    arch = {"n_stages": 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}
    conf = {"patch_size": [32, 32, 32], "architecture": {"arch_kwargs": arch}}
    args = argparse.Namespace(patch_edges="96,130", patch_factors="1", stages="all", lengths="64", base_length=64,
                              dim=3)
    settings = scaling.make_settings(args, conf, {"fusion_max_voxels": 4096})
    by_axis = {(s["axis"], str(s["value"])): s for s in settings}
    assert by_axis["patch voxels", "96^3"]["patch_size"] == [96, 96, 96]
    assert by_axis["patch voxels", "130^3"]["patch_size"] == [128, 128, 128]
    assert by_axis["fused stages", "all"]["patch_size"] == [96, 96, 96]
    assert by_axis["patch voxels", "130^3"]["fusion_pool"][0] == [8, 8, 8]  # 128³ / 8³ = 4096 tokens


def test_class_text_cost_on_a_planned_dataset(bench_dirs, tiny_bert):
    """class_text_cost.py --dataset times every class-text variant on an existing planned dataset's plans."""
    dataset, cmd = _on_planned_dataset("class_text_cost.py", bench_dirs, tiny_bert, "class_text")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((bench_dirs["out"] / f"class_text_cost_{dataset.name}.json").read_text())
    r = payload["result"]
    assert payload["dim"] == 2 and payload["plans"] == "nnUNetPlans"
    assert set(r["train_s"]) == {"image-only", "token", "sentences", "token + train_concepts",
                                 "sentences + train_concepts"}
    assert all(_positive(r["memory"][v]["train_peak_mb"]) for v in r["train_s"])
    # sentences fuse every description token: the planner's estimate grows with them
    assert r["planner_held_mb"]["sentences"] > r["planner_held_mb"]["token"]
    assert (bench_dirs["out"] / f"class_text_cost_{dataset.name}.md").read_text().startswith("# ")
