"""The text data contract: every accepted form, and every bad input reported at once with file and fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_vl.text.contract import TextContractError, load_dataset_text

CASES_TR = ["case_a", "case_b", "case_c"]
CASES_TS = ["test_x"]


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)


@pytest.fixture
def raw_dataset(tmp_path: Path):
    """A minimal raw dataset (PNG images) whose dataset.json the test fills in."""
    folder = tmp_path / "Dataset500_Contract"
    for case in CASES_TR:
        _png(folder / "imagesTr" / f"{case}_0000.png")
        _png(folder / "labelsTr" / f"{case}.png")
    for case in CASES_TS:
        _png(folder / "imagesTs" / f"{case}_0000.png")

    def write(**text_keys) -> Path:
        dataset_json = {"channel_names": {"0": "x"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
                        "numTraining": 3, "file_ending": ".png", **text_keys}
        (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
        return folder

    return write


ALL_REPORTS = {"case_a": "Lesion in the left lobe.", "case_b": "Two lesions.", "case_c": "No lesion.",
               "test_x": "Right lobe mass."}


def test_inline_reports_and_concepts(raw_dataset):
    folder = raw_dataset(reports=ALL_REPORTS,
                         label_texts={"liver": "The largest abdominal organ.",
                                      "Tumor": {"definition": "A malignant mass.", "shape": "Round."}})
    text = load_dataset_text(folder)
    assert text.errors == []
    assert text.reports == ALL_REPORTS
    assert text.label_texts["liver"] == {"definition": "The largest abdominal organ."}
    assert text.label_texts["tumor"] == {"definition": "A malignant mass.", "shape": "Round."}
    assert "definition" in text.label_texts["background"]
    assert text.train_cases == CASES_TR and text.test_cases == CASES_TS


@pytest.mark.parametrize("suffix", [".json", ".csv", ".tsv"])
def test_reports_from_files(raw_dataset, suffix):
    folder = raw_dataset(reports=f"reports{suffix}")
    path = folder / f"reports{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(ALL_REPORTS), encoding="utf-8")
    else:
        sep = "," if suffix == ".csv" else "\t"
        rows = [f"case_id{sep}report"] + [f'{c}{sep}"{r}"' if sep == "," else f"{c}{sep}{r}"
                                          for c, r in ALL_REPORTS.items()]
        path.write_text("\n".join(rows), encoding="utf-8")
    text = load_dataset_text(folder)
    assert text.errors == [] and text.reports == ALL_REPORTS


def test_reports_inside_nnunet_dataset_key(raw_dataset):
    dataset = {c: {"images": [f"imagesTr/{c}_0000.png"], "label": f"labelsTr/{c}.png", "report": ALL_REPORTS[c]}
               for c in CASES_TR}
    folder = raw_dataset(dataset=dataset, reports={"test_x": ALL_REPORTS["test_x"]})
    text = load_dataset_text(folder)
    assert text.errors == [] and text.reports == ALL_REPORTS


def test_label_texts_from_corpus_and_file(raw_dataset):
    folder = raw_dataset(reports=ALL_REPORTS, label_texts="msd_liver")
    text = load_dataset_text(folder)
    assert text.errors == [] and "shape" in text.label_texts["liver"] and "texture" in text.label_texts["tumor"]
    folder = raw_dataset(reports=ALL_REPORTS, label_texts="msd_spleen")
    errors = load_dataset_text(folder).errors
    assert len(errors) == 1 and "'liver'" in errors[0].message and "'tumor'" in errors[0].message
    (folder / "texts.json").write_text(json.dumps({"liver": "Organ.", "tumor": {"texture": "Heterogeneous."}}))
    folder = raw_dataset(reports=ALL_REPORTS, label_texts="texts.json")
    text = load_dataset_text(folder)
    assert text.errors == [] and text.label_texts["tumor"] == {"texture": "Heterogeneous."}


def test_every_bad_input_is_reported_at_once(raw_dataset):
    folder = raw_dataset(reports={"case_a": "", "case_b": "   \n ", "ghost_case": "Report of nothing.",
                                  "test_x": "ok"},
                         label_texts={"spleen": "Not a label here.", "liver": {"colour": "red"}})
    text = load_dataset_text(folder)
    messages = "\n".join(str(p) for p in text.errors)
    assert "report of case 'case_a' is empty" in messages
    assert "report of case 'case_b' is empty" in messages
    assert "unknown case 'ghost_case'" in messages
    assert "training case 'case_c' has no report" in messages
    assert "unknown label 'spleen'" in messages
    assert "unknown concepts ['colour']" in messages
    assert all(str(folder) in p.file for p in text.errors)
    with pytest.raises(TextContractError) as e:
        text.raise_on_errors()
    assert len(str(e.value).splitlines()) == len(text.errors)


def test_non_utf8_and_duplicate_rows(raw_dataset):
    folder = raw_dataset(reports="reports.csv")
    (folder / "reports.csv").write_bytes("case_id,report\ncase_a,l\xe9sion\n".encode("latin-1"))
    text = load_dataset_text(folder)
    assert any("not UTF-8" in p.message and p.file.endswith("reports.csv") for p in text.errors)
    (folder / "reports.csv").write_text("case_id,report\ncase_a,one\ncase_a,two\ncase_b,x\ncase_c,y\n")
    text = load_dataset_text(folder)
    assert [p.message for p in text.errors] == ["case 'case_a' has more than one report"]


def test_unknown_corpus_and_missing_reports_file(raw_dataset):
    folder = raw_dataset(reports="missing.json", label_texts="no_such_corpus")
    messages = [p.message for p in load_dataset_text(folder).errors]
    assert any("reports file does not exist" in m for m in messages)
    assert any("no_such_corpus" in m for m in messages)


def test_missing_reports_allowed_become_warnings(raw_dataset):
    folder = raw_dataset(reports={"case_a": "x"})
    assert load_dataset_text(folder).errors
    text = load_dataset_text(folder, require_reports=False)
    assert text.errors == [] and {p.severity for p in text.problems} == {"warning"}


def test_dataset_without_reports(raw_dataset):
    folder = raw_dataset()
    text = load_dataset_text(folder)
    assert [p.message for p in text.errors] == ["dataset has no reports"]
    assert load_dataset_text(folder, require_reports=False).errors == []


def test_bad_byte_is_located_and_the_rest_still_read(raw_dataset):
    """A non-UTF-8 byte is named by line and case; the other rows' problems come in the same run."""
    folder = raw_dataset(reports="reports.csv", label_texts={"liver": {"colour": "red"}})
    rows = "case_id,report\ncase_a,Lesion left.\ncase_b,l\xe9sion\ncase_c,\nghost,Right lobe.\ntest_x,Mass.\n"
    (folder / "reports.csv").write_bytes(rows.encode("latin-1"))
    text = load_dataset_text(folder)
    csv_errors = [p.message for p in text.errors if p.file.endswith("reports.csv")]
    assert csv_errors == ["line 3, case 'case_b': not UTF-8 text (byte 0xE9 at column 9)",
                          "line 4: report of case 'case_c' is empty",
                          "line 5: report for unknown case 'ghost' (no such image in imagesTr/imagesTs)"]
    assert text.reports == {"case_a": "Lesion left.", "test_x": "Mass."}  # nothing good is lost
    liver = [p for p in text.problems if "'liver'" in p.message]  # the invalid entry, not also "has no label text"
    assert len(liver) == 2 and all(p.severity == "error" for p in liver)
    with pytest.raises(TextContractError):
        text.raise_on_errors()  # planning still refuses


