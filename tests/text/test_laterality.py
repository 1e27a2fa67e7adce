"""Lateral pairs: detected only for bilateral structures, overridable in dataset.json and checked there."""
from __future__ import annotations

import json

import pytest

from nnunet_vl.text.corpora import label_texts_from_corpus
from nnunet_vl.text.laterality import (check_lateral_pairs, dataset_lateral_pairs, definition_subject,
                                       detect_lateral_pairs, is_bilateral, side_and_stem)


def _corpus_labels(corpus: str) -> list[str]:
    from nnunet_vl.text.corpora import load_corpus

    return ["background", *load_corpus(corpus)["labels"]]


@pytest.mark.parametrize("corpus", ["amos22", "btcv"])
def test_abdominal_corpora_pair_kidneys_and_adrenal_glands(corpus):
    names = _corpus_labels(corpus)
    assert detect_lateral_pairs(names) == [("left kidney", "right kidney"),
                                           ("left adrenal gland", "right adrenal gland")]


def test_mmwhs_heart_chambers_are_never_paired():
    names = _corpus_labels("mmwhs")
    texts = label_texts_from_corpus("mmwhs", names)
    assert detect_lateral_pairs(names, texts) == []
    short = ["background", "left_ventricle", "right_ventricle", "left atrium", "right atrium", "LV", "RV"]
    assert detect_lateral_pairs(short) == []
    # a side word inside a name that keeps its identity is no side, even for a bilateral-looking stem
    assert detect_lateral_pairs(["right hepatic vein", "left hepatic vein"]) == []


@pytest.mark.parametrize("left, right", [
    ("kidney_left", "kidney_right"), ("left lung", "right lung"), ("Left Kidney", "Right Kidney"),
    ("adrenal_gland_L", "adrenal_gland_R"), ("kidney(L)", "kidney(R)"), ("Parotid_L", "Parotid_R"),
    ("rib_left_3", "rib_right_3"), ("lung_upper_lobe_left", "lung_upper_lobe_right"),
    ("femur_left", "femur_right"), ("iliac_artery_left", "iliac_artery_right"), ("Lt hippocampus", "Rt hippocampus"),
])
def test_name_spellings_pair(left, right):
    assert detect_lateral_pairs(["background", right, "liver", left]) == [(left, right)]


def test_unpaired_or_ambiguous_labels_form_no_pair():
    assert detect_lateral_pairs(["kidney_left", "liver"]) == []  # no partner
    assert detect_lateral_pairs(["rib_left_1", "rib_right_2"]) == []  # different ribs
    assert detect_lateral_pairs(["left kidney", "kidney_left", "right kidney"]) == []  # two left kidneys
    assert detect_lateral_pairs(["left lobe", "right lobe"]) == []  # not a bilateral structure
    assert detect_lateral_pairs(["atrial_appendage_left", "atrial_appendage_right"]) == []  # heart


def test_class_text_subject_gives_the_side_of_a_label_without_one():
    texts = {"rk": {"definition": "The right kidney is the kidney on the patient's right side."},
             "lk": {"definition": "The left kidney, a paired retroperitoneal organ."},
             "lv": {"definition": "The left ventricle is the main pumping chamber."},
             "rv": {"definition": "The right ventricle pumps blood to the lungs."}}
    assert detect_lateral_pairs(["background", "rk", "lk", "lv", "rv"], texts) == [("lk", "rk")]
    assert definition_subject("The blood pool inside the left ventricle, the chamber that pumps") == \
        "blood pool inside the left ventricle"
    assert definition_subject("A very long opening phrase that goes on and on and on is no name") == ""


def test_sides_and_bilateral_list():
    assert side_and_stem("adrenal_gland_L") == ("left", ("adrenal", "gland"))
    assert side_and_stem("left and right kidney") is None and side_and_stem("liver") is None
    assert is_bilateral(("kidney", "cyst")) and is_bilateral(("rib", "11")) and not is_bilateral(("ventricle",))


LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "liver": 3}


def test_override_replaces_detection_and_empty_turns_it_off():
    assert dataset_lateral_pairs({"labels": LABELS})[0] == [("kidney_left", "kidney_right")]
    pairs, source = dataset_lateral_pairs({"labels": LABELS, "lateral_pairs": []})
    assert pairs == [] and "lateral_pairs" in source
    mmwhs_like = {"labels": {"background": 0, "left ventricle": 1, "right ventricle": 2}}
    assert dataset_lateral_pairs(mmwhs_like)[0] == []
    forced = dict(mmwhs_like, lateral_pairs=[["left ventricle", "right ventricle"]])  # the user decides
    assert dataset_lateral_pairs(forced)[0] == [("left ventricle", "right ventricle")]


def test_override_problems_one_line_each():
    assert check_lateral_pairs([["kidney_left", "kidney_right"]], LABELS) == []
    assert check_lateral_pairs([], LABELS) == []
    assert len(check_lateral_pairs("kidney_left", LABELS)) == 1
    problems = check_lateral_pairs([["kidney_left"], ["liver", "liver"], ["kidney_left", "spleen"],
                                    ["kidney_left", "kidney_right"], ["background", "liver"]], LABELS)
    assert len(problems) == 5, problems
    assert all("\n" not in p and "lateral_pairs" in p for p in problems)
    assert "entry 0" in problems[0] and "itself" in problems[1] and "'spleen'" in problems[2]
    assert "already paired" in problems[3] and "'background'" in problems[4]


def test_contract_reports_bad_override(tmp_path):
    from nnunet_vl.text.contract import load_dataset_text

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz",
               "label_texts": {"liver": "The liver."}, "lateral_pairs": [["kidney_left", "kidny_right"]]}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    text = load_dataset_text(tmp_path)
    errors = [p for p in text.errors if "lateral_pairs" in p.message]
    assert len(errors) == 1 and "'kidny_right'" in errors[0].message and "\n" not in str(errors[0])


def test_class_text_swaps_name_the_words_per_axis_without_a_pairs_side_words():
    from nnunet_vl.text.directions import direction_words
    from nnunet_vl.text.laterality import class_text_swaps, mirroring_summary

    texts = {"background": {"definition": "everything else"},
             "spleen": {"definition": "organ of the left upper abdomen", "location": "Left, below the diaphragm"},
             "kidney_left": {"definition": "The left kidney", "location": "upper retroperitoneum"},
             "kidney_right": {"definition": "The right kidney"},
             "left ventricle": {"definition": "the left ventricle, beside the right ventricle"},
             "left_lung": {"definition": "lung"}}
    swaps = class_text_swaps(texts.items(), [("kidney_left", "kidney_right")], direction_words())
    assert swaps == {"spleen": {"left_right": ["left"], "superior_inferior": ["upper", "below"]},
                     "kidney_left": {"superior_inferior": ["upper"]}, "left_lung": {"left_right": ["left"]}}
    labels = {name: i for i, name in enumerate(texts)}
    lines = mirroring_summary({"labels": labels}, texts)
    assert lines[0].startswith("lateral pair 'kidney_left' / 'kidney_right' (detected") and len(lines) == 4
    assert lines[1] == ("class text 'spleen' swaps its direction words with mirroring (left-right: 'left'; "
                        "superior-inferior: 'upper', 'below'); BiPVL's test-time mirrored views read it swapped likewise")
    lines = mirroring_summary({"labels": labels, "lateral_pairs": []}, texts)
    assert lines[0] == "lateral pairs: none (dataset.json 'lateral_pairs')"
    assert [line.split("'")[1] for line in lines[1:]] == ["spleen", "kidney_left", "kidney_right", "left_lung"]
