"""Keeps what inference needs besides weights (tokenizer files, class texts) inside the network's state dict."""
from __future__ import annotations

from torch import nn


class TextAssets(nn.Module):
    """Holds tokenizer files and the ordered class texts as module extra state.

    nn.Module extra state travels in `state_dict()` under `<prefix>_extra_state`, so it is saved in
    nnU-Net's checkpoint['network_weights'], exported with the model and restored by the stock
    `load_state_dict` at prediction, with no file beside the checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer_files: dict[str, bytes] = {}
        self.label_texts: list[tuple[str, dict[str, str]]] = []

    def get_extra_state(self) -> dict:
        return {"tokenizer_files": self.tokenizer_files, "label_texts": self.label_texts}

    def set_extra_state(self, state: dict) -> None:
        self.tokenizer_files = dict(state["tokenizer_files"])
        self.label_texts = [(name, dict(concepts)) for name, concepts in state["label_texts"]]
