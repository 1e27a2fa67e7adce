"""Run the encoder of a dynamic-network-architectures U-Net one stage at a time."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

StageHook = Callable[[int, torch.Tensor], torch.Tensor]


def encoder_stage_channels(unet: nn.Module) -> list[int]:
    """Output channels of every encoder stage (PlainConvUNet and ResidualEncoderUNet alike)."""
    return list(unet.encoder.output_channels)


def run_encoder(unet: nn.Module, x: torch.Tensor, after_stage: StageHook) -> list[torch.Tensor]:
    """The encoder's skips, with `after_stage(k, features)` applied to the output of stage k.

    The hook's return value replaces the stage output, so it feeds both the next stage and the
    decoder's skip connection, exactly where the stock encoder would use it.
    """
    encoder = unet.encoder
    stem = getattr(encoder, "stem", None)
    if stem is not None:
        x = stem(x)
    skips = []
    for k, stage in enumerate(encoder.stages):
        x = after_stage(k, stage(x))
        skips.append(x)
    return skips
