"""nnUNetv2_train_vl: nnUNetv2_train with the same flags; `-pretrained_weights` also warm-starts VL trainers.

Everything is nnU-Net's run_training_entry. For a VL trainer the checkpoint is taken out of nnU-Net's hands
(its loader cannot fill the text branch) and passed to the trainer, which loads it into the image U-Net.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from nnunet_vl.cli.errors import run_with_clear_errors

USAGE_NOTE = ("nnUNetv2_train_vl takes nnUNetv2_train's flags. With a VL trainer, -pretrained_weights is an image-only "
              "nnU-Net checkpoint (checkpoint_final.pth) on the same plans: it becomes the image U-Net, the text is "
              "added by training.")


def _value_of(argv: list[str], flag: str) -> str | None:
    """The value after `flag` (or `flag=value`), as argparse reads it."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _is_vl_trainer(name: str) -> bool:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_vl.training.vl_trainer import nnUNetTrainerVL

    trainer = recursive_find_trainer_class_by_name(name)
    return trainer is not None and issubclass(trainer, nnUNetTrainerVL)


def training_argv(argv: list[str]) -> tuple[list[str], Path | None]:
    """nnU-Net's arguments and the checkpoint to hand to a VL trainer (None: nnU-Net handles every flag)."""
    weights = _value_of(argv, "-pretrained_weights")
    if weights is None or "-h" in argv or "--help" in argv:
        return argv, None
    if "--c" in argv:
        raise ValueError("cannot both continue a training (--c) and load pretrained weights: -pretrained_weights "
                         "only starts a training; to resume one that was warm-started, run the same command with --c "
                         "and without -pretrained_weights")
    if not _is_vl_trainer(_value_of(argv, "-tr") or "nnUNetTrainer"):
        return argv, None  # image-only trainers: nnU-Net's own loader
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"-pretrained_weights {weights}: no such file; pass the image-only model's "
                                f"checkpoint_final.pth (nnUNet_results/DATASET/nnUNetTrainer__PLANS__CONFIG/fold_F/)")
    return _without(argv, "-pretrained_weights"), path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE_NOTE + "\n")
    handed: dict[str, object] = {}

    def parse() -> None:
        handed["argv"], handed["weights"] = training_argv(argv)

    if run_with_clear_errors(parse):
        return 1
    from nnunetv2.run.run_training import run_training_entry

    from nnunet_vl.training.warm_start import PRETRAINED_WEIGHTS_ENV

    if handed["weights"] is not None:
        os.environ[PRETRAINED_WEIGHTS_ENV] = str(handed["weights"])
        print(f"warm start: {handed['weights']} becomes the image U-Net of the VL model", flush=True)
    sys.argv = ["nnUNetv2_train_vl", *handed["argv"]]
    return run_with_clear_errors(run_training_entry)
