"""nnunet_vl: a language plugin for nnU-Net v2 (reports and class descriptions in segmentation)."""

__version__ = "0.1.0"
