"""Dataset fingerprint with a `text` section, measured under the planned tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.paths import nnUNet_preprocessed

from nnunet_vl.text.cache import tokenizer_id
from nnunet_vl.text.contract import DatasetText
from nnunet_vl.text.corpora import CONCEPTS
from nnunet_vl.text.directions import ANATOMICAL_AXES, named_axes
from nnunet_vl.text.tokens import class_description


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    a = np.asarray(lengths)
    return {"min": int(a.min()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max())}


def text_fingerprint(text: DatasetText, tokenizer, encoder: str) -> dict:
    """Coverage, token lengths, concepts and direction mentions of a dataset's text."""
    reports = list(text.reports.values())
    lengths = [len(ids) for ids in tokenizer(reports)["input_ids"]] if reports else []
    descriptions = [class_description(n, c) for n, c in text.label_texts.items()]
    label_lengths = [len(ids) for ids in tokenizer(descriptions)["input_ids"]]
    concept_lengths = [len(ids) for ids in tokenizer([v for c in text.label_texts.values() for v in c.values()])[
        "input_ids"]]
    train_with = sum(c in text.reports for c in text.train_cases)
    test_with = sum(c in text.reports for c in text.test_cases)
    mentions = {axis: sum(axis in named_axes(r) for r in reports) for axis in ANATOMICAL_AXES}
    return {
        "encoder": encoder,
        "tokenizer_id": tokenizer_id(tokenizer),
        "num_training_cases": len(text.train_cases),
        "num_test_cases": len(text.test_cases),
        "training_cases_with_report": train_with,
        "test_cases_with_report": test_with,
        "report_coverage": train_with / max(1, len(text.train_cases)),
        "report_tokens": _length_stats(lengths),
        "label_text_tokens": _length_stats(label_lengths),
        "concept_tokens": _length_stats(concept_lengths),
        "labels_with_text": sorted(text.label_texts),
        "concepts_present": {c: sum(c in v for v in text.label_texts.values()) for c in CONCEPTS},
        "direction_mentions": mentions,
        "warnings": [str(p) for p in text.problems if p.severity == "warning"][:50],
    }


class TextFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's fingerprint plus a `text` section; the image part is nnU-Net's, untouched."""

    def __init__(self, dataset_name_or_id: str | int, num_processes: int = 8, verbose: bool = False, *,
                 text: DatasetText, tokenizer, encoder: str):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.text, self.tokenizer, self.encoder = text, tokenizer, encoder

    def run(self, overwrite_existing: bool = False) -> dict:
        fingerprint = super().run(overwrite_existing)
        section = text_fingerprint(self.text, self.tokenizer, self.encoder)
        if fingerprint.get("text") != json.loads(json.dumps(section)):
            fingerprint["text"] = section
            save_json(fingerprint, str(Path(nnUNet_preprocessed) / self.dataset_name / "dataset_fingerprint.json"),
                      sort_keys=False)
        return fingerprint
