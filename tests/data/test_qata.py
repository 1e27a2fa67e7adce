"""Tests for the QaTa-COV19 converter on tiny synthetic copies of both source layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_vl.data.qata import ConversionError, QATA_LABEL_TEXTS, convert_qata

SIZE = 16
CONCEPTS = {"definition", "shape", "location", "appearance", "contour", "texture"}


def _save_image(path: Path, seed: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    img = Image.fromarray(grey)
    (img.convert(mode) if mode != "L" else img).save(path)


def _save_mask(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[seed % 8: seed % 8 + 5, 3:9] = 255
    Image.fromarray(mask).save(path)


def _make_annotation_layout(root: Path, with_test: bool = False) -> Path:
    splits = {"train": ["covid_1", "covid_2", "sub-s1_ses.e2"], "valid": ["covid_3"]}
    if with_test:
        splits["test"] = ["covid_9"]
    data: dict[str, list[dict[str, str]]] = {}
    for split, names in splits.items():
        data[split] = []
        for i, n in enumerate(names):
            _save_image(root / split / "images" / f"{n}.png", i)
            _save_mask(root / split / "masks" / f"mask_{n}.png", i)
            data[split].append({"image": f"{split}/images/{n}.png", "mask": f"{split}/masks/mask_{n}.png",
                                "caption": f"report of {n}, lower left lung."})
    (root / "annotation.json").write_text(json.dumps(data))
    return root


def _make_lvit_layout(root: Path, text_format: str = "xlsx", with_test: bool = True) -> Path:
    """LViT layout with awkward names: upper-case masks, .PNG vs .png, text keyed by mask name."""
    folders = {"Train": ["covid_1", "Covid_2", "img_3"], "Val": ["covid_4"]}
    if with_test:
        folders["Test"] = ["covid_5"]
    for prefix, names in folders.items():
        folder = root / f"{prefix}_Folder"
        rows = []
        for i, n in enumerate(names):
            _save_image(folder / "img" / f"{n}.png", i, mode="RGB" if n == "img_3" else "L")
            mask_name = {"Covid_2": "MASK_covid_2.PNG", "img_3": "img_3.png"}.get(n, f"mask_{n}.png")
            _save_mask(folder / "labelcol" / mask_name, i)
            key = {"covid_1": "mask_covid_1.png", "Covid_2": "COVID_2.jpg", "img_3": "img_3"}.get(n, f"{n}.png")
            rows.append({"Image": key, "Description": f"report of {n}"})
        table = pd.DataFrame(rows)
        if text_format == "xlsx":
            table.to_excel(folder / f"{prefix}_text.xlsx", index=False)
        else:
            table.to_csv(folder / f"{prefix}_text.csv", index=False)
    return root


def _leftovers(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    return raw, pre


def test_annotation_layout_converts(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    raw, pre = roots
    out = convert_qata(_make_annotation_layout(tmp_path / "src"), 501)
    assert out == raw / "Dataset501_QaTaCOV19"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "X-ray"} and ds["file_ending"] == ".png"
    assert ds["labels"] == {"background": 0, "infection": 1} and ds["numTraining"] == 4
    assert ds["reports"] == "reports.json" and "QaTa-COV19" in json.dumps(ds["source"])
    assert set(ds["label_texts"]) == {"background", "infection"}
    assert all(set(v) == CONCEPTS for v in ds["label_texts"].values())
    ids = sorted(p.name[: -len("_0000.png")] for p in (out / "imagesTr").iterdir())
    assert ids == ["covid_1", "covid_2", "covid_3", "sub-s1_ses_e2"]  # '.' sanitised
    assert sorted(p.stem for p in (out / "labelsTr").iterdir()) == ids
    mask = np.asarray(Image.open(out / "labelsTr" / "covid_1.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    image = Image.open(out / "imagesTr" / "covid_1_0000.png")
    assert image.mode == "L" and image.size == (SIZE, SIZE)
    reports = json.loads((out / "reports.json").read_text())
    assert set(reports) == set(ids) and reports["covid_3"] == "report of covid_3, lower left lung."
    splits = json.loads((out / "splits_final.json").read_text())
    assert splits == [{"train": ["covid_1", "covid_2", "sub-s1_ses_e2"], "val": ["covid_3"]}]
    assert json.loads((pre / out.name / "splits_final.json").read_text()) == splits
    mapping = json.loads((out / "case_mapping.json").read_text())
    assert mapping["sub-s1_ses_e2"]["image"] == "train/images/sub-s1_ses.e2.png"
    assert [p for p in _leftovers(raw) if p.startswith(".")] == []


def test_annotation_test_split_goes_to_imagesTs(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    out = convert_qata(_make_annotation_layout(tmp_path / "src", with_test=True), 502)
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["covid_9_0000.png"]
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["covid_9.png"]
    assert "covid_9" in json.loads((out / "reports.json").read_text())
    assert "covid_9" not in json.dumps(json.loads((out / "splits_final.json").read_text()))
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4


@pytest.mark.parametrize("text_format", ["xlsx", "csv"])
def test_lvit_layout_matches_names_case_insensitively(tmp_path: Path, roots: tuple[Path, Path],
                                                      text_format: str) -> None:
    if text_format == "xlsx":
        pytest.importorskip("openpyxl")
    raw, pre = roots
    out = convert_qata(_make_lvit_layout(tmp_path / "src", text_format), 503)
    reports = json.loads((out / "reports.json").read_text())
    assert reports == {"Covid_2": "report of Covid_2", "covid_1": "report of covid_1",
                       "img_3": "report of img_3", "covid_4": "report of covid_4", "covid_5": "report of covid_5"}
    assert json.loads((out / "splits_final.json").read_text()) == [
        {"train": ["covid_1", "Covid_2", "img_3"], "val": ["covid_4"]}]  # sorted ignoring case
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["covid_5_0000.png"]
    rgb_converted = Image.open(out / "imagesTr" / "img_3_0000.png")
    assert rgb_converted.mode == "L"
    for case in ("covid_1", "Covid_2", "img_3"):
        assert set(np.unique(np.asarray(Image.open(out / "labelsTr" / f"{case}.png")))) == {0, 1}


def test_nnunet_reads_converted_case(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    out = convert_qata(_make_annotation_layout(tmp_path / "src"), 504)
    io = NaturalImage2DIO()
    image, _ = io.read_images([str(out / "imagesTr" / "covid_1_0000.png")])
    seg, _ = io.read_seg(str(out / "labelsTr" / "covid_1.png"))
    assert image.shape == (1, 1, SIZE, SIZE) and seg.shape == (1, 1, SIZE, SIZE)
    assert set(np.unique(seg)) == {0, 1}


def _assert_fails(src: Path, raw: Path, *needles: str) -> str:
    with pytest.raises(ConversionError) as info:
        convert_qata(src, 510)
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert _leftovers(raw) == []  # neither the dataset nor a temp folder is left
    return message


def test_missing_mask_fails_and_writes_nothing(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    src = _make_lvit_layout(tmp_path / "src", "csv")
    (src / "Train_Folder" / "labelcol" / "mask_covid_1.png").unlink()
    _assert_fails(src, roots[0], "covid_1.png", "missing mask", "Fix:")


def test_image_without_report_fails(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    src = _make_lvit_layout(tmp_path / "src", "csv")
    table = src / "Val_Folder" / "Val_text.csv"
    pd.DataFrame({"Image": [], "Description": []}).to_csv(table, index=False)
    _assert_fails(src, roots[0], "covid_4.png", "image without report")


def test_report_for_unknown_image_fails(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    src = _make_lvit_layout(tmp_path / "src", "csv")
    table = src / "Train_Folder" / "Train_text.csv"
    rows = pd.read_csv(table)
    rows.loc[len(rows)] = ["mask_covid_77.png", "orphan report"]
    rows.to_csv(table, index=False)
    _assert_fails(src, roots[0], "report for an unknown image 'mask_covid_77.png'", str(table))


def test_all_problems_are_listed_at_once(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    src = _make_annotation_layout(tmp_path / "src")
    data = json.loads((src / "annotation.json").read_text())
    data["train"][0]["caption"] = " "
    data["train"][1]["mask"] = "train/masks/nope.png"
    data["valid"].append({"image": "valid/images/ghost.png", "mask": "x.png", "caption": "ghost"})
    (src / "annotation.json").write_text(json.dumps(data))
    (src / "train" / "images" / "sub-s1_ses.e2.png").write_bytes(b"not a png")
    message = _assert_fails(src, roots[0], "covid_1.png", "nope.png", "ghost.png", "sub-s1_ses.e2.png",
                            "unreadable image")
    assert "(4 problem(s))" in message


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    src = _make_annotation_layout(tmp_path / "src")
    out = convert_qata(src, 505)
    (out / "marker.txt").write_text("old")
    with pytest.raises(ConversionError, match="already exists"):
        convert_qata(src, 505)
    assert (out / "marker.txt").exists()
    assert convert_qata(src, 505, overwrite=True) == out
    assert not (out / "marker.txt").exists() and (out / "dataset.json").exists()
    assert [p for p in _leftovers(roots[0]) if p.startswith(".")] == []


def test_needs_an_output_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(ConversionError, match="nnUNet_raw"):
        convert_qata(_make_annotation_layout(tmp_path / "src"), 506)
    out = convert_qata(tmp_path / "src", 506, raw_root=tmp_path / "explicit")
    assert out.parent == tmp_path / "explicit"


def test_label_texts_cover_six_concepts() -> None:
    assert set(QATA_LABEL_TEXTS) == {"background", "infection"}
    assert all(set(v) == CONCEPTS and all(len(t) > 20 for t in v.values()) for v in QATA_LABEL_TEXTS.values())
