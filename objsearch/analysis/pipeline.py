"""The pipelined analysis of a job's files: decoding, detection in batches that fill, thumbnails and the journal and
index writes overlapped, with the records still handed over one by one in path order.

Four kinds of thread, joined by bounded queues (so memory stays O(window + batch) images whatever the folder's size):

* a **reader** walks the files in path order and numbers every item it will hand over: for an image, one decoding
  task submitted to the worker pool; for a video, its sampled frames (decoded on the reader itself, a video decodes
  in order) and then its end;
* a **pool of workers** (``min(8, cpu_count)`` threads; OpenCV releases the GIL) decodes images and, after detection,
  builds each image's record (file identity and one JPEG thumbnail per object);
* the **detector** thread takes the items in order and groups the images by letterbox shape
  (``Detector.letterbox_shape``) in a reorder window of ``window`` items: a shape's group goes through the network
  when it holds ``batch`` images, and the group of the oldest waiting image once an item ``window`` places after it
  has come (or at the end), so batches fill on mixed-shape folders while no image waits for long and what waits for
  its turn stays O(``window`` + ``batch``);
* the **consumer** (the caller's thread) puts the records back in path order and hands each to ``emit`` (the journal
  and the index writer, which are not thread-safe, stay on it). A corrupt image becomes a ``SkippedFile`` at its
  place, a video's end comes after its frames.

Images of one letterbox shape give in a batch the features they give alone (``detect_batch(auto=True)``), so the
index is the one the serial path (``batch`` 1) makes. An exception in any thread is raised again on the consumer;
leaving the consumer (the end, an exception from ``emit`` such as ``JobCancelled``, Ctrl-C) stops every thread and
joins it before returning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from objsearch.errors import ImageReadError, VideoReadError
from objsearch.media import VIDEO_SUFFIXES, read_image, read_video_frames
from objsearch.types import Detections, SkippedFile

LOGGER = logging.getLogger(__name__)


def video_sampling(cfg: dict) -> dict:
    """``read_video_frames``' sampling arguments from a configuration: ``video_stride`` (every N-th frame) when
    set, else ``video_fps`` frames per second."""
    stride = cfg.get("video_stride")
    if stride:
        return {"sample_fps": None, "stride": int(stride)}
    return {"sample_fps": float(cfg.get("video_fps", 1.0)), "stride": None}


MAX_WORKERS = 8  # decoding and thumbnail threads, at most
POLL_S = 0.1  # how often a thread blocked on a queue looks at the stop event
JOIN_TIMEOUT_S = 120.0  # how long leaving waits for a thread (the detector may be inside a forward pass)


def default_workers() -> int:
    """Worker threads for decoding and thumbnails on this machine: ``min(8, os.cpu_count())``."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def default_window(batch: int) -> int:
    """Images the detector thread may hold back to fill batches of ``batch`` images: 4 batches, at least 16."""
    return max(16, 4 * int(batch))


@dataclass
class _Item:
    """One numbered thing to hand over: an image or video frame (``pixels``: the image (H, W, 3) uint8 BGR, or the
    future of its decoding), a file that could not be read (``error``), or a video's end (``end``: (sampled frames
    read, reason it stopped early or "")). ``where`` is a frame's (frame_index, timestamp_s), None for an image."""

    seq: int
    path: Path
    where: tuple[int, float] | None = None
    pixels: np.ndarray | Future | None = None
    error: ImageReadError | None = None
    end: tuple[int, str] | None = None


@dataclass
class _End:
    """The reader is done: ``n`` items were numbered."""

    n: int


def _decode(path: Path, max_pixels: int) -> np.ndarray | ImageReadError:
    """A worker's task: the image (H, W, 3) uint8 BGR, or the error that says why it cannot be read (returned, not
    raised: a bad file is an answer; anything else raised is a bug, raised again on the consumer)."""
    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        return exc


