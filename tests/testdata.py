"""What the tests share besides fixtures: where the real data is, and small helpers. (A module of its own, not
``conftest``: the hostile suite's folder has a conftest too, and two modules named ``conftest`` cannot both be
imported by name.)"""

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
