"""Crash safety: an analysis killed with SIGKILL resumes from its journal and ends with the same index as an
uninterrupted run; a torn or garbage journal tail is dropped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, WEIGHTS, coco_images, copy_images, run_cli
from objsearch.config import load_config
from objsearch.engine import analyze
from objsearch.errors import IndexFileError
from objsearch.store import ImageRecord, IndexFile, Journal

N_IMAGES = 40


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    return copy_images(coco_images(N_IMAGES), tmp_path_factory.mktemp("resume") / "forty")


@pytest.fixture(scope="module")
def uninterrupted(forty, detector, tmp_path_factory):
    """The same folder analysed in one go, with the configuration the command line uses (cfg/default.yaml)."""
    out = tmp_path_factory.mktemp("straight") / "straight.h5"
    analyze(forty, out, load_config(None, weights=str(WEIGHTS)), detector=detector)
    return out


def kill_during_analysis(folder, out, min_journal_bytes=60_000):
    """Start ``objsearch analyze`` and SIGKILL it once its journal holds a few image records."""
    journal = out.with_name(out.name + ".journal")
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", "analyze", str(folder), "-o", str(out), "--weights",
                             str(WEIGHTS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.stat().st_size > min_journal_bytes:
                break
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the analysis ended before it could be killed"
    return journal


def assert_same_index(a_path, b_path):
    with IndexFile(a_path) as a, IndexFile(b_path) as b:
        assert a.image_path == b.image_path and len(a.image_path) == N_IMAGES
        np.testing.assert_array_equal(a.image_id, b.image_id)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
        np.testing.assert_allclose(a.features(np.arange(len(a))), b.features(np.arange(len(b))), atol=1e-5)
        assert a.dims == b.dims == [32]
        np.testing.assert_allclose(a.vectors(32), b.vectors(32), atol=1e-4)
        assert a.thumbnail(len(a) - 1)[:2] == b"\xff\xd8"


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(forty, uninterrupted, tmp_path):
    out = tmp_path / "killed.h5"
    journal = kill_during_analysis(forty, out)
    assert journal.exists() and not out.exists()
    assert not out.with_name("killed.h5.tmp").exists()

    finished = run_cli("analyze", forty, "-o", out, "--weights", WEIGHTS)
    assert finished.returncode == 0, finished.stderr
    resumed = int(finished.stdout.split("(")[1].split(" resumed")[0])
    assert 0 < resumed < N_IMAGES, finished.stdout
    assert out.exists() and not journal.exists()
    assert_same_index(out, uninterrupted)


@pytest.mark.slow
def test_resume_after_garbage_at_the_end_of_the_journal(forty, uninterrupted, tmp_path):
    out = tmp_path / "garbage.h5"
    journal = kill_during_analysis(forty, out, min_journal_bytes=20_000)
    recovered = Journal(journal, _header_of(journal))
    n_kept = len(recovered.records)
    recovered.close()
    with open(journal, "ab") as handle:
        handle.write(b"OSJ1\x00\x10\x00\x00half a record")  # a frame header that promises more than follows
        handle.write(os.urandom(3000))
    finished = run_cli("analyze", forty, "-o", out, "--weights", WEIGHTS)
    assert finished.returncode == 0, finished.stderr
    assert f"({n_kept} resumed)" in finished.stdout
    assert_same_index(out, uninterrupted)


def _header_of(journal):
    """The JSON header record of a journal (its first frame)."""
    import json
    import struct

    magic, length, _ = struct.unpack_from("<4sII", journal.read_bytes(), 0)
    assert magic == b"OSJ1"
    return json.loads(journal.read_bytes()[12:12 + length])


def test_journal_drops_a_torn_last_record(tmp_path):
    path = tmp_path / "x.h5.journal"
    journal = Journal(path, {"conf": 0.25})
    for i in range(3):
        journal.append(ImageRecord(path=f"{i}.jpg", width=10, height=10, xyxy=np.zeros((1, 4), np.float32),
                                   confidence=np.ones(1, np.float32), class_id=np.zeros(1, np.int64),
                                   features=np.full((1, 4), i, np.float32), thumbnails=[b"\xff\xd8jpeg"]))
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the last record is cut short, as a kill during the write leaves it
    again = Journal(path, {"conf": 0.25})
    assert [r.path for r in again.records] == ["0.jpg", "1.jpg"]
    assert again.records[1].thumbnails == [b"\xff\xd8jpeg"] and again.records[1].features[0, 0] == 1
    again.append(ImageRecord(path="2.jpg", skipped="cannot read image"))
    again.close()
    assert [r.path for r in Journal(path, {"conf": 0.25}).records] == ["0.jpg", "1.jpg", "2.jpg"]


def test_journal_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "x.h5.journal"
    Journal(path, {"conf": 0.25, "imgsz": 640}).close()
    with pytest.raises(IndexFileError, match=r"other settings \(conf\)"):
        Journal(path, {"conf": 0.5, "imgsz": 640})


def test_journal_without_a_readable_header_starts_over(tmp_path):
    path = tmp_path / "x.h5.journal"
    path.write_bytes(b"garbage from the start")
    journal = Journal(path, {"conf": 0.25})
    journal.close()
    assert journal.records == [] and Journal(path, {"conf": 0.25}).records == []


def test_an_unfinished_index_is_named_in_the_error(tmp_path):
    out = tmp_path / "unfinished.h5"
    Journal(out.with_name("unfinished.h5.journal"), {}).close()
    with pytest.raises(IndexFileError, match="unfinished analysis is in unfinished.h5.journal"):
        IndexFile(out)
