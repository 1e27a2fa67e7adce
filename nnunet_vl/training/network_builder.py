"""Build a VL network from the plans alone (training and prediction call the same function)."""
from __future__ import annotations

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_vl.networks.text_assets import TextAssets
from nnunet_vl.text.encoders import build_encoder_from_config


class PlannedWithoutTextError(RuntimeError):
    pass


def text_plan(plans_manager: PlansManager, configuration_manager: ConfigurationManager) -> dict:
    """The configuration's text section, or a clear error naming the command that adds it."""
    text = configuration_manager.configuration.get("text")
    if text is None:
        dataset = plans_manager.dataset_name
        raise PlannedWithoutTextError(
            f"the plans '{plans_manager.plans_name}' of {dataset} have no text section: this dataset was planned "
            f"without text. Run `nnUNetv2_plan_and_preprocess_vl -d {dataset}` (same image plans, plus text) and "
            f"train again")
    return text


def text_lr_factor(text: dict, method: str) -> float:
    """Learning-rate factor of the text encoder for `method`; 0 freezes it.

    A method's own section (the presets' `tmca`) may override the shared factor: TMCA reads only the report's
    last hidden states, and fine-tuning the encoder erased what tells reports apart (README, Methods:
    *report encoder frozen*).
    """
    return float(text.get(method, {}).get("text_lr_factor", text["text_lr_factor"]))


def build_vl_network(method: str, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     num_input_channels: int, num_output_channels: int,
                     enable_deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's planned U-Net wrapped with the method's text branch (text encoder randomly initialised)."""
    text = text_plan(plans_manager, configuration_manager)
    image_unet = get_network_from_plans(configuration_manager.network_arch_class_name,
                                        configuration_manager.network_arch_init_kwargs,
                                        configuration_manager.network_arch_init_kwargs_req_import,
                                        num_input_channels, num_output_channels, allow_init=True,
                                        deep_supervision=enable_deep_supervision)
    text_encoder = build_encoder_from_config(text["encoder_config"])
    if text_lr_factor(text, method) == 0:
        text_encoder.requires_grad_(False)
    elif not text.get("train_word_embeddings", False):
        # the vocabulary table is most of a small encoder's weights; its dense gradient and AdamW state cost
        # more than the rest of the text branch, and a segmentation dataset is too small to retrain it
        text_encoder.get_input_embeddings().weight.requires_grad_(False)
    num_classes = len(text["class_names"])
    if method == "bipvl":
        from nnunet_vl.networks.bipvl_unet import BiPVLUNet

        contrastive = text["contrastive"]
        network = BiPVLUNet(image_unet, text_encoder, text["fusion_stages"], text["fusion_dim"],
                            text["fusion_heads"], text["fusion_depth"], num_classes, contrastive["proj_dim"],
                            contrastive["uncertainty_weighting"], text.get("recompute_stages", []),
                            text.get("fusion_pool"))
    elif method == "tmca":
        from nnunet_vl.networks.tmca_unet import TMCAUNet

        tmca = text["tmca"]
        network = TMCAUNet(image_unet, text_encoder, tmca["align_stages"], tmca["enhance_stages"],
                           text["fusion_dim"], text["fusion_heads"], num_classes, text["contrastive"]["proj_dim"],
                           text.get("recompute_stages", []), tmca.get("enhance_pool"))
    else:
        raise ValueError(f"unknown VL method '{method}'")
    network.text_assets = TextAssets()
    return network
