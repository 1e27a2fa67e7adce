"""Class-description corpora shipped in ``text_corpora/``: find, load, validate, match label names.

A corpus is one JSON file per dataset family (``amos22.json``, ``msd_liver.json``, ...)::

    {"name": "...", "description": "...",
     "labels": {"liver": {"aliases": ["liver"], "definition": "...", "shape": "...", ...}, ...},
     "background": {"definition": "...", ...}}

Each class carries the BiPVL-Seg concept set (:data:`CONCEPTS`). A dataset's label names are
matched against class names and aliases after :func:`normalise_label_name`.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from nnunet_vl.package_data import CORPORA, data_dir, data_files

__all__ = [
    "CONCEPTS",
    "CorpusError",
    "available_corpora",
    "corpus_dir",
    "label_texts_from_corpus",
    "load_corpus",
    "normalise_label_name",
    "validate_corpus",
]

CONCEPTS: tuple[str, ...] = ("definition", "shape", "location", "appearance", "contour", "texture")
_ENTRY_KEYS = frozenset(CONCEPTS) | {"aliases"}
_BACKGROUND = "background"
_FIX = "add it under label_texts in dataset.json or choose another corpus"
_FIX_MANY = "add them under label_texts in dataset.json or choose another corpus"


class CorpusError(ValueError):
    """An unknown or malformed corpus, or dataset labels the corpus does not describe.

    ``missing`` maps each unmatched label name to its closest corpus names (may be empty).
    """

    def __init__(self, message: str, missing: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.missing: dict[str, list[str]] = dict(missing or {})


def corpus_dir() -> Path:
    """The installed corpora (`text_corpora/` of the source tree, shipped as nnunet_vl.text_corpora)."""
    return data_dir(CORPORA)


def available_corpora() -> list[str]:
    """Sorted ids (file stems) of the shipped corpora."""
    return [p.stem for p in data_files(CORPORA)]


def normalise_label_name(name: str) -> str:
    """Canonical label spelling: case-folded, with runs of spaces, ``_`` and ``-`` as one space.

    ``normalise_label_name("Right_Kidney") == normalise_label_name(" right  kidney") == "right kidney"``.
    """
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return re.sub(r"[\s_\-]+", " ", text).strip()


def _match_key(name: str) -> str:
    """Lookup key: the normalised name without any spaces ("non enhancing" == "nonenhancing")."""
    return normalise_label_name(name).replace(" ", "")


def _check_entry(entry: Any, where: str, problems: list[str]) -> None:
    if not isinstance(entry, dict):
        problems.append(f"{where} must be an object of concepts, got {type(entry).__name__}")
        return
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        problems.append(f"{where} has unknown keys {unknown} (allowed: aliases, {', '.join(CONCEPTS)})")
    concepts = [c for c in CONCEPTS if c in entry]
    if not concepts:
        problems.append(f"{where} has none of the concepts {', '.join(CONCEPTS)}")
    for concept in concepts:
        value = entry[concept]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}.{concept} must be a non-empty string")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        problems.append(f"{where}.aliases must be a list of non-empty strings")


def validate_corpus(data: Any, source: str = "corpus") -> None:
    """Raise :class:`CorpusError` listing every structural problem of a corpus object at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise CorpusError(f"{source}: a corpus must be a JSON object, got {type(data).__name__}")
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        problems.append("'labels' must be a non-empty object keyed by class name")
        labels = {}
    owner: dict[str, str] = {}
    for cls, entry in labels.items():
        _check_entry(entry, f"labels[{cls!r}]", problems)
        if _match_key(cls) == _BACKGROUND:
            problems.append("'background' belongs in the top-level 'background' key, not in 'labels'")
        names = [cls] + (entry.get("aliases", []) if isinstance(entry, dict) else [])
        for alias in names:
            if not isinstance(alias, str):
                continue
            key = _match_key(alias)
            if key in owner and owner[key] != cls:
                problems.append(f"name {alias!r} of {cls!r} is also a name of {owner[key]!r}")
            owner.setdefault(key, cls)
    if "background" in data:
        _check_entry(data["background"], "background", problems)
        if isinstance(data["background"], dict) and "aliases" in data["background"]:
            problems.append("background takes no aliases")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"'{key}' must be a string")
    if problems:
        raise CorpusError(f"{source}: " + "; ".join(problems))


@lru_cache(maxsize=None)
def _read_corpus(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorpusError(f"cannot read corpus {path}: {err}") from err
    validate_corpus(data, source=path)
    return data


def _resolve(name: str) -> Path:
    candidate = Path(name).expanduser()
    if name.lower().endswith(".json") and candidate.is_file():
        return candidate.resolve()
    wanted = _match_key(name[:-5] if name.lower().endswith(".json") else name)
    available = available_corpora()
    for corpus_id in available:
        if _match_key(corpus_id) == wanted:
            return corpus_dir() / f"{corpus_id}.json"
    raise CorpusError(f"unknown corpus {name!r}; available corpora: {', '.join(available) or 'none'}")


def load_corpus(name: str) -> dict:
    """Load and validate a corpus by id (``"amos22"``, case-insensitive) or by path to a .json file.

    Returns a fresh copy, safe to modify.
    """
    return copy.deepcopy(_read_corpus(str(_resolve(name))))


def label_texts_from_corpus(name: str, label_names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Concept texts for a dataset's label names, keyed by the names exactly as given.

    Names match a class name or alias after normalisation; ``background`` maps to the corpus
    background entry. Any unmatched name raises one :class:`CorpusError` naming all of them.
    """
    corpus = load_corpus(name)
    index: dict[str, str] = {}
    spelled: dict[str, str] = {}  # normalised name -> a spelling to suggest
    for cls, entry in corpus["labels"].items():
        for alias in [cls, *entry.get("aliases", [])]:
            index.setdefault(_match_key(alias), cls)
            spelled.setdefault(normalise_label_name(alias), alias)

    texts: dict[str, dict[str, str]] = {}
    missing: dict[str, list[str]] = {}
    for label in label_names:
        key = _match_key(label)
        if key == _BACKGROUND and "background" in corpus:
            entry = corpus["background"]
        elif key in index:
            entry = corpus["labels"][index[key]]
        else:
            close = difflib.get_close_matches(normalise_label_name(label), list(spelled), n=3, cutoff=0.5)
            missing[label] = [spelled[c] for c in close]
            continue
        texts[label] = {c: entry[c] for c in CONCEPTS if c in entry}

    if missing:
        parts = []
        for label, close in missing.items():
            hint = ", ".join(repr(c) for c in close) if close else "none; classes: " + ", ".join(corpus["labels"])
            parts.append(f"{label!r} (closest: {hint})")
        noun, fix = ("label", _FIX) if len(parts) == 1 else ("labels", _FIX_MANY)
        raise CorpusError(f"{noun} {', '.join(parts)} not found in corpus {name!r}; {fix}", missing)
    return texts
