"""Analysis jobs: ``analyze`` a folder into a new index, ``add`` files to it, ``remove`` them, ``sync`` it with its
folder, ``compact`` it. Every job streams: images are decoded by worker threads, detected in batches, journaled and
committed to the index in small transactions (``objsearch.pipeline``), so memory stays O(commit interval), not
O(dataset).

Crash safety has two layers:

* the **analysis journal** (``INDEX.h5.journal``): each finished image is appended as one CRC-framed record and
  flushed before the next one starts, so a job killed at any moment (even ``kill -9``) loses at most the image in
  flight; the next job on the same index applies the journaled images first, then does the rest. Records carry a
  sequence number and the journal a random id; the index remembers the last record it applied (attribute
  ``journal``), so a record is never applied twice.
* the **index transactions** (``objsearch.catalog``): every ``commit`` reaches the file completely or not at all
  (a rollback journal, as SQLite's).

So a killed job leaves an index that opens and holds the state of its last commit, plus a journal of the images
finished since; re-running the same command finishes the work, and gives the same object ids, boxes and vectors as
an uninterrupted run (images are always processed in sorted path order and ids are handed out in that order).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from objsearch.errors import (EmptyFolderError, ExitCode, ImageReadError, IndexFileError, ObjsearchError,
                              VideoReadError)
from objsearch.media import (VIDEO_SUFFIXES, list_media, make_thumbnail, read_image, read_video_frame,
                             video_info)
from objsearch.pipeline import analyse_in_order
from objsearch.projection import PCAProjection, make_projection
from objsearch.roots import Roots, UntrustedRootError, is_under, sign_root
from objsearch.types import Detections, MediaRecord, MediaRef, SkippedFile

LOGGER = logging.getLogger(__name__)

_JOURNAL_MAGIC = b"OSJ2"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32
COMMIT_EVERY_IMAGES = 64
COMMIT_EVERY_SECONDS = 5.0


class JobCancelled(ObjsearchError):
    """The job was cancelled; the journal keeps what was finished, and running it again resumes."""

    exit_code = ExitCode.INTERRUPTED


@dataclass(frozen=True)
class VideoEnd:
    """The end of one video's frames in a job: ``path`` (relative to its root ``root``), ``n_frames`` sampled
    frames analysed, and ``reason`` when the video was broken or truncated (its frames read before are kept)."""

    path: str
    n_frames: int
    reason: str = ""
    root: int = 0


Locate = Callable[[Path], "tuple[int, str]"]  # a file -> (its root, its path relative to that root)


def _key(record) -> tuple[int, str]:
    """(root, path) of a journal record (a MediaRecord, SkippedFile or VideoEnd): what identifies its file."""
    if isinstance(record, MediaRecord):
        return int(record.media.root), record.media.path
    return int(record.root), record.path


def media_keys(catalog) -> set[tuple[int, str]]:
    """(root, path) of every live media item of ``catalog`` (a Catalog or CatalogWriter)."""
    return set(zip(catalog.media_root.tolist(), catalog.media_path))


# ----------------------------------------------------------------------------------------------------- journal
def _record_to_bytes(seq: int, record: MediaRecord | SkippedFile | VideoEnd) -> bytes:
    buf = io.BytesIO()
    if isinstance(record, (SkippedFile, VideoEnd)):
        meta = ({"seq": seq, "kind": "skipped", "path": record.path, "reason": record.reason, "root": record.root}
                if isinstance(record, SkippedFile) else
                {"seq": seq, "kind": "video_end", "path": record.path, "n_frames": record.n_frames,
                 "reason": record.reason, "root": record.root})
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        return buf.getvalue()
    m, d = record.media, record.detections
    meta = {"seq": seq, "kind": "media", "path": m.path, "width": m.width, "height": m.height,
            "frame_index": m.frame_index, "timestamp_s": m.timestamp_s, "file_size": m.file_size,
            "file_mtime_ns": m.file_mtime_ns, "root": m.root}
    thumbs = np.frombuffer(b"".join(record.thumbnails), np.uint8)
    offsets = np.cumsum([0] + [len(t) for t in record.thumbnails]).astype(np.int64)
    extra = {} if d.image_feature is None else {"image_feature": d.image_feature}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta, ensure_ascii=True).encode(), np.uint8), xyxy=d.xyxy,
             confidence=d.confidence, class_id=d.class_id, features=d.features, thumbs=thumbs, offsets=offsets,
             **extra)
    return buf.getvalue()


def _record_from_bytes(payload: bytes) -> tuple[int, MediaRecord | SkippedFile]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        root = int(meta.get("root", 0))
        if meta["kind"] == "skipped":
            return meta["seq"], SkippedFile(meta["path"], meta["reason"], root)
        if meta["kind"] == "video_end":
            return meta["seq"], VideoEnd(meta["path"], int(meta["n_frames"]), meta["reason"], root)
        thumbs, offsets = z["thumbs"].tobytes(), z["offsets"]
        media = MediaRef(path=meta["path"], width=meta["width"], height=meta["height"],
                         frame_index=meta["frame_index"], timestamp_s=meta["timestamp_s"],
                         file_size=meta["file_size"], file_mtime_ns=meta["file_mtime_ns"], root=root)
        dets = Detections(z["xyxy"], z["confidence"], z["class_id"], z["features"],
                          image_feature=z["image_feature"] if "image_feature" in z.files else None)
        return meta["seq"], MediaRecord(media, dets, [thumbs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)])


class Journal:
    """Append-only, CRC-framed log of the images a job finished and has not committed yet (``INDEX.h5.journal``).

    The first record is a JSON header (the journal's id and the settings that must not change: weights, recipe,
    thresholds, thumbnail size); each later record is one finished image (or a skipped file) with a sequence number.
    Opening an existing journal drops a torn or corrupt tail (what a killed job leaves) and keeps everything before.

    Raises
    ------
    IndexFileError
        When an existing journal was written with other settings than ``settings``.
    """

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.pending: list[tuple[int, MediaRecord | SkippedFile]] = []
        self.journal_id = uuid.uuid4().hex
        self.next_seq = 1
        if self.path.exists():
            self._recover()
        else:
            self._start()

    def _start(self) -> None:
        self._handle = open(self.path, "wb")
        self._write(json.dumps({"journal_id": self.journal_id, "settings": self.settings}, sort_keys=True).encode())
        self._header_end = self._handle.tell()

    def _recover(self) -> None:
        with open(self.path, "rb") as handle:
            data = handle.read()
        pos = good_end = header_end = 0
        header = None
        while pos + _FRAME.size <= len(data):
            magic, length, crc = _FRAME.unpack_from(data, pos)
            payload = data[pos + _FRAME.size: pos + _FRAME.size + length]
            if magic != _JOURNAL_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                if header is None:
                    header = json.loads(payload.decode())
                    header_end = pos + _FRAME.size + length
                else:
                    self.pending.append(_record_from_bytes(payload))
            except Exception:  # a record that frames correctly but does not parse ends the good part
                break
            pos += _FRAME.size + length
            good_end = pos
        if header is None or "settings" not in header:
            LOGGER.warning("journal %s has no readable header; starting a new one", self.path)
            self.pending = []
            self._start()
            return
        if header["settings"] != self.settings:
            diff = sorted(k for k in set(header["settings"]) | set(self.settings)
                          if header["settings"].get(k) != self.settings.get(k))
            raise IndexFileError(
                f"an unfinished job in {self.path} used other settings ({', '.join(diff)}); run it with the same "
                f"settings to finish it, or delete {self.path} to drop its {len(self.pending)} finished images")
        if good_end < len(data):
            LOGGER.warning("journal %s: dropped a torn record of %d bytes at its end", self.path, len(data) - good_end)
        self.journal_id = header["journal_id"]
        self.next_seq = max([seq for seq, _ in self.pending], default=0) + 1
        self._handle = open(self.path, "r+b")
        self._handle.truncate(good_end)
        self._handle.seek(good_end)
        self._header_end = header_end

    def _write(self, payload: bytes) -> None:
        self._handle.write(_FRAME.pack(_JOURNAL_MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._handle.flush()

    def append(self, record: MediaRecord | SkippedFile) -> int:
        """Write one finished image (or skipped file) and flush it to the operating system (it survives the process
        being killed). Returns its sequence number."""
        seq = self.next_seq
        self._write(_record_to_bytes(seq, record))
        self.next_seq += 1
        return seq

    def committed(self) -> None:
        """Everything appended so far is in the index: keep only the header."""
        self.pending = []
        self._handle.truncate(self._header_end)
        self._handle.seek(self._header_end)
        self._handle.flush()

    def close(self, remove: bool = False) -> None:
        self._handle.close()
        if remove:
            self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ summaries
@dataclass
class JobSummary:
    """What a job did: counts, time, and the files it skipped with reasons."""

    index: Path
    n_added: int = 0
    n_added_objects: int = 0
    n_removed: int = 0
    n_removed_objects: int = 0
    n_changed: int = 0
    n_unchanged: int = 0
    n_resumed: int = 0
    n_no_objects: int = 0
    n_already: int = 0
    n_other_files: int = 0
    n_image_vectors: int = 0  # media items given whole-image vectors by sync (an index made before image search)
    rerank_dims: int | None = None  # rerank vectors made by sync (an index made before reranking)
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    n_images: int = 0
    n_objects: int = 0
    n_added_frames: int = 0
    n_videos: int = 0
    not_indexed: list[str] = field(default_factory=list)  # paths given to remove that matched no indexed media


ProgressFn = Callable[[int, int, int], None]


def video_sampling(cfg: dict) -> dict:
    """``read_video_frames``' sampling arguments from a configuration: ``video_stride`` (every N-th frame) when
    set, else ``video_fps`` frames per second."""
    stride = cfg.get("video_stride")
    if stride:
        return {"sample_fps": None, "stride": int(stride)}
    return {"sample_fps": float(cfg.get("video_fps", 1.0)), "stride": None}


def _file_identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def _relative(path: Path, base_dir: Path) -> str:
    """``path`` relative to ``base_dir`` (POSIX separators).

    Raises
    ------
    ObjsearchError
        When ``path`` is not under ``base_dir``.
    """
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(base_dir))).as_posix()
    except ValueError:
        raise ObjsearchError(f"{path} is not under the index's base directory {base_dir}; an index holds the files of "
                             f"one folder tree") from None


def detect_for_index(detector, images: list[np.ndarray], cfg: dict) -> list[Detections]:
    """Detections of ``images`` (each (H, W, 3) uint8 BGR) as an index stores them: confidence at least ``conf`` and
    ``index_conf``, class-aware duplicates at IoU ``dedup_iou`` suppressed (``objsearch.hygiene.index_keep``), and
    with ``index_mirror`` each object's features the mean of its own and its mirrored features
    (``Detector.detect_batch(mirror=True)``: one more network pass), so that a mirrored query finds it. Several
    images go in one forward pass (they must share a letterbox shape)."""
    from objsearch.hygiene import index_keep

    conf = float(cfg["conf"]) if cfg.get("index_conf") is None else max(float(cfg["conf"]), float(cfg["index_conf"]))
    mirror = bool(cfg.get("index_mirror", False))
    found = detector.detect_batch(images, auto=True, conf=conf, mirror=mirror)
    out = []
    for dets in found:
        if mirror and len(dets):
            dets = Detections(dets.xyxy, dets.confidence, dets.class_id,
                              0.5 * (dets.features + dets.data["mirror_features"]), image_feature=dets.image_feature)
        elif mirror:
            dets = Detections(dets.xyxy, dets.confidence, dets.class_id, dets.features,
                              image_feature=dets.image_feature)
        if cfg.get("dedup_iou") is not None:
            dets = dets[index_keep(dets.xyxy, dets.confidence, dets.class_id, dedup_iou=float(cfg["dedup_iou"]))]
        out.append(dets)
    return out


def job_settings(detector, cfg: dict) -> dict:
    """What must stay the same across the images of one index (and its journal)."""
    return {
        "weights_sha256": detector.weights_sha256,
        "feature_recipe": detector.feature_recipe(), "image_recipe": detector.image_feature_recipe(),
        "iou": detector.iou, "max_det": detector.max_det, "conf": float(cfg["conf"]),
        "thumb_size": int(cfg["thumb_size"]), "thumb_quality": int(cfg["thumb_quality"]),
        "video_sampling": video_sampling(cfg),
        "index_conf": cfg.get("index_conf"), "dedup_iou": cfg.get("dedup_iou"),
        "index_mirror": bool(cfg.get("index_mirror", False)),
    }


def in_folder(folder: Path) -> Locate:
    """The ``Locate`` of a job on one folder, root 0 (analyze): ``(0, path relative to folder)``."""
    return lambda path: (0, _relative(path, folder))


class _Run:
    """One job's pass over files: detect, journal, commit in transactions. Used by analyze, add and sync.

    ``locate`` gives each file its root and path relative to it (``in_folder``, or ``roots.Roots.locate``)."""

    def __init__(self, writer, detector, cfg: dict, locate: Locate, summary: JobSummary, *,
                 progress: ProgressFn | None, cancel: threading.Event | None):
        self.writer, self.detector, self.cfg, self.locate = writer, detector, cfg, locate
        self.summary, self.progress, self.cancel = summary, progress, cancel or threading.Event()
        settings = job_settings(detector, cfg)
        self.journal = Journal(Path(str(writer.path) + ".journal"), settings)
        self.skipped = list(writer.skipped)
        self.n_done = self.n_total = self.n_objects = 0
        self._video: tuple[int, str] | None = None  # the video whose frames are being added (its end not applied)
        self._last_commit = time.perf_counter()
        self._uncommitted = 0

    def replay(self) -> set[tuple[int, str]]:
        """Apply what a killed job journaled and did not commit; returns the (root, path) it covered."""
        applied = str(self.writer.attrs.get("journal", ""))
        last_id, _, last_seq = applied.partition(":")
        paths = set()
        records = self.journal.pending
        for seq, record in records:
            paths.add(_key(record))
            if last_id == self.journal.journal_id and seq <= int(last_seq or 0):
                continue
            self._apply(record)
        if records:
            self.summary.n_resumed += sum(1 for _, r in records if isinstance(r, MediaRecord))
            self._commit(self.journal.next_seq - 1)
        return paths

    def video_in_progress(self) -> tuple[tuple[int, str], int] | None:
        """((root, path), next frame number) of the video an interrupted job was in the middle of, or None. The
        index keeps the media id of that video's first committed frame in the attribute ``video_in_progress`` (set
        with its frames, cleared with its end, in the same transactions), so a resumed job goes on after its last
        frame."""
        media_id = int(self.writer.attrs.get("video_in_progress", -1))
        if media_id < 0:
            return None
        ids = self.writer.media_id
        row = np.flatnonzero(ids == media_id)
        if not len(row):
            return None
        paths, roots = self.writer.media_path, self.writer.media_root
        key = (int(roots[int(row[0])]), paths[int(row[0])])
        frames = self.writer.media_frame_index[[i for i, k in enumerate(zip(roots.tolist(), paths)) if k == key]]
        return key, int(frames.max()) + 1

    def _apply(self, record) -> None:
        if isinstance(record, SkippedFile):
            self.skipped = [s for s in self.skipped if _key(s) != _key(record)] + [record]
            self.writer.set_skipped(self.skipped)
            self.summary.skipped.append(record)
            return
        if isinstance(record, VideoEnd):
            self.writer.set_attrs(video_in_progress=-1)
            self._video = None
            self.summary.n_videos += 1
            kept = [s for s in self.skipped if _key(s) != _key(record)]
            if record.reason:
                kept.append(SkippedFile(record.path, record.reason, record.root))
                self.summary.skipped.append(kept[-1])
            if kept != self.skipped:
                self.skipped = kept
                self.writer.set_skipped(self.skipped)
            return
        media_id, _ = self.writer.add(record)
        if record.media.is_video_frame:
            self.summary.n_added_frames += 1
            if self._video != _key(record):
                self.writer.set_attrs(video_in_progress=int(media_id))
                self._video = _key(record)
        n = len(record.detections)
        self.summary.n_added += 1
        self.summary.n_added_objects += n
        self.summary.n_no_objects += n == 0

    def _commit(self, last_seq: int) -> None:
        self.writer.commit(journal=f"{self.journal.journal_id}:{last_seq}")
        self.journal.committed()
        self._last_commit = time.perf_counter()
        self._uncommitted = 0

    def _finish_one(self, record) -> None:
        seq = self.journal.append(record)
        self._apply(record)
        self._uncommitted += 1
        if not (isinstance(record, VideoEnd) and record.n_frames):
            self.n_done += 1
        if isinstance(record, MediaRecord):
            self.n_objects += len(record.detections)
        if (self._uncommitted >= COMMIT_EVERY_IMAGES
                or time.perf_counter() - self._last_commit >= COMMIT_EVERY_SECONDS):
            self._commit(seq)
        if self.progress:
            self.progress(self.n_done, max(self.n_total, self.n_done), self.n_objects)
        if self.cancel.is_set():
            self._commit(seq)
            raise JobCancelled("cancelled; what was finished is in the index, and running the same command again "
                               "does the rest")

    def _estimate(self, path: Path, start: int) -> int:
        """Sampled frames a video will give from ``start`` on (from its declared frame count; 1 when unknown)."""
        from objsearch.media import frame_sampled

        try:
            info = video_info(path, max_pixels=int(self.cfg.get("max_pixels", 100_000_000)))
        except VideoReadError:
            return 1
        sampling = video_sampling(self.cfg)
        return max(1, sum(frame_sampled(i, info.fps, **sampling) for i in range(start, info.n_frames)))

    def run(self, files: list[Path], start_frames: dict[Path, int] | None = None) -> None:
        """Analyze ``files`` (images and videos, sorted) in order; a video in ``start_frames`` starts at that frame
        (the frames before are in the index already). Decoding, detection in batches, thumbnails and the journal
        and index writes (on this thread, in path order) overlap: ``objsearch.pipeline``."""
        start_frames = start_frames or {}
        tasks = [(p, int(start_frames.get(p, 0))) for p in files]
        self.n_total = self.n_done + sum(self._estimate(p, start) if p.suffix.lower() in VIDEO_SUFFIXES else 1
                                         for p, start in tasks)
        analyse_in_order(tasks, letterbox_shape=self.detector.letterbox_shape,
                         detect=lambda images: detect_for_index(self.detector, images, self.cfg),
                         make_record=self._record, emit=self._finish_one, locate=self.locate, video_end=VideoEnd,
                         batch=int(self.cfg.get("batch", 1)), max_pixels=int(self.cfg.get("max_pixels", 100_000_000)),
                         sampling=video_sampling(self.cfg), cancel=self.cancel)

    def _record(self, path: Path, image: np.ndarray, dets: Detections, where: tuple | None = None) -> MediaRecord:
        """A MediaRecord of an analysed image, or of one video frame (``where``: (frame_index, timestamp_s))."""
        size, mtime = _file_identity(path)
        thumbs = [make_thumbnail(image, b, self.cfg["thumb_size"], self.cfg["thumb_quality"]) for b in dets.xyxy]
        frame_index, timestamp_s = where if where is not None else (-1, -1.0)
        root, rel = self.locate(path)
        media = MediaRef(path=rel, width=image.shape[1], height=image.shape[0], frame_index=int(frame_index),
                         timestamp_s=float(timestamp_s), file_size=size, file_mtime_ns=mtime, root=root)
        return MediaRecord(media, dets, thumbs)

    def flush(self) -> None:
        """Commit what is buffered (the journal stays until ``finish``)."""
        self._commit(self.journal.next_seq - 1)

    def finish(self) -> None:
        """Commit what is left and remove the journal."""
        self.flush()
        self.journal.close(remove=True)

    def abandon(self) -> None:
        """Close the journal (kept: the next job on this index applies it)."""
        if not self.journal._handle.closed:
            self.journal.close()


def _media_files(listing) -> list[Path]:
    """A listing's images and videos in one sorted list (the order in which a job analyses them and hands out
    ids)."""
    return sorted(listing.images + listing.videos)


def _todo(files: list[Path], key_of: Callable[[Path], object], done: set, resume: tuple | None) \
        -> tuple[list[Path], dict[Path, int]]:
    """The files of ``files`` still to analyse (their ``key_of`` not in ``done``: (root, path) pairs, or absolute
    paths), and the frame to start at of the video an interrupted job left half done (``resume``: (its key, next
    frame))."""
    todo, starts = [], {}
    for p in files:
        key = key_of(p)
        if resume is not None and key == resume[0]:
            starts[p] = resume[1]
            todo.append(p)
        elif key not in done:
            todo.append(p)
    return todo, starts


def _load_detector(cfg: dict, weights: str | None, detector):
    if detector is not None:
        return detector
    from objsearch.engine import load_detector

    return load_detector(cfg, weights)


def _fit_pending_projections(run: _Run, n_features: int) -> None:
    """Fit the projections that need the data (PCA, and the rerank projection at ``rerank_dims``) from the stored
    features of every analysed object, streamed, and store them (the run's last objects are committed first: the
    fit reads committed rows only)."""
    writer = run.writer
    run.flush()
    pending = writer.attrs.get("pending_projections") or []
    stored = writer.attrs["config"]
    for d in pending:
        if stored.get("rerank_dims") is not None and int(d) == int(stored["rerank_dims"]):
            proj = fit_rerank_projection(writer, run.detector, stored)
            if proj is None:
                continue
        else:
            proj = PCAProjection(int(d), int(stored["seed"]))
            proj.fit_streaming((f for _, f in writer.iter_features()), n_features)
        writer.set_projection(proj)
    if pending:
        writer.set_attrs(pending_projections=[])


def fit_rerank_projection(writer, detector, cfg: dict, *, roots: Roots | None = None):
    """The index's rerank projection (``objsearch.rerank``): ``MirrorWhitenedProjection`` to ``cfg["rerank_dims"]``
    of the stored features reweighted by ``cfg["rerank_recipe"]``, whitened with the mirror pairs of up to
    ``MIRROR_SAMPLE_IMAGES`` indexed media items spread over the index (read again, one detector pass each on the
    image and its mirror image) under the index's ``roots`` (default: its roots as recorded; an item under a root
    this user did not choose is passed over, as one whose path leaves its root). None (logged) when fewer than 2
    objects are found in them: the index is then searched without reranking.
    """
    from objsearch.detector import parse_recipe
    from objsearch.projection import MirrorWhitenedProjection
    from objsearch.rerank import RERANK_SHRINKAGE, column_scale, mirror_pairs, sample_positions

    rows = sample_positions(len(writer.media_id))
    max_pixels = int(cfg.get("max_pixels", 100_000_000))

    roots = Roots.of(writer) if roots is None else roots
    media_roots = writer.media_root

    def images():
        for r in rows:
            try:
                path = roots.resolve(int(media_roots[int(r)]), writer.media_path[int(r)])
            except UntrustedRootError as exc:
                LOGGER.warning("rerank projection: skipping an item: %s", exc)
                continue
            if path is None:
                continue
            try:
                yield _read_media(path, int(writer.media_frame_index[int(r)]), max_pixels)
            except ImageReadError as exc:
                LOGGER.warning("rerank projection: skipping %s: %s", path, exc)

    conf = float(cfg["conf"]) if cfg.get("index_conf") is None else max(float(cfg["conf"]), float(cfg["index_conf"]))
    pairs = mirror_pairs(detector, images(), conf=conf, dedup_iou=cfg.get("dedup_iou"))
    if len(pairs[0]) < 2:
        LOGGER.warning("rerank projection not made: the %d sampled images hold %d objects", len(rows), len(pairs[0]))
        return None
    scale = column_scale(detector.block_sizes(), detector.recipe, parse_recipe(cfg["rerank_recipe"]))
    proj = MirrorWhitenedProjection(int(cfg["rerank_dims"]), int(cfg["seed"]), RERANK_SHRINKAGE)
    return proj.fit_streaming((f for _, f in writer.iter_features()), detector.n_features, pairs, scale)


def image_projections(detector, cfg: dict) -> list:
    """The whole-image projections of a new index: random, seeded like the object ones, one per ``cfg["dims"]``
    (PCA applies to the object vectors only), fitted to the detector's ``n_image_features``."""
    return [make_projection("random", int(d), int(cfg["seed"])).fit(
        np.zeros((1, detector.n_image_features), np.float32)) for d in cfg["dims"]]


