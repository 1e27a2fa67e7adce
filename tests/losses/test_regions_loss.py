"""The text losses on region targets (nnU-Net's region-based training): overlapping binary masks, one per region."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss
from nnunet_vl.losses.targets import class_masks, foreground_background
from nnunet_vl.losses.tmca import region_weights
from nnunet_vl.planning.api import class_names

B, R, K, P, CH, S = 2, 3, 2, 8, 5, 8  # R regions (= class texts), K concepts, stage maps (B, CH, S, S)
REGIONS = [(1, 2, 3), (2, 3), (3,)]  # whole tumour, tumour core, enhancing tumour


def nested_labels() -> torch.Tensor:
    """(B, 1, S, S) labels: concentric squares 1 (outer ring), 2, 3 (centre); sample 1 has no label 3."""
    labels = torch.zeros(B, 1, S, S, dtype=torch.long)
    labels[:, :, 1:7, 1:7] = 1
    labels[:, :, 2:6, 2:6] = 2
    labels[0, :, 3:5, 3:5] = 3
    return labels


def to_regions(labels: torch.Tensor, ignore_label: int | None = None) -> torch.Tensor:
    """What ConvertSegmentationToRegionsTransform gives the loss: bool region channels (+ the ignore channel)."""
    regions = list(REGIONS) + ([(ignore_label,)] if ignore_label is not None else [])
    return torch.cat([torch.isin(labels, torch.tensor(r)) for r in regions], dim=1)


def make_aux(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "text_class": F.normalize(torch.randn(B, R, P, generator=g), dim=-1),
        "concept_text": F.normalize(torch.randn(R, K, P, generator=g), dim=-1),
        "concept_present": torch.ones(R, K, dtype=torch.bool),
        "visual_1": torch.randn(B, CH, S, S, generator=g).requires_grad_(),
        "projection_1": torch.randn(P, CH, generator=g),
    }


def reference_global(aux: dict[str, torch.Tensor], region_target: torch.Tensor, temperature: float) -> float:
    """Loop implementation: every present region pools over its own binary mask and picks its own text."""
    terms = []
    for b in range(B):
        for r in range(R):
            mask = region_target[b, r]
            if mask.any():
                v = F.normalize(aux["projection_1"] @ aux["visual_1"][b][:, mask].mean(1), dim=0)
                terms.append(-F.log_softmax(aux["text_class"][b] @ v / temperature, 0)[r])
    return torch.stack(terms).mean().item()


def test_bipvl_contrasts_every_region_with_its_own_mask() -> None:
    aux, target = make_aux(), to_regions(nested_labels())
    out = GlobalLocalContrastiveLoss(temperature=0.2)(aux, target)
    assert out["global"].item() == pytest.approx(reference_global(aux, target, 0.2), rel=1e-5)
    out["total"].backward()
    grad = aux["visual_1"].grad.abs().sum(1)  # (B, S, S)
    assert grad[:, 1, 1].min() > 0  # a voxel only in the whole tumour feeds that region's embedding
    assert grad[0, 3, 3] > 0  # a voxel in all three regions
    assert grad[:, 0, 0].max() == 0  # background is no class of a region model


def test_bipvl_region_ignore_channel_and_channel_check() -> None:
    labels = nested_labels()
    labels[:, :, 1, 1:7] = 4  # the ignore label overwrites the top row of the ring
    aux = make_aux()
    out = GlobalLocalContrastiveLoss(ignore_label=4)(aux, to_regions(labels, ignore_label=4))
    out["total"].backward()
    grad = aux["visual_1"].grad.abs().sum(1)
    assert grad[:, 1, 2:6].max() == 0 and grad[:, 2, 1].min() > 0
    with pytest.raises(ValueError, match="4 channels, expected 3"):
        GlobalLocalContrastiveLoss()(make_aux(), to_regions(labels, ignore_label=4))  # ignore channel unannounced


def test_region_masks_overlap_and_labels_stay_labels() -> None:
    labels = nested_labels()
    masks = class_masks(to_regions(labels), R)
    assert masks.shape == (B, R, S, S)
    assert masks[0, :, 3, 3].all() and masks[0, :, 1, 1].tolist() == [True, False, False]
    assert masks[1, 2].sum() == 0  # sample 1 has no enhancing tumour
    single = class_masks(to_regions(labels)[:, :1], 1)  # one region, no ignore label: still a region
    assert torch.equal(single[:, 0], labels[:, 0] > 0)
    by_label = class_masks(labels, 4)
    assert torch.equal(by_label[:, 0], labels[:, 0] == 0) and torch.equal(by_label[:, 2], labels[:, 0] == 2)


@pytest.mark.parametrize("ignore_label", [None, 4])
def test_tmca_foreground_is_the_union_of_the_regions(ignore_label: int | None) -> None:
    labels = nested_labels()
    if ignore_label is not None:
        labels[:, :, 0, :] = ignore_label
    regions = to_regions(labels, ignore_label)
    regions = torch.cat([regions[:, :R].flip(1), regions[:, R:]], dim=1)  # the innermost region first
    foreground, background = foreground_background(regions, ignore_label)
    assert torch.equal(foreground, (labels[:, 0] > 0) & (labels[:, 0] != (ignore_label or -1)))
    assert torch.equal(background, labels[:, 0] == 0)
    for size in ((8, 8), (4, 4), (2, 2)):
        by_regions = region_weights(regions, size, ignore_label)
        by_labels = region_weights(labels, size, ignore_label)
        for a, b in zip(by_regions, by_labels):
            torch.testing.assert_close(a, b)


def test_class_names_of_a_region_dataset_are_its_regions() -> None:
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3, "ignore": 4}
    assert class_names(labels) == ["whole tumor", "tumor core", "enhancing tumor"]
    assert class_names({"tumor": 2, "background": 0, "liver": 1}) == ["background", "liver", "tumor"]
