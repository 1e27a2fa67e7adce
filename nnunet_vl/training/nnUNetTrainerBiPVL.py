"""nnUNetTrainerBiPVL: BiPVL-Seg (bidirectional progressive fusion + global-local contrastive loss) on nnU-Net."""
from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_vl.training.budgets import CPU_SMOKE, DEMO, FIVE_EPOCHS, WithBudget
from nnunet_vl.training.network_builder import build_vl_network
from nnunet_vl.training.vl_trainer import nnUNetTrainerVL


class nnUNetTrainerBiPVL(nnUNetTrainerVL):
    method = "bipvl"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_vl_network("bipvl", plans_manager, configuration_manager, num_input_channels,
                                num_output_channels, enable_deep_supervision)

    def text_loss_terms(self) -> list[str]:
        return ["global", "local"]

    def build_text_loss(self) -> nn.Module:
        from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss

        c = self.text_plan["contrastive"]
        return GlobalLocalContrastiveLoss(c["temperature"], c["global_weight"], c["local_weight"],
                                          c["uncertainty_weighting"], self.label_manager.ignore_label)


class nnUNetTrainerBiPVL_noText(nnUNetTrainerBiPVL):
    """Ablation: same network and budget, every report replaced by empty text."""

    text_mode = "none"


class nnUNetTrainerBiPVL_naiveMirror(nnUNetTrainerBiPVL):
    """Ablation: mirroring flips the image but not the report's direction words, as image-only augmentation
    would; on side-dependent reports every mirrored sample then teaches the wrong side."""

    swap_words_when_mirroring = False


class nnUNetTrainerBiPVL_patchPositions(nnUNetTrainerBiPVL):
    """Ablation: position encodings relative to each patch or tile, not to the whole image (what every patch-based
    VL method does): where a patch covers part of the image, "left" then means the patch's left."""

    image_positions = False


class nnUNetTrainerBiPVL_5epochs(WithBudget, nnUNetTrainerBiPVL):
    budget = FIVE_EPOCHS


class nnUNetTrainerBiPVL_cpu(WithBudget, nnUNetTrainerBiPVL):
    """CPU smoke budget (2 epochs of 5 iterations), same as nnUNetTrainer_cpu."""

    budget = CPU_SMOKE


class nnUNetTrainerBiPVL_demo(WithBudget, nnUNetTrainerBiPVL):
    """Demo budget, same as nnUNetTrainer_demo."""

    budget = DEMO


class nnUNetTrainerBiPVL_noText_cpu(WithBudget, nnUNetTrainerBiPVL_noText):
    budget = CPU_SMOKE


class nnUNetTrainerBiPVL_noText_demo(WithBudget, nnUNetTrainerBiPVL_noText):
    budget = DEMO


class nnUNetTrainerBiPVL_noText_5epochs(WithBudget, nnUNetTrainerBiPVL_noText):
    budget = FIVE_EPOCHS


class nnUNetTrainerBiPVL_naiveMirror_cpu(WithBudget, nnUNetTrainerBiPVL_naiveMirror):
    budget = CPU_SMOKE


class nnUNetTrainerBiPVL_naiveMirror_demo(WithBudget, nnUNetTrainerBiPVL_naiveMirror):
    budget = DEMO


class nnUNetTrainerBiPVL_patchPositions_cpu(WithBudget, nnUNetTrainerBiPVL_patchPositions):
    budget = CPU_SMOKE
