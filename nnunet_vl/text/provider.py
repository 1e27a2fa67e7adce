"""Per-case text for training and prediction: report lookup, text modes, direction swaps, tokenization."""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.text.directions import array_axes_to_anatomical, direction_words
from nnunet_vl.text.tokens import TextTokenizer

TEXT_MODES = ("report", "none", "shuffled")


class MissingReportError(ValueError):
    pass


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The files tokenizer.save_pretrained writes, as bytes (to store them in a checkpoint)."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            (Path(d) / name).write_bytes(content)
        return AutoTokenizer.from_pretrained(d, local_files_only=True)


def shuffled_partner(reports: dict[str, str], case: str, order: Sequence[str] | None = None) -> str:
    """The case whose report `--text-mode shuffled` gives to `case`: a fixed other case with another report.

    order: sorted(reports), when the caller already holds it."""
    others = [c for c in (sorted(reports) if order is None else order) if reports[c] != reports[case]]
    if not others:
        return case
    digest = int(hashlib.sha1(case.encode()).hexdigest(), 16)
    return others[digest % len(others)]


class TextProvider:
    """Builds TextInputs for a list of cases.

    direction_axes maps anatomical axes to the spatial array axes of the configuration; a sample
    mirrored along such an axis gets its report with that axis's direction words swapped. fixed_side_names
    (dataset.json's `fixed_side_names`) adds structure names that never swap to the shipped ones.
    """

    def __init__(self, tokenizer: TextTokenizer, label_texts: Sequence[tuple[str, dict[str, str]]],
                 reports: dict[str, str], direction_axes: dict[str, int | None],
                 report_token_ids: dict[str, list[int]] | None = None, source: str = "reports",
                 fixed_side_names: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.directions = direction_words(tuple(fixed_side_names))
        self.label_tensors = tokenizer.label_tensors(label_texts)
        self.reports = reports
        self.direction_axes = direction_axes
        self.report_token_ids = report_token_ids or {}
        self.source = source
        self._shuffle_order = sorted(reports)

    def report(self, case: str, mode: str = "report") -> str:
        if mode == "none":
            return ""
        if case not in self.reports:
            raise MissingReportError(f"no report for case '{case}' in {self.source}: add it (or pass --reports FILE "
                                     f"with it), or predict with --text-mode none")
        if mode == "report":
            return self.reports[case]
        if mode == "shuffled":
            return self.reports[self.shuffled_partner(case)]
        raise ValueError(f"unknown text mode '{mode}': use one of {TEXT_MODES}")

    def shuffled_partner(self, case: str) -> str:
        """A fixed other case whose report differs (deterministic, independent of call order)."""
        return shuffled_partner(self.reports, case, self._shuffle_order)

    def check_reports(self, cases: Sequence[str], mode: str = "report") -> None:
        """Fail before any work when cases lack the report the text mode needs."""
        missing = [c for c in cases if c not in self.reports] if mode != "none" else []
        if missing:
            raise MissingReportError(f"{len(missing)} case(s) have no report in {self.source}: "
                                     f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. Pass "
                                     f"--reports FILE with their reports, or predict with --text-mode none")

    def anatomical_axes_named(self, case: str, mode: str = "report") -> set[str]:
        return self.directions.named_axes(self.report(case, mode)) if mode != "none" else set()

    def inputs(self, cases: Sequence[str], flipped_axes: Sequence[Sequence[int]] | None = None,
               mode: str = "report") -> TextInputs:
        """TextInputs for the cases; flipped_axes[i] lists the spatial array axes mirrored in sample i."""
        flipped_axes = flipped_axes or [()] * len(cases)
        rows: list[torch.Tensor] = []
        todo: dict[int, str] = {}
        for i, (case, flips) in enumerate(zip(cases, flipped_axes)):
            swapped = array_axes_to_anatomical(self.direction_axes, flips)
            text = self.report(case, mode)
            if swapped:
                text = self.directions.swap(text, swapped)
            cached = self.report_token_ids.get(case) if mode == "report" and not swapped else None
            if cached is not None and text == self.reports.get(case):
                rows.append(torch.tensor(cached, dtype=torch.long))
            else:
                rows.append(torch.empty(0, dtype=torch.long))
                todo[i] = text
        ids = torch.full((len(cases), self.tokenizer.max_report_tokens), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row[: ids.shape[1]]
            mask[i, :len(row)] = 1
        if todo:
            enc_ids, enc_mask = self.tokenizer.encode(list(todo.values()), self.tokenizer.max_report_tokens,
                                                      [cases[i] for i in todo])
            index = torch.tensor(list(todo))
            ids[index], mask[index] = enc_ids, enc_mask
        return TextInputs(report_ids=ids, report_mask=mask, **self.label_tensors)
