"""Warm start a VL trainer from a trained image-only nnU-Net: its checkpoint becomes the VL network's image U-Net.

nnU-Net's own `-pretrained_weights` calls a free function that requires every network key in the checkpoint, so
`nnUNetv2_train_vl` takes the flag instead and hands the file to the VL trainer through PRETRAINED_WEIGHTS_ENV
(inherited by nnU-Net's multi-GPU workers). The image weights load completely, segmentation layers included;
the text encoder comes from the plans and every fusion gate stays at zero, so before the first step the VL
network computes exactly the trained nnU-Net.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from nnunetv2.run.run_training import maybe_load_checkpoint
from torch import nn

from nnunet_vl.training.call_stack import calling_frame

PRETRAINED_WEIGHTS_ENV = "nnUNet_vl_pretrained_weights"
_SHOWN = 5


class WarmStartError(ValueError):
    """The checkpoint cannot be loaded into the VL network's image U-Net."""


def pretrained_weights_file() -> Path | None:
    """The checkpoint nnUNetv2_train_vl passed for this training, if any."""
    value = os.environ.get(PRETRAINED_WEIGHTS_ENV)
    return Path(value) if value else None


def refuse_stock_pretrained_weights(trainer_name: str) -> None:
    """Raise WarmStartError when stock nnUNetv2_train was given -pretrained_weights for a VL trainer.

    Its loader would stop with a missing-key assertion after the trainer is initialised; this names the command
    that loads the same file into the image U-Net.
    """
    frame = calling_frame(maybe_load_checkpoint.__code__)
    if frame is None or frame.f_locals.get("pretrained_weights_file") is None:
        return
    raise WarmStartError(
        f"{trainer_name} is a vision-language trainer: nnU-Net's -pretrained_weights loader cannot fill its text "
        f"branch. Warm start with the same flags through nnunet_vl's command:\n"
        f"  nnUNetv2_train_vl DATASET CONFIGURATION FOLD -tr {trainer_name} -pretrained_weights "
        f"{frame.f_locals['pretrained_weights_file']}\n"
        f"(it loads the image-only checkpoint into the image U-Net, segmentation layers included; the text branch "
        f"starts from the plans' encoder with closed fusion gates)")


def _image_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The image U-Net's weights of an nnU-Net checkpoint (image-only, or a VL one: its `image_unet.` part)."""
    weights = checkpoint["network_weights"]
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in weights.items()}
    if any(k.startswith("image_unet.") for k in weights):
        weights = {k[len("image_unet."):]: v for k, v in weights.items() if k.startswith("image_unet.")}
    return weights


def load_image_unet_weights(network: nn.Module, path: Path) -> int:
    """Load an nnU-Net checkpoint's weights into `network.image_unet` (all of them: encoder, decoder and
    segmentation layers); return how many tensors were loaded. Every mismatch is named at once."""
    if not path.is_file():
        raise WarmStartError(f"{path}: no such checkpoint; pass nnUNetv2_train's checkpoint_final.pth of the "
                             f"image-only model")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise WarmStartError(f"{path}: not an nnU-Net checkpoint (no 'network_weights'); pass the "
                             f"checkpoint_final.pth that nnUNetv2_train wrote")
    weights = _image_weights(checkpoint)
    target = network.image_unet.state_dict()
    missing = [k for k in target if k not in weights]
    unexpected = [k for k in weights if k not in target]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
                  if k in weights and weights[k].shape != v.shape]
    problems = [f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{' ...' if len(items) > _SHOWN else ''}"
                for what, items in (("weights missing in the checkpoint", missing),
                                    ("checkpoint weights the image U-Net does not have", unexpected),
                                    ("shapes differ (checkpoint vs network)", mismatched)) if items]
    if problems:
        trained_as = checkpoint.get("trainer_name", "?")
        configuration = checkpoint.get("init_args", {}).get("configuration", "?")
        raise WarmStartError(
            f"{path} (trained by {trained_as}, configuration {configuration}) does not fit this configuration's "
            f"U-Net: {'; '.join(problems)}. Fix: warm start from an image-only model trained on the same plans and "
            f"configuration (the VL planner writes nnU-Net's image plans unchanged: nnUNetv2_train D C F -tr "
            f"nnUNetTrainer -p <the same plans>)")
    network.image_unet.load_state_dict(weights, strict=True)
    return len(weights)
