"""Crash safety of the jobs: analyze, add and sync killed with SIGKILL at several points leave an index that opens,
and running the same command again ends with the same index (same object ids, boxes, vectors) as an uninterrupted
run; the analysis journal drops a torn or garbage tail. (Kills inside a transaction are tested in test_catalog.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from testdata import ROOT, WEIGHTS, coco_images, copy_images, run_cli
from objsearch.analysis import analyze
from objsearch.analysis.journal import Journal
from objsearch.catalog import Catalog
from objsearch.config import load_config
from objsearch.errors import IndexFileError
from objsearch.types import Detections, MediaRecord, MediaRef, SkippedFile

N_IMAGES = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return copy_images(coco_images(N_IMAGES), tmp_path_factory.mktemp("resume") / "images")


@pytest.fixture(scope="module")
def uninterrupted(folder, detector, tmp_path_factory):
    """The same folder analysed in one go, with the configuration the command line uses (cfg/default.yaml)."""
    out = tmp_path_factory.mktemp("straight") / "straight.h5"
    analyze(folder, out, load_config(None, weights=str(WEIGHTS)), detector=detector)
    return out


def journaled_items(journal) -> int:
    """How many items (images, frames, skipped files) the job has journaled so far: the sequence number of the
    journal's last complete record (frames walked as ``Journal`` reads them: magic, length, crc32), 0 when none.

    Sequence numbers go on across commits, which empty the journal every 64 items or 5 s, so this grows with the
    work done whatever the machine's speed. The file's size does not: it falls at every commit (under load a job
    could commit before its journal reached a size, then finish unkilled), and a size read between two writes of
    one record (8,192 bytes of a 30 kB record was seen) is a torn record, which the next run rightly drops, so a
    kill there left nothing to resume (issue 19, item 3: both failed under load)."""
    from objsearch.analysis.journal import FRAME, JOURNAL_MAGIC, record_from_bytes

    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return 0
    pos, last, n_frames = 0, None, 0
    while pos + FRAME.size <= len(data):
        magic, length, crc = FRAME.unpack_from(data, pos)
        payload = data[pos + FRAME.size: pos + FRAME.size + length]
        if magic != JOURNAL_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        n_frames += 1
        if n_frames > 1:  # the first frame is the header
            last = payload
        pos += FRAME.size + length
    return record_from_bytes(last)[0] if last is not None else 0


def kill_when(args, journal, min_items):
    """Start ``objsearch ARGS`` and SIGKILL it once it has journaled ``min_items`` items (``journaled_items``)."""
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 300
    seen = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            stat = journal.stat() if journal.exists() else None
            changed = stat is not None and (stat.st_size, stat.st_mtime_ns) != seen
            if changed:
                seen = (stat.st_size, stat.st_mtime_ns)
                if journaled_items(journal) >= min_items:
                    break
            time.sleep(0.005)
    finally:
        ended = proc.poll() is not None
        if not ended:
            proc.send_signal(signal.SIGKILL)  # by PID
        proc.wait()
    assert not ended and proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"


def assert_same_index(a_path, b_path, n_images=N_IMAGES, same_projection: bool = True):
    """Same media, objects, boxes, features and vectors; ``same_projection`` False (an index grown by ``add`` or
    ``sync``: its PCA was fitted when it was first analysed) compares each index's vectors with its own projection
    of the (equal) features."""
    with Catalog(a_path) as a, Catalog(b_path) as b:
        assert a.state == b.state == "ready"
        assert a.media_path == b.media_path and len(a.media_path) == n_images
        np.testing.assert_array_equal(a.media_id, b.media_id)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        np.testing.assert_array_equal(a.object_media_id, b.object_media_id)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
        np.testing.assert_allclose(a.features(a.object_id), b.features(b.object_id), atol=1e-5)
        assert a.dims == b.dims == [32]
        if same_projection:
            np.testing.assert_allclose(a.vectors(32), b.vectors(32), atol=1e-4)
        else:
            np.testing.assert_allclose(a.projection(32).transform(a.features(a.object_id)), a.vectors(32), atol=1e-4)
        assert a.thumbnail(a.object_id[-1])[:2] == b"\xff\xd8"


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_items", [1, 4, 12])
def test_analyze_killed_at_several_points_then_resumed_equals_an_uninterrupted_run(folder, uninterrupted, tmp_path,
                                                                                   kill_after_items):
    out = tmp_path / "killed.h5"
    journal = out.with_name(out.name + ".journal")
    kill_when(["analyze", folder, "-o", out, "--weights", WEIGHTS], journal, kill_after_items)
    with Catalog(out) as unfinished:  # the killed file opens and says it is unfinished
        assert unfinished.state == "analyzing"
        assert len(unfinished.media_path) < N_IMAGES
    finished = run_cli("analyze", folder, "-o", out, "--weights", WEIGHTS)
    assert finished.returncode == 0, finished.stderr
    assert "resumed from an interrupted run" in finished.stdout, finished.stdout
    assert not journal.exists()
    assert_same_index(out, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("job", ["add", "sync"])
def test_add_and_sync_killed_then_run_again_equal_an_uninterrupted_run(folder, uninterrupted, detector, tmp_path, job):
    """Half the images analysed first; the other half added (or synced) and killed mid-way, then run again."""
    base = tmp_path / "images"
    shutil.copytree(folder, base)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    names = sorted(p.name for p in base.iterdir())
    for name in names[N_IMAGES // 2:]:
        (base / name).rename(hidden / name)
    out = tmp_path / "grown.h5"
    analyze(base, out, load_config(None, weights=str(WEIGHTS)), detector=detector)
    for name in names[N_IMAGES // 2:]:
        shutil.copy2(hidden / name, base / name)
    args = ["add", base, "-i", out] if job == "add" else ["sync", base, "-i", out]
    kill_when(args, out.with_name(out.name + ".journal"), 4)
    with Catalog(out) as meanwhile:  # opens, holds a prefix of the work
        assert N_IMAGES // 2 <= len(meanwhile.media_path) < N_IMAGES
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert_same_index(out, uninterrupted, same_projection=False)


def _record(i: int) -> MediaRecord:
    dets = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                      np.full((1, 4), i, np.float32))
    return MediaRecord(MediaRef(path=f"{i}.jpg", width=10, height=10), dets, [b"\xff\xd8jpeg"])


def test_journal_drops_a_torn_last_record(tmp_path):
    path = tmp_path / "x.h5.journal"
    journal = Journal(path, {"conf": 0.25})
    for i in range(3):
        journal.append(_record(i))
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the last record is cut short, as a kill during the write leaves it
    again = Journal(path, {"conf": 0.25})
    assert [r.media.path for _, r in again.pending] == ["0.jpg", "1.jpg"]
    assert again.pending[1][1].thumbnails == [b"\xff\xd8jpeg"] and again.pending[1][1].detections.features[0, 0] == 1
    assert again.append(SkippedFile("2.jpg", "cannot read image")) == 3
    again.close()
    kinds = [type(r).__name__ for _, r in Journal(path, {"conf": 0.25}).pending]
    assert kinds == ["MediaRecord", "MediaRecord", "SkippedFile"]


def test_journal_garbage_tail_is_dropped_and_committed_keeps_only_the_header(tmp_path):
    path = tmp_path / "x.h5.journal"
    journal = Journal(path, {"conf": 0.25})
    journal.append(_record(0))
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b"OSJ2\x00\x10\x00\x00half a record")  # a frame header that promises more than follows
        handle.write(os.urandom(3000))
    again = Journal(path, {"conf": 0.25})
    assert len(again.pending) == 1
    again.committed()
    again.close()
    assert Journal(path, {"conf": 0.25}).pending == []


def test_kill_points_count_complete_records_not_bytes(tmp_path):
    """The race behind a flaky kill test: the file passed 2,000 bytes while its first record was half written (seen:
    584 -> 8,192 -> 33,261 bytes), and a kill there leaves no record to resume; and a commit empties the journal, so
    its size does not grow with the work. ``journaled_items`` counts complete records by their sequence numbers."""
    path = tmp_path / "x.h5.journal"
    journal = Journal(path, {"conf": 0.25})
    record = _record(0)
    record.thumbnails = [b"\xff\xd8" + os.urandom(30_000)]  # a record the size of a real one
    journal.append(record)
    journal.close()
    data = path.read_bytes()
    path.write_bytes(data[:8192])  # what a reader saw between two writes
    assert path.stat().st_size > 2_000 and journaled_items(path) == 0
    assert Journal(path, {"conf": 0.25}).pending == []  # nothing to resume from there
    path.write_bytes(data)
    again = Journal(path, {"conf": 0.25})
    assert journaled_items(path) == 1
    again.committed()  # what a commit does: the journal keeps only its header ...
    again.append(_record(1))
    again.close()
    assert journaled_items(path) == 2  # ... and the count goes on


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
    assert journal.pending == [] and Journal(path, {"conf": 0.25}).pending == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_items", [5, 16])
def test_analyze_killed_in_the_middle_of_a_video_then_resumed_equals_an_uninterrupted_run(tmp_path, kill_after_items):
    """The journal holds finished frames of walking.mp4 when the job is killed; the next run applies them and goes
    on from the video's next frame."""
    folder = copy_images(coco_images(2), tmp_path / "media")
    shutil.copy(ROOT.parent / "shared" / "data" / "video" / "walking.mp4", folder / "walking.mp4")
    args = ["--weights", WEIGHTS, "--imgsz", "320", "--video-fps", "2"]
    straight = tmp_path / "straight.h5"
    assert run_cli("analyze", folder, "-o", straight, *args).returncode == 0
    out = tmp_path / "killed.h5"
    journal = out.with_name(out.name + ".journal")
    kill_when(["analyze", folder, "-o", out, *args], journal, kill_after_items)
    with Catalog(out) as unfinished:
        assert unfinished.state == "analyzing"
    finished = run_cli("analyze", folder, "-o", out, *args)
    assert finished.returncode == 0, finished.stderr
    assert "resumed from an interrupted run" in finished.stdout, finished.stdout
    with Catalog(out) as a, Catalog(straight) as b:
        assert a.media_path == b.media_path and len(a.media_path) == 2 + 28
        np.testing.assert_array_equal(a.media_frame_index, b.media_frame_index)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        np.testing.assert_array_equal(a.object_media_id, b.object_media_id)
        np.testing.assert_allclose(a.vectors(32), b.vectors(32), atol=1e-4)
