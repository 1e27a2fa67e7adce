"""TargetInformedAlignmentLoss: level terms, zero-safety, ignore label, queue, optimisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_vl.losses.tmca import TargetInformedAlignmentLoss, region_weights

pytestmark = pytest.mark.usefixtures("single_thread")

BATCH, CHANNELS, PROJ_DIM, SPATIAL = 4, 8, 16, (16, 16)


def make_aux(seed: int, keys: list[int] | None = None) -> dict[str, torch.Tensor]:
    """What TMCAUNet returns as aux, as leaf tensors: level i at 1/2**i resolution."""
    generator = torch.Generator().manual_seed(seed)
    aux = {}
    for level in range(2):
        size = tuple(n // 2**level for n in SPATIAL)
        aux[f"features_l{level}"] = torch.randn(BATCH, CHANNELS, *size, generator=generator).requires_grad_()
        aux[f"image_head_l{level}"] = torch.randn(PROJ_DIM, CHANNELS, generator=generator).requires_grad_()
        text = F.normalize(torch.randn(BATCH, PROJ_DIM, generator=generator), dim=-1)
        aux[f"text_l{level}"] = text.requires_grad_()
    aux["report_key"] = torch.tensor(keys if keys is not None else [seed * 100 + i for i in range(BATCH)])
    return aux


def make_target() -> torch.Tensor:
    """Every sample has a foreground square at a different place."""
    target = torch.zeros(BATCH, 1, *SPATIAL, dtype=torch.long)
    for i in range(BATCH):
        target[i, 0, 2 * i : 2 * i + 6, 8 - i : 14 - i] = 1 + i % 2
    return target


def leaves(aux: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [t for t in aux.values() if t.requires_grad]


def target_embeddings(aux: dict[str, torch.Tensor], target: torch.Tensor, level: int) -> torch.Tensor:
    """The loss's target embeddings recomputed by hand (for checking queue contents)."""
    features = aux[f"features_l{level}"].detach()
    foreground, _ = region_weights(target, features.shape[2:])
    pooled = (features.flatten(2) * foreground[:, None]).sum(-1) / foreground.sum(-1, keepdim=True).clamp_min(1e-6)
    return F.normalize(pooled @ aux[f"image_head_l{level}"].detach().T, dim=-1)


def test_level_terms_are_finite_and_weighted_into_the_total() -> None:
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 0.5])
    aux = make_aux(0)
    out = loss(aux, make_target())
    assert set(out) == {"align_l0", "align_l1", "total"}
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    assert torch.allclose(out["total"], out["align_l0"] + 0.5 * out["align_l1"])
    out["total"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves(aux))


@pytest.mark.parametrize("case", ["all_background", "only_ignore_label"])
def test_no_foreground_gives_zero_loss_still_connected(case: str) -> None:
    target = torch.zeros(BATCH, 1, *SPATIAL, dtype=torch.long)
    if case == "only_ignore_label":
        target[:, 0, 4:10, 4:10] = 3
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], ignore_label=3)
    aux = make_aux(0)
    out = loss(aux, target)
    assert all(v.item() == 0 for v in out.values())
    out["total"].backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves(aux))
    assert loss.queue_l0.shape[0] == 0


def test_region_weights_exclude_ignore_label_and_use_area_fractions() -> None:
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2, :2] = 1
    target[0, 0, 0, 2] = 2
    target[0, 0, 3, :] = 5
    foreground, background = region_weights(target, (2, 2), ignore_label=5)
    assert torch.allclose(foreground, torch.tensor([[1.0, 0.25, 0.0, 0.0]]))
    assert torch.allclose(background, torch.tensor([[0.0, 0.75, 0.5, 0.5]]))
    full_foreground, full_background = region_weights(target, (4, 4), ignore_label=5)
    assert torch.all(full_foreground[0, 12:] == 0) and torch.all(full_background[0, 12:] == 0)


