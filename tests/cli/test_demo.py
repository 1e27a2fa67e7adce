"""The demo's progress lines and its figure of cases."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_vl.cli.demo import EpochProgress


def _nnunet_epoch_lines(capsys: pytest.CaptureFixture, tmp_path: Path, epoch: int, loss: float,
                        dice: list[float]) -> list[str]:
    """What nnU-Net's trainer prints for one epoch, produced by its own print_to_log_file."""
    trainer = SimpleNamespace(local_rank=0, log_file=str(tmp_path / "log.txt"))
    log = nnUNetTrainer.print_to_log_file
    log(trainer, "")
    log(trainer, f"Epoch {epoch}")
    log(trainer, f"Current learning rate: {np.round(0.001, decimals=5)}")
    log(trainer, "train_loss", np.round(np.float64(loss), decimals=4))
    log(trainer, "val_loss", np.round(np.float64(loss + 0.1), decimals=4))
    log(trainer, "Pseudo dice", [np.round(np.float32(d), decimals=4) for d in dice])
    log(trainer, f"Epoch time: {np.round(12.3456, decimals=2)} s")
    return capsys.readouterr().out.splitlines(keepends=True)


def test_one_progress_line_per_epoch_from_nnunet_output(capsys, tmp_path):
    progress = EpochProgress(num_epochs=12, started=0.0)
    printed = []
    for epoch, loss, dice in ((0, 0.8123, [0.25, 0.75]), (1, -0.3456, [float("nan")])):
        for line in _nnunet_epoch_lines(capsys, tmp_path, epoch, loss, dice):
            if (summary := progress.feed(line)) is not None:
                printed.append(summary)
    assert len(printed) == 2
    assert printed[0].startswith("    epoch 1/12: train loss 0.812, pseudo Dice 0.500, ")
    assert printed[1].startswith("    epoch 2/12: train loss -0.346, pseudo Dice nan, ")
    assert printed[0].endswith(" s elapsed")


def test_progress_ignores_other_lines():
    progress = EpochProgress(num_epochs=None, started=0.0)
    lines = ["2026-12-01 10:00:00.000001: Epoch time: 3.0 s\n",  # before any epoch started
             "Using splits from existing split file: x\n", "2026-12-01 10:00:01.5: Epoch 4\n",
             "2026-12-01 10:00:09.5: Epoch time: 8.0 s\n"]
    results = [progress.feed(line) for line in lines]
    assert results[:3] == [None, None, None]
    assert results[3].startswith("    epoch 5: train loss nan, pseudo Dice nan, ")


def test_comparison_figure_has_a_row_per_case_and_a_column_per_model(tmp_path):
    from PIL import Image

    from nnunet_vl.data.synthetic import make_synthetic_dataset
    from nnunet_vl.inference.comparison import DPI, PANEL_IN, Panel, render_comparison

    folder = make_synthetic_dataset(tmp_path / "raw", 803, dim=2, num_train=4, num_test=3, size=32, seed=0)
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in (folder / "labelsTs").iterdir())
    panels = [Panel(f"model {i}", folder / "labelsTs") for i in range(3)]  # the references as predictions
    sizes = []
    for n in (1, 3):
        out = render_comparison(folder, cases[:n], panels, {c: [f"report of {c}"] for c in cases}, tmp_path / f"{n}.png")
        with Image.open(out) as png:
            sizes.append(png.size)
    assert sizes[0][0] == sizes[1][0] == round(PANEL_IN * 4 * DPI)  # image + three panels
    assert sizes[1][1] > 2.5 * sizes[0][1] * 0.9  # three rows against one