def add_image_vectors(writer, detector, *, max_pixels: int = 100_000_000, progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> int:
    """Give every live media item of ``writer``'s index its whole-image vector (re-running the detector on each
    image) and commit them in one transaction; returns the number of media items. For an index made before image
    search, or whose image recipe differs from ``detector``'s. Nothing is written unless every item succeeds.

    Raises
    ------
    ObjsearchError
        When an indexed file cannot be read any more (run ``objsearch sync`` after fixing it, or remove it).
    UntrustedRootError
        When an item lies under a root the user did not choose (see ``objsearch.roots``).
    JobCancelled
        When ``cancel`` was set (nothing was written).
    """
    ids = writer.media_id
    paths, frames, media_roots = writer.media_path, writer.media_frame_index, writer.media_root
    roots = Roots.of(writer)
    cfg = index_config(writer)
    feats = np.zeros((len(ids), detector.n_image_features), np.float32)
    for i, (rel, frame, root) in enumerate(zip(paths, frames, media_roots.tolist())):
        if cancel is not None and cancel.is_set():
            raise JobCancelled("cancelled before the image vectors were written; run `objsearch sync` again")
        path = roots.resolve(root, rel)
        if path is None:
            raise ObjsearchError(f"cannot make the image vector of {rel!r}: its path leaves {roots.folders[root]}")
        try:
            image = _read_media(path, int(frame), max_pixels)
        except ImageReadError as exc:
            raise ObjsearchError(f"cannot make the image vector of an indexed item: {exc}") from None
        feats[i] = detector(image, conf=cfg["conf"]).image_feature
        if progress:
            progress(i + 1, len(ids), 0)
    dims = writer.dims or cfg["dims"]  # the object vectors' dimensions (index_config does not keep "dims")
    writer.set_image_vectors(detector.image_feature_recipe(), ids, feats,
                             image_projections(detector, {**cfg, "dims": dims}))
    writer.commit()
    return len(ids)


def _read_media(path: Path, frame_index: int, max_pixels: int) -> np.ndarray:
    """The pixels of an indexed media item: the image, or frame ``frame_index`` of a video (the frame analysis saw).

    Raises
    ------
    ImageReadError
        When it cannot be read (``VideoReadError`` for a video or a frame it no longer has).
    """
    if frame_index < 0:
        return read_image(path, max_pixels=max_pixels)
    return read_video_frame(path, frame_index, max_pixels=max_pixels)


def analyze(folder: str | Path, output: str | Path, cfg: dict, *, weights: str | None = None,
            overwrite: bool = False, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            detector=None) -> JobSummary:
    """Detect every object in the images under ``folder`` and write a new index ``output``.

    Images are committed to ``output`` as they are analysed (state ``analyzing`` until the end); an interrupted run
    (Ctrl-C, ``cancel``, ``kill -9``) resumes where it stopped when run again with the same settings.

    Raises
    ------
    EmptyFolderError
        When ``folder`` holds no image files.
    IndexFileError
        When ``output`` is a finished index (use ``sync``, or ``overwrite``), or an unfinished one of other settings.
    WeightsNotFoundError
        When no checkpoint can be found.
    JobCancelled
        When ``cancel`` was set.
    """
    t0 = time.perf_counter()
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder} is not a folder")
    if output.is_dir() or (output.exists() and not output.is_file()):
        raise ObjsearchError(f"cannot write the index {output}: it is a folder or not a regular file")
    listing = list_media(folder, videos=True)
    if not listing.images and not listing.videos:
        raise EmptyFolderError(f"{folder} holds no image files ({', '.join(sorted({'.jpg', '.png', '.webp', '.bmp', '.tif'}))} "
                               f"...) and no video files (.mp4, .mov, .avi, .mkv, .webm)")
    writer = None
    if output.exists() and not overwrite:
        from objsearch.catalog import Catalog

        with Catalog(output) as existing:
            state = existing.state
            same = os.path.abspath(existing.base_dir) == os.path.abspath(folder)
        if state == "ready":
            hint = (f"run `objsearch sync {folder} -i {output}` to add new, changed and removed images" if same
                    else f"it indexes {existing.base_dir}")
            raise IndexFileError(f"{output} already exists ({hint}); pass --overwrite to analyze everything again")
        writer = resume_analysis(output, folder)
    try:
        detector = _load_detector(cfg, weights, detector)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    if writer is not None and (writer.weights_sha256 != detector.weights_sha256
                               or writer.attrs.get("feature_recipe") != detector.feature_recipe()):
        writer.close()
        raise IndexFileError(f"{output} is an unfinished analysis made with other weights or another feature recipe; "
                             f"run it with the same settings to finish it, or pass --overwrite to start over")
    if writer is None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for suffix in (".journal",):
                Path(str(output) + suffix).unlink(missing_ok=True)
        writer = create_index(output, detector, cfg, folder, overwrite)
    summary = JobSummary(index=output, n_other_files=listing.n_other, skipped=list(listing.skipped))
    run = None
    try:
        run = _Run(writer, detector, cfg, in_folder(folder), summary, progress=progress, cancel=cancel)
        covered = run.replay() | media_keys(writer) | {(s.root, s.path) for s in writer.skipped}
        todo, starts = _todo(_media_files(listing), in_folder(folder), covered, run.video_in_progress())
        summary.n_resumed = len(writer.media_id) + len(writer.skipped)
        run.n_done = summary.n_resumed
        run.run(todo, starts)
        finish_analysis(run, summary)
    finally:
        if run is not None:
            run.abandon()
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def resume_analysis(output: Path, folder: Path):
    """The writer of the unfinished analysis ``output`` of ``folder``, its folder recorded as this user's root 0
    (the user names it again).

    Raises
    ------
    IndexFileError
        When the unfinished analysis is of another folder.
    """
    from objsearch.catalog import CatalogWriter

    writer = CatalogWriter.open(output)
    try:
        if os.path.abspath(writer.base_dir) != os.path.abspath(folder):
            raise IndexFileError(f"{output} is an unfinished analysis of {writer.base_dir}; run analyze on that "
                                 f"folder to finish it, or pass --overwrite to start over")
        mac = sign_root(writer.attrs["uuid"], writer.base_dir)
        roots, macs = writer.roots, writer.root_macs
        if mac and macs[0] != mac:
            writer.set_attrs(roots=roots, root_macs=[mac] + macs[1:])
    except BaseException:
        writer.close()
        raise
    return writer


