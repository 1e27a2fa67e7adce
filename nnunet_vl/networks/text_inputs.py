"""The tensors a vision-language network receives for one batch of text."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class TextInputs:
    """Token ids and attention masks of one batch (B samples, C classes incl. background).

    report_ids, report_mask:   (B, Lr)     the per-case report of each sample
    class_ids, class_mask:     (C, Lc)     one full description per class, row 0 = background
    concept_ids, concept_mask: (C, K, Lk)  one sentence per concept (shape, location, ...) per class
    concept_present:           (C, K)      False where a class has no text for that concept
    place:                     (B, dims, 2) where each sample's patch lies in its image (networks.positions), or
                                            None: position encodings relative to the patch
    class_set:                 (B,) long    None: one set of class texts for every sample (the shapes above). Else
                                            the class tensors have a leading set axis, (S, C, Lc) and (S, C, K, Lk),
                                            and sample i reads set class_set[i] (a mirrored sample whose class texts
                                            name the flipped axis reads them with their direction words swapped);
                                            concept_present stays (C, K): a swap never empties a concept
    Masks are 1 for real tokens and 0 for padding.
    """

    report_ids: torch.Tensor
    report_mask: torch.Tensor
    class_ids: torch.Tensor
    class_mask: torch.Tensor
    concept_ids: torch.Tensor
    concept_mask: torch.Tensor
    concept_present: torch.Tensor
    place: torch.Tensor | None = None
    class_set: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "TextInputs":
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)
                                if getattr(self, f.name) is not None})

    @property
    def batch_size(self) -> int:
        return self.report_ids.shape[0]

    @property
    def num_classes(self) -> int:
        return self.class_ids.shape[-2]


class TextRequiredError(ValueError):
    """A VL network was called without text (the stock nnU-Net predictor calls `network(x)`)."""


def require_text(text: TextInputs | None, network: str) -> TextInputs:
    """`text`, or a TextRequiredError: a VL network never silently runs as the plain image U-Net."""
    if text is None:
        raise TextRequiredError(
            f"{network} was called without text. A VL model predicts with nnunet_vl's predictor, which passes each "
            f"case's report: `nnUNetv2_predict_vl` (same flags as nnUNetv2_predict) or nnUNetPredictorVL in Python. "
            f"Image-only use of a VL model only when asked for: `nnUNetv2_predict_vl --text-mode none`")
    return text
