"""A class-text-only dataset plans in one line and trains: every case gets an empty report (BiPVL and TMCA)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnunet_vl.text.contract import TextContractError

pytestmark = pytest.mark.usefixtures("single_thread")

DATASET_ID = 873
NAME = "Dataset873_SynthVL2D"


def _drop_reports(folder: Path, reports: dict | None = None) -> None:
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json.pop("reports")
    if reports is not None:
        dataset_json["reports"] = reports
    (folder / "dataset.json").write_text(json.dumps(dataset_json))


@pytest.fixture(scope="module")
def planned(tiny_bert, nnunet_folders, tmp_path_factory) -> tuple[int, str]:
    """The synthetic 2D dataset without its reports key, planned and preprocessed (printed output returned)."""
    import contextlib
    import io

    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.planning.api import plan_and_preprocess_vl

    folder = make_synthetic_dataset(nnunet_folders["nnUNet_raw"], DATASET_ID, dim=2, num_train=6, num_test=1,
                                    size=32, seed=2)
    _drop_reports(folder, {"case_000": "The target is on the left."})
    with pytest.raises(TextContractError, match="training case 'case_001' has no report"):
        plan_and_preprocess_vl(DATASET_ID, configurations=["2d"], text_encoder=str(tiny_bert),
                               num_processes_fingerprint=1, num_processes=[1])
    assert not (nnunet_folders["nnUNet_preprocessed"] / NAME).exists()  # refused before anything was written
    _drop_reports(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        plan_and_preprocess_vl(DATASET_ID, configurations=["2d"], text_encoder=str(tiny_bert),
                               num_processes_fingerprint=1, num_processes=[1])
    return DATASET_ID, printed.getvalue()


def test_planning_says_class_text_only_once_and_caches_empty_reports(planned, nnunet_folders):
    _, printed = planned
    notes = [line for line in printed.splitlines() if "class text only" in line]
    assert len(notes) == 1 and "TMCA" in notes[0] and "carries no information" in notes[0]
    folder = nnunet_folders["nnUNet_preprocessed"] / NAME
    cache = json.loads((folder / "text" / "text_cache.json").read_text())
    assert cache["reports"] == {f"case_00{i}": "" for i in range(6)}
    assert cache["label_texts"]["target"]["definition"]
    assert json.loads((folder / "dataset_fingerprint.json").read_text())["text"]["training_cases_with_report"] == 0


@pytest.mark.parametrize("name", ["nnUNetTrainerBiPVL_cpu", "nnUNetTrainerTMCA_cpu"])
def test_both_trainers_step_on_empty_reports(planned, nnunet_folders, name, loader_batch, vl_trainer):
    trainer = vl_trainer(name, nnunet_folders["nnUNet_preprocessed"] / NAME)
    batch = loader_batch(trainer)
    text = trainer.text_provider.inputs(list(batch["keys"]))
    assert int(text.report_mask.sum(1).max()) == int(text.report_mask.sum(1).min())  # the same empty report for all
    result = trainer.train_step(batch)
    terms = {k: float(np.asarray(v)) for k, v in result.items()}
    assert set(trainer.text_loss_terms()) <= set(terms) and all(np.isfinite(v) for v in terms.values()), terms
    assert np.isfinite(float(np.asarray(trainer.validation_step(loader_batch(trainer))["loss"])))
    says_no_information = "its text carries no information" in Path(trainer.log_file).read_text()
    assert says_no_information == ("TMCA" in name)
