"""The format 2 catalog: round trips, stable ids, format 1 reading and conversion, crash safety (a writer killed at
every kind of point inside its commits), the writer lock, hostile files and a bit-flip fuzz.

All data is synthetic and small (D=16 features, random projections to 16 and 32 dims, real JPEG thumbnails)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from objsearch.catalog import Catalog, CatalogWriter, compact, convert, repair
from objsearch.catalog import storage as catalog_storage
from objsearch.catalog import txn
from objsearch.errors import IndexFileError, IndexLockedError
from objsearch.projection import make_projection
from objsearch.types import Detections, MediaRecord, MediaRef, SkippedFile

D = 16
CLASS_NAMES = ["person", "bicycle", "car", "dog", "cat"]
ROOT = Path(__file__).resolve().parents[1]


def projections(seed: int = 0):
    x = np.random.default_rng(seed).normal(size=(8, D)).astype(np.float32)
    return [make_projection("random", 16, random_state=1).fit(x), make_projection("random", 32, random_state=2).fit(x)]


def jpeg(rng) -> bytes:
    h, w = rng.integers(8, 24, size=2)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def make_record(rng, path: str, n: int, *, frame: int = -1) -> MediaRecord:
    if frame >= 0 and not path.endswith(".mp4"):
        path += ".mp4"  # a frame's file is a video (an index refuses a frame of an image file)
    width, height = int(rng.integers(100, 400)), int(rng.integers(100, 400))
    xy = rng.uniform(0, 50, (n, 2)).astype(np.float32)
    xyxy = np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2)).astype(np.float32)], axis=1)  # inside the image
    det = Detections(xyxy=xyxy, confidence=rng.uniform(0.2, 1, n).astype(np.float32),
                     class_id=rng.integers(0, len(CLASS_NAMES), n),
                     features=rng.normal(size=(n, D)).astype(np.float32))
    ref = MediaRef(path=path, width=width, height=height,
                   frame_index=frame, timestamp_s=frame / 25.0 if frame >= 0 else -1.0,
                   file_size=int(rng.integers(1, 10**6)), file_mtime_ns=int(rng.integers(1, 2**62)))
    return MediaRecord(media=ref, detections=det, thumbnails=[jpeg(rng) for _ in range(n)])


ATTRS = {"weights_sha256": "ab" * 32, "weights_name": "yolo-test.pt", "feature_recipe": {"layers": [15, 18]},
         "config": {"conf": 0.25}, "class_names": CLASS_NAMES, "base_dir": "/data/photos", "note": "extra"}


def new_catalog(path: Path, **kw) -> CatalogWriter:
    return CatalogWriter.create(path, attrs=ATTRS, n_features=D, projections=projections(), fsync=False, **kw)


def snapshot(cat: Catalog) -> dict:
    """Everything a reader can get, read from disk."""
    snap = {name: getattr(cat, name) for name in (
        "media_id", "media_path", "media_width", "media_height", "media_frame_index", "media_timestamp_s",
        "media_file_size", "media_file_mtime_ns", "object_id", "object_media_id", "xyxy", "confidence", "class_id",
        "skipped", "dims", "class_names", "n_features", "generation", "state", "format_version")}
    snap["attrs"] = {k: v for k, v in cat.attrs.items() if k not in ("uuid", "created")}
    for d in cat.dims:
        snap[f"vectors{d}"] = cat.vectors(d)
        state = cat.projection(d).to_state()
        snap[f"proj{d}"] = (state["method"], state["random_state"], state["components"], state["mean"])
    snap["features"] = cat.features(cat.object_id)
    snap["thumbs"] = [cat.thumbnail(i) for i in cat.object_id]
    return snap


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            assert np.asarray(va).dtype == np.asarray(vb).dtype, key
            assert np.array_equal(va, vb), key
        elif isinstance(va, tuple):
            assert va[:2] == vb[:2] and all(np.array_equal(x, y) for x, y in zip(va[2:], vb[2:])), key
        else:
            assert va == vb, key


def expected_from_records(records: dict[int, MediaRecord], obj_ids: dict[int, np.ndarray],
                          removed: set[int] = frozenset()) -> dict:
    """What the live arrays must hold for the given media (by id), their object ids and the removed objects."""
    mids = sorted(records)
    rows = []
    for mid in mids:
        for j, oid in enumerate(obj_ids[mid]):
            if int(oid) not in removed:
                rows.append((int(oid), mid, j))
    rows.sort()
    return {"media_id": np.array(mids, np.int64), "media_path": [records[m].media.path for m in mids],
            "object_id": np.array([r[0] for r in rows], np.int64),
            "object_media_id": np.array([r[1] for r in rows], np.int64),
            "xyxy": np.array([records[m].detections.xyxy[j] for _, m, j in rows], np.float32).reshape(-1, 4),
            "features": np.array([records[m].detections.features[j] for _, m, j in rows], np.float32).reshape(-1, D),
            "thumbs": [records[m].thumbnails[j] for _, m, j in rows]}


# ------------------------------------------------------------------------------------------------- round trip
def test_round_trip_stable_ids_and_compact(tmp_path):
    path = tmp_path / "INDEX.h5"
    rng = np.random.default_rng(0)
    records, obj_ids = {}, {}
    nonutf8 = os.fsdecode(b"caf\xe9.jpg")
    with new_catalog(path) as w:
        assert w.generation == 0 and w.next_media_id == 0
        for commit in range(3):
            for i in range(4):
                name = nonutf8 if (commit, i) == (1, 2) else f"dir/img_{commit}_{i}.jpg"
                rec = make_record(rng, name, int(rng.integers(0, 5)), frame=7 if i == 3 else -1)
                mid, oids = w.add(rec)
                records[mid], obj_ids[mid] = rec, oids
            assert w.commit() == commit + 1
        assert sorted(records) == list(range(12))
        assert np.array_equal(np.concatenate([obj_ids[m] for m in range(12)]), np.arange(w.next_object_id))
    with Catalog(path) as cat:
        exp = expected_from_records(records, obj_ids)
        snap = snapshot(cat)
        for key, value in exp.items():
            if isinstance(value, list):
                assert snap[key] == value, key
            else:
                assert np.array_equal(snap[key], value), key
        assert nonutf8 in cat.media_path
        assert cat.generation == 3 and cat.format_version == 2 and len(cat) == len(exp["object_id"])
        assert cat.attrs["note"] == "extra" and cat.attrs["feature_recipe"] == {"layers": [15, 18]}
        ref = cat.media(11)
        assert ref.frame_index == 7 and ref.timestamp_s == pytest.approx(7 / 25) and ref.media_id == 11
        assert ref.file_size == records[11].media.file_size and ref.width == records[11].media.width
        for d, proj in zip((16, 32), projections()):
            assert np.allclose(cat.vectors(d), proj.transform(exp["features"]), atol=1e-5)
        assert list(cat.media_rows([3, 99])) == [3, -1]
        assert not cat.changed()

    # remove, add, compact: ids stay, removed never reappear, ids never reused
    with CatalogWriter.open(path, fsync=False) as w:
        removed_objects = w.remove_media([2, 5])
        assert removed_objects == len(obj_ids[2]) + len(obj_ids[5])
        victim = int(obj_ids[7][0]) if len(obj_ids[7]) else int(exp["object_id"][0])
        assert w.remove_objects([victim, 10**9]) == 1
        rec = make_record(rng, "new.jpg", 3)
        mid, oids = w.add(rec)
        assert mid == 12 and oids[0] == exp["object_id"][-1] + 1
        w.commit()
    del records[2], records[5]
    records[mid], obj_ids[mid] = rec, oids
    exp = expected_from_records(records, obj_ids, {victim})
    with Catalog(path) as cat:
        before = snapshot(cat)
        assert np.array_equal(before["object_id"], exp["object_id"])
        assert np.array_equal(before["features"], exp["features"]) and before["thumbs"] == exp["thumbs"]
        assert not np.isin([2, 5], cat.media_id).any() and victim not in cat.object_id
        n_rows, n_live = compact(path)
        assert cat.changed()
        assert n_rows > n_live == len(exp["object_id"])
        # an open view still reads its (stable) ids after the compaction moved the rows
        assert cat.features(cat.object_id[-2:]).tobytes() == exp["features"][-2:].tobytes()
    with Catalog(path) as cat:
        after = snapshot(cat)
        assert after.pop("generation") == before.pop("generation") + 1
        after["attrs"].pop("generation"), before["attrs"].pop("generation")
        assert_same(before, after)
    with CatalogWriter.open(path, fsync=False) as w:
        mid2, oids2 = w.add(make_record(rng, "again.jpg", 2))
        assert mid2 == 13 and oids2[0] == oids[-1] + 1  # ids are never reused, not even after compaction
        w.commit()


def test_a_writer_reads_the_object_rows_it_changes_not_all_of_them(tmp_path, monkeypatch):
    """Issue 18: opening the writer read every object row (a remove cost 231 ms at 376k objects against 15 ms at
    coco128). Now opening reads no /objects row, and removing one image reads a few chunks of the columns it
    searches, not whole columns; what is removed is exactly that image's objects."""
    path = tmp_path / "INDEX.h5"
    n_media, per_media = 8000, 5  # 40,000 objects: 5 chunks of /objects/id
    rng = np.random.default_rng(11)
    with new_catalog(path) as w:
        for i in range(n_media):
            n = per_media
            xyxy = np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1))
            det = Detections(xyxy=xyxy, confidence=np.full(n, 0.5, np.float32), class_id=np.zeros(n, np.int64),
                             features=rng.normal(size=(n, D)).astype(np.float32))
            w.add(MediaRecord(MediaRef(path=f"m/{i}.jpg", width=100, height=100), det, [b"j"] * n))
        w.commit()
    read: dict[str, int] = {}
    original = h5py.Dataset.__getitem__

    def counting(self, selection):
        out = original(self, selection)
        if self.name.startswith("/objects/"):
            read[self.name] = read.get(self.name, 0) + int(np.asarray(out).shape[0] if np.ndim(out) else 1)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    with CatalogWriter.open(path, fsync=False) as w:
        assert read == {}, read  # opening: no object row
        victim = int(w.media_id[4321])
        assert w.remove_media([victim]) == per_media
        assert max(read.values()) < 3 * 8192, read  # a few chunks, not the 40,000 rows
        w.commit()
    monkeypatch.undo()
    with Catalog(path) as cat:
        assert len(cat.object_id) == n_media * per_media - per_media
        assert victim not in set(cat.object_media_id.tolist()) and victim not in set(cat.media_id.tolist())


