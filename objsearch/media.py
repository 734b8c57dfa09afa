"""Media files: listing a folder's images (and videos), decoding an image safely, and object thumbnails.

The only module that decodes or encodes images with OpenCV for the library (the render module draws pictures).
Decoding is bounded: a file must be a regular file (a FIFO or a device would block for ever), its header's pixel
count must stay under ``max_pixels`` before anything is decoded (a 69-byte PNG can declare 65000 x 65000 pixels), and
every decoder error becomes an ``ImageReadError`` with a one-line reason.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from objsearch.errors import ImageReadError, VideoReadError
from objsearch.types import IMAGE_SUFFIXES, VIDEO_SUFFIXES, SkippedFile

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: a 30000 x 30000 PNG bomb took 44 s and 5.4 GB per decode
MAX_THUMBNAIL_BYTES = 4 << 20
MAX_THUMBNAIL_SIDE = 1024


@dataclass
class Listing:
    """What a folder walk found.

    images : image files, sorted by path. videos : video files, sorted. skipped : entries that cannot be used
    (unreadable folders, dangling links, FIFOs, devices), each with its reason. n_other : regular files of other types.
    """

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    n_other: int = 0


def list_media(paths, *, videos: bool = False) -> Listing:
    """Walk files and folders (recursively, symbolic links to files followed, not to folders) for media files.

    Parameters
    ----------
    paths : a path or an iterable of paths (files or folders).
    videos : also collect video files (``VIDEO_SUFFIXES``); otherwise they count as other files.

    Returns
    -------
    Listing
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = Listing()

    def consider(p: Path) -> None:
        try:
            st = p.stat()
        except FileNotFoundError:
            out.skipped.append(SkippedFile(str(p), "dangling link or vanished file"))
            return
        except OSError as exc:
            out.skipped.append(SkippedFile(str(p), f"cannot read: {exc.strerror}"))
            return
        suffix = p.suffix.lower()
        wanted = suffix in IMAGE_SUFFIXES or (videos and suffix in VIDEO_SUFFIXES)
        if not stat.S_ISREG(st.st_mode):
            if wanted:
                kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if (
                    stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "not a regular file"
                what = "a video file" if suffix in VIDEO_SUFFIXES else "an image file"
                out.skipped.append(SkippedFile(str(p), f"{kind}, not {what}"))
            else:
                out.n_other += 1
            return
        if suffix in IMAGE_SUFFIXES:
            out.images.append(p)
        elif videos and suffix in VIDEO_SUFFIXES:
            out.videos.append(p)
        else:
            out.n_other += 1

    def walk(folder: Path) -> None:
        def onerror(exc: OSError) -> None:
            out.skipped.append(SkippedFile(str(exc.filename), f"cannot list folder: {exc.strerror}"))

        for root, dirs, files in os.walk(folder, onerror=onerror):
            dirs.sort()
            for name in files:
                consider(Path(root) / name)
            for name in dirs:  # os.walk does not descend into links to folders; they are not files either
                if os.path.islink(os.path.join(root, name)):
                    out.n_other += 1

    for p in paths:
        p = Path(p)
        if p.is_dir():
            walk(p)
        elif p.exists() or p.is_symlink():
            consider(p)
        else:
            out.skipped.append(SkippedFile(str(p), "no such file or folder"))
    out.images.sort()
    out.videos.sort()
    return out


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted by path (see ``list_media``)."""
    return list_media(root).images


def _header_size(data: bytes) -> tuple[int, int] | int | None:
    """(width, height) from the image header without decoding the pixels (Pillow reads only the header); the pixel
    count alone (an int) when it exceeds Pillow's own decompression-bomb limit; None when Pillow does not know the
    format."""
    import io
    import re
    import sys

    from PIL import Image, UnidentifiedImageError

    # ultralytics replaces PIL.Image.open with a wrapper that tries to pip-install a HEIF plugin whenever Pillow
    # cannot identify a file; use the original it keeps
    patches = sys.modules.get("ultralytics.utils.patches")
    image_open = getattr(patches, "_image_open", None) or Image.open
    try:
        with image_open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:  # more than twice Pillow's own limit: the count it names
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def decode_image(data: bytes | np.ndarray, name: str = "image", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 BGR.

    Raises
    ------
    ImageReadError
        When the data is empty, not a decodable image, or declares more than ``max_pixels`` pixels (checked from
        the header before decoding).
    """
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise ImageReadError(f"cannot read image {name}: the file is empty")
    size = _header_size(buf.tobytes()[:1 << 20] if buf.size > (1 << 20) else buf.tobytes())
    if size is None and buf.size > (1 << 20):
        size = _header_size(buf.tobytes())
    if isinstance(size, int) and size > max_pixels:
        raise ImageReadError(f"cannot read image {name}: its header declares {size / 1e6:.0f} MP, more than the "
                             f"limit of {max_pixels / 1e6:.0f} MP (max_pixels)")
    if isinstance(size, tuple) and size[0] * size[1] > max_pixels:
        raise ImageReadError(f"cannot read image {name}: {size[0]} x {size[1]} pixels is more than the limit of "
                             f"{max_pixels / 1e6:.0f} MP (max_pixels)")
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"cannot read image {name}: the decoder failed ({reason})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot read image {name}: not a decodable image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageReadError(f"cannot read image {name}: {image.shape[1]} x {image.shape[0]} pixels is more than the "
                             f"limit of {max_pixels / 1e6:.0f} MP (max_pixels)")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def _regular_file(path: Path, kind: str, error: type[ImageReadError]) -> os.stat_result:
    """``os.stat(path)`` of a regular file (never opens a folder, FIFO, socket or device).

    Raises
    ------
    ImageReadError
        ``error`` (ImageReadError or its subclass VideoReadError) naming ``kind`` when ``path`` is missing or
        unreadable, a folder, or not a regular file.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"cannot read {kind} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"cannot read {kind} {path}: it is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"cannot read {kind} {path}: not a regular file (a FIFO, socket or device)")
    return st


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 BGR.

    Only regular files are opened (a FIFO would block for ever); see ``decode_image`` for the pixel limit.

    Raises
    ------
    ImageReadError
        When the file is missing, not a regular file, empty, unreadable, too large or not a decodable image.
    """
    path = Path(path)
    st = _regular_file(path, "image", ImageReadError)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
                raise ImageReadError(f"cannot read image {path}: not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read()
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror}") from None
    return decode_image(data, str(path), max_pixels=max_pixels)