class _Pipeline:
    """The state of one pipelined pass; see the module's docstring. Built and run by ``analyse_in_order``."""

    def __init__(self, tasks, *, letterbox_shape, detect, make_record, emit, locate, video_end, batch, window,
                 workers, max_pixels, sampling, cancel):
        self.tasks, self.letterbox_shape, self.detect = tasks, letterbox_shape, detect
        self.make_record, self.emit, self.locate, self.video_end = make_record, emit, locate, video_end
        self.batch, self.max_pixels, self.sampling = batch, max_pixels, sampling
        self.window = max(window, batch)
        self.cancel = cancel or threading.Event()
        self.stop = threading.Event()  # set when leaving, or by the first thread that fails
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="objsearch-worker")
        self.read_q: queue.Queue = queue.Queue(maxsize=max(4, 2 * workers))  # items in order, images being decoded
        self.out_q: queue.Queue = queue.Queue(maxsize=self.window + batch)  # (seq, record future or item)

    # -------------------------------------------------------------------------------------------- plumbing
    def _fail(self, exc: BaseException) -> None:
        """Keep a thread's exception for the consumer and stop the others (an exception after the stop, such as a
        cancelled future or the closed pool, is only the stop itself)."""
        with self._lock:
            if not self.stop.is_set():
                self.errors.append(exc)
                self.stop.set()

    def _put(self, q: queue.Queue, item) -> bool:
        """Put ``item`` on ``q``, waiting while it is full; False (not put) once stopped."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        """The next item of ``q``, waiting while it is empty; None once stopped."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    # ---------------------------------------------------------------------------------------------- reader
    def read(self) -> None:
        """The reader thread: number every item in path order, submit images to the pool, decode videos here."""
        try:
            seq = 0
            for path, start in self.tasks:
                if self.stop.is_set():
                    return
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    n, reason = 0, ""
                    frames = read_video_frames(path, start_frame=start, max_pixels=self.max_pixels, **self.sampling)
                    try:
                        with contextlib.closing(frames):
                            for frame in frames:
                                if not self._put(self.read_q, _Item(seq, path, (frame.index, frame.timestamp_s),
                                                                    frame.image)):
                                    return
                                seq, n = seq + 1, n + 1
                    except VideoReadError as exc:
                        reason = str(exc)
                    if not self._put(self.read_q, _Item(seq, path, end=(n, reason))):
                        return
                else:
                    if not self._put(self.read_q, _Item(seq, path, pixels=self.pool.submit(_decode, path,
                                                                                           self.max_pixels))):
                        return
                seq += 1
            self._put(self.read_q, _End(seq))
        except BaseException as exc:
            self._fail(exc)

    # -------------------------------------------------------------------------------------------- detector
    def infer(self) -> None:
        """The detector thread: take the items in order, detect the images in batches of one letterbox shape, pass
        the rest on as they are."""
        try:
            groups: dict[Any, list[_Item]] = {}  # letterbox shape -> images waiting, in path order
            while True:
                item = self._get(self.read_q)
                if item is None:
                    return
                if isinstance(item, _End):
                    while groups:
                        if not self._detect_oldest(groups):
                            return
                    self._put(self.out_q, item)
                    return
                if isinstance(item.pixels, Future):
                    pixels = item.pixels.result()
                    item.pixels, item.error = ((None, pixels) if isinstance(pixels, ImageReadError)
                                               else (pixels, None))
                if item.pixels is None:  # a file that could not be read, or a video's end: ready now
                    if not self._put(self.out_q, (item.seq, item)):
                        return
                else:
                    shape = self.letterbox_shape(item.pixels.shape) if self.batch > 1 else None
                    group = groups.setdefault(shape, [])
                    group.append(item)
                    if len(group) >= self.batch and not self._detect(groups.pop(shape)):
                        return
                while groups and (item.seq - self._oldest(groups) >= self.window or self.cancel.is_set()):
                    if not self._detect_oldest(groups):
                        return
        except BaseException as exc:
            self._fail(exc)

    @staticmethod
    def _oldest(groups: dict) -> int:
        """The number of the oldest image waiting (the one the consumer waits for)."""
        return min(group[0].seq for group in groups.values())

    def _detect_oldest(self, groups: dict) -> bool:
        """Detect the group that holds the oldest waiting image."""
        shape = min(groups, key=lambda s: groups[s][0].seq)
        return self._detect(groups.pop(shape))

    def _detect(self, items: list[_Item]) -> bool:
        """One forward pass over ``items`` (one letterbox shape); their records are built in the pool. False once
        stopped."""
        if self.stop.is_set():
            return False
        found = self.detect([item.pixels for item in items])
        for item, dets in zip(items, found):
            record = self.pool.submit(self.make_record, item.path, item.pixels, dets, item.where)
            item.pixels = None
            if not self._put(self.out_q, (item.seq, record)):
                return False
        return True

    # -------------------------------------------------------------------------------------------- consumer
    def consume(self) -> None:
        """The consumer (the caller's thread): hand the records to ``emit`` in path order."""
        waiting: dict[int, Any] = {}  # seq -> record future or item, that came before its turn
        next_seq, total = 0, None
        while total is None or next_seq < total:
            if self.errors:
                raise self.errors[0]
            if next_seq in waiting:
                self._hand_over(waiting.pop(next_seq))
                next_seq += 1
                continue
            try:
                got = self.out_q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(got, _End):
                total = got.n
            else:
                waiting[got[0]] = got[1]

    def _hand_over(self, got) -> None:
        if isinstance(got, Future):
            self.emit(got.result())
            return
        root, rel = self.locate(got.path)
        if got.end is not None:
            n_frames, reason = got.end
            if reason:
                LOGGER.warning("%s", reason)
            self.emit(self.video_end(rel, n_frames, reason, root))
            return
        LOGGER.warning("skipping %s", got.error)
        self.emit(SkippedFile(rel, str(got.error), root))

    def run(self) -> None:
        threads = [threading.Thread(target=self.read, name="objsearch-reader", daemon=True),
                   threading.Thread(target=self.infer, name="objsearch-detector", daemon=True)]
        try:
            for thread in threads:
                thread.start()
            self.consume()
        finally:
            self.stop.set()
            self.pool.shutdown(wait=False, cancel_futures=True)
            for thread in threads:
                if thread.ident is not None:
                    thread.join(JOIN_TIMEOUT_S)
                    if thread.is_alive():
                        LOGGER.warning("the analysis thread %s did not stop within %.0f s", thread.name,
                                       JOIN_TIMEOUT_S)
            self.pool.shutdown(wait=True)


