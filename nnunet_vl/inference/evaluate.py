"""Dice of a prediction folder against reference segmentations, computed by nnU-Net's evaluation."""
from __future__ import annotations

import json
from pathlib import Path


def folder_metrics(reference_folder: Path, prediction_folder: Path, dataset_folder: Path) -> dict:
    """nnU-Net's metrics summary (per case, per class and foreground mean) for all predicted cases."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset_json = json.loads((dataset_folder / "dataset.json").read_text(encoding="utf-8"))
    ending = dataset_json["file_ending"]
    example = next(p for p in prediction_folder.iterdir() if p.name.endswith(ending))
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(example))
    labels = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    return compute_metrics_on_folder(str(reference_folder), str(prediction_folder),
                                     str(prediction_folder / "summary.json"), reader(), ending,
                                     labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                     labels.ignore_label, chill=True, num_processes=1)


def mean_dice(reference_folder: Path, prediction_folder: Path, dataset_folder: Path) -> float:
    return float(folder_metrics(reference_folder, prediction_folder, dataset_folder)["foreground_mean"]["Dice"])
