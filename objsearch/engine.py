"""The facade the shells use: ``analyze`` a folder into an index file, and ``Searcher`` to query it.

Imports point one way: cli and gui import this module; this module imports the parts.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from objsearch.config import ConfigError, load_config
from objsearch.detections import Detections
from objsearch.errors import EmptyFolderError, ImageReadError, IndexFileError, WeightsMismatchError, WeightsNotFoundError
from objsearch.index import NeighborIndex
from objsearch.projection import make_projection
from objsearch.store import ImageRecord, IndexFile, Journal, write_index
from objsearch.weights import resolve_weights

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".pbm", ".pgm", ".ppm"}


def list_images(root: Path) -> list[Path]:
    """Files under ``root`` (recursively) whose suffix is an image type OpenCV reads, sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 BGR.

    Raises
    ------
    ImageReadError
        When the file is missing, empty, unreadable or not a decodable image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, np.uint8)
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    if data.size == 0:
        raise ImageReadError(f"cannot read image {path}: the file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot read image {path}: not a decodable image")
    return image


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


def load_detector(cfg: dict, weights: str | None = None):
    """A ``Detector`` for the resolved configuration; ``weights`` overrides ``cfg["weights"]``.

    Raises
    ------
    WeightsNotFoundError
        When no checkpoint can be found or loaded; the message lists where it looked.
    """
    from objsearch.detector import Detector  # torch is imported only here

    chosen, looked = resolve_weights(weights or cfg.get("weights"))
    try:
        return Detector(chosen, imgsz=cfg["imgsz"], conf=cfg["conf"], iou=cfg["iou"], max_det=cfg["max_det"],
                        device=cfg["device"], recipe=cfg["feature_recipe"])
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc} (looked in: {'; '.join(looked)})") from None


# ------------------------------------------------------------------------------------------------- analyze
@dataclass
class AnalyzeSummary:
    """What an analysis did: counts, time, and the skipped files with reasons."""

    output: Path
    n_images: int = 0
    n_objects: int = 0
    n_resumed: int = 0
    n_no_objects: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_not_images: int = 0
    seconds: float = 0.0


