"""The synthetic text-dependent dataset: nnU-Net-readable, deterministic, and solvable only with the report."""
from __future__ import annotations

import filecmp
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from scipy import ndimage, stats

from nnunet_vl.data import synthetic
from nnunet_vl.data.synthetic import make_synthetic_dataset

CONCEPTS = {"definition", "shape", "location", "appearance", "contour", "texture"}
RULES = ("position", "side", "size", "mixed")
NUM_TRAIN = {2: 200, 3: 100}
NUM_TEST = {2: 40, 3: 20}
OBJECT_COUNTS = {"position": {2, 3, 4}, "side": {2}, "size": {2, 3}}
LR_WORDS, SIZE_WORDS = {"left", "right"}, {"largest", "biggest", "smallest", "tiniest", "medium", "intermediate", "middle"}
SECOND_WORDS = {2: {"upper", "top", "lower", "bottom"}, 3: {"anterior", "posterior", "superior", "inferior"}}


@dataclass
class Case:
    case_id: str
    image: np.ndarray  # 2D (row, col) or 3D (z, y, x)
    label: np.ndarray
    report: str
    objects: list[np.ndarray]  # boolean mask per bright object found in the image
    target: int  # index into objects of the labelled one
    label_iou: float


def _io(dim: int):
    return NaturalImage2DIO() if dim == 2 else SimpleITKIO()


def _load_cases(folder: Path, dim: int) -> list[Case]:
    """Read every case with nnU-Net's IO; find the objects as bright connected components."""
    meta = json.loads((folder / "dataset.json").read_text())
    reports = json.loads((folder / meta["reports"]).read_text())
    io, ending = _io(dim), meta["file_ending"]
    cases = []
    for split in ("Tr", "Ts"):
        for label_file in sorted((folder / f"labels{split}").iterdir()):
            case_id = label_file.name[: -len(ending)]
            image, _ = io.read_images([str(folder / f"images{split}" / f"{case_id}_0000{ending}")])
            label, _ = io.read_seg(str(label_file))
            assert image.shape == label.shape
            image, label = (image[0, 0], label[0, 0]) if dim == 2 else (image[0], label[0])
            components, n = ndimage.label(image > 120)
            objects = [components == k for k in range(1, n + 1)]
            overlapping = [i for i, obj in enumerate(objects) if (obj & (label > 0)).any()]
            assert len(overlapping) == 1, f"{case_id}: label overlaps {len(overlapping)} objects"
            target = overlapping[0]
            iou = (objects[target] & (label > 0)).sum() / (objects[target] | (label > 0)).sum()
            cases.append(Case(case_id, image, label, reports[case_id], objects, target, float(iou)))
    return cases


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """dataset(dim, rule) -> (folder, cases); each combination is generated and read once."""
    cache: dict[tuple[int, str], tuple[Path, list[Case]]] = {}
    root = tmp_path_factory.mktemp("raw")

    def get(dim: int, rule: str) -> tuple[Path, list[Case]]:
        if (dim, rule) not in cache:
            folder = make_synthetic_dataset(root, 10 * dim + RULES.index(rule), dim=dim, num_train=NUM_TRAIN[dim],
                                            num_test=NUM_TEST[dim], rule=rule, seed=7)
            cache[dim, rule] = folder, _load_cases(folder, dim)
        return cache[dim, rule]

    return get


