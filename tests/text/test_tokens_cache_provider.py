"""Tokenization, the dataset-level text cache and per-batch text (modes, mirroring)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_vl.text.cache import load_text_cache, write_text_cache, TextCacheMissingError
from nnunet_vl.text.contract import DatasetText
from nnunet_vl.text.encoders import load_tokenizer
from nnunet_vl.text.provider import MissingReportError, TextProvider
from nnunet_vl.text.tokens import TextTokenizer

LABELS = [("background", {"definition": "background"}), ("target", {"definition": "target lesion", "shape": "round"})]
REPORTS = {"a": "lesion in the upper left", "b": "lesion in the lower right", "c": "round lesion"}


@pytest.fixture
def tokenizer(tiny_bert: Path) -> TextTokenizer:
    return TextTokenizer(load_tokenizer(tiny_bert), max_report_tokens=12, max_label_tokens=10)


def test_label_tensors_shapes_and_presence(tokenizer):
    t = tokenizer.label_tensors(LABELS)
    assert t["class_ids"].shape == (2, 10) and t["concept_ids"].shape == (2, 6, 10)
    assert t["concept_present"].tolist() == [[True] + [False] * 5, [True, True] + [False] * 4]


def test_truncation_warns_once_naming_the_cases(tokenizer):
    long = " ".join(["lesion"] * 40)
    with pytest.warns(UserWarning, match=r"1 text\(s\) longer than the planned 12 tokens were truncated: case_long"):
        ids, mask = tokenizer.encode([long, "left"], 12, ["case_long", "case_short"])
    assert ids.shape == (2, 12) and mask[0].sum() == 12 and mask[1].sum() == 3


def test_cache_reuses_unchanged_reports(tmp_path, tokenizer):
    text = DatasetText(dict(REPORTS), dict(LABELS), None, ["a", "b", "c"], [])
    first = write_text_cache(tmp_path, text, tokenizer.tokenizer, 12)
    assert first.retokenized == 3
    assert write_text_cache(tmp_path, text, tokenizer.tokenizer, 12).retokenized == 0
    text.reports["b"] = "lesion in the middle"
    assert write_text_cache(tmp_path, text, tokenizer.tokenizer, 12).retokenized == 1
    assert write_text_cache(tmp_path, text, tokenizer.tokenizer, 16).retokenized == 3  # new length limit
    loaded = load_text_cache(tmp_path)
    assert loaded.reports["b"] == "lesion in the middle" and loaded.label_texts["target"]["shape"] == "round"
    with pytest.warns(UserWarning, match=r"1 report\(s\) are longer than the planned 4 tokens .*: b"):
        text.reports = {"a": "left", "b": "lesion in the upper left region"}
        write_text_cache(tmp_path, text, tokenizer.tokenizer, 4)
    with pytest.raises(TextCacheMissingError, match="nnUNetv2_plan_and_preprocess_vl"):
        load_text_cache(tmp_path / "other")


def _decoded(provider: TextProvider, inputs, i: int) -> str:
    ids = inputs.report_ids[i][inputs.report_mask[i].bool()]
    return provider.tokenizer.tokenizer.decode(ids, skip_special_tokens=True)


def test_provider_swaps_words_exactly_for_flipped_axes(tokenizer, tmp_path):
    cache = write_text_cache(tmp_path, DatasetText(dict(REPORTS), dict(LABELS), None, list(REPORTS), []),
                             tokenizer.tokenizer, 12)
    provider = TextProvider(tokenizer, LABELS, REPORTS, {"left_right": 1, "superior_inferior": 0},
                            cache.report_token_ids)
    inputs = provider.inputs(["a", "a", "a", "b"], [(), (1,), (0, 1), (0,)])
    assert [_decoded(provider, inputs, i) for i in range(4)] == [
        "lesion in the upper left", "lesion in the upper right", "lesion in the lower right",
        "lesion in the upper right"]
    assert inputs.class_ids.shape == (2, 10)


def test_provider_modes(tokenizer):
    provider = TextProvider(tokenizer, LABELS, REPORTS, {"left_right": 1})
    none = provider.inputs(["a"], mode="none")
    assert int(none.report_mask.sum()) == 2  # [CLS] [SEP]
    partner = provider.shuffled_partner("a")
    assert partner != "a" and REPORTS[partner] != REPORTS["a"]
    assert provider.shuffled_partner("a") == partner  # deterministic
    assert torch.equal(provider.inputs(["a"], mode="shuffled").report_ids, provider.inputs([partner]).report_ids)
    with pytest.raises(MissingReportError, match="no report for case 'zzz'"):
        provider.inputs(["zzz"])
    with pytest.raises(MissingReportError, match="--text-mode none"):
        provider.check_reports(["a", "zzz"])
    provider.check_reports(["zzz"], mode="none")