def _prefetch(paths: list[Path], depth: int = 4):
    """Decode images in a background thread, yielding (path, image or ImageReadError) in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        for p in paths:
            if stop.is_set():
                return
            try:
                item = read_image(p)
            except ImageReadError as exc:
                item = exc
            q.put((p, item))
        q.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            yield item
    finally:
        stop.set()


def analyze(
    folder: str | Path,
    output: str | Path,
    cfg: dict | None = None,
    *,
    weights: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
    detector=None,
) -> AnalyzeSummary:
    """Detect every object in the images under ``folder`` and write the index file ``output``.

    Each finished image goes to ``output + ".journal"`` first, so an interrupted run (even killed) resumes where it
    stopped when called again with the same settings; the index file itself is written atomically at the end.

    Parameters
    ----------
    folder : walked recursively; image paths are stored relative to it.
    output : the index file (``.h5``).
    cfg : resolved configuration (``objsearch.config.load_config``); None: the defaults.
    weights : detector checkpoint, overriding the configuration.
    overwrite : replace an existing complete index.
    progress : called after every image with (images done, images total, objects so far); with ``cfg["batch"]``
        > 1 the calls come in bursts, one per image after each forward pass.
    detector : an already loaded ``Detector`` (its settings must match ``cfg``).

    Raises
    ------
    EmptyFolderError
        When ``folder`` is missing or holds no image files.
    IndexFileError
        When ``output`` exists (and ``overwrite`` is False), or an unfinished journal used other settings.
    WeightsNotFoundError
        When no checkpoint can be found.
    """
    t0 = time.perf_counter()
    cfg = load_config() if cfg is None else cfg
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder} is not a folder")
    all_files = [p for p in folder.rglob("*") if p.is_file()]
    paths = sorted(p for p in all_files if p.suffix.lower() in IMAGE_SUFFIXES)
    output_abs = output.resolve()
    paths = [p for p in paths if p.resolve() != output_abs]
    not_images = [p for p in all_files if p.suffix.lower() not in IMAGE_SUFFIXES]
    for p in not_images:
        LOGGER.info("ignoring %s: not an image file type", p)
    if not paths:
        raise EmptyFolderError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if output.exists() and not overwrite:
        raise IndexFileError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    detector = detector or load_detector(cfg, weights)
    header = {
        "weights_sha256": detector.weights_sha256,
        "feature_recipe": detector.feature_recipe(),
        "conf": detector.conf, "iou": detector.iou, "max_det": detector.max_det,
        "thumb_size": int(cfg["thumb_size"]), "thumb_quality": int(cfg["thumb_quality"]),
        "folder": str(folder.resolve()),
    }
    journal = Journal(output.with_name(output.name + ".journal"), header)
    summary = AnalyzeSummary(output=output, n_not_images=len(not_images))
    done = {r.path for r in journal.records}
    summary.n_resumed = len(done)
    todo = [p for p in paths if p.relative_to(folder).as_posix() not in done]
    n_total = len(paths)
    n_done = len(done)
    n_objects = sum(len(r.xyxy) for r in journal.records)
    if done:
        LOGGER.info("resuming: %d of %d images already analysed", len(done), n_total)
    batch = max(1, int(cfg.get("batch", 1)))
    pending: list[tuple[str, np.ndarray]] = []  # decoded images of one letterbox shape, waiting for the detector

    def detect_pending() -> None:
        """Detect the pending images in one forward pass, then journal them in order, one progress call each."""
        nonlocal n_done, n_objects
        if not pending:
            return
        images = [image for _, image in pending]
        found = detector.detect_batch(images, auto=True) if len(images) > 1 else [detector(images[0])]
        todo_now = list(pending)
        pending.clear()
        for (rel, image), dets in zip(todo_now, found):
            thumbs = [make_thumbnail(image, b, cfg["thumb_size"], cfg["thumb_quality"]) for b in dets.xyxy]
            journal.append(ImageRecord(
                path=rel, width=image.shape[1], height=image.shape[0], xyxy=dets.xyxy,
                confidence=dets.confidence, class_id=dets.class_id, features=dets.features, thumbnails=thumbs,
            ))
            n_objects += len(dets)
            n_done += 1
            if progress:
                progress(n_done, n_total, n_objects)

    try:
        pending_shape = None
        for path, image in _prefetch(todo, depth=max(4, 2 * batch)):
            rel = path.relative_to(folder).as_posix()
            if isinstance(image, ImageReadError):
                detect_pending()  # keep the journal in folder order
                LOGGER.warning("skipping %s", image)
                journal.append(ImageRecord(path=rel, skipped=str(image)))
                n_done += 1
                if progress:
                    progress(n_done, n_total, n_objects)
                continue
            # only images of one letterbox shape share a forward pass: each gets the features it would get alone
            shape = detector.letterbox_shape(image.shape) if batch > 1 else None
            if pending and shape != pending_shape:
                detect_pending()
            pending.append((rel, image))
            pending_shape = shape
            if len(pending) >= batch:
                detect_pending()
        detect_pending()
    finally:
        journal.close()
    records = journal.records
    feats = [r.features for r in records if not r.skipped and r.features is not None and len(r.features)]
    all_features = np.concatenate(feats) if feats else np.zeros((0, detector.n_features), np.float32)
    projections = []
    for d in cfg["dims"]:
        proj = make_projection(cfg["projection"], d, cfg["seed"])
        projections.append(proj.fit(all_features if len(all_features) else np.zeros((1, detector.n_features))))
    write_index(
        output, records, projections=projections, n_features=detector.n_features,
        attrs={
            "weights_sha256": detector.weights_sha256,
            "weights_name": Path(str(detector.weights_path)).name,
            "weights_path": str(Path(str(detector.weights_path)).resolve()) if Path(str(detector.weights_path)).exists() else str(detector.weights_path),
            "feature_recipe": detector.feature_recipe(),
            "config": {**cfg, "weights": str(detector.weights_path)},
            "class_names": detector.names,
            "base_dir": str(folder.resolve()),
        },
    )
    os.remove(journal.path)
    summary.n_images = sum(1 for r in records if not r.skipped)
    summary.n_objects = sum(len(r.xyxy) for r in records if not r.skipped)
    summary.n_no_objects = sum(1 for r in records if not r.skipped and len(r.xyxy) == 0)
    summary.skipped = [(r.path, r.skipped) for r in records if r.skipped]
    summary.seconds = time.perf_counter() - t0
    return summary


# -------------------------------------------------------------------------------------------------- search
@dataclass
class QueryResult:
    """Objects found in a query image and their neighbours in the index.

    ``detections`` boxes are pixels of the query image; ``ids`` (N, k) int64 object ids (-1 padded) and
    ``distances`` (N, k) float32 (inf padded), ascending; ``timings_ms`` per stage.
    """

    image: str
    width: int
    height: int
    detections: Detections
    ids: np.ndarray
    distances: np.ndarray
    timings_ms: dict[str, float]


class Searcher:
    """Query an index with images.

    Parameters
    ----------
    index_path : an index file written by ``analyze``.
    weights : detector checkpoint; None: the path recorded in the index if it still exists with the same sha256,
        else the usual resolution order (``objsearch.weights.resolve_weights``).
    base_dir : where the indexed images now live (when the folder moved); None: the recorded one.
    dims : projection dimension to search; None: 32 when stored, else the smallest stored.
    device, conf : override the index's recorded settings.
    method : search method: exact ``auto`` (the fastest for this index, timed on open), ``kdtree``, ``faiss`` or
        ``numpy``, or approximate ``hnsw`` (see ``objsearch.index``).
    detector : an already loaded ``Detector``.

    Raises
    ------
    IndexFileError
        When the index cannot be opened (see ``IndexFile``).
    WeightsMismatchError
        When the detector's weights differ from those the index was built with.
    WeightsNotFoundError
        When no checkpoint can be found.
    """

    def __init__(self, index_path, *, weights=None, base_dir=None, dims=None, device=None, conf=None, detector=None,
                 method: str = "auto"):
        self.index = IndexFile(index_path)
        try:
            stored = self.index.attrs.get("config", {})
            cfg = load_config(None, **{k: v for k, v in stored.items() if k in ("imgsz", "iou", "max_det", "conf",
                                                                               "device", "feature_recipe", "k")})
            cfg["feature_recipe"] = self.index.attrs["feature_recipe"]["blocks"]
            cfg["imgsz"] = self.index.attrs["feature_recipe"].get("imgsz", cfg["imgsz"])
            if device is not None:
                cfg["device"] = device
            if conf is not None:
                cfg["conf"] = conf
            self.cfg = cfg
            if detector is None:
                if weights is None:
                    recorded = self.index.attrs.get("weights_path", "")
                    if recorded and Path(recorded).is_file():
                        from objsearch.detector import file_sha256

                        if file_sha256(recorded) == self.index.weights_sha256:
                            weights = recorded
                detector = load_detector(cfg, weights)
            if detector.weights_sha256 != self.index.weights_sha256:
                raise WeightsMismatchError(
                    f"{self.index.path} was built with weights {self.index.attrs.get('weights_name')} "
                    f"(sha256 {self.index.weights_sha256[:12]}…), but the detector uses "
                    f"{Path(str(detector.weights_path)).name} (sha256 {detector.weights_sha256[:12]}…); "
                    f"pass the matching --weights"
                )
            stored_recipe = self.index.attrs["feature_recipe"]
            made = detector.feature_recipe()
            if (made["n_features"], made["version"]) != (stored_recipe.get("n_features"), stored_recipe.get("version")):
                raise IndexFileError(
                    f"{self.index.path} holds features of recipe version {stored_recipe.get('version', 1)} "
                    f"({stored_recipe.get('n_features')}-d); this objsearch makes version {made['version']} "
                    f"({made['n_features']}-d): analyze the images again"
                )
            self.detector = detector
            self.dims = int(dims) if dims is not None else (32 if 32 in self.index.dims else self.index.dims[0])
            self.base_dir = Path(base_dir) if base_dir is not None else Path(self.index.attrs.get("base_dir", "."))
            self.method = method
            self._projection = {}
            self._nn = {}
            self._path_to_image = {p: i for i, p in enumerate(self.index.image_path)}
            self.neighbors(self.dims)
        except Exception:
            self.index.close()
            raise

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def neighbors(self, dims: int) -> NeighborIndex:
        """The KD-tree search for one stored dimension (built once, on first use)."""
        if dims not in self._nn:
            self._projection[dims] = self.index.projection(dims)
            try:
                self._nn[dims] = NeighborIndex(self.index.vectors(dims), self.index.class_id, self.index.image_id,
                                               method=self.method)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return self._nn[dims]

    def image_id_of(self, path: str | Path) -> int:
        """Row of ``path`` in the index's images (resolved against the base directory), or -1."""
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.base_dir.resolve()).as_posix()
        except ValueError:
            return -1
        return self._path_to_image.get(rel, -1)

    def image_path(self, image_id: int) -> Path:
        """Where an indexed image lives now (base directory / stored relative path)."""
        return self.base_dir / self.index.image_path[int(image_id)]

    def search(self, image: np.ndarray, k: int = 16, *, same_class: bool = False, exclude_image_id: int = -1,
               dims: int | None = None, name: str = "", timings: dict | None = None) -> QueryResult:
        """Detect the objects of ``image`` (H, W, 3) uint8 BGR and find each one's k nearest indexed objects.

        ``exclude_image_id`` leaves that indexed image's objects out (-1: none). ``timings`` seeds the stage times
        (e.g. with ``decode``).
        """
        dims = self.dims if dims is None else int(dims)
        nn = self.neighbors(dims)
        timings = dict(timings or {})
        dets = self.detector(image)
        t = self.detector.times.ms
        timings["detect"] = t["preprocess"] + t["inference"] + t["nms"]
        t0 = time.perf_counter()
        vectors = self._projection[dims].transform(dets.features)
        t1 = time.perf_counter()
        timings["features"] = t["features"] + (t1 - t0) * 1e3
        distances, ids = nn.search(vectors, k, class_id=dets.class_id if same_class else None,
                                   exclude_image_id=exclude_image_id if exclude_image_id >= 0 else None)
        timings["search"] = (time.perf_counter() - t1) * 1e3
        return QueryResult(image=name, width=image.shape[1], height=image.shape[0], detections=dets, ids=ids,
                           distances=distances, timings_ms=timings)

    def search_file(self, path: str | Path, k: int = 16, *, same_class: bool = False, exclude_self: bool = True,
                    dims: int | None = None) -> QueryResult:
        """``search`` on an image file; when the file is one of the indexed images and ``exclude_self``, its own
        objects are left out.

        Raises
        ------
        ImageReadError
            When the file cannot be read as an image.
        """
        t0 = time.perf_counter()
        image = read_image(path)
        decode = (time.perf_counter() - t0) * 1e3
        exclude = self.image_id_of(path) if exclude_self else -1
        result = self.search(image, k, same_class=same_class, exclude_image_id=exclude, dims=dims, name=str(path),
                             timings={"decode": decode})
        return result

    def to_json(self, result: QueryResult) -> dict:
        """The ``query --json`` object: image, width, height, timings_ms, objects with their neighbours."""
        t0 = time.perf_counter()
        names = self.class_names
        objects = []
        for i in range(len(result.detections)):
            cid = int(result.detections.class_id[i])
            neighbors = []
            for oid, dist in zip(result.ids[i], result.distances[i]):
                if oid < 0:
                    continue
                ncid = int(self.index.class_id[oid])
                neighbors.append({
                    "object_id": int(oid),
                    "path": self.index.image_path[int(self.index.image_id[oid])],
                    "box": [round(float(v), 2) for v in self.index.xyxy[oid]],
                    "class_id": ncid,
                    "label": names[ncid] if ncid < len(names) else str(ncid),
                    "confidence": round(float(self.index.confidence[oid]), 4),
                    "distance": round(float(dist), 5),
                })
            objects.append({
                "box": [round(float(v), 2) for v in result.detections.xyxy[i]],
                "class_id": cid,
                "label": names[cid] if cid < len(names) else str(cid),
                "confidence": round(float(result.detections.confidence[i]), 4),
                "neighbors": neighbors,
            })
        timings = dict(result.timings_ms)
        timings["assemble"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return {
            "image": result.image, "width": result.width, "height": result.height,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "objects": objects,
        }

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