def create_index(output: Path, detector, cfg: dict, folder: Path, overwrite: bool):
    """A new index file ``output`` (state ``analyzing``) for ``detector``'s features: its random projections made
    now, its PCA ones pending until every object is in (``finish_analysis``); returns the ``CatalogWriter``."""
    from objsearch.catalog import CatalogWriter

    projections, pending = [], []
    for d in cfg["dims"]:
        if cfg["projection"] == "pca":
            pending.append(int(d))
        else:
            projections.append(make_projection(cfg["projection"], d, cfg["seed"]).fit(
                np.zeros((1, detector.n_features), np.float32)))
    if cfg.get("rerank_dims") is not None:
        pending.append(int(cfg["rerank_dims"]))  # objsearch.rerank: fitted at the end, with a mirror sample
    return CatalogWriter.create(output, attrs=index_attrs(detector, cfg, folder, pending),
                                n_features=detector.n_features, projections=projections, overwrite=overwrite,
                                image_projections=image_projections(detector, cfg))


def finish_analysis(run: _Run, summary: JobSummary) -> None:
    """End an analysis whose objects are all in ``run``: fit the pending projections, mark the index ready, commit,
    remove the journal, and fill in ``summary``'s totals."""
    writer = run.writer
    _fit_pending_projections(run, run.detector.n_features)
    writer.set_attrs(state="ready")
    run.finish()
    summary.n_images = len(writer.media_id)
    summary.n_objects = writer.n_objects
    summary.n_added = summary.n_images


