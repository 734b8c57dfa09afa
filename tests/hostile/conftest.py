"""Fixtures of the hostile-input suite: one tiny real index, the CLI run in-process with the detector loaded once,
and the outcome tally printed at the end of the session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

COCO128_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128" / "images" / "train2017"


def pytest_terminal_summary(terminalreporter):
    from support import FAMILIES, OUTCOMES

    if OUTCOMES:
        total = sum(OUTCOMES.values())
        parts = ", ".join(f"{n} {k}" for k, n in sorted(OUTCOMES.items()))
        terminalreporter.write_line(f"hostile cases by outcome: {total} in all: {parts}")
        families = ", ".join(f"{n} {k}" for k, n in sorted(FAMILIES.items()))
        terminalreporter.write_line(f"hostile cases by family: {families}")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """4 coco128 images."""
    folder = tmp_path_factory.mktemp("hostile") / "images"
    folder.mkdir()
    for p in sorted(COCO128_IMAGES.glob("*.jpg"))[:4]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="session")
def tiny_index(tiny_folder, cfg, detector, tmp_path_factory) -> Path:
    """A real index (format 2) of ``tiny_folder``, dims 16 and 32."""
    from objsearch.analysis import analyze

    out = tmp_path_factory.mktemp("hostile_index") / "tiny.h5"
    analyze(tiny_folder, out, cfg, detector=detector)
    return out


@pytest.fixture(scope="module")
def shared_detector(detector):
    """Commands run in-process reuse the session's detector instead of loading the checkpoint for every call (the
    weights checks still run: ``weights_for_index`` is not replaced). Module-scoped, so the patch is undone before
    the tests outside this folder run (they load detectors for real: ``--device gpu`` must fail there)."""
    import objsearch.provenance as provenance

    original = provenance.load_detector

    def load(cfg, weights=None):
        chosen = weights or cfg.get("weights")
        if chosen and Path(str(chosen)).resolve() == Path(str(detector.weights_path)).resolve():
            return detector
        return original(cfg, weights)

    mp = pytest.MonkeyPatch()
    mp.setattr(provenance, "load_detector", load)
    yield detector
    mp.undo()


runner = CliRunner()


@pytest.fixture
def cli(shared_detector):
    """``cli(*args)`` -> typer's Result of ``objsearch ARGS`` run in-process."""
    from objsearch.cli import app

    def invoke(*args, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke
