"""nnUNetTrainerBiPVL: BiPVL-Seg (bidirectional progressive fusion + global-local contrastive loss) on nnU-Net."""
from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_vl.training.budgets import CPU_SMOKE, DEMO
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


class nnUNetTrainerBiPVL_5epochs(nnUNetTrainerBiPVL):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerBiPVL_cpu(nnUNetTrainerBiPVL):
    """CPU smoke budget (2 epochs of 5 iterations), same as nnUNetTrainer_cpu."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        CPU_SMOKE.apply(self)


class nnUNetTrainerBiPVL_demo(nnUNetTrainerBiPVL):
    """Demo budget, same as nnUNetTrainer_demo."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        DEMO.apply(self)


class nnUNetTrainerBiPVL_noText_demo(nnUNetTrainerBiPVL_noText):
    """The no-text ablation on the demo budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        DEMO.apply(self)


class nnUNetTrainerBiPVL_noText_cpu(nnUNetTrainerBiPVL_noText):
    """The no-text ablation on the CPU smoke budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        CPU_SMOKE.apply(self)
