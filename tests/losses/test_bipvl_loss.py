"""GlobalLocalContrastiveLoss on synthetic embeddings: reference values, absent classes, ignore label, weighting."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_vl.losses.bipvl import GlobalLocalContrastiveLoss

B, C, K, P, CH = 2, 4, 3, 8, 5  # CH: channels of the fused stage maps, projected to P by the loss


def make_aux(stage_sizes: tuple[tuple[int, ...], ...] = ((8, 8), (4, 4)), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    aux = {
        "text_class": F.normalize(torch.randn(B, C, P, generator=g), dim=-1).requires_grad_(),
        "concept_text": F.normalize(torch.randn(C, K, P, generator=g), dim=-1).requires_grad_(),
        "concept_present": torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool),
    }
    for i, size in enumerate(stage_sizes):
        aux[f"visual_{i + 1}"] = torch.randn(B, CH, *size, generator=g).requires_grad_()
        aux[f"projection_{i + 1}"] = torch.randn(P, CH, generator=g).requires_grad_()
    return aux


def quadrant_target(size: int = 8, all_classes: bool = False) -> torch.Tensor:
    """(B, 1, size, size): classes 0..3 in the four quadrants (sample 1 only 0 and 2 unless all_classes)."""
    target = torch.zeros(B, 1, size, size, dtype=torch.long)
    h = size // 2
    target[:, 0, :h, h:], target[:, 0, h:, :h], target[:, 0, h:, h:] = 1, 2, 3
    if not all_classes:
        target[1, 0, :h, h:], target[1, 0, h:, h:] = 0, 2
    return target


def reference_losses(aux: dict[str, torch.Tensor], target: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Loop implementation for one stage at the target's resolution."""
    fmap, text, concepts, has = aux["visual_1"], aux["text_class"], aux["concept_text"], aux["concept_present"]
    projection = aux["projection_1"]
    global_terms, local_terms = [], []
    for b in range(B):
        for c in range(C):
            region = target[b, 0] == c
            if not region.any():
                continue
            v = F.normalize(projection @ fmap[b][:, region].mean(1), dim=0)  # project the region's mean
            global_terms.append(-F.log_softmax(text[b] @ v / temperature, 0)[c])
            for k in range(K):
                if has[c, k]:
                    logits = (concepts[:, k] @ v / temperature)[has[:, k]]
                    local_terms.append(-F.log_softmax(logits, 0)[has[: c + 1, k].sum() - 1])
    return torch.stack(global_terms).mean().item(), torch.stack(local_terms).mean().item()


def test_matches_reference_and_weights() -> None:
    aux, target = make_aux(stage_sizes=((8, 8),)), quadrant_target(all_classes=True)
    out = GlobalLocalContrastiveLoss(temperature=0.2, global_weight=0.3, local_weight=0.7)(aux, target)
    expected_global, expected_local = reference_losses(aux, target, 0.2)
    assert out["global"].item() == pytest.approx(expected_global, rel=1e-5)
    assert out["local"].item() == pytest.approx(expected_local, rel=1e-5)
    assert out["total"].item() == pytest.approx(0.3 * expected_global + 0.7 * expected_local, rel=1e-5)


def test_has_no_parameters_and_is_finite_with_gradients() -> None:
    loss = GlobalLocalContrastiveLoss()
    assert list(loss.parameters()) == []
    aux = make_aux()
    out = loss(aux, quadrant_target(16))
    assert set(out) == {"global", "local", "total"} and all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    out["total"].backward()
    for key in ("text_class", "concept_text", "visual_1", "visual_2", "projection_1", "projection_2"):
        assert torch.isfinite(aux[key].grad).all() and aux[key].grad.any(), key


def test_aligned_embeddings_score_lower_than_random() -> None:
    aux, target = make_aux(stage_sizes=((8, 8),)), quadrant_target()
    aligned = dict(aux)
    one_hot = F.one_hot(target[:, 0], C).permute(0, 3, 1, 2).float()
    aligned["visual_1"] = torch.einsum("bcp,bchw->bphw", aux["text_class"].detach(), one_hot)
    aligned["projection_1"] = torch.eye(P)
    loss = GlobalLocalContrastiveLoss()
    assert loss(aligned, target)["global"] < 0.2 * loss(aux, target)["global"]


def test_absent_class_is_skipped() -> None:
    """Classes 1 and 3 are absent from sample 1: they are no anchors there (loop reference), no NaN anywhere."""
    aux, target = make_aux(stage_sizes=((8, 8),)), quadrant_target()
    out = GlobalLocalContrastiveLoss()(aux, target)
    expected_global, expected_local = reference_losses(aux, target, 0.2)
    assert out["global"].item() == pytest.approx(expected_global, rel=1e-5)
    assert out["local"].item() == pytest.approx(expected_local, rel=1e-5)
    out["total"].backward()
    assert all(torch.isfinite(aux[key].grad).all() for key in ("text_class", "concept_text", "visual_1"))


