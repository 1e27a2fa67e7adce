"""TMCAUNet and TargetEnhancement: shapes, identity at init, gradients, text dependence."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn
from transformers import AutoModel, AutoTokenizer

from nnunet_vl.losses.tmca import TargetInformedAlignmentLoss
from nnunet_vl.networks.target_enhancement import TargetEnhancement
from nnunet_vl.networks.text_inputs import TextInputs, TextRequiredError
from nnunet_vl.networks.tmca_unet import TMCAUNet, report_keys

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 3
SPATIAL = {2: (32, 32), 3: (16, 16, 16)}
REPORTS = ["round lesion in the upper left lung", "two small nodules in the lower right lobe"]


def make_unet(architecture: str, dim: int, deep_supervision: bool = True) -> nn.Module:
    """A 4-stage nnU-Net image U-Net, as the planner would configure it, but tiny."""
    common = dict(
        input_channels=1,
        n_stages=4,
        features_per_stage=[4, 8, 16, 16],
        conv_op=nn.Conv2d if dim == 2 else nn.Conv3d,
        kernel_sizes=3,
        strides=[1, 2, 2, 2],
        num_classes=NUM_CLASSES,
        n_conv_per_stage_decoder=1,
        conv_bias=True,
        norm_op=nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    if architecture == "plain":
        return PlainConvUNet(n_conv_per_stage=2, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=1, **common)


def make_text(tokenizer, reports: list[str]) -> TextInputs:
    encoded = tokenizer(reports, padding=True, return_tensors="pt")
    return TextInputs(
        report_ids=encoded["input_ids"],
        report_mask=encoded["attention_mask"],
        class_ids=torch.zeros(NUM_CLASSES, 4, dtype=torch.long),
        class_mask=torch.ones(NUM_CLASSES, 4, dtype=torch.long),
        concept_ids=torch.zeros(NUM_CLASSES, 2, 4, dtype=torch.long),
        concept_mask=torch.ones(NUM_CLASSES, 2, 4, dtype=torch.long),
        concept_present=torch.ones(NUM_CLASSES, 2, dtype=torch.bool),
    )


def make_tmca(tiny_bert: Path, architecture: str, dim: int, deep_supervision: bool = True,
              recompute_stages: tuple[int, ...] = ()) -> TMCAUNet:
    torch.manual_seed(0)
    return TMCAUNet(
        make_unet(architecture, dim, deep_supervision),
        AutoModel.from_pretrained(tiny_bert),
        align_stages=[0, 1, 2],
        enhance_stages=[0, 2, 3],
        fusion_dim=16,
        fusion_heads=2,
        num_classes=NUM_CLASSES,
        proj_dim=8,
        recompute_stages=recompute_stages,
    )


def open_gates(model: TMCAUNet, value: float = 1.0) -> None:
    for enhancement in model.enhancements.values():
        nn.init.constant_(enhancement.attention_gate, value)
        nn.init.constant_(enhancement.text_gate, value)


def make_target(dim: int) -> torch.Tensor:
    """Batch of 2 label maps: sample 0 has classes 1 and 2, sample 1 has class 1 elsewhere."""
    target = torch.zeros(2, 1, *SPATIAL[dim], dtype=torch.long)
    target[(0, 0) + (slice(2, 12),) * dim] = 1
    target[(0, 0) + (slice(12, 16),) * dim] = 2
    target[(1, 0) + (slice(6, 14),) * dim] = 1
    return target


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.mark.parametrize("architecture", ["plain", "resenc"])
@pytest.mark.parametrize("dim", [2, 3])
def test_forward_shapes_aux_and_attention(tiny_bert: Path, tokenizer, architecture: str, dim: int) -> None:
    model = make_tmca(tiny_bert, architecture, dim).eval()
    open_gates(model, 0.5)
    x = torch.randn(2, 1, *SPATIAL[dim])
    text = make_text(tokenizer, REPORTS)
    for deep_supervision in (True, False):
        model.image_unet.decoder.deep_supervision = deep_supervision
        expected = model.image_unet(x)
        seg = model(x, text)
        if deep_supervision:
            assert [s.shape for s in seg] == [e.shape for e in expected]
            assert seg[0].shape == (2, NUM_CLASSES, *SPATIAL[dim])
        else:
            assert seg.shape == expected.shape == (2, NUM_CLASSES, *SPATIAL[dim])

    seg, aux, attention = model(x, text, return_aux=True, return_attention=True)
    assert attention.shape == (2, 1, *SPATIAL[dim])
    assert attention.min() >= 0 and attention.max() <= 1 and attention.std() > 0
    channels = [4, 8, 16]
    for level in range(3):
        assert aux[f"features_l{level}"].shape == (2, channels[level], *(n // 2**level for n in SPATIAL[dim]))
        assert aux[f"image_head_l{level}"].shape == (8, channels[level])
        assert torch.allclose(aux[f"text_l{level}"].norm(dim=-1), torch.ones(2))
    assert aux["report_key"].shape == (2,) and aux["report_key"][0] != aux["report_key"][1]
    _, attention_only = model(x, text, return_attention=True)
    assert torch.equal(attention_only, attention)


@pytest.mark.parametrize("architecture, dim", [("plain", 2), ("resenc", 3)])
def test_untrained_network_equals_image_unet(tiny_bert: Path, tokenizer, architecture: str, dim: int) -> None:
    model = make_tmca(tiny_bert, architecture, dim).train()  # text dropout on: must not matter either
    x = torch.randn(2, 1, *SPATIAL[dim])
    expected = model.image_unet(x)
    with_report = model(x, make_text(tokenizer, REPORTS))
    empty_report = model(x, make_text(tokenizer, ["", ""]))  # what --text-mode none passes
    for e, r, n in zip(expected, with_report, empty_report):
        assert torch.equal(e, r) and torch.equal(e, n)


def test_text_none_is_refused(tiny_bert: Path) -> None:
    """nnU-Net's own predictor calls network(x): that must fail, not silently run the plain U-Net."""
    model = make_tmca(tiny_bert, "plain", 2)
    x = torch.randn(2, 1, *SPATIAL[2])
    for call in (lambda: model(x), lambda: model(x, None, return_aux=True, return_attention=True)):
        with pytest.raises(TextRequiredError, match="nnUNetv2_predict_vl.*--text-mode none"):
            call()


