"""Shared fixtures: real data from ../shared/data, the detector loaded once, small indexes built once per session.

Nothing is copied into the repository: folders to analyze are made in pytest's temporary directories.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # ../shared/data from the project root
COCO128 = DATA / "coco128"
COCO128_IMAGES = COCO128 / "images" / "train2017"
WEIGHTS = DATA / "weights" / "yolov8n-reconstructed.pt"
WEIGHTS_11 = DATA / "weights" / "yolo11n-reconstructed.pt"
BUS = DATA / "samples" / "bus.jpg"

N_SMALL = 24  # coco128 images in the small index
DIMS = [16, 32]  # projections stored in the session indexes

if not WEIGHTS.is_file():
    pytest.exit(f"test data not found at {DATA} (expected ../shared/data next to the project)", returncode=2)


def coco_images(n: int) -> list[Path]:
    """The first ``n`` coco128 images, sorted by name."""
    return sorted(COCO128_IMAGES.glob("*.jpg"))[:n]


def copy_images(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m objsearch ARGS`` as a real subprocess, text output captured."""
    return subprocess.run([sys.executable, "-m", "objsearch", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def cfg() -> dict:
    """The default configuration with the test weights and two stored projections."""
    from objsearch.config import load_config

    return load_config(None, weights=str(WEIGHTS), dims=",".join(map(str, DIMS)))


@pytest.fixture(scope="session")
def detector(cfg):
    """The real yolov8n detector, loaded once."""
    from objsearch.engine import load_detector

    return load_detector(cfg)


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> Path:
    """24 coco128 images (half of them in a subfolder), a zero-byte ``empty.jpg``, a ``corrupt.jpg`` and a
    ``notes.txt``."""
    folder = tmp_path_factory.mktemp("small") / "images"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(coco_images(N_SMALL)):
        shutil.copy(p, folder / ("sub" if i % 2 else ".") / p.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="session")
def small_index(small_folder, cfg, detector, tmp_path_factory):
    """(index path, AnalyzeSummary) of ``small_folder``."""
    from objsearch.analysis import analyze

    out = tmp_path_factory.mktemp("small_index") / "small.h5"
    summary = analyze(small_folder, out, cfg, detector=detector)
    return out, summary


@pytest.fixture(scope="session")
def coco_index(cfg, detector, tmp_path_factory) -> Path:
    """An index of all 128 coco128 images (a few seconds)."""
    from objsearch.analysis import analyze

    out = tmp_path_factory.mktemp("coco_index") / "coco128.h5"
    analyze(COCO128_IMAGES, out, cfg, detector=detector)
    return out
