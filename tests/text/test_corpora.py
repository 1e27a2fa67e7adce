"""Shipped class-description corpora: content, name matching and errors (packaging: tests/test_package_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_vl.text.corpora import (
    CONCEPTS,
    CorpusError,
    available_corpora,
    corpus_dir,
    label_texts_from_corpus,
    load_corpus,
    normalise_label_name,
    validate_corpus,
)

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "amos22": 15,
    "btcv": 13,
    "mmwhs": 7,
    "brats": 5,
    "kits": 4,
    "msd_brain_tumour": 5,
    "msd_heart": 1,
    "msd_liver": 2,
    "msd_hippocampus": 2,
    "msd_prostate": 2,
    "msd_lung": 1,
    "msd_pancreas": 2,
    "msd_hepatic_vessel": 2,
    "msd_spleen": 1,
    "msd_colon": 1,
    "generic_lesion": 1,
}
# Label names exactly as the public datasets' dataset.json files spell them.
DATASET_LABELS = {
    "amos22": ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
               "stomach", "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland",
               "duodenum", "bladder", "prostate/uterus"],
    "btcv": ["background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins",
             "pancreas", "rad", "lad"],
    "mmwhs": ["background", "left ventricle blood cavity", "right ventricle blood cavity", "left atrium blood cavity",
              "right atrium blood cavity", "myocardium of the left ventricle", "ascending aorta", "pulmonary artery"],
    "brats": ["background", "whole tumor", "tumor core", "enhancing tumor"],
    "msd_brain_tumour": ["background", "edema", "non-enhancing tumor", "enhancing tumour"],
    "kits": ["background", "kidney", "masses", "tumor", "cyst"],
    "msd_heart": ["background", "left atrium"],
    "msd_liver": ["background", "liver", "cancer"],
    "msd_hippocampus": ["background", "Anterior", "Posterior"],
    "msd_prostate": ["background", "PZ", "TZ"],
    "msd_lung": ["background", "cancer"],
    "msd_pancreas": ["background", "pancreas", "cancer"],
    "msd_hepatic_vessel": ["background", "Vessel", "Tumour"],
    "msd_spleen": ["background", "spleen"],
    "msd_colon": ["background", "colon cancer primaries"],
    "generic_lesion": ["background", "lesion"],
}


def test_expected_corpora_are_shipped() -> None:
    assert corpus_dir().resolve() == (REPO / "text_corpora").resolve()
    assert set(EXPECTED) <= set(available_corpora())


def test_corpus_dir_holds_only_json() -> None:
    # text_corpora is installed as a data package: anything else would be silently left out.
    others = [p.name for p in corpus_dir().iterdir() if p.suffix != ".json" and p.name not in ("__init__.py", "__pycache__")]
    assert not others, f"only .json files belong in text_corpora/, found {others}"


@pytest.mark.parametrize("corpus_id", sorted(EXPECTED))
def test_corpus_complete(corpus_id: str) -> None:
    corpus = load_corpus(corpus_id)
    assert isinstance(corpus["name"], str) and corpus["name"].strip()
    assert isinstance(corpus["description"], str) and corpus["description"].strip()
    assert "\n" not in corpus["description"]
    assert len(corpus["labels"]) == EXPECTED[corpus_id]
    entries = dict(corpus["labels"], background=corpus["background"])
    for cls, entry in entries.items():
        for concept in CONCEPTS:
            text = entry.get(concept)
            assert isinstance(text, str) and len(text.strip()) > 10, f"{corpus_id}/{cls}: empty {concept}"
        if cls != "background":
            assert entry["aliases"], f"{corpus_id}/{cls}: no aliases"


@pytest.mark.parametrize("corpus_id", sorted(EXPECTED))
def test_aliases_unique_within_corpus(corpus_id: str) -> None:
    owner: dict[str, str] = {}
    for cls, entry in load_corpus(corpus_id)["labels"].items():
        for alias in {normalise_label_name(a).replace(" ", "") for a in [cls, *entry["aliases"]]}:
            assert alias not in owner, f"{corpus_id}: {alias!r} names both {owner[alias]!r} and {cls!r}"
            owner[alias] = cls
    assert "background" not in owner


@pytest.mark.parametrize("corpus_id", sorted(DATASET_LABELS))
def test_real_dataset_label_names_match(corpus_id: str) -> None:
    names = DATASET_LABELS[corpus_id]
    texts = label_texts_from_corpus(corpus_id, names)
    assert list(texts) == names
    assert texts["background"] == {c: load_corpus(corpus_id)["background"][c] for c in CONCEPTS}
    assert all(set(t) == set(CONCEPTS) for t in texts.values())


def test_dataset_labels_cover_every_class() -> None:
    for corpus_id, names in DATASET_LABELS.items():
        corpus = load_corpus(corpus_id)
        matched = label_texts_from_corpus(corpus_id, names)
        by_definition = {entry["definition"] for entry in corpus["labels"].values()}
        if corpus_id not in ("brats", "msd_brain_tumour"):  # region names vs label names: subsets
            assert by_definition <= {t["definition"] for t in matched.values()}, corpus_id


def test_laterality_is_kept() -> None:
    texts = label_texts_from_corpus("amos22", ["right kidney", "left kidney", "right adrenal gland", "left adrenal gland"])
    assert "right" in texts["right kidney"]["location"].lower()
    assert "left" in texts["left kidney"]["location"].lower()
    assert texts["right kidney"] != texts["left kidney"]
    assert "inferior vena cava" in texts["right adrenal gland"]["location"]
    assert texts["right adrenal gland"]["location"] != texts["left adrenal gland"]["location"]


def test_amos_describes_ct_and_mr_btcv_ct() -> None:
    amos = load_corpus("amos22")["labels"]
    btcv = load_corpus("btcv")["labels"]
    for entry in amos.values():
        assert "HU" in entry["appearance"] and ("MR" in entry["appearance"] or "T2" in entry["appearance"])
    for entry in btcv.values():
        assert "HU" in entry["appearance"]
    for corpus_id in ("brats", "msd_brain_tumour", "msd_hippocampus", "msd_prostate", "msd_heart"):
        for entry in load_corpus(corpus_id)["labels"].values():
            assert "HU" not in entry["appearance"], corpus_id


@pytest.mark.parametrize(
    "given, canonical",
    [("Right_Kidney", "right kidney"), ("  RIGHT   kidney ", "right kidney"), ("right-kidney", "right kidney"),
     ("Non-Enhancing_Tumor", "non enhancing tumor"), ("PZ", "pz")],
)
def test_normalise_label_name(given: str, canonical: str) -> None:
    assert normalise_label_name(given) == canonical


def test_matching_is_case_and_spacing_insensitive() -> None:
    names = ["Right_Kidney", "LEFT-KIDNEY", "inferior  vena_cava", "Post-Cava", "GallBladder", "BACKGROUND"]
    texts = label_texts_from_corpus("AMOS22", names)
    assert list(texts) == names
    reference = label_texts_from_corpus("amos22", ["right kidney", "left kidney", "postcava", "gallbladder"])
    assert texts["Right_Kidney"] == reference["right kidney"]
    assert texts["LEFT-KIDNEY"] == reference["left kidney"]
    assert texts["inferior  vena_cava"] == texts["Post-Cava"] == reference["postcava"]
    assert texts["GallBladder"] == reference["gallbladder"]
    assert label_texts_from_corpus("msd_brain_tumour", ["nonenhancing tumour"])


def test_label_miss_names_label_corpus_suggestions_and_fix() -> None:
    with pytest.raises(CorpusError) as info:
        label_texts_from_corpus("amos22", ["spleen", "rigth kidney"])
    message = str(info.value)
    assert "\n" not in message
    assert "'rigth kidney'" in message and "'amos22'" in message
    assert "'right kidney'" in message
    assert "add it under label_texts in dataset.json or choose another corpus" in message
    assert info.value.missing["rigth kidney"][0] == "right kidney"


def test_several_misses_reported_at_once() -> None:
    with pytest.raises(CorpusError) as info:
        label_texts_from_corpus("msd_liver", ["liver", "tumr", "xyzzy"])
    message = str(info.value)
    assert "'tumr'" in message and "'xyzzy'" in message and "'msd_liver'" in message
    assert "'tumor'" in message  # suggestion for the typo
    assert "classes: liver, cancer" in message  # nothing close: list what the corpus has
    assert set(info.value.missing) == {"tumr", "xyzzy"}


def test_unknown_corpus_lists_available() -> None:
    with pytest.raises(CorpusError) as info:
        load_corpus("amos2022")
    assert "amos22" in str(info.value) and "msd_liver" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_corpus_accepts_id_variants_and_paths(tmp_path: Path) -> None:
    assert load_corpus("AMOS22") == load_corpus("amos22.json") == load_corpus("amos22")
    assert load_corpus("MSD-Brain_Tumour")["name"] == load_corpus("msd_brain_tumour")["name"]
    own = {"labels": {"blob": {"aliases": ["target"], "definition": "A bright blob."}},
           "background": {"definition": "Everything else."}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(own), encoding="utf-8")
    assert label_texts_from_corpus(str(path), ["Target", "background"]) == {
        "Target": {"definition": "A bright blob."}, "background": {"definition": "Everything else."}}


def test_load_corpus_returns_a_copy() -> None:
    load_corpus("btcv")["labels"]["spleen"]["definition"] = "changed"
    assert load_corpus("btcv")["labels"]["spleen"]["definition"] != "changed"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"labels": {}}, "non-empty"),
        ({"labels": {"a": {"definition": ""}}}, "non-empty string"),
        ({"labels": {"a": {"apperance": "x"}}}, "unknown keys"),
        ({"labels": {"a": {"definition": "x", "aliases": ["b"]}, "b": {"definition": "y"}}}, "also a name of"),
        ({"labels": {"background": {"definition": "x"}}}, "top-level 'background'"),
    ],
)
def test_validate_corpus_rejects_malformed(bad: dict, fragment: str) -> None:
    with pytest.raises(CorpusError, match=fragment):
        validate_corpus(bad)
