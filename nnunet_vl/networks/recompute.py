"""Activation recomputation for the text blocks at high-resolution stages (memory for time)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, recompute: bool, *inputs: Any) -> Any:
    """`block(*inputs)`; with `recompute` (in training, with gradients) the block keeps only its inputs
    for the backward pass and recomputes its activations there, as torch.utils.checkpoint does.

    A fusion block after the highest-resolution stage holds about a dozen tensors of that stage's
    size; recomputing it costs one more forward pass of the block.
    """
    if recompute and block.training and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)
