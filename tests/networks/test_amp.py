"""The GPU precision path, emulated on CPU: nnU-Net trains under CUDA fp16 autocast, and CPU autocast casts
matmul / linear / conv to fp16 the same way, so fp16 range problems show up here.

fp16 conv3d *backward* is ~200x slower than fp32 on this CPU, so forward + loss run at 3D grids where voxel
sums overflow fp16 (65504), gradients only at small sizes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from transformers import AutoModel, AutoTokenizer

from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss
from nnunet_vl.losses.tmca import TargetInformedAlignmentLoss
from nnunet_vl.networks.bipvl_unet import BiPVLUNet
from nnunet_vl.networks.fusion import BidirectionalFusionBlock
from nnunet_vl.networks.target_enhancement import TargetEnhancement
from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.networks.tmca_unet import TMCAUNet

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 3
REPORTS = ["round lesion in the upper left", "two small nodules in the lower right lobe of the liver"]


def fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


def make_unet(features: list[int], strides: list[int]) -> nn.Module:
    return PlainConvUNet(
        input_channels=1, n_stages=len(features), features_per_stage=features, conv_op=nn.Conv3d, kernel_sizes=3,
        strides=strides, n_conv_per_stage=1, num_classes=NUM_CLASSES, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=True)


def make_network(method: str, tiny_bert: Path, features: list[int], strides: list[int],
                 pool: list[list[int]] | None = None) -> nn.Module:
    """A VL network on a small U-Net, every gate opened to 0.5 so the text path changes the stages."""
    torch.manual_seed(0)
    stages = list(range(len(features)))
    encoder = AutoModel.from_pretrained(tiny_bert)
    if method == "bipvl":
        model = BiPVLUNet(make_unet(features, strides), encoder, stages, fusion_dim=16, fusion_heads=2,
                          fusion_depth=1, num_classes=NUM_CLASSES, proj_dim=8, fusion_pool=pool)
    else:
        model = TMCAUNet(make_unet(features, strides), encoder, align_stages=stages, enhance_stages=stages,
                         fusion_dim=16, fusion_heads=2, num_classes=NUM_CLASSES, proj_dim=8, enhance_pool=pool)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.5)
    return model


def make_loss(method: str, levels: int) -> nn.Module:
    if method == "bipvl":
        return GlobalLocalContrastiveLoss()
    return TargetInformedAlignmentLoss([1.0 / levels] * levels, queue_size=0).train()


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


def make_text(tokenizer, batch: int) -> TextInputs:
    reports = tokenizer(REPORTS[:batch], padding="max_length", max_length=16, return_tensors="pt")
    classes = tokenizer(["background tissue", "the liver organ", "a round lesion"], padding="max_length",
                        max_length=8, return_tensors="pt")
    concepts = tokenizer(["dark", "outside", "large smooth", "upper right", "round small", "dark hypodense"],
                         padding="max_length", max_length=8, return_tensors="pt")
    return TextInputs(reports["input_ids"], reports["attention_mask"], classes["input_ids"], classes["attention_mask"],
                      concepts["input_ids"].view(NUM_CLASSES, 2, -1), concepts["attention_mask"].view(NUM_CLASSES, 2, -1),
                      torch.ones(NUM_CLASSES, 2, dtype=torch.bool))


def make_target(batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Class 1 in the first half of the first axis (about half a million voxels at 96^3), class 2 in a corner."""
    target = torch.zeros(batch, 1, *spatial, dtype=torch.long)
    target[:, :, : spatial[0] // 2] = 1
    target[:, :, -spatial[0] // 5:, -spatial[1] // 5:, -spatial[2] // 5:] = 2
    return target


def _assert_finite(values: dict[str, torch.Tensor]) -> None:
    bad = {k: float(v) for k, v in values.items() if not torch.isfinite(v).all()}
    assert not bad, f"not finite under fp16 autocast: {bad}"


# ----- (a) forward and text loss where fp16 voxel sums overflow --------------------------------------------
def _stage_map(spatial: int) -> torch.Tensor:
    """A 3d_fullres stage-0 map: 32 channels after InstanceNorm + LeakyReLU (mean ~0.4, so sums grow with voxels)."""
    torch.manual_seed(0)
    return F.leaky_relu(torch.randn(1, 32, spatial, spatial, spatial))


def test_bipvl_loss_finite_and_close_to_fp32_under_fp16_autocast_at_128_cubed() -> None:
    fmap, target = _stage_map(128), make_target(1, (128,) * 3)
    generator = torch.Generator().manual_seed(1)
    aux = {"visual_0": fmap, "projection_0": torch.randn(16, 32, generator=generator),
           "text_class": F.normalize(torch.randn(1, NUM_CLASSES, 16, generator=generator), dim=-1),
           "concept_text": F.normalize(torch.randn(NUM_CLASSES, 2, 16, generator=generator), dim=-1),
           "concept_present": torch.ones(NUM_CLASSES, 2, dtype=torch.bool)}
    loss = GlobalLocalContrastiveLoss()
    reference = loss(aux, target)
    with fp16_autocast():
        half = loss({**aux, "visual_0": fmap.half()}, target)  # the stage map as the fp16 network leaves it
    _assert_finite(half)
    for key in ("global", "local", "total"):
        assert half[key].dtype == torch.float32
        assert float(half[key]) == pytest.approx(float(reference[key]), rel=1e-2, abs=1e-3), key


def test_tmca_loss_finite_and_close_to_fp32_under_fp16_autocast_at_128_cubed() -> None:
    fmap, target = _stage_map(128), make_target(2, (128,) * 3)
    fmap = torch.cat([fmap, fmap.flip(2)])
    generator = torch.Generator().manual_seed(1)
    aux = {"features_l0": fmap, "image_head_l0": torch.randn(16, 32, generator=generator),
           "text_l0": F.normalize(torch.randn(2, 16, generator=generator), dim=-1),
           "report_key": torch.tensor([1, 2])}
    loss = make_loss("tmca", 1)
    reference = loss(aux, target)
    with fp16_autocast():
        half = loss({**aux, "features_l0": fmap.half()}, target)
    _assert_finite(half)
    assert float(half["total"]) == pytest.approx(float(reference["total"]), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("method", ["bipvl", "tmca"])
def test_network_forward_and_text_loss_finite_under_fp16_autocast_at_a_large_grid(method, tiny_bert, tokenizer):
    """Three narrow stages at 96^3: stage 0 holds ~0.9M voxels, so its mask sums overflow fp16 unless guarded."""
    spatial = (96, 96, 96)
    model = make_network(method, tiny_bert, [4, 8, 8], [1, 2, 2], pool=[[2, 2, 2], [1, 1, 1], [1, 1, 1]])
    model.eval()  # no dropout in the text encoder, so the fp32 run is a reference
    loss = make_loss(method, 3)
    torch.manual_seed(2)
    x, target, text = torch.randn(1, 1, *spatial), make_target(1, spatial), make_text(tokenizer, 1)
    with torch.no_grad():
        reference_seg, reference_aux = model(x, text, return_aux=True)
        reference = loss(reference_aux, target)
        with fp16_autocast():
            seg, aux = model(x, text, return_aux=True)
            losses = loss(aux, target)
    assert all(torch.isfinite(s).all() for s in seg)
    _assert_finite(losses)
    assert float(losses["total"]) == pytest.approx(float(reference["total"]), rel=5e-2, abs=5e-3)
    torch.testing.assert_close(seg[0].float(), reference_seg[0], rtol=0.05, atol=0.05)


# ----- stage dtype ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [None, (2, 2, 2)])
@pytest.mark.parametrize("block", ["fusion", "enhancement"])
def test_fused_stage_keeps_the_stage_dtype_under_autocast(block, pool) -> None:
    """fp32 gates times an fp16 update would promote the stage output (and its skip) to fp32."""
    torch.manual_seed(0)
    if block == "fusion":
        module = BidirectionalFusionBlock(nn.Conv3d, 8, 32, 8, 1, 1, pool=pool)
        gates = [module.image_gate, module.text_gate]
    else:
        module = TargetEnhancement(nn.Conv3d, 8, 32, 8, 1, pool=pool)
        gates = [module.attention_gate, module.text_gate]
    with torch.no_grad():
        for gate in gates:
            gate.fill_(0.5)
    text, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for dtype in (torch.float16, torch.bfloat16):
        image = torch.randn(2, 8, 8, 8, 8).to(dtype)
        with torch.autocast("cpu", dtype=dtype):
            out = module(image, text, mask)
        assert out[0].dtype == dtype and torch.isfinite(out[0]).all(), (dtype, out[0].dtype)
        if block == "fusion":
            assert out[1].dtype == text.dtype  # the text stays in the encoder's dtype


@pytest.mark.parametrize("method", ["bipvl", "tmca"])
def test_network_stage_outputs_stay_fp16_under_autocast(method, tiny_bert, tokenizer) -> None:
    model = make_network(method, tiny_bert, [4, 8, 8], [1, 2, 2]).eval()
    seen: list[torch.dtype] = []
    hooks = [stage.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
             for stage in model.image_unet.encoder.stages[1:]]
    with torch.no_grad(), fp16_autocast():
        seg = model(torch.randn(1, 1, 16, 16, 16), make_text(tokenizer, 1))
    for hook in hooks:
        hook.remove()
    assert seen == [torch.float16] * 2  # what the next stage (and the skip) receives after fusion
    assert seg[0].dtype == torch.float16


# ----- (b) gradients under fp16 autocast at small sizes -----------------------------------------------------
@pytest.mark.parametrize("method", ["bipvl", "tmca"])
def test_gradients_finite_under_fp16_autocast(method, tiny_bert, tokenizer) -> None:
    model = make_network(method, tiny_bert, [4, 8, 8], [1, 2, 2], pool=[[2, 2, 2], [1, 1, 1], [1, 1, 1]]).train()
    loss = make_loss(method, 3)
    torch.manual_seed(3)
    x, target, text = torch.randn(2, 1, 16, 16, 16), make_target(2, (16, 16, 16)), make_text(tokenizer, 2)
    with fp16_autocast():
        seg, aux = model(x, text, return_aux=True)
        total = (F.cross_entropy(seg[0].float(), target[:, 0]) + sum(s.float().square().mean() for s in seg[1:])
                 + loss(aux, target)["total"])
    (total * 1024.0).backward()  # as a GradScaler would scale it
    assert torch.isfinite(total)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, missing[:5]
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, bad[:5]
    gates = [n for n in grads if n.endswith("_gate")]
    assert gates and all(grads[n].abs().sum() > 0 for n in gates)


def test_tmca_queue_keeps_only_finite_embeddings() -> None:
    """A sample whose fp16 features overflowed (a step the GradScaler skips) must not poison later losses."""
    loss = TargetInformedAlignmentLoss([1.0], queue_size=8).train()
    target = make_target(2, (8, 8, 8))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 8, 8, 8, generator=generator).half()
    features[1, :, 0, 0, 0] = float("inf")
    aux = {"features_l0": features, "image_head_l0": torch.randn(8, 4, generator=generator, requires_grad=True),
           "text_l0": F.normalize(torch.randn(2, 8, generator=generator), dim=-1), "report_key": torch.tensor([1, 2])}
    with fp16_autocast():
        loss(aux, target)
    assert loss.queue_l0.shape == (1, 8) and torch.isfinite(loss.queue_l0).all()
    assert loss.queue_keys_l0.tolist() == [1]
    clean = {**aux, "features_l0": torch.randn(2, 4, 8, 8, 8, generator=generator).half(),
             "report_key": torch.tensor([3, 4])}
    with fp16_autocast():
        assert torch.isfinite(loss(clean, target)["total"])  # the queued negative is finite
