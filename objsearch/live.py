"""The live search pipeline: a worker thread that takes the newest frame from a ``FrameSlot``, finds every object's
neighbours, fetches their thumbnails and hands a ``LiveResult`` to a callback. The desktop app and the benchmark run
it; it knows nothing of Qt.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from objsearch.errors import ObjsearchError
from objsearch.media import decode_thumbnail
from objsearch.moments import DEFAULT_GROUP_S
from objsearch.sources import Frame, FrameSlot
from objsearch.types import ImageSearchResult, SearchResult

LOGGER = logging.getLogger(__name__)


@dataclass
class QuerySettings:
    """What every query of the pipeline uses; read at each frame, so changes apply to the next one.

    k : neighbours per object (1-100). same_class : only neighbours of the object's class. dims : stored projection
    dimension (None: the searcher's). conf : detection confidence threshold (None: the index's). group_s : hits of
    one video and class within this many seconds are one moment (None: every frame on its own). mode : ``objects``
    (each object's neighbours) or ``image`` (one row of similar whole images: ``LiveResult.result`` is then an
    ``ImageSearchResult``, ``LiveResult.image_mode`` is True, and ``thumbnails`` holds whole-image pictures by media
    id).
    """

    k: int = 16
    same_class: bool = False
    dims: int | None = None
    conf: float | None = None
    group_s: float | None = DEFAULT_GROUP_S
    mode: str = "objects"


@dataclass
class LiveResult:
    """One processed frame.

    frame : the frame searched. result : its search result, by the mode searched: a ``SearchResult`` (each object's
    neighbours) or an ``ImageSearchResult`` (whole images; ``image_mode``). ``result.to_dict()`` is the
    ``query --json`` object plus ``frame`` and ``timestamp_s`` for video frames.
    thumbnails : decoded (h, w, 3) uint8 BGR pictures of every neighbour in ``result``: thumbnails by object id, or
        whole-image pictures by media id in image mode.
    timings_ms : detect, features, search, assemble, thumbnails (and whatever ``compose`` adds).
    fps : processed frames per second over the last two seconds. dropped : frames the slot dropped so far.
    extra : what ``compose`` returned (the app's rendered rows).
    generation : the slot's generation the frame was taken under (``FrameSlot.generation``); a consumer drops a
        result whose generation is no longer the slot's.
    """

    frame: Frame
    result: SearchResult | ImageSearchResult
    thumbnails: dict[int, np.ndarray]
    timings_ms: dict[str, float]
    fps: float = 0.0
    dropped: int = 0
    extra: object = None
    generation: int = 0

    @property
    def image_mode(self) -> bool:
        """Whether this is a whole-image search (``result`` an ``ImageSearchResult``), not an object search."""
        return isinstance(self.result, ImageSearchResult)


class ThumbnailCache:
    """Decoded thumbnails by object id, least recently used dropped beyond ``capacity`` (live video keeps finding
    the same neighbours, so most are hits). Reads go through ``index.thumbnail(object_id)`` (JPEG bytes; ``index`` is
    an ``Engine`` or a ``Catalog``)."""

    def __init__(self, index, capacity: int = 4096):
        self.index, self.capacity = index, int(capacity)
        self._items: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, object_id: int) -> np.ndarray | None:
        """The thumbnail of ``object_id`` as (h, w, 3) uint8 BGR, or None when the index holds none for it.

        Raises ``IndexError`` (from the index file) for an id outside the index."""
        object_id = int(object_id)
        item = self._items.get(object_id)
        if item is not None:
            self._items.move_to_end(object_id)
            self.hits += 1
            return item
        self.misses += 1
        item = decode_thumbnail(self.index.thumbnail(object_id))
        if item is not None:
            self._items[object_id] = item
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item

    def get_many(self, object_ids) -> dict[int, np.ndarray]:
        """``get`` for every id >= 0 of an iterable (-1 padding skipped), by id."""
        out = {}
        for oid in object_ids:
            if oid >= 0 and oid not in out:
                thumb = self.get(oid)
                if thumb is not None:
                    out[int(oid)] = thumb
        return out


def search_frame(engine, frame: Frame, settings: QuerySettings, cache: ThumbnailCache | None = None) -> LiveResult:
    """Search one frame (``engine``: an ``objsearch.engine.Engine``): its result (frame number and time in
    ``result.query``) and, with a ``cache``, the neighbours' decoded thumbnails.

    Raises
    ------
    ObjsearchError
        From the engine (for example a projection dimension the index does not hold).
    """
    query = frame.media
    if settings.mode == "image":
        found = engine.search_image(frame.image, k=int(settings.k), exclude_media_id=frame.image_id,
                                    dims=settings.dims, query=query)
        timings = dict(found.timings_ms)
        t0 = time.perf_counter()
        pictures = {nb.media.media_id: engine.media_picture(nb.media.media_id) for nb in found.neighbors}
        timings["thumbnails"] = (time.perf_counter() - t0) * 1e3
        return LiveResult(frame, found, pictures, timings)
    result = engine.search(frame.image, k=int(settings.k), conf=settings.conf, same_class=settings.same_class,
                           exclude_media_id=frame.image_id, dims=settings.dims, query=query,
                           group_s=settings.group_s)
    timings = dict(result.timings_ms)
    thumbs = {}
    if cache is not None:
        t0 = time.perf_counter()
        thumbs = cache.get_many(result.object_ids())
        timings["thumbnails"] = (time.perf_counter() - t0) * 1e3
    return LiveResult(frame, result, thumbs, timings)


def search_video(engine, source, settings: QuerySettings, *, stride: int = 1, max_frames: int | None = None,
                 cache: ThumbnailCache | None = None):
    """Search every ``stride``-th frame of a video source (skipped frames are not decoded), at most ``max_frames``.

    Yields
    ------
    LiveResult, one per analysed frame.

    Raises
    ------
    SourceError
        From the source, when a frame cannot be decoded before the end.
    """
    n = 0
    while max_frames is None or n < max_frames:
        if source.position % stride:
            if not source.skip():
                return
            continue
        frame = source.read()
        if frame is None:
            return
        n += 1
        yield search_frame(engine, frame, settings, cache)


class LivePipeline(threading.Thread):
    """Search the newest frame of ``slot``, again and again, until stopped.

    Parameters
    ----------
    searcher : an ``objsearch.engine.Engine`` (replace it with ``set_searcher``).
    slot : frames to search; stale ones were already dropped by the slot.
    on_result : called in this thread with each ``LiveResult`` whose generation is still the slot's (a result
        made before a source change, pause, seek or settings change, ``FrameSlot.advance``, is dropped; results
        already handed on carry their ``generation`` so the receiver can drop them too).
    on_error : called in this thread with a one-line message when a frame fails; the pipeline keeps running.
    settings : read at every frame.
    compose : optional, called in this thread with the ``LiveResult`` before ``on_result``; its return value goes to
        ``LiveResult.extra`` and its time to ``timings_ms["compose"]`` (the app renders its rows here, off the GUI
        thread).

    Each searcher is warmed in this thread before its first frame (``Engine.warmup``: the index's common image sizes
    and a camera's, the detector's whole path and the vector store), while the source is still opening: the first
    results come at the warm speed.
    """

    def __init__(self, searcher, slot: FrameSlot, on_result: Callable[[LiveResult], None], *,
                 on_error: Callable[[str], None] | None = None, settings: QuerySettings | None = None,
                 compose: Callable[[LiveResult], object] | None = None):
        super().__init__(daemon=True, name="live pipeline")
        self.slot, self.on_result, self.on_error, self.compose = slot, on_result, on_error, compose
        self.settings = settings or QuerySettings()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._times: collections.deque[float] = collections.deque(maxlen=64)
        self.n_frames = 0
        self.n_stale = 0  # results dropped because the slot's generation moved on while they were made
        self.searcher = None
        self.cache = None
        self._warm_due = False
        self.set_searcher(searcher)

    def set_searcher(self, searcher) -> None:
        """Use another index from the next frame on (the caller closes the old engine)."""
        with self._lock:
            self.searcher = searcher
            self.cache = ThumbnailCache(searcher) if searcher is not None else None
            self._warm_due = searcher is not None and hasattr(searcher, "warmup")

    def stop(self, timeout: float | None = 5.0) -> None:
        self._halt.set()
        self.slot.close()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def fps(self) -> float:
        """Frames per second over the last two seconds of results."""
        now = time.perf_counter()
        recent = [t for t in self._times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def _warm(self) -> None:
        """Warm the current searcher once (a failure is logged: live search goes on cold)."""
        with self._lock:
            if not self._warm_due:
                return
            self._warm_due = False
            try:
                spent = self.searcher.warmup()
                LOGGER.info("live search warmed up in %.0f ms", spent)
            except Exception:  # a bug here must not stop live search
                LOGGER.exception("warming up live search failed")

    def run(self) -> None:
        while not self._halt.is_set():
            self._warm()
            item = self.slot.take(timeout=0.1)
            if item is None or self._halt.is_set():
                continue
            frame, generation = item
            with self._lock:
                searcher, cache = self.searcher, self.cache
                if searcher is None:
                    continue
                try:
                    result = search_frame(searcher, frame, self.settings, cache)
                    if self.compose is not None:
                        t0 = time.perf_counter()
                        result.extra = self.compose(result)
                        result.timings_ms["compose"] = (time.perf_counter() - t0) * 1e3
                except ObjsearchError as exc:
                    if generation == self.slot.generation:
                        self._report(str(exc))
                    continue
                except Exception as exc:  # a bug must not kill live search; it is logged with its traceback
                    LOGGER.exception("searching %s failed", frame.name)
                    self._report(f"searching {frame.name} failed: {type(exc).__name__}: {exc}")
                    continue
            if generation != self.slot.generation:  # paused, seeked, another source or settings meanwhile
                self.n_stale += 1
                continue
            self._times.append(time.perf_counter())
            self.n_frames += 1
            result.generation = generation
            result.fps = self.fps()
            result.dropped = self.slot.dropped
            self.on_result(result)

    def _report(self, message: str) -> None:
        if self.on_error:
            self.on_error(message)
        else:
            LOGGER.warning("%s", message)