def index_attrs(detector, cfg: dict, folder: Path, pending_projections: list[int]) -> dict:
    """Root attributes of a new index (its uuid made here, so that ``folder`` is recorded as this user's root 0)."""
    weights = Path(str(detector.weights_path))
    uid = uuid.uuid4().hex
    folder = os.path.abspath(folder)
    return {
        "uuid": uid,
        "roots": [folder],
        "root_macs": [sign_root(uid, folder)],
        "state": "analyzing",
        "weights_sha256": detector.weights_sha256,
        "weights_name": weights.name,
        "feature_recipe": detector.feature_recipe(),
        "config": {**cfg, "weights": weights.name},
        "class_names": detector.names,
        "base_dir": folder,
        "pending_projections": list(pending_projections),
        "image_recipe": detector.image_feature_recipe(),
    }


def index_config(catalog) -> dict:
    """The configuration an index was built with, as ``load_config`` resolves it (for add and sync)."""
    from objsearch.config import ConfigError, load_config

    stored = catalog.attrs.get("config", {})
    keep = ("imgsz", "iou", "max_det", "conf", "thumb_size", "thumb_quality", "projection", "seed", "batch",
            "video_fps", "video_stride", "rerank_recipe")
    recipe = catalog.attrs.get("feature_recipe", {})
    blocks = recipe.get("blocks") if isinstance(recipe, dict) else None
    if not isinstance(blocks, dict) or not isinstance(recipe.get("imgsz", 640), int) \
            or not isinstance(recipe.get("n_features", 1), int) or not isinstance(recipe.get("version", 1), int):
        raise IndexFileError(f"{catalog.path} is damaged: its feature_recipe attribute is not a mapping with "
                             f"blocks {{name: weight}} and integer imgsz, n_features and version")
    if not isinstance(stored, dict):
        raise IndexFileError(f"{catalog.path} is damaged: its config attribute is not a mapping")
    overrides = {k: v for k, v in stored.items() if k in keep}
    # index hygiene: what the index was built with; an index made before these settings existed keeps none
    hygiene = {"index_conf": stored.get("index_conf"), "dedup_iou": stored.get("dedup_iou"),
               "index_mirror": stored.get("index_mirror", False), "rerank_dims": stored.get("rerank_dims")}
    overrides.update(hygiene)
    if "imgsz" in recipe:
        overrides["imgsz"] = recipe["imgsz"]
    try:
        cfg = load_config(None, **overrides, feature_recipe=blocks)
    except ConfigError as exc:
        raise IndexFileError(f"{catalog.path} is damaged: its stored config or feature_recipe is invalid ({exc})") \
            from None
    cfg["feature_recipe"] = blocks
    cfg.update({k: v for k, v in hygiene.items() if v is None})  # load_config ignores None overrides
    return cfg


