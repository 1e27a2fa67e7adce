"""`nnunet_vl show`: one PNG with a case's image, reference contour, predicted fill and report underneath."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

FIG_WIDTH_IN = 6.0
DPI = 150
TEXT_FONTSIZE = 9
LINE_HEIGHT_IN = TEXT_FONTSIZE * 1.45 / 72
REFERENCE_COLOURS = ("#00e5ff", "#ffe600", "#ff00ff", "#00ff66", "#ff8800", "#ffffff")
PREDICTION_CMAP = "autumn"


def raw_dataset_folder(dataset: str | int) -> Path:
    """`$nnUNet_raw/DatasetXXX_*` for a dataset id or name, with a clear error when it is not there."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (show reads the raw dataset)")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise ValueError(f"no dataset with id {dataset} in nnUNet_raw={raw}, nnUNet_preprocessed or nnUNet_results: "
                         f"pass an existing id or DatasetXXX_Name") from e
    folder = Path(raw) / name
    if not (folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{folder / 'dataset.json'} does not exist: show needs the raw dataset of {name} "
                                f"in nnUNet_raw={raw}")
    return folder


def case_files(folder: Path, dataset_json: dict, case: str) -> tuple[list[str], str | None]:
    """The case's image files and its reference label (None if it has none), from imagesTr/Ts, labelsTr/Ts."""
    from nnunetv2.utilities.utils import (create_lists_from_splitted_dataset_folder,
                                          get_filenames_of_train_images_and_targets,
                                          get_identifiers_from_splitted_dataset_folder)

    ending = dataset_json["file_ending"]
    train = get_filenames_of_train_images_and_targets(str(folder), dict(dataset_json))
    if case in train:
        label = train[case]["label"]
        return list(train[case]["images"]), label if os.path.isfile(label) else None
    test_dir = folder / "imagesTs"
    test = get_identifiers_from_splitted_dataset_folder(str(test_dir), ending) if test_dir.is_dir() else []
    if case in test:
        images = create_lists_from_splitted_dataset_folder(str(test_dir), ending, [case])[0]
        label = folder / "labelsTs" / f"{case}{ending}"
        return images, str(label) if label.is_file() else None
    known = sorted(train) + sorted(test)
    hint = f" (cases: {', '.join(known[:3])}{' ...' if len(known) > 3 else ''})" if known else ""
    raise ValueError(f"case '{case}' is not in {folder} (no {case}_0000{ending} in imagesTr or imagesTs): pass a "
                     f"case id of that dataset{hint}")


def prediction_file(prediction: Path, case: str, ending: str) -> Path:
    """A prediction file, or `<case><ending>` inside a prediction folder; must exist."""
    prediction = Path(prediction)
    path = prediction / f"{case}{ending}" if prediction.is_dir() else prediction
    if not path.is_file():
        where = f"folder {prediction} has no {case}{ending}" if prediction.is_dir() else f"{path} does not exist"
        raise FileNotFoundError(f"prediction not found: {where}; pass --prediction with the predicted file or the "
                                f"output folder of nnUNetv2_predict_vl that holds {case}{ending}")
    return path


def case_report(case: str, dataset_name: str, raw_folder: Path, reports: str | None = None) -> tuple[str | None, str]:
    """(report, where it came from): --reports FILE, else the text cache, else the raw dataset's reports."""
    if reports is not None:
        from nnunet_vl.text.contract import load_reports_file

        found = load_reports_file(reports)
        if case not in found:
            raise ValueError(f"{reports} has no report for case '{case}': add it, or leave out --reports to use "
                             f"the dataset's reports")
        return found[case], str(reports)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed:
        from nnunet_vl.text.cache import TextCacheMissingError, load_text_cache, text_cache_dir

        try:
            cache = load_text_cache(Path(preprocessed) / dataset_name)
        except TextCacheMissingError:
            cache = None
        if cache is not None and case in cache.reports:
            return cache.reports[case], str(text_cache_dir(Path(preprocessed) / dataset_name) / "text_cache.json")
    from nnunet_vl.text.contract import load_dataset_text

    text = load_dataset_text(raw_folder, require_reports=False)
    if case in text.reports:
        return text.reports[case], f"raw dataset {raw_folder.name}"
    return None, "no report found"


def _pick_slice(depth: int, volumes: list[np.ndarray | None]) -> int:
    """Axial index through the centre of the first non-empty foreground (prediction, then label), else the middle."""
    for volume in volumes:
        if volume is not None and np.any(volume > 0):
            slices = np.flatnonzero(np.any(volume > 0, axis=(1, 2)))
            centre = (slices.min() + slices.max()) / 2
            return int(slices[np.argmin(np.abs(slices - centre))])
    return depth // 2


