"""nnUNetv2_plan_and_preprocess_vl: nnU-Net's plan_and_preprocess with text (same flags, plus text ones)."""
from __future__ import annotations

import argparse
import sys

from nnunet_vl.cli.errors import run_with_clear_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fingerprint, plan and preprocess nnU-Net datasets that carry text "
                                            "(reports, label texts). Image plans are nnU-Net's; each "
                                            "configuration gains a 'text' section.")
    p.add_argument("-d", nargs="+", type=int, required=True, help="dataset id(s)")
    p.add_argument("-npfp", type=int, default=8, help="processes for fingerprint extraction (default 8)")
    p.add_argument("--verify_dataset_integrity", action="store_true", help="run nnU-Net's integrity check first")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint even if it exists")
    p.add_argument("-pl", default="ExperimentPlanner",
                   help="image planner: ExperimentPlanner (default), nnUNetPlannerResEncM/L/XL")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="VRAM target in GB (image + text branch)")
    p.add_argument("-overwrite_plans_name", default=None,
                   help="plans identifier instead of the planner's own, as in nnU-Net (default: the planner's: "
                        "nnUNetPlans for ExperimentPlanner, so nnUNetv2_train needs no -p; nnUNetResEncUNetMPlans "
                        "for nnUNetPlannerResEncM, ...)")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"], help="configurations to preprocess")
    p.add_argument("-np", type=int, nargs="+", default=[8, 4, 8], help="processes per configuration")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--preset", default="bipvl", help="text planning preset: a name in planners/ or a JSON file")
    p.add_argument("--text-encoder", default=None,
                   help="local Hugging Face directory or alias (default: dataset.json 'text_encoder', else minilm)")
    p.add_argument("--allow-missing-reports", action="store_true",
                   help="plan although some training cases have no report (they get an empty one); a dataset "
                        "with label_texts and no 'reports' key needs no flag (class text only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        from nnunet_vl.planning.api import plan_and_preprocess_vl

        for dataset_id in args.d:
            plan_and_preprocess_vl(dataset_id, args.c, args.pl, args.preset, args.text_encoder,
                                   args.gpu_memory_target, args.overwrite_plans_name, args.npfp, args.np,
                                   args.verify_dataset_integrity, args.clean, args.no_pp,
                                   args.allow_missing_reports, args.verbose)

    return run_with_clear_errors(run)


if __name__ == "__main__":
    sys.exit(main())