@pytest.mark.parametrize("architecture, dim", [("plain", 2), ("resenc", 3)])
def test_every_parameter_gets_a_gradient(tiny_bert: Path, tokenizer, architecture: str, dim: int) -> None:
    model = make_tmca(tiny_bert, architecture, dim).train()
    assert model.text_encoder.pooler is None
    alignment = TargetInformedAlignmentLoss(level_weights=[1.0, 0.5, 0.25])
    target = make_target(dim)
    seg, aux = model(torch.randn(2, 1, *SPATIAL[dim]), make_text(tokenizer, REPORTS), return_aux=True)
    seg_loss = sum(
        F.cross_entropy(s, F.interpolate(target.float(), size=s.shape[2:], mode="nearest")[:, 0].long()) for s in seg
    )
    (seg_loss + alignment(aux, target)["total"]).backward()

    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.text_encoder.parameters())
    assert all(e.attention_gate.grad.abs().sum() > 0 for e in model.enhancements.values())


def test_recomputed_enhancement_same_gradients_less_kept(tiny_bert: Path, tokenizer, check_recompute) -> None:
    """Enhancement at recompute_stages gives the same loss and gradients and keeps fewer activations for backward."""
    x, text, target = torch.randn(2, 1, *SPATIAL[2]), make_text(tokenizer, REPORTS), make_target(2)

    def build(recompute: tuple[int, ...]) -> TMCAUNet:
        model = make_tmca(tiny_bert, "plain", 2, recompute_stages=recompute)
        open_gates(model, 0.5)
        return model

    def loss(model: TMCAUNet) -> torch.Tensor:
        seg, aux = model(x, text, return_aux=True)
        seg_loss = sum(F.cross_entropy(s, F.interpolate(target.float(), size=s.shape[2:])[:, 0].long()) for s in seg)
        alignment = TargetInformedAlignmentLoss(level_weights=[1.0, 0.5, 0.25])  # fresh: its queue fills in training
        return seg_loss + alignment(aux, target)["total"]

    check_recompute(build, loss, (0,))


def test_report_changes_output_once_gates_open(tiny_bert: Path, tokenizer) -> None:
    model = make_tmca(tiny_bert, "plain", 2, deep_supervision=False).eval()
    open_gates(model)
    x = torch.randn(1, 1, *SPATIAL[2]).expand(2, -1, -1, -1)
    with torch.no_grad():
        seg, attention = model(x, make_text(tokenizer, REPORTS), return_attention=True)
        image_only = model.image_unet(x)
    assert not torch.allclose(seg[0], seg[1], atol=1e-4)
    assert not torch.allclose(attention[0], attention[1], atol=1e-4)
    assert not torch.allclose(seg, image_only, atol=1e-4)


def test_report_encoded_once_per_text_while_reusing(tiny_bert: Path, tokenizer) -> None:
    model = make_tmca(tiny_bert, "plain", 2, deep_supervision=False).eval()
    open_gates(model)
    text, other = make_text(tokenizer, REPORTS[:1]), make_text(tokenizer, REPORTS[1:])
    tiles = [torch.randn(1, 1, *SPATIAL[2]) for _ in range(3)]
    calls = []
    model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        fresh = [model(t, text) for t in tiles]
        assert len(calls) == 3
        with model.reusing_report_encoding():
            reused = [model(t, text) for t in tiles]
            assert len(calls) == 4  # one encoding for three tiles
            assert not torch.allclose(model(tiles[0], other), reused[0], atol=1e-4)  # another text: new encoding
            assert len(calls) == 5
        model(tiles[0], text)
    assert len(calls) == 6  # cache dropped on leaving the context
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))