def test_sample_without_foreground_is_neither_anchor_nor_negative() -> None:
    target = make_target()
    target[1] = 0
    aux = make_aux(0)
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=0)
    keep = [0, 2, 3]
    without_sample = {k: v[keep] if k.startswith(("features", "text", "report")) else v for k, v in aux.items()}
    total = loss(aux, target)["total"]
    assert torch.allclose(total, loss(without_sample, target[keep])["total"])
    total.backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves(aux))
    assert aux["features_l0"].grad[1].abs().sum() == 0


def test_same_report_is_never_a_negative() -> None:
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], background_weight=0.0)
    out = loss(make_aux(0, keys=[7] * BATCH), make_target())
    assert out["total"].item() == 0  # only the positive is left in every softmax


def test_background_is_a_weighted_negative() -> None:
    aux, target = make_aux(0), make_target()
    values = [
        TargetInformedAlignmentLoss([1.0, 1.0], queue_size=0, background_weight=w)(aux, target)["total"]
        for w in (0.0, 1.0, 4.0)
    ]
    assert values[0] < values[1] < values[2]


def test_queue_is_fifo_capped_detached_and_training_only() -> None:
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=6)
    target = make_target()
    first, second = make_aux(1), make_aux(2)

    loss(first, target)
    assert loss.queue_l0.shape == (4, PROJ_DIM) and loss.queue_l1.shape == (4, PROJ_DIM)
    assert torch.allclose(loss.queue_l0, target_embeddings(first, target, 0))
    assert torch.equal(loss.queue_keys_l0, first["report_key"])

    loss(second, target)
    assert loss.queue_l0.shape == (6, PROJ_DIM)
    expected = torch.cat([target_embeddings(second, target, 0), target_embeddings(first, target, 0)[:2]])
    assert torch.allclose(loss.queue_l0, expected)
    assert torch.equal(loss.queue_keys_l0, torch.cat([second["report_key"], first["report_key"][:2]]))
    assert not loss.queue_l0.requires_grad and loss.queue_l0.grad_fn is None

    snapshot = loss.queue_l0.clone()
    with torch.no_grad():
        loss(make_aux(3), target)
    loss.eval()
    loss(make_aux(4), target)
    assert torch.equal(loss.queue_l0, snapshot)
    assert "queue_l0" not in loss.state_dict()


def test_queue_adds_negatives_except_for_the_same_report() -> None:
    target, aux = make_target(), make_aux(0)
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=64).eval()
    empty_queue = loss(aux, target)["total"]

    loss.train()
    for seed in range(1, 5):
        loss(make_aux(seed), target)
    loss.eval()
    full_queue = loss(aux, target)["total"]
    assert loss.queue_l0.shape[0] == 16
    assert full_queue > empty_queue

    one_report = make_aux(0, keys=[7] * BATCH)
    empty = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=64).eval()(one_report, target)["total"]
    for queued_key, changes in ((7, False), (8, True)):
        queue_filled = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=64)
        queue_filled(make_aux(1, keys=[queued_key] * BATCH), target)
        value = queue_filled.eval()(one_report, target)["total"]
        assert torch.isclose(value, empty).item() != changes


def test_optimising_the_embeddings_reduces_the_loss() -> None:
    aux, target = make_aux(0), make_target()
    loss = TargetInformedAlignmentLoss(level_weights=[1.0, 1.0], queue_size=16)
    image_side = [v for k, v in aux.items() if k.startswith(("features", "image_head"))]
    optimizer = torch.optim.Adam(image_side, lr=0.05)
    values = []
    for _ in range(10):
        total = loss(aux, target)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        values.append(total.item())
    assert values[-1] < 0.5 * values[0]


def test_level_count_must_match_the_network() -> None:
    with pytest.raises(ValueError, match="aligned levels"):
        TargetInformedAlignmentLoss(level_weights=[1.0, 1.0, 1.0])(make_aux(0), make_target())
