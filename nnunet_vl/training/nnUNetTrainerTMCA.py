"""nnUNetTrainerTMCA: target-informed multi-level contrastive alignment with language-guided target enhancement."""
from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_vl.training.budgets import CPU_SMOKE, DEMO, FIVE_EPOCHS, WithBudget
from nnunet_vl.training.network_builder import build_vl_network
from nnunet_vl.training.vl_trainer import nnUNetTrainerVL


class nnUNetTrainerTMCA(nnUNetTrainerVL):
    method = "tmca"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_vl_network("tmca", plans_manager, configuration_manager, num_input_channels,
                                num_output_channels, enable_deep_supervision)

    def text_loss_terms(self) -> list[str]:
        return [f"align_l{k}" for k in range(len(self.text_plan["tmca"]["align_stages"]))]

    def build_text_loss(self) -> nn.Module:
        from nnunet_vl.losses.tmca import TargetInformedAlignmentLoss

        t = self.text_plan["tmca"]
        return TargetInformedAlignmentLoss([w * t["weight"] for w in t["level_weights"]], t["temperature"],
                                           t["queue_size"], ignore_label=self.label_manager.ignore_label)


class nnUNetTrainerTMCA_noText(nnUNetTrainerTMCA):
    """Ablation: same network and budget, every report replaced by empty text."""

    text_mode = "none"


class nnUNetTrainerTMCA_patchPositions(nnUNetTrainerTMCA):
    """Ablation: enhancement positions relative to each patch or tile, not to the whole image."""

    image_positions = False


class nnUNetTrainerTMCA_5epochs(WithBudget, nnUNetTrainerTMCA):
    budget = FIVE_EPOCHS


class nnUNetTrainerTMCA_cpu(WithBudget, nnUNetTrainerTMCA):
    """CPU smoke budget (2 epochs of 5 iterations), same as nnUNetTrainer_cpu."""

    budget = CPU_SMOKE


class nnUNetTrainerTMCA_demo(WithBudget, nnUNetTrainerTMCA):
    """Demo budget, same as nnUNetTrainer_demo."""

    budget = DEMO


class nnUNetTrainerTMCA_noText_cpu(WithBudget, nnUNetTrainerTMCA_noText):
    budget = CPU_SMOKE


class nnUNetTrainerTMCA_noText_demo(WithBudget, nnUNetTrainerTMCA_noText):
    budget = DEMO


class nnUNetTrainerTMCA_noText_5epochs(WithBudget, nnUNetTrainerTMCA_noText):
    budget = FIVE_EPOCHS


class nnUNetTrainerTMCA_patchPositions_cpu(WithBudget, nnUNetTrainerTMCA_patchPositions):
    budget = CPU_SMOKE