def test_bad_byte_in_a_json_reports_file_names_the_case(raw_dataset):
    folder = raw_dataset(reports="reports.json")
    body = '{\n"case_a": "ok",\n"case_b": "l\xe9sion",\n"case_c": "ok",\n"test_x": "ok"\n}'
    (folder / "reports.json").write_bytes(body.encode("latin-1"))
    text = load_dataset_text(folder)
    assert [p.message for p in text.errors] == ["line 3, case 'case_b': not UTF-8 text (byte 0xE9 at column 13)"]
    assert set(text.reports) == {"case_a", "case_c", "test_x"}


def test_reports_file_on_its_own_lists_every_problem(tmp_path):
    from nnunet_vl.text.contract import load_reports_file

    path = tmp_path / "extra.csv"
    path.write_bytes("case_id,report\na,fine\nb,\nc,l\xe9sion\n".encode("latin-1"))
    with pytest.raises(TextContractError) as e:
        load_reports_file(path)
    assert [p.message for p in e.value.problems] == ["line 4, case 'c': not UTF-8 text (byte 0xE9 at column 4)",
                                                     "line 3: report of case 'b' is empty"]
    path.write_text("case_id,report\na,Left   lobe.\n", encoding="utf-8")
    assert load_reports_file(path) == {"a": "Left lobe."}
