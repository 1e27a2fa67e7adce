"""Direction words in reports, and how mirroring an image axis changes them.

A report that says "left" describes the un-mirrored image: when augmentation or test-time mirroring
flips the patient's left-right axis, "left" and "right" must swap; likewise every word that places or
ranks along the superior-inferior axis (upper/lower, highest/lowest, above/below, cranial/caudal, ...)
and the anterior-posterior axis (anterior/posterior, ventral/dorsal, in front of/behind, ...).
Medial and lateral never swap: mirroring keeps each structure's distance from the midline.

Two kinds of text are not directions and never swap (nor count as naming an axis):
- names of structures that keep their identity in a mirrored patient ("left ventricle", "superior vena
  cava", "anterior cruciate ligament", ...): the shipped list `fixed_side_names.json`, extended per dataset
  by the dataset.json key `fixed_side_names`;
- direction-like words used for a quantity or for the report itself ("higher signal", "lower limit of
  normal", "below 10 HU", "as described above").
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from importlib import resources

ANATOMICAL_AXES = ("left_right", "superior_inferior", "anterior_posterior")
FIXED_SIDE_NAMES_KEY = "fixed_side_names"  # dataset.json: extra names that never swap
_NAMES_FILE = "fixed_side_names.json"

# pairs swap both ways; phrases are matched before the words inside them ("lower than" before "lower")
_PAIRS: dict[str, list[tuple[str, str]]] = {
    "left_right": [("left", "right"), ("leftmost", "rightmost"), ("leftward", "rightward"),
                   ("leftwards", "rightwards"), ("sinistra", "dextra"), ("sinister", "dexter"),
                   ("sinistral", "dextral")],
    "superior_inferior": [("superior", "inferior"), ("superiorly", "inferiorly"), ("superiormost", "inferiormost"),
                          ("upper", "lower"), ("uppermost", "lowermost"), ("top", "bottom"),
                          ("topmost", "bottommost"), ("highest", "lowest"), ("higher than", "lower than"),
                          ("cranial", "caudal"), ("cranially", "caudally"), ("cephalad", "caudad"),
                          ("above", "below"), ("upward", "downward"), ("upwards", "downwards")],
    "anterior_posterior": [("anterior", "posterior"), ("anteriorly", "posteriorly"),
                           ("anteriormost", "posteriormost"), ("ventral", "dorsal"), ("ventrally", "dorsally"),
                           ("in front of", "behind"), ("front", "back"), ("frontmost", "rearmost")],
}
# synonyms whose partner is another pair's word (swapping twice gives that word back, not the synonym)
_ONE_WAY: dict[str, dict[str, str]] = {
    "left_right": {},
    "superior_inferior": {"higher": "lower", "craniad": "caudad", "rostral": "caudal", "rostrally": "caudally",
                          "beneath": "above", "underneath": "above"},
    "anterior_posterior": {"rear": "front", "in front": "behind"},
}
# single capital letters swap only as standalone tokens ("L lung", "R kidney"), never inside words or codes
_CASE_SENSITIVE: dict[str, str] = {"L": "R", "R": "L"}

# --- context: when a direction-like word is not a direction --------------------------------------
# quantities that higher/lower/above/below/upper/... compare ("higher signal", "upper limit", "lower than normal")
_QUANTITIES = frozenset("""
signal signals intensity intensities density densities attenuation enhancement uptake grade grades risk dose
doses limit limits bound bounds threshold thresholds range ranges normal average baseline mean median expected
reference cutoff cut quartile percentile value values concentration concentrations suv suvmax hu adc
echogenicity probability likelihood count counts score scores resolution pressure pressures flow velocity
perfusion diffusion diffusivity contrast energy frequency volume volumes number burden stage confidence quality
rate rates ratio amount degree severity incidence sensitivity specificity magnification noise order
""".split())
_WORDS_BEFORE_QUANTITY = frozenset("than in the a an t1 t2 t1w t2w weighted flair dwi ct mr mri pet fdg".split())
# words between a quantity and its comparative ("signal is slightly lower")
_WORDS_AFTER_QUANTITY = frozenset("""
is are was were be been being remains remain appears appear seems seem became becomes slightly much far even
somewhat markedly significantly considerably substantially mildly minimally moderately marginally a bit little
no not also now still relatively comparatively the its their
""".split())
# "as above", "see below", "the above findings", "described above.": the report, not the body
_REPORT_REFERENCES = frozenset("as see the".split())
_REPORT_VERBS = frozenset("""
described mentioned noted stated listed detailed discussed outlined shown given quoted cited specified reported
summarized summarised
""".split())
# "lower" after these is a comparative of place ("lies slightly lower") -> "higher", not "upper"
_COMPARATIVE_PLACE = frozenset("""
lies lie lying sits sit sitting located situated positioned placed seated displaced projects project projecting
extends extend extending descends reaches slightly much far further farther even somewhat markedly
significantly considerably mildly minimally moderately marginally bit little
""".split())
# "higher/lower than" in a sentence that already measures one of these compares that measure ("40-50 HU before
# contrast, slightly lower than the liver"), unless a verb of place comes between ("..., it lies lower than")
_MEASURES = frozenset("hu signal intensity density attenuation enhancement echogenicity uptake suv adc".split())
_PLACE_VERBS = frozenset("""
lies lie lying sits sit sitting located situated positioned placed seated displaced projects project projecting
extends extend extending descends descend reaches reach
""".split())
_SENTENCE_END = re.compile(r"[;!?]|\.(?!\d)")
_PREDICATE = frozenset("is are was were be been appears appear seems seem remains remain now".split())
_COMPARATIVES = frozenset({"higher", "lower", "highest", "lowest", "higher than", "lower than"})
_QUANTITY_GUARDED = _COMPARATIVES | {"upper", "top", "bottom", "above", "below"}
_NUMBER_GUARDED = frozenset({"above", "below", "higher than", "lower than"})
# "10 HU and above", "grade 3 or higher", "age 50 and above": an open range after a number, unit or quantity
_OPEN_RANGE_GUARDED = frozenset({"above", "below", "higher", "lower"})
_UNITS = frozenset("hu mm cm ml cc mg kg g mbq bq percent year years y".split())
_CLAUSE_END = re.compile(r"[;:!?,()\[\]]|\.(?!\d)")  # a decimal point ends no clause
_WORD = re.compile(r"[^\W_]+")


def _words_after(text: str, end: int, n: int = 4) -> list[str]:
    after = text[end:end + 80]
    cut = _CLAUSE_END.search(after)
    if cut is not None:
        after = after[:cut.start()]
    return [w.lower() for w in _WORD.findall(after)][:n]


def _words_before(text: str, start: int, n: int = 6) -> list[str]:
    before = text[max(0, start - 80):start]
    cuts = list(_CLAUSE_END.finditer(before))
    if cuts:
        before = before[cuts[-1].end():]
    return [w.lower() for w in _WORD.findall(before)][-n:][::-1]  # nearest first


def _is_quantity(form: str, text: str, start: int, end: int) -> bool:
    """The word compares a quantity or refers to the report: not a position."""
    after, before = _words_after(text, end), _words_before(text, start)
    if form in ("above", "below"):
        if (before and before[0] in _REPORT_REFERENCES) or (after and after[0] == "mentioned") \
                or (before and before[0] in _REPORT_VERBS and not after):
            return True
    following = [w for w in after if w not in _WORDS_BEFORE_QUANTITY][:1]
    if following and following[0] in _QUANTITIES:
        return True
    if form in _NUMBER_GUARDED and following and following[0][0].isdigit():
        return True
    if form in _OPEN_RANGE_GUARDED and len(before) > 1 and before[0] in ("and", "or") \
            and (before[1][0].isdigit() or before[1] in _UNITS or before[1] in _QUANTITIES):
        return True
    if form in ("above", "below") and after[:2] in (["that", "of"], ["those", "of"]):
        return True  # "signal below that of muscle": a comparison with another tissue's value
    if form in _COMPARATIVES:
        preceding = [w for w in before if w not in _WORDS_AFTER_QUANTITY][:1]
        if preceding and preceding[0] in _QUANTITIES:
            return True
    if form in ("higher than", "lower than"):
        for word in _sentence_words_before(text, start):  # nearest first: a verb of place nearer makes it a place
            if word in _PLACE_VERBS:
                return False
            if word in _MEASURES:
                return True
    return False


def _sentence_words_before(text: str, start: int) -> list[str]:
    """The words of the sentence before `start`, nearest first (commas do not end it)."""
    before = text[max(0, start - 200):start]
    cuts = list(_SENTENCE_END.finditer(before))
    if cuts:
        before = before[cuts[-1].end():]
    return [w.lower() for w in _WORD.findall(before)][::-1]


def _lower_partner(text: str, start: int, end: int) -> str:
    """'lower lobe' -> 'upper lobe', but 'lies lower' / 'is lower.' -> 'higher'."""
    before = _words_before(text, start, 1)
    if before and (before[0] in _COMPARATIVE_PLACE
                   or (before[0] in _PREDICATE and not _words_after(text, end, 1))):
        return "higher"
    return "upper"


def _behind_partner(text: str, start: int, end: int) -> str:
    """'behind the liver' -> 'in front of the liver'; 'lies behind.' -> 'lies in front'."""
    return "in front of" if _words_after(text, end, 1) else "in front"


def _back_is_place(text: str, start: int, end: int) -> bool:
    """'the back of the liver', 'its back wall' are places; 'back to baseline', 'back pain' are left alone."""
    before = _words_before(text, start, 1)
    return bool(before) and before[0] in ("the", "its", "their", "his", "her", "at")


Partner = str | Callable[[str, int, int], str]


def _vocabulary() -> dict[str, tuple[str, Partner]]:
    """Every direction form (lower case, single spaces) -> (axis, partner or partner chooser)."""
    vocabulary: dict[str, tuple[str, Partner]] = {}
    for axis in ANATOMICAL_AXES:
        for a, b in _PAIRS[axis]:
            vocabulary[a], vocabulary[b] = (axis, b), (axis, a)
        for word, partner in _ONE_WAY[axis].items():
            vocabulary[word] = (axis, partner)
    vocabulary["lower"] = ("superior_inferior", _lower_partner)
    vocabulary["behind"] = ("anterior_posterior", _behind_partner)
    return vocabulary


_VOCABULARY = _vocabulary()


def _phrase_words(phrase: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in re.split(r"[\s-]+", phrase.strip()) if w)


def _phrases_pattern(phrases: Iterable[str]) -> str:
    """One regex for the phrases: whole words, spaces and hyphens interchangeable, a word ending in * matches
    any ending. Built as a word trie so that each text position tries a few first words, not every phrase."""
    trie: dict = {}
    for phrase in phrases:
        node = trie
        for word in _phrase_words(phrase):
            node = node.setdefault(word, {})
        node[""] = {}  # a phrase ends here

    def emit(node: dict) -> str:
        branches = []
        for word in sorted((w for w in node if w), key=len, reverse=True):
            head = re.escape(word[:-1]) + r"\w*" if word.endswith("*") else re.escape(word) + r"\b"
            rest = node[word]
            if set(rest) == {""}:
                branches.append(head)
            else:
                tail = emit({w: n for w, n in rest.items() if w})
                branches.append(head + r"(?:[\s-]+" + tail + ")" + ("?" if "" in rest else ""))
        return "(?:" + "|".join(branches) + ")"

    return r"\b" + emit(trie)


_DIRECTION_PATTERN = re.compile(
    r"(?P<word>" + _phrases_pattern(_VOCABULARY) + r")"
    r"|(?P<letter>(?-i:(?<![\w-])(?:L|R)(?![\w-])))", re.I)


def _same_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


@lru_cache(maxsize=1)
def shipped_fixed_side_names() -> tuple[str, ...]:
    """The structure names shipped in fixed_side_names.json (all groups, in file order)."""
    data = json.loads(resources.files("nnunet_vl.text").joinpath(_NAMES_FILE).read_text(encoding="utf-8"))
    return tuple(name for group in data["names"].values() for name in group)


def check_fixed_side_names(value: object) -> list[tuple[str, str]]:
    """(message, severity) for each problem of a user's `fixed_side_names` value; empty when it is usable.

    A name without any direction word is a warning (protecting it changes nothing); the rest are errors."""
    if not isinstance(value, list):
        return [(f"'{FIXED_SIDE_NAMES_KEY}' must be a list of structure names, got {type(value).__name__}", "error")]
    problems = []
    for name in value:
        if not isinstance(name, str) or not name.strip():
            problems.append((f"'{FIXED_SIDE_NAMES_KEY}' entry {name!r} is not a non-empty string", "error"))
        elif any("*" in w[:-1] or w == "*" for w in _phrase_words(name)):
            problems.append((f"'{FIXED_SIDE_NAMES_KEY}' entry '{name}': '*' may only end a word", "error"))
        elif not _DIRECTION_PATTERN.search(name.replace("*", "")):
            problems.append((f"'{FIXED_SIDE_NAMES_KEY}' entry '{name}' contains no direction word, so protecting "
                             f"it changes nothing", "warning"))
    return problems


def dataset_fixed_side_names(dataset_json: dict) -> tuple[str, ...]:
    """The usable names of a dataset.json's `fixed_side_names` (check_fixed_side_names reports the rest)."""
    value = dataset_json.get(FIXED_SIDE_NAMES_KEY) or []
    if not isinstance(value, list):
        return ()
    return tuple(n for n in value if isinstance(n, str) and n.strip() and not check_fixed_side_names([n]))