def _open_for_job(index: Path, cfg_overrides: dict, weights, detector):
    """(writer, detector, cfg) for a job on an existing index: its own weights (checked by sha256), recipe and
    thresholds."""
    from objsearch.catalog import CatalogWriter
    from objsearch.engine import detector_for_index

    writer = CatalogWriter.open(index)
    try:
        if writer.attrs.get("state") != "ready":
            raise IndexFileError(f"{index} is an unfinished analysis; run `objsearch analyze` again to finish it")
        cfg = index_config(writer)
        cfg.update({k: v for k, v in cfg_overrides.items() if v is not None})
        detector = detector_for_index(writer, cfg, weights=weights, detector=detector)
    except BaseException:
        writer.close()
        raise
    return writer, detector, cfg


def _abs_keys(roots: Roots, keys) -> set[str]:
    """Absolute paths of (root, path) pairs under the roots' folders (strings only: nothing is read)."""
    return {os.path.abspath(os.path.join(roots.folders[r], rel)) for r, rel in keys}


def _keys_of(roots: Roots, path: Path) -> list[tuple[int, str]]:
    """(root, path relative to it) of ``path`` under every root folder that holds it, the deepest readable one
    (where ``add`` puts it) first."""
    first = roots.locate(path)
    keys = [first] if first is not None else []
    for i, folder in enumerate(roots.folders):
        if is_under(path, folder):
            key = (i, Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix())
            if key not in keys:
                keys.append(key)
    return keys


