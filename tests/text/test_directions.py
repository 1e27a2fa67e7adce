"""Direction words follow the image when an axis is mirrored: every place and rank word, per axis."""
from __future__ import annotations

import pytest

from nnunet_vl.text.directions import ANATOMICAL_AXES, array_axes_to_anatomical, named_axes, swap_directions

LR, SI, AP = ANATOMICAL_AXES


def test_swap_left_right_keeps_case_and_leaves_other_words():
    text = "Left lower lobe nodule; RIGHT kidney normal; leftover fluid; Upper pole."
    swapped = swap_directions(text, ["left_right"])
    assert swapped == "Right lower lobe nodule; LEFT kidney normal; leftover fluid; Upper pole."
    assert swap_directions(swapped, ["left_right"]) == text


def test_swap_other_axes_and_standalone_letters():
    assert swap_directions("upper left, anterior wall", ["superior_inferior", "anterior_posterior"]) == \
        "lower left, posterior wall"
    assert swap_directions("L kidney and R lung, LR ratio, T2-L", ["left_right"]) == \
        "R kidney and L lung, LR ratio, T2-L"


def test_named_axes():
    assert named_axes("Mass in the right upper quadrant") == {"left_right", "superior_inferior"}
    assert named_axes("Diffuse oedema") == set()
    assert named_axes("Posterior wall") == {"anterior_posterior"}


def test_array_axes_to_anatomical():
    axes = {"left_right": 1, "superior_inferior": 0, "anterior_posterior": None}
    assert array_axes_to_anatomical(axes, [1]) == ["left_right"]
    assert array_axes_to_anatomical(axes, [0, 1]) == ["left_right", "superior_inferior"]
    assert array_axes_to_anatomical(axes, []) == []


# (axis, as written, as it reads mirrored along that axis): each pair is tested both ways, in lower case,
# capitalised and upper case, and must leave the other two axes alone
PAIRS = [
    # left-right: sides, extremes and ranks ("second from the left" is "left" in place)
    (LR, "the leftmost disc", "the rightmost disc"),
    (LR, "the left-most disc", "the right-most disc"),
    (LR, "the disc furthest left", "the disc furthest right"),
    (LR, "the second from the left", "the second from the right"),
    (LR, "the most left lesion", "the most right lesion"),
    (LR, "extends leftward", "extends rightward"),
    (LR, "extends leftwards", "extends rightwards"),
    (LR, "left-sided effusion", "right-sided effusion"),
    (LR, "pars sinistra", "pars dextra"),
    (LR, "sinistral shift", "dextral shift"),
    # superior-inferior
    (SI, "the most superior lesion", "the most inferior lesion"),
    (SI, "extends superiorly", "extends inferiorly"),
    (SI, "the superiormost disc", "the inferiormost disc"),
    (SI, "the upper pole", "the lower pole"),
    (SI, "the uppermost disc", "the lowermost disc"),
    (SI, "the topmost disc", "the bottommost disc"),
    (SI, "at the top", "at the bottom"),
    (SI, "the highest disc", "the lowest disc"),
    (SI, "the second highest disc", "the second lowest disc"),
    (SI, "it lies higher than the liver", "it lies lower than the liver"),
    (SI, "a more cranial slice", "a more caudal slice"),
    (SI, "extends cranially", "extends caudally"),
    (SI, "extends cephalad", "extends caudad"),
    (SI, "above the diaphragm", "below the diaphragm"),
    (SI, "2.5 cm above the carina", "2.5 cm below the carina"),
    (SI, "displaced upward", "displaced downward"),
    (SI, "displaced upwards", "displaced downwards"),
    (SI, "the kidney sits slightly higher", "the kidney sits slightly lower"),
    # anterior-posterior
    (AP, "the most anterior lesion", "the most posterior lesion"),
    (AP, "bulges anteriorly", "bulges posteriorly"),
    (AP, "the anteriormost disc", "the posteriormost disc"),
    (AP, "the ventral surface", "the dorsal surface"),
    (AP, "displaced ventrally", "displaced dorsally"),
    (AP, "in front of the liver", "behind the liver"),
    (AP, "the front of the liver", "the back of the liver"),
    (AP, "the frontmost disc", "the rearmost disc"),
]


def _cases(text: str) -> list[str]:
    return [text, text[0].upper() + text[1:], text.upper()]


@pytest.mark.parametrize("axis,written,mirrored", PAIRS, ids=[p[1] for p in PAIRS])
def test_rank_and_position_words_swap_both_ways_keeping_case(axis, written, mirrored):
    for a, b in zip(_cases(written), _cases(mirrored)):
        assert swap_directions(a, [axis]) == b
        assert swap_directions(b, [axis]) == a
        for other in ANATOMICAL_AXES:
            if other != axis:
                assert swap_directions(a, [other]) == a
        assert named_axes(a) == named_axes(b) == {axis}


