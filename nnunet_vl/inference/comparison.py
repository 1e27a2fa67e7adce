"""One PNG comparing predictions of a few cases side by side: image with reference, then one panel per model."""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_vl.inference.show import _dice, _pick_slice, case_files

PANEL_IN = 2.2
DPI = 110
REPORT_CHARS_PER_LINE = 110


@dataclass(frozen=True)
class Panel:
    """A column of the figure: a title and the folder of predicted segmentations it shows."""

    title: str
    predictions: Path


def render_comparison(dataset_folder: Path, cases: list[str], panels: list[Panel], reports: dict[str, list[str]],
                      out: Path) -> Path:
    """Write out: per case a row with the image (reference contour) and each panel's prediction (fill, Dice),
    and below it the case's report lines (reports[case], e.g. the own and the shuffled report)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    dataset_json = json.loads((dataset_folder / "dataset.json").read_text(encoding="utf-8"))
    ending = dataset_json["file_ending"]
    columns = 1 + len(panels)
    wrapped = {case: [line for text in reports.get(case, []) for line in textwrap.wrap(text, REPORT_CHARS_PER_LINE)]
               for case in cases}
    text_in = [0.18 * (len(wrapped[c]) + 0.5) for c in cases]
    height = sum(PANEL_IN + t for t in text_in) + 0.3
    fig = Figure(figsize=(PANEL_IN * columns, height), dpi=DPI)
    FigureCanvasAgg(fig)
    io = None
    top = height - 0.3
    for case, text_h in zip(cases, text_in):
        images, label = case_files(dataset_folder, dataset_json, case)
        io = io or determine_reader_writer_from_dataset_json(dataset_json, images[0], verbose=False)()
        volume = io.read_images(images[:1])[0][0]
        reference = io.read_seg(label)[0][0] if label is not None else None
        predicted = [io.read_seg(str(p.predictions / f"{case}{ending}"))[0][0] for p in panels]
        z = _pick_slice(volume.shape[0], [reference, *predicted])
        image = volume[z].astype(np.float32)
        low, high = np.percentile(image, [0.5, 99.5])
        row_bottom = (top - PANEL_IN) / height
        for column in range(columns):
            ax = fig.add_axes((column / columns + 0.005, row_bottom, 1 / columns - 0.01, (PANEL_IN - 0.25) / height))
            ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
            if column == 0:
                title = case + (f" (slice {z})" if volume.shape[0] > 1 else "")
            else:
                seg = predicted[column - 1]
                ax.imshow(np.ma.masked_where(seg[z] <= 0, seg[z]), cmap="autumn", alpha=0.5, interpolation="nearest")
                title = panels[column - 1].title
                if reference is not None:
                    title += f"\nDice {_dice(seg, reference):.2f}"
            if reference is not None:
                ax.contour(reference[z] > 0, levels=[0.5], colors=["#00e5ff"], linewidths=1.0)
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
        fig.text(0.01, row_bottom - 0.03 / height, "\n".join(wrapped[case]), ha="left", va="top", fontsize=6.5,
                 family="monospace")
        top -= PANEL_IN + text_h
    fig.text(0.5, 1 - 0.12 / height, "cyan contour: reference; fill: prediction", ha="center", va="center",
             fontsize=7, color="#555555")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    return out
