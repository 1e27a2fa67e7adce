"""Build a VL network from the plans alone (training and prediction call the same function)."""
from __future__ import annotations

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_vl.networks.text_assets import TextAssets
from nnunet_vl.text.encoders import build_encoder_from_config
from nnunet_vl.training.call_stack import calling_frame


class PlannedWithoutTextError(RuntimeError):
    pass


class StockPredictorError(RuntimeError):
    """nnU-Net's own predictor (nnUNetv2_predict, nnUNetv2_predict_from_modelfolder) was asked to run a VL model."""


def refuse_stock_predictor() -> None:
    """Raise StockPredictorError when nnU-Net's own predictor is building the network.

    nnUNetPredictor.initialize_from_trained_model_folder builds the network through the trainer's static
    build_network_architecture and later calls `network(x)` without text; it tells the builder nothing about
    itself, so the call stack is the only place to see it. A predictor that passes text (nnUNetPredictorVL) says so
    with `passes_text_to_network = True`.
    """
    frame = calling_frame(nnUNetPredictor.initialize_from_trained_model_folder.__code__)
    if frame is None or getattr(frame.f_locals.get("self"), "passes_text_to_network", False):
        return
    local = frame.f_locals
    folds = " ".join(str(f) for f in (local.get("use_folds") or ["0", "1", "2", "3", "4"]))
    trainer, configuration = local.get("trainer_name", "TRAINER"), local.get("configuration_name", "CONFIGURATION")
    plans = local["plans_manager"].plans_name if "plans_manager" in local else "PLANS"
    dataset = local["plans_manager"].dataset_name if "plans_manager" in local else "DATASET"
    raise StockPredictorError(
        f"{trainer} is a vision-language model: nnU-Net's own predictor would call it without the reports. "
        f"Predict with nnunet_vl's predictor, same flags:\n"
        f"  nnUNetv2_predict_vl -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset} -tr {trainer} -p {plans} "
        f"-c {configuration} -f {folds}\n"
        f"(reports from the dataset's text cache or --reports FILE; image-only only if you ask for it: --text-mode "
        f"none). In Python use nnunet_vl.inference.predictor.nnUNetPredictorVL.")


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

    A method's own section (the presets' `tmca`) may override the shared factor; the presets set 0 for TMCA,
    which reads the pretrained encoder's report states.
    """
    return float(text.get(method, {}).get("text_lr_factor", text["text_lr_factor"]))


def build_vl_network(method: str, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     num_input_channels: int, num_output_channels: int,
                     enable_deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's planned U-Net wrapped with the method's text branch (text encoder randomly initialised)."""
    refuse_stock_predictor()
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
        # the vocabulary table is most of a small encoder's weights and a segmentation dataset is too small
        # to retrain it: frozen unless the plans say train_word_embeddings
        text_encoder.get_input_embeddings().weight.requires_grad_(False)
    num_classes = len(text["class_names"])
    if method == "bipvl":
        from nnunet_vl.networks.bipvl_unet import BiPVLUNet

        contrastive = text["contrastive"]
        network = BiPVLUNet(image_unet, text_encoder, text["fusion_stages"], text["fusion_dim"],
                            text["fusion_heads"], text["fusion_depth"], num_classes, contrastive["proj_dim"],
                            contrastive["uncertainty_weighting"], text.get("recompute_stages", []),
                            text.get("fusion_pool"), text.get("class_text", "token"),
                            bool(text.get("train_concepts", False)))
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