def test_writer_accessors_projection_and_skipped(tmp_path):
    path = tmp_path / "INDEX.h5"
    rng = np.random.default_rng(1)
    with new_catalog(path) as w:
        for i in range(5):
            w.add(make_record(rng, f"a{i}.jpg", 3))
        w.set_skipped([SkippedFile("bad.jpg", "not an image"), SkippedFile(os.fsdecode(b"\xff.png"), "empty")])
        w.commit(state="analyzing")
        ids, feats = zip(*w.iter_features(chunk=4))
        ids, feats = np.concatenate(ids), np.concatenate(feats)
        assert np.array_equal(ids, np.arange(15))
        pca = make_projection("pca", 16).fit(feats)
        w.set_projection(pca)
        w.add(make_record(rng, "late.jpg", 2))
        w.commit(state="ready")
        assert w.media_path[-1] == "late.jpg" and len(w.object_id) == 17
        with pytest.raises(ValueError, match="managed by the catalog"):
            w.set_attrs(generation=5)
        with pytest.raises(ValueError, match="features must have shape"):
            w.add(MediaRecord(MediaRef("x.jpg"), Detections.empty(D + 1), []))
    with Catalog(path) as cat:
        assert cat.state == "ready" and cat.skipped[1].path == os.fsdecode(b"\xff.png")
        assert cat.projection(16).method == "pca"
        assert np.allclose(cat.vectors(16), pca.transform(cat.features(cat.object_id)), atol=1e-5)
        assert np.allclose(cat.vectors(32), projections()[1].transform(cat.features(cat.object_id)), atol=1e-5)
        with pytest.raises(IndexFileError, match="not 64"):
            cat.projection(64)
    with pytest.raises(IndexFileError, match="already exists"):
        new_catalog(path)


