"""benchmarks/real3d.py without training: rows (options not built), paired differences, goal, table, budget trainers."""
from __future__ import annotations

import importlib.util
import json
import types
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _real3d():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("real3d_benchmark", BENCHMARKS / "real3d.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


CASES = [f"la_{i:02d}" for i in range(4)]
IMAGE = dict(zip(CASES, [0.80, 0.70, 0.90, 0.60]))
BIPVL = dict(zip(CASES, [0.82, 0.69, 0.93, 0.60]))  # +2, -1, +3, 0 points
NAME_ONLY = dict(zip(CASES, [0.81, 0.70, 0.90, 0.59]))  # +1, 0, 0, -1 points vs image


def _row(real3d, group: str, run: int, per_case: dict | None, **extra) -> dict:
    labels = {"image": "nnU-Net (image only)", "bipvl_token": "BiPVL, class text: one token per class",
              "bipvl_sentences": "BiPVL, class text: sentences", "bipvl_name_only": "BiPVL, label name only"}
    row = {"row": labels[group], "run": run, "group": group, "vl": group != "image", **extra}
    if per_case is not None:
        final = {c: v + 0.01 for c, v in per_case.items()}  # nnU-Net's final validation, with mirroring
        row.update(status="done", per_case_dice=per_case, dice=sum(per_case.values()) / len(per_case),
                   final_validation={"dice": sum(final.values()) / len(final), "per_case_dice": final},
                   epoch_times_s=[30.0, 20.0, 22.0], invocations=[{"kind": "train", "seconds": 120.0,
                                                                  "peak_rss_mb": 1500}])
    return row


def _summary(real3d, rows: list[dict]) -> dict:
    pairs = real3d.comparisons(rows)
    return {"comparisons_final_validation": real3d.comparisons(rows, score="final_validation"),
            "class_text_named_axes": {"description": ["anterior_posterior", "superior_inferior"], "name_only": []},"dataset": "Dataset960_LeftAtrium", "source": "/data/la", "wall_time_s": 60.0, "smallest": False,
            "budget": {"epochs": 10, "iterations_per_epoch": 50, "val_iterations_per_epoch": 10, "batch_size": 2,
                       "patch_size": [48, 64, 80]},
            "data": {"train": 64, "val": 4}, "runs_note": "nnU-Net's training is not seeded: 1 run per row.",
            "peak_memory_method": "max RSS", "rows": rows, "comparisons": pairs,
            "goal": real3d.goal_check(rows, pairs)}


def test_paired_differences_in_points_with_t_interval():
    real3d = _real3d()
    p = real3d.paired(BIPVL, IMAGE)
    assert p["n"] == 4 and p["per_case_points"] == {"la_00": 2.0, "la_01": -1.0, "la_02": 3.0, "la_03": 0.0}
    assert p["mean"] == pytest.approx(1.0)
    assert p["sd"] == pytest.approx(math.sqrt((1 + 4 + 4 + 1) / 3))
    half = 3.182446 * p["sd"] / 2  # t(0.975, 3) * sd / sqrt(4)
    assert p["ci95"] == pytest.approx([1.0 - half, 1.0 + half], rel=1e-5)
    assert (p["wins"], p["ties"], p["losses"], p["min"], p["max"]) == (2, 1, 1, pytest.approx(-1.0), pytest.approx(3.0))
    # only cases both rows have are paired
    assert real3d.paired({"a": 0.5, "b": 0.4}, {"a": 0.3})["per_case_points"] == {"a": pytest.approx(20.0)}


def test_goal_is_met_on_means_but_not_shown_by_a_wide_interval():
    real3d = _real3d()
    rows = [_row(real3d, "image", 1, IMAGE), _row(real3d, "bipvl_token", 1, BIPVL),
            _row(real3d, "bipvl_name_only", 1, dict(zip(CASES, [0.70, 0.60, 0.80, 0.50])))]  # -10 points each
    pairs = real3d.comparisons(rows)
    whats = [p["what"] for p in pairs]
    assert "BiPVL, class text: one token per class − image only" in whats
    assert "BiPVL, class text: one token per class − BiPVL label name only" in whats
    goal = real3d.goal_check(rows, pairs)
    by_what = {g["what"]: g for g in goal["per_row"]}
    assert by_what["BiPVL, class text: one token per class − image only"]["met"]
    assert not by_what["BiPVL, class text: one token per class − image only"]["shown"]  # interval reaches below -0.5
    assert not by_what["BiPVL, label name only − image only"]["met"]
    assert not goal["met"]
    # within the margin: -0.4 points on every case is met, and shown (zero spread)
    close = {c: v - 0.004 for c, v in IMAGE.items()}
    rows = [_row(real3d, "image", 1, IMAGE), _row(real3d, "bipvl_token", 1, close)]
    pairs = real3d.comparisons(rows)
    assert real3d.goal_check(rows, pairs)["met"] and real3d.goal_check(rows, pairs)["shown"]


def test_class_text_options_are_compared_with_the_default():
    """sentences - token (same run, same cases) is listed: it decides the default option; name only is not."""
    real3d = _real3d()
    rows = [_row(real3d, "image", 1, IMAGE), _row(real3d, "bipvl_token", 1, IMAGE),
            _row(real3d, "bipvl_sentences", 1, BIPVL), _row(real3d, "bipvl_name_only", 1, NAME_ONLY)]
    options = [p for p in real3d.comparisons(rows) if p["vs"] == "bipvl_token"]
    assert [p["what"] for p in options] == ["BiPVL, class text: sentences − BiPVL, class text: one token per class"]
    assert options[0]["mean"] == pytest.approx(1.0) and options[0]["n"] == 4
    # not a goal row: the goal compares with image-only only
    assert all(g["what"] != options[0]["what"] for g in real3d.goal_check(rows, real3d.comparisons(rows))["per_row"])


def test_second_run_adds_noise_row_and_means_over_runs():
    real3d = _real3d()
    image2 = {c: v + 0.01 for c, v in IMAGE.items()}
    rows = [_row(real3d, "image", 1, IMAGE), _row(real3d, "bipvl_token", 1, BIPVL),
            _row(real3d, "image", 2, image2), _row(real3d, "bipvl_token", 2, BIPVL)]
    pairs = {p["what"]: p for p in real3d.comparisons(rows)}
    noise = pairs["image only run 2 − run 1 (noise between runs)"]
    assert noise["mean"] == pytest.approx(1.0) and noise["sd"] == pytest.approx(0.0, abs=1e-9)
    mean = pairs["BiPVL, class text: one token per class − image only, mean of 2 runs"]
    assert mean["mean"] == pytest.approx(0.5)  # BiPVL +1.0 vs run 1 and +0.0 vs run 2
    run2 = [p for p in real3d.comparisons(rows) if p["run"] == 2 and p["vs"] == "image"]
    assert len(run2) == 1 and run2[0]["mean"] == pytest.approx(0.0)


def test_table_lists_options_not_built_and_reads_the_rows():
    real3d = _real3d()
    rows = [_row(real3d, "image", 1, IMAGE), _row(real3d, "bipvl_token", 1, BIPVL),
            _row(real3d, "bipvl_sentences", 1, None, status="not run (option not built)"),
            _row(real3d, "bipvl_name_only", 1, NAME_ONLY)]
    table = real3d.markdown(_summary(real3d, rows), "python benchmarks/real3d.py")
    assert "| nnU-Net (image only) | 1 | 75.00 | 12.91 | 76.00 | 22 (first 30) | 1500 | 2.0 |" in table
    assert "| BiPVL, class text: sentences | 1 | not run (option not built) | | | | | |" in table
    assert ("| BiPVL, class text: one token per class − image only | 1 | 4 | +1.00 | 1.83 | [-1.91, +3.91] | "
            "-1.00 / +1.00 / +3.00 | 2 / 1 |") in table
    assert "not resolved by the intervals" in table
    assert "description − name only is what the words add" in table
    assert "along anterior_posterior, superior_inferior" in table
    assert "the paired 95% intervals here are 2.6–5.8 points wide" in table
    assert "− BiPVL label name only, run 1): nothing this fold can tell apart from zero." in table
    # final validation scores shift every case by +1 point in every row: the same paired differences
    assert "The same differences on nnU-Net's final validation" in table
    assert "BiPVL, class text: one token per class − image only (run 1) +1.00 [-1.91, +3.91]" in table
    real3d.figure(_summary(real3d, rows), Path("/dev/null"))  # draws done rows only; Agg, no display


def test_options_are_detected_by_their_key_and_rows_say_so(tmp_path):
    real3d = _real3d()
    sentences = real3d.ClassTextOption("sentences", "as sentences", "class_text", "sentences")
    (tmp_path / "bipvl.json").write_text(json.dumps({"fusion_dim": 128, "class_text_only_note": 1}))
    assert not real3d.option_built(sentences, (tmp_path,))  # another key that starts with the name is not it
    assert real3d.option_built(real3d.ClassTextOption("planned", "as planned"), (tmp_path,))  # no key: as planned
    assert not real3d.option_built(real3d.CLASS_TEXT_OPTIONS[0], (tmp_path,))  # token is a key too
    rows = real3d.plan_rows(10, 50, 2, tmca=False, sources=(tmp_path,))
    assert [r["trainer"] for r in rows if r["run"] == 2][0] == "nnUNetTrainer_10x50_run2"
    status = {(r["group"], r["run"]): r.get("status") for r in rows}
    assert status[("bipvl_sentences", 1)] == "not run (option not built)"
    assert status[("bipvl_token", 1)] == "not run (option not built)" and status[("bipvl_name_only", 2)] is None
    assert status[("tmca", 1)].startswith("not run: TMCA reads only reports")
    (tmp_path / "bipvl.json").write_text(json.dumps({"class_text": "token"}))
    assert real3d.option_built(sentences, (tmp_path,))
    rows = real3d.plan_rows(10, 50, 1, tmca=True, sources=(tmp_path,))
    assert all("status" not in r for r in rows)


def test_option_preset_is_the_bipvl_preset_with_the_key(tmp_path):
    real3d = _real3d()
    assert real3d.option_plans_name(real3d.ClassTextOption("planned", "as planned")) == "nnUNetPlans"
    assert real3d.option_plans_name(real3d.CLASS_TEXT_OPTIONS[0]) == "nnUNetPlans_classtext_token"
    option = real3d.ClassTextOption("sentences", "as sentences", "class_text", "sentences")
    assert real3d.option_plans_name(option) == "nnUNetPlans_classtext_sentences"
    base = tmp_path / "bipvl.json"
    base.write_text(json.dumps({"description": "BiPVL-Seg defaults", "fusion_dim": 128, "class_text": "token"}))
    preset = json.loads(real3d.option_preset(option, tmp_path / "presets", base).read_text())
    assert preset["class_text"] == "sentences" and preset["fusion_dim"] == 128
    assert preset["description"].startswith("bipvl with class_text = sentences")


def test_budget_trainers_per_run_are_found_by_nnunet(tmp_path):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    real3d = _real3d()
    real3d.write_budget_trainers(tmp_path, 3, 7, 2, runs=2)
    found = recursive_find_python_class(str(tmp_path), "nnUNetTrainerBiPVL_3x7_run2", None, base_folder=str(tmp_path))
    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL

    assert found is not None and issubclass(found, nnUNetTrainerBiPVL)
    assert (found.budget.epochs, found.budget.iterations_per_epoch, found.budget.val_iterations_per_epoch) == (3, 7, 2)
    trainer = types.SimpleNamespace(save_every=50)
    found.budget.apply(trainer)
    assert trainer.save_every == 1  # every epoch saves checkpoint_latest.pth: an interrupted row resumes there
    # nnU-Net's own final validation, without test-time mirroring unless asked for
    assert found.budget.validation_mirroring is False
    real3d.write_budget_trainers(tmp_path / "mirrored", 3, 7, 2, runs=1, final_mirroring=True)
    assert "validation_mirroring=True" in (tmp_path / "mirrored" / real3d.TRAINER_MODULE).read_text()
    assert recursive_find_python_class(str(tmp_path), "nnUNetTrainer_3x7", None, base_folder=str(tmp_path))


def test_epoch_times_and_scores_are_read_from_nnunet_files(tmp_path):
    real3d = _real3d()
    (tmp_path / "training_log_2026_1_1_00_00_00.txt").write_text(
        "2026-01-01 00:00:01.000000: Epoch 0\n2026-01-01 00:00:31.000000: Epoch time: 30.12 s\n"
        "2026-01-01 00:00:31.000000: Epoch 1\n2026-01-01 00:00:51.000000: Epoch time: 20.5 s\n")
    assert real3d.epoch_times(tmp_path) == [30.12, 20.5]
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "summary.json").write_text(json.dumps({
        "foreground_mean": {"Dice": 0.75},
        "metric_per_case": [{"reference_file": "/gt/la_00.nii.gz", "prediction_file": "/v/la_00.nii.gz",
                             "metrics": {"1": {"Dice": 0.8}}},
                            {"reference_file": "/gt/la_01.nii.gz", "prediction_file": "/v/la_01.nii.gz",
                             "metrics": {"1": {"Dice": 0.7}}}]}))
    assert real3d.validation_scores(tmp_path) == {"dice": 0.75, "per_case_dice": {"la_00": 0.8, "la_01": 0.7}}


