"""nnUNetPredictorVL: nnU-Net's predictor for trained VL models, the case's text passed to every sliding-window tile."""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from os.path import basename, dirname, join
from pathlib import Path

import numpy as np
import torch
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from torch import nn

from nnunet_vl.text.contract import load_reports_file
from nnunet_vl.text.directions import dataset_fixed_side_names
from nnunet_vl.text.provider import MissingReportError, TextProvider, tokenizer_from_files
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


Reports = Mapping[str, str] | str | os.PathLike  # case id -> text, or a .json/.csv/.tsv file of them

SINGLE_CASE = "case"  # the case id a report given as text is filed under


class nnUNetPredictorVL(TextPredictor):
    """Predicts trained VL models with text: TextPredictor (per-case text on every tile, mirror axes the report
    allows), plus trained model folders, the reports of the cases to predict and TMCA's attention maps.

    nnU-Net's Python API with one more argument: `predict_from_files(..., reports=...)` and
    `predict_single_npy_array(image, properties, ..., report="...")`. Without it the reports come from the
    dataset's text cache (model folders) or the trainer (final validation).
    """

    def __init__(self, *args, text_mode: str = "report", save_attention: bool = False, **kwargs):
        super().__init__(*args, text_mode=text_mode, **kwargs)
        self.save_attention = save_attention

    # ----- set-up -------------------------------------------------------------------------------
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name:
                                             str = "checkpoint_final.pth"):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        trainer_class = recursive_find_trainer_class_by_name(self.trainer_name)
        if getattr(trainer_class, "text_mode", "report") == "none":
            self.text_mode = "none"  # a _noText model never saw a report
        self.image_positions = getattr(trainer_class, "image_positions", True)
        self._remember_model_settings()
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
        self.text_provider = self._provider_for(reports, source)

    def _provider_for(self, reports: Mapping[str, str], source: str) -> TextProvider:
        assets = unwrap(self._vl_network()).text_assets
        plan = text_plan(self.plans_manager, self.configuration_manager)
        if self.text_provider is not None:
            tokenizer = self.text_provider.tokenizer
        else:
            tokenizer = TextTokenizer(tokenizer_from_files(assets.tokenizer_files), plan["max_tokens"],
                                      plan["max_label_tokens"], plan["max_concept_tokens"])
        return TextProvider(tokenizer, assets.label_texts, dict(reports), plan["direction_axes"], source=source,
                            fixed_side_names=dataset_fixed_side_names(self.dataset_json),
                            lateral_pairs=plan.get("lateral_pairs") or ())

    @contextmanager
    def using_reports(self, reports: Reports):
        """Within the block the cases' reports are `reports` (a dict or a .json/.csv/.tsv file) and only these."""
        if isinstance(reports, (str, os.PathLike)):
            source, reports = str(reports), load_reports_file(reports)
        else:
            source = "the reports passed in"
        provider = self.text_provider
        self.text_provider = self._provider_for(reports, source)
        try:
            yield
        finally:
            self.text_provider = provider

    # ----- nnU-Net's Python API, with reports ---------------------------------------------------
    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str | None = None, num_parts: int = 1,
                           part_id: int = 0, reports: Reports | None = None):
        """nnU-Net's predict_from_files; `reports` (case id -> text, or a file of them) replaces the reports the
        predictor holds. Every case to predict must have a report unless text_mode is 'none'; this is checked
        before any case is preprocessed. Output files are required: their names are the case ids."""
        args = (list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, num_processes_preprocessing, num_processes_segmentation_export,
                folder_with_segs_from_prev_stage, num_parts, part_id)
        stock = super().predict_from_files
        # nnU-Net saves its arguments by reading its own locals() for each name in signature(self.predict_from_files)
        self.predict_from_files = stock
        try:
            with self.using_reports(reports) if reports is not None else nullcontext():
                return stock(*args)
        finally:
            del self.predict_from_files

    def _manage_input_and_output_lists(self, *args, **kwargs):
        inputs, outputs, previous = super()._manage_input_and_output_lists(*args, **kwargs)
        if inputs and outputs is None:
            raise ValueError(f"{type(self).__name__}.predict_from_files needs output files (a folder or a list of "
                             f"truncated file names): their base names are the case ids that select the reports")
        self.text_provider.check_reports([basename(o) for o in outputs or []], self.text_mode)
        return inputs, outputs, previous

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: np.ndarray | None = None,
                                 output_file_truncated: str | None = None,
                                 save_or_return_probabilities: bool = False, report: str | None = None):
        """nnU-Net's predict_single_npy_array (same arguments, same return values), predicted with `report`.

        Without `report`: the report of the case named by output_file_truncated if the predictor holds one,
        else the empty text, which only text_mode 'none' (image-only, asked for explicitly) accepts.
        """
        if self.save_attention:
            raise ValueError("save_attention writes files next to predicted cases: use predict_from_files")
        case = basename(output_file_truncated) if output_file_truncated is not None else None
        if report is None and case in self.text_provider.reports:
            self.select_case(case)
            return super().predict_single_npy_array(input_image, image_properties, segmentation_previous_stage,
                                                    output_file_truncated, save_or_return_probabilities)
        if report is None and self.text_mode != "none":
            raise MissingReportError(
                f"no report for this image{f' (case {case!r})' if case else ''}: pass report='...', or create the "
                f"predictor with text_mode='none' to predict image-only")
        with self.using_reports({} if report is None else {SINGLE_CASE: report}):
            self.select_case(SINGLE_CASE)
            return super().predict_single_npy_array(input_image, image_properties, segmentation_previous_stage,
                                                    output_file_truncated, save_or_return_probabilities)

    # ----- per case -----------------------------------------------------------------------------
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        logits = super().predict_logits_from_preprocessed_data(data)
        if self.save_attention:
            self._export_attention(data)
        return logits

    def _export_attention(self, data: torch.Tensor) -> None:
        """Write the case's attention map (0-255) aligned to the input, into <output>/attention/; with several
        folds, the mean of the folds' maps."""
        item = self._case_item
        network, mirroring = self.network, self.use_mirroring
        self.network = AttentionAsLogits(network, self.label_manager.num_segmentation_heads,
                                         self.label_manager.has_regions)
        self.use_mirroring = False
        maps = []
        try:
            for parameters in self.list_of_parameters:
                unwrap(network).load_state_dict(parameters)
                logits = self.predict_sliding_window_return_logits(data).cpu()
                _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, self.plans_manager, self.configuration_manager, self.label_manager,
                    item["data_properties"], return_probabilities=True)
                maps.append(probabilities[0 if self.label_manager.has_regions else 1])
        finally:
            self.network, self.use_mirroring = network, mirroring
        attention = np.mean(maps, axis=0)
        out = Path(dirname(item["ofile"])) / "attention" / (basename(item["ofile"]) + self.dataset_json["file_ending"])
        out.parent.mkdir(parents=True, exist_ok=True)
        self.plans_manager.image_reader_writer_class().write_seg(
            np.round(attention * 255).astype(np.uint8), str(out), item["data_properties"])

    def _vl_network(self) -> nn.Module:
        network = self.network
        while isinstance(network, AttentionAsLogits):
            network = network.network
        return network
