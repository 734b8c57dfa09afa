"""Detector, analysis, the index file and search, on real coco128 images with the real weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import cv2
import h5py
import numpy as np
import pytest

from conftest import BUS, COCO128_IMAGES, ROOT, WEIGHTS, coco_images
from objsearch.engine import Searcher, analyze
from objsearch.errors import EmptyFolderError, ImageReadError, IndexFileError
from objsearch.store import IndexFile


def test_detector_matches_ultralytics_predict(detector):
    from ultralytics import YOLO

    image = cv2.imread(str(BUS))
    dets = detector(image)
    reference = YOLO(str(WEIGHTS)).predict(image, verbose=False)[0].boxes
    np.testing.assert_allclose(dets.xyxy, reference.xyxy.numpy(), atol=1e-2)
    np.testing.assert_array_equal(dets.class_id, reference.cls.numpy().astype(int))
    assert dets.features.shape == (len(dets), detector.n_features)
    assert np.isfinite(dets.features).all()
    names = [detector.names[c] for c in dets.class_id]
    assert "bus" in names and names.count("person") >= 3


def test_detector_rejects_non_images(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((10, 10), np.float32))


def test_analyze_counts_skipped_and_ignored_files(small_index):
    path, summary = small_index
    assert summary.n_images == 24
    assert sorted(p for p, _ in summary.skipped) == ["corrupt.jpg", "empty.jpg"]
    assert all("cannot read image" in reason for _, reason in summary.skipped)
    assert summary.n_not_images == 1
    assert summary.n_objects > 50
    assert not path.with_name(path.name + ".journal").exists()


def test_index_file_round_trip(small_index, small_folder):
    path, summary = small_index
    with IndexFile(path) as f:
        assert len(f.image_path) == 24 and len(f) == summary.n_objects
        assert all(not p.startswith("/") and (small_folder / p).is_file() for p in f.image_path)
        assert "sub/" in "".join(f.image_path)
        w, h = f.image_width[f.image_id], f.image_height[f.image_id]
        assert np.all(f.xyxy[:, 0] >= -1) and np.all(f.xyxy[:, 2] <= w + 1) and np.all(f.xyxy[:, 3] <= h + 1)
        assert np.all((f.confidence >= 0.25) & (f.confidence <= 1))
        assert f.dims == [16, 32]
        features = f.features(np.arange(len(f)))
        for d in f.dims:
            np.testing.assert_allclose(f.projection(d).transform(features), f.vectors(d), rtol=1e-4, atol=1e-5)
        for oid in (0, len(f) - 1):
            thumb = cv2.imdecode(np.frombuffer(f.thumbnail(oid), np.uint8), cv2.IMREAD_COLOR)
            assert thumb is not None and max(thumb.shape[:2]) <= 128
        assert f.attrs["class_names"][0] == "person" and len(f.weights_sha256) == 64
        assert f.attrs["config"]["dims"] == [16, 32]
        assert [p for p, _ in f.attrs["skipped"]] == ["corrupt.jpg", "empty.jpg"]
        np.testing.assert_array_equal(f.features([3, 1, 3]), features[[3, 1, 3]])


def test_analyze_refuses_empty_folder_and_existing_output(tmp_path, small_index, small_folder, cfg, detector):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(EmptyFolderError, match="holds no image files"):
        analyze(tmp_path / "empty", tmp_path / "x.h5", cfg, detector=detector)
    with pytest.raises(IndexFileError, match="already exists"):
        analyze(small_folder, small_index[0], cfg, detector=detector)


@pytest.mark.slow
def test_bus_and_persons_find_their_class(coco_index):
    with Searcher(coco_index) as searcher:
        result = searcher.search_file(BUS, k=8)
        names = searcher.class_names
        found = 0
        for cid, ids in zip(result.detections.class_id, result.ids):
            if names[cid] not in ("bus", "person"):
                continue
            neighbour_classes = Counter(names[c] for c in searcher.index.class_id[ids[ids >= 0]])
            assert neighbour_classes.most_common(1)[0][0] == names[cid], (names[cid], neighbour_classes)
            found += 1
        assert found >= 4


def test_query_of_an_indexed_image_excludes_itself(small_index, small_folder):
    path, _ = small_index
    image = small_folder / "sub" / coco_images(24)[1].name
    with Searcher(path) as searcher:
        own = searcher.image_id_of(image)
        assert own >= 0
        result = searcher.search_file(image, k=5)
        assert len(result.detections) > 0
        assert not np.isin(searcher.index.image_id[result.ids[result.ids >= 0]], [own]).any()
        kept = searcher.search_file(image, k=1, exclude_self=False)
        assert (searcher.index.image_id[kept.ids[:, 0]] == own).mean() > 0.5  # itself is nearest
        with pytest.raises(ImageReadError):
            searcher.search_file(small_folder / "corrupt.jpg")


def test_moved_folder_loads_with_base_dir(tmp_path, cfg, detector):
    folder = tmp_path / "before"
    folder.mkdir()
    for p in coco_images(6):
        shutil.copy(p, folder / p.name)
    index = tmp_path / "moved.h5"
    analyze(folder, index, cfg, detector=detector)
    moved = folder.rename(tmp_path / "after")
    with Searcher(index, base_dir=moved) as searcher:
        assert all(searcher.image_path(i).is_file() for i in range(len(searcher.index.image_path)))
        image = moved / coco_images(6)[2].name
        own = searcher.image_id_of(image)
        assert own == 2
        result = searcher.search_file(image, k=3)
        assert not (searcher.index.image_id[result.ids[result.ids >= 0]] == own).any()
    with Searcher(index) as stale:  # without --base-dir the old place is used, and the image is not recognised
        assert stale.image_id_of(image) == -1


def _run_analyze(folder, out):
    return subprocess.Popen(
        [sys.executable, "-m", "objsearch", "analyze", str(folder), "-o", str(out), "--weights", str(WEIGHTS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, cfg, detector):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in coco_images(40):
        shutil.copy(p, folder / p.name)
    killed = tmp_path / "killed.h5"
    journal = killed.with_name("killed.h5.journal")
    proc = _run_analyze(folder, killed)
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or journal.stat().st_size < 60_000):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert journal.exists() and not killed.exists(), "the run finished before it could be killed"
    with open(journal, "ab") as handle:  # and a torn record at the end, as a kill during a write leaves
        handle.write(b"OSJ1\x00\x10\x00\x00garbage")
    result = subprocess.run(
        [sys.executable, "-m", "objsearch", "analyze", str(folder), "-o", str(killed), "--weights", str(WEIGHTS)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    resumed = int(result.stdout.split("(")[1].split(" resumed")[0])
    assert 0 < resumed < 40
    assert not journal.exists()
    straight = tmp_path / "straight.h5"
    analyze(folder, straight, load_cfg(), detector=detector)
    with IndexFile(killed) as a, IndexFile(straight) as b:
        assert a.image_path == b.image_path
        np.testing.assert_array_equal(a.image_id, b.image_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.features(np.arange(len(a))), b.features(np.arange(len(b))), atol=1e-5)
        np.testing.assert_allclose(a.vectors(32), b.vectors(32), atol=1e-4)


def load_cfg():
    from objsearch.config import load_config

    return load_config(None, weights=str(WEIGHTS))


def test_journal_with_other_settings_is_refused(tmp_path, cfg, detector):
    from objsearch.store import Journal

    Journal(tmp_path / "x.h5.journal", {"conf": 0.25}).close()
    with pytest.raises(IndexFileError, match="other settings"):
        Journal(tmp_path / "x.h5.journal", {"conf": 0.5})


@pytest.mark.parametrize("damage", ["text", "truncated", "foreign", "version"])
def test_broken_index_files_are_refused(tmp_path, small_index, damage):
    path = tmp_path / f"{damage}.h5"
    if damage == "text":
        path.write_text("hello")
        expected = "not a readable HDF5"
    elif damage == "truncated":
        data = small_index[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected = "not a readable HDF5|damaged"
    elif damage == "foreign":
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
        expected = "not an objsearch index"
    else:
        shutil.copy(small_index[0], path)
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 99
        expected = "format version 99"
    with pytest.raises(IndexFileError, match=expected):
        IndexFile(path)
