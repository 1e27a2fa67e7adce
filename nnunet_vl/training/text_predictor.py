"""A VL network called with a fixed text: per batch in training (TextBoundNetwork), per case in prediction
(TextPredictor).

The trainer's final validation predicts with TextPredictor; nnunet_vl.inference.predictor.nnUNetPredictorVL
extends it with trained model folders, reports and attention maps. So inference depends on training, never back.
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from os.path import basename

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch import nn

from nnunet_vl.networks.positions import mirror_place, place_of_box
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
    place = None if text.place is None else text.place.expand(batch_size, -1, -1)
    return replace(text, report_ids=text.report_ids.expand(batch_size, -1),
                   report_mask=text.report_mask.expand(batch_size, -1), place=place)


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

    def __init__(self, *args, text_mode: str = "report", image_positions: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if text_mode not in TEXT_MODES:
            raise ValueError(f"unknown text mode '{text_mode}': use one of {TEXT_MODES}")
        self.text_mode = text_mode
        # each tile's place in the (preprocessed) image goes to the network's position encodings; False: positions
        # relative to the tile, for models trained so (the _patchPositions ablations)
        self.image_positions = image_positions
        self._tile_image: tuple[list[int], list[int]] | None = None  # spatial shape and padding below, per case
        self._tile_slicers: deque = deque()
        self.text_provider: TextProvider | None = None
        self._case_text: TextInputs | None = None
        self._view_texts: dict[tuple[int, ...], TextInputs] = {}  # per mirrored view of the case (select_case)
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
        """Bind the case's text and choose its test-time mirror axes: those whose directions the report does not
        name. Each mirrored view gets the text of a sample mirrored so in training: the class texts' direction
        words of the flipped axes swapped (lateral pairs keep their left-right words: their channels swap back)."""
        self._case_text = self.text_provider.inputs([case], mode=self.text_mode).to(self.device)
        named = self.text_provider.anatomical_axes_named(case, self.text_mode)
        axes_map = self.text_provider.direction_axes
        excluded = {axes_map[a] for a in ANATOMICAL_AXES if a in named and axes_map.get(a) is not None}
        kept = tuple(a for a in (self._all_mirror_axes or ()) if a not in excluded)
        self.allowed_mirroring_axes = kept or None
        views = mirror_views(kept) if self.use_mirroring else [()]
        self._view_texts = {view: self._case_text if not view else
                            self.text_provider.inputs([case], [view], mode=self.text_mode).to(self.device)
                            for view in views}

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
        """nnU-Net's sliding window; a network that can reuse the case's text encoding over tiles does so, and each
        tile gets its place in the image (nnU-Net pads an image smaller than the patch evenly, as pad_nd_image)."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        shape = [int(n) for n in input_image.shape[-len(patch):]]
        self._tile_image = (shape, [max(p - n, 0) // 2 for p, n in zip(patch, shape)])
        reuse = getattr(unwrap(self._vl_network()), "reusing_report_encoding", None)
        try:
            with reuse() if reuse is not None else nullcontext():
                return super().predict_sliding_window_return_logits(input_image)
        finally:
            self._tile_image = None

    def _internal_get_sliding_window_slicers(self, image_size: tuple[int, ...]):
        return _TileOrder(super()._internal_get_sliding_window_slicers(image_size), self._tile_slicers)

    def _next_tile_place(self) -> torch.Tensor | None:
        """(dims, 2) place of the tile being predicted: nnU-Net's producer thread reads the slicers in the order the
        tiles are predicted, and _TileOrder queues each one it hands out. None outside a sliding window."""
        if self._tile_image is None or not self._tile_slicers:
            return None
        slicer = self._tile_slicers.popleft()
        if not self.image_positions:
            return None
        shape, pad_below = self._tile_image
        spatial = slicer[-len(shape):]
        return place_of_box([sl.start - pad for sl, pad in zip(spatial, pad_below)],
                            [sl.stop - sl.start for sl in spatial], shape)

    def _vl_network(self) -> nn.Module:
        """The VL network that `self.network` calls (subclasses may wrap it for the sliding window)."""
        return self.network

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's test-time mirroring (the mean over x and x flipped along every combination of the allowed axes,
        one network call each), written out here because each flipped call needs its own conditioning that nnU-Net's
        loop cannot pass: the tile's place mirrored with it, the view's text (select_case), and for a left-right flip
        the lateral pairs' channels swapped back (the network labels the mirrored patient's left kidney a right
        kidney)."""
        if self._case_text is None:
            raise RuntimeError("no case selected: call select_case(case_id) before predicting")
        place = self._next_tile_place()
        axes = (self.allowed_mirroring_axes or ()) if self.use_mirroring else ()
        if axes and max(axes) > x.ndim - 3:
            raise ValueError(f"mirror axes {axes} do not match the {x.ndim - 2}D input")
        combinations = mirror_views(axes)
        prediction = None
        for flipped in combinations:
            text = self._view_texts.get(flipped, self._case_text)
            if place is not None:
                text = replace(text, place=mirror_place(place, flipped)[None].to(x.device))
            dims = [a + 2 for a in flipped]  # x is (b, c, *spatial)
            out = TextBoundNetwork(self.network, text)(torch.flip(x, dims) if dims else x)
            out = torch.flip(out, dims) if dims else out
            if self._lateral is not None and self._lateral[0].left_right_axis in flipped:
                out = permute(out, self._lateral[1])
            prediction = out if prediction is None else prediction + out
        return prediction / len(combinations)


def mirror_views(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the mirror axes, the unmirrored view () first: the views test-time mirroring averages."""
    return [c for i in range(len(axes) + 1) for c in itertools.combinations(axes, i)]


class _TileOrder(list):
    """The sliding window's slicers. Iterating them (nnU-Net's producer thread does, once per attempt, in the order
    the tiles are then predicted) queues each one for the tile place of its prediction."""

    def __init__(self, slicers: list, queue: deque):
        super().__init__(slicers)
        self._queue = queue

    def __iter__(self):
        self._queue.clear()
        for slicer in super().__iter__():
            self._queue.append(slicer)
            yield slicer
