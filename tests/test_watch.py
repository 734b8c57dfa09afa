"""A watched folder (objsearch.watch, ``objsearch watch``): files copied in, changed, deleted, renamed, a folder moved
in and out, a file still being written, a burst of 500 files, a watcher killed with -9; each file analyzed exactly
once, nothing missed; ``--once`` equals ``sync``. Real watchdog events (inotify), the real detector, real images."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from testdata import ROOT, coco_images, copy_images, run_cli

pytest.importorskip("watchdog", reason="objsearch watch needs watchdog (pip install watchdog)")

SETTLE_S = 0.3


class CountingDetector:
    """The real detector, counting the images each path's analysis passed to it (by pixel checksum)."""

    def __init__(self, detector):
        self._detector = detector
        self.n_images = 0

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def detect_batch(self, images, **kwargs):
        self.n_images += len(images)
        return self._detector.detect_batch(images, **kwargs)


@pytest.fixture
def one_torch_thread():
    """torch at one thread while the test runs (at two, on a box busy with other processes, OpenMP's threads wait on
    each other: the detector ran 20x slower in the burst; the CLI sets this through objsearch.threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def watched(tmp_path, cfg, detector, one_torch_thread):
    """(folder, index, watcher, counting detector): an index of 2 coco128 images, and a started watcher on it."""
    from objsearch.analysis import analyze
    from objsearch.watch import Watcher, WatchSettings

    folder = copy_images(coco_images(2), tmp_path / "photos")
    index = tmp_path / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    counting = CountingDetector(detector)
    watcher = Watcher(index, detector=counting, settings=WatchSettings(settle_s=SETTLE_S, poll_s=0.05))
    watcher.start()
    yield folder, index, watcher, counting
    watcher.stop()


def indexed(index) -> dict[str, int]:
    """{path: number of live media items with that path}, and the ids handed out so far."""
    from objsearch.catalog import Catalog

    with Catalog(index) as c:
        paths = {}
        for p in c.media_path:
            paths[p] = paths.get(p, 0) + 1
        return paths


def ids_handed_out(index) -> int:
    from objsearch.catalog import Catalog

    with Catalog(index) as c:
        return int(c.attrs["next_media_id"])


def settle(watcher, timeout_s: float = 30.0) -> None:
    time.sleep(SETTLE_S + 0.7)  # let the events arrive (watchdog holds a move's first half up to 0.5 s to pair it)
    watcher.drain(timeout_s)


def test_copied_changed_deleted_renamed_and_folders_moved(watched, tmp_path):
    folder, index, watcher, counting = watched
    images = coco_images(12)[2:]
    start_ids = ids_handed_out(index)

    for p in images[:3]:  # copied in
        shutil.copy(p, folder / p.name)
    settle(watcher)
    assert counting.n_images == 3
    assert set(indexed(index)) == {p.name for p in coco_images(2) + images[:3]}

    shutil.copy(images[3], folder / images[0].name)  # changed: other bytes under the same name
    settle(watcher)
    assert counting.n_images == 4
    (folder / images[1].name).unlink()  # deleted
    settle(watcher)
    assert counting.n_images == 4 and images[1].name not in indexed(index)
    os.rename(folder / images[2].name, folder / "renamed.jpg")  # renamed
    settle(watcher)
    assert counting.n_images == 5

    outside = copy_images(images[4:7], tmp_path / "elsewhere" / "trip")  # a folder moved in
    os.rename(outside, folder / "trip")
    settle(watcher)
    assert counting.n_images == 8
    now = indexed(index)
    assert {f"trip/{p.name}" for p in images[4:7]} <= set(now)

    os.rename(folder / "trip", tmp_path / "elsewhere" / "gone")  # and out again
    settle(watcher)
    now = indexed(index)
    assert not any(p.startswith("trip/") for p in now)
    assert set(now) == {p.name for p in coco_images(2)} | {images[0].name, "renamed.jpg"}
    assert all(n == 1 for n in now.values())
    # every analysis made exactly one media item: nothing analyzed twice, nothing missed
    assert ids_handed_out(index) - start_ids == counting.n_images == 8
    assert watcher.n_pending == 0


def test_a_file_still_being_written_is_analyzed_once_when_complete(watched):
    folder, index, watcher, counting = watched
    data = coco_images(3)[2].read_bytes()
    target = folder / "slow.jpg"
    with open(target, "wb") as out:  # half, a pause longer than settle_s, the rest
        out.write(data[: len(data) // 2])
        out.flush()
        deadline = time.monotonic() + 3 * SETTLE_S
        while time.monotonic() < deadline:
            watcher.step()  # the writer still has it open: no job may look at it now
            time.sleep(0.05)
        assert counting.n_images == 0 and watcher.stats.n_jobs == 0
        out.write(data[len(data) // 2:])
    settle(watcher)
    assert counting.n_images == 1 and watcher.stats.n_jobs == 1
    assert watcher.stats.n_skipped == 0  # never seen half-written (it would have been skipped as unreadable)
    from objsearch.catalog import Catalog

    with Catalog(index) as c:
        row = c.media_path.index("slow.jpg")
        assert (int(c.media_file_size[row])) == len(data)


@pytest.mark.slow
def test_a_burst_of_500_small_files_nothing_missed_nothing_twice(tmp_path, cfg, one_torch_thread):
    """500 small images (80 px, made from coco128) written as fast as possible, some into new subfolders."""
    from objsearch.analysis import analyze
    from objsearch.provenance import load_detector
    from objsearch.watch import Watcher, WatchSettings

    small_cfg = {**cfg, "imgsz": 96}
    detector = CountingDetector(load_detector(small_cfg))
    folder = tmp_path / "burst"
    folder.mkdir()
    sources = [cv2.resize(cv2.imread(str(p)), (80, 60)) for p in coco_images(20)]
    cv2.imwrite(str(folder / "seed.jpg"), sources[0])
    index = tmp_path / "burst.h5"
    analyze(folder, index, small_cfg, detector=detector)
    detector.n_images = 0
    watcher = Watcher(index, detector=detector, settings=WatchSettings(settle_s=SETTLE_S, poll_s=0.05))
    watcher.start()
    try:
        names = []
        for i in range(500):
            sub = folder / f"part{i // 100}" if i % 2 else folder
            sub.mkdir(exist_ok=True)
            name = f"{sub.name}/{i:03d}.jpg" if sub != folder else f"{i:03d}.jpg"
            image = np.roll(sources[i % 20], i, axis=1)
            cv2.imwrite(str(folder / name), image)
            names.append(name)
        settle(watcher, timeout_s=300)
    finally:
        watcher.stop()
    now = indexed(index)
    assert set(now) == set(names) | {"seed.jpg"}
    assert all(n == 1 for n in now.values())
    assert detector.n_images == 500


def test_watch_once_equals_sync(tmp_path, cfg, detector):
    from objsearch.analysis import analyze
    from objsearch.catalog import Catalog

    results = []
    for how in ("sync", "watch"):
        folder = copy_images(coco_images(3), tmp_path / how / "photos")
        index = tmp_path / how / "photos.h5"
        analyze(folder, index, cfg, detector=detector)
        for p in coco_images(6)[3:]:
            shutil.copy(p, folder / p.name)
        (folder / coco_images(1)[0].name).unlink()
        shutil.copy(coco_images(7)[6], folder / coco_images(2)[1].name)
        args = ["sync", "-i", index] if how == "sync" else ["watch", "-i", index, "--once"]
        proc = run_cli(*args, timeout=300)
        assert proc.returncode == 0, proc.stderr
        results.append(proc.stdout.split(" in ")[0])
        with Catalog(index) as c:
            results.append((c.media_path, c.media_id.tolist(), c.object_id.tolist(), c.xyxy.tolist()))
    assert results[0] == results[2] and results[1] == results[3]
    assert "added 3 images" in results[0] and "1 changed" in results[0] and "removed 1 image " in results[0]


def test_watch_killed_with_9_catches_up_on_the_next_start(tmp_path, cfg, detector):
    """A real `objsearch watch` process is killed while files arrive; the next start (``--once``) indexes every
    file exactly once."""
    from objsearch.analysis import analyze

    folder = copy_images(coco_images(2), tmp_path / "photos")
    index = tmp_path / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT))
    log = open(tmp_path / "watch.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", "watch", "-i", str(index), "--settle", "0.2"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "watching" not in (tmp_path / "watch.log").read_text():
            assert proc.poll() is None, (tmp_path / "watch.log").read_text()
            assert time.monotonic() < deadline, "objsearch watch did not start"
            time.sleep(0.2)
        images = coco_images(14)[2:]
        for p in images[:4]:
            shutil.copy(p, folder / p.name)
        deadline = time.monotonic() + 60
        while len(indexed(index)) < 4 and time.monotonic() < deadline:  # some of them went in
            time.sleep(0.05)
        for p in images[4:]:
            shutil.copy(p, folder / p.name)
        time.sleep(0.4)  # mid-job, most likely
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    proc = run_cli("watch", "-i", index, "--once", timeout=300)
    assert proc.returncode == 0, proc.stderr
    now = indexed(index)
    assert set(now) == {p.name for p in coco_images(14)}
    assert all(n == 1 for n in now.values())


def test_watch_outside_the_roots_is_one_line(tmp_path, small_index):
    proc = run_cli("watch", tmp_path, "-i", small_index[0], "--once", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "under none of the index's folders" in proc.stderr


def test_the_polling_observer_finds_a_new_file_once(tmp_path, cfg, detector, one_torch_thread):
    """--polling (network file systems): watchdog's polling observer, no close events; a copied file is analyzed once."""
    from objsearch.analysis import analyze
    from objsearch.watch import Watcher, WatchSettings

    folder = copy_images(coco_images(1), tmp_path / "photos")
    index = tmp_path / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    counting = CountingDetector(detector)
    watcher = Watcher(index, detector=counting, settings=WatchSettings(settle_s=SETTLE_S, poll_s=0.05, polling=True,
                                                                       polling_interval_s=0.2))
    watcher.start()
    try:
        source = coco_images(2)[1]
        shutil.copy(source, folder / source.name)
        deadline = time.monotonic() + 30
        while source.name not in indexed(index) and time.monotonic() < deadline:
            watcher.step()
            time.sleep(0.05)
        settle(watcher)
    finally:
        watcher.stop()
    assert counting.n_images == 1 and set(indexed(index)) == {p.name for p in coco_images(2)}