def _label_names(dataset_json: dict) -> dict[int, str]:
    return {int(v): k for k, v in dataset_json.get("labels", {}).items() if isinstance(v, int)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def wrap_to_width(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Greedy word wrap where fits(line) says whether a line fits; words too long for a line are split."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split() or [""]:
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line:
                lines.append(line)
            while not fits(word) and len(word) > 1:
                cut = max(i for i in range(1, len(word)) if fits(word[:i]) or i == 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def render_overlay(image: np.ndarray, reference: np.ndarray | None, prediction: np.ndarray | None, report: str | None,
                   report_source: str, title: str, label_names: dict[int, str], out: Path) -> Path:
    """Write the PNG: 2D image (grey), reference contours, translucent prediction, wrapped report below."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    height, width = image.shape
    image_h_in = FIG_WIDTH_IN * 0.96 * min(max(height / width, 0.3), 3.0)
    fig = Figure(figsize=(FIG_WIDTH_IN, 1.0), dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=TEXT_FONTSIZE)
    max_px = FIG_WIDTH_IN * 0.94 * DPI
    lines = wrap_to_width(report if report is not None else "(no report)",
                          lambda s: renderer.get_text_width_height_descent(s, font, ismath=False)[0] <= max_px)
    text_h_in = LINE_HEIGHT_IN * (len(lines) + 1) + 0.55  # + source line and legend
    title_h_in = 0.35
    fig_h_in = title_h_in + image_h_in + text_h_in
    fig.set_size_inches(FIG_WIDTH_IN, fig_h_in)
    ax = fig.add_axes((0.02, text_h_in / fig_h_in, 0.96, image_h_in / fig_h_in))
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0, 1)
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
    handles = []
    if prediction is not None and np.any(prediction > 0):
        masked = np.ma.masked_where(prediction <= 0, prediction)
        ax.imshow(masked, cmap=PREDICTION_CMAP, alpha=0.45, interpolation="nearest",
                  vmin=1, vmax=max(int(prediction.max()), 2))
    if prediction is not None:
        handles.append(Patch(facecolor=colormaps[PREDICTION_CMAP](0.0), alpha=0.45, label="prediction (fill)"))
    if reference is not None:
        for i, value in enumerate(v for v in np.unique(reference) if v > 0):
            colour = REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)]
            ax.contour(reference == value, levels=[0.5], colors=[colour], linewidths=1.2)
            handles.append(Line2D([], [], color=colour, label=f"reference: {label_names.get(int(value), value)}"))
    ax.set_axis_off()
    fig.text(0.5, 1 - title_h_in / 2 / fig_h_in, title, ha="center", va="center", fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 3), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, text_h_in / fig_h_in))
    top = (text_h_in - 0.3) / fig_h_in
    fig.text(0.03, top, f"Report ({report_source}):", ha="left", va="top", fontsize=TEXT_FONTSIZE - 1,
             color="#555555")
    fig.text(0.03, top - LINE_HEIGHT_IN / fig_h_in, "\n".join(lines), ha="left", va="top", fontproperties=font,
             linespacing=1.3, style="italic" if report is None else "normal")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1)  # tight: never cut text off
    return out


def show_case(case: str, dataset: str | int, prediction: Path | None = None, out: Path | None = None,
              reports: str | None = None) -> Path:
    """Write `<case>_overlay.png` (or out): image channel 0 (3D: the axial slice through the centre of the predicted,
    else labelled foreground, else the middle), reference contour, translucent prediction, report text."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    folder = raw_dataset_folder(dataset)
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    ending = dataset_json["file_ending"]
    images, label = case_files(folder, dataset_json, case)
    predicted = prediction_file(prediction, case, ending) if prediction is not None else None
    report, source = case_report(case, folder.name, folder, reports)

    io = determine_reader_writer_from_dataset_json(dataset_json, images[0], verbose=False)()
    data, _ = io.read_images(images[:1])
    volume = data[0]  # (z, y, x); 2D readers give z = 1
    reference = io.read_seg(label)[0][0] if label is not None else None
    pred = io.read_seg(str(predicted))[0][0] if predicted is not None else None
    for name, seg in (("reference label " + str(label), reference), ("prediction " + str(predicted), pred)):
        if seg is not None and seg.shape != volume.shape:
            raise ValueError(f"{name} has shape {seg.shape} but the image {images[0]} has {volume.shape}: pass the "
                             f"segmentation of case '{case}' in the image's geometry")
    z = _pick_slice(volume.shape[0], [pred, reference])
    title = f"{case} | {folder.name}" + (f" | axial slice {z}/{volume.shape[0]}" if volume.shape[0] > 1 else "")
    if pred is not None and reference is not None:
        title += f" | Dice {_dice(pred, reference):.3f}"
    out = Path(out) if out is not None else Path.cwd() / f"{case}_overlay.png"
    return render_overlay(volume[z].astype(np.float32), None if reference is None else reference[z],
                          None if pred is None else pred[z], report, source, title, _label_names(dataset_json), out)
