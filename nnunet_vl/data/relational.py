"""Relational reports for the synthetic datasets: the target is named by its rank among 3-5 look-alike objects
placed anywhere (not in cells), in wording whose test split is held out.

- ``rank``: the target's rank along one array axis: the first or last ("the uppermost lesion", "the most
  anterior nodule", "the leftmost focus") or second from either end ("the second lesion from the left").
- ``size_rank``: the target's size rank among objects whose radii differ by 15-30 % from one to the next
  ("the largest", "the second smallest").
- ``combined``: two objects in one half along an axis, the others in the other half; the target is the larger or
  the smaller of the two ("the smaller of the two left lesions").
- ``relational``: one of the three, drawn per case.

Margins keep every rank under nnU-Net's augmentations: scaling is synchronised over the axes and keeps both the
order and the size ratios; a rotation that tilts an axis by up to a degrees reorders two objects along it only
when their separation across it exceeds 1 / tan(a) times their separation along it. Rotations of up to 15 degrees
about each axis (3D) tilt an axis by up to 21.2 degrees (tan = 0.39), so consecutive objects are at least
2 voxels + 0.4 x their cross separation apart along the ranked axis (and the objects of a ``combined`` case as far
from the midline, measured from the image centre). Mirroring reverses a position rank: every rank
word is a direction word of `nnunet_vl.text.directions` (it swaps with the flip; tests check each one).

Wording: every rule has templates and synonyms for training cases and others, never used in training, for the
test cases' held-out reports (``reports_heldout.json``); test cases also get a report in the training wording
(``reports.json``), so a benchmark can compare both.
"""
from __future__ import annotations

import numpy as np

RELATIONAL_RULES = ("rank", "size_rank", "combined")
ROTATION_MARGIN = 0.4  # > tan(21.2 degrees): 3D rotations of <= 15 degrees about two axes tilt an axis that far
MIN_AXIS_GAP = 2.0  # voxels between consecutive objects' centres along the ranked axis, on top of the margin
SIZE_STEP = (1.15, 1.3)  # radius ratio of consecutive objects of a size rank
COMBINED_SIZE_STEP = (1.2, 1.35)

# ranked array axis -> (word set for the object at the LOW index end, word set for the HIGH index end); each word
# set: {"most": phrases for the extreme, "side": the end's noun for "second ... from the <side>"}; per split
_AXIS_WORDS = {
    2: {0: ({"most": {"train": ["uppermost", "highest"], "test": ["topmost"]}, "side": "top"},
            {"most": {"train": ["lowest", "lowermost"], "test": ["bottommost"]}, "side": "bottom"}),
        1: ({"most": {"train": ["leftmost"], "test": ["left-most"]}, "side": "left"},
            {"most": {"train": ["rightmost"], "test": ["right-most"]}, "side": "right"})},
    3: {0: ({"most": {"train": ["most inferior", "lowest"], "test": ["most caudal"]}, "side": "bottom"},
            {"most": {"train": ["most superior", "highest"], "test": ["most cranial"]}, "side": "top"}),
        1: ({"most": {"train": ["most anterior"], "test": ["most ventral"]}, "side": "front"},
            {"most": {"train": ["most posterior"], "test": ["most dorsal"]}, "side": "back"}),
        2: ({"most": {"train": ["rightmost"], "test": ["right-most"]}, "side": "right"},
            {"most": {"train": ["leftmost"], "test": ["left-most"]}, "side": "left"})},
}
# the half an object lies in, per axis: (word of the low half, word of the high half)
_HALF_WORDS = {2: {0: ("upper", "lower"), 1: ("left", "right")},
               3: {0: ("inferior", "superior"), 1: ("anterior", "posterior"), 2: ("right", "left")}}
_SIZE_WORDS = {"largest": {"train": ["largest"], "test": ["biggest"]},
               "smallest": {"train": ["smallest"], "test": ["tiniest"]},
               "larger": {"train": ["larger"], "test": ["bigger"]},
               "smaller": {"train": ["smaller"], "test": ["lesser"]}}
