"""The in-memory vector store: exact k-NN (KD-tree, faiss, numpy) and one approximate method (hnsw), on stable ids.

``MemoryVectorStore.search`` returns ``Hits``: ``distances (Q, k)`` ascending (Euclidean) and ``ids (Q, k)`` (the
stable int64 object ids given to ``add``, never row numbers), padded with ``inf`` and ``-1`` when fewer than k
neighbours qualify. Options restrict neighbours to a class and exclude objects of a given image.

Objects are added and removed while the store lives. The store keeps its arrays (ids, vectors, class and image per
object) compact and rebuilds what a method needs lazily, at the first search after a change: the KD-tree is built
again, numpy's norms are recomputed, faiss' ``IndexFlatL2`` only adds the new vectors (and is copied again after a
removal), and the hnsw graph is changed in place (``add_items`` with the ids as labels, ``mark_deleted`` for
removals: no rebuild). Per-class structures are dropped on every change. Removed objects are never returned.

The methods, each in its own module:

``kdtree``, ``faiss``, ``numpy`` (exact; ``objsearch.vectors.exact``)
    All return the same neighbours (ties aside).
``auto`` (default; ``objsearch.vectors.calibrate``)
    Times the exact methods on the store's vectors and keeps the fastest for a frame of 10 queries (among those
    within 10% of it, the fastest for one query). It calibrates when the store is made, and again at the first
    search after the number of objects crossed 2000 or doubled or halved since (a store that starts empty and is
    filled by ``add`` does not keep the small-store choice). It never picks an approximate method.
``hnsw`` (approximate; ``objsearch.vectors.hnsw``)
    hnswlib's graph, ``HnswParams``, and the graph cache (``hnsw_cache``) that later opens load instead of building.
    Filters are honoured exactly.

What each costs and why ``auto`` chooses as it does (timings on the 376k SYNTHETIC index, the graph cache's build and
load times, recall at each ``ef``) is in docs/scale.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from objsearch.types import Hits
from objsearch.vectors.calibrate import calibrate
from objsearch.vectors.checks import check_new, check_query, int_array, some_values
from objsearch.vectors.exact import EXACT_INDEXES, FaissIndex, NumpyIndex, faiss_available
from objsearch.vectors.hnsw import HnswAll, HnswGraph, HnswParams, HnswSubset, hnswlib_available, open_graph

SEARCH_METHODS = ("auto", "kdtree", "faiss", "numpy", "hnsw")


class MemoryVectorStore:
    """k-NN search over stable ids, with class restriction and per-query image exclusion; exact unless ``hnsw``.

    Parameters
    ----------
    ids : ndarray of shape (n,), int64
        Stable object ids, distinct and >= 0 (-1 pads ``Hits``).
    vectors : ndarray of shape (n, dims), float32
        Projected vectors, one per object; finite. An empty store takes shape (0, dims).
    class_id : ndarray of shape (n,), int
        Detected class per object.
    image_id : ndarray of shape (n,), int
        Image (media item) per object.
    method : str
        ``auto``, ``kdtree``, ``faiss``, ``numpy`` (exact) or ``hnsw`` (approximate); see the module docstring.
    hnsw : HnswParams, optional
        Parameters of the ``hnsw`` method; None: the defaults.
    hnsw_cache : path, optional
        Where the ``hnsw`` graph is saved and loaded from (see the module docstring); ignored by other methods.

    Attributes
    ----------
    backend : str
        The method in use (``auto`` resolved; may change when ``auto`` calibrates again after the store grew).
    method : str
        The method asked for.
    dims : int
    exact : bool
        False for ``hnsw``.
    timings_ms : dict
        ``auto``'s latest calibration (see ``calibrate``); empty otherwise.

    Raises
    ------
    ValueError
        For the same input ``add`` refuses, an unknown or uninstalled method, or ``hnsw`` not an ``HnswParams``.
    """

    def __init__(self, ids, vectors, class_id, image_id, method: str = "auto", *, hnsw: HnswParams | None = None,
                 hnsw_cache: str | os.PathLike | None = None) -> None:
        if method not in SEARCH_METHODS:
            raise ValueError(f"search method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
        if method == "faiss" and not faiss_available():
            raise ValueError("search method 'faiss' needs the faiss-cpu package (pip install faiss-cpu)")
        if method == "hnsw" and not hnswlib_available():
            raise ValueError("search method 'hnsw' needs the hnswlib package (pip install hnswlib)")
        if hnsw is not None and not isinstance(hnsw, HnswParams):
            raise ValueError(f"hnsw must be an HnswParams, got {type(hnsw).__name__}")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must have shape (n, dims), got {vectors.shape}")
        self.dims = int(vectors.shape[1])
        self.method = method
        self.exact = method != "hnsw"
        self.hnsw_params = hnsw or HnswParams()
        self.hnsw_cache = Path(hnsw_cache) if hnsw_cache is not None and method == "hnsw" else None
        self.timings_ms: dict[str, dict[str, float]] = {}
        self._closed = False
        self._ids = np.zeros(0, np.int64)
        self._vectors = np.zeros((0, self.dims), np.float32)
        self._class_id = np.zeros(0, np.int64)
        self._image_id = np.zeros(0, np.int64)
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their rows)
        ids, vectors, class_id, image_id = self._check_new(ids, vectors, class_id, image_id)
        self._append(ids, vectors, class_id, image_id)
        # the search structures, brought up to date at the next search (_sync)
        self._whole = None
        self._synced = False
        self._removed_since_build = False
        self._classes: dict[int, tuple[object, np.ndarray] | tuple[None, None]] = {}
        self._max_per_image = 0
        self._graph: HnswGraph | None = None
        self._graph_unsaved = False
        self._calibrated_n = -1
        if method == "auto":
            self.backend = "kdtree"
            self._calibrate_if_due(force=True)
        else:
            self.backend = method
        if method == "hnsw":
            self._open_graph()

    # --------------------------------------------------------------------------------------------- protocol
    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids, vectors, class_id, image_id) -> None:
        """Add objects.

        Parameters
        ----------
        ids : ndarray of shape (n,), int64
            New stable ids: >= 0, not in the store, distinct.
        vectors : ndarray of shape (n, dims), float32, finite
        class_id : ndarray of shape (n,), int
        image_id : ndarray of shape (n,), int

        Raises
        ------
        ValueError
            For a wrong shape or dtype, a non-finite vector, a negative id, or ids already in the store or repeated
            (the message names them).
        """
        self._check_open()
        ids, vectors, class_id, image_id = self._check_new(ids, vectors, class_id, image_id)
        if not len(ids):
            return
        self._append(ids, vectors, class_id, image_id)
        if self._graph is not None:
            self._graph.add(vectors, ids)
            self._graph_unsaved = True
        self._changed()

    def remove(self, ids) -> int:
        """Remove objects by id; ids not in the store are ignored.

        Parameters
        ----------
        ids : ndarray of shape (m,), int

        Returns
        -------
        int
            How many objects were removed.
        """
        self._check_open()
        ids = int_array("ids", ids)
        gone = np.isin(self._ids, ids)
        count = int(gone.sum())
        if not count:
            return 0
        removed = self._ids[gone]
        keep = ~gone
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        self._class_id, self._image_id = self._class_id[keep], self._image_id[keep]
        if self._graph is not None:
            self._graph.remove(removed)
            self._graph_unsaved = True
        self._removed_since_build = True
        self._changed()
        return count

    def search(self, vectors, k: int, *, class_id=None, exclude_image_id=None, workers: int = 1) -> Hits:
        """The k nearest objects of each query.

        Parameters
        ----------
        vectors : ndarray of shape (Q, dims), float32, finite
            The queries.
        k : int, >= 1
        class_id : None, int or ndarray of shape (Q,), int
            Only neighbours of this class (per query).
        exclude_image_id : None, int or ndarray of shape (Q,), int
            Leave out objects of this image (per query); -1 excludes nothing.
        workers : int
            Threads for the KD-tree and hnsw (-1: all cores); faiss and BLAS use their own thread pools.

        Returns
        -------
        Hits
            ``distances`` (Q, k) float32 ascending Euclidean, ``inf`` where padded; ``ids`` (Q, k) int64 object
            ids, ``-1`` where padded.

        Raises
        ------
        ValueError
            For a bad ``k``, a query that is not (Q, dims) or not finite, or a filter of the wrong shape.
        """
        self._check_open()
        queries, k, class_id, exclude_image_id = check_query(vectors, k, class_id, exclude_image_id, self.dims)
        q = len(queries)
        hits = Hits.empty(q, k)
        if q == 0 or len(self) == 0:
            return hits
        self._sync()
        groups = np.unique(class_id) if class_id is not None else [None]
        extra = self._max_per_image if exclude_image_id is not None else 0
        for group in groups:
            queried = np.arange(q) if group is None else np.flatnonzero(class_id == group)
            backend, subset_rows = self._subset(None if group is None else int(group))
            if backend is None:
                continue
            d, pos = backend.query(queries[queried], min(k + extra, backend.n), workers=workers)
            valid = pos >= 0
            rows = np.where(valid, pos, 0)
            if subset_rows is not None:
                rows = subset_rows[rows]
            if exclude_image_id is not None:
                valid &= self._image_id[rows] != exclude_image_id[queried, None]
            # stable compaction of the valid neighbours to the left, first k kept
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
            take_valid = np.take_along_axis(valid, order, 1)
            width = order.shape[1]
            hits.distances[queried, :width] = np.where(take_valid, np.take_along_axis(d, order, 1), np.inf)
            hits.ids[queried, :width] = np.where(take_valid, self._ids[np.take_along_axis(rows, order, 1)], -1)
        return hits

    def close(self) -> None:
        """Save the hnsw graph to ``hnsw_cache`` if it changed since it was saved, and free the structures.

        Calling it again does nothing; any other call afterwards raises ``RuntimeError``.
        """
        if self._closed:
            return
        if self._graph is not None and self._graph_unsaved and self.hnsw_cache is not None:
            self._graph.save(self.hnsw_cache, self._ids)
        self._closed = True
        self._whole = self._graph = None
        self._classes = {}

    def __enter__(self) -> MemoryVectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryVectorStore(backend={self.backend!r}, dims={self.dims}, n={len(self)})"

    # ---------------------------------------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this vector store is closed")

    def _check_new(self, ids, vectors, class_id, image_id):
        ids, vectors, class_id, image_id = check_new(ids, vectors, class_id, image_id, self.dims)
        present = ids[np.isin(ids, self._ids)]
        if len(present):
            raise ValueError(f"ids must not be in the store already, got {len(present)} present: "
                             f"{some_values(present)}")
        return ids, vectors, class_id, image_id

    def _append(self, ids, vectors, class_id, image_id) -> None:
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors.copy()
        self._class_id = np.concatenate([self._class_id, class_id])
        self._image_id = np.concatenate([self._image_id, image_id])

    def _changed(self) -> None:
        self._synced = False
        self._lookup = None
        self._classes = {}

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (any shape, int64) in the store's arrays; -1 for ids not in the store."""
        if self._lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._lookup = (self._ids[order], order)
        sorted_ids, order = self._lookup
        if not len(sorted_ids):
            return np.full(np.shape(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def _calibrate_if_due(self, force: bool = False) -> bool:
        """``auto``: calibrate again when the store crossed 2000 objects or doubled or halved since the last time."""
        n, last = len(self), self._calibrated_n
        due = force or (n >= 2000 and (last < 2000 or n > 2 * last or 2 * n < last)) or (n < 2000 <= last)
        if not due:
            return False
        if n:
            self.backend, timings, backend = calibrate(self._vectors)
            self.timings_ms = timings
        else:
            self.backend, backend = "kdtree", None
        self._calibrated_n = n
        if backend is not None:
            self._whole, self._removed_since_build = backend, False
            self._finish_sync()
        else:
            self._whole = None
        return True

    def _sync(self) -> None:
        """Bring the whole-store structure up to date with the arrays (lazily, after add / remove)."""
        if self._synced:
            return
        if self.method == "auto" and self._calibrate_if_due() and self._synced:
            return
        n = len(self)
        if self.backend == "hnsw":
            self._whole = HnswAll(self._graph, self._vectors, self._rows_of)
        elif (self.backend == "faiss" and isinstance(self._whole, FaissIndex) and not self._removed_since_build
              and self._whole.n <= n):
            self._whole.extend(self._vectors[self._whole.n:])  # only appended since it was built
        else:
            self._whole = EXACT_INDEXES[self.backend](self._vectors) if n else None
        self._removed_since_build = False
        self._finish_sync()

    def _finish_sync(self) -> None:
        self._classes = {}
        self._max_per_image = int(np.unique(self._image_id, return_counts=True)[1].max()) if len(self) else 0
        self._synced = True

    def _subset(self, class_id: int | None):
        """(backend, rows): the structure among all objects (rows None) or among a class's objects."""
        if class_id is None:
            return self._whole, None
        if class_id not in self._classes:
            rows = np.flatnonzero(self._class_id == class_id)
            if not len(rows):
                self._classes[class_id] = (None, None)
            elif self.backend == "hnsw":  # one graph for all classes; small classes are scanned exactly
                self._classes[class_id] = (HnswSubset(self._whole, rows) if len(rows) > self.hnsw_params.exact_below
                                           else NumpyIndex(self._vectors[rows]), rows)
            else:
                self._classes[class_id] = (EXACT_INDEXES[self.backend](self._vectors[rows]), rows)
        return self._classes[class_id]

    def _open_graph(self) -> None:
        """Load the hnsw graph from the cache and reconcile it with the objects, or build it (``hnsw.open_graph``)."""
        self._graph, self._graph_unsaved = open_graph(self.hnsw_cache, self.dims, self.hnsw_params, self._ids,
                                                      self._vectors)
