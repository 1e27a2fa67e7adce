"""The dataset-level text cache: nnUNet_preprocessed/DatasetXXX/text/text_cache.json.

It holds the validated reports and label texts (so training needs only the preprocessed folder, as
nnU-Net's own training does) and each report's token ids under the planned tokenizer. Re-planning
re-tokenizes only reports whose text, tokenizer or length limit changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nnunet_vl.text.contract import DatasetText

CACHE_NAME = "text_cache.json"


def text_cache_dir(preprocessed_dataset_folder: str | os.PathLike) -> Path:
    return Path(preprocessed_dataset_folder) / "text"


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def tokenizer_id(tokenizer) -> str:
    """Identifies a tokenizer's behaviour: its class and a hash of its vocabulary."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return f"{type(tokenizer).__name__}:{_sha(vocab)[:16]}"


@dataclass
class TextCache:
    reports: dict[str, str]
    label_texts: dict[str, dict[str, str]]
    report_token_ids: dict[str, list[int]]
    tokenizer_id: str
    max_report_tokens: int
    retokenized: int = 0  # how many reports the last write had to tokenize


class TextCacheMissingError(FileNotFoundError):
    """The dataset was planned without text."""


def write_text_cache(preprocessed_dataset_folder: str | os.PathLike, text: DatasetText, tokenizer,
                     max_report_tokens: int) -> TextCache:
    """Write (or update) the cache atomically; reuse token ids of unchanged reports."""
    path = text_cache_dir(preprocessed_dataset_folder) / CACHE_NAME
    tok_id = tokenizer_id(tokenizer)
    old: dict = {}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("tokenizer_id") != tok_id or old.get("max_report_tokens") != max_report_tokens:
            old = {}
    old_tokens = old.get("report_tokens", {})
    tokens, todo = {}, []
    for case, report in sorted(text.reports.items()):
        entry = old_tokens.get(case)
        if entry is not None and entry["sha1"] == _sha(report):
            tokens[case] = entry
        else:
            todo.append(case)
    chunk, truncated = 512, []
    for start in tqdm(range(0, len(todo), chunk), desc="Tokenizing reports", unit="chunk",
                      disable=len(todo) <= chunk):
        cases = todo[start:start + chunk]
        reports = [text.reports[c] for c in cases]
        full_lengths = [len(ids) for ids in tokenizer(reports)["input_ids"]]
        encoded = tokenizer(reports, max_length=max_report_tokens, truncation=True)
        for case, ids, length in zip(cases, encoded["input_ids"], full_lengths):
            tokens[case] = {"sha1": _sha(text.reports[case]), "ids": list(ids)}
            if length > max_report_tokens:
                truncated.append(case)
    if truncated:
        warnings.warn(f"{len(truncated)} report(s) are longer than the planned {max_report_tokens} tokens and were "
                      f"truncated: {', '.join(truncated[:20])}{' ...' if len(truncated) > 20 else ''} (raise "
                      f"max_report_tokens_cap in the planner preset to keep more)", stacklevel=2)
    payload = {"tokenizer_id": tok_id, "max_report_tokens": max_report_tokens, "reports": text.reports,
               "label_texts": text.label_texts, "report_tokens": tokens}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)
    return TextCache(text.reports, text.label_texts, {c: e["ids"] for c, e in tokens.items()}, tok_id,
                     max_report_tokens, retokenized=len(todo))


def load_text_cache(preprocessed_dataset_folder: str | os.PathLike) -> TextCache:
    path = text_cache_dir(preprocessed_dataset_folder) / CACHE_NAME
    if not path.is_file():
        dataset = Path(preprocessed_dataset_folder).name
        raise TextCacheMissingError(
            f"{path} does not exist: dataset {dataset} was planned without text. Run "
            f"`nnUNetv2_plan_and_preprocess_vl -d {dataset}` (it keeps nnU-Net's image plans) and train again")
    payload = json.loads(path.read_text(encoding="utf-8"))
    return TextCache(payload["reports"], payload["label_texts"],
                     {c: e["ids"] for c, e in payload["report_tokens"].items()}, payload["tokenizer_id"],
                     payload["max_report_tokens"])
