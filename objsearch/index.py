"""k-nearest-neighbour search over projected vectors: exact methods, and one approximate.

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
    Times the exact methods on the opened vectors (single queries and frames of 10, sampled from the index) and
    keeps the fastest for single queries and the fastest for batches, which can differ (at 16-64 dims numpy's
    one-row product beats faiss' scan for one query, while faiss is often faster for 10). The KD-tree is not tried
    above ``KDTREE_MAX_DIMS`` dimensions, where it measured 10-100x slower than a scan (``tools/bench_search.py``)
    and building it alone would cost seconds. ``auto`` never picks an approximate method.

Approximate method (never chosen by ``auto``):

``hnsw``
    hnswlib's hierarchical navigable small-world graph (Malkov & Yashunin, TPAMI 2018), parameters in
    ``HnswParams``. Much faster per query on large indexes, at the price of building the graph on open (tens of
    seconds for 376k objects) and of missing a few true neighbours (recall@16 against exact is printed by
    ``tools/bench_search.py``). Filters are honoured exactly: class restriction over-fetches from the one graph
    and keeps the class's members, falling back to an exact scan of the class for the rare query that does not get
    k of them (classes of at most ``HnswParams.exact_below`` objects are always scanned exactly: that is fast and
    over-fetching for them would not be); image exclusion over-fetches as the exact methods do (k plus the most
    objects of any one image), so it always fills k when k objects qualify.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

LOGGER = logging.getLogger(__name__)

SEARCH_METHODS = ("auto", "kdtree", "faiss", "numpy", "hnsw")
EXACT_METHODS = ("kdtree", "faiss", "numpy")
APPROXIMATE_METHODS = ("hnsw",)
KDTREE_MAX_DIMS = 64


@dataclass(frozen=True)
class HnswParams:
    """Parameters of the approximate ``hnsw`` method (hnswlib's names and defaults).

    Attributes
    ----------
    M : int
        Graph links per node; more: better recall, more memory and build time.
    ef_construction : int
        Candidate list while building; more: a better graph, slower build.
    ef_search : int or None
        Candidate list while searching (at least the number of neighbours fetched); None: ``max(64, 4 * fetched)``.
    seed : int
        Seed of the level assignment. The graph is reproducible only with ``build_threads=1``: parallel insertion
        order varies from run to run.
    build_threads : int
        Threads that insert into the graph; -1: all cores.
    exact_below : int
        Class restrictions to at most this many objects are answered by an exact scan of the class.
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int | None = None
    seed: int = 0
    build_threads: int = -1
    exact_below: int = 20_000

    def __post_init__(self) -> None:
        for name in ("M", "ef_construction", "exact_below"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HnswParams.{name} must be >= 1, got {getattr(self, name)}")
        if self.ef_search is not None and int(self.ef_search) < 1:
            raise ValueError(f"HnswParams.ef_search must be >= 1 or None, got {self.ef_search}")

    def ef(self, fetched: int) -> int:
        """Candidate list size for a search that fetches ``fetched`` neighbours."""
        return max(int(fetched), self.ef_search if self.ef_search is not None else max(64, 4 * int(fetched)))


def faiss_available() -> bool:
    """Whether the faiss package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def hnswlib_available() -> bool:
    """Whether the hnswlib package imports."""
    try:
        import hnswlib  # noqa: F401
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


class _Hnsw:
    """Approximate search over all ``vectors`` with an hnswlib graph; exact numpy scan where hnswlib cannot fill k."""

    def __init__(self, vectors: np.ndarray, params: HnswParams | None = None) -> None:
        import hnswlib

        self.params = params or HnswParams()
        self.n = len(vectors)
        self.vectors = vectors
        self.graph = hnswlib.Index(space="l2", dim=vectors.shape[1])
        self.graph.init_index(max_elements=max(self.n, 1), M=self.params.M,
                              ef_construction=self.params.ef_construction, random_seed=self.params.seed)
        if self.n:
            self.graph.add_items(vectors, np.arange(self.n), num_threads=self.params.build_threads)
        self._exact: _Numpy | None = None

    def exact(self) -> _Numpy:
        if self._exact is None:
            self._exact = _Numpy(self.vectors)
        return self._exact

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        self.graph.set_ef(self.params.ef(k))
        try:
            labels, d2 = self.graph.knn_query(queries, k=k, num_threads=workers)
        except RuntimeError:  # "cannot return the results in a contiguous 2D array": k close to n
            LOGGER.debug("hnsw could not return %d of %d neighbours; exact scan instead", k, self.n)
            return self.exact().query(queries, k)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32), labels.astype(np.int64)


class _HnswSubset:
    """Approximate search among the rows ``ids`` of an hnsw graph built over all rows.

    Over-fetches from the graph (twice the class's inverse frequency times k), keeps the members in graph order
    and answers the queries that did not get k members by an exact scan of the subset. Returns positions in
    ``ids``, like the other backends built on a subset.
    """

    def __init__(self, full: _Hnsw, ids: np.ndarray) -> None:
        self.full = full
        self.ids = ids
        self.n = len(ids)
        self.position = np.full(full.n, -1, np.int64)
        self.position[ids] = np.arange(self.n)
        self._exact: _Numpy | None = None
        self.n_exact_fallbacks = 0

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        fetch = min(self.full.n, int(np.ceil(2.0 * k * self.full.n / self.n)))
        d, i = self.full.query(queries, fetch, workers)
        pos = np.where(i >= 0, self.position[np.maximum(i, 0)], -1)
        member = pos >= 0
        order = np.argsort(~member, axis=1, kind="stable")[:, :k]  # members first, in ascending distance
        d, pos = np.take_along_axis(d, order, 1), np.take_along_axis(pos, order, 1)
        short = np.flatnonzero(~np.take_along_axis(member, order, 1).all(1))
        if len(short):
            if self._exact is None:
                self._exact = _Numpy(self.full.vectors[self.ids])
            d[short], pos[short] = self._exact.query(queries[short], k)
            self.n_exact_fallbacks += len(short)
        return d, pos


_BACKENDS = {"kdtree": _KDTree, "faiss": _Faiss, "numpy": _Numpy, "hnsw": _Hnsw}


def _calibrate(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3):
    """``choose_method``'s work; also returns the winners' built backends, so the index need not build them again."""
    n, d = vectors.shape
    candidates = [m for m in EXACT_METHODS if m != "faiss" or faiss_available()]
    if d > KDTREE_MAX_DIMS:
        candidates.remove("kdtree")
    if n < 2000:  # too small to matter; the KD-tree answers in microseconds
        best = "kdtree" if "kdtree" in candidates else candidates[0]
        return best, best, {}, {}
    rng = np.random.default_rng(seed)
    scale = vectors[rng.integers(0, n, min(n, 5000))].std(0) * 0.5
    queries = (vectors[rng.integers(0, n, repeats + 10)] + rng.normal(0, 1, (repeats + 10, d)) * scale).astype(np.float32)
    backends = {m: _BACKENDS[m](vectors) for m in candidates}
    single: dict[str, list[float]] = {m: [] for m in candidates}
    batch: dict[str, list[float]] = {m: [] for m in candidates}
    for r in range(rounds):  # interleaved rounds, best of each: robust to a busy machine
        for method, backend in backends.items():
            backend.query(queries[:1], 16)  # warm-up (thread pools, caches)
            t0 = time.perf_counter()
            for q in range(repeats):
                backend.query(queries[q : q + 1], 16)
            t1 = time.perf_counter()
            backend.query(queries[repeats:], 16)
            t2 = time.perf_counter()
            single[method].append((t1 - t0) * 1e3 / repeats)
            batch[method].append((t2 - t1) * 1e3)
        if r == 0:  # no more rounds for a method 3x slower than the best at both sizes (the KD-tree at 64 dims)
            fast_s, fast_b = min(v[0] for v in single.values()), min(v[0] for v in batch.values())
            for method in [m for m in backends if single[m][0] > 3 * fast_s and batch[m][0] > 3 * fast_b]:
                del backends[method]
    timings = {m: {"1 query": min(single[m]), "10 queries": min(batch[m])} for m in candidates}
    best_single = min(timings, key=lambda m: timings[m]["1 query"])
    best_batch = min(timings, key=lambda m: timings[m]["10 queries"])
    LOGGER.info("search method for %d x %d vectors: %s for one query, %s for batches (%s)", n, d, best_single,
                best_batch, ", ".join(f"{m} {t['1 query']:.2f} / {t['10 queries']:.2f} ms" for m, t in timings.items()))
    kept = {m: backends[m] for m in {best_single, best_batch}}
    return best_single, best_batch, timings, kept


def choose_method(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3) -> tuple[str, str, dict]:
    """Time the available exact methods on ``vectors`` (N, d) and return the fastest for one query and for a batch.

    Each method answers ``repeats`` single queries and one batch of 10 (a frame's worth), k=16, in ``rounds``
    interleaved rounds; each time is the best of the rounds. Queries are indexed vectors plus Gaussian noise of half
    the data's per-dimension spread: a new image's objects are not near-duplicates of indexed ones, and a KD-tree
    answers near-duplicates far faster than typical queries, so calibrating on them would favour it wrongly. Build
    time is not counted (an index is built once per open).

    Returns
    -------
    single_method : str
        The fastest for one query.
    batch_method : str
        The fastest for a batch of 10.
    timings_ms : dict
        ``{method: {"1 query": ms, "10 queries": ms}}``; empty below 2000 vectors, where nothing is timed (the
        KD-tree, or the first available method, is returned).
    """
    single, batch, timings, _ = _calibrate(vectors, repeats, seed, rounds)
    return single, batch, timings


class NeighborIndex:
    """k-NN search with class restriction and per-query image exclusion; exact unless the method is ``hnsw``.

    Parameters
    ----------
    vectors : ndarray of shape (N, d), float32
        Projected vectors, one per object; row i is object id i.
    class_id : ndarray of shape (N,), int, optional
        Detected class per object, needed for ``same_class`` searches.
    image_id : ndarray of shape (N,), int, optional
        Image per object, needed for ``exclude_image_id``.
    method : str
        ``auto``, ``kdtree``, ``faiss``, ``numpy`` (exact) or ``hnsw`` (approximate); see the module docstring.
    hnsw : HnswParams, optional
        Parameters of the ``hnsw`` method; None: the defaults.

    Attributes
    ----------
    method : str
        The method answering batches (the only one, unless ``auto`` found another faster for single queries).
    single_method : str
        The method answering one query.
    crossover : int
        Batches of at least this many queries go to ``method``, smaller ones to ``single_method``.
    timings_ms : dict
        ``auto``'s calibration (see ``choose_method``); empty otherwise.

    Raises
    ------
    ValueError
        When the arrays' lengths disagree, ``vectors`` is not 2-D, or the method is unknown or not installed.
    """

    def __init__(self, vectors: np.ndarray, class_id: np.ndarray | None = None, image_id: np.ndarray | None = None,
                 method: str = "auto", *, hnsw: HnswParams | None = None):
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
        if method == "hnsw" and not hnswlib_available():
            raise ValueError("search method 'hnsw' needs the hnswlib package (pip install hnswlib)")
        if hnsw is not None and not isinstance(hnsw, HnswParams):
            raise ValueError(f"hnsw must be an HnswParams, got {type(hnsw).__name__}")
        self.vectors = vectors
        self.class_id = None if class_id is None else np.asarray(class_id, dtype=np.int64)
        self.image_id = None if image_id is None else np.asarray(image_id, dtype=np.int64)
        self.hnsw_params = hnsw or HnswParams()
        self.timings_ms: dict[str, dict[str, float]] = {}
        self._backends: dict[str, object] = {}
        if method == "auto" and n:
            single, method, self.timings_ms, self._backends = _calibrate(vectors)
        elif method == "auto":
            single = method = "kdtree"
        else:
            single = method
        self.method, self.single_method = method, single
        self.crossover = 1
        if single != method:
            (s1, s10), (b1, b10) = ((self.timings_ms[m]["1 query"], self.timings_ms[m]["10 queries"])
                                    for m in (single, method))
            self.crossover = next((q for q in range(2, 10) if b1 + (b10 - b1) * (q - 1) / 9
                                   <= s1 + (s10 - s1) * (q - 1) / 9), 10)
        for m in {single, method}:
            if m not in self._backends and n:
                self._backends[m] = self._build(m, vectors)
        self._class_backends: dict[tuple[str, int], tuple[object, np.ndarray]] = {}
        self._max_per_image = int(np.bincount(self.image_id).max()) if self.image_id is not None and n else 0

    def _build(self, method: str, vectors: np.ndarray):
        return _Hnsw(vectors, self.hnsw_params) if method == "hnsw" else _BACKENDS[method](vectors)

    @property
    def dims(self) -> int:
        """Dimension d of the vectors."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)

    def _subset(self, class_id: int | None, n_queries: int):
        """(backend, ids): the backend for ``n_queries`` queries among all objects (ids None) or a class's."""
        method = self.method if n_queries >= self.crossover else self.single_method
        if class_id is None:
            return self._backends.get(method), None
        key = (method, class_id)
        if key not in self._class_backends:
            ids = np.flatnonzero(self.class_id == class_id)
            if not len(ids):
                backend = None
            elif method == "hnsw":  # one graph for all classes; small classes are scanned exactly
                backend = (_HnswSubset(self._backends["hnsw"], ids) if len(ids) > self.hnsw_params.exact_below
                           else _Numpy(self.vectors[ids]))
            else:
                backend = _BACKENDS[method](self.vectors[ids])
            self._class_backends[key] = (backend, ids)
        return self._class_backends[key]

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
            Threads for the KD-tree and hnsw (-1: all cores); faiss and BLAS use their own thread pools.

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
            backend, subset_ids = self._subset(None if group is None else int(group), len(rows))
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
