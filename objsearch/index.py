"""Exact k-nearest-neighbour search over projected vectors.

``NeighborIndex.search`` returns a fixed shape: ``distances (Q, k)`` ascending (Euclidean) and ``ids (Q, k)``
(object ids, rows of the vectors given at construction), padded with ``inf`` and ``-1`` when fewer than k
neighbours qualify. Options restrict neighbours to a class and exclude objects of a given image.

Exact methods (all return the same neighbours; ties aside):

``kdtree``
    scipy's ``cKDTree`` (what the original apps used, via ofxKDTree). Fastest at low dimensions; its cost grows
    steeply with the dimension (the "curse of dimensionality", Weber et al., VLDB 1998).
``faiss``
    faiss ``IndexFlatL2`` (exhaustive SIMD/BLAS scan, faiss-cpu from PyPI).
``numpy``
    Brute force with one BLAS matrix product and ``argpartition``; needs nothing beyond numpy.
``auto`` (default)
    Times the available methods on the opened vectors (a few single queries and a frame of 10, sampled from the
    index) and keeps the fastest. The KD-tree is not tried above ``KDTREE_MAX_DIMS`` dimensions, where it measured
    10-100x slower than a scan (``tools/bench_search.py``) and building it alone would cost seconds.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy.spatial import cKDTree

LOGGER = logging.getLogger(__name__)

SEARCH_METHODS = ("auto", "kdtree", "faiss", "numpy")
KDTREE_MAX_DIMS = 64


def faiss_available() -> bool:
    """Whether the faiss package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class _KDTree:
    def __init__(self, vectors: np.ndarray) -> None:
        self.n = len(vectors)
        self.tree = cKDTree(vectors)

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.tree.query(queries, k=k, workers=workers)
        d = np.asarray(d, np.float32).reshape(len(queries), k)
        i = np.asarray(i, np.int64).reshape(len(queries), k)
        return d, np.where(i < self.n, i, -1)


class _Faiss:
    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        self.n = len(vectors)
        self.index = faiss.IndexFlatL2(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        d2, i = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32), i.astype(np.int64)


class _Numpy:
    def __init__(self, vectors: np.ndarray) -> None:
        self.n = len(vectors)
        self.vectors = vectors
        self.norms = np.einsum("ij,ij->i", vectors, vectors)

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        # ||x - q||^2 = ||x||^2 - 2 q.x + ||q||^2; the last term does not change the order
        partial = self.norms[None, :] - 2.0 * (queries @ self.vectors.T)
        k = min(k, self.n)
        top = np.argpartition(partial, k - 1, axis=1)[:, :k] if k < self.n else np.tile(np.arange(self.n), (len(queries), 1))
        order = np.argsort(np.take_along_axis(partial, top, 1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, 1)
        diff = self.vectors[ids] - queries[:, None, :]
        return np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)).astype(np.float32), ids.astype(np.int64)


_BACKENDS = {"kdtree": _KDTree, "faiss": _Faiss, "numpy": _Numpy}


def choose_method(vectors: np.ndarray, repeats: int = 5, seed: int = 0) -> tuple[str, dict[str, float]]:
    """Time the available exact methods on ``vectors`` (N, d) and return the fastest with the timings (ms).

    The cost measured is ``repeats`` single queries plus one batch of 10 (a frame's worth), k=16. Queries are indexed
    vectors plus Gaussian noise of half the data's per-dimension spread: a new image's objects are not
    near-duplicates of indexed ones, and a KD-tree answers near-duplicates far faster than typical queries, so
    calibrating on them would favour it wrongly. Build time is not counted (an index is built once per open).
    """
    n, d = vectors.shape
    candidates = [m for m in ("kdtree", "faiss", "numpy") if m != "faiss" or faiss_available()]
    if d > KDTREE_MAX_DIMS:
        candidates.remove("kdtree")
    if n < 2000:  # too small to matter; the KD-tree answers in microseconds
        return ("kdtree" if "kdtree" in candidates else candidates[0]), {}
    rng = np.random.default_rng(seed)
    scale = vectors[rng.integers(0, n, min(n, 5000))].std(0) * 0.5
    queries = (vectors[rng.integers(0, n, repeats + 10)] + rng.normal(0, 1, (repeats + 10, d)) * scale).astype(np.float32)
    timings = {}
    for method in candidates:
        backend = _BACKENDS[method](vectors)
        backend.query(queries[:1], 16)  # warm-up
        t0 = time.perf_counter()
        for q in range(repeats):
            backend.query(queries[q : q + 1], 16)
        backend.query(queries[repeats:], 16)
        timings[method] = (time.perf_counter() - t0) * 1e3
    best = min(timings, key=timings.get)
    LOGGER.info("search method for %d x %d vectors: %s (%s)", n, d, best,
                ", ".join(f"{m} {t:.1f} ms" for m, t in timings.items()))
    return best, timings


