"""One orientation per dataset: which image axis runs left-right, anterior-posterior, superior-inferior.

The plans store one mapping (`direction_axes`) for every case, so a dataset whose images are stored in different
orientations would swap words and labels along the wrong axis for some cases. Planning refuses such a dataset,
naming the cases that differ from the first one; reorienting them (e.g. to RAS) before planning fixes it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

_WORLD = ("L", "P", "S")  # SimpleITK's world axes (LPS): + direction of x, y, z
_OPPOSITE = {"L": "R", "P": "A", "S": "I"}


class MixedOrientationError(ValueError):
    pass


def orientation_code(direction: tuple[float, ...] | list[float]) -> str | None:
    """The three-letter code of a 3D image's index axes (x, y, z) from its direction cosines ("LPS", "RAS", ...);
    None without 3D geometry."""
    matrix = np.asarray(direction, dtype=float)
    if matrix.size != 9:
        return None
    matrix = matrix.reshape(3, 3)
    letters = []
    for column in range(3):
        world = int(np.argmax(np.abs(matrix[:, column])))
        letters.append(_WORLD[world] if matrix[world, column] > 0 else _OPPOSITE[_WORLD[world]])
    return "".join(letters)


def _axis_names(code: str) -> str:
    """The anatomical axis of each index axis, signs dropped: "LPS" and "RAS" both give "LPS"."""
    canonical = {"L": "L", "R": "L", "P": "P", "A": "P", "S": "S", "I": "S"}
    return "".join(canonical[c] for c in code)


def case_orientations(cases: Mapping[str, list[str]]) -> dict[str, str]:
    """Orientation code of each case's first image, read from its header (files without 3D geometry, such as
    PNG or TIFF, are left out)."""
    import SimpleITK as sitk

    codes = {}
    for case, files in cases.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        code = orientation_code(reader.GetDirection())
        if code is not None:
            codes[case] = code
    return codes


def check_orientations(codes: Mapping[str, str]) -> None:
    """Raise MixedOrientationError (one line) when the cases' index axes run along different anatomical axes."""
    if not codes:
        return
    first = sorted(codes)[0]
    differ = sorted(c for c in codes if _axis_names(codes[c]) != _axis_names(codes[first]))
    if differ:
        shown = ", ".join(f"{c} ({codes[c]})" for c in differ[:10]) + (" ..." if len(differ) > 10 else "")
        raise MixedOrientationError(
            f"mixed image orientations: {len(differ)} training case(s) have their image axes along other anatomical "
            f"axes than {first} ({codes[first]}): {shown}; the plans hold one left-right axis for all cases, so "
            f"reorient these images (e.g. all to RAS) before planning")


def check_dataset_orientations(raw_folder: Path, dataset_json: dict) -> dict[str, str]:
    """check_orientations over every training case of a raw dataset; returns the codes."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = get_filenames_of_train_images_and_targets(str(raw_folder), dict(dataset_json))
    codes = case_orientations({c: v["images"] for c, v in cases.items()})
    check_orientations(codes)
    return codes
