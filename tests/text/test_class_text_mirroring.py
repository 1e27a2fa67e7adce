"""Class texts follow mirroring per sample: a sample flipped along an axis whose direction words a class text uses
reads that text with the words swapped; lateral pair members keep their left-right words and fixed side names
never swap; class texts without direction words cost nothing (one shared set, no index)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_vl.text.corpora import CONCEPTS
from nnunet_vl.text.directions import direction_words
from nnunet_vl.text.encoders import load_tokenizer
from nnunet_vl.text.provider import TextProvider, swapped_label_texts
from nnunet_vl.text.tokens import TextTokenizer

AXES = {"left_right": 1, "superior_inferior": 0, "anterior_posterior": None}  # a 2D configuration
PAIRS = [["kidney_left", "kidney_right"]]
TEXTS = [
    ("background", {"definition": "background tissue"}),
    ("spleen", {"definition": "the spleen organ", "location": "in the left upper region"}),  # unpaired, sided
    ("kidney_left", {"definition": "the left kidney on the left side", "location": "upper region"}),
    ("kidney_right", {"definition": "the right kidney on the right side", "location": "upper region"}),
    ("left ventricle", {"definition": "the left ventricle beside the right ventricle"}),  # fixed side names
    ("left_lung", {"definition": "the lung"}),  # a side only in its (unpaired) name
]
REPORTS = {"a": "round lesion", "b": "round lesion"}
SPLEEN, KIDNEY_LEFT, KIDNEY_RIGHT, VENTRICLE, LUNG = 1, 2, 3, 4, 5
LOCATION = CONCEPTS.index("location")


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> TextTokenizer:
    return TextTokenizer(load_tokenizer(tiny_bert), 12, 24, 12)


@pytest.fixture(scope="module")
def provider(tokenizer) -> TextProvider:
    return TextProvider(tokenizer, TEXTS, REPORTS, AXES, lateral_pairs=PAIRS)


def _class_words(provider: TextProvider, text, sample: int, c: int) -> str:
    ids, mask = text.class_ids, text.class_mask
    if text.class_set is not None:
        ids, mask = ids[text.class_set[sample]], mask[text.class_set[sample]]
    return provider.tokenizer.tokenizer.decode(ids[c][mask[c].bool()], skip_special_tokens=True)


def _concept_words(provider: TextProvider, text, sample: int, c: int, k: int) -> str:
    ids, mask = text.concept_ids, text.concept_mask
    if text.class_set is not None:
        ids, mask = ids[text.class_set[sample]], mask[text.class_set[sample]]
    return provider.tokenizer.tokenizer.decode(ids[c, k][mask[c, k].bool()], skip_special_tokens=True)


def test_flipped_sample_reads_swapped_class_texts_unflipped_one_as_written(provider):
    plain = provider.inputs(["a", "b"])
    assert plain.class_set is None and torch.equal(plain.class_ids, provider.label_tensors["class_ids"])
    text = provider.inputs(["a", "b"], [(1,), ()])  # sample 0 mirrored left-right
    assert text.class_set is not None and text.class_set.tolist() in ([0, 1], [1, 0])
    assert text.class_ids.shape == (2, len(TEXTS), 24) and text.concept_ids.shape[:2] == (2, len(TEXTS))
    assert torch.equal(text.concept_present, plain.concept_present)  # (C, K): a swap never empties a concept
    assert "right upper region" in _class_words(provider, text, 0, SPLEEN)
    assert "left upper region" in _class_words(provider, text, 1, SPLEEN)
    assert _concept_words(provider, text, 0, SPLEEN, LOCATION) == "in the right upper region"  # the concept anchors too
    assert _concept_words(provider, text, 1, SPLEEN, LOCATION) == "in the left upper region"
    assert _class_words(provider, text, 0, LUNG).startswith("right lung")  # an unpaired sided name swaps
    assert _class_words(provider, text, 1, LUNG).startswith("left lung")
    for c in (0, KIDNEY_LEFT, KIDNEY_RIGHT, VENTRICLE):  # paired, fixed side names, no direction words: unchanged
        assert _class_words(provider, text, 0, c) == _class_words(provider, plain, 0, c), TEXTS[c]
    sets = text.class_ids[text.class_set]  # (B, C, Lc) as each sample reads them
    changed = (sets[0] != sets[1]).any(-1)
    assert changed.tolist() == [False, True, False, False, False, True]  # exactly spleen and left_lung


def test_superior_inferior_flip_swaps_the_other_axis_words_of_pair_members_too(provider):
    """A pair's ids swap only with a left-right flip: its upper/lower words follow the same rule as any text."""
    text = provider.inputs(["a", "b"], [(0,), ()])
    assert "left lower region" in _class_words(provider, text, 0, SPLEEN)
    assert _class_words(provider, text, 0, KIDNEY_LEFT) == "kidney left : the left kidney on the left side lower region"
    assert _class_words(provider, text, 1, KIDNEY_LEFT).endswith("left side upper region")
    assert _class_words(provider, text, 0, LUNG).startswith("left lung")  # a left-right word: unchanged here
    both = provider.inputs(["a"], [(0, 1)])
    assert "kidney left : the left kidney on the left side lower region" in _class_words(provider, both, 0, KIDNEY_LEFT)
    assert "right lower region" in _class_words(provider, both, 0, SPLEEN)


