"""Per-epoch text loss terms in nnU-Net's logger and progress.png."""
from __future__ import annotations

from os.path import join

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger, MetaLogger  # noqa: E402


class TextTermsLocalLogger(LocalLogger):
    """nnU-Net's local logger; its progress.png gains a bottom panel with the text loss terms."""

    def __init__(self, terms: list[str], verbose: bool = False):
        super().__init__(verbose)
        self.terms = [f"train_{t}" for t in terms]
        for key in self.terms:
            self.my_fantastic_logging[key] = []

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        for key in self.terms:  # a checkpoint written before a term existed
            self.my_fantastic_logging.setdefault(key, [float("nan")] * len(checkpoint["train_losses"]))

    def plot_progress_png(self, output_folder: str) -> None:
        super().plot_progress_png(output_folder)
        path = join(output_folder, "progress.png")
        image = plt.imread(path)
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        height, width = image.shape[:2]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(width / 100, height / 100 * 1.33),
                                          gridspec_kw={"height_ratios": [3, 1]})
        top.imshow(image)
        top.axis("off")
        for key in self.terms:
            bottom.plot(range(epochs), self.my_fantastic_logging[key][:epochs], linewidth=4, label=key)
        bottom.set_xlabel("epoch", fontsize=28)
        bottom.set_ylabel("text loss terms", fontsize=28)
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