def _selected_by_report(case: Case, dim: int) -> tuple[list[int], set[str]]:
    """Objects that satisfy every cue word of the report, and the cue words found."""
    words = set(re.findall(r"[a-z]+", case.report.lower()))
    size = case.image.shape[0]
    half = (size - 1) / 2
    centroids = [np.array(ndimage.center_of_mass(obj)) for obj in case.objects]
    areas = [int(obj.sum()) for obj in case.objects]
    lr_axis = 1 if dim == 2 else 2
    left_is_low = dim == 2  # 2D: viewer's left = low column; 3D LPS: patient's left = high x
    tests = {
        "left": lambda c, a: (c[lr_axis] < half) == left_is_low,
        "right": lambda c, a: (c[lr_axis] > half) == left_is_low,
        "upper": lambda c, a: c[0] < half, "top": lambda c, a: c[0] < half,
        "lower": lambda c, a: c[0] > half, "bottom": lambda c, a: c[0] > half,
        "anterior": lambda c, a: c[1] < half, "posterior": lambda c, a: c[1] > half,
        "superior": lambda c, a: c[0] > half, "inferior": lambda c, a: c[0] < half,
        "largest": lambda c, a: a == max(areas), "biggest": lambda c, a: a == max(areas),
        "smallest": lambda c, a: a == min(areas), "tiniest": lambda c, a: a == min(areas),
        "medium": lambda c, a: min(areas) < a < max(areas),
        "intermediate": lambda c, a: min(areas) < a < max(areas),
        "middle": lambda c, a: min(areas) < a < max(areas),
    }
    if dim == 3:  # upper/lower are not used in 3D reports
        for word in ("upper", "top", "lower", "bottom"):
            tests.pop(word)
    cues = words & tests.keys()
    selected = [i for i, (c, a) in enumerate(zip(centroids, areas)) if all(tests[w](c, a) for w in cues)]
    return selected, cues


@pytest.mark.parametrize("dim", [2, 3])
def test_dataset_layout_and_nnunet_compatibility(dataset, dim):
    folder, cases = dataset(dim, "position")
    assert folder.name == f"Dataset{10 * dim:03d}_SynthVL{dim}D"
    meta = json.loads((folder / "dataset.json").read_text())
    ending = ".png" if dim == 2 else ".nii.gz"
    assert meta["channel_names"] == {"0": "synthetic"}
    assert meta["labels"] == {"background": 0, "target": 1}
    assert meta["numTraining"] == NUM_TRAIN[dim] and meta["file_ending"] == ending
    assert meta["reports"] == "reports.json"
    assert set(meta["label_texts"]) == {"background", "target"}
    for concepts in meta["label_texts"].values():
        assert set(concepts) == CONCEPTS and all(isinstance(t, str) and t.strip() for t in concepts.values())
    assert ("high x" if dim == 3 else "low column") in meta["synthetic_conventions"]

    for split, n in (("Tr", NUM_TRAIN[dim]), ("Ts", NUM_TEST[dim])):
        assert len(list((folder / f"images{split}").glob(f"*_0000{ending}"))) == n
        assert len(list((folder / f"labels{split}").glob(f"*{ending}"))) == n
    # nnU-Net itself picks the right reader and finds every training case
    assert determine_reader_writer_from_dataset_json(meta, str(next((folder / "imagesTr").iterdir())),
                                                     verbose=False) is type(_io(dim))
    assert len(get_filenames_of_train_images_and_targets(str(folder), meta)) == NUM_TRAIN[dim]
    if dim == 3:
        _, props = SimpleITKIO().read_images([str(folder / "imagesTr" / f"case_000_0000{ending}")])
        assert tuple(props["spacing"]) == (1.0, 1.0, 1.0)
        assert np.allclose(props["sitk_stuff"]["direction"], np.eye(3).ravel())

    reports = json.loads((folder / "reports.json").read_text())
    assert set(reports) == {c.case_id for c in cases} and len(reports) == NUM_TRAIN[dim] + NUM_TEST[dim]
    assert all(r.strip() and len(r.split()) < 25 for r in reports.values())
    assert len(set(reports.values())) > len(reports) / 3, "reports must not collapse onto a few strings"
    assert any(r.endswith("findings.") or r.startswith("No other") for r in reports.values())


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("rule", RULES)
def test_images_hold_lookalikes_and_one_labelled_target(dataset, dim, rule):
    _, cases = dataset(dim, rule)
    for case in cases:
        assert case.image.shape == ((64,) * 2 if dim == 2 else (32,) * 3)
        assert set(np.unique(case.label)) == {0, 1}
        assert ndimage.label(case.label)[1] == 1, f"{case.case_id}: target is not one connected object"
        assert len(case.objects) in set.union(*OBJECT_COUNTS.values()), f"{case.case_id}: objects merged or missing"
        assert case.label_iou > 0.8, f"{case.case_id}: label does not match the target's pixels"
        if rule != "mixed":
            assert len(case.objects) in OBJECT_COUNTS[rule]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("rule", RULES)
