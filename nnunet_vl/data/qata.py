"""QaTa-COV19 (+ LViT reports) → nnU-Net v2 raw dataset, in the spirit of nnU-Net's ``dataset_conversion``.

Converts a user's own copy of QaTa-COV19 with the LViT text annotations into
``nnUNet_raw/DatasetXXX_QaTaCOV19`` (2D grey PNG, labels background/infection), plus the text keys of the
``nnunet_vl`` data contract (``reports``, ``label_texts``) and a ``splits_final.json`` whose fold 0 is the
original train/valid split. Two source layouts are accepted:

1. ``src/annotation.json`` = ``{"train": [{"image", "mask", "caption"}, ...], "valid": [...], "test": [...]}``
   (``test`` optional), paths relative to ``src``.
2. LViT's layout: ``src/{Train,Val,Test}_Folder/{img,labelcol}`` with ``{Train,Val,Test}_text.xlsx`` (or ``.csv``)
   holding columns ``Image`` and ``Description``; ``Test_Folder`` is optional.

Every problem found in the source is collected first and reported in one :class:`ConversionError`; the dataset is
built in a temporary folder next to the target and renamed into place only when everything succeeded.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

__all__ = ["ConversionError", "convert_qata", "QATA_LABEL_TEXTS"]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_ALIASES: dict[str, str] = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                                  "validation": "valid", "test": "test", "testing": "test"}
_LVIT_FOLDERS: dict[str, tuple[str, str]] = {  # split -> (folder name, text file stem)
    "train": ("Train_Folder", "Train_text"),
    "valid": ("Val_Folder", "Val_text"),
    "test": ("Test_Folder", "Test_text"),
}
_IMAGE_EXTS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_MASK_PREFIX = "mask_"
_PROGRESS_EVERY = 250

QATA_LABEL_TEXTS: dict[str, dict[str, str]] = {
    "background": {
        "definition": "Everything on the chest radiograph that is not COVID-19 pulmonary infection: normally "
                      "aerated lung, heart and mediastinum, diaphragm, ribs, clavicles, spine, soft tissue and the "
                      "area outside the body.",
        "shape": "No single shape; it fills the whole image around the infected regions, including both lung "
                 "fields with their rounded apices and dome-shaped bases.",
        "location": "The entire frame outside the infected areas: both lung fields, the central mediastinum and "
                    "heart, the bony thorax, the upper abdomen and the image margins.",
        "appearance": "Healthy lung is dark (radiolucent) because it is filled with air; bones, heart and "
                      "diaphragm are bright; the margins may show text labels, markers, tubes or lines.",
        "contour": "Sharp, well-defined edges at the ribs, heart border and diaphragm; towards infection the dark "
                   "lung turns gradually hazy.",
        "texture": "Lung fields show fine, regular branching vessel markings on a dark background; bone and soft "
                   "tissue look smooth and homogeneous.",
    },
    "infection": {
        "definition": "COVID-19 pneumonia: lung regions whose air spaces are partly or completely filled by "
                      "inflammatory fluid and cells, seen on chest X-ray as ground-glass opacity or consolidation.",
        "shape": "Irregular, patchy and often multifocal regions, from small round or band-like patches to large "
                 "confluent areas covering most of one or both lungs.",
        "location": "Inside the lung fields, usually bilateral, peripheral and predominant in the lower zones; it "
                    "may involve the upper, middle and lower zones of the left and/or right lung.",
        "appearance": "Brighter and hazier than normal lung: ground-glass opacity through which vessels remain "
                      "visible, or denser white consolidation that hides them, sometimes with air bronchograms.",
        "contour": "Ill-defined, fuzzy margins that fade gradually into the surrounding lung, sharp only where "
                   "the opacity meets a fissure, the pleura or the diaphragm.",
        "texture": "Hazy, cloudy or mottled, with uneven density within a region and sometimes a reticular or "
                   "nodular pattern over the opacity.",
    },
}

_SOURCE_INFO: dict[str, Any] = {
    "images_and_masks": "QaTa-COV19 (Degerli et al., Qatar University and Tampere University): chest X-rays with "
                        "COVID-19 infection masks",
    "reports": "Text annotations made for LViT (Li et al., 'LViT: Language meets Vision Transformer in Medical "
               "Image Segmentation', IEEE TMI 2023)",
    "splits": "splits_final.json fold 0 = original train (train) vs valid (val); test cases are in imagesTs/labelsTs",
    "label_conversion": "masks 0/255 -> 0/1",
    "converted_by": "nnunet_vl.data.qata.convert_qata",
}


class ConversionError(ValueError):
    """The source cannot be converted; the message lists every problem with its file and the fix."""


@dataclass
class _Case:
    split: str
    image: Path
    mask: Path | None
    report: str | None
    case_id: str = ""


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, file: Path | str, what: str, fix: str) -> None:
        self.items.append(f"{file}: {what}. Fix: {fix}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, header: str) -> None:
        if self.items:
            lines = "\n".join(f"  - {p}" for p in self.items)
            raise ConversionError(f"{header} ({len(self.items)} problem(s)):\n{lines}")


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def convert_qata(src: Path, dataset_id: int, raw_root: Path | None = None, preprocessed_root: Path | None = None,
                 name: str = "QaTaCOV19", overwrite: bool = False) -> Path:
    """Convert a QaTa-COV19 copy at ``src`` into ``raw_root/DatasetXXX_<name>`` and return that folder.

    ``raw_root`` defaults to env ``nnUNet_raw`` and ``preprocessed_root`` to env ``nnUNet_preprocessed`` (only
    used to place ``splits_final.json`` where nnU-Net reads it). Train and valid images go to imagesTr/labelsTr,
    test images to imagesTs/labelsTs. Images must be 2D; RGB(A)/palette/LA images are converted to 8-bit grey
    ("L", ITU-R 601 luma) and 16-bit grey is kept. Masks are binarised to 0/1 (0/255 or 0/1 as given; other
    grey values are thresholded at half range, with a printed note). Case ids are the image file stems sanitised
    to ``[A-Za-z0-9_-]`` and made unique; ``case_mapping.json`` maps them back to the source files.

    Raises :class:`ConversionError` listing every problem in the source (nothing is written then), or if the
    target exists and ``overwrite`` is False.
    """
    start = time.perf_counter()
    src = Path(src).expanduser().resolve()
    raw_root = _root_from(raw_root, "nnUNet_raw", required=True)
    preprocessed_root = _root_from(preprocessed_root, "nnUNet_preprocessed", required=False)
    assert raw_root is not None
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConversionError(f"dataset name {name!r}: only letters, digits, '_' and '-' are allowed. "
                              f"Fix: pass e.g. name='QaTaCOV19'")
    if not 0 < int(dataset_id) < 1000:
        raise ConversionError(f"dataset id {dataset_id}: nnU-Net needs 1..999. Fix: pick a free id in that range")
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    target = raw_root / dataset_name
    _check_target(target, raw_root, int(dataset_id), overwrite)
    if not src.is_dir():
        raise ConversionError(f"{src}: source folder does not exist. Fix: pass the folder holding your QaTa-COV19 "
                              f"copy (annotation.json or Train_Folder/Val_Folder)")

    problems = _Problems()
    layout, cases = _collect_cases(src, problems)
    _assign_case_ids(cases)
    n_total = len(cases)
    print(f"QaTa-COV19: {layout} layout, " + ", ".join(
        f"{s} {sum(c.split == s for c in cases)}" for s in SPLITS) + f" -> {target}", flush=True)

    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_name}.tmp-", dir=raw_root))
    try:
        notes = _convert_files(cases, src, tmp, problems)
        problems.raise_if_any(f"QaTa-COV19 at {src} cannot be converted; nothing was written")
        _write_metadata(tmp, cases, src, layout, dataset_name)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in notes:
        print(f"QaTa-COV19 note: {note}", flush=True)
    if preprocessed_root is not None:
        _write_preprocessed_splits(preprocessed_root / dataset_name, _splits(cases))
    print(f"QaTa-COV19: wrote {n_total} cases to {target} in {time.perf_counter() - start:.1f} s", flush=True)
    return target


# ----------------------------------------------------------------------------------------------------------------
# roots and target
# ----------------------------------------------------------------------------------------------------------------
def _root_from(value: Path | str | None, env: str, required: bool) -> Path | None:
    if value is None:
        value = os.environ.get(env) or None
    if value is None:
        if required:
            raise ConversionError(f"no output folder: raw_root was not given and env {env} is not set. "
                                  f"Fix: pass raw_root=... or export {env}=/path/to/nnUNet_raw")
        return None
    return Path(value).expanduser().resolve()


def _check_target(target: Path, raw_root: Path, dataset_id: int, overwrite: bool) -> None:
    if raw_root.is_dir():
        clashes = [p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != target]
        if clashes:
            raise ConversionError(f"{raw_root}: dataset id {dataset_id} is already used by {', '.join(clashes)}. "
                                  f"Fix: choose another dataset_id (nnU-Net identifies datasets by id)")
    if target.exists() and not overwrite:
        raise ConversionError(f"{target}: dataset already exists. Fix: pass overwrite=True to replace it, or "
                              f"choose another dataset_id")


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    old: Path | None = None
    if target.exists():
        if not overwrite:  # appeared while we were converting
            raise ConversionError(f"{target}: dataset already exists. Fix: pass overwrite=True")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_preprocessed_splits(folder: Path, splits: list[dict[str, list[str]]]) -> None:
    if folder.is_dir() and any(p.name != "splits_final.json" for p in folder.iterdir()):
        print(f"QaTa-COV19 note: {folder} already holds preprocessed data from an earlier dataset with this id; "
              f"re-run nnUNetv2_plan_and_preprocess", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    _dump_json_atomic(folder / "splits_final.json", splits)


def _dump_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# collecting cases
# ----------------------------------------------------------------------------------------------------------------
def _collect_cases(src: Path, problems: _Problems) -> tuple[str, list[_Case]]:
    annotation = src / "annotation.json"
    lvit_train = _child_ci(src, _LVIT_FOLDERS["train"][0])
    if annotation.is_file():
        if lvit_train is not None:
            print(f"QaTa-COV19 note: {src} has both annotation.json and {lvit_train.name}; using annotation.json",
                  flush=True)
        cases = _collect_annotation(src, annotation, problems)
        layout = "annotation.json"
    elif lvit_train is not None:
        cases = _collect_lvit(src, problems)
        layout = "LViT"
    else:
        raise ConversionError(f"{src}: no QaTa-COV19 layout found. Fix: point src at a folder holding either "
                              f"annotation.json ({{'train': [{{'image', 'mask', 'caption'}}], 'valid': [...]}}) or "
                              f"LViT's Train_Folder/ and Val_Folder/ (img/, labelcol/, *_text.xlsx)")
    return layout, cases


def _collect_annotation(src: Path, annotation: Path, problems: _Problems) -> list[_Case]:
    try:
        data = json.loads(annotation.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{annotation}: unreadable ({e}). Fix: repair the JSON (UTF-8)") from e
    if not isinstance(data, dict):
        raise ConversionError(f"{annotation}: top level must be an object {{'train': [...], 'valid': [...]}}. "
                              f"Fix: restructure the file")
    cases: list[_Case] = []
    seen: dict[Path, str] = {}
    found_splits: set[str] = set()
    for key, entries in data.items():
        split = _SPLIT_ALIASES.get(str(key).lower())
        if not isinstance(entries, list):
            continue  # metadata, not a split
        if split is None:
            problems.add(annotation, f"unknown split key {key!r}", "rename it to 'train', 'valid' or 'test'")
            continue
        if split in found_splits:
            problems.add(annotation, f"split {split!r} is given twice (key {key!r})", "merge the two lists")
            continue
        found_splits.add(split)
        for i, entry in enumerate(entries):
            where = f"{annotation} [{key!r}][{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                problems.add(where, "entry has no 'image' path", "give each entry 'image', 'mask' and 'caption'")
                continue
            image = _resolve_ci(src, entry["image"])
            if image is None:
                problems.add(src / entry["image"], f"report for an unknown image ({where} names a missing file)",
                             "fix the 'image' path or remove the entry")
                continue
            if image in seen:
                problems.add(image, f"image listed twice ({seen[image]} and {where})", "remove one entry")
                continue
            seen[image] = where
            mask: Path | None = None
            if not isinstance(entry.get("mask"), str):
                problems.add(image, f"missing mask ({where} has no 'mask')", "add the mask path to the entry")
            else:
                mask = _resolve_ci(src, entry["mask"])
                if mask is None:
                    problems.add(src / entry["mask"], f"missing mask for {image.name} ({where})",
                                 "put the mask file there or fix the 'mask' path")
            report = _clean_report(entry.get("caption"))
            if report is None:
                problems.add(image, f"image without report ({where} has no non-empty 'caption')",
                             "add the report as 'caption'")
            cases.append(_Case(split, image, mask, report))
        if not entries and split != "test":
            problems.add(annotation, f"split {key!r} is empty", f"list the {split} cases")
    for split in ("train", "valid"):
        if split not in found_splits:
            problems.add(annotation, f"no {split!r} list", f"add \"{split}\": [...] (fold 0 is train vs valid)")
    return cases


def _collect_lvit(src: Path, problems: _Problems) -> list[_Case]:
    cases: list[_Case] = []
    for split, (folder_name, text_stem) in _LVIT_FOLDERS.items():
        folder = _child_ci(src, folder_name)
        if folder is None:
            if split != "test":
                problems.add(src / folder_name, f"'{split}' folder missing",
                             f"add {folder_name}/ with img/, labelcol/ and {text_stem}.xlsx")
            continue
        img_dir, mask_dir = _child_ci(folder, "img"), _child_ci(folder, "labelcol")
        text_file = _find_text_file(folder, src, text_stem)
        for sub, path in (("img", img_dir), ("labelcol", mask_dir)):
            if path is None:
                problems.add(folder / sub, f"'{split}' {sub}/ folder missing",
                             f"put the {'images' if sub == 'img' else 'masks'} in {folder / sub}")
        if text_file is None:
            problems.add(folder / f"{text_stem}.xlsx", f"'{split}' report table missing",
                         f"add {text_stem}.xlsx or {text_stem}.csv with columns Image, Description")
        if img_dir is None or mask_dir is None:
            continue
        if not _index_files(img_dir, strip_prefix=False) and split != "test":
            problems.add(img_dir, f"no images in the '{split}' img/ folder", "put the PNG images there")
        rows = _read_text_table(text_file, problems) if text_file is not None else None
        cases.extend(_match_lvit_split(split, img_dir, mask_dir, text_file, rows, problems))
    return cases


def _match_lvit_split(split: str, img_dir: Path, mask_dir: Path, text_file: Path | None,
                      rows: list[tuple[str, str | None, int]] | None, problems: _Problems) -> list[_Case]:
    images = _index_files(img_dir, strip_prefix=False)
    masks = _index_files(mask_dir, strip_prefix=True)
    for key, files in list(images.items()):
        if len(files) > 1:
            problems.add(files[0], f"image names clash when case is ignored: {', '.join(f.name for f in files)}",
                         "rename or remove all but one")
            del images[key]
    reports: dict[str, list[tuple[str | None, int, str]]] = {}
    for raw_name, text, row in rows or []:
        reports.setdefault(_without_prefix(_name_key(raw_name)), []).append((text, row, raw_name))

    cases: list[_Case] = []
    used_masks: set[str] = set()
    used_reports: set[str] = set()
    for key in sorted(images):
        image = images[key][0]
        mask: Path | None = None
        candidates = masks.get(key, [])
        if len(candidates) == 1:
            mask = candidates[0]
        elif len(candidates) > 1:
            problems.add(image, f"several masks match: {', '.join(c.name for c in candidates)}",
                         "keep only one of them in labelcol/")
        else:
            problems.add(image, f"missing mask (looked for {_MASK_PREFIX}{image.stem}.* or {image.stem}.* in "
                                f"{mask_dir})", f"add the mask as {mask_dir / (_MASK_PREFIX + image.name)}")
        used_masks.add(key)
        report: str | None = None
        if rows is not None:
            hits = reports.get(key, [])
            used_reports.add(key)
            texts = {t for t, _, _ in hits if t is not None}
            if len(texts) == 1:
                report = texts.pop()
            elif len(texts) > 1:
                problems.add(text_file or image, f"conflicting reports for {image.name} (rows "
                             f"{', '.join(str(r) for _, r, _ in hits)})", "keep one row per image")
            else:
                problems.add(image, f"image without report in {text_file}",
                             f"add a row Image={image.name} with its Description")
        cases.append(_Case(split, image, mask, report))

    image_names = [files[0].name for files in images.values()]
    for key, files in sorted(masks.items()):
        if key not in used_masks:
            for f in files:
                problems.add(f, "mask without a matching image" + _closest(f.name, image_names),
                             f"rename it to {_MASK_PREFIX}<image file name> or add the image to {img_dir}")
    for key, hits in sorted(reports.items()):
        if key not in used_reports:
            for _, row, raw_name in hits:
                problems.add(text_file or img_dir, f"report for an unknown image {raw_name!r} (row {row})"
                             + _closest(raw_name, image_names), f"fix the Image name or add the image to {img_dir}")
    return cases


def _read_text_table(path: Path, problems: _Problems) -> list[tuple[str, str | None, int]] | None:
    """Rows (image name, report or None, 1-based spreadsheet row) of an LViT ``*_text.xlsx``/``.csv``."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        else:
            df = pd.read_excel(path, dtype=str, keep_default_na=False)
    except ImportError as e:
        problems.add(path, f"cannot read the spreadsheet ({e})",
                     "pip install openpyxl, or save the sheet as .csv with columns Image, Description")
        return None
    except Exception as e:  # pandas raises many types for broken files
        problems.add(path, f"unreadable report table ({type(e).__name__}: {e})", "re-export the file")
        return None
    columns = {str(c).strip().lower(): c for c in df.columns}
    if "image" not in columns or "description" not in columns:
        problems.add(path, f"columns are {list(map(str, df.columns))}, expected Image and Description",
                     "rename the header cells to Image and Description")
        return None
    rows: list[tuple[str, str | None, int]] = []
    for i, (name, text) in enumerate(zip(df[columns["image"]], df[columns["description"]])):
        name = str(name).strip()
        if not name and not str(text).strip():
            continue  # blank spreadsheet row
        row = i + 2  # header is row 1
        if not name:
            problems.add(path, f"row {row} has a report but no Image name", "fill in the Image cell")
            continue
        rows.append((name, _clean_report(text), row))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------------------------