class DirectionWords:
    """Finds and swaps direction words, leaving protected structure names and quantity comparisons alone."""

    def __init__(self, extra_fixed_names: Iterable[str] = ()):
        self.fixed_names = tuple(dict.fromkeys((*shipped_fixed_side_names(), *extra_fixed_names)))
        self._fixed = re.compile(_phrases_pattern(self.fixed_names), re.I) if self.fixed_names else None

    def protected_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the protected structure names in text."""
        return [m.span() for m in self._fixed.finditer(text)] if self._fixed is not None else []

    def _directions(self, text: str) -> Iterable[tuple[re.Match, str, str]]:
        """(match, axis, partner) for each direction word of text that is a position."""
        spans = self.protected_spans(text)
        for m in _DIRECTION_PATTERN.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in spans):
                continue
            if m.group("letter"):
                yield m, "left_right", _CASE_SENSITIVE[m.group(0)]
                continue
            form = " ".join(_phrase_words(m.group(0)))
            axis, partner = _VOCABULARY[form]
            if form in _QUANTITY_GUARDED and _is_quantity(form, text, m.start(), m.end()):
                continue
            if form == "back" and not _back_is_place(text, m.start(), m.end()):
                continue
            if callable(partner):
                partner = partner(text, m.start(), m.end())
            yield m, axis, partner

    def named_axes(self, text: str) -> set[str]:
        """The anatomical axes whose directions the text names."""
        return {axis for _, axis, _ in self._directions(text)}

    def words(self, text: str) -> list[tuple[str, str]]:
        """(word as written, anatomical axis) for each direction word of the text, in order."""
        return [(m.group(0), axis) for m, axis, _ in self._directions(text)]

    def swap(self, text: str, axes: Iterable[str]) -> str:
        """The text as it reads for the image mirrored along the given anatomical axes."""
        axes = set(axes)
        unknown = axes - set(ANATOMICAL_AXES)
        if unknown:
            raise ValueError(f"unknown anatomical axes {sorted(unknown)}: use {ANATOMICAL_AXES}")
        pieces, at = [], 0
        for m, axis, partner in self._directions(text):
            if axis in axes:
                word = partner if m.group("letter") else _same_case(m.group(0), partner)
                pieces += [text[at:m.start()], word]
                at = m.end()
        return "".join(pieces) + text[at:]


@lru_cache(maxsize=32)
def direction_words(extra_fixed_names: tuple[str, ...] = ()) -> DirectionWords:
    """The shared DirectionWords for the shipped names plus a dataset's own."""
    return DirectionWords(extra_fixed_names)


def named_axes(text: str, fixed_names: Sequence[str] = ()) -> set[str]:
    """The anatomical axes whose directions the text names (protected names and quantities do not count)."""
    return direction_words(tuple(fixed_names)).named_axes(text)


def swap_directions(text: str, axes: Iterable[str], fixed_names: Sequence[str] = ()) -> str:
    """The text as it reads for the image mirrored along the given anatomical axes.

    fixed_names: structure names that never swap, in addition to the shipped ones."""
    return direction_words(tuple(fixed_names)).swap(text, axes)


def array_axes_to_anatomical(direction_axes: dict[str, int | None], flipped_axes: Iterable[int]) -> list[str]:
    """Anatomical axes flipped when the given spatial array axes are mirrored.

    direction_axes maps each anatomical axis to its spatial array axis (as stored in the plans' text
    section for one configuration) or None when unknown.
    """
    flipped = set(flipped_axes)
    return [axis for axis in ANATOMICAL_AXES if direction_axes.get(axis) is not None
            and direction_axes[axis] in flipped]