def _new_roots(roots: Roots, paths: list[Path]) -> list[str]:
    """The folders ``add`` makes new roots for: each path the user named that no readable root holds gives one (a
    folder itself, a file its folder), unless another new one holds it; a missing path gives none (it is reported
    as skipped)."""
    candidates = list(dict.fromkeys(os.path.abspath(p if p.is_dir() else p.parent) for p in paths
                                    if (p.exists() or p.is_symlink()) and roots.locate(p) is None))
    return [c for c in candidates if not any(o != c and is_under(c, o) for o in candidates)]  # in the order given


def add(index: str | Path, paths: Iterable[str | Path], *, weights: str | None = None, device: str | None = None,
        runtime: str | None = None, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
        detector=None) -> JobSummary:
    """Analyze image files (or the images under folders) and add them to ``index`` with its own weights, recipe and
    projection. Files already indexed are left as they are (``n_already``; ``sync`` re-analyzes changed ones).

    A path under none of the index's roots (that the user chose: see ``objsearch.roots``) makes its folder a new
    root, recorded as this user's, so an index can grow from several places; paths are stored relative to the
    deepest root that holds them. The new roots are committed before any image is, so a killed job resumes.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing (missing, damaged, locked by another writer, unfinished).
    """
    t0 = time.perf_counter()
    index = Path(index)
    paths = [Path(p) for p in paths]
    writer, detector, cfg = _open_for_job(index, {"device": device, "runtime": runtime}, weights, detector)
    if writer.has_image_vectors and image_vectors_stale(writer, detector):  # never mix two image recipes
        writer.close()
        raise IndexFileError(f"{index} holds whole-image vectors of another image recipe; run `objsearch sync -i "
                             f"{index}` first (it makes them all again)")
    summary = JobSummary(index=index)
    with contextlib.ExitStack() as stack:
        stack.callback(writer.close)
        roots = Roots.of(writer)
        fresh = _new_roots(roots, paths)
        if fresh:
            uid = writer.attrs["uuid"]
            writer.set_attrs(roots=writer.roots + fresh, root_macs=writer.root_macs + [sign_root(uid, f)
                                                                                       for f in fresh])
            writer.commit()  # before any image under them is journaled
            for folder in fresh:
                LOGGER.info("%s: new root %s", index, folder)
            roots = Roots.of(writer)
            for i, folder in enumerate(roots.recorded):
                if folder in fresh:
                    roots.move(i, folder)  # named now, even when no key could record it
        listing = list_media(paths, videos=True)
        summary.skipped += listing.skipped
        summary.n_other_files = listing.n_other
        files = _media_files(listing)

        def locate(path: Path) -> tuple[int, str]:
            found = roots.locate(path)
            if found is None:  # every listed file lies under a path the user named, so under a root
                raise ObjsearchError(f"{path} is under none of the index's folders")
            return found

        run = _Run(writer, detector, cfg, locate, summary, progress=progress, cancel=cancel)
        stack.callback(run.abandon)
        # a file is known under every root whose folder holds it (an older root may hold it too): looked up for
        # the files named only, never by going through every indexed item
        keys = {p: _keys_of(roots, p) for p in files}
        found = writer.find_media([k for ks in keys.values() for k in ks])
        covered, resume = run.replay(), run.video_in_progress()

        def key_of(path: Path):
            ks = keys[path]
            if resume is not None and resume[0] in ks:
                return resume[0]
            return next((k for k in ks if k in covered or k in found), ks[0])

        indexed = {key_of(p) for p in files if any(k in found for k in keys[p])}
        summary.n_already = sum(1 for p in files if key_of(p) in indexed and key_of(p) not in covered
                                and not (resume and key_of(p) == resume[0]))
        todo, starts = _todo(files, key_of, indexed | covered, resume)
        run.run(todo, starts)
        run.finish()
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    summary.seconds = time.perf_counter() - t0
    return summary