def _name_key(name: str) -> str:
    """Lower-case file name without folders and without an image extension."""
    base = PurePosixPath(name.strip().replace("\\", "/")).name
    suffix = PurePosixPath(base).suffix
    if suffix.lower() in _IMAGE_EXTS:
        base = base[: -len(suffix)]
    return base.lower()


def _without_prefix(key: str) -> str:
    return key[len(_MASK_PREFIX):] if key.startswith(_MASK_PREFIX) and len(key) > len(_MASK_PREFIX) else key


def _index_files(folder: Path, strip_prefix: bool) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in _IMAGE_EXTS:
            key = _name_key(f.name)
            index.setdefault(_without_prefix(key) if strip_prefix else key, []).append(f)
    return index


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (closest image: {match[0]})" if match else ""


def _child_ci(folder: Path, name: str) -> Path | None:
    exact = folder / name
    if exact.exists():
        return exact
    if not folder.is_dir():
        return None
    hits = [p for p in folder.iterdir() if p.name.lower() == name.lower()]
    return hits[0] if len(hits) == 1 else None


def _resolve_ci(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it exists, else the same path matched case-insensitively part by part."""
    exact = root / relative
    if exact.is_file():
        return exact
    current = root
    for part in PurePosixPath(relative.replace("\\", "/")).parts:
        nxt = _child_ci(current, part)
        if nxt is None:
            return None
        current = nxt
    return current if current.is_file() else None


def _find_text_file(folder: Path, src: Path, stem: str) -> Path | None:
    for where in (folder, src):
        for ext in (".xlsx", ".xls", ".csv"):
            hit = _child_ci(where, stem + ext)
            if hit is not None and hit.is_file():
                return hit
    return None


def _clean_report(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text or None


def _assign_case_ids(cases: list[_Case]) -> None:
    """Case id = sanitised image stem, made unique case-insensitively (``_2``, ``_3`` ... on clashes)."""
    taken: set[str] = set()
    for case in cases:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", case.image.stem).strip("_") or "case"
        case_id, n = base, 1
        while case_id.lower() in taken:
            n += 1
            case_id = f"{base}_{n}"
        taken.add(case_id.lower())
        case.case_id = case_id


# ----------------------------------------------------------------------------------------------------------------
# pixels
# ----------------------------------------------------------------------------------------------------------------
def _convert_files(cases: list[_Case], src: Path, out: Path, problems: _Problems) -> list[str]:
    """Read, check and (while no problem is known) write every image and mask; return notes to print."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir()
    rgb_converted, colour_images, thresholded = 0, [], []
    for i, case in enumerate(cases, 1):
        test = case.split == "test"
        image, image_note = _load_image(case.image, problems)
        if image_note == "rgb":
            rgb_converted += 1
        elif image_note == "colour":
            rgb_converted += 1
            colour_images.append(case.image.name)
        loaded = _load_mask(case.mask, problems) if case.mask is not None else None
        mask: np.ndarray | None = None
        if loaded is not None and case.mask is not None:
            mask, was_thresholded = loaded
            if was_thresholded:
                thresholded.append(case.mask.name)
            if image is not None and mask.shape != (image.height, image.width):
                problems.add(case.mask, f"mask is {mask.shape[1]}x{mask.shape[0]} but image {case.image.name} is "
                             f"{image.width}x{image.height}", "resize the mask (nearest neighbour) to the image")
        if not problems and image is not None and mask is not None and case.report is not None:
            image.save(out / ("imagesTs" if test else "imagesTr") / f"{case.case_id}_0000.png", format="PNG")
            Image.fromarray(mask).save(out / ("labelsTs" if test else "labelsTr") / f"{case.case_id}.png",
                                       format="PNG")
        if i % _PROGRESS_EVERY == 0 or i == len(cases):
            print(f"QaTa-COV19: {i}/{len(cases)} images checked", flush=True)
    notes: list[str] = []
    if rgb_converted:
        notes.append(f"{rgb_converted} non-grey image(s) converted to 8-bit grey"
                     + (f"; {len(colour_images)} had differing colour channels, e.g. {colour_images[:3]}"
                        if colour_images else " (their channels were equal, so nothing was lost)"))
    if thresholded:
        notes.append(f"{len(thresholded)} mask(s) had more than two grey values and were thresholded at half "
                     f"range, e.g. {thresholded[:3]}")
    return notes


def _load_image(path: Path, problems: _Problems) -> tuple[Image.Image | None, str]:
    """2D grey image ready to save, and a note: "" (as is), "rgb" (equal channels) or "colour"."""
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                problems.add(path, f"image has {img.n_frames} frames, expected one 2D image", "export a 2D image")
                return None, ""
            img.load()
            mode = img.mode
            if mode in ("L", "I;16", "I;16B", "I;16L"):
                return img.copy(), ""
            if mode == "I":
                arr = np.asarray(img)
                if arr.min() < 0 or arr.max() > 65535:
                    problems.add(path, "32-bit image with values outside 0..65535", "export as 8- or 16-bit grey")
                    return None, ""
                return Image.fromarray(arr.astype(np.uint16)), ""
            if mode in ("RGB", "RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr", "La", "RGBa"):
                colour = False
                if mode in ("RGB", "RGBA"):
                    rgb = np.asarray(img)[..., :3]
                    colour = bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
                return img.convert("L"), "colour" if colour else "rgb"
            problems.add(path, f"unsupported image mode {mode!r}", "export as 8-bit grey PNG")
            return None, ""
    except Exception as e:  # PIL raises many types for broken files
        problems.add(path, f"unreadable image ({type(e).__name__}: {e})", "replace the file with a valid image")
        return None, ""


def _load_mask(path: Path, problems: _Problems) -> tuple[np.ndarray, bool] | None:
    """0/1 uint8 mask and whether it needed thresholding (values other than {0, v})."""
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                problems.add(path, f"mask has {img.n_frames} frames, expected one 2D mask", "export a 2D mask")
                return None
            img.load()
            arr = np.asarray(img)
            if arr.ndim == 3:
                same = all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[-1], 3)))
                arr = arr[..., 0] if same else np.asarray(img.convert("L"))
    except Exception as e:
        problems.add(path, f"unreadable mask ({type(e).__name__}: {e})", "replace the file with a valid mask PNG")
        return None
    values = np.unique(arr)
    if values.size and values.min() < 0:
        problems.add(path, f"mask has negative values {values[:5].tolist()}", "export a 0/255 mask")
        return None
    if values.size <= 2 and (values.size < 2 or values[0] == 0):
        return (arr > 0).astype(np.uint8), False
    half = 127 if arr.dtype == np.uint8 else (32767 if arr.dtype == np.uint16 else float(arr.max()) / 2)
    return (arr > half).astype(np.uint8), True


