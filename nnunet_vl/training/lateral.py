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
    """Lateral pairs in a region-based dataset whose swap cannot be expressed on its regions."""


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
        return permute(tensor, self.channel_permutation(labels), dim)

    def region_permutation(self, regions: Sequence[Sequence[int] | int]) -> list[int]:
        """For region outputs (one channel per region, in nnU-Net's foreground_regions order): the channel each
        channel takes its values from after the swap. A region maps to the region of its swapped label values
        ("kidney_left" to "kidney_right", "kidneys" to itself); LateralRegionsError when that is no region."""
        sigma = {v: w for a, b in self.value_pairs for v, w in ((a, b), (b, a))}
        sets = [frozenset(int(v) for v in (r if isinstance(r, (list, tuple)) else [r])) for r in regions]
        perm = []
        for region in sets:
            image = frozenset(sigma.get(v, v) for v in region)
            if image not in sets:
                raise LateralRegionsError(
                    f"lateral pairs {[list(p) for p in self.names]}: region {sorted(region)} becomes the label set "
                    f"{sorted(image)} when the pairs swap, which is no region of this dataset. Add that region, set "
                    f"\"lateral_pairs\": [] in dataset.json to mirror as nnU-Net does (labels not swapped), or train "
                    f"without mirroring")
            perm.append(sets.index(image))
        return perm

    def output_permutation(self, label_manager) -> list[int]:
        """Channel permutation of the network's outputs (label channels, or region channels)."""
        if label_manager.has_regions:
            return self.region_permutation(label_manager.foreground_regions)
        return self.channel_permutation(label_manager.all_labels)


def permute(tensor: torch.Tensor, permutation: Sequence[int], dim: int = 1) -> torch.Tensor:
    return tensor.index_select(dim, torch.tensor(list(permutation), device=tensor.device))


def label_value_pairs(labels: Mapping[str, object], pairs: Sequence[Sequence[str]]) -> tuple[tuple[int, int], ...]:
    """Label values of the named pairs; each pair member must be one label value (LateralRegionsError for a pair
    member that is a region of several values: swapping it is not a swap of two label values)."""
    multi = [n for p in pairs for n in p if isinstance(labels[n], (list, tuple)) and len(labels[n]) > 1]
    if multi:
        raise LateralRegionsError(
            f"lateral pairs {[list(p) for p in pairs]}: {multi} are regions of several label values; pair the single "
            f"labels of each side instead (their regions follow), or set \"lateral_pairs\": [] in dataset.json to "
            f"mirror as nnU-Net does (labels not swapped)")

    def value(name: str) -> int:
        v = labels[name]
        return int(v[0]) if isinstance(v, (list, tuple)) else int(v)

    return tuple((value(a), value(b)) for a, b in pairs)


def lateral_swap_from_text_plan(text_plan: Mapping, labels: Mapping[str, object]) -> LateralSwap | None:
    """The configuration's LateralSwap from its plans' text section; None without pairs or left-right axis
    (plans written before lateral pairs existed have none: their training is unchanged)."""
    pairs = text_plan.get("lateral_pairs") or []
    axis = (text_plan.get("direction_axes") or {}).get("left_right")
    if not pairs or axis is None:
        return None
    return LateralSwap(label_value_pairs(labels, pairs), int(axis), tuple(tuple(p) for p in pairs))


def lateral_swap_for_image_only(plans_manager, configuration_manager, dataset_json: dict,
                                preprocessed_dataset_folder: str, first_case: str | None) -> LateralSwap | None:
    """LateralSwap for a trainer without text: the plans' text section if the dataset was planned with text, else
    dataset.json's labels and class texts, and the left-right axis of the first preprocessed case's geometry."""
    text = configuration_manager.configuration.get("text")
    if text is not None and "lateral_pairs" in text:
        return lateral_swap_from_text_plan(text, dataset_json["labels"])
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
    return LateralSwap(label_value_pairs(dataset_json["labels"], pairs), int(axis), tuple(pairs))


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
