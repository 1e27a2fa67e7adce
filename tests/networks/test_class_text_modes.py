"""Class descriptions read as sentences (class_text "sentences") and a trainable concept path (train_concepts)."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig

from test_bipvl_unet import (NUM_CLASSES, ORIGINAL_SET, REPORTS, SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS, image,
                             make_text, make_unet, open_gates, text_with_sets)

from nnunet_vl.networks.bipvl_unet import BiPVLUNet
from nnunet_vl.networks.text_branch import masked_mean

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


def make(tiny_bert: Path, class_text: str = "token", train_concepts: bool = False, kind: str = "plain",
         ndim: int = 2) -> BiPVLUNet:
    torch.manual_seed(0)
    return BiPVLUNet(make_unet(kind, ndim, False), AutoModel.from_config(BertConfig.from_pretrained(tiny_bert)),
                     (1, 2, 3), fusion_dim=16, fusion_heads=2, fusion_depth=1, num_classes=NUM_CLASSES, proj_dim=8,
                     class_text=class_text, train_concepts=train_concepts)


def test_sentences_put_every_description_token_into_the_fused_text(tiny_bert: Path, tokenizer) -> None:
    model = make(tiny_bert, "sentences").eval()
    text = make_text(tokenizer)
    lr, lc = text.report_ids.shape[1], text.class_ids.shape[1]
    with torch.no_grad():
        hidden, mask = model.text_branch.embed(text)
        words = model.text_encoder.embeddings(input_ids=text.class_ids)
    assert hidden.shape == (2, lr + NUM_CLASSES * lc, model.text_branch.hidden_size)
    assert torch.equal(mask[:, lr:], text.class_mask.bool().flatten()[None].expand(2, -1))
    torch.testing.assert_close(hidden[0, lr:].reshape(NUM_CLASSES, lc, -1), words)  # segment embeddings start at 0
    states = model.text_branch.class_states(text, hidden)
    torch.testing.assert_close(states[1], masked_mean(words, text.class_mask.bool()))


def test_sentences_are_read_in_context(tiny_bert: Path, tokenizer) -> None:
    """Read as sentences, a description's words are contextual: changing its last word changes the text layers'
    state of its first word (a class token is one mean, there is no word to look at)."""
    from nnunet_vl.networks.text_inputs import TextInputs

    model = make(tiny_bert, "sentences").eval()
    base = make_text(tokenizer)
    lr, lc = base.report_ids.shape[1], base.class_ids.shape[1]

    def first_word_state(description: str) -> torch.Tensor:
        enc = tokenizer([description], padding="max_length", max_length=lc, return_tensors="pt")
        ids, mask = base.class_ids.clone(), base.class_mask.clone()
        ids[1], mask[1] = enc["input_ids"][0], enc["attention_mask"][0]
        text = TextInputs(base.report_ids, base.report_mask, ids, mask, base.concept_ids, base.concept_mask,
                          base.concept_present)
        with torch.no_grad():
            hidden, token_mask = model.text_branch.embed(text)
            hidden = model.text_branch.run_layers(0, model.text_branch.chunk_bounds[-1], hidden,
                                                  model.text_branch.layer_mask(hidden, token_mask))
        return hidden[0, lr + lc + 1]  # class 1, the token after [CLS]

    assert not torch.allclose(first_word_state("the liver organ"), first_word_state("the liver lesion"), atol=1e-4)


def test_sentences_follow_each_samples_class_set(tiny_bert: Path, tokenizer) -> None:
    model = make(tiny_bert, "sentences").eval()
    open_gates(model)
    sets = [ORIGINAL_SET, (SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS)]
    x = image(2)
    with torch.no_grad():
        seg, aux = model(x, text_with_sets(tokenizer, sets, [1, 0]), return_aux=True)
        alone, aux_alone = model(x[:1], text_with_sets(tokenizer, [sets[1]], None, [REPORTS[0]]), return_aux=True)
    torch.testing.assert_close(seg[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aux["text_class"][0], aux_alone["text_class"][0], rtol=1e-4, atol=1e-5)


ARCHITECTURES = [("plain", 2), ("resenc", 3)]


@pytest.mark.parametrize("kind,ndim", ARCHITECTURES)
def test_equals_image_unet_at_init_with_sentences(tiny_bert: Path, tokenizer, kind: str, ndim: int) -> None:
    model = make(tiny_bert, "sentences", kind=kind, ndim=ndim).eval()
    x = image(ndim)
    with torch.no_grad():
        torch.testing.assert_close(model(x, make_text(tokenizer)), model.image_unet(x))


@pytest.mark.parametrize("kind,ndim", ARCHITECTURES)
def test_sentences_train_the_text_layers_through_the_segmentation(tiny_bert: Path, tokenizer, kind: str,
                                                                  ndim: int) -> None:
    """With open gates, the segmentation output depends on the description's words, and its gradient reaches the
    text layers that read them."""
    model = make(tiny_bert, "sentences", kind=kind, ndim=ndim).train()
    open_gates(model)
    text = make_text(tokenizer)
    other = text.class_ids.clone()
    other[1, 1] = tokenizer.convert_tokens_to_ids("bone")  # class 1's first word
    with torch.no_grad():
        changed = model(image(ndim), dataclasses.replace(text, class_ids=other))
    seg = model(image(ndim), text)
    assert not torch.allclose(seg.detach(), changed, atol=1e-6)
    seg.square().mean().backward()
    layer = model.text_encoder.encoder.layer[0].attention.self.query.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0


@pytest.mark.parametrize("kind,ndim", ARCHITECTURES)
@pytest.mark.parametrize("train_concepts", [False, True])
def test_concept_loss_teaches_the_encoder_only_with_train_concepts(tiny_bert: Path, tokenizer, train_concepts,
                                                                   kind: str, ndim: int) -> None:
    model = make(tiny_bert, train_concepts=train_concepts, kind=kind, ndim=ndim).train()
    _, aux = model(image(ndim), make_text(tokenizer), return_aux=True)
    aux["concept_text"].sum().backward()
    layer = model.text_encoder.encoder.layer[0].attention.self.query.weight
    assert (layer.grad is not None and layer.grad.abs().sum() > 0) == train_concepts
    assert model.text_projection.weight.grad is not None  # the projection learns either way


def test_unknown_class_text_mode_is_refused(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="class_text 'words'"):
        make(tiny_bert, "words")
