"""nnUNetPredictorVL: nnU-Net's predictor for trained VL models, the case's text passed to every sliding-window tile."""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from os.path import basename, dirname, join
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from torch import nn

from nnunet_vl.text.provider import TextProvider, tokenizer_from_files
from nnunet_vl.text.tokens import TextTokenizer
from nnunet_vl.training.network_builder import text_plan
from nnunet_vl.training.text_predictor import TextPredictor, unwrap


class AttentionAsLogits(nn.Module):
    """Presents a TMCA network's attention map A as logits whose softmax (or sigmoid) gives back A, so nnU-Net's
    sliding window and its export geometry (resampling, un-cropping, un-transposing) apply to it unchanged."""

    def __init__(self, network: nn.Module, num_channels: int, regions: bool):
        super().__init__()
        self.network, self.num_channels, self.regions = network, num_channels, regions

    def forward(self, x: torch.Tensor, text) -> torch.Tensor:
        _, attention = self.network(x, text, return_attention=True)
        a = attention.float().clamp(1e-6, 1 - 1e-6)
        rest = torch.full((a.shape[0], self.num_channels - (1 if self.regions else 2), *a.shape[2:]), -1e4,
                          device=a.device)
        first = [torch.logit(a)] if self.regions else [torch.log1p(-a), torch.log(a)]
        return torch.cat([*first, rest], 1)


class nnUNetPredictorVL(TextPredictor):
    """Predicts trained VL models with text: TextPredictor (per-case text on every tile, mirror axes the report
    allows), plus trained model folders, the reports of the cases to predict and TMCA's attention maps.
    """

    def __init__(self, *args, text_mode: str = "report", save_attention: bool = False, **kwargs):
        super().__init__(*args, text_mode=text_mode, **kwargs)
        self.save_attention = save_attention
        self._case_item: dict | None = None

    # ----- set-up -------------------------------------------------------------------------------
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name:
                                             str = "checkpoint_final.pth"):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        if getattr(recursive_find_trainer_class_by_name(self.trainer_name), "text_mode", "report") == "none":
            self.text_mode = "none"  # a _noText model never saw a report
        self._all_mirror_axes = self.allowed_mirroring_axes
        if self.save_attention and "return_attention" not in inspect.signature(unwrap(self.network).forward).parameters:
            raise ValueError(f"--save-attention needs a model with attention maps (nnUNetTrainerTMCA*); "
                             f"{self.trainer_name} has none")
        self.set_reports(self._default_reports(), "the dataset's text cache")

    def _default_reports(self) -> dict[str, str]:
        from nnunetv2.paths import nnUNet_preprocessed

        from nnunet_vl.text.cache import TextCacheMissingError, load_text_cache

        try:
            return load_text_cache(join(nnUNet_preprocessed or "", self.plans_manager.dataset_name)).reports
        except TextCacheMissingError:
            return {}

    def set_reports(self, reports: dict[str, str], source: str) -> None:
        """Use these reports (case id -> text); tokenizer and class texts come from the checkpoint."""
        assets = unwrap(self.network).text_assets
        plan = text_plan(self.plans_manager, self.configuration_manager)
        tokenizer = TextTokenizer(tokenizer_from_files(assets.tokenizer_files), plan["max_tokens"],
                                  plan["max_label_tokens"], plan["max_concept_tokens"])
        self.text_provider = TextProvider(tokenizer, assets.label_texts, reports, plan["direction_axes"],
                                          source=source)

    # ----- per case -----------------------------------------------------------------------------
    def _with_case_text(self, data_iterator: Iterable[dict]) -> Iterator[dict]:
        for item in super()._with_case_text(data_iterator):
            self._case_item = item
            yield item

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        logits = super().predict_logits_from_preprocessed_data(data)
        if self.save_attention:
            self._export_attention(data)
        return logits

    def _export_attention(self, data: torch.Tensor) -> None:
        """Write the case's attention map (0-255) aligned to the input, into <output>/attention/."""
        item = self._case_item
        network, mirroring = self.network, self.use_mirroring
        self.network = AttentionAsLogits(network, self.label_manager.num_segmentation_heads,
                                         self.label_manager.has_regions)
        self.use_mirroring = False
        try:
            logits = self.predict_sliding_window_return_logits(data).cpu()
        finally:
            self.network, self.use_mirroring = network, mirroring
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, item["data_properties"],
            return_probabilities=True)
        attention = probabilities[0 if self.label_manager.has_regions else 1]
        out = Path(dirname(item["ofile"])) / "attention" / (basename(item["ofile"]) + self.dataset_json["file_ending"])
        out.parent.mkdir(parents=True, exist_ok=True)
        self.plans_manager.image_reader_writer_class().write_seg(
            np.round(attention * 255).astype(np.uint8), str(out), item["data_properties"])

    def _vl_network(self) -> nn.Module:
        network = self.network
        while isinstance(network, AttentionAsLogits):
            network = network.network
        return network