def test_sets_are_built_once_and_a_batch_sharing_one_carries_no_index(provider):
    assert len(provider.class_sets) == 4  # as written, left-right, superior-inferior, both (AP is not mapped)
    same = provider.inputs(["a", "b"], [(1,), (1,)])
    assert same.class_set is None and torch.equal(same.class_ids, provider.class_sets[provider.class_set((1,))]
                                                  ["class_ids"])
    assert not torch.equal(same.class_ids, provider.label_tensors["class_ids"])
    assert provider.class_set(()) == 0 and provider.class_set((0, 1)) not in (0, provider.class_set((1,)))
    mixed = provider.inputs(["a", "b", "a", "b"], [(0,), (1,), (0, 1), (1,)])
    assert mixed.class_ids.shape[0] == 3 and sorted(mixed.class_set.tolist()[:3]) == [0, 1, 2]  # only the sets used
    for i, flips in enumerate([(0,), (1,), (0, 1), (1,)]):
        assert torch.equal(mixed.class_ids[mixed.class_set[i]], provider.class_sets[provider.class_set(flips)]
                           ["class_ids"])


def test_class_texts_without_direction_words_build_no_second_set(tokenizer):
    texts = [("background", {"definition": "background tissue"}), ("liver", {"definition": "the liver organ"}),
             ("left ventricle", {"definition": "the left ventricle beside the right ventricle"})]
    provider = TextProvider(tokenizer, texts, REPORTS, AXES)
    assert len(provider.class_sets) == 1 and provider.class_text_named_axes() == set()
    text = provider.inputs(["a", "b"], [(0, 1), ()])
    assert text.class_set is None and torch.equal(text.class_ids, provider.label_tensors["class_ids"])
    assert torch.equal(text.concept_ids, provider.label_tensors["concept_ids"])


def test_pair_member_texts_never_swap_left_right_and_do_not_name_it(tokenizer):
    pair_only = [TEXTS[0], TEXTS[KIDNEY_LEFT], TEXTS[KIDNEY_RIGHT]]
    paired = TextProvider(tokenizer, pair_only, REPORTS, AXES, lateral_pairs=PAIRS)
    assert paired.class_text_named_axes() == {"superior_inferior"}  # "upper region"; their side words do not count
    assert paired.inputs(["a"], [(1,)]).class_set is None
    assert torch.equal(paired.inputs(["a"], [(1,)]).class_ids, paired.label_tensors["class_ids"])
    unpaired = TextProvider(tokenizer, pair_only, REPORTS, AXES)  # the same texts without pairs: plain class texts
    assert unpaired.class_text_named_axes() == {"left_right", "superior_inferior"}
    assert paired.class_text_named_axes(lateral_pairs=()) == {"left_right", "superior_inferior"}
    assert not torch.equal(unpaired.inputs(["a"], [(1,)]).class_ids, unpaired.label_tensors["class_ids"])


def test_swapped_label_texts_keep_unchanged_classes_as_given():
    words = direction_words()
    swapped = swapped_label_texts(TEXTS, ["left_right"], words, PAIRS)
    for c in (0, KIDNEY_LEFT, KIDNEY_RIGHT, VENTRICLE):
        assert swapped[c] is TEXTS[c] or swapped[c] == TEXTS[c]
    assert swapped[SPLEEN] == ("spleen", {"definition": "the spleen organ", "location": "in the right upper region"})
    assert swapped[LUNG] == ("right lung", {"definition": "the lung"})
    assert swapped_label_texts(TEXTS, ["left_right", "left_right"], words, PAIRS) == swapped


def test_amos22_spleen_swaps_its_side_and_the_kidney_pair_keeps_it(tokenizer):
    from nnunet_vl.text.corpora import label_texts_from_corpus, load_corpus
    from nnunet_vl.text.laterality import detect_lateral_pairs

    names = ["background", *load_corpus("amos22")["labels"]]
    texts = label_texts_from_corpus("amos22", names)
    pairs = detect_lateral_pairs(names)
    swapped = dict(swapped_label_texts(list(texts.items()), ["left_right"], direction_words(), pairs))
    assert swapped["spleen"]["definition"].startswith("The spleen is a solid lymphoid organ of the right upper")
    assert swapped["left kidney"] == texts["left kidney"] and swapped["right kidney"] == texts["right kidney"]
