"""Shared fixtures: real data from ../shared/data, the detector loaded once, small indexes built once per session.

Nothing is copied into the repository: folders to analyze are made in pytest's temporary directories.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from testdata import (BUS, COCO128, COCO128_IMAGES, DATA, DIMS, N_SMALL, ROOT, WEIGHTS, WEIGHTS_11,  # noqa: F401
                      coco_images, copy_images, run_cli)


_EXPORT_CACHE: list[str] = []


def pytest_configure(config):
    """The detector graphs exported for the default runtime (``auto``: onnx) go to a folder of this session (one
    export of a few seconds per checkpoint), inherited by the CLI subprocesses: no test reads a cache that an earlier
    session or the user left. A deliberately set ``OBJSEARCH_CACHE_DIR`` (a CI cache, say) is kept: the graphs are
    keyed by the weights' sha256 and the export recipe, written atomically and checked against torch before use."""
    if not os.environ.get("OBJSEARCH_CACHE_DIR"):
        folder = tempfile.mkdtemp(prefix="objsearch-test-exports-")
        _EXPORT_CACHE.append(folder)
        os.environ["OBJSEARCH_CACHE_DIR"] = folder


def pytest_unconfigure(config):
    for folder in _EXPORT_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("OBJSEARCH_CACHE_DIR") == folder:
            del os.environ["OBJSEARCH_CACHE_DIR"]


@pytest.fixture(scope="session")
def cfg() -> dict:
    """The default configuration with the test weights and two stored projections."""
    from objsearch.config import load_config

    return load_config(None, weights=str(WEIGHTS), dims=",".join(map(str, DIMS)))


@pytest.fixture(scope="session")
def detector(cfg):
    """The real yolov8n detector, loaded once."""
    from objsearch.provenance import load_detector

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
