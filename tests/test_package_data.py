"""The installed package, as a user gets it: built as a wheel, installed, used from outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nnunet_vl.package_data import CORPORA, PRESETS, PackageDataError, data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """nnunet_vl built as a wheel from a copy of the checkout and installed with --no-deps into a target
    directory (the test venv provides the dependencies)."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for item in ("setup.py", "README.md"):
        shutil.copy2(REPO / item, src / item)
    for folder in ("nnunet_vl", "text_corpora", "planners"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    wheels = root / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=180, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("nnunet_vl-*.whl")
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, timeout=180, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    work = root / "elsewhere"  # a working directory outside the checkout
    work.mkdir()
    return {"wheel": wheel, "site": target, "work": work}


def _run(installed: dict[str, Path], args: list[str], extra_env: dict[str, str] | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(installed["site"]), **(extra_env or {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=installed["work"], env=env)


def test_wheel_ships_every_preset_and_corpus(installed: dict[str, Path]) -> None:
    with zipfile.ZipFile(installed["wheel"]) as zf:
        names = set(zf.namelist())
    presets = sorted(p.name for p in (REPO / "planners").glob("*.json"))
    corpora = sorted(p.name for p in (REPO / "text_corpora").glob("*.json"))
    assert presets and corpora
    assert {f"nnunet_vl/planner_presets/{n}" for n in presets} <= names
    assert {f"nnunet_vl/text_corpora/{n}" for n in corpora} <= names


def test_installed_package_lists_and_loads_all_data_from_anywhere(installed: dict[str, Path]) -> None:
    probe = (
        "import json, nnunet_vl\n"
        "from nnunet_vl.planning.planners import available_presets, load_preset, presets_dir\n"
        "from nnunet_vl.text.corpora import available_corpora, corpus_dir, load_corpus\n"
        "print(json.dumps({'module': nnunet_vl.__file__, 'presets_dir': str(presets_dir()),\n"
        "  'corpus_dir': str(corpus_dir()), 'presets': {n: load_preset(n)['name'] for n in available_presets()},\n"
        "  'corpora': {n: bool(load_corpus(n)['labels']) for n in available_corpora()}}))\n"
    )
    run = _run(installed, [sys.executable, "-c", probe])
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    package = installed["site"] / "nnunet_vl"
    assert Path(found["module"]).resolve().parent == package.resolve()  # the installed copy, not the checkout
    assert Path(found["presets_dir"]).resolve() == (package / "planner_presets").resolve()
    assert Path(found["corpus_dir"]).resolve() == (package / "text_corpora").resolve()
    assert found["presets"] == {p.stem: p.stem for p in sorted((REPO / "planners").glob("*.json"))}
    assert found["corpora"] == {p.stem: True for p in sorted((REPO / "text_corpora").glob("*.json"))}


def test_installed_console_script_plans_with_the_default_preset(installed: dict[str, Path], tiny_bert: Path,
                                                                tmp_path: Path) -> None:
    folders = {var: tmp_path / var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir()
    make = _run(installed, [sys.executable, "-c",
                            "import sys; from nnunet_vl.cli.main import main; sys.exit(main(sys.argv[1:]))",
                            "make-synthetic", "-d", "802", "--num-train", "6", "--num-test", "1", "--size", "32",
                            "--raw", str(folders["nnUNet_raw"])])
    assert make.returncode == 0, make.stdout + make.stderr
    script = installed["site"] / "bin" / "nnUNetv2_plan_and_preprocess_vl"
    assert script.is_file()
    env = {k: str(v) for k, v in folders.items()}
    plan = _run(installed, [sys.executable, str(script), "-d", "802", "-c", "2d", "-np", "1", "-npfp", "1",
                            "--text-encoder", str(tiny_bert)], env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    (plans_file,) = (folders["nnUNet_preprocessed"]).glob("Dataset802_*/nnUNetPlans.json")
    text = json.loads(plans_file.read_text())["configurations"]["2d"]["text"]
    assert text["preset"] == "bipvl"


def test_missing_data_package_is_a_clear_error() -> None:
    with pytest.raises(PackageDataError, match="pip install"):
        data_dir("nnunet_vl.no_such_data")
    assert data_dir(PRESETS).is_dir() and data_dir(CORPORA).is_dir()
