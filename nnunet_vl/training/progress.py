"""Per-epoch training loss terms in nnU-Net's logger and progress.png.

nnU-Net's progress.png draws `loss_tr` and `loss_val` on one axis. A VL trainer's training loss adds the text
terms, its validation loss is the segmentation loss alone, so the two curves would not compare. The top panel
therefore draws the segmentation part of the training loss as `loss_tr` (like with like); a bottom panel draws
the text terms and the whole training loss that is optimised.
"""
from __future__ import annotations

from contextlib import contextmanager
from os.path import join

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger, MetaLogger  # noqa: E402

SEGMENTATION_TERM = "segmentation"  # nnU-Net's Dice+CE part of the training loss, logged as train_segmentation


class TextTermsLocalLogger(LocalLogger):
    """nnU-Net's local logger, also recording `train_segmentation` and `train_<text term>` per epoch."""

    def __init__(self, terms: list[str], verbose: bool = False):
        super().__init__(verbose)
        self.segmentation_key = f"train_{SEGMENTATION_TERM}"
        self.terms = [f"train_{t}" for t in terms]
        for key in (self.segmentation_key, *self.terms):
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        for key in (self.segmentation_key, *self.terms):  # a checkpoint written before a term existed
            self.my_fantastic_logging.setdefault(key, [float("nan")] * len(checkpoint["train_losses"]))

    @contextmanager
    def _segmentation_as_train_loss(self):
        """nnU-Net's plot reads `train_losses`; for its duration that is the segmentation part only."""
        logging = self.my_fantastic_logging
        total = logging["train_losses"]
        logging["train_losses"] = logging[self.segmentation_key]
        try:
            yield total
        finally:
            logging["train_losses"] = total

    def plot_progress_png(self, output_folder: str) -> None:
        with self._segmentation_as_train_loss() as total:
            super().plot_progress_png(output_folder)
        path = join(output_folder, "progress.png")
        image = plt.imread(path)
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        height, width = image.shape[:2]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(width / 100, height / 100 * 1.33),
                                          gridspec_kw={"height_ratios": [3, 1]})
        top.imshow(image)
        top.axis("off")
        top.set_title("loss_tr: segmentation loss (Dice+CE) of training, without the text terms, like loss_val",
                      fontsize=28)
        bottom.plot(range(epochs), total[:epochs], color="k", ls="--", linewidth=4,
                    label="train loss optimised (segmentation + weighted text terms)")
        for key in self.terms:
            bottom.plot(range(epochs), self.my_fantastic_logging[key][:epochs], linewidth=4, label=key)
        bottom.set_xlabel("epoch", fontsize=28)
        bottom.set_ylabel("training loss terms", fontsize=28)
        bottom.tick_params(labelsize=24)
        bottom.legend(fontsize=24, loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def add_text_terms_to_logger(logger: MetaLogger, terms: list[str]) -> None:
    """Replace the logger's local logger by one that also records and plots the text terms."""
    replacement = TextTermsLocalLogger(terms, logger.local_logger.verbose)
    replacement.my_fantastic_logging.update(logger.local_logger.my_fantastic_logging)
    logger.local_logger = replacement
