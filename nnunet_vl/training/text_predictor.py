"""A VL network called with a fixed text: per batch in training (TextBoundNetwork), per case in prediction
(TextPredictor).

The trainer's final validation predicts with TextPredictor; nnunet_vl.inference.predictor.nnUNetPredictorVL
extends it with trained model folders, reports and attention maps. So inference depends on training, never back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from os.path import basename

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch import nn

from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.text.directions import ANATOMICAL_AXES
from nnunet_vl.text.provider import TEXT_MODES, TextProvider
from nnunet_vl.training.lateral import LateralSwap, lateral_swap_from_text_plan, permute


class TextBoundNetwork(nn.Module):
    """Calls the VL network with a fixed text; keeps the auxiliary outputs of the last call for the text loss."""

    def __init__(self, network: nn.Module, text: TextInputs, keep_aux: bool = False):
        super().__init__()
        self.network, self.text, self.keep_aux = network, text, keep_aux
        self.aux: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor):
        text = self.text if self.text.batch_size == x.shape[0] else _repeat(self.text, x.shape[0])
        if not self.keep_aux:
            return self.network(x, text)
        output, self.aux = self.network(x, text, return_aux=True)
        return output


def _repeat(text: TextInputs, batch_size: int) -> TextInputs:
    return TextInputs(text.report_ids.expand(batch_size, -1), text.report_mask.expand(batch_size, -1),
                      text.class_ids, text.class_mask, text.concept_ids, text.concept_mask, text.concept_present)


def unwrap(network: nn.Module) -> nn.Module:
    """The VL network inside DDP and torch.compile wrappers."""
    network = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return getattr(network, "_orig_mod", network)


class TextPredictor(nnUNetPredictor):
    """nnU-Net's predictor with text. Per case: the text is tokenized once, bound to the network for all tiles, and
    test-time mirroring leaves out every axis whose directions the report names (a mirrored image would
    contradict "left", "upper", ...). Initialise with `manual_initialization` and `set_text_provider`.
    """

    passes_text_to_network = True  # the network builder refuses nnU-Net's own predictor (refuse_stock_predictor)

    def __init__(self, *args, text_mode: str = "report", **kwargs):
        super().__init__(*args, **kwargs)
        if text_mode not in TEXT_MODES:
            raise ValueError(f"unknown text mode '{text_mode}': use one of {TEXT_MODES}")
        self.text_mode = text_mode
        self.text_provider: TextProvider | None = None
        self._case_text: TextInputs | None = None
        self._case_item: dict | None = None
        self._all_mirror_axes = None
        self._lateral: tuple[LateralSwap, list[int]] | None = None
        # called with each case's item and logits while predicting from a data iterator (the trainer's validation
        # exports the next cascade stage's input with it)
        self.on_case_logits: Callable[[dict, torch.Tensor], None] | None = None

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._remember_model_settings()

    def _remember_model_settings(self) -> None:
        """What every tile needs from the model's plans, read once after initialisation: the test-time mirror axes
        and the lateral pairs with their output-channel permutation."""
        self._all_mirror_axes = self.allowed_mirroring_axes
        text = self.configuration_manager.configuration.get("text") or {}
        swap = lateral_swap_from_text_plan(text, self.dataset_json["labels"])
        self._lateral = None if swap is None else (swap, swap.output_permutation(self.label_manager))

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
                raise ValueError(f"{type(self).__name__} needs an output file name per case: its base name is the "
                                 f"case id that selects the report")
            self.select_case(basename(item["ofile"]))
            self._case_item = item
            yield item
        self._case_item = None

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        return super().predict_from_data_iterator(self._with_case_text(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        logits = super().predict_logits_from_preprocessed_data(data)
        if self.on_case_logits is not None and self._case_item is not None:
            self.on_case_logits(self._case_item, logits)
        return logits

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """nnU-Net's sliding window; a network that can reuse the case's text encoding over tiles does so."""
        reuse = getattr(unwrap(self._vl_network()), "reusing_report_encoding", None)
        with reuse() if reuse is not None else nullcontext():
            return super().predict_sliding_window_return_logits(input_image)

    def _vl_network(self) -> nn.Module:
        """The VL network that `self.network` calls (subclasses may wrap it for the sliding window)."""
        return self.network

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
            axes = self.allowed_mirroring_axes if self.use_mirroring else None
            if self._lateral is None or axes is None or self._lateral[0].left_right_axis not in axes:
                return super()._internal_maybe_mirror_and_predict(x)
            return self._mirror_and_predict_swapping_pairs(x, axes, *self._lateral)

    def _mirror_and_predict_swapping_pairs(self, x: torch.Tensor, axes: tuple[int, ...], lateral: LateralSwap,
                                           permutation: list[int]) -> torch.Tensor:
        """nnU-Net's mirrored average over every combination of `axes`, as two of its own averages over the other
        axes: one of x, one of x flipped left-right whose lateral pairs' channels are swapped back (the network
        labels the mirrored patient's left kidney as a right kidney). Same mean, same number of network calls."""
        dim = lateral.left_right_axis + 2  # x is (b, c, *spatial)
        self.allowed_mirroring_axes = tuple(a for a in axes if a != lateral.left_right_axis) or None
        try:
            straight = super()._internal_maybe_mirror_and_predict(x)
            mirrored = torch.flip(super()._internal_maybe_mirror_and_predict(torch.flip(x, (dim,))), (dim,))
        finally:
            self.allowed_mirroring_axes = axes
        return (straight + permute(mirrored, permutation)) / 2
