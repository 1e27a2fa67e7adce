"""Where the data shipped inside the package lives: planner presets and text corpora.

Both are installed as data packages (`nnunet_vl.planner_presets` from the top-level `planners/`,
`nnunet_vl.text_corpora` from `text_corpora/`, see setup.py), so one lookup through importlib serves a
wheel, a non-editable and an editable install alike. Nothing outside the package is ever guessed.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PRESETS = "nnunet_vl.planner_presets"
CORPORA = "nnunet_vl.text_corpora"


class PackageDataError(RuntimeError):
    """The package's data directory cannot be found (a broken or partial install)."""


def data_dir(package: str) -> Path:
    """The directory of one of nnunet_vl's data packages, as a real path on disk."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError as err:
        raise PackageDataError(
            f"{package} is not installed (running from a source tree without installing it?) "
            "-> install nnunet_vl with `pip install .` (or `pip install -e .` for development)"
        ) from err
    if isinstance(root, Path) and root.is_dir():
        return root
    raise PackageDataError(
        f"{package} is not a directory on disk ({root!r}) -> reinstall nnunet_vl from its wheel or source"
    )


def data_files(package: str, suffix: str = ".json") -> list[Path]:
    """The package's data files with the given suffix, sorted by name."""
    return sorted(p for p in data_dir(package).glob(f"*{suffix}") if p.is_file())
