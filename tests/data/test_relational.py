"""Relational synthetic reports: the report names the target by rank; ranks survive nnU-Net's augmentations,
mirroring with swapped words names the same object, and the test cases' held-out wording is never trained on."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nnunet_vl.data import relational
from nnunet_vl.data.relational import relational_case
from nnunet_vl.data.synthetic import make_synthetic_dataset
from nnunet_vl.text.directions import direction_words

ANATOMICAL = {2: {0: "superior_inferior", 1: "left_right"},
              3: {0: "superior_inferior", 1: "anterior_posterior", 2: "left_right"}}
SHAPES = {2: (64, 64), 3: (32, 32, 32)}
WORDS = direction_words(())


def _ends(dim: int):
    """phrase -> (axis, end) for every extreme phrase, and side noun -> (axis, end)."""
    most, side = {}, {}
    for axis, pair in relational._AXIS_WORDS[dim].items():
        for end, words in enumerate(pair):
            for split in ("train", "test"):
                for w in words["most"][split]:
                    most[w] = (axis, end)
            side[words["side"]] = (axis, end)
    return most, side


def interpret(report: str, dim: int, centres: np.ndarray, extents: np.ndarray) -> int:
    """The object a reader picks from the report (the generator's wording tables, read independently of it)."""
    text = report.lower()
    most, side = _ends(dim)
    sizes = {w: k for k, table in relational._SIZE_WORDS.items() for split in table.values() for w in split}
    m = re.search(r"(\w+) of the two (\w+) ", text)
    if m:
        kind = sizes[m.group(1)]
        axis, half = next((a, h) for a, words in relational._HALF_WORDS[dim].items()
                          for h, w in enumerate(words) if w == m.group(2))
        mid = (SHAPES[dim][axis] - 1) / 2
        members = [i for i in range(len(centres)) if (centres[i, axis] > mid) == bool(half)]
        assert len(members) == 2, report
        pick = max if kind == "larger" else min
        return pick(members, key=lambda i: extents[i])
    m = re.search(r"second \w+ from the (\w+)", text)
    if m:
        axis, end = side[m.group(1)]
        order = np.argsort(centres[:, axis])
        return int(order[1] if end == 0 else order[-2])
    for phrase in sorted(most, key=len, reverse=True):
        if re.search(rf"\b{re.escape(phrase)}\b", text):
            axis, end = most[phrase]
            order = np.argsort(centres[:, axis])
            return int(order[0] if end == 0 else order[-1])
    m = re.search(r"(second )?(\w+) \w+( \w+)?\.?$", text.split(";")[-1].split(":")[-1]) or True
    for word, kind in sorted(sizes.items(), key=lambda kv: -len(kv[0])):
        if re.search(rf"\b(second )?{word}\b", text) and kind in ("largest", "smallest"):
            second = bool(re.search(rf"\bsecond {word}\b", text))
            order = np.argsort(extents)
            if kind == "largest":
                return int(order[-2] if second else order[-1])
            return int(order[1] if second else order[0])
    raise AssertionError(f"no rank in {report!r}")


def _cases(dim: int, rule: str = "relational", n: int = 40, seed: int = 0):
    rngs = np.random.default_rng(seed).spawn(n)
    return [relational_case(r, dim, SHAPES[dim], rule) for r in rngs]


@pytest.mark.parametrize("dim", [2, 3])
def test_both_wordings_name_the_labelled_object(dim):
    for blobs, target, report, heldout in _cases(dim):
        centres = np.stack([b.center for b in blobs])
        extents = np.array([np.prod(b.semi_axes) for b in blobs])
        assert 3 <= len(blobs) <= 5
        assert interpret(report, dim, centres, extents) == target, report
        assert interpret(heldout, dim, centres, extents) == target, heldout


@pytest.mark.parametrize("dim", [2, 3])
def test_mirrored_image_with_swapped_words_names_the_same_object(dim):
    """What training does with a flipped sample: flip the image along an axis and swap that axis's words."""
    for blobs, target, report, heldout in _cases(dim, seed=1):
        centres = np.stack([b.center for b in blobs])
        extents = np.array([np.prod(b.semi_axes) for b in blobs])
        for axis in range(dim):
            flipped = centres.copy()
            flipped[:, axis] = SHAPES[dim][axis] - 1 - flipped[:, axis]
            for text in (report, heldout):
                swapped = WORDS.swap(text, [ANATOMICAL[dim][axis]])
                assert interpret(swapped, dim, flipped, extents) == target, (axis, text, swapped)


def _rotation(dim: int, rng: np.random.Generator, degrees: float) -> np.ndarray:
    if dim == 2:
        a = np.deg2rad(degrees)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):  # nnU-Net rotates about each axis by up to the limit
        a = np.deg2rad(rng.uniform(-abs(degrees), abs(degrees)))
        r = np.eye(3)
        r[np.ix_(axes, axes)] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        matrix = matrix @ r
    return matrix


