"""benchmarks/laterality.py without training: its budget trainers, its rows and the report it writes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _laterality():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("laterality_benchmark", BENCHMARKS / "laterality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(setting: str, model: str, mirroring: str, left: float, right: float, **extra) -> dict:
    return {"setting": setting, "model": model, "mirroring": mirroring, "status": "done",
            "trainer": f"T_{model}_{mirroring}", "train_s": 90.0,
            "dice": {"kidney_left": left, "kidney_right": right, "mean": (left + right) / 2, "n_cases": 20}, **extra}


def _summary() -> dict:
    info = {"dataset": "Dataset971_Lateral2D", "image": [64, 64], "patch": [64, 64], "batch_size": 4,
            "plans": "nnUNetPlans", "configuration": "2d", "lateral_pairs": [["kidney_left", "kidney_right"]],
            "left_right_axis": 1}
    large = {**info, "dataset": "Dataset973_Lateral3D_long", "image": [32, 32, 64], "patch": [32, 32, 32],
             "plans": "nnUNetPlans_patch32x32x32", "left_right_axis": 2}
    rows = [_row("2D", "image-only", "none", 0.90, 0.88), _row("2D", "image-only", "naive", 0.45, 0.50),
            _row("2D", "image-only", "aware", 0.93, 0.91), _row("2D", "BiPVL", "none", 0.80, 0.82),
            {"setting": "2D", "model": "BiPVL", "mirroring": "naive", "status": "not run (time)"},
            _row("2D", "BiPVL", "aware", 0.85, 0.86),
            _row("3D, image > patch", "BiPVL", "aware", 0.70, 0.72, positions="image-level"),
            {"setting": "3D, image > patch", "model": "BiPVL", "mirroring": "aware", "positions": "patch-relative",
             "status": "not run (trainer missing)"}]
    return {"settings": {"2D": info, "3D, image > patch": large}, "rows": rows,
            "budget": {"epochs": 6, "iterations_per_epoch": 20, "batch_size": None},
            "data": {"num_train": 60, "num_test": 20, "seed": 0, "fold": 0}, "test_time_mirroring": False,
            "code": "abc1234 (snapshot)", "wall_time_s": 600.0, "command": "python benchmarks/laterality.py"}


def test_report_lists_labels_gaps_and_rows_not_run(tmp_path):
    laterality = _laterality()
    laterality.write_outputs(_summary(), tmp_path)
    table = (tmp_path / "laterality.md").read_text()
    assert json.loads((tmp_path / "laterality.json").read_text())["rows"][0]["dice"]["kidney_left"] == 0.90
    assert (tmp_path / "laterality.png").stat().st_size > 0
    assert "| image-only | naive mirroring (nnU-Net's) | 0.450 | 0.500 | 0.475 | 1.5 | `T_image-only_naive` |" in table
    assert "| BiPVL | naive mirroring (nnU-Net's) | not run (time) |" in table
    assert "| BiPVL, patch-relative positions | laterality-aware (ids + words) | not run (trainer missing) |" in table
    assert "| BiPVL, image-level positions | laterality-aware (ids + words) | 0.700 | 0.720 |" in table
    # per-label gaps between mirroring modes; a gap against a row not run is left open
    assert "| image-only | kidney_left | +0.450 | +0.480 | +0.030 |" in table
    assert "| image-only | kidney_right | +0.380 | +0.410 | +0.030 |" in table
    assert "| BiPVL | kidney_left | – | – | +0.050 |" in table
    assert "code abc1234 (snapshot)" in table and "patch 32x32x32" in table and "6 x 20 iterations per row" in table


def test_rows_and_budget_trainers(tmp_path):
    laterality = _laterality()
    rows = laterality.rows_for("3D")
    assert [(r["model"], r["mirroring"]) for r in rows] == [
        (m, k) for m in ("image-only", "BiPVL") for k in ("none", "naive", "aware")]
    large = laterality.rows_for("3D, image > patch")
    assert [r.get("positions") for r in large] == ["image-level", "patch-relative", None]
    assert large[1]["family"] == laterality.PATCH_POSITIONS_TRAINER

    laterality.write_budget_trainers(tmp_path, 3, 7, 2, None)
    text = (tmp_path / laterality.TRAINER_MODULE.format(suffix="lat3x7")).read_text()
    compile(text, "laterality_budgets.py", "exec")
    for family in ("nnUNetTrainerNoMirroring", "nnUNetTrainer", "nnUNetTrainerLateral", "nnUNetTrainerBiPVL",
                   "nnUNetTrainerBiPVL_noMirror", "nnUNetTrainerBiPVL_naiveLabels"):
        assert f"class {family}_lat3x7(" in text
    assert laterality.PATCH_POSITIONS_TRAINER not in text  # not importable: no class for it
    assert "self.lateral = None" in text and "swap_words_when_mirroring = False" in text


def test_budget_trainers_are_found_by_nnunet_and_mirror_as_named(tmp_path):
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL
    from nnunet_vl.training.nnUNetTrainerLateral import nnUNetTrainerLateral

    laterality = _laterality()
    laterality.write_budget_trainers(tmp_path, 3, 7, 2, None)

    def find(name: str):
        return recursive_find_python_class(str(tmp_path), name, None, base_folder=str(tmp_path))

    naive = find("nnUNetTrainerBiPVL_naiveLabels_lat3x7")
    assert issubclass(naive, nnUNetTrainerBiPVL) and naive.swap_words_when_mirroring is False
    assert (naive.budget.epochs, naive.budget.iterations_per_epoch) == (3, 7)
    assert find("nnUNetTrainerBiPVL_lat3x7").swap_words_when_mirroring is True
    assert issubclass(find("nnUNetTrainerNoMirroring_lat3x7"), nnUNetTrainerNoMirroring)
    assert issubclass(find("nnUNetTrainerLateral_lat3x7"), nnUNetTrainerLateral)
    no_mirror = find("nnUNetTrainerBiPVL_noMirror_lat3x7")
    assert no_mirror.configure_rotation_dummyDA_mirroring_and_inital_patch_size is not \
        nnUNetTrainerBiPVL.configure_rotation_dummyDA_mirroring_and_inital_patch_size
    # every row is scored on the test cases by the script: nnU-Net's final validation is left out
    assert naive.perform_actual_validation is not nnUNetTrainerBiPVL.perform_actual_validation


def test_a_run_of_other_settings_keeps_the_earlier_ones(tmp_path):
    laterality = _laterality()
    earlier = _summary()
    (tmp_path / "laterality.json").write_text(json.dumps(earlier))
    now = _summary()
    now["settings"] = {"3D, image > patch": {**now["settings"]["3D, image > patch"],
                                            "budget": {"epochs": 3, "iterations_per_epoch": 20}}}
    now["rows"] = [r for r in now["rows"] if r["setting"] == "3D, image > patch"][:1]
    laterality.keep_earlier_settings(now, tmp_path / "laterality.json")
    assert list(now["settings"]) == ["2D", "3D, image > patch"]
    assert [r["setting"] for r in now["rows"]] == ["2D"] * 6 + ["3D, image > patch"]
    table = laterality.markdown(now, "python benchmarks/laterality.py")
    assert "6 x 20 iterations per row" in table and "3 x 20 iterations per row" in table


def test_a_setting_not_run_is_listed(tmp_path):
    laterality = _laterality()
    summary = _summary()
    summary["settings"]["3D"] = {"image": [32, 32, 32], "not_run": "time"}
    summary["rows"] += [{**r, "status": "not run (time)"} for r in laterality.rows_for("3D")]
    laterality.write_outputs(summary, tmp_path)
    assert "**3D** (image 32x32x32): not run (time)." in (tmp_path / "laterality.md").read_text()