def test_report_names_exactly_the_labelled_object(dataset, dim, rule):
    _, cases = dataset(dim, rule)
    kinds = set()
    for case in cases:
        selected, cues = _selected_by_report(case, dim)
        assert selected == [case.target], f"{case.case_id}: {case.report!r} selects {selected}, label is {case.target}"
        kind = "size" if cues & SIZE_WORDS else "position" if cues & SECOND_WORDS[dim] else "side"
        kinds.add(kind)
        if kind == "position":
            assert len(cues & LR_WORDS) == 1 and len(cues & SECOND_WORDS[dim]) == 1
        if kind == "side":
            assert cues <= LR_WORDS and len(cues) == 1
        if kind == "size":
            assert not cues & (LR_WORDS | SECOND_WORDS[dim])
    assert kinds == ({"position", "side", "size"} if rule == "mixed" else {rule})


def _uniform(counts: list[int]) -> bool:
    return stats.chisquare(counts).pvalue > 0.001


@pytest.mark.parametrize("dim", [2, 3])
def test_target_is_uniform_over_candidate_positions(dataset, dim):
    _, cases = dataset(dim, "position")
    cells = []  # (left-right half, half along the second axis) of the target, from its pixels
    for case in cases:
        high = np.array(ndimage.center_of_mass(case.objects[case.target])) > (len(case.image) - 1) / 2
        uses_ap = dim == 3 and bool({"anterior", "posterior"} & set(re.findall(r"[a-z]+", case.report.lower())))
        cells.append(2 * int(high[dim - 1]) + int(high[1] if uses_ap else high[0]))
    assert _uniform(np.bincount(cells, minlength=4).tolist())

    _, cases = dataset(dim, "side")
    left = [np.array(ndimage.center_of_mass(c.objects[c.target]))[-1] < (len(c.image) - 1) / 2 for c in cases]
    assert _uniform([sum(left), len(left) - sum(left)])


@pytest.mark.parametrize("dim", [2, 3])
def test_target_is_uniform_over_size_ranks(dataset, dim):
    _, cases = dataset(dim, "size")
    for n in (2, 3):
        ranks = [int(np.argsort(np.argsort([o.sum() for o in c.objects]))[c.target]) for c in cases
                 if len(c.objects) == n]
        assert len(ranks) > 20
        assert _uniform(np.bincount(ranks, minlength=n).tolist())


