"""Frame sources for live search: an image file, a random indexed image, a webcam, a video file, the screen.

Every source yields ``Frame`` objects (``image`` (H, W, 3) uint8 BGR) from ``read()`` and returns None at the end of
its stream. The query sources are those of the original ReverseObjectSearchFast app: random image, webcam, video and
screen grab, plus an image file.

``FrameSlot`` and ``CaptureThread`` make a source live: capture runs in its own thread and keeps only the newest frame,
so whoever consumes frames never works on a stale one (the dropped count says how many were skipped).
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from objsearch.errors import ExitCode, ObjsearchError
from objsearch.types import MediaRef

LOGGER = logging.getLogger(__name__)


class SourceError(ObjsearchError):
    """A frame source cannot be opened or stopped delivering: no camera, an undecodable video, a failed screen grab."""

    exit_code = ExitCode.UNREADABLE_INPUT


@dataclass
class Frame:
    """One frame of a source: its pixels and what they are.

    Attributes
    ----------
    image : ndarray of shape (H, W, 3), uint8 BGR
    media : MediaRef
        What the frame is: ``path`` what it shows (a file path, ``webcam 0``, ``screen``), ``width`` and ``height``
        of ``image``, ``media_id`` of the indexed item it is (its own objects are then left out of its results) or
        -1, and for a frame of a video file its ``frame_index`` and ``timestamp_s`` (seconds from the start of the
        file; -1 and -1.0 for anything else).
    index : int
        Frame number in its source (0-based; for a video file its position in the file, for a random indexed image
        the image's position in the source's list).
    captured_at : float
        When the frame was read, in seconds since the epoch (``time.time()``).
    """

    image: np.ndarray
    media: MediaRef
    index: int = 0
    captured_at: float = 0.0

    @classmethod
    def read_now(cls, image: np.ndarray, path: str, *, index: int = 0, media_id: int = -1,
                 video_time_s: float | None = None) -> Frame:
        """A frame read just now from ``path``; with ``video_time_s`` (seconds from the start of the file) it is
        frame ``index`` of a video file."""
        video = video_time_s is not None
        media = MediaRef(path=str(path), width=int(image.shape[1]), height=int(image.shape[0]), media_id=int(media_id),
                         frame_index=int(index) if video else -1, timestamp_s=float(video_time_s) if video else -1.0)
        return cls(image, media, int(index), time.time())

    @property
    def name(self) -> str:
        """What the frame shows: ``media.path``."""
        return self.media.path

    @property
    def image_id(self) -> int:
        """``media.media_id``: the indexed item the frame is, or -1."""
        return self.media.media_id

    @property
    def is_video(self) -> bool:
        """Whether the frame comes from a video file (``media.frame_index`` and ``media.timestamp_s`` are its place
        in the file)."""
        return self.media.is_video_frame


class FrameSource:
    """Base class of frame sources."""

    name = ""

    def read(self) -> Frame | None:
        """The next frame, or None when the stream ended. Raises SourceError when reading fails."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageFileSource(FrameSource):
    """One image file. ``image_id`` marks an indexed image (its own objects are excluded from its results).

    Raises
    ------
    ImageReadError
        From ``read`` when the file is missing or not a decodable image.
    """

    def __init__(self, path: str | Path, image_id: int = -1):
        self.path = Path(path)
        self.image_id = int(image_id)
        self.name = str(self.path)

    def read(self) -> Frame:
        from objsearch.media import read_image

        return Frame.read_now(read_image(self.path), str(self.path), media_id=self.image_id)


class VideoFrameSource(FrameSource):
    """One frame of a video file, decoded at its frame number (an indexed video frame clicked in the app becomes the
    query: the very frame analysis saw). ``image_id`` is its media id in the index (its own objects are left out).

    Raises
    ------
    VideoReadError
        From ``read`` when the file is gone, not a video, or has no such frame.
    """

    def __init__(self, path: str | Path, frame_index: int, timestamp_s: float, image_id: int = -1):
        self.path = Path(path)
        self.frame_index, self.timestamp_s = int(frame_index), float(timestamp_s)
        self.image_id = int(image_id)
        self.name = str(self.path)

    def read(self) -> Frame:
        from objsearch.media import read_video_frame

        image = read_video_frame(self.path, self.frame_index)
        return Frame.read_now(image, str(self.path), index=self.frame_index, media_id=self.image_id,
                              video_time_s=self.timestamp_s)


