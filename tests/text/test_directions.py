"""Direction words follow the image when an axis is mirrored."""
from __future__ import annotations

from nnunet_vl.text.directions import array_axes_to_anatomical, named_axes, swap_directions


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
