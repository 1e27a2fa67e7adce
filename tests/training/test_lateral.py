"""Lateral pairs in training and prediction: a left-right flip swaps the pair's label ids in every target, the
class texts keep describing their labels, and a mirrored test-time prediction swaps the pair's channels back."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nnunet_vl.training.lateral import (LateralMirrorTransform, LateralRegionsError, label_value_pairs,
                                        lateral_swap_from_text_plan)
from nnunet_vl.training.vl_trainer import nnUNetTrainerVL

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "liver": 3}
PLAN = {"lateral_pairs": [["kidney_left", "kidney_right"]],
        "direction_axes": {"left_right": 1, "superior_inferior": 0, "anterior_posterior": None}}


def _seg(n: int, size: int) -> torch.Tensor:
    """Label maps with background, both kidneys and the liver in every sample."""
    return (torch.arange(n * size * size) % 4).reshape(n, 1, size, size).float()


def test_swap_from_plans_and_without_pairs():
    swap = lateral_swap_from_text_plan(PLAN, LABELS)
    assert swap.value_pairs == ((1, 2),) and swap.left_right_axis == 1
    assert lateral_swap_from_text_plan({**PLAN, "lateral_pairs": []}, LABELS) is None
    assert lateral_swap_from_text_plan({"direction_axes": PLAN["direction_axes"]}, LABELS) is None  # older plans
    seg = torch.tensor([[0, 1, 2, 3, 1]])
    assert swap.swap_labels(seg).tolist() == [[0, 2, 1, 3, 2]]
    assert swap.channel_permutation([0, 1, 2, 3]) == [0, 2, 1, 3]


def test_region_targets_swap_their_region_channels():
    regions = {"background": 0, "kidneys": [1, 2], "kidney_left": 1, "kidney_right": 2, "liver": 3}
    swap = lateral_swap_from_text_plan(PLAN, regions)
    assert swap.value_pairs == ((1, 2),)
    assert swap.region_permutation([[1, 2], [1], [2], [3]]) == [0, 2, 1, 3]  # "kidneys" maps to itself
    manager = SimpleNamespace(has_regions=True, foreground_regions=[(1, 2), 1, 2, 3])  # as LabelManager gives them
    assert swap.output_permutation(manager) == [0, 2, 1, 3]  # test-time swap-back of sigmoid channels
    with pytest.raises(LateralRegionsError, match="no region"):  # the left kidney with the liver has no partner
        swap.region_permutation([[1, 3], [2]])
    with pytest.raises(LateralRegionsError, match="several label values"):
        label_value_pairs(regions, [("kidneys", "kidney_left")])
    fake = SimpleNamespace(text_mirror_axes=(1,), lateral=swap, lateral_region_channels=[0, 2, 1, 3, 4],
                           is_cascaded=False)  # four regions and the ignore label's channel
    target = torch.arange(2 * 5 * 4 * 4, dtype=torch.float32).reshape(2, 5, 4, 4)
    batch = {"data": torch.zeros(2, 1, 4, 4), "target": target.clone(), "keys": ["a", "b"]}
    torch.manual_seed(0)
    flips = nnUNetTrainerVL._mirror(fake, batch)
    for i, axes in enumerate(flips):
        expected = torch.flip(target[i], [2])[[0, 2, 1, 3, 4]] if axes else target[i]
        assert torch.equal(batch["target"][i], expected)


def _mirrored(lateral, seed: int = 0):
    fake = SimpleNamespace(text_mirror_axes=(0, 1), lateral=lateral, is_cascaded=False)
    data = torch.randn(8, 1, 8, 8)
    target = [_seg(8, 8), _seg(8, 4)]  # deep supervision: two resolutions
    batch = {"data": data.clone(), "target": [t.clone() for t in target], "keys": [f"c{i}" for i in range(8)]}
    torch.manual_seed(seed)
    flips = nnUNetTrainerVL._mirror(fake, batch)
    return data, target, batch, flips


def test_flipped_sample_swaps_pair_ids_in_every_deep_supervision_target():
    swap = lateral_swap_from_text_plan(PLAN, LABELS)
    data, target, batch, flips = _mirrored(swap)
    assert any(1 in f for f in flips) and any(f == (0,) for f in flips)  # both cases occur with this seed
    for i, axes in enumerate(flips):
        dims = [a + 1 for a in axes]
        assert torch.equal(batch["data"][i], torch.flip(data[i], dims) if dims else data[i])
        for mirrored, original in zip(batch["target"], target):
            flipped = torch.flip(original[i], dims) if dims else original[i]
            expected = swap.swap_labels(flipped) if 1 in axes else flipped
            assert torch.equal(mirrored[i], expected), (i, axes)


def test_dataset_without_pairs_mirrors_exactly_as_before():
    data, target, batch, flips = _mirrored(None)
    for i, axes in enumerate(flips):
        dims = [a + 1 for a in axes]
        for mirrored, original in zip(batch["target"], target):
            assert torch.equal(mirrored[i], torch.flip(original[i], dims) if dims else original[i])


def test_cascade_previous_stage_channels_swap_with_the_pair():
    swap = lateral_swap_from_text_plan(PLAN, LABELS)
    fake = SimpleNamespace(label_manager=SimpleNamespace(foreground_labels=[1, 2, 3]))
    data = torch.stack([torch.full((4, 2), float(c)) for c in range(4)])[None]  # image channel 0, one-hot 1..3
    nnUNetTrainerVL._swap_previous_stage_channels(fake, data, 0, swap)
    assert data[0, :, 0, 0].tolist() == [0.0, 2.0, 1.0, 3.0]


def test_class_texts_of_a_flipped_batch_still_describe_their_labels(tiny_bert):
    """The mirrored patient's left kidney carries the left kidney's id, so "left kidney ... left side" is right as
    it is: the pair's texts must not swap their words a second time (nor do class texts without direction words)."""
    from transformers import BertTokenizerFast

    from nnunet_vl.text.provider import TextProvider
    from nnunet_vl.text.tokens import TextTokenizer

    tokenizer = TextTokenizer(BertTokenizerFast.from_pretrained(str(tiny_bert)), 16, 16, 8)
    texts = [("background", {"definition": "background"}),
             ("kidney_left", {"definition": "the left kidney on the left side"}),
             ("kidney_right", {"definition": "the right kidney on the right side"}),
             ("liver", {"definition": "liver"})]
    provider = TextProvider(tokenizer, texts, {"a": "lesion in the left kidney", "b": "round lesion"},
                            PLAN["direction_axes"], lateral_pairs=PLAN["lateral_pairs"])
    plain = provider.inputs(["a", "b"])
    flipped = provider.inputs(["a", "b"], [(1,), (0, 1)])
    assert torch.equal(flipped.class_ids, plain.class_ids) and torch.equal(flipped.concept_ids, plain.concept_ids)
    assert flipped.class_set is None and len(provider.class_sets) == 1  # nothing to swap: no second set is built
    words = tokenizer.tokenizer.decode(flipped.report_ids[0][flipped.report_mask[0].bool()], skip_special_tokens=True)
    assert words == "lesion in the right kidney"  # the report follows the swapped ids