class RandomImageSource(FrameSource):
    """A random image of the index per ``read`` (the original app's "random image" query).

    Parameters
    ----------
    paths : the indexed images' paths, as they are now on disk.
    media_ids : their media ids in the index (default: their positions), so a drawn image leaves its own objects out
        of its results.
    seed : seeds the choice (stored nowhere; for reproducible demos and tests).

    Raises
    ------
    SourceError
        From the constructor when there are no paths; from ``read`` when none of 20 draws is a readable file (the
        index's images moved: set its base directory).
    """

    def __init__(self, paths: Sequence[str | Path], seed: int | None = None, media_ids: Sequence[int] | None = None):
        if len(paths) == 0:
            raise SourceError("the index holds no images to draw from")
        self.paths = [Path(p) for p in paths]
        self.media_ids = [int(m) for m in media_ids] if media_ids is not None else list(range(len(self.paths)))
        if len(self.media_ids) != len(self.paths):
            raise ValueError(f"one media id per path expected, got {len(self.media_ids)} for {len(self.paths)}")
        self.rng = np.random.default_rng(seed)
        self.name = "random image"

    def read(self) -> Frame:
        from objsearch.errors import ImageReadError
        from objsearch.media import read_image

        last = ""
        for _ in range(20):
            i = int(self.rng.integers(len(self.paths)))
            try:
                image = read_image(self.paths[i])
            except ImageReadError as exc:
                last = str(exc)
                continue
            return Frame.read_now(image, str(self.paths[i]), index=i, media_id=self.media_ids[i])
        raise SourceError(f"no readable indexed image in 20 random draws ({last}); "
                          f"if the images moved, set the index's image folder (base directory)")


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded with OpenCV.

    ``seek(frame)`` may be called from another thread than ``read``; it takes effect at the next ``read``.

    Raises
    ------
    SourceError
        From the constructor when the file is missing or OpenCV cannot decode it; from ``read`` when a frame
        cannot be decoded before the end (the end itself returns None).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            st = self.path.stat()
        except OSError as exc:
            raise SourceError(f"cannot open video {self.path}: {exc.strerror.lower()}") from None
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"cannot open video {self.path}: it is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"cannot open video {self.path}: not a regular file (a FIFO, socket or device)")
        self._cap = cv2.VideoCapture(str(self.path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"cannot open video {self.path}: OpenCV cannot decode it")
        self._first = first
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else 25.0
        self.n_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.position = 0
        self._seek_to: int | None = None
        self._lock = threading.Lock()

    def seek(self, frame: int) -> None:
        """Continue from frame number ``frame`` (clipped to the file)."""
        with self._lock:
            self._seek_to = int(np.clip(frame, 0, max(0, self.n_frames - 1)))

    def _apply_seek(self) -> None:
        with self._lock:
            seek, self._seek_to = self._seek_to, None
        if seek is not None and self._cap is not None:
            self._first = None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, seek)
            self.position = seek

    def read(self) -> Frame | None:
        self._apply_seek()
        if self._cap is None:
            return None
        if self._first is not None:
            image, self._first = self._first, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                self._check_end()
                return None
        frame = Frame.read_now(image, self.name, index=self.position, video_time_s=self.position / self.fps)
        self.position += 1
        return frame

    def _check_end(self) -> None:
        """Called when OpenCV delivers no more frames: SourceError unless this is the end the file declares."""
        if self.n_frames and self.position < self.n_frames - 1:
            raise SourceError(f"{self.path}: the video stops at frame {self.position} of {self.n_frames} (the file "
                              f"is truncated or damaged; frames 0-{self.position - 1} were read)")

    def skip(self) -> bool:
        """Pass over the next frame without decoding it (``cv2.VideoCapture.grab``); False at the end.

        Raises
        ------
        SourceError
            When the file ends before the frame count it declares (truncated or damaged).
        """
        self._apply_seek()
        if self._cap is None:
            return False
        if self._first is not None:
            self._first = None
        elif not self._cap.grab():
            self._check_end()
            return False
        self.position += 1
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def parse_source(spec: str) -> tuple[str, object]:
    """Parse a query source as the command line and the app name it: ``random``, ``webcam`` / ``webcam:N``,
    ``screen`` / ``screen:x,y,w,h``, or a path to an image or video file.

    Returns
    -------
    (kind, argument) : ``("random", None)``, ``("webcam", N)``, ``("screen", (x, y, w, h) or None)``,
    ``("file", Path)``.

    Raises
    ------
    SourceError
        For a malformed camera number or screen region.
    """
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    if spec == "random":
        return "random", None
    if kind == "webcam" and (not arg or arg.isdigit()):
        return "webcam", int(arg or 0)
    if kind == "webcam":
        raise SourceError(f"a camera is webcam or webcam:N with N a device number, got {spec!r}")
    if kind == "screen":
        if not arg:
            return "screen", None
        try:
            region = tuple(int(v) for v in arg.replace(" ", "").split(","))
        except ValueError:
            region = ()
        if len(region) != 4 or region[2] <= 0 or region[3] <= 0:
            raise SourceError(f"a screen region is screen:x,y,width,height in pixels, got {spec!r}")
        return "screen", region
    return "file", Path(spec)


