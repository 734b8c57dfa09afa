"""The facade the shells use: ``Engine`` opens an index and searches it; the jobs (analyze, add, remove, sync,
compact) live in ``objsearch.analysis``, and the detector and settings an index was built with are found again by
``objsearch.provenance``.

Imports point one way: cli, gui and web import this module; this module imports the parts. ``Engine`` is
re-entrant: confidence, k, dimensions and timings are per call, so threads (the app's live search, a web server's
workers) may search at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from objsearch.config import ConfigError, load_config
from objsearch.errors import ImageReadError, IndexFileError
from objsearch.media import DEFAULT_MAX_PIXELS, read_image, read_media
from objsearch.moments import DEFAULT_GROUP_S, group_neighbors
from objsearch.provenance import detector_for_index, image_vectors_stale, index_config
from objsearch.roots import Roots, UntrustedRootError
from objsearch.types import (Detections, Hits, ImageNeighbor, ImageSearchResult, MediaRef, Neighbor, SearchResult,
                             StageTimes, printable)

LOGGER = logging.getLogger(__name__)

# the image sizes a server or the app warms besides the index's own (``Engine.warmup``): a 4:3 camera or photo either
# way up and 16:9 video (letterboxed at 640: 480x640, 640x480 and 384x640 network inputs)
STANDARD_SHAPES = ((480, 640, 3), (640, 480, 3), (720, 1280, 3))


class Engine:
    """Search an index with images.

    Parameters
    ----------
    index_path : an index file (format 2, or format 1 read-only).
    weights : detector checkpoint; None: the first trusted checkpoint whose sha256 matches the index's
        (see ``detector_for_index``).
    base_dir : where the indexed images live now, when they moved: a folder (moves the first root, the folder
        analyzed) or a list of ``--base-dir`` values (``NEW``, ``OLD=NEW`` or ``N=NEW``; see
        ``objsearch.roots.parse_base_dirs``). None: the recorded roots. Media files are read only under roots the
        user chose (recorded by this user, or named here): see ``objsearch.roots``.
    dims : projection dimension to search; None: 32 when stored, else the smallest stored.
    device, conf : override the index's recorded settings.
    runtime : what runs the detector network (``torch``, ``onnx``, ``openvino``, ``auto``); None: the
        configuration's, or the given ``detector``'s. The index does not record it: every runtime gives the same
        features.
    backend : vector store, by name (``objsearch.vectors.registry``) or as a ``BackendChoice`` (name and options);
        None: the one stored with the index, else ``auto``. ``auto`` (the fastest exact in-memory method, timed on
        open; on a CUDA device ``torch`` for a large index, see ``objsearch.vectors.resolve_backend``), ``kdtree``,
        ``faiss``, ``numpy`` (exact), ``hnsw`` (approximate; its graph is kept beside the index), ``torch`` (exact,
        the vectors in torch tensors on ``device``: a GPU's memory with ``--device 0``), ``milvus`` (a Milvus
        collection, brought in step with the index when opened and on ``refresh``; see ``objsearch.vectors.milvus``).
    backend_options : the named backend's options dataclass (``MilvusOptions``: uri, collection, index type;
        ``HnswParams``; ...); None: its defaults.
    detector : an already loaded ``Detector`` (reused when its weights match the index's).

    Raises
    ------
    IndexFileError
        When the index cannot be opened (see ``objsearch.catalog.Catalog``).
    WeightsMismatchError
        When no permitted weights match the index's.
    WeightsNotFoundError
        When no checkpoint can be found.
    ConfigError
        For an unknown backend.
    VectorStoreError
        When the ``milvus`` backend cannot be used (not installed, unreachable, a collection of another index).
    """

    def __init__(self, index_path, *, weights=None, base_dir=None, dims=None, device=None, conf=None,
                 backend=None, backend_options=None, detector=None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 runtime=None):
        from objsearch.catalog import Catalog

        self.catalog = Catalog(index_path)
        try:
            if self.catalog.state != "ready":
                raise IndexFileError(f"{self.catalog.path} is an unfinished analysis; run the same `objsearch analyze` "
                                     f"again to finish it")
            cfg = index_config(self.catalog)
            if device is not None:
                cfg["device"] = device
            if conf is not None:
                cfg["conf"] = conf
            if runtime is None and detector is not None:
                runtime = getattr(detector, "runtime", None)
            cfg = load_config(None, **{k: cfg[k] for k in ("conf", "device", "imgsz")},
                              feature_recipe=cfg["feature_recipe"], iou=cfg["iou"], max_det=cfg["max_det"],
                              runtime=runtime)
            self.cfg = cfg
            self.detector = detector_for_index(self.catalog, cfg, weights=weights, detector=detector)
            from objsearch.vectors.registry import choose_for

            try:
                self.backend_choice = choose_for(self.catalog, backend, backend_options)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self.backend = self.backend_choice.name
            self.dims = int(dims) if dims is not None else (32 if 32 in self.catalog.dims else self.catalog.dims[0])
            self.roots = Roots.of(self.catalog, base_dir)
            self._warned_untrusted: set[int] = set()
            self.max_pixels = int(max_pixels)
            self._lock = threading.RLock()
            self._stores: dict[int, object] = {}
            self._projections: dict[int, object] = {}
            self._image_stores: dict[int, object] = {}
            self._rerank_vectors: np.ndarray | None = None  # (N, rerank_dims) aligned with catalog.object_id
            self._warm_stores: weakref.WeakSet = weakref.WeakSet()  # the stores a warm-up searched once
            self._load_lookups()
            self.store(self.dims)
        except BaseException:
            self.catalog.close()
            raise

    # ----------------------------------------------------------------------------------------------- the index
    @property
    def class_names(self) -> list[str]:
        return self.catalog.class_names

    @property
    def conf(self) -> float:
        """The index's detection threshold (each search may pass its own)."""
        return float(self.cfg["conf"])

    @property
    def base_dir(self) -> Path:
        """Where the first root (the folder analyzed) is now."""
        return self.roots.folders[0]

    @base_dir.setter
    def base_dir(self, folder) -> None:
        """The first root is at ``folder`` now, as the user said (the app's Image folder…)."""
        self.roots.move(0, Path(folder))

    def _load_lookups(self) -> None:
        c = self.catalog
        self._path_to_media = {(int(r), p): int(i) for r, p, i, f in zip(c.media_root, c.media_path, c.media_id,
                                                                          c.media_frame_index) if f < 0}
        self._has_frames = bool(np.any(c.media_frame_index >= 0))
        self._class_counts = np.bincount(c.class_id, minlength=len(c.class_names)) if len(c.class_id) else \
            np.zeros(len(c.class_names), np.int64)

    def store(self, dims: int):
        """The vector store of one stored dimension (built once, on first use)."""
        dims = int(dims)
        with self._lock:
            if dims not in self._stores:
                if dims not in self.catalog.dims:
                    raise ConfigError(f"--dims {dims}: {self.catalog.path} holds projections to "
                                      f"{' or '.join(map(str, self.catalog.dims))} dims, not {dims}")
                from objsearch.vectors.registry import open_catalog_store

                c = self.catalog
                self._projections[dims] = c.projection(dims)
                try:
                    self._stores[dims] = open_catalog_store(self.backend_choice, c, dims, device=self.cfg["device"],
                                                            files=f"{c.path}.")
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
            return self._stores[dims]

    def image_store(self, dims: int):
        """The vector store of the whole-image vectors at one stored dimension (ids are media ids; built once, on
        first use, with the engine's in-memory backend).

        Raises
        ------
        IndexFileError
            When the index has no whole-image vectors (made before image search: run ``objsearch sync``), holds
            ones of another image recipe, or not at ``dims``.
        ConfigError
            For the ``milvus`` backend, which does not hold whole-image vectors.
        """
        dims = int(dims)
        with self._lock:
            if dims not in self._image_stores:
                from objsearch.vectors.registry import array_backends, cache_path, get_backend, open_array_store

                c = self.catalog
                c.require_image_vectors()
                if image_vectors_stale(c, self.detector):
                    raise IndexFileError(f"{c.path} holds whole-image vectors of another image recipe; run "
                                         f"`objsearch sync -i {c.path}` to make them again")
                backend = get_backend(self.backend)
                if backend.from_arrays is None:
                    names = array_backends()
                    raise ConfigError(f"the {self.backend} backend does not support --mode image (whole-image vectors "
                                      f"are searched in memory): use --backend {', '.join(names[:-1])} or {names[-1]}")
                vectors = c.image_vectors(dims)
                try:
                    self._image_stores[dims] = open_array_store(
                        self.backend_choice, c.media_id, vectors, np.zeros(len(c.media_id), np.int64), c.media_id,
                        device=self.cfg["device"], cache=cache_path(backend, f"{c.path}.image-", dims))
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
            return self._image_stores[dims]

    @property
    def method(self) -> str:
        """The search method in use at the current dimension (``auto`` resolved)."""
        return self.store(self.dims).backend

    def refresh(self) -> bool:
        """Pick up what another process committed to the index since it was opened (add, remove, sync): the vector
        stores are updated by difference, not rebuilt. Returns whether anything changed.

        Raises
        ------
        IndexFileError
            When the index was replaced by something that cannot be opened.
        """
        from objsearch.catalog import Catalog

        with self._lock:
            if not self.catalog.changed():
                return False
            old = self.catalog
            new = Catalog(old.path)
            if new.uuid != old.uuid or new.dims != old.dims:
                new.close()
                raise IndexFileError(f"{old.path} was replaced by another index; open it again")
            gone = np.setdiff1d(old.object_id, new.object_id)
            fresh = np.isin(new.object_id, old.object_id, invert=True)
            from objsearch.vectors.registry import get_backend

            follows = get_backend(self.backend).follows_catalog
            for dims, store in self._stores.items():
                if follows:  # a store that keeps its own copy (Milvus): by its own mark, not our difference
                    store.follow(new, previous=(old.uuid, old.generation, old.object_id))
                    continue
                if len(gone):
                    store.remove(gone)
                if fresh.any():
                    store.add(new.object_id[fresh], new.vectors(dims)[fresh], new.class_id[fresh],
                              new.object_media_id[fresh])
            for store in self._image_stores.values():  # few rows: rebuilt on the next image search
                store.close()
            self._image_stores.clear()
            self._rerank_vectors = None  # read again on the next search
            if (new.roots, new.root_macs) != (old.roots, old.root_macs):  # another writer added or trusted a root
                roots = Roots.of(new)
                for i, folder in self.roots.moved.items():  # the folders the user named stay named
                    roots.move(i, folder)
                self.roots = roots
            self.catalog = new
            self._load_lookups()
            old.close()
            return True

    def media_id_of(self, path: str | Path) -> int:
        """Media id of an indexed image at ``path`` (found under the roots), or -1."""
        for root, folder in enumerate(self.roots.folders):
            try:
                rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(folder))).as_posix()
            except ValueError:
                continue
            found = self._path_to_media.get((root, rel), -1)
            if found >= 0:
                return found
        return -1

    def media(self, media_id: int) -> MediaRef:
        """The record of an indexed media item.

        Raises
        ------
        KeyError
            For an id that is not in the index.
        """
        return self.catalog.media(int(media_id))

    def media_path(self, media_id: int) -> Path | None:
        """Where an indexed media item's file lives now, or None when its stored path would leave its root folder
        (a warning is logged: paths read from an index are data).

        Raises
        ------
        KeyError
            For an id that is not in the index.
        UntrustedRootError
            When the item's root was not chosen by the user (see ``objsearch.roots``): pass ``base_dir``, or trust
            the index.
        """
        media = self.media(media_id)
        path = self.roots.resolve(media.root, media.path)
        if path is None:
            LOGGER.warning("refusing the indexed path %s: it leaves the base directory %s", printable(media.path),
                           self.roots.folders[media.root])
        return path

    def read_media(self, media_id: int) -> np.ndarray:
        """The picture of an indexed media item as (H, W, 3) uint8 BGR: its image file, or its frame decoded from
        its video (the very frame analysis saw).

        Raises
        ------
        KeyError
            For an id that is not in the index.
        ImageReadError
            When the file is gone, unreadable, or its stored path leaves the base directory (VideoReadError, a
            subclass, for a video or a frame it no longer has).
        UntrustedRootError
            When the item's root was not chosen by the user.
        """
        media = self.media(media_id)
        path = self.media_path(media_id)
        if path is None:
            raise ImageReadError(f"cannot read {printable(media.path)}: its indexed path leaves the base directory")
        return read_media(path, media.frame_index, self.max_pixels)

    def thumbnail(self, object_id: int) -> bytes:
        """JPEG bytes of an indexed object's crop.

        Raises
        ------
        KeyError
            For an id that is not in the index.
        IndexFileError
            When the stored thumbnail is damaged.
        """
        return self.catalog.thumbnail(int(object_id))

    def media_picture(self, media_id: int, size: int = 128) -> bytes | None:
        """JPEG bytes of a small picture (longest side ``size`` px) of a whole indexed media item, made from its file
        (whole-image thumbnails are not stored in the index); None when the file is gone, unreadable or outside the
        base directory."""
        from objsearch.media import make_thumbnail

        try:
            image = self.read_media(media_id)
        except UntrustedRootError as exc:
            root = self.media(media_id).root
            if root not in self._warned_untrusted:  # once per root: each picture would say the same
                self._warned_untrusted.add(root)
                LOGGER.warning("%s", exc)
            return None
        except (KeyError, ImageReadError, OSError):
            return None
        return make_thumbnail(image, np.array([0, 0, image.shape[1], image.shape[0]], np.float32), size)

    # ----------------------------------------------------------------------------------------------- searching
    @property
    def reranks(self) -> bool:
        """Whether searches rerank (the index holds a rerank projection, ``objsearch.rerank``)."""
        return self.catalog.rerank_dims is not None

    def _rerank(self, hits: Hits, features: np.ndarray, class_id: np.ndarray) -> Hits:
        """``hits`` with each row's clear instance moved first (``objsearch.rerank.promote_instances``), by the
        rerank vectors of the query objects' ``features`` (Q, D) and of the candidates."""
        from objsearch.rerank import promote_instances

        with self._lock:  # the catalog and its vectors together (``refresh`` swaps both)
            c = self.catalog
            if self._rerank_vectors is None:
                self._rerank_vectors = c.vectors(c.rerank_dims)
            vectors = self._rerank_vectors
        rows = c.object_rows(hits.ids.reshape(-1)).reshape(hits.ids.shape)
        safe = np.maximum(rows, 0)
        valid = Hits(hits.distances, np.where(rows >= 0, hits.ids, -1))
        query = c.projection(c.rerank_dims).transform(features)
        return promote_instances(valid, query, vectors[safe], class_id, c.class_id[safe])

    def search(self, image: np.ndarray, *, k: int = 16, conf: float | None = None, same_class: bool = False,
               dims: int | None = None, exclude_media_id: int = -1, query: MediaRef | None = None,
               timings: dict | None = None, group_s: float | None = DEFAULT_GROUP_S,
               rerank: bool = True) -> SearchResult:
        """Detect the objects of ``image`` (H, W, 3) uint8 BGR and find each one's k nearest indexed objects.

        Parameters
        ----------
        k : neighbours per object, >= 1 (capped at the number of indexed objects).
        conf : detection threshold for this call, in [0, 1]; None: the index's.
        same_class : only neighbours of the object's detected class.
        dims : stored projection dimension; None: the engine's.
        exclude_media_id : leave that indexed media item's objects out (-1: none).
        query : what the image is (path, frame); width and height are taken from ``image``.
        timings : stage times measured before (e.g. ``decode``), copied into the result.
        group_s : hits from one video, of one class, within this many seconds of each other are one neighbour (a
            ``moment``, shown by its best frame; see ``objsearch.moments.group_neighbors``), and each row still
            holds k neighbours where the index has them (more are fetched); a moment's extent counts the matching
            frames among the hits fetched (at least 4k). None: every frame on its own. An index without videos is
            searched exactly as with None.
        rerank : when the index holds rerank vectors (``reranks``), take ``objsearch.rerank.RERANK_DEPTH``
            candidates and move each row's clear instance (the same object, mirrored, resized or recompressed) to
            the front; that neighbour keeps its own distance, so a row's distances are then not ascending. False, or
            an index made before reranking: the k nearest by the search vectors.

        Raises
        ------
        ValueError
            For k < 1, conf outside [0, 1] or a negative group_s.
        IndexFileError
            For a dimension the index does not hold.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        conf = self.conf if conf is None else float(conf)
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        dims = self.dims if dims is None else int(dims)
        store = self.store(dims)
        k = int(min(int(k), max(len(self.catalog.object_id), 1)))
        timings = dict(timings or {})
        stage = StageTimes()
        dets = self.detector(image, conf=conf, timings=stage)
        timings["detect"] = stage.detect
        t0 = time.perf_counter()
        vectors = self._projections[dims].transform(dets.features)
        t1 = time.perf_counter()
        timings["features"] = stage.features + (t1 - t0) * 1e3
        if group_s is not None and (not np.isfinite(group_s) or group_s < 0):
            raise ValueError(f"group_s must be a number of seconds >= 0, got {group_s}")
        group = group_s is not None and self._has_frames

        n_objects = len(self.catalog.object_id)
        rerank = bool(rerank) and self.reranks

        def fetch(n: int) -> Hits:
            from objsearch.rerank import RERANK_DEPTH

            depth = max(n, min(RERANK_DEPTH, n_objects)) if rerank else n
            with self._lock:  # a store rebuilds its structures lazily on the first search after a change
                hits = store.search(vectors, depth, class_id=dets.class_id if same_class else None,
                                    exclude_image_id=exclude_media_id if exclude_media_id >= 0 else None)
            if rerank and len(dets):
                hits = self._rerank(hits, dets.features, dets.class_id)
            return Hits(hits.distances[:, :n], hits.ids[:, :n])

        n_fetch = min(4 * k, n_objects) if group else k
        hits = fetch(n_fetch)
        neighbors = self._neighbors(hits)
        while group:
            neighbors = [group_neighbors(row, group_s)[:k] for row in neighbors]
            if n_fetch >= n_objects or all(len(row) >= k for row in neighbors):
                break
            n_fetch = min(4 * n_fetch, n_objects)  # moments swallowed too many: fetch deeper
            hits = fetch(n_fetch)
            neighbors = self._neighbors(hits)
        if group:
            hits = Hits.empty(len(neighbors), k)
            for q, row in enumerate(neighbors):
                hits.ids[q, :len(row)] = [nb.object_id for nb in row]
                hits.distances[q, :len(row)] = [nb.distance for nb in row]
        t2 = time.perf_counter()
        timings["search"] = (t2 - t1) * 1e3
        ref = query or MediaRef(path="")
        ref = MediaRef(path=ref.path, width=int(image.shape[1]), height=int(image.shape[0]), media_id=ref.media_id,
                       frame_index=ref.frame_index, timestamp_s=ref.timestamp_s)
        result = SearchResult(query=ref, detections=dets, hits=hits, neighbors=neighbors,
                              class_names=self.class_names, notes=self._notes(dets, k, same_class))
        timings["assemble"] = (time.perf_counter() - t2) * 1e3
        result.timings_ms = timings
        return result

    def _neighbors(self, hits: Hits) -> list[list[Neighbor]]:
        c = self.catalog
        rows = c.object_rows(hits.ids.reshape(-1)).reshape(hits.ids.shape)
        media_rows = c.media_rows(c.object_media_id[np.maximum(rows, 0)].reshape(-1)).reshape(rows.shape)
        out = []
        for q in range(len(rows)):
            row = []
            for j in range(rows.shape[1]):
                r = int(rows[q, j])
                if hits.ids[q, j] < 0 or r < 0:
                    continue
                m = int(media_rows[q, j])
                media = MediaRef(path=c.media_path[m], width=int(c.media_width[m]), height=int(c.media_height[m]),
                                 media_id=int(c.media_id[m]), frame_index=int(c.media_frame_index[m]),
                                 timestamp_s=float(c.media_timestamp_s[m]), root=int(c.media_root[m]))
                row.append(Neighbor(object_id=int(c.object_id[r]), media=media, xyxy=c.xyxy[r],
                                    class_id=int(c.class_id[r]), confidence=float(c.confidence[r]),
                                    distance=float(hits.distances[q, j])))
            out.append(row)
        return out

    def _notes(self, dets: Detections, k: int, same_class: bool) -> list[str]:
        """A note per query object whose class the index holds none or very few of (fewer than min(k, 5))."""
        notes = []
        for cid in dets.class_id:
            cid = int(cid)
            count = int(self._class_counts[cid]) if 0 <= cid < len(self._class_counts) else 0
            label = self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid)
            if count == 0:
                notes.append(f"the index holds no {label}" + ("" if same_class else "; these are other things"))
            elif count < min(k, 5):
                notes.append(f"the index holds only {count} {label}")
            else:
                notes.append("")
        return notes

    # ------------------------------------------------------------------------------------------------- warm-up
    def common_shapes(self, n: int = 4) -> list[tuple[int, int, int]]:
        """The ``n`` most frequent image sizes among the indexed media, as (H, W, 3), the most frequent first (ties:
        the smaller height, then width, first): the shapes a search of indexed images (the app's random image, a
        video of the index) will see."""
        c = self.catalog
        if not len(c.media_id):
            return []
        sizes, counts = np.unique(np.stack([c.media_height, c.media_width], 1), axis=0, return_counts=True)
        order = np.lexsort((sizes[:, 1], sizes[:, 0], -counts))[: int(n)]
        return [(int(sizes[i, 0]), int(sizes[i, 1]), 3) for i in order]

    def warmup(self, image_shapes=None, *, dims: int | None = None, passes: int = 1) -> float:
        """Run, untimed, what a first search would pay for once: the detector's whole path at each image shape
        (``Detector.warmup``: forward, NMS and pooling, once per letterbox shape) and one search of the vector store
        (its structures built, its kernels loaded on a GPU). Returns the milliseconds spent (0 when all was warm).

        Parameters
        ----------
        image_shapes : iterable of (H, W[, 3]), optional
            None: the index's ``common_shapes()`` and ``STANDARD_SHAPES``.
        dims : stored projection dimension whose store is warmed; None: the engine's.
        passes : forward passes per shape. One pays the first-use costs (kernels loaded, algorithms chosen; with
            onnxruntime on a CPU a new shape's first pass measured no slower than the next ones); a one-off query
            warms its own shape with two (``search_file``), for torch's oneDNN on a CPU.
        """
        t0 = time.perf_counter()
        shapes = [*self.common_shapes(), *STANDARD_SHAPES] if image_shapes is None else list(image_shapes)
        for shape in shapes:
            self.detector.warmup(tuple(shape), passes=passes)
        self._warm_store(self.store(self.dims if dims is None else int(dims)))
        return (time.perf_counter() - t0) * 1e3

    def _warm_store(self, store) -> None:
        """One search of ``store`` with a stored-size vector of zeros, once per store."""
        if store in self._warm_stores or not len(store):
            return
        with self._lock:
            store.search(np.zeros((1, store.dims), np.float32), 1)
        self._warm_stores.add(store)

    def _query_file(self, path, image: np.ndarray | None, warmup: bool, store=None) -> tuple[np.ndarray, float, float]:
        """(the query file's pixels, decode ms, untimed warm-up ms): ``image`` when the caller decoded it already;
        with ``warmup`` the detector's whole path runs first at this input size, and the vector store ``store()``
        (a function: it is opened only once the image was read) is searched once.

        Raises
        ------
        ImageReadError
            When the file cannot be read as an image.
        """
        t0 = time.perf_counter()
        if image is None:
            image = read_image(path, max_pixels=self.max_pixels)
        decode = (time.perf_counter() - t0) * 1e3
        if not warmup:
            return image, decode, 0.0
        t1 = time.perf_counter()
        warm = self.detector.warmup(image.shape)
        if store is not None and store() not in self._warm_stores:
            self._warm_store(store())
            warm = (time.perf_counter() - t1) * 1e3
        return image, decode, warm

    def search_file(self, path: str | Path, *, k: int = 16, conf: float | None = None, same_class: bool = False,
                    exclude_self: bool = True, dims: int | None = None, warmup: bool = False,
                    image: np.ndarray | None = None, group_s: float | None = DEFAULT_GROUP_S) -> SearchResult:
        """``search`` on an image file; when the file is one of the indexed images and ``exclude_self``, its own
        objects are left out. With ``warmup``, a first pass at this input size runs untimed first (its time is
        ``timings_ms["warmup"]``, outside the total) so one-off timings are true. ``image`` (H, W, 3) uint8 BGR: the
        file already decoded by the caller (each query image is decoded once).

        Raises
        ------
        ImageReadError
            When the file cannot be read as an image.
        """
        image, decode, warm = self._query_file(path, image, warmup,
                                               store=lambda: self.store(self.dims if dims is None else int(dims)))
        exclude = self.media_id_of(path) if exclude_self else -1
        result = self.search(image, k=k, conf=conf, same_class=same_class, exclude_media_id=exclude, dims=dims,
                             query=MediaRef(path=str(path), media_id=exclude), timings={"decode": decode},
                             group_s=group_s)
        if warm:
            result.timings_ms["warmup"] = warm
        return result

    def search_image(self, image: np.ndarray, *, k: int = 16, dims: int | None = None, exclude_media_id: int = -1,
                     query: MediaRef | None = None, timings: dict | None = None) -> ImageSearchResult:
        """Find the k indexed media items most similar to the whole of ``image`` (H, W, 3) uint8 BGR, by their
        whole-image vectors (one detector pass, as ``search``; its objects are not used).

        Parameters
        ----------
        k : neighbours, >= 1 (capped at the number of indexed media items).
        dims : stored projection dimension; None: the engine's.
        exclude_media_id : leave that indexed media item out (-1: none).
        query : what the image is (path, frame); width and height are taken from ``image``.
        timings : stage times measured before (e.g. ``decode``), copied into the result.

        Raises
        ------
        ValueError
            For k < 1.
        IndexFileError, ConfigError
            See ``image_store``.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        dims = self.dims if dims is None else int(dims)
        store = self.image_store(dims)
        k = int(min(int(k), max(len(self.catalog.media_id), 1)))
        timings = dict(timings or {})
        stage = StageTimes()
        dets = self.detector(image, timings=stage)
        timings["detect"] = stage.detect + stage.features
        t0 = time.perf_counter()
        vector = self.catalog.image_projection(dims).transform(dets.image_feature[None, :])
        t1 = time.perf_counter()
        timings["image_feature"] = stage.image_feature + (t1 - t0) * 1e3
        with self._lock:
            hits = store.search(vector, k, exclude_image_id=exclude_media_id if exclude_media_id >= 0 else None)
        t2 = time.perf_counter()
        timings["search"] = (t2 - t1) * 1e3
        c = self.catalog
        rows = c.media_rows(hits.ids[0])
        neighbors = [ImageNeighbor(media=c.media(int(c.media_id[r])), distance=float(dist))
                     for mid, r, dist in zip(hits.ids[0], rows, hits.distances[0]) if mid >= 0 and r >= 0]
        ref = query or MediaRef(path="")
        ref = MediaRef(path=ref.path, width=int(image.shape[1]), height=int(image.shape[0]), media_id=ref.media_id,
                       frame_index=ref.frame_index, timestamp_s=ref.timestamp_s)
        timings["assemble"] = (time.perf_counter() - t2) * 1e3
        return ImageSearchResult(query=ref, neighbors=neighbors, hits=hits, timings_ms=timings)

    def search_image_file(self, path: str | Path, *, k: int = 16, exclude_self: bool = False, dims: int | None = None,
                          warmup: bool = False, image: np.ndarray | None = None) -> ImageSearchResult:
        """``search_image`` on an image file (``image``: already decoded by the caller); with ``exclude_self`` an
        indexed file leaves itself out; ``warmup`` as in ``search_file``.

        Raises
        ------
        ImageReadError
            When the file cannot be read as an image.
        """
        image, decode, warm = self._query_file(path, image, warmup,
                                               store=lambda: self.image_store(self.dims if dims is None else int(dims)))
        media_id = self.media_id_of(path)
        result = self.search_image(image, k=k, dims=dims, exclude_media_id=media_id if exclude_self else -1,
                                   query=MediaRef(path=str(path), media_id=media_id), timings={"decode": decode})
        if warm:
            result.timings_ms["warmup"] = warm
        return result

    def close(self) -> None:
        self._warm_stores.clear()
        for store in list(self._stores.values()) + list(self._image_stores.values()):
            store.close()
        self._stores.clear()
        self._image_stores.clear()
        self.catalog.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
