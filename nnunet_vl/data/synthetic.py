"""Synthetic text-dependent segmentation datasets: only the report says which object is the target.

Every image holds several look-alike objects (bright blobs with the same shape family and the same
intensity distribution); exactly one is labelled. The target is chosen uniformly among the objects,
independently of the pixels, and the report names it by one cue:

- ``position``: 2 to 4 objects in different quadrants (2D) or in different cells of a left/right x
  anterior/posterior or left/right x superior/inferior split (3D); the report names the cell.
- ``side``: two objects, one per left/right half; the report names the side.
- ``size``: 2 or 3 objects of clearly different sizes; the report names the size rank
  (largest / smallest / medium-sized).
- ``mixed``: one of the above, drawn per case.
- ``lateral``: two look-alike objects, one per left/right half, BOTH labelled, as a bilateral pair:
  ``kidney_left`` on the left half, ``kidney_right`` on the right half (names that
  nnunet_vl.text.laterality pairs, so the plans get ``lateral_pairs``). Nothing in an object tells its
  side: only its place in the image does. The report names one side, whose kidney is drawn enlarged
  (``LATERAL_ENLARGEMENT`` x the radius); the other side is never named. It is the dataset of
  ``benchmarks/laterality.py``: mirroring along the left-right axis without swapping the pair's labels
  teaches the wrong side. ``size`` may give one edge per array axis, e.g. ``(32, 32, 64)``: an image
  longer along left-right than a patch.
- ``rank``, ``size_rank``, ``combined``, ``relational``: relational reports (nnunet_vl.data.relational): the target
  among 3-5 freely placed look-alikes by its rank along an axis ("the second lesion from the left"), its size rank
  among sizes 15-30 % apart, or as the larger/smaller of two in one half; the test cases' reports also in wording
  no training case uses (``reports_heldout.json``).

Direction conventions (also stored in ``dataset.json`` under ``synthetic_conventions``):

- 2D PNG, numpy array (row, column): "left" = low column index (viewer's left), "upper" = low row.
- 3D NIfTI, numpy array from SimpleITK (z, y, x): "left" = patient's left = high x index (LPS),
  "anterior" = low y index, "superior" = high z index.

The output is a plain nnU-Net v2 raw dataset plus the ``reports`` and ``label_texts`` keys of
design.md §1; the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy.ndimage import gaussian_filter

RULES = ("position", "side", "size", "mixed", "lateral", "rank", "size_rank", "combined", "relational")
TEXT_RULES = RULES[:3]  # the rules `mixed` draws from: one labelled target among look-alikes
RELATIONAL = RULES[5:]  # nnunet_vl.data.relational: ranks among 3-5 freely placed look-alikes, held-out wording
_T = TypeVar("_T")

CONVENTIONS = {
    2: "2D PNG arrays are (row, column): 'left' = low column index (viewer's left), 'upper' = low row index.",
    3: "3D NIfTI arrays from SimpleITK are (z, y, x): 'left' = patient's left = high x index (LPS), "
    "'anterior' = low y index, 'superior' = high z index.",
}

LABEL_TEXTS = {
    "background": {
        "definition": "Everything except the target: the dark surroundings and the look-alike objects "
        "that the report does not name.",
        "shape": "Fills the rest of the image and contains round distractor objects identical to the target.",
        "location": "Surrounds the target and covers every other region of the image.",
        "appearance": "Mostly dark grey, with bright distractor objects that look exactly like the target.",
        "contour": "Has no contour of its own; its inner boundary is the margin of the target.",
        "texture": "Fine grainy noise on a uniform dark field.",
    },
    "target": {
        "definition": "The single bright round object that the report points to by position, side or size.",
        "shape": "A round to slightly oval blob: a disc in 2D, an ellipsoid in 3D.",
        "location": "At the position, on the side or with the size rank named in the report.",
        "appearance": "Homogeneously bright against the dark background, as bright as the distractor objects.",
        "contour": "Smooth, well-defined margin, slightly blurred.",
        "texture": "Fine grainy noise on a uniform bright interior.",
    },
}

LATERAL_LABEL_TEXTS = {
    "background": {
        "definition": "Everything except the two kidneys: the dark surroundings.",
        "shape": "Fills the rest of the image around the two round kidneys.",
        "location": "Surrounds both kidneys and covers every other region of the image.",
        "appearance": "Uniformly dark grey.",
        "contour": "Has no contour of its own; its inner boundaries are the margins of the kidneys.",
        "texture": "Fine grainy noise on a uniform dark field.",
    },
    "kidney_left": {
        "definition": "The left kidney: the bright round object in the left half of the image.",
        "shape": "A round to slightly oval blob: a disc in 2D, an ellipsoid in 3D.",
        "location": "In the left half of the image, opposite the right kidney.",
        "appearance": "Homogeneously bright, exactly like the right kidney; larger when the report calls it enlarged.",
        "contour": "Smooth, well-defined margin, slightly blurred.",
        "texture": "Fine grainy noise on a uniform bright interior.",
    },
    "kidney_right": {
        "definition": "The right kidney: the bright round object in the right half of the image.",
        "shape": "A round to slightly oval blob: a disc in 2D, an ellipsoid in 3D.",
        "location": "In the right half of the image, opposite the left kidney.",
        "appearance": "Homogeneously bright, exactly like the left kidney; larger when the report calls it enlarged.",
        "contour": "Smooth, well-defined margin, slightly blurred.",
        "texture": "Fine grainy noise on a uniform bright interior.",
    },
}
LATERAL_LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2}
LATERAL_ENLARGEMENT = 1.3  # radius factor of the kidney the report names

DEFAULT_SIZE = {2: 64, 3: 32}
HELDOUT_REPORTS = "reports_heldout.json"
BACKGROUND_MEAN, OBJECT_MEAN = 60.0, 180.0
PIXEL_NOISE_STD, OBJECT_OFFSET_STD, BLUR_SIGMA = 12.0, 6.0, 0.6
# base object radius as a fraction of the image edge; size-rule levels differ by >= 1.5x in radius
BASE_RADIUS = {2: 0.10, 3: 0.11}
SIZE_LEVELS = {2: (0.065, 0.11, 0.17), 3: (0.08, 0.125, 0.19)}

# array axes: 2D (row, column), 3D (z, y, x)
_LR_AXIS = {2: 1, 3: 2}
_LR_WORD = {2: ("left", "right"), 3: ("right", "left")}  # word for the low / high half of the left-right axis
# the second position cue: (axis, word for low half, word for high half)
_SECOND_CUES = {2: ((0, "upper", "lower"),), 3: ((1, "anterior", "posterior"), (0, "inferior", "superior"))}

_NOUNS = (("round lesion", "round lesions"), ("rounded lesion", "rounded lesions"), ("bright nodule", "bright nodules"),
          ("well-defined mass", "well-defined masses"), ("bright focus", "bright foci"), ("oval lesion", "oval lesions"))
_NEUTRAL = ("No other findings.", "Otherwise unremarkable.", "Other similar objects are not of interest.",
            "Findings unchanged.", "Clinical correlation recommended.")
_VERTICAL_SYNONYMS = {"upper": ("upper", "top"), "lower": ("lower", "bottom")}
_SIZE_WORDS = {"smallest": ("smallest", "tiniest"), "largest": ("largest", "biggest"),
               "medium": ("medium-sized", "intermediate-sized", "middle-sized")}
_COUNT_WORDS = {2: "two", 3: "three"}
_LATERAL_TEMPLATES = ("the {side} kidney is enlarged.", "enlarged {side} kidney.", "mild enlargement of the {side} kidney.",
                      "{side} kidney enlarged, the other one normal in size.", "the {side} kidney appears enlarged.")


@dataclass(frozen=True)
class _Blob:
    """An ellipse/ellipsoid in array index coordinates."""

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray

    @property
    def extent(self) -> float:
        return float(self.semi_axes.max())


def _random_blob(rng: np.random.Generator, dim: int, radius: float) -> _Blob:
    """A blob (centred at 0) of mean radius ``radius``, random aspect (<= 1.15) and orientation; volume-preserving."""
    stretch = rng.uniform(1.0, 1.15, size=dim - 1)
    semi_axes = radius * np.append(stretch, 1.0 / np.prod(stretch))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return _Blob(center=np.zeros(dim), semi_axes=semi_axes, rotation=rotation)


def _sample_center(rng: np.random.Generator, shape: tuple[int, ...], dim: int, extent: float,
                   halves: dict[int, int]) -> np.ndarray:
    """Uniform centre keeping the blob ``margin`` voxels inside the image, and inside the given half per axis."""
    margin = 1.5
    center = np.empty(dim)
    for axis in range(dim):
        size = shape[axis]
        lo, hi = (0.0, float(size)) if axis not in halves else (halves[axis] * size / 2, (halves[axis] + 1) * size / 2)
        center[axis] = rng.uniform(lo + extent + margin, hi - 1 - extent - margin)
    return center


def _place_in_cells(rng: np.random.Generator, shape: tuple[int, ...], dim: int, cells: list[dict[int, int]],
                    scales: Sequence[float] | None = None) -> list[_Blob]:
    """One base-size blob per cell (cell = axis -> half index), its radius times `scales[i]` when given; the base
    size follows the shortest image edge."""
    blobs = []
    for i, cell in enumerate(cells):
        scale = 1.0 if scales is None else scales[i]
        blob = _random_blob(rng, dim, BASE_RADIUS[dim] * min(shape) * rng.uniform(0.9, 1.1) * scale)
        blobs.append(_Blob(_sample_center(rng, shape, dim, blob.extent, cell), blob.semi_axes, blob.rotation))
    return blobs


def _place_sized(rng: np.random.Generator, shape: tuple[int, ...], dim: int, radii: list[float]) -> list[_Blob]:
    """Blobs of the given radii at random non-overlapping positions, at least ``gap`` voxels apart."""
    gap = max(3.0, 0.05 * min(shape))
    for _ in range(100):
        blobs: list[_Blob] = []
        for radius in radii:
            blob = _random_blob(rng, dim, radius)
            for _ in range(200):
                center = _sample_center(rng, shape, dim, blob.extent, {})
                if all(np.linalg.norm(center - b.center) >= blob.extent + b.extent + gap for b in blobs):
                    blobs.append(_Blob(center, blob.semi_axes, blob.rotation))
                    break
            else:
                break
        if len(blobs) == len(radii):
            return blobs
    raise RuntimeError(f"could not place {len(radii)} separated objects in a {'x'.join(map(str, shape))} image; use a "
                       f"larger size")


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _finish_report(rng: np.random.Generator, sentence: str) -> str:
    """Capitalise, and sometimes add a neutral clause before or after the cue sentence."""
    sentence = sentence[0].upper() + sentence[1:]
    if rng.random() < 0.4:
        neutral = _pick(rng, _NEUTRAL)
        return f"{neutral} {sentence}" if rng.random() < 0.3 else f"{sentence} {neutral}"
    return sentence


def _location_report(rng: np.random.Generator, dim: int, words: list[str]) -> str:
    """Report for the ``position`` rule; ``words`` = [left/right word, second-axis word]."""
    noun = _pick(rng, _NOUNS)[0]
    lr, second = words
    if dim == 2:
        second = _pick(rng, _VERTICAL_SYNONYMS[second])
        pair = f"{second} {lr}" if rng.random() < 0.6 else f"{lr} {second}"
        region = _pick(rng, ("quadrant", "quadrant", "part of the image"))
    else:
        pair = f"{lr} {second}" if rng.random() < 0.6 else f"{second} {lr}"
        region = _pick(rng, ("region", "part", "aspect"))
    location = f"{pair} {region}"
    template = _pick(rng, ("{noun} in the {loc}.", "there is a {noun} in the {loc}.",
                           "the target {noun} lies in the {loc}.", "{loc}: {noun}.", "segment the {noun} in the {loc}."))
    return _finish_report(rng, template.format(noun=noun, loc=location))


def _side_report(rng: np.random.Generator, side: str) -> str:
    noun = _pick(rng, _NOUNS)[0]
    template = _pick(rng, ("{noun} on the {side} side.", "{side}-sided {noun}.", "the {noun} of interest is on the {side}.",
                           "target: {noun}, {side} side.", "there is a {noun} in the {side} half."))
    return _finish_report(rng, template.format(noun=noun, side=side))


def _size_report(rng: np.random.Generator, rank_word: str, count: int) -> str:
    noun, nouns = _pick(rng, _NOUNS)
    size_word = _pick(rng, _SIZE_WORDS[rank_word])
    template = _pick(rng, ("the {sz} {noun} is the target.", "segment the {sz} of the {n} {nouns}.",
                           "{n} similar {nouns}; the {sz} one is of interest.", "target: {sz} {noun}.",
                           "of the {n} {nouns}, the {sz} is relevant."))
    return _finish_report(rng, template.format(noun=noun, nouns=nouns, sz=size_word, n=_COUNT_WORDS[count]))


def _lateral_report(rng: np.random.Generator, side: str) -> str:
    return _finish_report(rng, _pick(rng, _LATERAL_TEMPLATES).format(side=side))


def _layout_lateral_case(rng: np.random.Generator, dim: int, shape: tuple[int, ...]) -> tuple[list[_Blob], str, int]:
    """The ``lateral`` rule: [blob on the low half, blob on the high half] of the left-right axis, the report, and
    the index of the blob it names (uniform, enlarged)."""
    named = int(rng.integers(2))
    scales = [LATERAL_ENLARGEMENT if i == named else 1.0 for i in range(2)]
    blobs = _place_in_cells(rng, shape, dim, [{_LR_AXIS[dim]: 0}, {_LR_AXIS[dim]: 1}], scales)
    return blobs, _lateral_report(rng, _LR_WORD[dim][named]), named


def _layout_case(rng: np.random.Generator, dim: int, shape: tuple[int, ...], rule: str) -> tuple[list[_Blob], int, str]:
    """Objects, index of the target (uniform, pixel-independent) and the report for one case."""
    if rule == "mixed":
        rule = _pick(rng, TEXT_RULES)
    size = min(shape)
    lr_axis = _LR_AXIS[dim]
    if rule == "position":
        axis, low_word, high_word = _pick(rng, _SECOND_CUES[dim])
        all_cells = [(h, v) for v in (0, 1) for h in (0, 1)]
        chosen = rng.choice(len(all_cells), size=int(rng.integers(2, 5)), replace=False)
        cells = [all_cells[i] for i in chosen]
        blobs = _place_in_cells(rng, shape, dim, [{lr_axis: h, axis: v} for h, v in cells])
        target = int(rng.integers(len(blobs)))
        h, v = cells[target]
        return blobs, target, _location_report(rng, dim, [_LR_WORD[dim][h], (low_word, high_word)[v]])
    if rule == "side":
        blobs = _place_in_cells(rng, shape, dim, [{lr_axis: 0}, {lr_axis: 1}])
        target = int(rng.integers(2))
        return blobs, target, _side_report(rng, _LR_WORD[dim][target])
    if rule == "size":
        count = int(rng.integers(2, 4))
        levels = np.sort(rng.choice(3, size=count, replace=False))
        radii = [SIZE_LEVELS[dim][lvl] * size * rng.uniform(0.95, 1.05) for lvl in levels]
        order = rng.permutation(count)  # random draw order, so rank and placement are unrelated
        blobs = _place_sized(rng, shape, dim, [radii[i] for i in order])
        target = int(rng.integers(count))
        rank = int(order[target])  # 0 = smallest
        rank_word = "smallest" if rank == 0 else "largest" if rank == count - 1 else "medium"
        return blobs, target, _size_report(rng, rank_word, count)
    raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")


def _render(rng: np.random.Generator, blobs: list[_Blob], shape: tuple[int, ...], dim: int
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 image and one boolean mask per blob; all objects share one intensity distribution."""
    points = np.indices(shape, dtype=np.float64).reshape(dim, -1).T
    masks = []
    mean = np.full(shape, BACKGROUND_MEAN)
    for blob in blobs:
        local = (points - blob.center) @ blob.rotation
        mask = (np.sum((local / blob.semi_axes) ** 2, axis=1) <= 1.0).reshape(shape)
        mean[mask] = OBJECT_MEAN + rng.normal(0.0, OBJECT_OFFSET_STD)
        masks.append(mask)
    image = gaussian_filter(mean + rng.normal(0.0, PIXEL_NOISE_STD, size=shape), sigma=BLUR_SIGMA)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks


