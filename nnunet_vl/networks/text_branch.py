"""The text side of BiPVL-Seg: a Hugging Face encoder run in progressive chunks between fusion blocks."""
from __future__ import annotations

import torch
from torch import nn

from nnunet_vl.networks.text_inputs import TextInputs

try:
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # older transformers 4.x: no mask factory, BERT layers take an additive (B, 1, 1, T) mask
    create_bidirectional_mask = None


CLASS_TEXT_MODES = ("token", "sentences")  # how class descriptions enter the fused text (ProgressiveTextEncoder.embed)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (..., L, H) over the real tokens of mask (..., L); zero where a row has none."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)


class ProgressiveTextEncoder(nn.Module):
    """Wraps a Hugging Face BERT-like encoder (has .embeddings and .encoder.layer) and splits its layers
    into n_chunks progressive chunks.

    Chunk k runs right before fusion block k; the layers are split as evenly as possible (chunks are
    empty when there are fewer layers than chunks). The text of a sample is its report followed by
    the class descriptions, one token or all tokens each (`class_text`, see `embed`); each segment is embedded
    on its own (positions restart, so no segment overflows the position table) and gets a learned segment
    embedding (0 = report, 1 + c = class c), initialised to zero so the pretrained text features are unchanged
    at the start. A pooler, if present, is removed: it would receive no gradient.
    """

    def __init__(self, text_encoder: nn.Module, n_chunks: int, num_segments: int, class_text: str = "token") -> None:
        super().__init__()
        if class_text not in CLASS_TEXT_MODES:
            raise ValueError(f"class_text '{class_text}' is not one of {CLASS_TEXT_MODES}")
        self.class_text = class_text
        if n_chunks < 1:
            raise ValueError("ProgressiveTextEncoder needs at least one chunk")
        if getattr(text_encoder, "pooler", None) is not None:
            text_encoder.pooler = None
        self.text_encoder = text_encoder
        self.hidden_size: int = text_encoder.config.hidden_size
        n_layers = len(text_encoder.encoder.layer)
        self.chunk_bounds = [round(i * n_layers / n_chunks) for i in range(n_chunks + 1)]
        self.segment_embedding = nn.Embedding(num_segments, self.hidden_size)
        nn.init.zeros_(self.segment_embedding.weight)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bounds) - 1

    def embed(self, text: TextInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, Lr + C * n, H) and their mask (B, Lr + C * n) bool: the report's tokens, then each
        class description as `class_text` says: one token (n = 1, "token") or its Lc tokens (n = Lc, "sentences").

        "token": a class token is the mean of its description's token embeddings; one token per class keeps the
        per-sample sequence short, so the text layers cost O(B * (Lr + C)) instead of O(B * (Lr + C * Lc)).
        "sentences": the descriptions are read as language, through the text chunks and the fusion with the
        report. Positions restart per description; every token of class c gets segment embedding 1 + c.
        With several class text sets (text.class_set) each set is embedded once and each sample gets its own's.
        """
        b, c = text.batch_size, text.num_classes
        lr = text.report_ids.shape[1]
        report = self.text_encoder.embeddings(input_ids=text.report_ids)
        sets = 1 if text.class_set is None else text.class_ids.shape[0]
        lc = text.class_ids.shape[-1]
        class_ids, class_mask = text.class_ids.reshape(sets * c, lc), text.class_mask.reshape(sets * c, lc).bool()
        words = self.text_encoder.embeddings(input_ids=class_ids)  # (S * C, Lc, H)
        if self.class_text == "token":
            classes, class_mask = masked_mean(words, class_mask)[:, None], torch.ones_like(class_mask[:, :1])
        else:
            classes = words
        n = classes.shape[1]
        classes = classes.reshape(sets, c * n, -1)
        class_mask = class_mask.reshape(sets, c * n)
        pick = torch.zeros(b, dtype=torch.long, device=report.device) if text.class_set is None else text.class_set
        segments = torch.cat([torch.zeros(lr, dtype=torch.long, device=report.device),
                              torch.arange(1, c + 1, device=report.device).repeat_interleave(n)])
        hidden = torch.cat([report, classes[pick]], dim=1) + self.segment_embedding(segments)
        mask = torch.cat([text.report_mask.bool(), class_mask[pick]], dim=1)
        return hidden, mask

    def class_states(self, text: TextInputs, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C, H) one state per class from the fused text (B, T, H): its token, or the mean over its
        description's real tokens ("sentences")."""
        classes = hidden[:, text.report_ids.shape[1]:]
        if self.class_text == "token":
            return classes
        b, c, lc = text.batch_size, text.num_classes, text.class_ids.shape[-1]
        mask = text.class_mask.reshape(-1, c, lc).bool()
        mask = mask[0].expand(b, -1, -1) if text.class_set is None else mask[text.class_set]
        return masked_mean(classes.reshape(b, c, lc, -1), mask)

    def layer_mask(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The attention mask in the format the wrapped encoder's layers expect (None = attend everywhere)."""
        if create_bidirectional_mask is None:
            return (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return create_bidirectional_mask(config=self.text_encoder.config, inputs_embeds=hidden, attention_mask=mask)

    def run_layers(self, start: int, stop: int, hidden: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor:
        """Text layers start..stop-1 of the wrapped encoder on hidden (B, T, H)."""
        for layer in self.text_encoder.encoder.layer[start:stop]:
            out = layer(hidden, attention_mask=layer_mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def run_chunk(self, k: int, hidden: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor:
        """Chunk k (the layers before fusion block k) on hidden (B, T, H)."""
        return self.run_layers(self.chunk_bounds[k], self.chunk_bounds[k + 1], hidden, layer_mask)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled output (N, H) of the full encoder, without fusion, for ids and mask (N, L)."""
        mask = mask.bool().clone()
        mask[:, 0] |= ~mask.any(1)  # all-padding rows (missing concepts): older PyTorch SDPA returns NaN
        hidden = self.text_encoder.embeddings(input_ids=ids)
        hidden = self.run_layers(0, self.chunk_bounds[-1], hidden, self.layer_mask(hidden, mask))
        return masked_mean(hidden, mask)