# words whose partner depends on use, or that map to another pair's word
ONE_WAY = [
    (SI, "the lower lobe", "the upper lobe"),
    (SI, "the kidney lies lower", "the kidney lies higher"),
    (SI, "the kidney is lower.", "the kidney is higher."),
    (SI, "the higher disc", "the lower disc"),
    (SI, "extends craniad", "extends caudad"),
    (SI, "the rostral end", "the caudal end"),
    (SI, "beneath the diaphragm", "above the diaphragm"),
    (SI, "underneath the liver", "above the liver"),
    (AP, "it lies behind the liver", "it lies in front of the liver"),
    (AP, "it lies behind.", "it lies in front."),
    (AP, "it lies in front.", "it lies behind."),
    (AP, "at the rear", "at the front"),
    (AP, "its back wall", "its front wall"),
]


@pytest.mark.parametrize("axis,written,mirrored", ONE_WAY, ids=[p[1] for p in ONE_WAY])
def test_context_dependent_and_synonym_words(axis, written, mirrored):
    for a, b in zip(_cases(written), _cases(mirrored)):
        assert swap_directions(a, [axis]) == b
    assert named_axes(written) == {axis}


def test_comparatives_swap_back_to_themselves():
    text = "The right kidney lies lower than the left; the spleen sits higher. Lower pole cyst."
    mirrored = swap_directions(text, [SI])
    assert mirrored == "The right kidney lies higher than the left; the spleen sits lower. Upper pole cyst."
    assert swap_directions(mirrored, [SI]) == text


@pytest.mark.parametrize("text", [
    "the most medial nodule", "the most lateral nodule", "medially", "laterally", "contralateral",
    "ipsilateral", "the mediolateral extent", "craniocaudal length", "anteroposterior diameter",
    "the frontal lobe", "the caudate lobe", "leftover fluid", "uppercase", "a topical agent",
])
def test_words_that_no_flip_changes(text):
    # medial/lateral measure distance from the midline, which mirroring keeps; axis names are not directions
    for axis in ANATOMICAL_AXES:
        assert swap_directions(text, [axis]) == text
    assert named_axes(text) == set()


@pytest.mark.parametrize("text", [
    "higher signal intensity", "lower T2 signal", "Higher-grade tumour", "lower in density", "the lowest ADC value",
    "the highest SUV", "signal is slightly lower than muscle", "attenuation higher than liver",
    "upper limit of normal", "the lower limit", "lower than normal", "higher than expected", "top normal",
    "above 5 mm", "below 10 HU", "lower than 30 HU", "above normal", "below the threshold", "as above",
    "see below", "as described above.", "the above findings", "above-mentioned lesion", "back to baseline",
    "back pain", "came back", "values of 10 HU and above", "grade 3 or higher", "age 50 and above",
    "signal below that of muscle", "uptake above those of the liver",
    "Soft tissue of about 40-50 HU before contrast, slightly lower than the liver",
    "high attenuation, lower than the spleen",
])
def test_quantities_and_report_references_are_not_directions(text):
    assert swap_directions(text, [SI, AP]) == text
    assert named_axes(text) == set()


def test_a_quantity_word_does_not_shield_a_direction_in_the_same_report():
    text = "Higher signal in the lower pole; the lesion lies above the diaphragm, as above."
    assert swap_directions(text, [SI]) == "Higher signal in the upper pole; the lesion lies below the diaphragm, as above."
    assert named_axes("higher signal, lower limit of normal") == set()
    assert named_axes("higher signal in the lower pole") == {SI}


def test_a_measure_earlier_in_the_sentence_leaves_places_alone():
    """'higher/lower than' after a measure compares it, unless a verb of place comes between; adjectives of place
    ('lower pole') and other sentences are places."""
    assert swap_directions("The T2 signal is high, the lesion lies lower than the kidney.", [SI]) == \
        "The T2 signal is high, the lesion lies higher than the kidney."
    assert swap_directions("high attenuation in the lower pole", [SI]) == "high attenuation in the upper pole"
    assert swap_directions("Density 40 HU. The cyst is lower than the kidney.", [SI]) == \
        "Density 40 HU. The cyst is higher than the kidney."


def test_all_axes_at_once_in_one_report():
    text = "The leftmost, most superior disc lies in front of the lowest one; the second from the right is dorsal."
    assert swap_directions(text, ANATOMICAL_AXES) == \
        "The rightmost, most inferior disc lies behind the highest one; the second from the left is ventral."
    assert swap_directions(swap_directions(text, ANATOMICAL_AXES), ANATOMICAL_AXES) == text


def test_unknown_axis_is_refused():
    with pytest.raises(ValueError, match="unknown anatomical axes"):
        swap_directions("left", ["sideways"])


def test_lower_is_an_adjective_unless_it_compares_a_place():
    assert swap_directions("Opacity right lower. Lower quadrant: lesion.", [SI]) == \
        "Opacity right upper. Upper quadrant: lesion."
    assert swap_directions("The target lesion lies in the lower right quadrant.", [SI]) == \
        "The target lesion lies in the upper right quadrant."