def make_thumbnail(image: np.ndarray, xyxy: np.ndarray, size: int = 128, quality: int = 85) -> bytes:
    """JPEG bytes of the crop ``xyxy`` (4,) pixels of ``image`` (H, W, 3) uint8 BGR, longest side ``size`` px."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = np.asarray(xyxy, np.float64)
    x1, y1 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(x2), x1 + 1, w)), int(np.clip(np.ceil(y2), y1 + 1, h))
    crop = image[y1:y2, x1:x2]
    scale = size / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.tobytes()


def decode_thumbnail(data: bytes) -> np.ndarray | None:
    """A stored thumbnail (JPEG bytes) as (h, w, 3) uint8 BGR; None when it is empty, too large or not decodable (a
    thumbnail read from an index is data: one that declares more than ``MAX_THUMBNAIL_SIDE`` pixels a side is not
    decoded)."""
    if not data or len(data) > MAX_THUMBNAIL_BYTES:
        return None
    size = _header_size(bytes(data))
    if not isinstance(size, tuple) or max(size) > MAX_THUMBNAIL_SIDE:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


# ----------------------------------------------------------------------------------------------- image URLs
def fetch_image(url: str, *, max_bytes: int, timeout_s: float, allow_private: bool = False) -> bytes:
    """The body of an http(s) image ``url`` (to decode with ``decode_image``), fetched safely: the one fetcher of
    ``objsearch serve``, ``objsearch.fetch.fetch_image_url`` (every resolved address checked and the checked one
    connected to, loopback/private/link-local/reserved refused unless ``allow_private``, redirects checked again,
    ``max_bytes`` enforced while streaming, ``timeout_s`` for the whole fetch, an ``image/*`` answer only).

    Raises
    ------
    UrlFetchError
        (exit 2) With a one-line reason for every refusal and failure.
    """
    from objsearch.fetch import fetch_image_url

    return fetch_image_url(url, allow_private=allow_private, timeout_s=timeout_s, max_bytes=max_bytes)[0]


# ----------------------------------------------------------------------------------------------- video files
@dataclass(frozen=True)
class VideoInfo:
    """What a video file's container declares: ``fps`` (frames per second; 25.0 when it declares none),
    ``n_frames`` (0 when unknown), ``width`` and ``height`` in pixels."""

    fps: float
    n_frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class VideoFrame:
    """One decoded frame: ``index`` (0-based frame number in the file), ``timestamp_s`` (``index / fps``, seconds
    from the start) and ``image`` (H, W, 3) uint8 BGR."""

    index: int
    timestamp_s: float
    image: np.ndarray


def frame_sampled(index: int, fps: float, *, sample_fps: float | None = 1.0, stride: int | None = None) -> bool:
    """Whether frame ``index`` of a video at ``fps`` is one of the frames sampled for the index.

    With ``stride`` N, every N-th frame (0, N, 2N, ...). Otherwise ``sample_fps`` frames per second: the first frame
    of each 1/sample_fps-second period (frame i is taken when ``floor(i * sample_fps / fps)`` moves on), so the
    choice is a function of the frame number alone (a resumed job continues with the same frames) and never more
    than every frame.
    """
    index = int(index)
    if stride is not None and int(stride) > 0:
        return index % int(stride) == 0
    rate = float(sample_fps) / float(fps)
    if index == 0 or rate >= 1.0:
        return True
    return int(np.floor(index * rate + 1e-9)) > int(np.floor((index - 1) * rate + 1e-9))


def _open_video(path: Path, max_pixels: int):
    """(cv2.VideoCapture, VideoInfo) of a regular video file. Raises VideoReadError."""
    st = _regular_file(path, "video", VideoReadError)
    if st.st_size == 0:
        raise VideoReadError(f"cannot read video {path}: the file is empty")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"cannot read video {path}: not a video OpenCV can decode")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if fps and np.isfinite(fps) and 0 < fps <= 1000 else 25.0
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    n = int(n) if n and np.isfinite(n) and n > 0 else 0
    info = VideoInfo(fps, n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
    if info.width * info.height > max_pixels:
        cap.release()
        raise VideoReadError(f"cannot read video {path}: {info.width} x {info.height} pixels a frame is more than the "
                             f"limit of {max_pixels / 1e6:.0f} MP (max_pixels)")
    return cap, info


def video_info(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """What the video file declares (frame rate, frame count, size), without decoding frames.

    Raises
    ------
    VideoReadError
        When the file is missing, not a regular file, empty, too large a frame or not a video OpenCV can open.
    """
    cap, info = _open_video(Path(path), max_pixels)
    cap.release()
    return info


def read_video_frames(path: str | Path, *, sample_fps: float | None = 1.0, stride: int | None = None,
                      start_frame: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[VideoFrame]:
    """Decode the sampled frames of a video file (see ``frame_sampled``) from frame ``start_frame`` on.

    Frames that are not sampled are passed over with ``cv2.VideoCapture.grab`` (demuxed and decoded, not converted
    to BGR), so sampling 1 frame a second of a 25 fps video costs far less than decoding it all.

    Yields
    ------
    VideoFrame, in frame order.

    Raises
    ------
    VideoReadError
        When the file cannot be opened (before any frame), or, after the frames it could read, when it ends before
        the frame count its container declares (``frames_read`` says how many were delivered).
    """
    path = Path(path)
    cap, info = _open_video(path, max_pixels)
    try:
        index, n_read, last = 0, 0, -1
        while True:
            want = index >= start_frame and frame_sampled(index, info.fps, sample_fps=sample_fps, stride=stride)
            ok = cap.grab()
            if not ok:
                break
            last = index
            if want:
                ok, image = cap.retrieve()
                if not ok or image is None or image.size == 0:
                    break
                if image.ndim == 2:
                    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
                n_read += 1
                yield VideoFrame(index, index / info.fps, image)
            index += 1
    finally:
        cap.release()
    if last < 0:
        raise VideoReadError(f"cannot read video {path}: no frame could be decoded", n_read)
    if info.n_frames and last + 1 < info.n_frames - max(2, info.n_frames // 100):
        raise VideoReadError(f"video {path} stops at frame {last + 1} of the {info.n_frames} it declares (truncated "
                             f"or damaged); the {n_read} sampled frames before were kept", n_read)


def read_video_frame(path: str | Path, frame_index: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Frame ``frame_index`` of a video file as (H, W, 3) uint8 BGR (the frames before it are passed over with
    ``grab``, so the frame is exactly the one analysis decoded).

    Raises
    ------
    VideoReadError
        When the file cannot be read or has no such frame.
    """
    frame_index = int(frame_index)
    if frame_index < 0:
        raise VideoReadError(f"cannot read frame {frame_index} of video {path}: frame numbers start at 0")
    try:
        for frame in read_video_frames(path, stride=max(frame_index, 1), start_frame=frame_index,
                                       max_pixels=max_pixels):
            if frame.index == frame_index:
                return frame.image
            break
    except VideoReadError as exc:
        if exc.frames_read == 0 and "stops at frame" not in str(exc):
            raise
    raise VideoReadError(f"cannot read frame {frame_index} of video {path}: the video has no such frame")


def read_media(path: str | Path, frame_index: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of an indexed media item as (H, W, 3) uint8 BGR: the image file at ``path`` when ``frame_index`` is
    negative (-1: a still image), else frame ``frame_index`` of the video at ``path`` (the very frame analysis saw).
    The one reader of indexed pixels: search, sync's backfills, duplicates and the web page all call it.

    Raises
    ------
    ImageReadError
        When it cannot be read or is over ``max_pixels`` (``VideoReadError``, a subclass, for a video or a frame it
        no longer has).
    """
    if frame_index < 0:
        return read_image(path, max_pixels=max_pixels)
    return read_video_frame(path, frame_index, max_pixels=max_pixels)


class VideoWriter:
    """An H.264 MP4 file written frame by frame with PyAV (browsers play it; ``+faststart`` puts the index first).

    Parameters
    ----------
    path : str or Path, the ``.mp4`` file to write.
    fps : float, frames per second.
    crf : int, x264 quality (lower is better and larger; 23 is x264's default).
    preset : str, x264 speed preset (``veryfast``: on walking.mp4 faster and smaller than ``fast`` or ``medium``).

    Frames are (H, W, 3) uint8 BGR; the size is set by the first frame (an odd width or height loses its last
    column or row: yuv420p needs even sizes). Use as a context manager; ``close`` flushes the encoder.

    Raises
    ------
    ObjsearchError
        When the file cannot be created.
    """

    def __init__(self, path: str | Path, fps: float, *, crf: int = 23, preset: str = "veryfast"):
        import fractions

        import av

        from objsearch.errors import ObjsearchError

        self.path = Path(path)
        try:
            self._container = av.open(str(self.path), mode="w", options={"movflags": "+faststart"})
        except (OSError, av.error.FFmpegError) as exc:
            raise ObjsearchError(f"cannot write video {self.path}: {exc}") from None
        self._rate = fractions.Fraction(max(float(fps), 1.0)).limit_denominator(1001)
        self._options = {"crf": str(int(crf)), "preset": preset}
        self._stream = None
        self._av = av

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 BGR frame."""
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._rate, options=self._options)
            self._stream.width, self._stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
            self._stream.pix_fmt = "yuv420p"
        frame = frame[:self._stream.height, :self._stream.width]
        video_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
