"""Where nnU-Net finds the plugin: the trainer directory for nnUNet_extTrainer."""
from __future__ import annotations

from pathlib import Path


def trainer_dir() -> Path:
    """The directory to put in nnUNet_extTrainer."""
    return Path(__file__).resolve().parents[1] / "trainers"