def test_small_class_survives_coarse_stage() -> None:
    """A one-voxel class at input resolution still counts at a 4x coarser stage (area, not nearest, pooling)."""
    aux, target = make_aux(stage_sizes=((4, 4),)), torch.zeros(B, 1, 16, 16, dtype=torch.long)
    loss = GlobalLocalContrastiveLoss()
    background_only = loss(aux, target)["global"].item()
    target[:, 0, 5, 5] = 1
    assert loss(aux, target)["global"].item() != pytest.approx(background_only, rel=1e-3)


def test_missing_concepts_are_masked() -> None:
    aux, target = make_aux(), quadrant_target(16)
    loss = GlobalLocalContrastiveLoss()
    changed = dict(aux)
    changed["concept_text"] = torch.where(aux["concept_present"][..., None], aux["concept_text"], 1e3)
    assert loss(changed, target)["local"].item() == pytest.approx(loss(aux, target)["local"].item(), rel=1e-6)


def test_only_background() -> None:
    aux = make_aux()
    out = GlobalLocalContrastiveLoss()(aux, torch.zeros(B, 1, 16, 16, dtype=torch.long))
    assert all(torch.isfinite(v) for v in out.values()) and out["global"] > 0
    out["total"].backward()
    assert torch.isfinite(aux["visual_2"].grad).all()


def test_ignore_label() -> None:
    ignore = 9
    aux, target = make_aux(stage_sizes=((8, 8),)), quadrant_target()
    target[:, :, :2] = ignore
    loss = GlobalLocalContrastiveLoss(ignore_label=ignore)
    changed = dict(aux)
    changed["visual_1"] = aux["visual_1"].detach().clone()
    changed["visual_1"][:, :, :2] = 1e3  # features under ignored voxels must not count
    assert loss(changed, target)["total"].item() == pytest.approx(loss(aux, target)["total"].item(), rel=1e-6)

    ignored_everywhere = torch.full_like(target, ignore)
    out = loss(aux, ignored_everywhere)
    assert all(v.item() == 0 for v in out.values())
    out["total"].backward()
    assert aux["visual_1"].grad is not None and not aux["visual_1"].grad.any()


def test_uncertainty_weighting() -> None:
    aux, target = make_aux(), quadrant_target(16)
    aux["log_vars"] = torch.tensor([0.5, -0.3], requires_grad=True)
    out = GlobalLocalContrastiveLoss(uncertainty_weighting=True)(aux, target)
    s = aux["log_vars"].detach()
    expected = torch.exp(-s[0]) * out["global"] + s[0] + torch.exp(-s[1]) * out["local"] + s[1]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)

    aux["log_vars"].grad = None
    out = GlobalLocalContrastiveLoss(uncertainty_weighting=True, ignore_label=5)(aux, torch.full_like(target, 5))
    out["total"].backward()
    assert out["total"].item() == 0 and torch.equal(aux["log_vars"].grad, torch.zeros(2))  # no drift without anchors


def test_per_sample_concept_anchors() -> None:
    """aux["concept_text"] (B, C, K, P): each sample scores against its own anchors (a mirrored sample's swapped class
    texts); shared anchors expanded over the batch give exactly the old loss."""
    loss = GlobalLocalContrastiveLoss(temperature=0.2)
    aux, target = make_aux(stage_sizes=((8, 8),)), quadrant_target(all_classes=True)
    shared = loss(aux, target)
    expanded = loss({**aux, "concept_text": aux["concept_text"].expand(B, -1, -1, -1)}, target)
    for key in shared:
        assert expanded[key].item() == pytest.approx(shared[key].item(), rel=1e-6)

    other = F.normalize(torch.randn(C, K, P, generator=torch.Generator().manual_seed(5)), dim=-1)
    per_sample = loss({**aux, "concept_text": torch.stack([other, aux["concept_text"].detach()])}, target)
    assert all(torch.isfinite(v) for v in per_sample.values())
    assert per_sample["global"].item() == pytest.approx(shared["global"].item(), rel=1e-6)  # class tokens unchanged

    def alone(b: int, concepts: torch.Tensor) -> float:
        one = {k: (v[b:b + 1] if k in ("text_class", "visual_1") else v) for k, v in aux.items()}
        return loss({**one, "concept_text": concepts}, target[b:b + 1])["local"].item()

    # every class present in both samples: equal anchor counts, so the batch term is the mean of the samples'
    expected = (alone(0, other) + alone(1, aux["concept_text"].detach())) / 2
    assert per_sample["local"].item() == pytest.approx(expected, rel=1e-5)
    assert per_sample["local"].item() != pytest.approx(shared["local"].item(), rel=1e-3)