def random_source(engine, seed: int | None = None) -> RandomImageSource:
    """A ``RandomImageSource`` over the image files of ``engine``'s index (an ``objsearch.engine.Engine``), where they
    are now (``Engine.media_path``); video frames and items under a root the user did not choose are left out.

    Raises
    ------
    SourceError
        When no indexed image is left to draw from.
    """
    from objsearch.roots import UntrustedRootError

    c = engine.catalog
    paths, ids = [], []
    for media_id in c.media_id[c.media_frame_index < 0]:  # video frames are not image files
        try:
            path = engine.media_path(media_id)
        except UntrustedRootError:
            continue
        if path is not None:
            paths.append(path)
            ids.append(int(media_id))
    return RandomImageSource(paths, seed=seed, media_ids=ids)


def open_source(spec: str, *, engine=None, camera_opener: Callable | None = None,
                screen_grabber: Callable[[], np.ndarray] | None = None) -> FrameSource:
    """The frame source a spec names (``parse_source``): ``random`` (an image of ``engine``'s index, drawn per
    read), ``webcam[:N]``, ``screen[:x,y,w,h]``, an image file (an indexed one leaves its own objects out of its
    results) or a video file; a file whose suffix is not an image's is opened as a video. A new kind of source is
    added here and in ``parse_source``.

    Parameters
    ----------
    engine : the open ``Engine`` (needed by ``random``; tells an indexed image file by its path).
    camera_opener, screen_grabber : stand-ins for the camera and the screen grab (``WebcamSource``, ``ScreenSource``).

    Raises
    ------
    SourceError
        For a malformed spec, ``random`` without an index or with no image in it, no camera, a video OpenCV cannot
        open.
    """
    from objsearch.inputs import path_kind

    kind, arg = parse_source(spec)
    if kind == "random":
        if engine is None:
            raise SourceError("a random image needs an open index")
        return random_source(engine)
    if kind == "webcam":
        return WebcamSource(arg, opener=camera_opener)
    if kind == "screen":
        return ScreenSource(arg, grabber=screen_grabber)
    if path_kind(arg) == "image":
        return ImageFileSource(arg, engine.media_id_of(arg) if engine is not None else -1)
    return VideoFileSource(arg)


def open_camera(device: int):
    """``cv2.VideoCapture(device)``; a seam tests replace with a stand-in that yields real video frames."""
    return cv2.VideoCapture(int(device))