def _save_array(array: np.ndarray, path: Path) -> None:
    """PNG for 2D (nnU-Net's NaturalImage2DIO), NIfTI with unit spacing and identity direction for 3D."""
    if array.ndim == 2:
        Image.fromarray(array).save(path, format="PNG")
        return
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection(tuple(np.eye(3).ravel()))
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_dataset(folder: Path, dim: int, num_train: int, num_test: int, shape: tuple[int, ...], seed: int,
                   rule: str, name: str) -> None:
    ending = ".png" if dim == 2 else ".nii.gz"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir()
    total = num_train + num_test
    width = max(3, len(str(total - 1)))
    case_rngs = np.random.default_rng(seed).spawn(total)  # case i depends only on (seed, i)
    reports, heldout = {}, {}
    for i, case_rng in enumerate(case_rngs):
        case = f"case_{i:0{width}d}"
        if rule == "lateral":
            blobs, report, _ = _layout_lateral_case(case_rng, dim, shape)
            image, masks = _render(case_rng, blobs, shape, dim)
            # low / high half of the left-right axis -> its side's label
            sides = {word: masks[i] for i, word in enumerate(_LR_WORD[dim])}
            label = np.zeros(shape, dtype=np.uint8)
            label[sides["left"]] = LATERAL_LABELS["kidney_left"]
            label[sides["right"]] = LATERAL_LABELS["kidney_right"]
        elif rule in RELATIONAL:
            from nnunet_vl.data.relational import relational_case

            blobs, target, report, heldout_report = relational_case(case_rng, dim, shape, rule)
            image, masks = _render(case_rng, blobs, shape, dim)
            label = masks[target].astype(np.uint8)
            if i >= num_train:
                heldout[case] = heldout_report
        else:
            blobs, target, report = _layout_case(case_rng, dim, shape, rule)
            image, masks = _render(case_rng, blobs, shape, dim)
            label = masks[target].astype(np.uint8)
        split = "Tr" if i < num_train else "Ts"
        _save_array(image, folder / f"images{split}" / f"{case}_0000{ending}")
        _save_array(label, folder / f"labels{split}" / f"{case}{ending}")
        reports[case] = report
    (folder / "reports.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    if rule in RELATIONAL:  # the test cases' reports in wording no training case uses
        (folder / HELDOUT_REPORTS).write_text(json.dumps(heldout, indent=2) + "\n", encoding="utf-8")
    if rule == "lateral":
        description = (f"Synthetic {dim}D data (rule 'lateral'): two look-alike objects, one per left/right half, "
                       "labelled as a bilateral pair (kidney_left / kidney_right); the report names the side whose "
                       "kidney is enlarged.")
        labels, label_texts = LATERAL_LABELS, LATERAL_LABEL_TEXTS
    elif rule in RELATIONAL:
        description = (f"Synthetic relational {dim}D data (rule '{rule}'): 3-5 look-alike objects placed freely; the "
                       "report names the target by its rank along an axis, its size rank, or the larger/smaller of "
                       f"two in one half. {HELDOUT_REPORTS}: the test cases' reports in held-out wording.")
        labels, label_texts = {"background": 0, "target": 1}, LABEL_TEXTS
    else:
        description = (f"Synthetic text-dependent {dim}D data (rule '{rule}'): several look-alike objects per "
                       "image; only the report says which one is the target.")
        labels, label_texts = {"background": 0, "target": 1}, LABEL_TEXTS
    dataset_json = {
        "name": name,
        "description": description,
        "channel_names": {"0": "synthetic"},
        "labels": labels,
        "numTraining": num_train,
        "file_ending": ending,
        "reports": "reports.json",
        "label_texts": label_texts,
        "synthetic_rule": rule,
        "synthetic_conventions": CONVENTIONS[dim],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")


def make_synthetic_dataset(raw_root: Path, dataset_id: int, dim: int = 2, num_train: int = 120, num_test: int = 30,
                           size: int | Sequence[int] | None = None, seed: int = 0, rule: str = "position",
                           name: str | None = None, overwrite: bool = False) -> Path:
    """Write ``raw_root/DatasetXXX_<name>`` (nnU-Net v2 raw format + reports) and return its path.

    size: the image edge, or one edge per array axis ((row, column) in 2D, (z, y, x) in 3D).

    The dataset is built in a hidden temporary folder next to it and renamed at the end, so an
    interrupted run leaves no half-written dataset behind.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    size = DEFAULT_SIZE[dim] if size is None else size
    shape = (int(size),) * dim if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != dim:
        raise ValueError(f"size must be one edge or {dim} edges for {dim}D images, got {size}")
    if min(shape) < 24:
        raise ValueError(f"size must be >= 24 so the objects stay separated, got {size}")
    if rule == "lateral":
        # the largest (enlarged, stretched) kidney must fit inside its half of the left-right axis
        extent = BASE_RADIUS[dim] * min(shape) * 1.1 * LATERAL_ENLARGEMENT * 1.15
        if shape[_LR_AXIS[dim]] / 2 < 2 * extent + 4:
            raise ValueError(f"rule 'lateral' needs a longer left-right edge (array axis {_LR_AXIS[dim]}) than "
                             f"{shape[_LR_AXIS[dim]]} for {'x'.join(map(str, shape))} images: at least "
                             f"{int(np.ceil(4 * extent + 8))}")
    name = name or f"SynthVL{dim}D"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ValueError(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")

    raw_root = Path(raw_root)
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    if raw_root.is_dir():
        clashes = [p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder.name]
        if clashes:
            raise FileExistsError(f"dataset id {dataset_id} is already used by {clashes} in {raw_root}; "
                                  "nnU-Net needs unique ids, choose another dataset_id")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace it")
    raw_root.mkdir(parents=True, exist_ok=True)

    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=raw_root))
    try:
        _write_dataset(partial, dim, num_train, num_test, shape, seed, rule, name)
        if folder.exists():
            # move the old dataset aside first so a failure never leaves neither version in place
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=raw_root))
            folder.rename(old / folder.name)
            try:
                partial.rename(folder)
            except BaseException:
                (old / folder.name).rename(folder)
                raise
            shutil.rmtree(old)
        else:
            partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
