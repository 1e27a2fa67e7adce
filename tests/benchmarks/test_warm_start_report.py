"""benchmarks/warm_start.py without training: its budget trainers and its table of rows (run and not run)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _warm_start():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("warm_start_benchmark", BENCHMARKS / "warm_start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_trainers_are_found_by_nnunet_with_their_budgets(tmp_path):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    warm_start = _warm_start()
    warm_start.write_budget_trainers(tmp_path, [(4, 25, False), (3, 25, True)], val_iterations=4)
    found = recursive_find_python_class(str(tmp_path), "nnUNetTrainerBiPVL_3x25warm", None, base_folder=str(tmp_path))
    assert found is not None and (found.budget.epochs, found.budget.iterations_per_epoch) == (3, 25)
    from nnunet_vl.training.nnUNetTrainerBiPVL import nnUNetTrainerBiPVL

    assert issubclass(found, nnUNetTrainerBiPVL)
    # every row is scored by the script's own predictions: nnU-Net's final validation is left out
    assert found.perform_actual_validation is not nnUNetTrainerBiPVL.perform_actual_validation
    image = recursive_find_python_class(str(tmp_path), "nnUNetTrainer_4x25", None, base_folder=str(tmp_path))
    assert image.budget.epochs == 4 and not issubclass(image, nnUNetTrainerBiPVL)


def test_table_lists_rows_not_run_and_reads_the_warm_row():
    warm_start = _warm_start()
    summary = {"budget": {"M": {"epochs": 4, "iterations_per_epoch": 25}, "K": {"epochs": 4, "iterations_per_epoch": 25},
                          "batch_size": 4, "plans": "nnUNetPlans_bs4", "patch_size": [224, 224]},
               "data": {"train": 1200, "val": 300, "val_evaluated": 100}, "test_time_mirroring": False,
               "wall_time_s": 60.0,
               "rows": [{"row": "image-only M", "iterations": 100, "vl": False, "status": "done", "train_s": 120.0,
                         "image": {"dice": 0.41}},
                        {"row": "BiPVL: image-only M, then VL K", "iterations": 200, "vl": True, "status": "done",
                         "warm_from": "nnUNetTrainer_4x25", "train_s": 300.0, "report": {"dice": 0.55},
                         "shuffled": {"dice": 0.47}},
                        {"row": "BiPVL: VL from scratch M+K", "iterations": 200, "vl": True,
                         "status": "not run (left out by --only)"}]}
    table = warm_start.markdown(summary, "python benchmarks/warm_start.py")
    assert "| image-only M | 100 | 41.00 | (ignores text) | 2.0 |" in table
    assert "| BiPVL: image-only M, then VL K | 200 | 55.00 | 47.00 | 5.0 (+ image-only M) |" in table
    assert "| BiPVL: VL from scratch M+K | 200 | not run (left out by --only) |" in table
