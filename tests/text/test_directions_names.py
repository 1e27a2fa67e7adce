"""Structure names that contain a direction word keep their identity under mirroring (issue 24, item 2).

The left ventricle of a mirrored heart is still the left ventricle: such a name never swaps and never counts as
naming a direction, while a true direction word next to it still swaps.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from nnunet_vl.text.directions import (ANATOMICAL_AXES, FIXED_SIDE_NAMES_KEY, check_fixed_side_names,
                                       dataset_fixed_side_names, named_axes, shipped_fixed_side_names,
                                       swap_directions)

LR, SI, AP = ANATOMICAL_AXES
REPO = Path(__file__).resolve().parents[2]
NAMES_FILE = REPO / "nnunet_vl" / "text" / "fixed_side_names.json"

# the names the issue and the brief list, written as a report would
REQUIRED = [
    "left ventricle", "right ventricle", "left ventricular hypertrophy", "right ventricular outflow tract",
    "left atrium", "right atrium", "left atrial appendage", "left anterior descending artery",
    "right coronary artery", "left main coronary artery", "left circumflex artery", "superior vena cava",
    "inferior vena cava", "superior mesenteric artery", "superior mesenteric vein", "inferior mesenteric vein",
    "anterior cruciate ligament", "posterior cruciate ligament", "posterior fossa", "anterior cerebral artery",
    "posterior cerebral artery", "superior sagittal sinus", "inferior sagittal sinus",
]
# a word ending for each shipped "stem*" so every shipped pattern is tried as a report would spell it
_ENDINGS = {"ventric": "le", "atri": "um", "cav": "a", "vein": "s", "collicul": "us", "peduncle": "s",
            "gyr": "us", "sulc": "us", "lobul": "e", "ram": "us"}


def _spelled(pattern: str) -> str:
    return " ".join(w[:-1] + _ENDINGS.get(w[:-1], "") if w.endswith("*") else w for w in pattern.split())


SHIPPED = [_spelled(n) for n in shipped_fixed_side_names()]


@pytest.mark.parametrize("name", REQUIRED + SHIPPED, ids=REQUIRED + SHIPPED)
def test_a_fixed_name_stays_and_the_direction_next_to_it_swaps(name):
    for spelled in (name, name.title(), name.upper(), name.replace(" ", "-", 1)):
        assert named_axes(f"Dilated {spelled}.") == set()  # test-time mirroring is not left out for it
        for axis in ANATOMICAL_AXES:
            assert swap_directions(f"Dilated {spelled}.", [axis]) == f"Dilated {spelled}."
        # both directions: the true direction word swaps, the name stays
        for a, b, axis in (("left", "right", LR), ("above", "below", SI), ("in front of", "behind", AP)):
            assert swap_directions(f"lesion {a} the {spelled}", [axis]) == f"lesion {b} the {spelled}"
            assert swap_directions(f"lesion {b} the {spelled}", [axis]) == f"lesion {a} the {spelled}"
            assert named_axes(f"lesion {a} the {spelled}") == {axis}


def test_the_issue_examples():
    assert swap_directions("Lesion left of the left ventricle.", [LR]) == "Lesion right of the left ventricle."
    assert swap_directions("Lesion right of the left ventricle.", [LR]) == "Lesion left of the left ventricle."
    assert swap_directions("Dilated left ventricle; right atrium normal.", ANATOMICAL_AXES) == \
        "Dilated left ventricle; right atrium normal."
    assert swap_directions("Thrombus in the superior vena cava, superior to the right atrium.", [SI]) == \
        "Thrombus in the superior vena cava, inferior to the right atrium."
    assert swap_directions("Left anterior descending artery stenosis, anterior wall", [LR, AP]) == \
        "Left anterior descending artery stenosis, posterior wall"
    assert named_axes("LAD and right coronary artery patent; left main coronary artery calcified") == set()


def test_bilateral_structures_and_look_alikes_still_swap():
    # kidneys, lungs, brain ventricles and bronchi are bilateral: their side words are the patient's side
    text = "left lung, right kidney, left lateral ventricle, left main bronchus, left superior pulmonary vein"
    assert swap_directions(text, [LR]) == \
        "right lung, left kidney, right lateral ventricle, right main bronchus, right superior pulmonary vein"
    assert named_axes(text) == {LR}  # "superior" of the pulmonary vein is part of its name
    assert swap_directions("upper lobe and lower pole", [SI]) == "lower lobe and upper pole"


def test_shipped_list_is_package_data_and_well_formed():
    data = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
    names = [n for group in data["names"].values() for n in group]
    assert tuple(names) == shipped_fixed_side_names()
    assert len(set(names)) == len(names)
    assert check_fixed_side_names(names) == []  # every entry protects at least one direction word
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    assert "*.json" in package_data["nnunet_vl.text"]  # a non-editable install carries the list


def test_dataset_names_extend_the_shipped_ones():
    text = "Varix of the left renal vein, left of the aorta."
    assert swap_directions(text, [LR]) == "Varix of the right renal vein, right of the aorta."
    assert swap_directions(text, [LR], fixed_names=["left renal vein"]) == \
        "Varix of the left renal vein, right of the aorta."
    assert named_axes("left renal vein", fixed_names=["left renal vein"]) == set()
    assert named_axes("Left-Renal  Vein", fixed_names=["left renal vein"]) == set()
    assert swap_directions("right ovarian veins", [LR], fixed_names=["right ovarian vein*"]) == "right ovarian veins"


def test_dataset_json_key_is_checked():
    assert check_fixed_side_names(["left renal vein", "right ovarian vein*"]) == []
    problems = check_fixed_side_names(["", 3, "le*ft renal vein", "renal vein"])
    assert [severity for _, severity in problems] == ["error", "error", "error", "warning"]
    assert "no direction word" in problems[-1][0]
    assert check_fixed_side_names("left renal vein")[0][1] == "error"
    dataset_json = {FIXED_SIDE_NAMES_KEY: ["left renal vein", "", "renal vein"]}
    assert dataset_fixed_side_names(dataset_json) == ("left renal vein",)
    assert dataset_fixed_side_names({}) == ()


def test_contract_reports_a_bad_key(tmp_path):
    from PIL import Image

    from nnunet_vl.text.contract import load_dataset_text

    folder = tmp_path / "Dataset501_Names"
    for sub, name in (("imagesTr", "case_a_0000.png"), ("labelsTr", "case_a.png")):
        (folder / sub).mkdir(parents=True)
        Image.new("L", (8, 8)).save(folder / sub / name)
    dataset_json = {"channel_names": {"0": "x"}, "labels": {"background": 0, "heart": 1}, "numTraining": 1,
                    "file_ending": ".png", "reports": {"case_a": "Dilated left ventricle."},
                    FIXED_SIDE_NAMES_KEY: ["left renal vein", "renal vein", 7]}
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    text = load_dataset_text(folder)
    assert [p.message for p in text.errors] == [f"'{FIXED_SIDE_NAMES_KEY}' entry 7 is not a non-empty string"]
    assert any("renal vein" in p.message and p.severity == "warning" for p in text.problems)


class _Tokenizer:
    """Just enough of TextTokenizer for TextProvider to choose mirror axes (no model)."""
    max_report_tokens = 8

    def label_tensors(self, label_texts):
        return {}


def test_provider_and_predictor_do_not_leave_out_mirroring_for_a_name():
    import torch

    from nnunet_vl.text.provider import TextProvider
    from nnunet_vl.training.text_predictor import TextPredictor

    reports = {"heart": "Dilated left ventricle and superior vena cava.", "side": "Lesion left of the left ventricle.",
               "vein": "Varix of the left renal vein."}
    axes_map = {LR: 2, SI: 0, AP: 1}
    provider = TextProvider(_Tokenizer(), [], reports, axes_map, fixed_side_names=["left renal vein"])
    assert provider.anatomical_axes_named("heart") == set()
    assert provider.anatomical_axes_named("side") == {LR}
    assert provider.anatomical_axes_named("vein") == set()

    class _Text:
        def to(self, device):
            return self

    provider.inputs = lambda cases, flipped_axes=None, mode="report": _Text()
    predictor = TextPredictor(device=torch.device("cpu"))
    predictor._all_mirror_axes = (0, 1, 2)
    predictor.set_text_provider(provider)
    predictor.select_case("heart")
    assert predictor.allowed_mirroring_axes == (0, 1, 2)
    predictor.select_case("side")
    assert predictor.allowed_mirroring_axes == (0, 1)
    predictor.select_case("vein")
    assert predictor.allowed_mirroring_axes == (0, 1, 2)