# ----------------------------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------------------------
def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _splits(cases: list[_Case]) -> list[dict[str, list[str]]]:
    return [{"train": [c.case_id for c in cases if c.split == "train"],
             "val": [c.case_id for c in cases if c.split == "valid"]}]


def _write_metadata(out: Path, cases: list[_Case], src: Path, layout: str, dataset_name: str) -> None:
    counts = {s: sum(c.split == s for c in cases) for s in SPLITS}
    _dump_json_atomic(out / "reports.json", {c.case_id: c.report for c in cases})
    _dump_json_atomic(out / "case_mapping.json", {c.case_id: {
        "split": c.split, "image": _relative(c.image, src),
        "mask": _relative(c.mask, src) if c.mask else None} for c in cases})
    _dump_json_atomic(out / "splits_final.json", _splits(cases))
    source = dict(_SOURCE_INFO, layout=layout, converted_from=str(src), case_mapping="case_mapping.json",
                  counts=counts)
    generate_dataset_json(
        str(out), channel_names={0: "X-ray"}, labels={"background": 0, "infection": 1},
        num_training_cases=counts["train"] + counts["valid"], file_ending=".png", dataset_name=dataset_name,
        description="COVID-19 pulmonary infection on chest X-ray (QaTa-COV19) with LViT text reports",
        reference="Degerli et al., QaTa-COV19; Li et al., LViT, IEEE TMI 2023",
        license="See the terms of your QaTa-COV19 download and of the LViT text annotations",
        converted_by="nnunet_vl.data.qata.convert_qata",
        reports="reports.json", label_texts=QATA_LABEL_TEXTS, source=source, numTest=counts["test"],
    )
