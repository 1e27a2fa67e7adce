"""Lateral label pairs in training and prediction: when a sample is mirrored along the patient's left-right axis,
the pair's label ids swap (the mirrored patient's left kidney lies where the right one belongs); a prediction of
a left-right mirrored input has the pair's channels swapped back before it is averaged.

The pairs and the left-right array axis come from the plans' text section (`lateral_pairs`, `direction_axes`);
plans without one (stock nnU-Net planning, for nnUNetTrainerLateral) take them from dataset.json and the first
preprocessed case's geometry.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os.path import join

import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

from nnunet_vl.text.laterality import dataset_lateral_pairs


class LateralRegionsError(ValueError):
    """Lateral pairs in a region-based dataset: the swap is defined on label values, not on region channels."""


@dataclass(frozen=True)
class LateralSwap:
    """The pairs of one configuration: label values that swap, and the spatial array axis that is left-right."""

    value_pairs: tuple[tuple[int, int], ...]
    left_right_axis: int
    names: tuple[tuple[str, str], ...] = ()

    def flips_left_right(self, flipped_axes: Sequence[int]) -> bool:
        return self.left_right_axis in flipped_axes

    def swap_labels(self, seg: torch.Tensor) -> torch.Tensor:
        """The label map with each pair's two values exchanged (any shape, any dtype)."""
        out = seg.clone()
        for a, b in self.value_pairs:
            out[seg == a] = b
            out[seg == b] = a
        return out

    def channel_permutation(self, labels: Sequence[int]) -> list[int]:
        """For outputs with one channel per label value in `labels` order: channel index each channel takes its
        values from after the swap."""
        index = {int(v): i for i, v in enumerate(labels)}
        perm = list(range(len(labels)))
        for a, b in self.value_pairs:
            perm[index[a]], perm[index[b]] = index[b], index[a]
        return perm

    def swap_channels(self, tensor: torch.Tensor, labels: Sequence[int], dim: int = 1) -> torch.Tensor:
        return tensor.index_select(dim, torch.tensor(self.channel_permutation(labels), device=tensor.device))


def label_value_pairs(labels: Mapping[str, object], pairs: Sequence[Sequence[str]],
                      regions_allowed: bool = False) -> tuple[tuple[int, int], ...]:
    """Label values of the named pairs. Region-based label dicts are refused (LateralRegionsError) unless
    regions_allowed (the swap then acts on the label map before nnU-Net converts it to regions) and every pair
    member is a single label value."""
    multi = [n for p in pairs for n in p if isinstance(labels[n], (list, tuple)) and len(labels[n]) > 1]
    if multi or (not regions_allowed and any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())):
        raise LateralRegionsError(
            f"lateral pairs {[list(p) for p in pairs]} in a region-based dataset: swapping a pair under left-right "
            f"mirroring is implemented for label maps only. Set \"lateral_pairs\": [] in dataset.json to mirror as "
            f"nnU-Net does (labels not swapped), or train without mirroring (nnUNetTrainerNoMirroring)")

    def value(name: str) -> int:
        v = labels[name]
        return int(v[0]) if isinstance(v, (list, tuple)) else int(v)

    return tuple((value(a), value(b)) for a, b in pairs)


def lateral_swap_from_text_plan(text_plan: Mapping, labels: Mapping[str, object],
                                regions_allowed: bool = False) -> LateralSwap | None:
    """The configuration's LateralSwap from its plans' text section; None without pairs or left-right axis
    (plans written before lateral pairs existed have none: their training is unchanged)."""
    pairs = text_plan.get("lateral_pairs") or []
    axis = (text_plan.get("direction_axes") or {}).get("left_right")
    if not pairs or axis is None:
        return None
    return LateralSwap(label_value_pairs(labels, pairs, regions_allowed), int(axis), tuple(tuple(p) for p in pairs))


def lateral_swap_for_image_only(plans_manager, configuration_manager, dataset_json: dict,
                                preprocessed_dataset_folder: str, first_case: str | None) -> LateralSwap | None:
    """LateralSwap for a trainer without text: the plans' text section if the dataset was planned with text, else
    dataset.json's labels and class texts, and the left-right axis of the first preprocessed case's geometry."""
    text = configuration_manager.configuration.get("text")
    if text is not None and "lateral_pairs" in text:
        return lateral_swap_from_text_plan(text, dataset_json["labels"], regions_allowed=True)
    label_texts = dataset_json.get("label_texts") if isinstance(dataset_json.get("label_texts"), dict) else None
    label_texts = {k: ({"definition": v} if isinstance(v, str) else v) for k, v in (label_texts or {}).items()}
    pairs, _ = dataset_lateral_pairs(dataset_json, label_texts)
    if not pairs:
        return None
    if text is not None:
        axis = text["direction_axes"].get("left_right")
    else:
        from batchgenerators.utilities.file_and_folder_operations import load_pickle

        from nnunet_vl.planning.planners import direction_axes_from_geometry

        properties = load_pickle(join(preprocessed_dataset_folder, f"{first_case}.pkl")) if first_case else {}
        axes, _ = direction_axes_from_geometry(properties, list(plans_manager.transpose_forward))
        axis = axes["left_right"]
        if axis is not None and len(configuration_manager.patch_size) == 2:
            axis = axis - 1 if axis > 0 else None  # a 2D configuration sees transposed axes 1 and 2
    if axis is None:
        return None
    return LateralSwap(label_value_pairs(dataset_json["labels"], pairs, regions_allowed=True), int(axis), tuple(pairs))


class LateralMirrorTransform(MirrorTransform):
    """nnU-Net's MirrorTransform that also swaps the lateral pairs' label values of the segmentation (every
    channel: the previous stage's segmentation of a cascade too) when the left-right axis is flipped. It runs
    before deep-supervision downsampling and region conversion, so both follow."""

    def __init__(self, allowed_axes: tuple[int, ...], swap: LateralSwap):
        super().__init__(allowed_axes)
        self.swap = swap

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        segmentation = super()._apply_to_segmentation(segmentation, **params)
        return self.swap.swap_labels(segmentation) if self.swap.flips_left_right(params["axes"]) else segmentation