# --------------------------------------------------------------------------------------------------- format 1
def write_format1(path: Path, rng) -> list:
    from format1 import ImageRecord, write_index

    recs = []
    for i in range(6):
        r = make_record(rng, f"v1/{i}.jpg", i % 3)
        recs.append(ImageRecord(path=r.media.path, width=r.media.width, height=r.media.height,
                                xyxy=r.detections.xyxy, confidence=r.detections.confidence,
                                class_id=r.detections.class_id, features=r.detections.features,
                                thumbnails=r.thumbnails))
    recs.append(ImageRecord(path="broken.jpg", skipped="cannot decode"))
    x = np.concatenate([r.features for r in recs if r.features is not None and len(r.features)])
    write_index(path, recs, projections=[make_projection("random", 16).fit(x)], n_features=D,
                attrs={"class_names": CLASS_NAMES, "weights_sha256": "cd" * 32, "config": {"a": 1}})
    return recs


def test_format1_read_and_convert(tmp_path):
    src, dst = tmp_path / "old.h5", tmp_path / "new.h5"
    recs = write_format1(src, np.random.default_rng(2))
    kept = [r for r in recs if not r.skipped]
    with Catalog(src) as cat:
        assert cat.format_version == 1 and cat.weights_sha256 == "cd" * 32
        assert cat.media_path == [r.path for r in kept]
        assert np.array_equal(cat.media_id, np.arange(len(kept)))
        assert np.all(cat.media_frame_index == -1) and np.all(cat.media_file_size == -1)
        assert np.array_equal(cat.xyxy, np.concatenate([r.xyxy for r in kept]))
        assert np.array_equal(cat.object_media_id, np.concatenate([np.full(len(r.xyxy), i) for i, r in enumerate(kept)]))
        assert cat.thumbnail(3) == [t for r in kept for t in r.thumbnails][3]
        assert cat.skipped == [SkippedFile("broken.jpg", "cannot decode")]
        old = snapshot(cat)
    assert convert(src, dst) == len(old["object_id"])
    with Catalog(dst) as cat:
        new = snapshot(cat)
    assert new.pop("format_version") == 2 and old.pop("format_version") == 1
    old_attrs, new_attrs = old.pop("attrs"), new.pop("attrs")
    assert new_attrs["class_names"] == old_attrs["class_names"] and new_attrs["config"] == {"a": 1}
    assert_same(old, new)
    with pytest.raises(IndexFileError, match="already exists"):
        convert(src, dst)
    with pytest.raises(IndexFileError, match="source itself"):
        convert(src, src, overwrite=True)
    with pytest.raises(IndexFileError, match="objsearch convert"):
        CatalogWriter.open(src)


