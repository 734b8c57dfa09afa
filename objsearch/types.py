"""The core types that flow through every stage.

``Detections`` follows roboflow/supervision's type of the same name (parallel numpy arrays, mask-indexable,
``empty()``, ``concat()``, a ``data`` dict for extra per-object arrays) with a ``features`` array added. ``MediaRef``
names a media item (an image, or one frame of a video) and ``MediaRecord`` is one analysed media item as analysis
hands it to the catalog. ``Hits`` is what every vector store returns and ``SearchResult`` what a search returns: the
query's detections, their hits, and the records of the neighbours, turned into JSON only at the edge (``to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# the one table of media suffixes (lower case): what analysis indexes, what a query, the app and watch accept
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".pbm", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


# ------------------------------------------------------------------------------------------------ detections
@dataclass
class Detections:
    """Objects detected in one image.

    Attributes
    ----------
    xyxy : ndarray of shape (N, 4), float32
        Boxes ``[x1, y1, x2, y2]`` in pixels of the original image.
    confidence : ndarray of shape (N,), float32
        Detector confidence in [0, 1].
    class_id : ndarray of shape (N,), int64
        Class index into the detector's class names.
    features : ndarray of shape (N, D), float32, or None
        One raw feature vector per object (see ``objsearch.detector``).
    data : dict of str to ndarray of shape (N, ...)
        Extra per-object arrays (for example ``object_id`` and ``media_id`` of indexed objects).
    image_feature : ndarray of shape (F,), float32, or None
        One raw whole-image feature vector of the image these objects come from (see
        ``objsearch.pooling.image_blocks``), made by the same detector pass; kept by indexing (it describes the
        image, not the objects), dropped by ``concat`` (several images have no one image vector).

    Every array is this object's own copy: the caller's arrays are never kept, and a part made by indexing (a
    slice, a mask, integers) shares no memory with its source.

    Raises
    ------
    ValueError
        When the arrays' shapes disagree.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    features: np.ndarray | None = None
    data: dict[str, np.ndarray] = field(default_factory=dict)
    image_feature: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Every array is copied (np.array copies by default), even one already of the right dtype: a caller's array
        # is never kept, and an indexed part (a basic slice is a numpy view) never writes back into its source.
        xyxy = np.array(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (N, 4), got {xyxy.shape}")
        self.xyxy = xyxy
        n = len(self.xyxy)
        self.confidence = np.array(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.array(self.class_id, dtype=np.int64).reshape(-1)
        if len(self.confidence) != n or len(self.class_id) != n:
            raise ValueError(
                f"xyxy, confidence and class_id must have the same length, got "
                f"{n}, {len(self.confidence)} and {len(self.class_id)}"
            )
        if self.features is not None:
            self.features = np.array(self.features, dtype=np.float32)
            if self.features.ndim != 2 or len(self.features) != n:
                raise ValueError(f"features must have shape ({n}, D), got {self.features.shape}")
        data = {}
        for key, value in (self.data or {}).items():
            value = np.array(value)
            if len(value) != n:
                raise ValueError(f"data[{key!r}] must have length {n}, got {len(value)}")
            data[key] = value
        self.data = data
        if self.image_feature is not None:
            self.image_feature = np.array(self.image_feature, dtype=np.float32)
            if self.image_feature.ndim != 1:
                raise ValueError(f"image_feature must have shape (F,), got {self.image_feature.shape}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Select objects by boolean mask, integer array or slice; always returns ``Detections``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            class_id=self.class_id[index],
            features=None if self.features is None else self.features[index],
            data={k: v[index] for k, v in self.data.items()},
            image_feature=self.image_feature,
        )

    @classmethod
    def empty(cls, n_features: int | None = None) -> Detections:
        """No objects; ``features`` has shape (0, n_features) when ``n_features`` is given, else None."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            features=None if n_features is None else np.zeros((0, n_features), np.float32),
        )

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        """Join several sets; features (and each ``data`` key) are kept only when every part has them."""
        if not parts:
            return cls.empty()
        with_features = all(p.features is not None for p in parts)
        keys = set.intersection(*(set(p.data) for p in parts))
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            confidence=np.concatenate([p.confidence for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            features=np.concatenate([p.features for p in parts]) if with_features else None,
            data={k: np.concatenate([p.data[k] for p in parts]) for k in sorted(keys)},
        )


@dataclass
class StageTimes:
    """Milliseconds one detector call spent in each stage; ``Detector.__call__`` and ``detect_batch`` fill the one
    they are given.

    Attributes
    ----------
    preprocess : float
        Letterboxing and the transfer of the input to the device.
    inference : float
        The network's forward pass.
    nms : float
        Non-maximum suppression.
    features : float
        Pooling the objects' feature vectors (with the mirror pass, when asked for).
    image_feature : float
        Pooling the whole-image feature vector.
    """

    preprocess: float = 0.0
    inference: float = 0.0
    nms: float = 0.0
    features: float = 0.0
    image_feature: float = 0.0

    @property
    def detect(self) -> float:
        """Milliseconds until the boxes are known: ``preprocess + inference + nms``."""
        return self.preprocess + self.inference + self.nms


# ----------------------------------------------------------------------------------------------------- media
@dataclass(frozen=True)
class MediaRef:
    """One media item: an image file, or one frame of a video file.

    Attributes
    ----------
    path : str
        For an indexed item, relative to its root folder (``root``; POSIX separators; a file name that is not
        UTF-8 keeps its bytes as surrogate escapes, see ``os.fsdecode``); for a query, what the user gave.
    width, height : int
        Pixels of the decoded image or frame.
    media_id : int
        Stable id in the index; -1 when the item is not indexed.
    frame_index : int
        Frame number in the video (0-based); -1 for an image.
    timestamp_s : float
        Seconds from the start of the video; -1.0 for an image.
    file_size, file_mtime_ns : int
        Size in bytes and modification time (ns since the epoch) of the source file when it was analysed
        (``sync`` compares them); -1 when unknown.
    root : int
        For an indexed item, which of the index's root folders ``path`` is relative to (0: the first, the folder
        analyzed; ``objsearch add`` of a folder elsewhere adds one; see ``objsearch.roots``).
    """

    path: str
    width: int = 0
    height: int = 0
    media_id: int = -1
    frame_index: int = -1
    timestamp_s: float = -1.0
    file_size: int = -1
    file_mtime_ns: int = -1
    root: int = 0

    @property
    def is_video_frame(self) -> bool:
        return self.frame_index >= 0

    def display_name(self) -> str:
        """``path`` (non-printable characters escaped), with ``@ HH:MM:SS.s`` for a video frame."""
        name = printable(self.path)
        if self.is_video_frame:
            return f"{name} @ {format_timestamp(self.timestamp_s)}"
        return name


def printable(text: str) -> str:
    """``text`` with control characters, terminal escape sequences and undecodable bytes escaped (for printing a path
    read from an index or a file system)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogate escape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def format_timestamp(seconds: float) -> str:
    """``83.4`` -> ``00:01:23.4``."""
    seconds = max(0.0, float(seconds))
    tenths = int(round(seconds * 10))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    return f"{h:02d}:{m:02d}:{rest // 10:02d}.{rest % 10}"


@dataclass
class MediaRecord:
    """One analysed media item as analysis hands it to the catalog (and to its journal).

    ``detections`` carries ``features`` (N, D) float32; ``thumbnails`` holds N JPEG byte strings, one per object.
    """

    media: MediaRef
    detections: Detections
    thumbnails: list[bytes]

    def __post_init__(self) -> None:
        if len(self.thumbnails) != len(self.detections):
            raise ValueError(f"one thumbnail per object expected: {len(self.detections)} objects, "
                             f"{len(self.thumbnails)} thumbnails")


@dataclass(frozen=True)
class SkippedFile:
    """A file an analysis could not use, and why (one line): ``path`` relative to the index's root ``root`` (as a
    media item's), or as found when it is not in an index yet."""

    path: str
    reason: str
    root: int = 0


# ------------------------------------------------------------------------------------------------------ search
@dataclass
class Hits:
    """The fixed-shape answer of every vector store.

    distances : ndarray of shape (Q, k), float32, ascending Euclidean distances, ``inf`` where padded (a rerank,
        ``objsearch.rerank``, may move one neighbour of a row to its front with its own distance).
    ids : ndarray of shape (Q, k), int64, object ids, ``-1`` where padded.
    """

    distances: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        self.distances = np.asarray(self.distances, np.float32)
        self.ids = np.asarray(self.ids, np.int64)
        if self.distances.shape != self.ids.shape or self.ids.ndim != 2:
            raise ValueError(f"distances and ids must both have shape (Q, k), got {self.distances.shape} and "
                             f"{self.ids.shape}")

    @classmethod
    def empty(cls, q: int, k: int) -> Hits:
        return cls(np.full((q, k), np.inf, np.float32), np.full((q, k), -1, np.int64))


@dataclass(frozen=True)
class Moment:
    """Hits from one video, of one class, close in time, shown as one neighbour (its best frame).

    start_s, end_s : float, seconds from the start of the video of the first and last frame in the moment.
    frames : int, how many indexed frames of the video hit (each counted once).
    """

    start_s: float
    end_s: float
    frames: int


@dataclass
class Neighbor:
    """One neighbour of a query object: the indexed object, its media item and its distance; ``moment`` when it is
    the best frame of a group of hits from the same video (``objsearch.moments``)."""

    object_id: int
    media: MediaRef
    xyxy: np.ndarray
    class_id: int
    confidence: float
    distance: float
    moment: Moment | None = None


def _round(value: float, digits: int) -> float | None:
    """A JSON-safe rounded float (None for NaN or infinity: JSON has no such numbers)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


@dataclass
class SearchResult:
    """What a search returns: the query's objects, their hits and the neighbours' records.

    Attributes
    ----------
    query : MediaRef
        The query image or frame (``path`` as given; ``media_id`` when it is itself indexed).
    detections : Detections
        Objects found in the query, boxes in query pixels.
    hits : Hits
        (N, k) neighbours of each object.
    neighbors : list of list of Neighbor
        Per query object, its neighbours in ascending distance (padding left out).
    class_names : list of str
    timings_ms : dict of str to float
        Milliseconds per stage (``decode``, ``detect``, ``features``, ``search``, ``assemble``).
    notes : list of str
        Per query object, a note when the index cannot answer well (empty string otherwise).
    """

    query: MediaRef
    detections: Detections
    hits: Hits
    neighbors: list[list[Neighbor]]
    class_names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def label(self, class_id: int) -> str:
        class_id = int(class_id)
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)

    def object_ids(self) -> list[int]:
        """Every neighbour's object id, once, in order of appearance."""
        seen: dict[int, None] = {}
        for row in self.neighbors:
            for nb in row:
                seen.setdefault(nb.object_id, None)
        return list(seen)

    def to_dict(self) -> dict:
        """The ``query --json`` object: ``image``, ``width``, ``height``, ``timings_ms`` and ``objects`` with their
        ``neighbors`` (``object_id``, ``image_id``, ``path``, ``box``, ``class_id``, ``label``, ``confidence``,
        ``distance``, and ``frame_index`` / ``timestamp_s`` for video frames, ``root`` when the path is relative to
        another of the index's roots than the first, ``moment`` {``start_s``, ``end_s``, ``frames``} when hits of
        one video were grouped). Floats are rounded; ``total`` is the
        sum of the stages (a ``warmup`` pass, when one ran, is reported beside them, not in the total). Only finite
        numbers: JSON has no NaN."""
        timings = {k: v for k, v in self.timings_ms.items() if k != "total"}
        timings["total"] = sum(v for k, v in timings.items() if k != "warmup")
        objects = []
        for i in range(len(self.detections)):
            cid = int(self.detections.class_id[i])
            neighbors = []
            for nb in self.neighbors[i] if i < len(self.neighbors) else []:
                item = {
                    "object_id": int(nb.object_id),
                    "image_id": int(nb.media.media_id),
                    "path": nb.media.path,
                    **({"root": int(nb.media.root)} if nb.media.root else {}),
                    "box": [_round(v, 2) for v in nb.xyxy],
                    "class_id": int(nb.class_id),
                    "label": self.label(nb.class_id),
                    "confidence": _round(nb.confidence, 4),
                    "distance": _round(nb.distance, 5),
                }
                if nb.media.is_video_frame:
                    item["frame_index"] = int(nb.media.frame_index)
                    item["timestamp_s"] = _round(nb.media.timestamp_s, 3)
                if nb.moment is not None:
                    item["moment"] = {"start_s": _round(nb.moment.start_s, 3), "end_s": _round(nb.moment.end_s, 3),
                                      "frames": int(nb.moment.frames)}
                neighbors.append(item)
            obj = {
                "box": [_round(v, 2) for v in self.detections.xyxy[i]],
                "class_id": cid,
                "label": self.label(cid),
                "confidence": _round(self.detections.confidence[i], 4),
                "neighbors": neighbors,
            }
            if i < len(self.notes) and self.notes[i]:
                obj["note"] = self.notes[i]
            objects.append(obj)
        out = {"image": self.query.path, "width": int(self.query.width), "height": int(self.query.height)}
        if self.query.is_video_frame:
            out["frame"] = int(self.query.frame_index)
            out["timestamp_s"] = _round(self.query.timestamp_s, 4)
        out["timings_ms"] = {k: _round(v, 3) for k, v in timings.items()}
        out["objects"] = objects
        return out


# ---------------------------------------------------------------------------------------------- image search
@dataclass
class ImageNeighbor:
    """One neighbour of a whole-image query: the indexed media item (an image or a video frame) and its distance."""

    media: MediaRef
    distance: float


@dataclass
class ImageSearchResult:
    """What a whole-image search returns (``query --mode image``).

    Attributes
    ----------
    query : MediaRef
        The query image or frame (``path`` as given; ``media_id`` when it is itself indexed).
    neighbors : list of ImageNeighbor
        The nearest indexed media items, ascending distance (padding left out).
    hits : Hits
        (1, k) the raw store answer (ids are media ids).
    timings_ms : dict of str to float
        Milliseconds per stage (``decode``, ``detect`` (the detector pass), ``image_feature``, ``search``).
    """

    query: MediaRef
    neighbors: list[ImageNeighbor]
    hits: Hits
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``query --mode image --json`` object: ``image``, ``width``, ``height``, ``timings_ms`` and
        ``neighbors`` (``image_id``, ``path``, ``root`` when not the first root, ``distance``, and ``frame_index`` /
        ``timestamp_s`` for video frames). Only finite numbers (JSON has no NaN); ``total`` is the sum of the stages (``warmup`` beside it)."""
        timings = {k: v for k, v in self.timings_ms.items() if k != "total"}
        timings["total"] = sum(v for k, v in timings.items() if k != "warmup")
        neighbors = []
        for nb in self.neighbors:
            item = {"image_id": int(nb.media.media_id), "path": nb.media.path,
                    **({"root": int(nb.media.root)} if nb.media.root else {}), "distance": _round(nb.distance, 5)}
            if nb.media.is_video_frame:
                item["frame_index"] = int(nb.media.frame_index)
                item["timestamp_s"] = _round(nb.media.timestamp_s, 3)
            neighbors.append(item)
        out = {"image": self.query.path, "width": int(self.query.width), "height": int(self.query.height)}
        if self.query.is_video_frame:
            out["frame"] = int(self.query.frame_index)
            out["timestamp_s"] = _round(self.query.timestamp_s, 4)
        out["timings_ms"] = {k: _round(v, 3) for k, v in timings.items()}
        out["neighbors"] = neighbors
        return out
