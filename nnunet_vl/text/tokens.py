"""Turn reports and label texts into the padded token tensors a VL network consumes."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.text.corpora import CONCEPTS


def class_description(name: str, concepts: dict[str, str]) -> str:
    """One class's full description: its name followed by its concept sentences in a fixed order."""
    return " ".join([f"{name.replace('_', ' ')}:"] + [concepts[c] for c in CONCEPTS if c in concepts])


class TextTokenizer:
    """Pads and truncates text to the planned lengths; truncation warns once per call, naming the cases."""

    def __init__(self, tokenizer, max_report_tokens: int, max_label_tokens: int, max_concept_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.max_report_tokens = max_report_tokens
        self.max_label_tokens = max_label_tokens
        self.max_concept_tokens = max_concept_tokens or max_label_tokens
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, special tokens included."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def encode(self, texts: Sequence[str], max_tokens: int, names: Sequence[str] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of shape (len(texts), max_tokens)."""
        if names is not None:
            too_long = [n for n, length in zip(names, self.token_lengths(texts)) if length > max_tokens]
            if too_long:
                warnings.warn(f"{len(too_long)} text(s) longer than the planned {max_tokens} tokens were truncated: "
                              f"{', '.join(too_long[:20])}{' ...' if len(too_long) > 20 else ''}", stacklevel=2)
        out = self.tokenizer(list(texts), max_length=max_tokens, truncation=True, padding="max_length",
                             return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()

    def label_tensors(self, label_texts: Sequence[tuple[str, dict[str, str]]]) -> dict[str, torch.Tensor]:
        """Class and concept tensors for classes given in network output order as (name, concepts)."""
        descriptions = [class_description(name, concepts) for name, concepts in label_texts]
        names = [name for name, _ in label_texts]
        class_ids, class_mask = self.encode(descriptions, self.max_label_tokens, [f"label '{n}'" for n in names])
        sentences = [concepts.get(c, "") for _, concepts in label_texts for c in CONCEPTS]
        concept_ids, concept_mask = self.encode(sentences, self.max_concept_tokens)
        shape = (len(label_texts), len(CONCEPTS), self.max_concept_tokens)
        present = torch.tensor([[bool(concepts.get(c)) for c in CONCEPTS] for _, concepts in label_texts])
        return {"class_ids": class_ids, "class_mask": class_mask, "concept_ids": concept_ids.view(shape),
                "concept_mask": concept_mask.view(shape), "concept_present": present}

    def text_inputs(self, reports: Sequence[str], label_tensors: dict[str, torch.Tensor],
                    names: Sequence[str] | None = None) -> TextInputs:
        report_ids, report_mask = self.encode(reports, self.max_report_tokens, names)
        return TextInputs(report_ids=report_ids, report_mask=report_mask, **label_tensors)