def test_lateral_mirror_transform_swaps_the_segmentation_only_with_a_left_right_flip():
    swap = lateral_swap_from_text_plan(PLAN, LABELS)
    transform = LateralMirrorTransform((0, 1), swap)
    image, seg = torch.randn(1, 6, 6), _seg(1, 6)[0]
    for axes in ([], [0], [1], [0, 1]):
        out = transform._apply_to_segmentation(seg, axes=axes)
        flipped = torch.flip(seg, [a + 1 for a in axes]) if axes else seg
        assert torch.equal(out, swap.swap_labels(flipped) if 1 in axes else flipped)
        assert torch.equal(transform._apply_to_image(image, axes=axes),
                           torch.flip(image, [a + 1 for a in axes]) if axes else image)


def test_image_only_lateral_trainer_keeps_left_right_out_of_test_time_mirroring():
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    from nnunet_vl.training.nnUNetTrainerLateral import nnUNetTrainerLateral

    trainer = object.__new__(nnUNetTrainerLateral)
    trainer.configuration_manager = SimpleNamespace(patch_size=[16, 16])
    trainer.print_to_log_file = lambda *a, **k: None
    trainer._lateral_swap = lateral_swap_from_text_plan(PLAN, LABELS)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0, 1) and trainer.inference_allowed_mirroring_axes == (0,)
    transforms = trainer.get_training_transforms([16, 16], (-0.2, 0.2), None, mirror_axes, False)
    mirrors = [t for t in transforms.transforms if isinstance(t, MirrorTransform)]
    assert len(mirrors) == 1 and isinstance(mirrors[0], LateralMirrorTransform)

    trainer._lateral_swap = None  # no pairs: nnU-Net's own transforms and test-time axes
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert trainer.inference_allowed_mirroring_axes == (0, 1)
    transforms = trainer.get_training_transforms([16, 16], (-0.2, 0.2), None, mirror_axes, False)
    assert [type(t) for t in transforms.transforms if isinstance(t, MirrorTransform)] == [MirrorTransform]