@pytest.mark.parametrize("dim", [2, 3])
def test_ranks_survive_rotation_up_to_15_degrees_and_scaling(dim):
    rng = np.random.default_rng(5)
    for blobs, target, report, _ in _cases(dim, seed=2):
        centres = np.stack([b.center for b in blobs])
        extents = np.array([np.prod(b.semi_axes) for b in blobs])
        middle = (np.asarray(SHAPES[dim]) - 1) / 2
        for degrees in (15.0, -15.0, 10.0):
            scale = rng.uniform(0.7, 1.4)  # nnU-Net scales all axes by one factor
            moved = (centres - middle) @ _rotation(dim, rng, degrees).T * scale + middle
            assert interpret(report, dim, moved, extents * scale ** dim) == target, (report, degrees)


def test_size_ranks_differ_by_at_least_15_percent_in_radius():
    for blobs, _, report, _ in _cases(2, "size_rank", seed=3):
        radii = np.sort([np.prod(b.semi_axes) ** 0.5 for b in blobs])
        assert np.all(radii[1:] / radii[:-1] >= 1.15 - 1e-6), report


def test_every_rank_word_is_a_direction_of_its_axis_and_swaps_to_the_other_end():
    for dim, table in relational._AXIS_WORDS.items():
        for axis, (low, high) in table.items():
            anatomical = ANATOMICAL[dim][axis]
            for split in ("train", "test"):
                for words, other in ((low, high), (high, low)):
                    for a in words["most"][split]:
                        assert WORDS.named_axes(f"the {a} lesion") == {anatomical}, a
                        others = {f"the {b} lesion" for s in ("train", "test") for b in other["most"][s]}
                        assert WORDS.swap(f"the {a} lesion", [anatomical]) in others, a
            assert WORDS.swap(f"the second lesion from the {low['side']}", [anatomical]) == \
                f"the second lesion from the {high['side']}"
        for axis, (low, high) in relational._HALF_WORDS[dim].items():
            anatomical = ANATOMICAL[dim][axis]
            assert WORDS.swap(f"the smaller of the two {low} lesions", [anatomical]) == \
                f"the smaller of the two {high} lesions"


@pytest.mark.parametrize("dim", [2, 3])
def test_dataset_has_held_out_wording_only_for_test_cases(tmp_path, dim):
    folder = make_synthetic_dataset(tmp_path, 1, dim=dim, num_train=30, num_test=8, size=SHAPES[dim][0],
                                    rule="relational")
    reports = json.loads((folder / "reports.json").read_text())
    heldout = json.loads((folder / "reports_heldout.json").read_text())
    tests = sorted(p.name.split("_0000")[0] for p in (folder / "imagesTs").iterdir())
    assert sorted(heldout) == tests and len(reports) == 38
    test_only = {w for table in (relational._AXIS_WORDS[dim], ) for pair in table.values() for end in pair
                 for w in end["most"]["test"]}
    test_only |= {w for table in relational._SIZE_WORDS.values() for w in table["test"]}
    test_only |= {w for pair in relational._NOUNS["test"] for w in pair}
    for case, text in reports.items():
        assert not any(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in test_only), (case, text)
    for text in heldout.values():
        assert any(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in test_only), text
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "target": 1}