def remove(index: str | Path, paths: Iterable[str | Path] = (), *, missing: bool = False,
           base_dir: str | Path | None = None) -> JobSummary:
    """Remove indexed images (given as files or folders, present on disk or not) from ``index`` in one transaction;
    with ``missing``, also every indexed image whose file is gone. Ids are never reused. A path that names no
    indexed media item is listed in the summary's ``not_indexed`` (the others are removed all the same).

    ``base_dir`` moves roots as ``--base-dir`` does (``objsearch.roots.parse_base_dirs``). Naming paths reads no
    file; ``missing`` looks for each indexed file, so it needs every root to be one the user chose.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing; ``UntrustedRootError`` for ``missing`` with an item under a
        root the user did not choose (nothing is removed).
    """
    from objsearch.catalog import CatalogWriter

    t0 = time.perf_counter()
    index = Path(index)
    summary = JobSummary(index=index)
    writer = CatalogWriter.open(index)
    try:
        roots = Roots.of(writer, base_dir)
        gone, exact, hit = [], [], []  # hit[j]: did the j-th path name anything indexed
        paths = [Path(p) for p in paths]
        for j, path in enumerate(paths):  # matched as strings: no indexed file is read
            target = os.path.abspath(path)
            n_before = len(gone)
            for r, folder in enumerate(roots.folders):
                if is_under(target, folder):  # the target is in this root (or is it)
                    rel = Path(target).relative_to(os.path.abspath(folder)).as_posix()
                    exact.append((r, rel, j))
                    if not path.is_file() or path.suffix.lower() in VIDEO_SUFFIXES:
                        # a folder, a name no longer on disk, or a video (one item per sampled frame, one path)
                        gone.extend(writer.media_under(r, rel).tolist())
                elif is_under(folder, target):  # the whole root is in the target
                    gone.extend(writer.media_under(r, "").tolist())
            hit.append(len(gone) > n_before)
        found = writer.find_media([(r, rel) for r, rel, _ in exact])  # every file named, in one pass
        for r, rel, j in exact:
            if (r, rel) in found:
                gone.append(found[(r, rel)])
                hit[j] = True
        summary.not_indexed = [str(p) for p, h in zip(paths, hit) if not h]
        if missing:
            media_roots = writer.media_root.tolist()
            for r in sorted(set(media_roots)):
                roots.folder(r)  # refused before anything is looked at or removed
            for i, (r, rel) in enumerate(zip(media_roots, writer.media_path)):
                if not ((found_path := roots.resolve(r, rel)) is not None and found_path.is_file()):
                    gone.append(int(writer.media_id[i]))
        if gone:
            summary.n_removed_objects = writer.remove_media(np.asarray(sorted(set(gone)), np.int64))
            summary.n_removed = len(set(gone))
            writer.commit()
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def sync(index: str | Path, folder: str | Path | None = None, *, paths: Iterable[str | Path] | None = None,
         weights: str | None = None, device: str | None = None, runtime: str | None = None,
         progress: ProgressFn | None = None, cancel: threading.Event | None = None, detector=None,
         defer: Callable[[Path], bool] | None = None) -> JobSummary:
    """Bring ``index`` in step with its folders (default: every root; or ``folder``, under one of them): remove
    indexed images whose file is gone, re-analyze changed ones (size or modification time differ), add new ones.

    ``paths`` narrows the job to some files and folders under the index's roots, present or gone (what a watcher
    saw change; ``objsearch.watch``): only indexed items at or under them are compared, and only media files under
    those that exist are listed. ``sync(index, folder)`` is ``sync(index, paths=[folder])``. ``defer(path)``, when
    given, is asked about every media file found; a file it answers True for (one still being written) is left as
    it is this time: neither analyzed nor removed.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing; ``UntrustedRootError`` when a folder to read is under a root
        the user did not choose (``objsearch trust`` records it).
    ObjsearchError
        When ``folder`` or one of ``paths`` is under none of the index's roots (``objsearch add`` makes it one).
    """
    t0 = time.perf_counter()
    index = Path(index)
    writer, detector, cfg = _open_for_job(index, {"device": device, "runtime": runtime}, weights, detector)
    summary = JobSummary(index=index)
    with contextlib.ExitStack() as stack:
        stack.callback(writer.close)
        roots = Roots.of(writer)
        scope = [] if paths is None else [Path(p) for p in paths]
        if folder is not None:
            scope.append(Path(folder))
        if paths is None and folder is None:
            folders = [roots.folder(r) for r in range(len(roots.recorded))]  # refused when one is not the user's
        else:
            for path in scope:
                if roots.locate(path) is None:
                    holder = next((r for r, f in enumerate(roots.folders) if is_under(path, f)), None)
                    if holder is not None:
                        raise roots.refusal(holder)
                    raise ObjsearchError(f"{path} is not under the index's folders "
                                         f"({', '.join(map(str, roots.folders))}); `objsearch add` it to make it one")
            folders = scope
        listing = list_media([f for f in folders if f.exists() or f.is_symlink()], videos=True)
        summary.skipped += listing.skipped
        summary.n_other_files = listing.n_other

        def locate(path: Path) -> tuple[int, str]:
            found = roots.locate(path)
            if found is None:
                raise ObjsearchError(f"{path} is under none of the index's folders")
            return found

        run = _Run(writer, detector, cfg, locate, summary, progress=progress, cancel=cancel)
        stack.callback(run.abandon)
        covered = _abs_keys(roots, run.replay())
        on_disk = {os.path.abspath(p): p for p in _media_files(listing)}
        deferred = {where for where, p in on_disk.items() if defer(p)} if defer is not None else set()
        for where in deferred:
            del on_disk[where]
        stale = []
        for i, (r, rel) in enumerate(zip(writer.media_root.tolist(), writer.media_path)):
            where = os.path.abspath(os.path.join(roots.folders[r], rel))
            if where in deferred or not any(is_under(where, f) for f in folders):
                continue
            path = on_disk.get(where)
            if path is None:
                stale.append(i)
                summary.n_removed += 1
            elif where not in covered and _file_identity(path) != (int(writer.media_file_size[i]),
                                                                  int(writer.media_file_mtime_ns[i])):
                stale.append(i)
                summary.n_changed += 1
        if stale:
            summary.n_removed_objects = writer.remove_media(writer.media_id[np.asarray(stale)])
            writer.commit()
        if image_vectors_stale(writer, detector):
            summary.n_image_vectors = add_image_vectors(writer, detector, max_pixels=int(cfg.get("max_pixels", 100_000_000)),
                                                        progress=progress, cancel=cancel)
        indexed = _abs_keys(roots, media_keys(writer))
        resume = run.video_in_progress()
        resume = None if resume is None else (next(iter(_abs_keys(roots, [resume[0]]))), resume[1])
        todo, starts = _todo([p for _, p in sorted(on_disk.items())], os.path.abspath, indexed | covered, resume)
        summary.n_unchanged = sum(1 for a in on_disk if a in indexed and not (resume and a == resume[0]))
        run.run(todo, starts)
        run.finish()
        summary.rerank_dims = add_rerank_vectors(writer, detector, cfg, roots=roots)
        summary.n_added -= summary.n_changed
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    summary.seconds = time.perf_counter() - t0
    return summary