class NeighborIndex:
    """Exact k-NN search with class restriction and per-query image exclusion.

    Parameters
    ----------
    vectors : ndarray of shape (N, d), float32
        Projected vectors, one per object; row i is object id i.
    class_id : ndarray of shape (N,), int, optional
        Detected class per object, needed for ``same_class`` searches.
    image_id : ndarray of shape (N,), int, optional
        Image per object, needed for ``exclude_image_id``.
    method : str
        ``auto``, ``kdtree``, ``faiss`` or ``numpy`` (see the module docstring).

    Raises
    ------
    ValueError
        When the arrays' lengths disagree, ``vectors`` is not 2-D, or the method is unknown or not installed.
    """

    def __init__(self, vectors: np.ndarray, class_id: np.ndarray | None = None, image_id: np.ndarray | None = None,
                 method: str = "auto"):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must have shape (N, d), got {vectors.shape}")
        n = len(vectors)
        for name, arr in (("class_id", class_id), ("image_id", image_id)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} must have length {n}, got {len(arr)}")
        if method not in SEARCH_METHODS:
            raise ValueError(f"search method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
        if method == "faiss" and not faiss_available():
            raise ValueError("search method 'faiss' needs the faiss-cpu package (pip install faiss-cpu)")
        self.vectors = vectors
        self.class_id = None if class_id is None else np.asarray(class_id, dtype=np.int64)
        self.image_id = None if image_id is None else np.asarray(image_id, dtype=np.int64)
        self.timings_ms: dict[str, float] = {}
        if method == "auto":
            method, self.timings_ms = choose_method(vectors) if n else ("kdtree", {})
        self.method = method
        self._backend = _BACKENDS[method](vectors) if n else None
        self._class_backends: dict[int, tuple[object, np.ndarray]] = {}
        self._max_per_image = int(np.bincount(self.image_id).max()) if self.image_id is not None and n else 0

    @property
    def dims(self) -> int:
        """Dimension d of the vectors."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)

    def _subset(self, class_id: int | None):
        if class_id is None:
            return self._backend, None
        if class_id not in self._class_backends:
            ids = np.flatnonzero(self.class_id == class_id)
            backend = _BACKENDS[self.method](self.vectors[ids]) if len(ids) else None
            self._class_backends[class_id] = (backend, ids)
        return self._class_backends[class_id]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        class_id: np.ndarray | None = None,
        exclude_image_id: np.ndarray | int | None = None,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest objects of each query.

        Parameters
        ----------
        queries : ndarray of shape (Q, d), float32
        k : int, >= 1
        class_id : ndarray of shape (Q,), int, optional
            Restrict each query's neighbours to objects of this class (``--same-class``).
        exclude_image_id : int or ndarray of shape (Q,), optional
            Leave out objects of this image (per query); -1 excludes nothing.
        workers : int
            Threads for the KD-tree (-1: all cores); faiss and BLAS use their own thread pools.

        Returns
        -------
        distances : ndarray of shape (Q, k), float32, ascending, ``inf`` where padded
        ids : ndarray of shape (Q, k), int64, object ids, ``-1`` where padded

        Raises
        ------
        ValueError
            For a bad ``k``, a dimension mismatch, or an option the index lacks the arrays for.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dims:
            raise ValueError(f"queries must have shape (Q, {self.dims}), got {queries.shape}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        q = len(queries)
        distances = np.full((q, k), np.inf, np.float32)
        ids = np.full((q, k), -1, np.int64)
        if q == 0 or len(self) == 0:
            return distances, ids
        if class_id is not None:
            if self.class_id is None:
                raise ValueError("this index has no class ids; same-class search is not possible")
            class_id = np.broadcast_to(np.asarray(class_id, dtype=np.int64), (q,))
        if exclude_image_id is not None:
            if self.image_id is None:
                raise ValueError("this index has no image ids; image exclusion is not possible")
            exclude_image_id = np.broadcast_to(np.asarray(exclude_image_id, dtype=np.int64), (q,))
        groups = np.unique(class_id) if class_id is not None else [None]
        for group in groups:
            rows = np.arange(q) if group is None else np.flatnonzero(class_id == group)
            backend, subset_ids = self._subset(None if group is None else int(group))
            if backend is None:
                continue
            extra = self._max_per_image if exclude_image_id is not None else 0
            kk = min(k + extra, backend.n)
            d, i = backend.query(queries[rows], kk, workers=workers)
            valid = i >= 0
            i = np.where(valid, i, 0)
            if subset_ids is not None:
                i = subset_ids[i]
            if exclude_image_id is not None:
                valid &= self.image_id[i] != exclude_image_id[rows, None]
            # stable compaction of the valid neighbours to the left, first k kept
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
            take_valid = np.take_along_axis(valid, order, 1)
            width = order.shape[1]
            distances[rows, :width] = np.where(take_valid, np.take_along_axis(d, order, 1), np.inf)
            ids[rows, :width] = np.where(take_valid, np.take_along_axis(i, order, 1), -1)
        return distances, ids