class WebcamSource(FrameSource):
    """A camera, by device index (0: the first).

    Parameters
    ----------
    device : camera index as OpenCV numbers them.
    opener : returns an object with OpenCV's ``isOpened()``, ``read()`` and ``release()``; default ``open_camera``.

    Raises
    ------
    SourceError
        From the constructor when no camera answers at ``device``; from ``read`` when the camera stops delivering.
    """

    def __init__(self, device: int = 0, opener: Callable | None = None):
        self.device = int(device)
        self.name = f"webcam {self.device}"
        self._cap = (opener or open_camera)(self.device)
        if self._cap is None or not self._cap.isOpened():
            if self._cap is not None:
                self._cap.release()
            raise SourceError(f"no camera at device index {self.device} (it is missing, busy, or not permitted)")
        self._count = 0

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceError(f"{self.name} is closed")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError(f"{self.name} stopped delivering frames")
        frame = Frame.read_now(image, self.name, index=self._count)
        self._count += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def mss_grabber(region: tuple[int, int, int, int] | None) -> Callable[[], np.ndarray]:
    """A function returning the screen region (left, top, width, height) pixels (None: the first monitor) as
    (H, W, 3) uint8 BGR, grabbed with the ``mss`` package. The mss handle is made on first use, in the calling
    thread (mss handles are per thread)."""
    state = {}

    def grab() -> np.ndarray:
        if "sct" not in state:
            import mss

            state["sct"] = (getattr(mss, "MSS", None) or mss.mss)()
        sct = state["sct"]
        if region is None:
            monitor = sct.monitors[1] if len(sct.monitors) > 1 else sct.monitors[0]
        else:
            left, top, width, height = (int(v) for v in region)
            monitor = {"left": left, "top": top, "width": width, "height": height}
        shot = np.asarray(sct.grab(monitor))
        return np.ascontiguousarray(shot[..., :3])

    return grab


class ScreenSource(FrameSource):
    """A region of the screen, grabbed continuously.

    Parameters
    ----------
    region : (left, top, width, height) pixels of the virtual screen; None: the first monitor.
    grabber : returns (H, W, 3) uint8 BGR; default ``mss_grabber(region)``.
    fps : at most this many grabs per second when captured live (a screen, unlike a camera, does not pace itself).

    Raises
    ------
    SourceError
        From ``read`` when the grab fails (no display, a region outside the screen).
    """

    def __init__(self, region: tuple[int, int, int, int] | None = None, grabber: Callable[[], np.ndarray] | None = None,
                 fps: float = 30.0):
        if region is not None and (len(region) != 4 or region[2] <= 0 or region[3] <= 0):
            raise SourceError(f"screen region must be (left, top, width, height) with a positive size, got {region}")
        self.region = region
        self.name = "screen" if region is None else "screen {}x{}+{}+{}".format(region[2], region[3], *region[:2])
        self._grab = grabber or mss_grabber(region)
        self.fps = float(fps)
        self._count = 0

    def read(self) -> Frame:
        try:
            image = self._grab()
        except Exception as exc:  # mss raises its own ScreenShotError, or OSError/KeyError without a display
            raise SourceError(f"screen grab failed: {exc or type(exc).__name__}") from None
        if image is None or image.ndim != 3 or image.size == 0:
            raise SourceError("screen grab failed: it returned no pixels")
        frame = Frame.read_now(image, self.name, index=self._count)
        self._count += 1
        return frame