def add_rerank_vectors(writer, detector, cfg: dict, *, roots: Roots | None = None) -> int | None:
    """Give an index made before reranking (its stored configuration has no ``rerank_dims`` key) the rerank vectors
    of the default configuration (``objsearch.rerank``; one commit; its search vectors are kept as they are).
    Returns their dimension, None when nothing was made (the index has them, was made with ``rerank_dims: null``,
    or the mirror sample held no objects)."""
    from objsearch.config import load_config

    stored = writer.attrs.get("config", {})
    if writer.rerank_dims is not None or "rerank_dims" in stored or not len(writer.object_id):
        return None
    defaults = load_config(None, dims=writer.dims)
    if defaults["rerank_dims"] is None:
        return None
    settings = {**cfg, "rerank_dims": defaults["rerank_dims"], "rerank_recipe": defaults["rerank_recipe"]}
    proj = fit_rerank_projection(writer, detector, settings, roots=roots)
    if proj is None:
        return None
    writer.set_projection(proj)
    writer.set_attrs(config={**stored, "rerank_dims": settings["rerank_dims"],
                             "rerank_recipe": settings["rerank_recipe"]})
    writer.commit()
    return int(settings["rerank_dims"])


def trust(index: str | Path, base_dir=None) -> list[str]:
    """Record every root folder of ``index`` as chosen by this user (``objsearch trust``), after moving roots as
    ``base_dir`` says (``--base-dir`` values: the new folders are recorded); returns the folders recorded.

    For an index made on another machine or before roots were recorded: objsearch then reads its images under those
    folders (and only there) without ``--base-dir``. Nothing else changes.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing (format 1: convert it first).
    ObjsearchError
        When a root has no folder recorded and none is given, or the user's key cannot be made.
    """
    from objsearch.catalog import CatalogWriter
    from objsearch.roots import user_key

    writer = CatalogWriter.open(Path(index), description="objsearch trust")
    try:
        roots = Roots.of(writer, base_dir)
        for i, recorded in enumerate(roots.recorded):
            if not os.path.isabs(recorded) and i not in roots.moved:
                raise ObjsearchError(f"root {i} of {index} records no folder ({recorded!r}); name it with "
                                     f"--base-dir {i}=FOLDER")
        user_key(create=True)  # say why, rather than record nothing
        uid = writer.attrs["uuid"]
        folders = [os.path.abspath(f) for f in roots.folders]
        writer.set_attrs(base_dir=folders[0], roots=folders, root_macs=[sign_root(uid, f) for f in folders])
        writer.commit()
    finally:
        writer.close()
    return folders


def image_vectors_stale(catalog, detector) -> bool:
    """Whether ``catalog`` (a Catalog or CatalogWriter) lacks whole-image vectors or holds ones of another image
    recipe than ``detector`` makes (``sync`` then makes them all again)."""
    if not catalog.has_image_vectors:
        return True
    made, stored = detector.image_feature_recipe(), catalog.image_recipe
    return (made["n_features"], made["version"], made["blocks"]) != (
        stored.get("n_features"), stored.get("version"), stored.get("blocks"))


def compact(index: str | Path) -> tuple[int, int]:
    """Rewrite ``index`` without its removed rows (ids kept); returns (object rows before, after).

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing.
    """
    from objsearch.catalog import compact as compact_catalog

    return compact_catalog(Path(index))
