"""Fingerprint, plan and preprocess a dataset with text, through nnU-Net's own API."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from nnunet_vl.text.contract import class_text_only_note, load_dataset_text
from nnunet_vl.text.encoders import DEFAULT_ENCODER, encoder_config, load_tokenizer, resolve_encoder


def has_regions(labels: dict) -> bool:
    """nnU-Net's rule for region-based training: some label maps to a list of more than one label value."""
    return any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())


def _label_values(value: int | list | tuple) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def class_names(labels: dict) -> list[str]:
    """Names of the network's output channels, one class text each.

    Label datasets: every label (background included) by label value. Region datasets: the regions in
    dataset.json order, without background, as nnU-Net's LabelManager orders its sigmoid channels.
    """
    names = [n for n in labels if n != "ignore"]
    if has_regions(labels):
        return [n for n in names if any(int(v) != 0 for v in _label_values(labels[n]))]
    if all(isinstance(labels[n], int) for n in names):
        names.sort(key=lambda n: labels[n])
    return names


def _first_training_image_properties(raw_folder: Path, dataset_json: dict, reader_writer) -> dict:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = get_filenames_of_train_images_and_targets(str(raw_folder), dict(dataset_json))
    first = cases[sorted(cases)[0]]
    _, properties = reader_writer().read_images(first["images"])
    return properties


def plans_with_batch_size(preprocessed_folder: Path, configuration: str, batch_size: int | None,
                          plans_name: str = "nnUNetPlans") -> str:
    """The plans identifier to train with: `plans_name`, or its copy `<plans_name>_bs<N>` with another batch size.

    This is how nnU-Net's docs change the batch size: the copy keeps the data identifier, so the
    preprocessed data is shared. The copy is (re)written only when missing or different.
    """
    folder = Path(preprocessed_folder)
    plans = json.loads((folder / f"{plans_name}.json").read_text(encoding="utf-8"))
    if batch_size is None or batch_size == plans["configurations"][configuration]["batch_size"]:
        return plans_name
    identifier = f"{plans_name}_bs{batch_size}"
    plans["plans_name"] = identifier
    plans["configurations"][configuration]["batch_size"] = batch_size
    target = folder / f"{identifier}.json"
    if not target.is_file() or json.loads(target.read_text(encoding="utf-8")) != plans:
        target.write_text(json.dumps(plans, indent=1) + "\n", encoding="utf-8")
    return identifier


def plan_and_preprocess_vl(dataset_id: int, configurations: Sequence[str] = ("2d", "3d_fullres", "3d_lowres"),
                           planner: str = "ExperimentPlanner", preset: str = "bipvl",
                           text_encoder: str | None = None, gpu_memory_target: float | None = None,
                           plans_name: str | None = None, num_processes_fingerprint: int = 8,
                           num_processes: Sequence[int] = (8, 4, 8), verify_dataset_integrity: bool = False,
                           clean: bool = False, no_preprocessing: bool = False,
                           allow_missing_reports: bool = False, verbose: bool = False) -> str:
    """Returns the plans identifier. Text problems are raised before anything is written.

    The identifier is the planner's, as nnU-Net names it (`nnUNetPlans` for ExperimentPlanner,
    `nnUNetResEncUNetMPlans` for nnUNetPlannerResEncM, ...), unless `plans_name` overrides it
    (nnU-Net's `-overwrite_plans_name`).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity as verify
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    from nnunet_vl.planning.fingerprint import TextFingerprintExtractor
    from nnunet_vl.planning.orientation import check_dataset_orientations
    from nnunet_vl.planning.planners import PLANNERS, load_preset
    from nnunet_vl.text.cache import write_text_cache
    from nnunet_vl.text.directions import dataset_fixed_side_names
    from nnunet_vl.text.laterality import dataset_lateral_pairs

    dataset_name = convert_id_to_dataset_name(dataset_id)
    raw_folder = Path(nnUNet_raw) / dataset_name
    text = load_dataset_text(raw_folder, require_reports=not allow_missing_reports)
    for problem in text.problems:
        if problem.severity == "warning":
            print(f"WARNING {problem}")
    text.raise_on_errors()
    if text.class_text_only:
        print(class_text_only_note(dataset_name))
    if planner not in PLANNERS:
        raise ValueError(f"planner '{planner}' has no VL version: use one of {sorted(PLANNERS)}")
    preset_dict = load_preset(preset)
    encoder = text_encoder or text.text_encoder or DEFAULT_ENCODER
    encoder_path = resolve_encoder(encoder)
    tokenizer = load_tokenizer(encoder_path)
    config = encoder_config(encoder_path)

    if verify_dataset_integrity:
        verify(str(raw_folder), num_processes_fingerprint)
    check_dataset_orientations(raw_folder, json.loads((raw_folder / "dataset.json").read_text(encoding="utf-8")))
    print(f"Fingerprinting {dataset_name} (images and text, encoder '{encoder}')")
    fingerprint = TextFingerprintExtractor(dataset_id, num_processes_fingerprint, verbose, text=text,
                                           tokenizer=tokenizer, encoder=encoder).run(overwrite_existing=clean)

    kwargs = {} if plans_name is None else {"plans_name": plans_name}
    if gpu_memory_target is not None:
        kwargs["gpu_memory_target_in_gb"] = gpu_memory_target
    vl_planner = PLANNERS[planner](dataset_id, preprocessor_name="DefaultPreprocessor", **kwargs)
    properties = _first_training_image_properties(raw_folder, vl_planner.dataset_json,
                                                  vl_planner.determine_reader_writer())
    pairs = dataset_lateral_pairs(vl_planner.dataset_json, text.label_texts,
                                  dataset_fixed_side_names(vl_planner.dataset_json))
    print(f"Lateral pairs ({pairs[1]}): " + (", ".join(f"{a} / {b}" for a, b in pairs[0]) or "none"))
    vl_planner.configure_text(preset_dict, encoder, config, fingerprint["text"],
                              class_names(vl_planner.dataset_json["labels"]), properties, lateral_pairs=pairs)
    plans = vl_planner.plan_experiment()
    plans_name = vl_planner.plans_identifier
    print(f"Plans written as {plans_name}: train with `nnUNetv2_train {dataset_id} CONFIGURATION FOLD -tr TRAINER"
          f"{'' if plans_name == 'nnUNetPlans' else f' -p {plans_name}'}`")

    max_tokens = next(c["text"]["max_tokens"] for c in plans["configurations"].values() if "text" in c)
    # training cases without a report train on an empty one (class text only, or --allow-missing-reports)
    cache = write_text_cache(Path(nnUNet_preprocessed) / dataset_name,
                             dataclasses.replace(text, reports=text.training_reports()), tokenizer, max_tokens)
    print(f"Text cache: {len(cache.reports)} reports ({cache.retokenized} tokenized, the rest unchanged)")

    if not no_preprocessing:
        if len(num_processes) == 1:
            num_processes = list(num_processes) * len(configurations)
        if len(num_processes) != len(configurations):
            raise ValueError(f"-np needs 1 or {len(configurations)} values (one per configuration), "
                             f"got {list(num_processes)}")
        planned = [(c, n) for c, n in zip(configurations, num_processes) if c in plans["configurations"]]
        preprocess_dataset(dataset_id, plans_name, [c for c, _ in planned], [n for _, n in planned],
                           verbose=verbose)
    return plans_name