def analyse_in_order(tasks: list[tuple[Path, int]], *, letterbox_shape: Callable[[tuple[int, ...]], Any],
                     detect: Callable[[list[np.ndarray]], list[Detections]],
                     make_record: Callable[[Path, np.ndarray, Detections, tuple | None], Any],
                     emit: Callable[[Any], None], locate: Callable[[Path], tuple[int, str]],
                     video_end: Callable[[str, int, str, int], Any], batch: int = 1, max_pixels: int = 100_000_000,
                     sampling: dict | None = None, cancel: threading.Event | None = None, workers: int | None = None,
                     window: int | None = None) -> None:
    """Analyse ``tasks`` with decoding, detection, thumbnails and ``emit`` overlapped, handing the records to ``emit``
    in path order (see the module's docstring).

    Parameters
    ----------
    tasks : list of (path, start_frame)
        Images and videos, in the order their records are handed over; a video is read from frame ``start_frame``.
    letterbox_shape : the detector's ``letterbox_shape``: images with equal shapes share a forward pass.
    detect : images (each (H, W, 3) uint8 BGR, one letterbox shape) -> one Detections per image (the detector
        thread).
    make_record : (path, image, detections, where) -> the record of an image or video frame (``where``:
        (frame_index, timestamp_s), None for an image); called on a worker thread, so it must not write anything
        shared (it encodes thumbnails).
    emit : takes each record in order, on the caller's thread: a ``make_record`` record, a ``SkippedFile`` for a file
        that could not be read (root and path from ``locate``), or ``video_end(path, n_frames, reason, root)`` after a
        video's frames. What it raises (``JobCancelled``, ``KeyboardInterrupt``) stops the pipeline and comes out here.
    locate : path -> (root, path relative to it) for the skipped files and video ends.
    video_end : (relative path, sampled frames read, reason or "", root) -> the record of a video's end.
    batch : images per forward pass (>= 1); 1 is the serial path.
    max_pixels : the decoding pixel limit (``read_image``).
    sampling : ``read_video_frames``' sampling arguments (``sample_fps``, ``stride``); None: 1 frame a second.
    cancel : when set, the detector thread stops holding images back (the next ``emit`` is expected to raise).
    workers : decoding and thumbnail threads; None: ``default_workers()``.
    window : how far (in items) the detector thread may look past the oldest image it holds back to fill batches;
        None: ``default_window(batch)``.

    Raises
    ------
    Whatever ``emit`` raises, and any exception of the reader, detector or worker threads (raised again here). Every
    thread the pipeline started has ended when this returns or raises (each join waits at most ``JOIN_TIMEOUT_S``).
    """
    if not tasks:
        return
    batch = max(1, int(batch))
    workers = default_workers() if workers is None else max(1, int(workers))
    window = default_window(batch) if window is None else max(1, int(window))
    _Pipeline(tasks, letterbox_shape=letterbox_shape, detect=detect, make_record=make_record, emit=emit,
              locate=locate, video_end=video_end, batch=batch, window=window, workers=workers, max_pixels=max_pixels,
              sampling=sampling or {"sample_fps": 1.0, "stride": None}, cancel=cancel).run()
