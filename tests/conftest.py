"""Shared fixtures: a tiny random BERT (model + tokenizer) saved to a temporary directory."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertConfig, BertModel, BertTokenizerFast

_WORDS = """
the a an of in on at to and or with without is are was were be been has have this that these those
left right upper lower middle anterior posterior medial lateral superior inferior central peripheral
target lesion lesions mass nodule tumor tumour cyst organ liver kidney spleen pancreas lung heart brain
bladder stomach aorta vessel bone background tissue region structure object objects first second third
largest smallest large small big tiny round oval elongated irregular smooth sharp blurred margin contour
shape location appearance density texture internal homogeneous heterogeneous bright dark hypodense
hyperdense enhancing necrotic solid cystic calcified symmetric asymmetric top bottom side near far
above below between beside next inside outside one two three four five single multiple several no
normal abnormal patient scan image slice axial coronal sagittal ct mr mri contrast phase segment lobe
wall edge border surface core rim ring area volume size diameter mm cm visible seen shows shown noted
along across around within from by for as it its than more most less least very well likely possibly
suspicious benign malignant metastasis infiltration oedema edema effusion fluid fat air blood cortex
gland duct artery vein chamber ventricle atrium myocardium valve septum apex base head tail body neck
dome hilum capsule parenchyma focal diffuse patchy linear nodular lobulated spiculated ill defined well
""".split()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with a tiny random BERT (2 layers, width 32) and its fast tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_WORDS), *".,;:-()"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    return directory
