"""Shared fixtures: real data from ../shared/data, the real detector loaded once, small indexes built once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COCO128 = DATA / "coco128"
COCO128_IMAGES = COCO128 / "images" / "train2017"
WEIGHTS = DATA / "weights" / "yolov8n-reconstructed.pt"
WEIGHTS_11 = DATA / "weights" / "yolo11n-reconstructed.pt"
BUS = DATA / "samples" / "bus.jpg"

if not WEIGHTS.is_file():
    pytest.exit(f"test data not found at {DATA} (expected ../shared/data next to the project)", returncode=2)


@pytest.fixture(scope="session")
def cfg():
    from objsearch.config import load_config

    return load_config(None, weights=str(WEIGHTS), dims="16,32")


@pytest.fixture(scope="session")
def detector(cfg):
    from objsearch.engine import load_detector

    return load_detector(cfg)


def coco_images(n: int) -> list[Path]:
    return sorted(COCO128_IMAGES.glob("*.jpg"))[:n]


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> Path:
    """24 coco128 images in a nested folder, plus an empty, a corrupt and a non-image file."""
    folder = tmp_path_factory.mktemp("small") / "images"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(coco_images(24)):
        shutil.copy(p, folder / ("sub" if i % 2 else "") / p.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def small_index(small_folder, cfg, detector, tmp_path_factory):
    from objsearch.engine import analyze

    out = tmp_path_factory.mktemp("idx") / "small.h5"
    summary = analyze(small_folder, out, cfg, detector=detector)
    return out, summary


@pytest.fixture(scope="session")
def coco_index(cfg, detector, tmp_path_factory) -> Path:
    """All 128 coco128 images (about 6 s)."""
    from objsearch.engine import analyze

    out = tmp_path_factory.mktemp("coco") / "coco128.h5"
    analyze(COCO128, out, cfg, detector=detector)
    return out
