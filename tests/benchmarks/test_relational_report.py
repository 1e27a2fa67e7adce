"""benchmarks/relational.py's goals, table, plot and budget trainers from a fake results dict (no training)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def relational():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("relational_benchmark", REPO / "benchmarks" / "relational.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setting(bipvl: dict, tmca: dict, image_only: float = 0.45, factor: int | None = 4) -> dict:
    return {"dim": 2, "rule": "relational", "budget": "demox4", "budget_factor": factor, "epochs": 48,
            "iterations_per_epoch": 25, "dataset": "Dataset990_SynthVL2D", "configuration": "2d",
            "plans": "nnUNetPlans", "commands": ["python benchmarks/relational.py --dims 2"],
            "rows": {"nnUNetTrainer (image only)": {"report": image_only, "runs": 1},
                     "nnUNetTrainerBiPVL_demox4": {**bipvl, "runs": 1},
                     "nnUNetTrainerTMCA_demox4": {**tmca, "runs": 1}}}


def _met(checks: list[dict]) -> dict[tuple[str, str], bool]:
    return {(c["row"].removeprefix("nnUNetTrainer").split("_")[0], c["goal"]): c["met"] for c in checks}


def test_goals_met_and_missed(relational):
    """Each goal is checked against its own threshold: a row that reads the report passes, one that does not fails."""
    good = {"report": 0.95, "shuffled": 0.40, "heldout": 0.90, "none": 0.40}
    keyword = {"report": 0.80, "shuffled": 0.60, "heldout": 0.50, "none": 0.40}  # +0.35, drop 0.2, held-out 0.63x
    met = _met(relational.check_goals(_setting(good, keyword)))
    assert met[("BiPVL", "own report >= image-only + 0.4")] is True
    assert met[("BiPVL", "shuffled <= own report - 0.3")] is True
    assert met[("BiPVL", "held-out wording >= 0.9 x own report")] is True  # 0.90 >= 0.855
    assert met[("TMCA", "own report >= image-only + 0.4")] is False  # 0.80 < 0.85
    assert met[("TMCA", "shuffled <= own report - 0.3")] is False
    assert met[("TMCA", "held-out wording >= 0.9 x own report")] is False
    assert met[("BiPVL", "BiPVL >= TMCA (own report)")] is True
    assert met[("BiPVL", "BiPVL >= TMCA (held-out wording)")] is True
    swapped = _met(relational.check_goals(_setting(keyword, good)))
    assert swapped[("BiPVL", "BiPVL >= TMCA (own report)")] is False
    assert swapped[("TMCA", "own report >= image-only + 0.4")] is True


def test_goal_boundaries(relational):
    """Thresholds are inclusive where the issue says >= / <=, and the held-out goal is relative to the own report."""
    row = {"report": 0.85, "shuffled": 0.55, "heldout": 0.765}
    met = _met(relational.check_goals(_setting(row, row, image_only=0.45)))
    assert met[("BiPVL", "own report >= image-only + 0.4")] is True
    assert met[("BiPVL", "shuffled <= own report - 0.3")] is True
    assert met[("BiPVL", "held-out wording >= 0.9 x own report")] is True
    met = _met(relational.check_goals(_setting({**row, "heldout": 0.76}, row)))
    assert met[("BiPVL", "held-out wording >= 0.9 x own report")] is False


def test_no_text_rows_have_no_goals_and_missing_tmca(relational):
    setting = _setting({"report": 0.9, "shuffled": 0.5, "heldout": 0.9}, {"report": 0.9})
    setting["rows"]["nnUNetTrainerBiPVL_noText_demox4"] = {"report": 0.5, "shuffled": 0.5, "heldout": 0.5, "runs": 1}
    del setting["rows"]["nnUNetTrainerTMCA_demox4"]
    checks = relational.check_goals(setting)
    assert {c["row"] for c in checks} == {"nnUNetTrainerBiPVL_demox4"}
    assert not any("TMCA" in c["goal"] for c in checks)


def test_markdown_table_goals_and_not_run(relational, tmp_path):
    setting = _setting({"report": 0.95, "shuffled": 0.40, "heldout": 0.90, "none": 0.40},
                       {"report": 0.80, "shuffled": 0.60, "heldout": 0.50, "none": 0.40}, factor=1)
    setting["not_run"] = {"nnUNetTrainerBiPVL_noText_demo": "not run: no new training after 08:25 UTC"}
    results = {"settings": {"2D, relational, demo budget x1": setting}}
    text = relational.markdown(results)
    assert "| nnUNetTrainer (image only) | 1 | 0.450 | (ignores text) | (ignores text) | (ignores text) |" in text
    assert "| nnUNetTrainerBiPVL_demox4 | 1 | 0.950 | 0.400 | 0.900 | 0.400 |" in text
    assert "| nnUNetTrainerBiPVL_noText_demo | 0 | not run: no new training after 08:25 UTC |" in text
    assert "not the x4 goal budget" in text
    assert "nnUNetTrainerTMCA_demox4: own report >= image-only + 0.4: 0.800 vs 0.850 ✗ missed" in text
    assert "nnUNetTrainerBiPVL_demox4: own report >= image-only + 0.4: 0.950 vs 0.850 met" in text
    relational.write_results(results, tmp_path)
    assert (tmp_path / "relational.png").stat().st_size > 0
    assert "2D, relational, demo budget x1" in (tmp_path / "relational.json").read_text()


def test_budget_trainers_module(relational, tmp_path):
    """The written budget module defines 4x the demo epochs for every row and imports cleanly."""
    relational.write_budget_trainers(tmp_path, 4, ["BiPVL", "TMCA_noText"])
    spec = importlib.util.spec_from_file_location("relational_budgets", tmp_path / relational.TRAINER_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("nnUNetTrainer_demox4", "nnUNetTrainerBiPVL_demox4", "nnUNetTrainerTMCA_noText_demox4"):
        budget = getattr(module, name).budget
        assert (budget.epochs, budget.iterations_per_epoch) == (48, 25)
    assert relational.budget_suffix(1) == "demo" and relational.budget_suffix(4, smallest=True) == "cpu"
