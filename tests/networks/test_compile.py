"""torch.compile of the VL networks, as nnU-Net compiles every network it trains on CUDA (unless nnUNet_compile=f).

Backend `aot_eager`: it captures the same graphs (Dynamo) and the same forward/backward split (AOTAutograd) as
the default inductor backend, without generating code. Inductor does run on this CPU (a C++ compiler is
installed), but compiling one of these tiny networks with it took minutes on the shared 2-core machine, too slow
for the suite; benchmarks/gpu_check.py compiles with nnU-Net's defaults on a GPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from torch._dynamo.utils import counters
from transformers import AutoModel, AutoTokenizer

from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss
from nnunet_vl.losses.tmca import TargetInformedAlignmentLoss
from nnunet_vl.networks.bipvl_unet import BiPVLUNet
from nnunet_vl.networks.text_inputs import TextInputs
from nnunet_vl.networks.tmca_unet import TMCAUNet

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 3
BACKEND = "aot_eager"
SPATIAL = (16, 16, 16)
REPORTS = ["round lesion in the upper left", "two small nodules in the lower right lobe", "a cyst near the liver",
           "no lesion", "large mass in the middle", "small dark nodule on the right side"]


def make_network(method: str, tiny_bert: Path) -> nn.Module:
    """Two stages, both fused; stage 0 pooled and recomputed in backward (the checkpoint path under compile)."""
    torch.manual_seed(0)
    unet = PlainConvUNet(input_channels=1, n_stages=2, features_per_stage=[4, 8], conv_op=nn.Conv3d, kernel_sizes=3,
                         strides=[1, 2], n_conv_per_stage=1, num_classes=NUM_CLASSES, n_conv_per_stage_decoder=1,
                         conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    encoder = AutoModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if method == "bipvl":
        model = BiPVLUNet(unet, encoder, [0, 1], fusion_dim=16, fusion_heads=2, fusion_depth=1,
                          num_classes=NUM_CLASSES, proj_dim=8, recompute_stages=[0], fusion_pool=[[2, 2, 2], [1, 1, 1]])
    else:
        model = TMCAUNet(unet, encoder, align_stages=[0, 1], enhance_stages=[0, 1], fusion_dim=16, fusion_heads=2,
                         num_classes=NUM_CLASSES, proj_dim=8, recompute_stages=[0], enhance_pool=[[2, 2, 2], [1, 1, 1]])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.5)
    return model.train()


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


def make_batch(tokenizer, step: int) -> tuple[torch.Tensor, torch.Tensor, TextInputs]:
    """A new batch per step: other images, labels, reports and padding, the same shapes (as the trainer pads)."""
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(2, 1, *SPATIAL, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (2, 1, *SPATIAL), generator=generator)
    reports = tokenizer(REPORTS[2 * step % 6: 2 * step % 6 + 2], padding="max_length", max_length=16,
                        return_tensors="pt")
    classes = tokenizer(["background tissue", "the liver organ", "a round lesion"], padding="max_length",
                        max_length=8, return_tensors="pt")
    concepts = tokenizer(["dark", "outside", "large smooth", "", "round small", "dark hypodense"],
                         padding="max_length", max_length=8, return_tensors="pt")
    present = torch.tensor([[True, True], [True, False], [True, True]])
    text = TextInputs(reports["input_ids"], reports["attention_mask"], classes["input_ids"], classes["attention_mask"],
                      concepts["input_ids"].view(NUM_CLASSES, 2, -1), concepts["attention_mask"].view(NUM_CLASSES, 2, -1),
                      present)
    return x, target, text


def loss_of(method: str, seg: list[torch.Tensor], aux: dict, target: torch.Tensor) -> torch.Tensor:
    text_loss = GlobalLocalContrastiveLoss() if method == "bipvl" else TargetInformedAlignmentLoss([0.5, 0.5], queue_size=0)
    seg_loss = nn.functional.cross_entropy(seg[0].float(), target[:, 0]) + sum(s.float().square().mean() for s in seg[1:])
    return seg_loss + text_loss(aux, target)["total"]


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["bipvl", "tmca"])
def test_compiled_network_matches_eager_and_does_not_recompile_on_new_batches(method, tiny_bert, tokenizer):
    torch._dynamo.reset()
    counters.clear()
    eager = make_network(method, tiny_bert)
    compiled_model = make_network(method, tiny_bert)
    compiled = torch.compile(compiled_model, backend=BACKEND)

    x, target, text = make_batch(tokenizer, 0)
    seg_e, aux_e = eager(x, text, return_aux=True)
    loss_of(method, seg_e, aux_e, target).backward()
    seg_c, aux_c = compiled(x, text, return_aux=True)
    loss_of(method, seg_c, aux_c, target).backward()
    for a, b in zip(seg_c, seg_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for key, value in aux_e.items():
        torch.testing.assert_close(aux_c[key], value, rtol=1e-4, atol=1e-5, msg=key)
    grads_e, grads_c = grads(eager), grads(compiled_model)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 10
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-5, msg=name)

    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1 and not counters["graph_break"], dict(counters["graph_break"])  # one graph, no breaks
    optimizer = torch.optim.AdamW(compiled_model.parameters(), 1e-3)
    for step in range(1, 4):  # training steps with new batches, weights changing in between
        optimizer.zero_grad()
        x, target, text = make_batch(tokenizer, step)
        seg, aux = compiled(x, text, return_aux=True)
        loss = loss_of(method, seg, aux, target)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled during training steps"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_tmca_sliding_window_cache_does_not_recompile_per_case(tiny_bert, tokenizer):
    """Prediction reuses each case's report encoding over its tiles (an id()-keyed cache): compiled, a new case
    must not mean a new graph (nnU-Net's predictor compiles the network when nnUNet_compile is set)."""
    import dataclasses

    torch._dynamo.reset()
    counters.clear()
    model = make_network("tmca", tiny_bert).eval()
    compiled = torch.compile(model, backend=BACKEND)
    graphs_after_case = []
    with torch.no_grad():
        for case in range(4):
            x, _, text = make_batch(tokenizer, case)
            text = dataclasses.replace(text, report_ids=text.report_ids.clone())  # a new object per case
            with model.reusing_report_encoding():
                for tile in range(2):  # the first tile encodes the report, the others reuse it
                    tile_x = x.roll(tile, dims=-1)
                    torch.testing.assert_close(compiled(tile_x, text)[0], model(tile_x, text)[0], rtol=1e-4, atol=1e-5)
            graphs_after_case.append(counters["stats"]["unique_graphs"])
    assert graphs_after_case[1] == graphs_after_case[-1], graphs_after_case
