"""Lateral label pairs: left/right labels of one bilateral structure, whose ids swap when the image is mirrored
along the patient's left-right axis.

Mirroring along the left-right axis turns the image into that of a mirrored patient seen the usual way: the left
kidney now lies where the right one belongs, so in the mirrored image it IS the right kidney. Its voxels take the
right kidney's label id, and a class text "right kidney ... on the patient's right side" still describes the label
it names. Structures of an unpaired or asymmetric organ that carry a side word in their names (heart chambers,
coronary arteries, liver lobes, ...) keep their identity in a mirrored patient and are never paired.

Pairs are detected from each label's name, or, when the name holds no side word, from the subject of its class
text's definition ("The right kidney is ..."), and formed only for the shipped bilateral structures
(`bilateral_structures.json`). dataset.json's `lateral_pairs` replaces the detection (`[]`: no pairs).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources

from nnunet_vl.text.directions import ANATOMICAL_AXES, DirectionWords, direction_words

LATERAL_PAIRS_KEY = "lateral_pairs"  # dataset.json: [["kidney_left", "kidney_right"], ...]; [] turns pairing off
_STRUCTURES_FILE = "bilateral_structures.json"
_SIDES = {"left": "left", "l": "left", "lt": "left", "sinister": "left", "sinistra": "left", "sin": "left",
          "right": "right", "r": "right", "rt": "right", "dexter": "right", "dextra": "right", "dex": "right"}
_TOKEN = re.compile(r"[^\W_]+")
_PATTERN_WORD = re.compile(r"[^\W_]+\*?")  # a word of bilateral_structures.json, its * kept
_ARTICLES = ("the", "a", "an")
_SUBJECT_END = re.compile(r"\s(?:is|are|was|were|refers|means|denotes)\s|[,;:.()]")
_MAX_SUBJECT_WORDS = 6

Pair = tuple[str, str]  # (left label name, right label name)


def _tokens(text: str) -> list[str]:
    return [t.casefold() for t in _TOKEN.findall(text)]


@lru_cache(maxsize=1)
def bilateral_structures() -> tuple[tuple[str, ...], ...]:
    """The shipped bilateral structure names, each as its words (all groups, in file order)."""
    data = json.loads(resources.files("nnunet_vl.text").joinpath(_STRUCTURES_FILE).read_text(encoding="utf-8"))
    return tuple(tuple(w.casefold() for w in _PATTERN_WORD.findall(name))
                 for group in data["names"].values() for name in group)


def _word_matches(pattern: str, token: str) -> bool:
    return token.startswith(pattern[:-1]) if pattern.endswith("*") else token == pattern


def is_bilateral(words: Sequence[str]) -> bool:
    """True when the words (a name without its side word) contain a shipped bilateral structure name."""
    for phrase in bilateral_structures():
        for start in range(len(words) - len(phrase) + 1):
            if all(_word_matches(p, w) for p, w in zip(phrase, words[start:start + len(phrase)])):
                return True
    return False


def side_and_stem(name: str) -> tuple[str, tuple[str, ...]] | None:
    """('left' or 'right', the other words) when the name holds exactly one side word, else None.

    "kidney_left", "Left Kidney", "adrenal_gland_L", "kidney(R)", "rib_left_3" all have one."""
    tokens = _tokens(name)
    sides = [i for i, t in enumerate(tokens) if t in _SIDES]
    if len(sides) != 1:
        return None
    return _SIDES[tokens[sides[0]]], tuple(t for i, t in enumerate(tokens) if i != sides[0])


def definition_subject(definition: str) -> str:
    """What a class text's definition defines: "The right kidney is the kidney ..." -> "right kidney";
    empty when the opening phrase is longer than a name."""
    head = _SUBJECT_END.split(" " + definition.strip(), maxsplit=1)[0].split()
    while head and head[0].casefold() in _ARTICLES:
        head = head[1:]
    return " ".join(head) if 0 < len(head) <= _MAX_SUBJECT_WORDS else ""


def _sided_name(name: str, label_text: Mapping[str, str] | None, fixed_names: Sequence[str]
                ) -> tuple[str, tuple[str, ...]] | None:
    words = direction_words(tuple(fixed_names))
    for candidate in (name, definition_subject((label_text or {}).get("definition", ""))):
        if not candidate:
            continue
        found = side_and_stem(candidate)
        if found is not None:
            # a side word inside a name that keeps its identity ("left ventricle", "right hepatic vein") is no side
            return None if words.protected_spans(candidate) else found
    return None


def detect_lateral_pairs(label_names: Sequence[str], label_texts: Mapping[str, Mapping[str, str]] | None = None,
                         fixed_names: Sequence[str] = ()) -> list[Pair]:
    """(left, right) label names of every bilateral structure labelled once per side, in label order.

    A label's side comes from its name, or from its class text's definition subject when the name has none. Two
    labels pair when they name opposite sides of the same words and those words contain a bilateral structure
    (`bilateral_structures.json`); a stem with more than one label per side pairs none of them."""
    by_stem: dict[tuple[str, ...], dict[str, list[str]]] = {}
    for name in label_names:
        if name in ("background", "ignore"):
            continue
        found = _sided_name(name, (label_texts or {}).get(name), fixed_names)
        if found is not None and is_bilateral(found[1]):
            by_stem.setdefault(found[1], {"left": [], "right": []})[found[0]].append(name)
    pairs = [(sides["left"][0], sides["right"][0]) for sides in by_stem.values()
             if len(sides["left"]) == 1 and len(sides["right"]) == 1]
    order = {n: i for i, n in enumerate(label_names)}
    return sorted(pairs, key=lambda p: min(order[p[0]], order[p[1]]))


def check_lateral_pairs(value: object, labels: Mapping[str, object]) -> list[str]:
    """One message per problem of a dataset.json `lateral_pairs` value; empty when it is usable."""
    if not isinstance(value, list):
        return [f"'{LATERAL_PAIRS_KEY}' must be a list of [left label, right label] pairs, got "
                f"{type(value).__name__}"]
    problems, seen = [], {}
    names = [n for n in labels if n not in ("background", "ignore")]
    for i, entry in enumerate(value):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(n, str) for n in entry)):
            problems.append(f"'{LATERAL_PAIRS_KEY}' entry {i} ({entry!r}) is not a pair of two label names")
            continue
        if entry[0] == entry[1]:
            problems.append(f"'{LATERAL_PAIRS_KEY}' entry {i} pairs label '{entry[0]}' with itself")
            continue
        for name in entry:
            if name not in names:
                problems.append(f"'{LATERAL_PAIRS_KEY}' entry {i} names '{name}', which is not a label of this "
                                f"dataset (labels: {names})")
            elif name in seen:
                problems.append(f"'{LATERAL_PAIRS_KEY}' entry {i}: label '{name}' is already paired in entry "
                                f"{seen[name]}")
            else:
                seen[name] = i
    return problems


def dataset_lateral_pairs(dataset_json: Mapping, label_texts: Mapping[str, Mapping[str, str]] | None = None,
                          fixed_names: Sequence[str] = ()) -> tuple[list[Pair], str]:
    """The dataset's lateral pairs and where they come from: dataset.json's `lateral_pairs` when given (invalid
    entries, reported by check_lateral_pairs, are left out), else detected from label names and class texts."""
    labels = dataset_json["labels"]
    if LATERAL_PAIRS_KEY in dataset_json:
        value = dataset_json[LATERAL_PAIRS_KEY]
        usable = [tuple(e) for e in value if not check_lateral_pairs([e], labels)] if isinstance(value, list) else []
        used: set[str] = set()
        pairs = []
        for a, b in usable:
            if a not in used and b not in used:
                pairs.append((a, b))
                used |= {a, b}
        return pairs, f"dataset.json '{LATERAL_PAIRS_KEY}'"
    return (detect_lateral_pairs(list(labels), label_texts, fixed_names),
            "detected from label names and class texts (bilateral_structures.json)")


def class_text_swaps(label_texts: Iterable[tuple[str, Mapping[str, str]]], lateral_pairs: Sequence[Sequence[str]],
                     words: DirectionWords) -> dict[str, dict[str, list[str]]]:
    """Per class whose name or text holds direction words: anatomical axis -> those words (as written, each once), the
    words that swap when a sample is mirrored along that axis. A lateral pair member's left-right words are left out
    (its label id swaps instead); protected structure names and quantities are no direction words."""
    paired = {name for pair in lateral_pairs for name in pair}
    swaps: dict[str, dict[str, list[str]]] = {}
    for name, concepts in label_texts:
        by_axis: dict[str, list[str]] = {}
        for text in (name.replace("_", " "), *concepts.values()):  # the name as the class description writes it
            for word, axis in words.words(text):
                if not (axis == "left_right" and name in paired):
                    found = by_axis.setdefault(axis, [])
                    if word.lower() not in (w.lower() for w in found):
                        found.append(word)
        if by_axis:
            swaps[name] = {axis: by_axis[axis] for axis in ANATOMICAL_AXES if axis in by_axis}
    return swaps


def mirroring_summary(dataset_json: Mapping, label_texts: Mapping[str, Mapping[str, str]],
                      fixed_names: Sequence[str] = ()) -> list[str]:
    """What mirroring does to a dataset's labels and class texts, one line per lateral pair (or one saying there is
    none) and per class text that swaps words (`nnunet_vl check` prints these)."""
    pairs, source = dataset_lateral_pairs(dataset_json, label_texts, fixed_names)
    lines = [f"lateral pair '{left}' / '{right}' ({source}): their label ids swap when a sample is mirrored "
             f"left-right, their class texts stay with them" for left, right in pairs]
    if not pairs:
        lines.append(f"lateral pairs: none ({source})")
    for name, by_axis in class_text_swaps(label_texts.items(), pairs, direction_words(tuple(fixed_names))).items():
        axes = "; ".join(f"{axis.replace('_', '-')}: {', '.join(repr(w) for w in found)}"
                         for axis, found in by_axis.items())
        lines.append(f"class text '{name}' swaps its direction words with mirroring ({axes}); BiPVL's test-time "
                     f"mirrored views read it swapped likewise")
    return lines
