"""Smoke run of benchmarks/qata.py on a tiny QaTa-like source (never the shared data): it runs end to end and
writes its figures (JSON, markdown, the case figure)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
ZONES = {"upper": (14, 26), "lower": (34, 48)}


def _xray(rng: np.random.Generator, lesions: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """A chest-X-ray-like 64x64 image (bright body, two dark lung fields, noise) and its infection mask."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.full((SIZE, SIZE), 175.0)
    lungs = {}
    for side, cx in (("right", 19), ("left", 45)):  # radiological convention: patient's left on the image right
        lungs[side] = ((xx - cx) / 11.0) ** 2 + ((yy - 32) / 22.0) ** 2 <= 1.0
        image[lungs[side]] = 60.0
    mask = np.zeros((SIZE, SIZE), bool)
    for side, zone in lesions:
        lo, hi = ZONES[zone]
        cy = rng.integers(lo, hi)
        cx = 19 if side == "right" else 45
        blob = ((xx - cx - rng.integers(-3, 4)) / rng.uniform(4, 7)) ** 2 + ((yy - cy) / rng.uniform(4, 7)) ** 2 <= 1
        mask |= blob & lungs[side]
    image[mask] = 135.0
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _caption(lesions: list[tuple[str, str]]) -> str:
    sides = sorted({s for s, _ in lesions})
    kind = "bilateral" if len(sides) == 2 else "unilateral"
    count = ["one", "two", "three"][len(lesions) - 1]
    where = " and ".join(f"{' '.join(sorted({z for s2, z in lesions if s2 == s}, reverse=True))} {s} lung"
                         for s in sides)
    return f"{kind} pulmonary infection, {count} infected area{'s' if len(lesions) > 1 else ''}, {where}."


def make_tiny_qata(root: Path, n_train: int = 12, n_valid: int = 4) -> Path:
    """annotation.json layout: {split}/images/covid_N.png, {split}/masks/mask_covid_N.png, caption per image."""
    rng = np.random.default_rng(0)
    options = [[("left", "lower")], [("right", "lower")], [("left", "lower"), ("right", "lower")],
               [("left", "upper"), ("right", "lower")]]
    annotation: dict[str, list[dict[str, str]]] = {}
    i = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        annotation[split] = []
        for _ in range(n):
            lesions = options[i % len(options)]
            image, mask = _xray(rng, lesions)
            for sub, name, arr in (("images", f"covid_{i}.png", image),
                                   ("masks", f"mask_covid_{i}.png", mask.astype(np.uint8) * 255)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / sub / name)
            annotation[split].append({"image": f"{split}/images/covid_{i}.png",
                                      "mask": f"{split}/masks/mask_covid_{i}.png", "caption": _caption(lesions)})
            i += 1
    (root / "annotation.json").write_text(json.dumps(annotation, indent=1))
    return root


def test_qata_benchmark_smoke(tmp_path: Path, tiny_bert: Path) -> None:
    src = make_tiny_qata(tmp_path / "qata_src")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "qata.py"), "--src", str(src), "--budget",
                             "cpu", "--methods", "BiPVL", "--text-encoder", str(tiny_bert), "--workdir",
                             str(tmp_path / "work"), "--out", str(out), "--batch-size", "3", "--disable-tta"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((out / "qata.json").read_text())
    assert report["data"] == {"train": 12, "val": 4, "val_evaluated": 4}
    modes = {(r["trainer"], r["text_mode"]) for r in report["rows"]}
    assert modes == {("nnUNetTrainer_cpu", "image")} | {("nnUNetTrainerBiPVL_cpu", m)
                                                         for m in ("report", "shuffled", "none")}
    for row in report["rows"]:
        for key in ("dice", "iou"):
            assert 0.0 <= row[key] <= 1.0 and not math.isnan(row[key]), row
    assert "| nnUNetTrainerBiPVL_cpu | own report |" in (out / "qata.md").read_text()
    assert (out / "qata_cases.png").stat().st_size > 10_000