# ------------------------------------------------------------------------------------------- live capture
class FrameSlot:
    """Holds the newest frame only. ``put`` replaces an unconsumed frame (counting it in ``dropped``) unless asked to
    wait; ``get`` waits for a frame. Thread-safe.

    ``generation`` counts the changes after which a frame in flight is stale (another source, pause, seek, other
    settings): ``advance`` bumps it and empties the slot, ``put(frame, generation=g)`` refuses a frame read under
    an older generation, ``take`` returns each frame with the generation it was put under, and whoever delivers a
    result made from it drops that result once ``generation`` moved on.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._frame_generation = 0
        self._closed = False
        self.dropped = 0
        self.generation = 0

    def put(self, frame: Frame, wait: bool = False, timeout: float | None = None,
            generation: int | None = None) -> bool:
        """Offer ``frame``; with ``wait``, block until the previous one was taken (no dropping) or ``timeout``
        seconds passed (then nothing is put and False returned). ``generation``: the generation the frame was read
        under (None: the current one); a stale frame is not put and False returned."""
        with self._cond:
            if wait and not self._cond.wait_for(lambda: self._frame is None or self._closed, timeout):
                return False
            if generation is not None and generation != self.generation:
                return False
            if self._frame is not None:
                self.dropped += 1
            self._frame, self._frame_generation = frame, self.generation
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None = None) -> tuple[Frame, int] | None:
        """(the newest frame, the generation it was put under), removed from the slot; None after ``timeout``
        seconds or when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return None if frame is None else (frame, self._frame_generation)

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, removed from the slot; None after ``timeout`` seconds or when closed."""
        item = self.take(timeout)
        return None if item is None else item[0]

    def clear(self) -> None:
        with self._cond:
            self._frame = None
            self._cond.notify_all()

    def advance(self) -> int:
        """Make every frame and result made so far stale: bump ``generation`` and empty the slot. Returns the new
        generation."""
        with self._cond:
            self.generation += 1
            self._frame = None
            self._cond.notify_all()
            return self.generation

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self.dropped = 0


class CaptureThread(threading.Thread):
    """Reads a continuous source into a ``FrameSlot`` until stopped or the stream ends.

    Parameters
    ----------
    source : a continuous FrameSource.
    slot : where frames go (the newest replaces a stale one).
    realtime : for video files, deliver frames at the file's frame rate (live playback, dropping what the consumer
        cannot keep up with); False: as fast as the consumer takes them, every frame (benchmarks, batch work).
        Other sources are always live; a screen is grabbed at most ``source.fps`` times a second.
    on_end : called (in this thread) when the stream ends.
    on_error : called (in this thread) with a SourceError's message when reading fails.
    """

    def __init__(self, source: FrameSource, slot: FrameSlot, *, realtime: bool = True,
                 on_end: Callable[[], None] | None = None, on_error: Callable[[str], None] | None = None):
        super().__init__(daemon=True, name=f"capture {source.name}")
        self.source, self.slot, self.realtime = source, slot, realtime
        self.on_end, self.on_error = on_end, on_error
        self._halt = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.n_read = 0

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) reading without releasing the source."""
        (self._running.clear if paused else self._running.set)()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self) -> None:
        self._halt.set()
        self._running.set()

    def run(self) -> None:
        is_file = isinstance(self.source, VideoFileSource)
        paced = self.realtime or not is_file
        fps = getattr(self.source, "fps", None)  # video files and the screen; a camera paces itself
        period = 1.0 / fps if paced and fps else 0.0
        next_due = time.perf_counter()
        while not self._halt.is_set():
            if not self._running.is_set():
                self._running.wait(0.1)
                if is_file and self.source._seek_to is not None:  # show the seeked frame while paused
                    self._read_one(wait=False)
                continue
            if not self._read_one(wait=is_file and not self.realtime):
                return
            if period:
                next_due += period
                delay = next_due - time.perf_counter()
                if delay > 0:
                    self._halt.wait(delay)
                else:
                    next_due = time.perf_counter()

    def _read_one(self, wait: bool) -> bool:
        generation = self.slot.generation  # a pause or seek from now on makes this frame stale
        try:
            frame = self.source.read()
        except SourceError as exc:
            if self.on_error:
                self.on_error(str(exc))
            return False
        if frame is None:
            if self.on_end:
                self.on_end()
            return False
        self.n_read += 1
        if not wait:
            self.slot.put(frame, generation=generation)
            return True
        while not self._halt.is_set():
            if self.slot.put(frame, wait=True, timeout=0.2, generation=generation):
                return True
            if self.slot.generation != generation:  # stale: dropped, go on reading
                return True
        return False
