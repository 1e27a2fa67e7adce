"""Entry point for nnU-Net's trainer lookup: point the env var nnUNet_extTrainer at this directory.

`nnunet_vl env` prints the export line. nnU-Net imports every module here and looks for the -tr name.
"""
from nnunet_vl.training.budgets import nnUNetTrainer_cpu, nnUNetTrainer_demo  # noqa: F401
from nnunet_vl.training.nnUNetTrainerLateral import (  # noqa: F401
    nnUNetTrainerLateral, nnUNetTrainerLateral_cpu, nnUNetTrainerLateral_demo)
from nnunet_vl.training.nnUNetTrainerBiPVL import (  # noqa: F401
    nnUNetTrainerBiPVL, nnUNetTrainerBiPVL_5epochs, nnUNetTrainerBiPVL_cpu, nnUNetTrainerBiPVL_demo,
    nnUNetTrainerBiPVL_naiveMirror, nnUNetTrainerBiPVL_naiveMirror_cpu, nnUNetTrainerBiPVL_naiveMirror_demo,
    nnUNetTrainerBiPVL_noText, nnUNetTrainerBiPVL_noText_5epochs, nnUNetTrainerBiPVL_noText_cpu,
    nnUNetTrainerBiPVL_noText_demo, nnUNetTrainerBiPVL_patchPositions, nnUNetTrainerBiPVL_patchPositions_cpu)
from nnunet_vl.training.nnUNetTrainerTMCA import (  # noqa: F401
    nnUNetTrainerTMCA, nnUNetTrainerTMCA_5epochs, nnUNetTrainerTMCA_cpu, nnUNetTrainerTMCA_demo,
    nnUNetTrainerTMCA_noText, nnUNetTrainerTMCA_noText_5epochs, nnUNetTrainerTMCA_noText_cpu,
    nnUNetTrainerTMCA_noText_demo, nnUNetTrainerTMCA_patchPositions, nnUNetTrainerTMCA_patchPositions_cpu)
