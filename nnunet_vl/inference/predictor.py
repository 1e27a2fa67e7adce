"""nnUNetPredictorVL: nnU-Net's predictor with the case's text passed to every sliding-window tile."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from os.path import basename, join

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_vl.text.directions import ANATOMICAL_AXES
from nnunet_vl.text.provider import TEXT_MODES, TextProvider, tokenizer_from_files
from nnunet_vl.text.tokens import TextTokenizer
from nnunet_vl.training.network_builder import text_plan
from nnunet_vl.training.vl_trainer import TextBoundNetwork, unwrap


class nnUNetPredictorVL(nnUNetPredictor):
    """Predicts with text. Per case: the report is tokenized once, bound to the network for all tiles, and
    test-time mirroring leaves out every axis whose directions the report names (a mirrored image would
    contradict "left", "upper", ...).
    """

    def __init__(self, *args, text_mode: str = "report", **kwargs):
        super().__init__(*args, **kwargs)
        if text_mode not in TEXT_MODES:
            raise ValueError(f"unknown text mode '{text_mode}': use one of {TEXT_MODES}")
        self.text_mode = text_mode
        self.text_provider: TextProvider | None = None
        self._case_text = None
        self._all_mirror_axes = None

    # ----- set-up -------------------------------------------------------------------------------
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name:
                                             str = "checkpoint_final.pth"):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        if getattr(recursive_find_trainer_class_by_name(self.trainer_name), "text_mode", "report") == "none":
            self.text_mode = "none"  # a _noText model never saw a report
        self._all_mirror_axes = self.allowed_mirroring_axes
        self.set_reports(self._default_reports(), "the dataset's text cache")

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._all_mirror_axes = self.allowed_mirroring_axes

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
                                  plan["max_label_tokens"])
        self.text_provider = TextProvider(tokenizer, assets.label_texts, reports, plan["direction_axes"],
                                          source=source)

    def set_text_provider(self, provider: TextProvider) -> None:
        self.text_provider = provider

    # ----- per case -----------------------------------------------------------------------------
    def select_case(self, case: str) -> None:
        """Bind the case's text and choose its test-time mirror axes."""
        self._case_text = self.text_provider.inputs([case], mode=self.text_mode).to(self.device)
        named = self.text_provider.anatomical_axes_named(case, self.text_mode)
        axes_map = self.text_provider.direction_axes
        excluded = {axes_map[a] for a in ANATOMICAL_AXES if a in named and axes_map.get(a) is not None}
        kept = tuple(a for a in (self._all_mirror_axes or ()) if a not in excluded)
        self.allowed_mirroring_axes = kept or None

    def _with_case_text(self, data_iterator: Iterable[dict]) -> Iterator[dict]:
        for item in data_iterator:
            if item.get("ofile") is None:
                raise ValueError("nnUNetPredictorVL needs an output file name per case: its base name is the "
                                 "case id that selects the report")
            self.select_case(basename(item["ofile"]))
            yield item

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        return super().predict_from_data_iterator(self._with_case_text(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)

    @contextmanager
    def _network_with_case_text(self):
        network = self.network
        self.network = TextBoundNetwork(network, self._case_text)
        try:
            yield
        finally:
            self.network = network

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if self._case_text is None:
            raise RuntimeError("no case selected: call select_case(case_id) before predicting")
        with self._network_with_case_text():
            return super()._internal_maybe_mirror_and_predict(x)