# ------------------------------------------------------------------------------------------------ the lock
def test_second_writer_refused_at_once(tmp_path):
    path = tmp_path / "INDEX.h5"
    with new_catalog(path, description="objsearch add"):
        start = time.monotonic()
        with pytest.raises(IndexLockedError, match=rf"INDEX.h5 is being written by process {os.getpid()} "
                                                   r"\(objsearch add\); try again when it finishes"):
            CatalogWriter.open(path)
        code = ("import sys\nfrom objsearch.catalog import CatalogWriter\nfrom objsearch.errors import IndexLockedError\n"
                "try:\n    CatalogWriter.open(sys.argv[1])\nexcept IndexLockedError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert f"by process {os.getpid()} (objsearch add)" in out.stdout, out.stderr
        assert time.monotonic() - start < 30
        with Catalog(path) as cat:  # readers are not blocked by a writer
            assert len(cat) == 0
    with CatalogWriter.open(path):  # released on close
        pass


# ------------------------------------------------------------------------------------------- crash safety
def run_steps(path: Path, start: int, stop: int = 8) -> None:
    """Steps ``start`` to ``stop - 1`` of a deterministic sequence of transactions; step k leaves generation k
    (step 0 creates the file, step 5 compacts it)."""
    for step in range(start, stop):
        rng = np.random.default_rng(100 + step)
        if step == 0:
            new_catalog(path, overwrite=True).close()
            continue
        if step == 5:
            compact(path)
            continue
        with CatalogWriter.open(path, fsync=False) as w:
            if step in (1, 2, 6):
                for i in range(3 + step % 2):
                    w.add(make_record(rng, f"s{step}/{i}.jpg", int(rng.integers(0, 6))))
            if step == 2:
                w.remove_media([1])
            if step == 3:
                w.remove_objects(w.object_id[::3])
                w.set_skipped([SkippedFile("x.jpg", "unreadable")])
                w.set_attrs(state="analyzing")
            if step == 4:
                for i in range(12):
                    w.add(make_record(rng, f"s4/{i}.jpg", 6))
            if step == 6:
                w.set_projection(make_projection("pca", 16).fit(rng.normal(size=(30, D)).astype(np.float32)))
            if step == 7:
                w.remove_media(w.media_id[:3])
                w.add(make_record(rng, "last.jpg", 4))
                w.set_attrs(state="ready")
            w.commit()


class _Killer:
    """Counts the writes of a transaction (data writes, truncations, undo records, the fsync before the compaction's
    rename) and SIGKILLs the process at event ``kill_at`` (an undo record is first written half, torn)."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at, self.events = kill_at, 0

    def hit(self, before_death=None) -> None:
        self.events += 1
        if self.events == self.kill_at:
            if before_death is not None:
                before_death()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self, monkeypatch) -> None:
        write, truncate, append = txn.JournaledFile.write, txn.JournaledFile.truncate, txn.UndoLog.append
        fsync_path = catalog_storage.fsync_path
        killer = self

        def k_write(self, data):
            killer.hit()
            return write(self, data)

        def k_truncate(self, size=None):
            killer.hit()
            return truncate(self, size)

        def k_append(self, offset, data):
            killer.hit(lambda: os.write(self.fd, (b"\x00" * 16 + bytes(data))[:8 + len(data) // 2]))
            return append(self, offset, data)

        def k_fsync_path(p):
            killer.hit()
            return fsync_path(p)

        monkeypatch.setattr(txn.JournaledFile, "write", k_write)
        monkeypatch.setattr(txn.JournaledFile, "truncate", k_truncate)
        monkeypatch.setattr(txn.UndoLog, "append", k_append)
        monkeypatch.setattr(catalog_storage, "fsync_path", k_fsync_path)


def _kill_and_resume(tmp_path, monkeypatch, points_per_step: int | None, recover=None) -> None:
    """Kill a writer running the sequence at chosen events (``points_per_step`` spread over each step's events, or
    every event when None); after each kill (and ``recover(path)`` when given, e.g. ``objsearch repair``), a reader
    must see exactly the state after some step, and running the remaining steps must end in the uninterrupted
    run's final state."""
    ref_path = tmp_path / "ref.h5"
    counter = _Killer(None)
    counter.install(monkeypatch)
    reference, bounds = [], [0]
    for step in range(8):  # the uninterrupted run, with a snapshot after each step
        run_steps(ref_path, step, step + 1)
        bounds.append(counter.events)
        with Catalog(ref_path) as cat:
            assert cat.generation == step
            reference.append(snapshot(cat))
    total = counter.events
    if points_per_step is None:
        kill_points = list(range(1, total + 1))
    else:
        kill_points = sorted({int(k) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo
                              for k in np.linspace(lo + 1, hi, points_per_step)})
    seen_prefixes = set()
    path = tmp_path / "INDEX.h5"
    for kill_at in kill_points:
        for p in (path, txn.undo_path(path), path.with_name(path.name + ".tmp")):
            if p.exists():
                p.unlink()
        pid = os.fork()
        if pid == 0:  # the writer to kill
            try:
                counter.kill_at, counter.events = kill_at, 0
                run_steps(path, 0)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
            f"kill point {kill_at}/{total}: the writer exited with status {status}"
        counter.kill_at = None
        if recover is not None and path.exists():
            recover(path)
        if not path.exists():  # killed inside create, before its rename: no index yet
            gen = -1
        else:
            with Catalog(path) as cat:  # rolls back the killed transaction
                gen = cat.generation
                assert_same(snapshot(cat), reference[gen])
            assert not txn.undo_path(path).exists()
        seen_prefixes.add(gen)
        run_steps(path, gen + 1)
        with Catalog(path) as cat:
            assert_same(snapshot(cat), reference[-1])
    assert seen_prefixes == set(range(-1, 7)), seen_prefixes  # a kill inside every step was tried


def test_killed_writer_leaves_a_committed_prefix(tmp_path, monkeypatch):
    _kill_and_resume(tmp_path, monkeypatch, points_per_step=3)


@pytest.mark.exhaustive
def test_killed_writer_at_every_write(tmp_path, monkeypatch):
    _kill_and_resume(tmp_path, monkeypatch, points_per_step=None)


def test_reader_refuses_unrecoverable_transaction(tmp_path, monkeypatch):
    path = tmp_path / "INDEX.h5"
    with new_catalog(path) as w:
        w.add(make_record(np.random.default_rng(3), "a.jpg", 2))
        w.commit()
    good = path.read_bytes()
    # a killed writer: the first 100 bytes saved in the undo log, then overwritten, plus bytes appended
    undo = txn.UndoLog(txn.undo_path(path), len(good), fsync=False)
    undo.append(0, good[:4096])
    undo.close()
    with open(path, "r+b") as fh:
        fh.write(b"\xff" * 100)
        fh.seek(0, 2)
        fh.write(b"garbage" * 100)

    def read_only_folder(self, path, description="objsearch"):  # what a reader meets in a folder it cannot write
        raise IndexFileError(f"cannot create the writer lock {txn.lock_path(path)}: Read-only file system")

    monkeypatch.setattr(txn.WriterLock, "__init__", read_only_folder)
    with pytest.raises(IndexFileError, match="killed writer left an unfinished transaction.*objsearch repair"):
        Catalog(path)
    assert txn.undo_path(path).exists()  # nothing was served, nothing was touched


def test_reader_rolls_back_and_repair(tmp_path):
    path = tmp_path / "INDEX.h5"
    with new_catalog(path) as w:
        w.add(make_record(np.random.default_rng(3), "a.jpg", 2))
        w.commit()
    good = path.read_bytes()
    undo = txn.UndoLog(txn.undo_path(path), len(good), fsync=False)
    undo.append(0, good[:4096])
    undo.close()
    with open(path, "r+b") as fh:
        fh.write(b"\xff" * 100)
        fh.seek(0, 2)
        fh.write(b"garbage" * 100)
    with Catalog(path) as cat:
        assert len(cat) == 2
    assert path.read_bytes() == good and not txn.undo_path(path).exists()
    assert repair(path) is False


# ------------------------------------------------------------------------------------------- hostile files
@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "INDEX.h5"
    rng = np.random.default_rng(5)
    with new_catalog(path) as w:
        for i in range(10):
            w.add(make_record(rng, f"m{i}.jpg", 4))
            if i == 5:
                w.commit()
        w.set_skipped([SkippedFile("bad.jpg", "unreadable")])
        w.commit()
        w.remove_media([3])
        w.commit()
    return path


def _hostile(small_catalog, tmp_path, edit) -> Path:
    path = tmp_path / "INDEX.h5"
    shutil.copy(small_catalog, path)
    with h5py.File(path, "r+") as f:
        edit(f, tmp_path)
    return path


def _set(name, index, value):
    def edit(f, _):
        data = f[name][()]
        data[index] = value
        f[name][...] = data
    return edit


def _other_file(tmp_path) -> str:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.arange(10)
    return str(other)


def _virtual(f, tmp_path):
    layout = h5py.VirtualLayout(shape=(10,), dtype="i8")
    layout[:] = h5py.VirtualSource(_other_file(tmp_path), "x", shape=(10,))
    f.create_virtual_dataset("media/evil", layout)


def _attr(key, value):
    def edit(f, _):
        f.attrs[key] = value
    return edit


HOSTILE = {
    "external storage": (lambda f, t: f.create_dataset("objects/evil", (10,), "u1", external=[(str(t / "ext"), 0, 10)]),
                         "external storage"),
    "virtual dataset": (_virtual, "virtual dataset"),
    "external link": (lambda f, t: f.__setitem__("evil", h5py.ExternalLink(_other_file(t), "/x")), "external link"),
    "soft link": (lambda f, t: f.__setitem__("media/evil", h5py.SoftLink("/media/id")), "soft link"),
    "float version": (_attr("format_version", 1.9), "format version"),
    "string version": (_attr("format_version", "2"), "format version"),
    "bytes version": (_attr("format_version", np.bytes_(b"2")), "format version"),
    "nan box": (_set("objects/xyxy", (2, 1), np.nan), "box or confidence is not finite"),
    "nan vector": (_set("projections/32/vectors", (5, 3), np.nan), "non-finite"),
    "inf component": (_set("projections/16/components", (0, 0), np.inf), "non-finite components"),
    "class id": (_set("objects/class_id", 4, 99), "class id"),
    "media id": (_set("objects/media_id", 0, 12345), "media id is not among"),
    "path offset": (_set("media/path_offset", 1, 10**6), "path lies outside"),
    "thumb length": (_set("objects/thumb_length", 1, 5 << 20), "thumbnail"),
    "ids order": (_set("objects/id", 3, 0), "strictly increasing"),
    "attr edited": (_attr("next_object_id", np.int64(7)), "digest"),
    "alive flag": (_set("media/alive", 2, 7), "alive flag"),
    "no checksum": (lambda f, t: (f.__delitem__("objects/confidence"),
                                  f.create_dataset("objects/confidence", data=np.zeros(40, np.float32))),
                    "Fletcher-32"),
    "missing dataset": (lambda f, t: f.__delitem__("objects/features"), "missing"),
    "nan feature": (_set("objects/features", (3, 2), np.nan), "objects/features holds non-finite"),
    "huge feature": (_set("objects/features", (3, 2), 3e38), "objects/features holds non-finite"),
    "huge vector": (_set("projections/16/vectors", (1, 1), -3e38), "beyond"),
    "box past the image": (_set("objects/xyxy", (0, 2), 1e9), "box is inverted or lies outside"),
    "inverted box": (_set("objects/xyxy", (0, 0), 1e6), "box is inverted or lies outside"),
    "width 2**31-1": (_set("media/width", 0, 2**31 - 1), "width or height is outside"),
    "frame of an image": (lambda f, t: (_set("media/frame_index", 0, 3)(f, t), _set("media/timestamp_s", 0, 0.1)(f, t)),
                          "image file has a video frame index"),
    "frame without time": (_set("media/frame_index", 0, 3), "timestamp or frame index is invalid"),
}


def test_features_are_checked_wherever_they_are_read(small_catalog, tmp_path):
    """Raw features are not read when an index opens (they are D floats per object); every reader checks them: the
    reader's ``features``, the writer's ``iter_features`` (a PCA fit) and a projection filled from them (the
    transaction is rolled back)."""
    path = _hostile(small_catalog, tmp_path, _set("objects/features", (0, 0), np.nan))
    with Catalog(path) as cat:
        with pytest.raises(IndexFileError, match="non-finite"):
            cat.features(cat.object_id[:1])
    before = path.read_bytes()
    with CatalogWriter.open(path, fsync=False) as w:
        with pytest.raises(IndexFileError, match="non-finite"):
            list(w.iter_features())
        x = np.random.default_rng(0).normal(size=(8, D)).astype(np.float32)
        w.set_projection(make_projection("random", 8, random_state=3).fit(x))
        with pytest.raises(IndexFileError, match="non-finite"):
            w.commit()
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_refused(small_catalog, tmp_path, case):
    edit, reason = HOSTILE[case]
    path = _hostile(small_catalog, tmp_path, edit)
    with pytest.raises(IndexFileError, match=reason) as info:
        with Catalog(path) as cat:
            snapshot(cat)
    assert "\n" not in str(info.value)


def test_truncated_and_not_hdf5_refused(small_catalog, tmp_path):
    path = tmp_path / "INDEX.h5"
    data = small_catalog.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(IndexFileError, match="truncated|damaged"):
            with Catalog(path) as cat:
                snapshot(cat)
    path.write_text("hello, not an index\n")
    with pytest.raises(IndexFileError, match="not HDF5"):
        Catalog(path)
    with pytest.raises(IndexFileError, match="does not exist"):
        Catalog(tmp_path / "nope.h5")


def _metadata_positions(path: Path) -> np.ndarray:
    """Byte positions of the file outside every dataset chunk (superblock, object headers, chunk indexes...)."""
    raw = np.zeros(path.stat().st_size, bool)

    def mark(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                raw[info.byte_offset:info.byte_offset + info.size] = True

    with h5py.File(path, "r") as f:
        f.visititems(mark)
    return np.flatnonzero(~raw)


@pytest.mark.parametrize("where", ["anywhere", "metadata"])
def test_bit_flips_are_harmless_or_refused(small_catalog, tmp_path, where):
    with Catalog(small_catalog) as cat:
        original = snapshot(cat)
    data = bytearray(small_catalog.read_bytes())
    rng = np.random.default_rng(1234)
    positions = np.arange(len(data)) if where == "anywhere" else _metadata_positions(small_catalog)
    path = tmp_path / "INDEX.h5"
    counts = {"harmless": 0, "refused": 0}
    slipped = []
    for _ in range(400):
        pos, bit = int(rng.choice(positions)), int(rng.integers(8))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        path.write_bytes(flipped)
        try:
            with Catalog(path) as cat:
                got = snapshot(cat)
        except IndexFileError:
            counts["refused"] += 1
            continue
        try:
            assert_same(original, got)
            counts["harmless"] += 1
        except AssertionError as exc:
            slipped.append((pos, bit, str(exc)))
    print(f"bit flips {where} ({len(positions)} of {len(data)} bytes): {counts}")
    assert not slipped, slipped[:10]
    assert counts["refused"] > 0


def test_reader_waits_for_a_commit_and_follows_changes(tmp_path):
    import threading

    path = tmp_path / "INDEX.h5"
    rng = np.random.default_rng(9)
    with new_catalog(path) as w:
        w.add(make_record(rng, "a.jpg", 3))
        w.commit()
        cat = Catalog(path)
        first = cat.features(cat.object_id)
        # a commit in progress holds the index exclusively: a reader waits for it, or gives up after wait_s
        lock = txn.FileLock(path, exclusive=True)
        with pytest.raises(IndexLockedError, match="stayed locked"):
            Catalog(path, wait_s=0.2)
        timer = threading.Timer(0.3, lock.release)
        timer.start()
        start = time.monotonic()
        with Catalog(path) as waited:
            assert time.monotonic() - start >= 0.2 and len(waited) == 3
        timer.join()
        # another commit: the open view sees it changed, and still reads its own objects
        w.add(make_record(rng, "b.jpg", 2))
        w.remove_objects(cat.object_id[:1])
        w.commit()
        assert cat.changed()
        assert np.array_equal(cat.features(cat.object_id), first) and len(cat) == 3
        cat.close()
    with Catalog(path) as cat:
        assert len(cat) == 4 and not cat.changed()


# ------------------------------------------------------------------------------------- the shared read surface
def test_reader_and_writer_show_the_same_read_surface(small_catalog, tmp_path):
    """``CatalogView`` declares the read surface once: a reader and a writer of the same file agree on every part."""
    from objsearch.catalog import CatalogView

    path = tmp_path / "INDEX.h5"
    shutil.copy(small_catalog, path)
    names = [n for n, v in vars(CatalogView).items() if isinstance(v, property)]
    assert {"media_id", "media_path", "object_id", "xyxy", "class_id", "roots", "dims", "vector_backend"} <= set(names)
    with Catalog(path) as cat, CatalogWriter.open(path, fsync=False) as w:
        for name in names:
            a, b = getattr(cat, name), getattr(w, name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), name
            else:
                assert a == b, name
        assert cat.projection(16).method == w.projection(16).method


def test_vector_backend_is_stored_with_the_index_and_checked(small_catalog, tmp_path):
    """The vector backend chosen for an index is a root attribute (``objsearch.vectors.registry`` gives it meaning);
    an index without it opens as before (None), a malformed one is refused by the writer and by every reader."""
    from objsearch.catalog.attrs import decode_attrs, encode_attrs

    path = tmp_path / "INDEX.h5"
    shutil.copy(small_catalog, path)
    with Catalog(path) as cat:
        assert cat.vector_backend is None
    chosen = {"name": "milvus", "options": {"uri": "http://127.0.0.1:19530", "collection": None}}
    with CatalogWriter.open(path, fsync=False) as w:
        for bad in ("milvus", {"name": "milvus"}, {"name": 3, "options": {}}, {"name": "x", "options": [], "y": 1}):
            with pytest.raises(ValueError, match="vector_backend must be a mapping"):
                w.set_attrs(vector_backend=bad)
        w.commit(vector_backend=chosen)
        assert w.vector_backend == chosen
    with Catalog(path) as cat:
        assert cat.vector_backend == chosen
    with h5py.File(path, "r+") as f:  # a forged value with a valid digest
        attrs = decode_attrs(dict(f.attrs.items()), path)
        attrs["vector_backend"] = {"name": "milvus", "options": "uri=x"}
        for key in list(f.attrs.keys()):
            del f.attrs[key]
        for key, value in encode_attrs(attrs).items():
            f.attrs[key] = value
    with pytest.raises(IndexFileError, match="vector_backend is not a JSON mapping"):
        Catalog(path)