@pytest.mark.parametrize("dim", [2, 3])
def test_target_looks_exactly_like_the_distractors(dataset, dim):
    """Pixels alone cannot tell the target: same brightness and, outside the size rule, the same size."""
    for rule in ("position", "side"):
        _, cases = dataset(dim, rule)
        target_mean = [c.image[c.objects[c.target]].mean() for c in cases]
        other_mean = [c.image[o].mean() for c in cases for i, o in enumerate(c.objects) if i != c.target]
        target_area = [c.objects[c.target].sum() for c in cases]
        other_area = [o.sum() for c in cases for i, o in enumerate(c.objects) if i != c.target]
        spread = np.std(target_mean + other_mean)
        assert spread > 1.0  # objects do vary, so the comparison below is meaningful
        assert abs(np.mean(target_mean) - np.mean(other_mean)) < 0.25 * spread
        assert stats.ttest_ind(target_mean, other_mean, equal_var=False).pvalue > 0.001
        assert abs(np.mean(target_area) - np.mean(other_area)) < 0.25 * np.std(target_area + other_area)
        # picking the brightest object is no better than chance
        brightest_hits = np.mean([np.argmax([c.image[o].mean() for o in c.objects]) == c.target for c in cases])
        chance = np.mean([1 / len(c.objects) for c in cases])
        assert abs(brightest_hits - chance) < 0.12


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("dim", [2, 3])
def test_same_seed_gives_identical_bytes(tmp_path, dim):
    kwargs = dict(dataset_id=1, dim=dim, num_train=4, num_test=2, rule="mixed")
    a = make_synthetic_dataset(tmp_path / "a", seed=3, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=3, **kwargs)
    c = make_synthetic_dataset(tmp_path / "c", seed=4, **kwargs)
    assert _files(a) == _files(b) == _files(c)
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    images = [f for f in _files(a) if f.startswith("images")]
    assert all(not filecmp.cmp(a / f, c / f, shallow=False) for f in images)
    assert (a / "reports.json").read_text() != (c / "reports.json").read_text()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    folder = make_synthetic_dataset(tmp_path, 5, num_train=6, num_test=2, seed=0)
    with pytest.raises(FileExistsError, match=r"Dataset005_SynthVL2D.*overwrite=True"):
        make_synthetic_dataset(tmp_path, 5, num_train=3, num_test=1, seed=1)
    assert len(list((folder / "imagesTr").iterdir())) == 6

    assert make_synthetic_dataset(tmp_path, 5, num_train=3, num_test=1, seed=1, overwrite=True) == folder
    assert len(list((folder / "imagesTr").iterdir())) == 3  # replaced, no stale cases left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset005_SynthVL2D"]

    with pytest.raises(FileExistsError, match="dataset id 5"):  # nnU-Net needs ids to be unique
        make_synthetic_dataset(tmp_path, 5, name="Other")


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    real_save, calls = synthetic._save_array, []

    def failing_save(array: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        real_save(array, path)

    monkeypatch.setattr(synthetic, "_save_array", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_dataset(tmp_path, 7, num_train=6, num_test=2)
    assert list(tmp_path.iterdir()) == []

    # a failed overwrite keeps the previous dataset intact
    monkeypatch.setattr(synthetic, "_save_array", real_save)
    folder = make_synthetic_dataset(tmp_path, 7, num_train=3, num_test=1)
    before = {f: (folder / f).read_bytes() for f in _files(folder)}
    calls.clear()
    monkeypatch.setattr(synthetic, "_save_array", failing_save)
    with pytest.raises(OSError):
        make_synthetic_dataset(tmp_path, 7, num_train=6, num_test=2, seed=9, overwrite=True)
    assert {f: (folder / f).read_bytes() for f in _files(folder)} == before
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


# ----- the lateral rule: a bilateral label pair (benchmarks/laterality.py) -----------------------------------------
LATERAL_SHAPES = {2: (48, 48), 3: (32, 32, 32)}


@pytest.fixture(scope="module")
def lateral(tmp_path_factory):
    """lateral(dim, shape) -> (folder, cases as (case id, image, label, report)); small, generated once each."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("raw_lateral")

    def get(dim: int, shape: tuple[int, ...]):
        if (dim, shape) not in cache:
            folder = make_synthetic_dataset(root, 60 + len(cache), dim=dim, num_train=24, num_test=4, size=shape,
                                            rule="lateral", seed=11)
            meta = json.loads((folder / "dataset.json").read_text())
            reports = json.loads((folder / "reports.json").read_text())
            io, ending, cases = _io(dim), meta["file_ending"], []
            for split in ("Tr", "Ts"):
                for label_file in sorted((folder / f"labels{split}").iterdir()):
                    case_id = label_file.name[: -len(ending)]
                    image, _ = io.read_images([str(folder / f"images{split}" / f"{case_id}_0000{ending}")])
                    label, _ = io.read_seg(str(label_file))
                    squeeze = (lambda a: a[0, 0]) if dim == 2 else (lambda a: a[0])
                    cases.append((case_id, squeeze(image), squeeze(label), reports[case_id]))
            cache[dim, shape] = folder, cases
        return cache[dim, shape]

    return get


@pytest.mark.parametrize("dim", [2, 3])
def test_lateral_labels_are_a_pair_the_planner_detects(lateral, dim):
    from nnunet_vl.text.laterality import dataset_lateral_pairs

    folder, cases = lateral(dim, LATERAL_SHAPES[dim])
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "kidney_left": 1, "kidney_right": 2}
    assert meta["synthetic_rule"] == "lateral" and set(meta["label_texts"]) == set(meta["labels"])
    assert all(set(c) == CONCEPTS for c in meta["label_texts"].values())
    pairs, source = dataset_lateral_pairs(meta, meta["label_texts"])
    assert pairs == [("kidney_left", "kidney_right")] and "detected" in source
    assert len(get_filenames_of_train_images_and_targets(str(folder), meta)) == 24
    assert len(cases) == 28


@pytest.mark.parametrize("dim,shape", [(2, (48, 48)), (3, (32, 32, 32)), (3, (24, 24, 48))])
def test_lateral_objects_lie_on_their_side_of_the_planners_left_right_axis(lateral, dim, shape):
    """Each label is one object in its half of the axis the planner calls left-right (3D: from the NIfTI direction
    cosines, LPS: patient's left = high x; 2D PNG: the last axis, 'left' = low column as in the other rules)."""
    from nnunet_vl.planning.planners import direction_axes_from_geometry

    folder, cases = lateral(dim, shape)
    ending = ".png" if dim == 2 else ".nii.gz"
    _, props = _io(dim).read_images([str(folder / "imagesTr" / f"case_000_0000{ending}")])
    axes, _ = direction_axes_from_geometry(props, [0, 1, 2])
    lr_axis = axes["left_right"] - (1 if dim == 2 else 0)  # a 2D configuration sees axes 1 and 2
    assert lr_axis == dim - 1
    half = shape[lr_axis] / 2
    for case_id, image, label, _ in cases:
        assert image.shape == shape and set(np.unique(label)) == {0, 1, 2}
        for value, side in ((1, "left"), (2, "right")):
            assert ndimage.label(label == value)[1] == 1, f"{case_id}: {side} kidney is not one object"
            center = ndimage.center_of_mass(label == value)[lr_axis]
            on_high_half = center > half
            assert on_high_half == (side == "left" if dim == 3 else side == "right"), f"{case_id}: {side} kidney"
        assert ndimage.label(image > 120)[1] == 2, f"{case_id}: objects merged or missing"


@pytest.mark.parametrize("dim", [2, 3])
def test_lateral_report_names_one_side_whose_kidney_is_enlarged(lateral, dim):
    _, cases = lateral(dim, LATERAL_SHAPES[dim])
    named_sides = []
    for case_id, image, label, report in cases:
        words = set(re.findall(r"[a-z]+", report.lower()))
        sides = words & LR_WORDS
        assert len(sides) == 1 and "kidney" in words, f"{case_id}: {report!r}"
        named = sides.pop()
        other = "right" if named == "left" else "left"
        value = {"left": 1, "right": 2}
        assert (label == value[named]).sum() > 1.05 * (label == value[other]).sum(), f"{case_id}: {report!r}"
        # both kidneys look alike apart from size: same brightness distribution
        assert abs(image[label == 1].mean() - image[label == 2].mean()) < 40
        named_sides.append(named)
    assert 0.2 < named_sides.count("left") / len(named_sides) < 0.8


def test_lateral_rule_is_deterministic_and_sizes_are_checked(tmp_path):
    kwargs = dict(dataset_id=2, dim=3, num_train=2, num_test=1, rule="lateral", size=(24, 24, 40))
    a = make_synthetic_dataset(tmp_path / "a", seed=1, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=1, **kwargs)
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    with pytest.raises(ValueError, match="3 edges"):
        make_synthetic_dataset(tmp_path / "c", 3, dim=3, size=(32, 32), rule="lateral")
    with pytest.raises(ValueError, match=">= 24"):
        make_synthetic_dataset(tmp_path / "c", 3, dim=3, size=(16, 32, 32), rule="lateral")
    with pytest.raises(ValueError, match="longer left-right edge"):
        make_synthetic_dataset(tmp_path / "c", 3, dim=3, size=24, rule="lateral")
