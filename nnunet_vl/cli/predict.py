"""nnUNetv2_predict_vl: nnUNetv2_predict's flags, plus the text each case is predicted with."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_vl.cli.errors import run_with_clear_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict with a nnunet_vl model (same flags as nnUNetv2_predict). The "
                                            "report of each case is looked up by case id in --reports, else in the "
                                            "dataset's text cache in nnUNet_preprocessed.")
    p.add_argument("-i", required=True, help="input folder (files named CASE_0000<ending> as for nnUNetv2_predict), "
                                             "or one image file of a single-channel model")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default="nnUNetTrainerBiPVL", help="trainer class (default nnUNetTrainerBiPVL)")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding window step size (default 0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--save_probabilities", action="store_true")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases already predicted")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name")
    p.add_argument("-prev_stage_predictions", default=None,
                   help="folder with the previous stage's predictions of the cases to predict (cascaded "
                        "configurations: 3d_cascade_fullres takes 3d_lowres' output folder)")
    p.add_argument("-npp", type=int, default=3, help="preprocessing processes (>= 1)")
    p.add_argument("-nps", type=int, default=3, help="segmentation export processes (>= 1)")
    p.add_argument("-num_parts", type=int, default=1)
    p.add_argument("-part_id", type=int, default=0)
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_progress_bar", action="store_true")
    p.add_argument("--not_on_device", action="store_true")
    reports = p.add_mutually_exclusive_group()
    reports.add_argument("--reports", default=None,
                         help="reports of the cases to predict: .json object or .csv/.tsv with case_id,report")
    reports.add_argument("--report", default=None,
                         help="the report, as text, of the one image to predict (-i: an image file, or a folder "
                              "holding one case)")
    p.add_argument("--text-mode", default="report", choices=["report", "none", "shuffled"],
                   help="report: each case's own report; none: empty text; shuffled: another case's report")
    p.add_argument("--save-attention", action="store_true",
                   help="TMCA models: also write the text-conditioned attention map of each case "
                        "(<case>_attention<ending>) aligned to the input")
    return p


def input_and_output_lists(source: str, output_folder: str, predictor) -> tuple[list[list[str]], list[str]]:
    """nnU-Net's per-case input file lists and truncated output names for -i (a folder, or one image file)."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    ending = predictor.dataset_json["file_ending"]
    if Path(source).is_file():
        channels = len(predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {})))
        if channels != 1:
            raise ValueError(f"-i {source} is one file, the model takes {channels} channels: put the case's files "
                             f"(CASE_0000{ending}, CASE_0001{ending}, ...) into a folder and pass that")
        if not source.endswith(ending):
            raise ValueError(f"-i {source} does not end with the dataset's file ending {ending}")
        case = Path(source).name[: -len(ending)]
        case = case[:-5] if case.endswith("_0000") else case
        return [[source]], [str(Path(output_folder) / case)]
    inputs = create_lists_from_splitted_dataset_folder(source, ending)
    cases = [Path(files[0]).name[: -(len(ending) + 5)] for files in inputs]
    return inputs, [str(Path(output_folder) / case) for case in cases]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        import torch
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        from nnunet_vl.inference.predictor import nnUNetPredictorVL
        from nnunet_vl.text.contract import load_reports_file

        if args.npp < 1 or args.nps < 1:
            raise ValueError("-npp and -nps must be at least 1 (the sequential mode is not supported with text)")
        if args.part_id >= args.num_parts:
            raise ValueError("-part_id must be smaller than -num_parts")
        if args.report is not None and not args.report.strip():
            raise ValueError("--report is empty: write the report, or predict image-only with --text-mode none")
        reports = load_reports_file(args.reports) if args.reports else None  # its problems before the model loads
        if args.device == "cpu":
            import multiprocessing

            torch.set_num_threads(multiprocessing.cpu_count())
        predictor = nnUNetPredictorVL(tile_step_size=args.step_size, use_gaussian=True,
                                      use_mirroring=not args.disable_tta,
                                      perform_everything_on_device=not args.not_on_device,
                                      device=torch.device(args.device), verbose=args.verbose,
                                      verbose_preprocessing=args.verbose,
                                      allow_tqdm=not args.disable_progress_bar, text_mode=args.text_mode,
                                      save_attention=args.save_attention)
        folds = [f if f == "all" else int(f) for f in args.f]
        predictor.initialize_from_trained_model_folder(get_output_folder(args.d, args.tr, args.p, args.c), folds,
                                                       checkpoint_name=args.chk)
        previous_stage = predictor.configuration_manager.previous_stage_name
        if previous_stage is not None and args.prev_stage_predictions is None:
            raise ValueError(f"-c {args.c} is a cascaded configuration: it takes the {previous_stage} predictions of "
                             f"the cases as input. Predict them first (nnUNetv2_predict_vl -c {previous_stage} "
                             f"-o FOLDER ...) and pass -prev_stage_predictions FOLDER")
        if previous_stage is None and args.prev_stage_predictions is not None:
            raise ValueError(f"-prev_stage_predictions is for cascaded configurations (3d_cascade_fullres); "
                             f"-c {args.c} takes the image only")
        if args.prev_stage_predictions is not None and not Path(args.prev_stage_predictions).is_dir():
            raise FileNotFoundError(f"-prev_stage_predictions {args.prev_stage_predictions} is not a folder")
        inputs, outputs = input_and_output_lists(args.i, args.o, predictor)
        if args.report is not None:
            if len(inputs) != 1:
                raise ValueError(f"--report gives the report of one image, but {args.i} holds {len(inputs)} cases: "
                                 f"pass --reports FILE with one report per case")
            reports = {Path(outputs[0]).name: " ".join(args.report.split())}
        Path(args.o).mkdir(parents=True, exist_ok=True)
        predictor.predict_from_files(inputs, outputs, save_probabilities=args.save_probabilities,
                                     overwrite=not args.continue_prediction, num_processes_preprocessing=args.npp,
                                     num_processes_segmentation_export=args.nps,
                                     folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                     num_parts=args.num_parts, part_id=args.part_id, reports=reports)

    return run_with_clear_errors(run)


if __name__ == "__main__":
    sys.exit(main())
