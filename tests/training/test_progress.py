"""progress.png compares like with like: loss_tr is the segmentation part, as loss_val; text terms drawn apart."""
from __future__ import annotations

import math

import numpy as np
import pytest
from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_vl.training.progress import TextTermsLocalLogger

EPOCHS = 3


def filled_logger() -> TextTermsLocalLogger:
    logger = TextTermsLocalLogger(["global", "local"])
    for epoch in range(EPOCHS):
        seg, text = 1.0 - 0.1 * epoch, 2.0 - 0.2 * epoch
        values = {"mean_fg_dice": 0.5, "ema_fg_dice": 0.5, "dice_per_class_or_region": [0.5], "train_losses": seg + text,
                  "val_losses": seg + 0.05, "lrs": 1e-3, "epoch_start_timestamps": epoch,
                  "epoch_end_timestamps": epoch + 1, "train_segmentation": seg, "train_global": text / 2,
                  "train_local": text / 2}
        for key, value in values.items():
            logger.log(key, value, epoch)
    return logger


def test_nnunets_plot_gets_the_segmentation_loss_as_loss_tr(tmp_path, monkeypatch):
    seen = {}
    stock_plot = LocalLogger.plot_progress_png

    def capture(self, output_folder):
        seen["train_losses"] = list(self.my_fantastic_logging["train_losses"])
        stock_plot(self, output_folder)

    monkeypatch.setattr(LocalLogger, "plot_progress_png", capture)
    logger = filled_logger()
    logger.plot_progress_png(str(tmp_path))
    assert seen["train_losses"] == pytest.approx([1.0, 0.9, 0.8])  # segmentation only, comparable to val_losses
    assert logger.my_fantastic_logging["train_losses"] == pytest.approx([3.0, 2.7, 2.4])  # the log itself unchanged
    assert (tmp_path / "progress.png").is_file()


def test_progress_png_has_the_text_panel(tmp_path):
    import matplotlib.pyplot as plt

    stock = LocalLogger()
    stock.my_fantastic_logging = {k: v for k, v in filled_logger().my_fantastic_logging.items()
                                  if k in stock.my_fantastic_logging}
    (tmp_path / "stock").mkdir()
    stock.plot_progress_png(str(tmp_path / "stock"))
    filled_logger().plot_progress_png(str(tmp_path))
    ours, theirs = plt.imread(tmp_path / "progress.png"), plt.imread(tmp_path / "stock" / "progress.png")
    assert ours.shape[0] > 1.2 * theirs.shape[0]  # nnU-Net's panels plus the text terms panel
    assert not np.all(ours == ours[0, 0])


def test_old_checkpoint_without_the_segmentation_term_loads():
    old = {k: list(v) for k, v in filled_logger().my_fantastic_logging.items() if k != "train_segmentation"}
    logger = TextTermsLocalLogger(["global", "local"])
    logger.load_checkpoint(old)
    assert len(logger.my_fantastic_logging["train_segmentation"]) == EPOCHS
    assert all(math.isnan(v) for v in logger.my_fantastic_logging["train_segmentation"])
