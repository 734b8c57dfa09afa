"""Decoding ahead of the detector: a background thread reads a job's images and samples its videos' frames, in order,
so detection never waits for the disk (``prefetch``), and the video sampling a configuration asks for
(``video_sampling``).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

from objsearch.analysis.journal import VideoEnd
from objsearch.errors import ImageReadError, VideoReadError
from objsearch.media import VIDEO_SUFFIXES, read_image, read_video_frames


def prefetch(tasks: list[tuple[Path, int]], depth: int, stop: threading.Event, max_pixels: int,
             sampling: dict) -> Iterator:
    """Decode media in a background thread, in order, yielding ``(path, item, where)``: for an image, item is the
    image (H, W, 3) uint8 BGR or its ImageReadError and where None; for a video (``tasks`` holds ``(path,
    start_frame)``), one ``(path, frame image, (frame_index, timestamp_s))`` per sampled frame from ``start_frame``
    on, then ``(path, VideoEnd, None)`` (with the reason when it was broken or cut short). Any failure of the thread
    itself is re-raised here; stopping (the consumer returning early) never leaves it blocked."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def video(p: Path, start: int) -> bool:
        n, reason = 0, ""
        try:
            for frame in read_video_frames(p, start_frame=start, max_pixels=max_pixels, **sampling):
                if stop.is_set() or not put((p, frame.image, (frame.index, frame.timestamp_s))):
                    return False
                n += 1
        except VideoReadError as exc:
            reason = str(exc)
        return put((p, VideoEnd(str(p), n, reason), None))

    def work():
        try:
            for p, start in tasks:
                if stop.is_set():
                    return
                if p.suffix.lower() in VIDEO_SUFFIXES:
                    if not video(p, start):
                        return
                    continue
                try:
                    item = read_image(p, max_pixels=max_pixels)
                except ImageReadError as exc:
                    item = exc
                if not put((p, item, None)):
                    return
            put(done)
        except BaseException as exc:  # a bug in decoding: hand it to the consumer instead of dying silently
            put(exc)

    thread = threading.Thread(target=work, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(5.0)


def video_sampling(cfg: dict) -> dict:
    """``read_video_frames``' sampling arguments from a configuration: ``video_stride`` (every N-th frame) when
    set, else ``video_fps`` frames per second."""
    stride = cfg.get("video_stride")
    if stride:
        return {"sample_fps": None, "stride": int(stride)}
    return {"sample_fps": float(cfg.get("video_fps", 1.0)), "stride": None}
