"""Encoders load from local directories or the minilm alias; anything else fails with instructions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_vl.text.encoders import (EncoderNotFoundError, build_encoder_from_config, encoder_config,
                                     load_pretrained_encoder, load_tokenizer, resolve_encoder)


def test_local_directory_loads(tiny_bert: Path):
    path = resolve_encoder(str(tiny_bert))
    tokenizer = load_tokenizer(path)
    ids = tokenizer(["left lesion"])["input_ids"][0]
    assert tokenizer.unk_token_id not in ids  # the vocabulary file is really used
    model = load_pretrained_encoder(path)
    rebuilt = build_encoder_from_config(encoder_config(path))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert torch.allclose(model(batch).last_hidden_state, rebuilt.eval()(batch).last_hidden_state)


def test_minilm_alias_is_a_local_directory():
    path = resolve_encoder("minilm")
    assert (path / "config.json").is_file()
    assert encoder_config(path)["hidden_size"] == 384


def test_hub_name_offline_says_how_to_point_at_local_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(EncoderNotFoundError) as e:
        resolve_encoder("microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract")
    message = str(e.value)
    assert "--text-encoder DIR" in message and "huggingface-cli download" in message


def test_missing_and_corrupt_directories(tmp_path):
    with pytest.raises(EncoderNotFoundError, match="does not exist"):
        resolve_encoder(str(tmp_path / "nowhere"))
    (tmp_path / "broken").mkdir()
    with pytest.raises(EncoderNotFoundError, match="no config.json"):
        resolve_encoder(str(tmp_path / "broken"))
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(EncoderNotFoundError, match="cannot read the encoder config"):
        encoder_config(tmp_path / "broken")
    with pytest.raises(EncoderNotFoundError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "broken")