def test_training_steps_reduce_the_loss(tiny_bert: Path, tokenizer) -> None:
    model = make_tmca(tiny_bert, "plain", 2).train()
    alignment = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0, 1.0], queue_size=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, target, text = torch.randn(2, 1, *SPATIAL[2]), make_target(2), make_text(tokenizer, REPORTS)
    losses = []
    for _ in range(10):
        seg, aux = model(x, text, return_aux=True)
        seg_loss = F.cross_entropy(seg[0], target[:, 0])
        loss = seg_loss + alignment(aux, target)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert any(e.text_gate.abs().sum() > 0 for e in model.enhancements.values())


def test_report_keys_ignore_padding(tokenizer) -> None:
    short = tokenizer(REPORTS + ["lesion"], padding="max_length", max_length=12, return_tensors="pt")
    long = tokenizer(REPORTS + ["lesion"], padding="max_length", max_length=20, return_tensors="pt")
    keys = report_keys(short["input_ids"], short["attention_mask"])
    assert torch.equal(keys, report_keys(long["input_ids"], long["attention_mask"]))
    assert len(set(keys.tolist())) == 3


def test_rejects_bad_configuration(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="align_stages"):
        TMCAUNet(make_unet("plain", 2), AutoModel.from_pretrained(tiny_bert), [0, 4], [1], 16, 2, NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        TMCAUNet(make_unet("plain", 2), AutoModel.from_pretrained(tiny_bert), [0], [1], 16, 2, NUM_CLASSES + 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_enhancement_ignores_padding_and_knows_position(dim: int) -> None:
    torch.manual_seed(0)
    enhancement = TargetEnhancement(nn.Conv2d if dim == 2 else nn.Conv3d, 4, 32, 16, 2)
    nn.init.constant_(enhancement.attention_gate, 1.0)
    nn.init.constant_(enhancement.text_gate, 1.0)
    features = torch.ones(2, 4, *(8,) * dim)  # the same feature vector at every voxel
    tokens = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    enhanced, attention = enhancement(features, tokens, mask)
    assert enhanced.shape == features.shape and attention.shape == (2, 1, *(8,) * dim)
    assert attention[0].std() > 0  # only the coordinate encoding can vary it over space

    changed_padding = tokens.clone()
    changed_padding[0, 3:] = torch.randn(2, 32)
    enhanced_again, attention_again = enhancement(features, changed_padding, mask)
    assert torch.allclose(enhanced_again[0], enhanced[0]) and torch.allclose(attention_again[0], attention[0])


@pytest.mark.parametrize("dim", [2, 3])
def test_pooled_enhancement_attends_from_the_coarse_grid(dim: int) -> None:
    """With a pooling kernel the map comes from the pooled grid: on features constant within each pooling block
    it equals an unpooled module's map on the coarse features, and the modulation is that map interpolated."""
    torch.manual_seed(0)
    conv_op = nn.Conv2d if dim == 2 else nn.Conv3d
    kernel = (2,) * (dim - 1) + (4,)
    pooled = TargetEnhancement(conv_op, 4, 32, 16, 2, pool=kernel)
    nn.init.constant_(pooled.attention_gate, 1.0)
    plain = TargetEnhancement(conv_op, 4, 32, 16, 2)
    plain.load_state_dict(pooled.state_dict())
    coarse = torch.randn(2, 4, *(4,) * dim)
    fine = coarse
    for axis, k in enumerate(kernel):
        fine = fine.repeat_interleave(k, dim=2 + axis)
    tokens, mask = torch.randn(2, 5, 32), torch.ones(2, 5)
    fine.requires_grad_(True)
    enhanced, attention = pooled(fine, tokens, mask)
    _, coarse_attention = plain(coarse, tokens, mask)
    assert attention.shape == (2, 1, *(4,) * dim) and enhanced.shape == fine.shape
    assert torch.allclose(attention, coarse_attention, atol=1e-6)
    mode = "bilinear" if dim == 2 else "trilinear"
    upsampled = F.interpolate(coarse_attention, size=fine.shape[2:], mode=mode, align_corners=False)
    expected = fine * (1 + torch.tanh(torch.tensor(1.0)) * (2 * upsampled - 1))  # text gate still 0
    assert torch.allclose(enhanced, expected, atol=1e-5)
    enhanced.sum().backward()
    assert fine.grad is not None and pooled.query.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pool"):
        TargetEnhancement(conv_op, 4, 32, 16, 2, pool=(2,) * (dim + 1))