class _SidedNetwork(torch.nn.Module):
    """Logits of a network that knows sides: the left kidney is whatever lies in the left half of the image."""

    def forward(self, x, text):
        left = torch.zeros_like(x)
        left[..., : x.shape[-1] // 2] = 1
        return torch.cat([x, x * left, x * (1 - left), x.flip(-2)], 1)  # channel 3 is not lateral


def _predictor(plan_text: dict):
    from nnunet_vl.training.text_predictor import TextPredictor

    predictor = TextPredictor(device=torch.device("cpu"), allow_tqdm=False, perform_everything_on_device=False)
    predictor.network = _SidedNetwork()
    predictor.configuration_manager = SimpleNamespace(configuration={"text": plan_text})
    predictor.dataset_json = {"labels": LABELS}
    predictor.label_manager = SimpleNamespace(all_labels=[0, 1, 2, 3], has_regions=False)
    predictor._case_text = SimpleNamespace(batch_size=1)
    predictor.use_mirroring = True
    predictor._remember_model_settings()  # what initialisation does once the plans are known
    return predictor


def test_mirrored_prediction_swaps_pair_channels_back_before_averaging():
    x = torch.randn(1, 1, 6, 8)
    predictor = _predictor(PLAN)
    predictor.allowed_mirroring_axes = (0, 1)
    averaged = predictor._internal_maybe_mirror_and_predict(x)
    assert predictor.allowed_mirroring_axes == (0, 1)  # restored
    # every mirrored view, its pair's channels swapped back, agrees with the un-mirrored prediction of a network
    # that labels sides consistently: the average is that prediction
    plain = _SidedNetwork()(x, None)
    assert torch.allclose(averaged, plain, atol=1e-6)

    naive = _predictor({**PLAN, "lateral_pairs": []})  # without pairs: nnU-Net's own average, unchanged
    naive.allowed_mirroring_axes = (0, 1)
    stock = naive._internal_maybe_mirror_and_predict(x)
    flips = [(), (2,), (3,), (2, 3)]
    expected = sum(torch.flip(_SidedNetwork()(torch.flip(x, f), None), f) if f else plain for f in flips) / 4
    assert torch.allclose(stock, expected, atol=1e-6)
    assert not torch.allclose(stock[:, 1], plain[:, 1])  # naive mirroring blurs the kidneys together


def test_prediction_without_left_right_mirroring_is_nnunets():
    x = torch.randn(1, 1, 6, 8)
    predictor = _predictor(PLAN)
    predictor.allowed_mirroring_axes = (0,)  # the report names a side: left-right was left out
    out = predictor._internal_maybe_mirror_and_predict(x)
    plain = _SidedNetwork()(x, None)
    assert torch.allclose(out, (plain + torch.flip(_SidedNetwork()(torch.flip(x, (2,)), None), (2,))) / 2)


def test_swapped_average_is_nnunets_mean_over_every_mirror_combination():
    class Unsided(torch.nn.Module):
        def forward(self, x, text):
            ramp = torch.linspace(0, 1, x.shape[-1])
            return torch.cat([x, x * ramp, 2 * x * ramp.flip(0), x.cumsum(-2)], 1)

    x = torch.randn(1, 1, 6, 8)
    predictor = _predictor(PLAN)
    predictor.network = Unsided()
    predictor.allowed_mirroring_axes = (0, 1)
    out = predictor._internal_maybe_mirror_and_predict(x)
    swap = lateral_swap_from_text_plan(PLAN, LABELS)
    views = []
    for flips in [(), (2,), (3,), (2, 3)]:
        y = torch.flip(Unsided()(torch.flip(x, flips), None), flips) if flips else Unsided()(x, None)
        views.append(swap.swap_channels(y, [0, 1, 2, 3]) if 3 in flips else y)
    assert torch.allclose(out, sum(views) / 4, atol=1e-6)


def test_image_only_pairs_without_text_plans_come_from_dataset_json_and_case_geometry(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import write_pickle

    from nnunet_vl.training.lateral import lateral_swap_for_image_only

    write_pickle({"sitk_stuff": {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}, str(tmp_path / "case_0.pkl"))
    plans = SimpleNamespace(transpose_forward=[0, 1, 2])
    full = SimpleNamespace(configuration={}, patch_size=[8, 8, 8])  # planned by stock nnU-Net: no text section
    flat = SimpleNamespace(configuration={}, patch_size=[8, 8])
    swap = lateral_swap_for_image_only(plans, full, {"labels": LABELS}, str(tmp_path), "case_0")
    assert swap.value_pairs == ((1, 2),) and swap.left_right_axis == 2  # numpy (z, y, x): x runs left-right
    assert lateral_swap_for_image_only(plans, flat, {"labels": LABELS}, str(tmp_path), "case_0").left_right_axis == 1
    assert lateral_swap_for_image_only(plans, full, {"labels": LABELS, "lateral_pairs": []}, str(tmp_path),
                                       "case_0") is None
    heart = {"labels": {"background": 0, "left ventricle": 1, "right ventricle": 2}}
    assert lateral_swap_for_image_only(plans, full, heart, str(tmp_path), "case_0") is None
    with_text = SimpleNamespace(configuration={"text": PLAN}, patch_size=[8, 8])  # VL plans: their pairs and axes
    assert lateral_swap_for_image_only(plans, with_text, {"labels": LABELS}, str(tmp_path), None).left_right_axis == 1


def test_image_only_lateral_trainer_reads_the_first_preprocessed_case(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import write_pickle

    from nnunet_vl.training.nnUNetTrainerLateral import nnUNetTrainerLateral

    write_pickle({"sitk_stuff": {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}, str(tmp_path / "case_0.pkl"))
    trainer = object.__new__(nnUNetTrainerLateral)
    trainer.preprocessed_dataset_folder = str(tmp_path)
    trainer.plans_manager = SimpleNamespace(transpose_forward=[0, 1, 2])
    trainer.configuration_manager = SimpleNamespace(configuration={}, patch_size=[8, 8, 8])
    trainer.dataset_json = {"labels": LABELS}
    assert trainer.lateral_swap().left_right_axis == 2


class _ClassTextProbe(_SidedNetwork):
    """_SidedNetwork that records the class token ids of every call."""

    def __init__(self):
        super().__init__()
        self.class_ids: list[torch.Tensor] = []

    def forward(self, x, text):
        self.class_ids.append(text.class_ids.clone())
        return super().forward(x, text)


def test_test_time_views_get_the_class_texts_of_a_sample_mirrored_so(tiny_bert):
    """Class texts that name an axis do not leave it out of test-time mirroring (the report's named axes still
    do): each mirrored view reads the class texts as a sample mirrored so in training would, the lateral pair's
    left-right words kept (its channels swap back), fixed side names never swapped."""
    from transformers import BertTokenizerFast

    from nnunet_vl.text.provider import TextProvider
    from nnunet_vl.text.tokens import TextTokenizer

    tokenizer = TextTokenizer(BertTokenizerFast.from_pretrained(str(tiny_bert)), 16, 16, 8)
    reports = {"plain": "round lesion", "side": "lesion on the left"}
    base = [("background", {"definition": "background"}),
            ("kidney_left", {"definition": "the left kidney on the left side"}),
            ("kidney_right", {"definition": "the right kidney on the right side"})]

    def predicted(liver: str, case: str = "plain"):
        predictor = _predictor(PLAN)
        predictor.network = _ClassTextProbe()
        predictor._all_mirror_axes = (0, 1)  # the trainer's inference axes
        provider = TextProvider(tokenizer, [*base, ("liver", {"definition": liver})], reports, PLAN["direction_axes"],
                                lateral_pairs=PLAN["lateral_pairs"])
        predictor.set_text_provider(provider)
        predictor.select_case(case)
        predictor._internal_maybe_mirror_and_predict(torch.randn(1, 1, 6, 8))
        return predictor, provider

    def encoded(provider, text: str) -> torch.Tensor:
        return provider.tokenizer.label_tensors([("liver", {"definition": text})])["class_ids"][0]

    predictor, provider = predicted("liver on the right side, upper region")
    assert predictor.allowed_mirroring_axes == (0, 1)  # class texts no longer leave axes out
    calls = predictor.network.class_ids  # views (), (0,), (1,), (0, 1)
    assert len(calls) == 4
    liver = {view: ids[3] for view, ids in zip([(), (0,), (1,), (0, 1)], calls)}
    assert torch.equal(liver[()], encoded(provider, "liver on the right side, upper region"))
    assert torch.equal(liver[(0,)], encoded(provider, "liver on the right side, lower region"))
    assert torch.equal(liver[(1,)], encoded(provider, "liver on the left side, upper region"))
    assert torch.equal(liver[(0, 1)], encoded(provider, "liver on the left side, lower region"))
    for ids in calls:  # the pair keeps its side words (axis 1 swaps its channels instead)
        assert torch.equal(ids[1:3], calls[0][1:3])

    fixed, _ = predicted("liver beside the left ventricle")
    assert all(torch.equal(ids, fixed.network.class_ids[0]) for ids in fixed.network.class_ids)
    side, _ = predicted("liver on the right side", case="side")
    assert side.allowed_mirroring_axes == (0,)  # the report names left-right: left out, as before
    assert len(side.network.class_ids) == 2


@pytest.mark.parametrize("name, budget", [("nnUNetTrainerLateral_cpu", "cpu"), ("nnUNetTrainerLateral_demo", "demo")])
def test_lateral_budget_variants_are_found_by_nnunet_and_train_on_their_budget(name, budget, planned_2d,
                                                                                 nnunet_folders):
    """nnU-Net's trainer lookup (nnUNet_extTrainer) finds them; they are nnUNetTrainerLateral on the shared budget."""
    import json

    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_vl.cli.environment import trainer_dir
    from nnunet_vl.training.budgets import BUDGETS
    from nnunet_vl.training.nnUNetTrainerLateral import nnUNetTrainerLateral

    folder = str(trainer_dir())
    found = recursive_find_python_class(folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True)
    assert found is not None and found.__name__ == name and issubclass(found, nnUNetTrainerLateral)
    preprocessed = nnunet_folders["nnUNet_preprocessed"] / "Dataset801_SynthVL2D"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 reads this from the plans dict
    trainer = found(plans, "2d", 0, json.loads((preprocessed / "dataset.json").read_text()), torch.device("cpu"))
    expected = BUDGETS[budget]
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == \
        (expected.epochs, expected.iterations_per_epoch, expected.val_iterations_per_epoch)
