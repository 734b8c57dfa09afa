"""One job's pass over files (``JobRun``): decode (``objsearch.analysis.pipeline``), detect as the index stores
objects (``detect_for_index``), journal each finished image (``objsearch.analysis.journal``) and commit to the index
in small transactions (every ``COMMIT_EVERY_IMAGES`` images or ``COMMIT_EVERY_SECONDS``). Used by analyze, add and
sync (``objsearch.analysis.jobs``) and by the Ray merge (``objsearch.distributed``); also what they share: the job's
summary, its cancellation, the settings that must not change within an index, and which files are left to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from objsearch.analysis.journal import Journal, VideoEnd, record_key
from objsearch.analysis.pipeline import analyse_in_order, video_sampling
from objsearch.errors import ExitCode, ObjsearchError, VideoReadError
from objsearch.hygiene import IndexPolicy
from objsearch.media import VIDEO_SUFFIXES, make_thumbnail, video_info
from objsearch.types import Detections, MediaRecord, MediaRef, SkippedFile

LOGGER = logging.getLogger(__name__)

COMMIT_EVERY_IMAGES = 64
COMMIT_EVERY_SECONDS = 5.0


class JobCancelled(ObjsearchError):
    """The job was cancelled; the journal keeps what was finished, and running it again resumes."""

    exit_code = ExitCode.INTERRUPTED


Locate = Callable[[Path], "tuple[int, str]"]  # a file -> (its root, its path relative to that root)


def media_keys(catalog) -> set[tuple[int, str]]:
    """(root, path) of every live media item of ``catalog`` (a Catalog or CatalogWriter)."""
    return set(zip(catalog.media_root.tolist(), catalog.media_path))


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


ProgressFn = Callable[[int, int, int], None]  # (items done, in all: images and sampled frames; objects)


def file_identity(path: Path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of ``path``: what ``sync`` compares to find a changed file.

    Raises
    ------
    OSError
        When the file cannot be looked at.
    """
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def relative_path(path: Path, base_dir: Path) -> str:
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
    """Detections of ``images`` (each (H, W, 3) uint8 BGR) as an index stores them: what the configuration's
    ``IndexPolicy`` keeps (``objsearch.hygiene``), with ``index_mirror`` each object's features the mean of its own and
    its mirrored features (``Detector.detect_batch(mirror=True)``: one more network pass), so that a mirrored query
    finds it. Several images go in one forward pass (they must share a letterbox shape)."""
    policy = IndexPolicy.from_config(cfg)
    conf = policy.min_confidence(cfg["conf"])
    found = detector.detect_batch(images, auto=True, conf=conf, mirror=policy.mirror)
    out = []
    for dets in found:
        if policy.mirror:  # the mirror pass's features are folded in, not stored
            dets = Detections(dets.xyxy, dets.confidence, dets.class_id, policy.features(dets),
                              image_feature=dets.image_feature)
        out.append(dets[policy.keep(dets, conf)])
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
    return lambda path: (0, relative_path(path, folder))


class JobRun:
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
            paths.add(record_key(record))
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
            self.skipped = [s for s in self.skipped if record_key(s) != record_key(record)] + [record]
            self.writer.set_skipped(self.skipped)
            self.summary.skipped.append(record)
            return
        if isinstance(record, VideoEnd):
            self.writer.set_attrs(video_in_progress=-1)
            self._video = None
            self.summary.n_videos += 1
            kept = [s for s in self.skipped if record_key(s) != record_key(record)]
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
            if self._video != record_key(record):
                self.writer.set_attrs(video_in_progress=int(media_id))
                self._video = record_key(record)
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
        and index writes (on this thread, in path order) overlap: ``objsearch.analysis.pipeline``."""
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
        size, mtime = file_identity(path)
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
        if not self.journal.closed:
            self.journal.close()


def media_files(listing) -> list[Path]:
    """A listing's images and videos in one sorted list (the order in which a job analyses them and hands out
    ids)."""
    return sorted(listing.images + listing.videos)


def files_to_do(files: list[Path], key_of: Callable[[Path], object], done: set, resume: tuple | None) \
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