def test_rows_of_an_earlier_json_are_reused_only_at_the_same_budget_and_cases():
    real3d = _real3d()
    budget = {"epochs": 4, "iterations_per_epoch": 25, "val_iterations_per_epoch": 5,
              "final_validation_mirroring": False}
    done = _row(real3d, "image", 1, {"a": 0.7, "b": 0.8}, trainer="nnUNetTrainer_4x25")
    failed = dict(_row(real3d, "bipvl_token", 1, None, trainer="nnUNetTrainerBiPVL_4x25"), status="not run (time)")
    earlier = {"budget": dict(budget, batch_size=3), "data": {"val_cases": ["a", "b"]}, "code": "2335ccf (snapshot)",
               "rows": [done, failed]}
    reused = real3d.reusable_rows(earlier, budget, ["a", "b"])
    assert list(reused) == [("nnUNetTrainer_4x25", "image", 1, None)]
    assert reused[("nnUNetTrainer_4x25", "image", 1, None)]["reused_from"] == "2335ccf"
    assert real3d.reusable_rows(earlier, dict(budget, epochs=10), ["a", "b"]) == {}
    assert real3d.reusable_rows(earlier, budget, ["a", "c"]) == {}
    assert real3d.reusable_rows(None, budget, ["a", "b"]) == {}
    again = {**earlier, "code": "5d102d8", "rows": list(reused.values())}
    assert real3d.reusable_rows(again, budget, ["a", "b"])[("nnUNetTrainer_4x25", "image", 1, None)][
        "reused_from"] == "2335ccf"
