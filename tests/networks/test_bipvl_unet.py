"""BiPVLUNet on PlainConvUNet / ResidualEncoderUNet (2D and 3D) with a tiny random BERT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss
from nnunet_vl.networks.bipvl_unet import BiPVLUNet
from nnunet_vl.networks.text_branch import ProgressiveTextEncoder, masked_mean
from nnunet_vl.networks.text_inputs import TextInputs, TextRequiredError
from nnunet_vl.networks.unet_stages import encoder_stage_channels

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 3
CLASS_TEXTS = ["background tissue", "the liver organ", "a round hypodense lesion"]
CONCEPT_TEXTS = [  # (C, K): "" = concept missing for that class
    ["", "outside the organ", "dark"],
    ["large smooth organ", "upper right", "homogeneous"],
    ["round small", "", "dark hypodense"],
]
REPORTS = ["the lesion is in the upper left", "one small lesion in the lower right lobe of the liver"]


def make_unet(kind: str, ndim: int, deep_supervision: bool, conv_bias: bool = True) -> nn.Module:
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if ndim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    common = dict(
        input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=conv, kernel_sizes=3,
        strides=[1, 2, 2, 2], num_classes=NUM_CLASSES, n_conv_per_stage_decoder=1, conv_bias=conv_bias, norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=2, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 2, 2, 2], **common)


def make_model(
    bert_dir: Path, kind: str = "plain", ndim: int = 2, deep_supervision: bool = False,
    fusion_stages: tuple[int, ...] = (1, 2, 3), attn_implementation: str = "sdpa", uncertainty_weighting: bool = False,
    conv_bias: bool = True, recompute_stages: tuple[int, ...] = (),
) -> BiPVLUNet:
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(bert_dir, attn_implementation=attn_implementation)
    return BiPVLUNet(
        make_unet(kind, ndim, deep_supervision, conv_bias), AutoModel.from_config(config), fusion_stages,
        fusion_dim=16, fusion_heads=2, fusion_depth=2, num_classes=NUM_CLASSES, proj_dim=8,
        uncertainty_weighting=uncertainty_weighting, recompute_stages=recompute_stages,
    )


def open_gates(model: BiPVLUNet, value: float = 0.5) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(value)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bert)


def make_text(tokenizer: PreTrainedTokenizerBase, reports: list[str] = REPORTS, extra_padding: int = 0) -> TextInputs:
    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(tokenizer(t)["input_ids"]) for t in texts) + extra_padding
        enc = tokenizer(texts, padding="max_length", max_length=length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    report_ids, report_mask = encode(reports)
    class_ids, class_mask = encode(CLASS_TEXTS)
    concept_ids, concept_mask = encode([t for row in CONCEPT_TEXTS for t in row])
    k = len(CONCEPT_TEXTS[0])
    present = torch.tensor([[bool(t) for t in row] for row in CONCEPT_TEXTS])
    concept_ids[~present.flatten()], concept_mask[~present.flatten()] = 0, 0  # missing = all padding
    return TextInputs(report_ids, report_mask, class_ids, class_mask, concept_ids.view(NUM_CLASSES, k, -1),
                      concept_mask.view(NUM_CLASSES, k, -1), present)


def image(ndim: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 1, *([32, 32] if ndim == 2 else [16, 16, 16]))


def target_for(x: torch.Tensor) -> torch.Tensor:
    """Class 1 in the first half of the first spatial axis, class 2 in a corner block, background elsewhere."""
    target = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=torch.long)
    target[:, :, : x.shape[2] // 2] = 1
    target[(slice(None), slice(None)) + (slice(-4, None),) * (x.ndim - 2)] = 2
    return target


@pytest.mark.parametrize("kind", ["plain", "resenc"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_shapes_and_equals_image_unet_at_init(tiny_bert: Path, tokenizer, kind, ndim, deep_supervision) -> None:
    stages = (0, 1, 2, 3) if deep_supervision else (1, 3)  # 4 chunks over 2 text layers: some chunks are empty
    model = make_model(tiny_bert, kind, ndim, deep_supervision, fusion_stages=stages).eval()
    x, text = image(ndim), make_text(tokenizer)
    with torch.no_grad():
        reference = model.image_unet(x)
        seg, aux = model(x, text, return_aux=True)
    assert_same_output(seg, reference)
    full_resolution = seg[0] if deep_supervision else seg
    assert isinstance(seg, list) == deep_supervision and full_resolution.shape == (2, NUM_CLASSES, *x.shape[2:])

    assert aux["text_class"].shape == (2, NUM_CLASSES, 8)
    assert aux["concept_text"].shape == (NUM_CLASSES, 3, 8)
    assert torch.equal(aux["concept_present"], text.concept_present)
    assert sorted(k for k in aux if k.startswith("visual_")) == [f"visual_{k}" for k in stages]
    channels = encoder_stage_channels(model.image_unet)
    for k in stages:
        assert aux[f"visual_{k}"].shape == (2, channels[k], *(s // 2**k for s in x.shape[2:]))
        assert aux[f"projection_{k}"].shape == (8, channels[k]) and aux[f"projection_{k}"].requires_grad
    for key in ("text_class", "concept_text"):
        assert torch.isfinite(aux[key]).all()
        torch.testing.assert_close(aux[key].norm(dim=-1), torch.ones(aux[key].shape[:-1]))


def assert_same_output(a: torch.Tensor | list[torch.Tensor], b: torch.Tensor | list[torch.Tensor]) -> None:
    a, b = (a, b) if isinstance(a, list) else ([a], [b])
    assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def test_pooler_removed_and_text_encoder_exposed(tiny_bert: Path) -> None:
    model = make_model(tiny_bert)
    assert model.text_encoder.pooler is None
    assert not any("pooler" in key for key in model.state_dict())
    assert {id(p) for p in model.text_encoder_parameters()} == {id(p) for p in model.text_encoder.parameters()}
    assert {n for n, _ in model.named_parameters() if n.startswith("text_branch.text_encoder.")}
    assert model.decoder is model.image_unet.decoder


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_text_chunks_reproduce_the_hf_encoder(tiny_bert: Path, tokenizer, attn_implementation: str) -> None:
    """Without fusion, the chunks run in turn (and `encode`) equal the HF model's own masked forward."""
    config = BertConfig.from_pretrained(tiny_bert, num_hidden_layers=5, attn_implementation=attn_implementation)
    torch.manual_seed(0)
    hf_model = AutoModel.from_config(config).eval()
    branch = ProgressiveTextEncoder(hf_model, n_chunks=3, num_segments=2)
    assert branch.chunk_bounds == [0, 2, 3, 5]
    enc = tokenizer(REPORTS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    assert not mask.all()
    with torch.no_grad():
        expected = hf_model(**enc).last_hidden_state
        hidden = hf_model.embeddings(input_ids=enc["input_ids"])
        layer_mask = branch.layer_mask(hidden, mask)
        for k in range(branch.n_chunks):
            hidden = branch.run_chunk(k, hidden, layer_mask)
        pooled = branch.encode(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(hidden[mask], expected[mask])
    torch.testing.assert_close(pooled, masked_mean(expected, mask))


def test_rejects_bad_fusion_stages(tiny_bert: Path) -> None:
    with pytest.raises(ValueError):
        make_model(tiny_bert, fusion_stages=(1, 4))
    config = BertConfig.from_pretrained(tiny_bert)
    with pytest.raises(ValueError, match="fusion_pool"):  # one kernel per fused stage
        BiPVLUNet(make_unet("plain", 2, False), AutoModel.from_config(config), (1, 2), 16, 2, 1, NUM_CLASSES,
                  fusion_pool=[[2, 2]])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_text_padding_has_no_effect(tiny_bert: Path, tokenizer, attn_implementation: str) -> None:
    model = make_model(tiny_bert, attn_implementation=attn_implementation).eval()
    open_gates(model)
    x = image(2)
    with torch.no_grad():
        seg_a, aux_a = model(x, make_text(tokenizer), return_aux=True)
        seg_b, aux_b = model(x, make_text(tokenizer, extra_padding=9), return_aux=True)
        assert (seg_a - model.image_unet(x)).abs().max() > 1e-4  # the text does reach the output
    torch.testing.assert_close(seg_b, seg_a, rtol=1e-4, atol=1e-5)
    for key in aux_a:
        torch.testing.assert_close(aux_b[key], aux_a[key], rtol=1e-4, atol=1e-5)


def test_report_changes_output_once_gates_are_open(tiny_bert: Path, tokenizer) -> None:
    model = make_model(tiny_bert, ndim=3).eval()
    x = image(3)
    swapped = make_text(tokenizer, reports=["a large mass in the right upper lobe", "no lesion seen"])
    with torch.no_grad():
        assert torch.equal(model(x, make_text(tokenizer)), model(x, swapped))
        open_gates(model)
        assert (model(x, make_text(tokenizer)) - model(x, swapped)).abs().max() > 1e-4


def seg_and_contrastive_losses(model: BiPVLUNet, x: torch.Tensor, text: TextInputs) -> dict[str, torch.Tensor]:
    """Cross-entropy on every deep-supervision output ("ce") and the contrastive losses."""
    seg, aux = model(x, text, return_aux=True)
    target = target_for(x)
    outputs = seg if isinstance(seg, list) else [seg]
    ce = sum(F.cross_entropy(o, F.interpolate(target.float(), size=o.shape[2:])[:, 0].long()) for o in outputs)
    loss = GlobalLocalContrastiveLoss(uncertainty_weighting=model.log_vars is not None)
    return {"ce": ce, **loss(aux, target)}


def training_loss(model: BiPVLUNet, x: torch.Tensor, text: TextInputs) -> torch.Tensor:
    losses = seg_and_contrastive_losses(model, x, text)
    return losses["ce"] + losses["total"]


@pytest.mark.parametrize("kind, ndim", [("plain", 2), ("resenc", 3)])
def test_every_parameter_gets_gradient(tiny_bert: Path, tokenizer, kind: str, ndim: int) -> None:
    """All parameters are in the graph (DDP without find_unused_parameters); with open gates all learn.

    conv_bias=False: a conv bias right before an instance norm has no gradient in exact arithmetic, nor
    has BERT's attention key bias (it cancels in the softmax); only rounding noise would make them nonzero.
    """
    model = make_model(tiny_bert, kind, ndim, deep_supervision=True, uncertainty_weighting=True, conv_bias=False)
    model.train()
    x, text = image(ndim), make_text(tokenizer)
    training_loss(model, x, text).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    open_gates(model)
    model.zero_grad(set_to_none=True)
    training_loss(model, x, text).backward()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-7]
    assert [n for n in no_gradient if not n.endswith("attention.self.key.bias")] == []


def test_recomputed_fusion_same_gradients_less_kept(tiny_bert: Path, tokenizer, check_recompute) -> None:
    """Fusion blocks at recompute_stages give the same loss and gradients and keep fewer activations for backward."""
    x, text = image(2), make_text(tokenizer)

    def build(recompute: tuple[int, ...]) -> BiPVLUNet:
        model = make_model(tiny_bert, deep_supervision=True, recompute_stages=recompute)
        open_gates(model)
        return model

    check_recompute(build, lambda model: training_loss(model, x, text), (1, 2))


def test_training_steps_decrease_loss(tiny_bert: Path, tokenizer) -> None:
    model = make_model(tiny_bert, uncertainty_weighting=True).train()
    x, text = image(2), make_text(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(10):
        optimizer.zero_grad()
        losses = seg_and_contrastive_losses(model, x, text)
        (losses["ce"] + losses["total"]).backward()
        optimizer.step()
        history.append({key: value.item() for key, value in losses.items()})
    first, last = history[0], history[-1]
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert last["ce"] + last["total"] < 0.8 * (first["ce"] + first["total"]), history
    assert last["global"] < first["global"] and last["local"] < first["local"], history
    assert any(torch.tanh(p).abs().max() > 1e-3 for n, p in model.named_parameters() if n.endswith("_gate"))


def test_text_none_is_refused(tiny_bert: Path) -> None:
    """nnU-Net's own predictor calls network(x): that must fail, not silently run the plain U-Net."""
    model = make_model(tiny_bert).eval()
    x = image(2)
    for call in (lambda: model(x), lambda: model(x, None, return_aux=True)):
        with pytest.raises(TextRequiredError, match="nnUNetv2_predict_vl.*--text-mode none"):
            call()


# ----- class text sets per sample (a mirrored sample reads its class texts with direction words swapped) ----------
SWAPPED_CLASS_TEXTS = ["background tissue", "the liver organ upper left", "a round hypodense lesion"]
SWAPPED_CONCEPT_TEXTS = [CONCEPT_TEXTS[0], ["large smooth organ", "upper left", "homogeneous"], CONCEPT_TEXTS[2]]
ORIGINAL_SET = (["background tissue", "the liver organ upper right", "a round hypodense lesion"], CONCEPT_TEXTS)


def text_with_sets(tokenizer: PreTrainedTokenizerBase, sets: list[tuple[list[str], list[list[str]]]],
                   class_set: list[int] | None, reports: list[str] = REPORTS) -> TextInputs:
    """TextInputs whose class tensors are the given (class texts, concept texts) sets, padded alike; class_set None:
    the single set without a set axis."""
    def encode(texts: list[str], length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(texts, padding="max_length", max_length=length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    report_ids, report_mask = encode(reports)
    k = len(CONCEPT_TEXTS[0])
    present = torch.tensor([[bool(t) for t in row] for row in CONCEPT_TEXTS])
    parts = []
    for class_texts, concept_texts in sets:
        class_ids, class_mask = encode(class_texts)
        concept_ids, concept_mask = encode([t for row in concept_texts for t in row])
        concept_ids[~present.flatten()], concept_mask[~present.flatten()] = 0, 0
        parts.append((class_ids, class_mask, concept_ids.view(NUM_CLASSES, k, -1), concept_mask.view(NUM_CLASSES, k, -1)))
    tensors = parts[0] if class_set is None else [torch.stack(t) for t in zip(*parts)]
    return TextInputs(report_ids, report_mask, *tensors, present,
                      class_set=None if class_set is None else torch.tensor(class_set))


def test_class_tokens_differ_per_sample_exactly_where_the_set_differs(tiny_bert: Path, tokenizer) -> None:
    model = make_model(tiny_bert).eval()
    same_report = [REPORTS[0], REPORTS[0]]
    text = text_with_sets(tokenizer, [ORIGINAL_SET, (SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS)], [1, 0], same_report)
    with torch.no_grad():
        hidden, mask = model.text_branch.embed(text)
        alone, _ = model.text_branch.embed(text_with_sets(tokenizer, [(SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS)],
                                                          None, same_report))
    lr = text.report_ids.shape[1]
    assert hidden.shape == (2, lr + NUM_CLASSES, model.text_branch.hidden_size) and mask[:, lr:].all()
    assert torch.equal(hidden[0, :lr], hidden[1, :lr])
    assert (hidden[0, lr:] != hidden[1, lr:]).any(-1).tolist() == [False, True, False]  # only the liver's text differs
    torch.testing.assert_close(hidden[0], alone[0])  # sample 0 reads the swapped set


def test_each_sample_reads_its_own_class_set_as_if_alone(tiny_bert: Path, tokenizer) -> None:
    model = make_model(tiny_bert).eval()
    open_gates(model)
    x = image(2)
    sets = [ORIGINAL_SET, (SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS)]
    with torch.no_grad():
        seg, aux = model(x, text_with_sets(tokenizer, sets, [1, 0]), return_aux=True)
        assert aux["concept_text"].shape == (2, NUM_CLASSES, 3, 8)  # each sample's own concept anchors
        for i, s in enumerate([1, 0]):
            single = text_with_sets(tokenizer, [sets[s]], None, [REPORTS[i]])
            seg_i, aux_i = model(x[i:i + 1], single, return_aux=True)
            torch.testing.assert_close(seg[i], seg_i[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(aux["text_class"][i], aux_i["text_class"][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(aux["concept_text"][i], aux_i["concept_text"], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(aux["concept_text"][0, 1], aux["concept_text"][1, 1])  # the liver's anchors differ
        assert torch.equal(aux["concept_text"][0, 2], aux["concept_text"][1, 2])


def test_one_shared_set_gives_the_old_output_and_loss(tiny_bert: Path, tokenizer) -> None:
    """Sets that change nothing (every sample on one set, or identical sets) give exactly the single-set result;
    the loss stays finite with sets that differ."""
    model = make_model(tiny_bert).eval()
    open_gates(model)
    x = image(2)
    with torch.no_grad():
        shared = seg_and_contrastive_losses(model, x, text_with_sets(tokenizer, [ORIGINAL_SET], None))
        same = seg_and_contrastive_losses(model, x, text_with_sets(tokenizer, [ORIGINAL_SET, ORIGINAL_SET], [1, 0]))
        mixed = seg_and_contrastive_losses(model, x, text_with_sets(
            tokenizer, [ORIGINAL_SET, (SWAPPED_CLASS_TEXTS, SWAPPED_CONCEPT_TEXTS)], [1, 0]))
    for key in shared:
        torch.testing.assert_close(same[key], shared[key], rtol=1e-5, atol=1e-6)
        assert torch.isfinite(mixed[key])
    assert mixed["local"] != shared["local"]
