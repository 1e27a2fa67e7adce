"""`nnunet_vl`: the plugin's own commands (check, env, make-synthetic, convert, demo, show)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunet_vl.cli.environment import trainer_dir
from nnunet_vl.cli.errors import CheckFailedError, run_with_clear_errors
from nnunet_vl.data.synthetic import RULES


def _raw_root(arg: str | None) -> Path:
    root = arg or os.environ.get("nnUNet_raw")
    if not root:
        raise ValueError("no raw data folder: set nnUNet_raw or pass --raw DIR")
    return Path(root)


def _dataset_folder(raw_root: Path, dataset: str) -> Path:
    """The raw folder of a dataset given by id or name."""
    if dataset.isdigit():
        found = sorted(raw_root.glob(f"Dataset{int(dataset):03d}_*"))
        if len(found) != 1:
            raise FileNotFoundError(f"{'no' if not found else 'more than one'} dataset with id {dataset} in {raw_root}: "
                                    f"check the id, or pass --raw with the folder that holds it")
        return found[0]
    if not (raw_root / dataset).is_dir():
        raise FileNotFoundError(f"no dataset folder {raw_root / dataset}: check the name or pass --raw")
    return raw_root / dataset


def cmd_env(args: argparse.Namespace) -> None:
    print(f"export nnUNet_extTrainer={trainer_dir()}")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(var)
        print(f"# {var}={value}" if value else f"# {var} is not set: export {var}=/path/to/{var}")


def cmd_check(args: argparse.Namespace) -> None:
    import json

    from nnunet_vl.text.contract import TextProblem, class_text_only_note, load_dataset_text
    from nnunet_vl.text.directions import dataset_fixed_side_names
    from nnunet_vl.text.encoders import DEFAULT_ENCODER, EncoderNotFoundError, load_tokenizer, resolve_encoder
    from nnunet_vl.text.laterality import mirroring_summary

    folder = _dataset_folder(_raw_root(args.raw), args.d)
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    text = load_dataset_text(folder, dataset_json, require_reports=not args.allow_missing_reports)
    encoder = args.text_encoder or text.text_encoder or DEFAULT_ENCODER
    try:
        load_tokenizer(resolve_encoder(encoder))
    except EncoderNotFoundError as e:
        text.problems.append(TextProblem(str(folder / "dataset.json"), str(e), "see the message"))
    for problem in text.problems:
        print(problem)
    if text.class_text_only:
        print(class_text_only_note(folder.name))
    for line in mirroring_summary(dataset_json, text.label_texts, dataset_fixed_side_names(dataset_json)):
        print(line)
    errors = text.errors
    print(f"{folder.name}: {len(text.reports)} reports for {len(text.train_cases)} training and "
          f"{len(text.test_cases)} test cases, {len(text.label_texts)} label texts, encoder '{encoder}': "
          f"{len(errors)} error(s), {len(text.problems) - len(errors)} warning(s)")
    if errors:
        raise CheckFailedError(f"{folder}: {len(errors)} text error(s), listed above with file and fix; fix them and "
                               f"run `nnunet_vl check -d {args.d}` again")


def cmd_make_synthetic(args: argparse.Namespace) -> None:
    from nnunet_vl.data.synthetic import make_synthetic_dataset

    size = args.size[0] if args.size and len(args.size) == 1 else args.size
    folder = make_synthetic_dataset(_raw_root(args.raw), args.d, dim=args.dim, num_train=args.num_train,
                                    num_test=args.num_test, size=size, seed=args.seed, rule=args.rule,
                                    name=args.name, overwrite=args.overwrite)
    print(f"wrote {folder}")


def cmd_convert(args: argparse.Namespace) -> None:
    from nnunet_vl.data.qata import convert_qata

    folder = convert_qata(Path(args.src), args.d, raw_root=_raw_root(args.raw), overwrite=args.overwrite)
    print(f"wrote {folder}")


def cmd_demo(args: argparse.Namespace) -> None:
    from nnunet_vl.cli.demo import run_demo

    run_demo(Path(args.workdir), dim=args.dim, encoder=args.text_encoder, methods=args.methods, quick=args.quick)


def cmd_show(args: argparse.Namespace) -> None:
    from nnunet_vl.inference.show import show_case

    out = show_case(args.case, args.d, Path(args.prediction) if args.prediction else None,
                    Path(args.o) if args.o else None, args.reports)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet_vl", description="Language plugin for nnU-Net v2.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="print the environment variables nnU-Net needs to find the VL trainers")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("check", help="validate a raw dataset's text and list every problem")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("--raw", default=None, help="raw data folder (default $nnUNet_raw)")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--allow-missing-reports", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("make-synthetic", help="write a synthetic text-dependent dataset (objects that look alike; "
                                              "only the report says which one is the target)")
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("--dim", type=int, choices=[2, 3], default=2)
    p.add_argument("--num-train", type=int, default=120)
    p.add_argument("--num-test", type=int, default=30)
    p.add_argument("--size", type=int, nargs="+", default=None,
                   help="image edge length (default 64 in 2D, 32 in 3D), or one per array axis (3D: z y x)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", default="position", choices=list(RULES),
                   help="lateral: two look-alike objects labelled kidney_left / kidney_right (a lateral pair), the "
                        "report names the enlarged side; rank / size_rank / combined / relational: the target named by "
                        "its rank among 3-5 look-alikes (test cases also in held-out wording, reports_heldout.json)")
    p.add_argument("--name", default=None)
    p.add_argument("--raw", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("convert", help="convert a public image-text dataset into an nnU-Net raw dataset")
    p.add_argument("dataset", choices=["qata"], help="qata: QaTa-COV19 with LViT reports")
    p.add_argument("src", help="the downloaded dataset folder")
    p.add_argument("-d", type=int, required=True, help="dataset id to write")
    p.add_argument("--raw", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="synthetic data -> plan -> train VL and image-only -> predict -> Dice table")
    p.add_argument("--workdir", default="nnunet_vl_demo", help="where the demo writes everything")
    p.add_argument("--dim", type=int, choices=[2, 3], default=2)
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--methods", nargs="+", default=["BiPVL"], choices=["BiPVL", "TMCA"])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (minutes are not needed, Dice is meaningless)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("show", help="write a PNG overlaying image, prediction and report of one case")
    p.add_argument("case", help="case id")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("--prediction", default=None, help="predicted segmentation file or folder")
    p.add_argument("--reports", default=None, help="reports file (default: the dataset's)")
    p.add_argument("-o", default=None, help="output PNG (default CASE_overlay.png)")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_clear_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
