"""Direction words in reports, and how mirroring an image axis changes them.

A report that says "left" describes the un-mirrored image: when augmentation or test-time mirroring
flips the patient's left-right axis, "left" and "right" must swap (likewise upper/lower for the
superior-inferior axis and anterior/posterior for the anterior-posterior axis).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

ANATOMICAL_AXES = ("left_right", "superior_inferior", "anterior_posterior")

_PAIRS: dict[str, list[tuple[str, str]]] = {
    "left_right": [("left", "right"), ("leftmost", "rightmost"), ("sinistra", "dextra"), ("sinister", "dexter")],
    "superior_inferior": [("superior", "inferior"), ("upper", "lower"), ("uppermost", "lowermost"),
                          ("cranial", "caudal"), ("top", "bottom")],
    "anterior_posterior": [("anterior", "posterior"), ("ventral", "dorsal")],
}
# ambiguous words (back, above, below) are left alone; single capital letters are swapped only
# as standalone tokens ("L lung", "R kidney"), never inside words
_CASE_SENSITIVE: dict[str, list[tuple[str, str]]] = {"left_right": [("L", "R")]}


def _partner_table(axis: str) -> dict[str, str]:
    table = {}
    for a, b in _PAIRS[axis]:
        table[a], table[b] = b, a
    return table


_TABLES = {axis: _partner_table(axis) for axis in ANATOMICAL_AXES}
_PATTERNS = {axis: re.compile(r"\b(" + "|".join(sorted(_TABLES[axis], key=len, reverse=True)) + r")\b", re.I)
             for axis in ANATOMICAL_AXES}
_CS_PATTERNS = {axis: re.compile(r"(?<![\w-])(" + "|".join(a for p in pairs for a in p) + r")(?![\w-])")
                for axis, pairs in _CASE_SENSITIVE.items()}
_CS_TABLES = {axis: {a: b for p in pairs for a, b in (p, p[::-1])} for axis, pairs in _CASE_SENSITIVE.items()}


def _same_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


def named_axes(text: str) -> set[str]:
    """The anatomical axes whose directions the text names."""
    found = {axis for axis, pattern in _PATTERNS.items() if pattern.search(text)}
    return found | {axis for axis, pattern in _CS_PATTERNS.items() if pattern.search(text)}


def swap_directions(text: str, axes: Iterable[str]) -> str:
    """The text as it reads for the image mirrored along the given anatomical axes."""
    for axis in axes:
        table = _TABLES[axis]
        text = _PATTERNS[axis].sub(lambda m: _same_case(m.group(0), table[m.group(0).lower()]), text)
        if axis in _CS_PATTERNS:
            text = _CS_PATTERNS[axis].sub(lambda m: _CS_TABLES[axis][m.group(0)], text)
    return text


def array_axes_to_anatomical(direction_axes: dict[str, int | None], flipped_axes: Iterable[int]) -> list[str]:
    """Anatomical axes flipped when the given spatial array axes are mirrored.

    direction_axes maps each anatomical axis to its spatial array axis (as stored in the plans' text
    section for one configuration) or None when unknown.
    """
    flipped = set(flipped_axes)
    return [axis for axis in ANATOMICAL_AXES if direction_axes.get(axis) is not None
            and direction_axes[axis] in flipped]