_NOUNS = {"train": [("lesion", "lesions"), ("nodule", "nodules")], "test": [("focus", "foci"), ("mass", "masses")]}
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}
_TEMPLATES = {
    "train": ["the {target} is the target.", "segment the {target}.", "{n} similar {nouns}; the {target} is of interest.",
              "target: the {target}.", "there are {n} {nouns}, please segment the {target}."],
    "test": ["please outline the {target}.", "of the {n} {nouns}, only the {target} matters.",
             "findings: {n} {nouns}. region of interest: the {target}.", "the {target} needs a contour."],
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _robust_order(centres: np.ndarray, axis: int) -> bool:
    """True when consecutive centres along `axis` are far enough apart that a <= 15 degree rotation keeps their order."""
    order = np.argsort(centres[:, axis])
    for a, b in zip(order[:-1], order[1:]):
        along = centres[b, axis] - centres[a, axis]
        across = np.linalg.norm(np.delete(centres[b] - centres[a], axis))
        if along < MIN_AXIS_GAP + ROTATION_MARGIN * across:
            return False
    return True


def _robust_half(centre: np.ndarray, shape: tuple[int, ...], axis: int) -> bool:
    """True when the centre stays on its side of the midline along `axis` under a <= 15 degree rotation about the
    image centre."""
    offset = centre - (np.asarray(shape) - 1) / 2
    return abs(offset[axis]) >= MIN_AXIS_GAP + ROTATION_MARGIN * np.linalg.norm(np.delete(offset, axis))


def _place(rng: np.random.Generator, shape: tuple[int, ...], dim: int, radii: list[float], accept,
           ranked_axis: int | None = None, halves: list[dict[int, int]] | None = None, attempts: int = 300
           ) -> list | None:
    """Non-overlapping blobs of `radii` at free positions, redrawn until `accept(centres)` holds; None if no draw
    does. With `ranked_axis`, the i-th blob's coordinate along that axis is drawn in the i-th of len(radii) equal
    slots of the axis (jittered), so a rank along it can keep its margins in small images; with `halves`, blob i
    lies in the half halves[i] (axis -> 0 low, 1 high)."""
    from nnunet_vl.data.synthetic import _Blob, _random_blob, _sample_center

    gap = max(3.0, 0.05 * min(shape))
    for _ in range(attempts):
        blobs = []
        shapes = [_random_blob(rng, dim, radius) for radius in radii]
        extent = max(b.extent for b in shapes) + 1.5
        for i, blob in enumerate(shapes):
            for _ in range(100):
                centre = _sample_center(rng, shape, dim, blob.extent, halves[i] if halves else {})
                if ranked_axis is not None:
                    lo, hi = extent, shape[ranked_axis] - 1 - extent
                    slot = (hi - lo) / len(radii)
                    centre[ranked_axis] = lo + slot * (i + 0.5 + rng.uniform(-0.2, 0.2))
                if all(np.linalg.norm(centre - b.center) >= blob.extent + b.extent + gap for b in blobs):
                    blobs.append(_Blob(centre, blob.semi_axes, blob.rotation))
                    break
            else:
                break
        if len(blobs) == len(radii) and accept(np.stack([b.center for b in blobs])):
            return blobs
    return None


def _fewer_until_placed(rng: np.random.Generator, shape: tuple[int, ...], count: int, draw) -> tuple[list, int, object]:
    """draw(count) -> (blobs or None, extra); tries count, then fewer objects (at least 3) where the image is too
    small for that many with robust ranks."""
    for n in range(count, 2, -1):
        blobs, extra = draw(n)
        if blobs is not None:
            return blobs, n, extra
    raise RuntimeError(f"could not place 3 objects with robust ranks in a {'x'.join(map(str, shape))} image; use a "
                       f"larger size")


def _report(rng: np.random.Generator, split: str, target_phrase: str, count: int) -> str:
    noun, nouns = _pick(rng, _NOUNS[split])
    sentence = _pick(rng, _TEMPLATES[split]).format(target=target_phrase.format(noun=noun, nouns=nouns),
                                                    n=_COUNTS[count], nouns=nouns)
    return sentence[0].upper() + sentence[1:]


def _base_radius(dim: int, shape: tuple[int, ...]) -> float:
    from nnunet_vl.data.synthetic import BASE_RADIUS

    return 0.8 * BASE_RADIUS[dim] * min(shape)


def _rank_case(rng, dim, shape):
    axis = int(rng.integers(dim))

    def draw(count: int):
        radii = [_base_radius(dim, shape) * rng.uniform(0.9, 1.1) for _ in range(count)]
        return _place(rng, shape, dim, radii, lambda c: _robust_order(c, axis), ranked_axis=axis), None

    blobs, count, _ = _fewer_until_placed(rng, shape, int(rng.integers(3, 6)), draw)
    order = np.argsort([b.center[axis] for b in blobs])
    end = int(rng.integers(2))  # 0: the low-index end, 1: the high-index end
    second = bool(rng.integers(2))
    position = (1 if second else 0) if end == 0 else (count - 2 if second else count - 1)
    words = _AXIS_WORDS[dim][axis][end]

    def phrase(split: str) -> str:
        if second:
            return "second {noun} from the " + words["side"]
        return _pick(rng, words["most"][split]) + " {noun}"

    return blobs, int(order[position]), count, phrase


def _size_rank_case(rng, dim, shape):
    def draw(count: int):
        radii = [_base_radius(dim, shape) * 0.75]
        for _ in range(count - 1):
            radii.append(radii[-1] * rng.uniform(*SIZE_STEP))
        shuffle = rng.permutation(count)  # drawn order independent of size
        return _place(rng, shape, dim, [radii[i] for i in shuffle], lambda c: True), shuffle

    blobs, count, shuffle = _fewer_until_placed(rng, shape, int(rng.integers(3, 6)), draw)
    rank = int(_pick(rng, [0, 1, count - 2, count - 1]))  # 0 = smallest
    which = "smallest" if rank in (0, 1) else "largest"
    second = rank in (1, count - 2)

    def phrase(split: str) -> str:
        return ("second " if second else "") + _pick(rng, _SIZE_WORDS[which][split]) + " {noun}"

    return blobs, int(np.flatnonzero(shuffle == rank)[0]), count, phrase


def _combined_case(rng, dim, shape):
    axis = int(rng.integers(dim))
    half = int(rng.integers(2))  # the half holding the two compared objects
    base = _base_radius(dim, shape) * 0.8
    pair = [base, base * rng.uniform(*COMBINED_SIZE_STEP)]

    def draw(count: int):
        radii = pair + [base * rng.uniform(0.9, 1.25) for _ in range(count - 2)]
        halves = [{axis: half}] * 2 + [{axis: 1 - half}] * (count - 2)
        return _place(rng, shape, dim, radii, lambda c: all(_robust_half(x, shape, axis) for x in c),
                      halves=halves), None

    blobs, count, _ = _fewer_until_placed(rng, shape, int(rng.integers(3, 6)), draw)
    larger = bool(rng.integers(2))
    side = _HALF_WORDS[dim][axis][half]

    def phrase(split: str) -> str:
        size = _pick(rng, _SIZE_WORDS["larger" if larger else "smaller"][split])
        return f"{size} of the two {side} {{nouns}}"

    return blobs, 1 if larger else 0, count, phrase


_LAYOUTS = {"rank": _rank_case, "size_rank": _size_rank_case, "combined": _combined_case}


def relational_case(rng: np.random.Generator, dim: int, shape: tuple[int, ...], rule: str
                    ) -> tuple[list, int, str, str]:
    """Objects, the target's index, its report in the training wording and in the held-out wording."""
    if rule == "relational":
        rule = _pick(rng, RELATIONAL_RULES)
    if rule not in _LAYOUTS:
        raise ValueError(f"unknown relational rule {rule!r}; choose one of {RELATIONAL_RULES + ('relational',)}")
    blobs, target, count, phrase = _LAYOUTS[rule](rng, dim, shape)
    train_phrase, test_phrase = phrase("train"), phrase("test")
    return blobs, target, _report(rng, "train", train_phrase, count), _report(rng, "test", test_phrase, count)
