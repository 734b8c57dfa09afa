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
    Times the exact methods on the opened vectors (frames of 10 queries and single queries sampled from the index,
    each method in its own warmed-up block, best of 3 rounds) and keeps the fastest for frames (query images usually hold
    several objects, and the live view sends a frame's worth at once), or among those within 10% of it, the
    fastest for one query (numpy at 64 dims). One method serves every batch size: at 16-32 dims
    numpy's one-row product is faster than faiss for a single query, but switching libraries between calls cost
    more than it saves on a 2-core machine (each keeps its own copy of the vectors, so the two evict each other
    from the cache, and their thread pools compete: a faiss batch took 9.0 instead of 5.1 ms right after a numpy
    query, a numpy query 4.9 instead of 1.2 ms right after a faiss batch; 376k x 16). The KD-tree is not tried
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
        Candidate list while searching (at least the number of neighbours fetched); None: ``max(128, 4 * fetched)``.
        On the SYNTHETIC 376k index at 32-64 dims, k=16, 300 queries: ef 64 recall@16 0.974-0.984 at 0.05 ms a
        query, ef 128 0.992-0.997 at 0.07-0.08 ms (exact: 2-5 ms).
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
        return max(int(fetched), self.ef_search if self.ef_search is not None else max(128, 4 * int(fetched)))


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
        partial = (queries * np.float32(-2.0)) @ self.vectors.T  # the same values, one pass fewer over (Q, N)
        partial += self.norms
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


_BACKENDS = {"kdtree": _KDTree, "faiss": _Faiss, "numpy": _Numpy}  # exact; hnsw takes its params (NeighborIndex._build)


TIE = 0.10  # ``auto``: frame times within this fraction of the fastest count as a tie, broken by single queries


def _calibrate(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3):
    """``choose_method``'s work; also returns the winner's built backend, so the index need not build it again."""
    n, d = vectors.shape
    candidates = [m for m in EXACT_METHODS if m != "faiss" or faiss_available()]
    if d > KDTREE_MAX_DIMS:
        candidates.remove("kdtree")
    if n < 2000:  # too small to matter; the KD-tree answers in microseconds
        return ("kdtree" if "kdtree" in candidates else candidates[0]), {}, None
    rng = np.random.default_rng(seed)
    scale = vectors[rng.integers(0, n, min(n, 5000))].std(0) * 0.5
    queries = (vectors[rng.integers(0, n, repeats + 10)] + rng.normal(0, 1, (repeats + 10, d)) * scale).astype(np.float32)
    backends = {}
    batch: dict[str, list[float]] = {}
    single: dict[str, list[float]] = {}
    # each method in its own block after two warm-up frames: alternating libraries slows each down (module docstring)
    for method in sorted(candidates, key=lambda m: m == "kdtree"):  # the KD-tree last: it may stop after one frame
        backend = backends[method] = _BACKENDS[method](vectors)
        batch[method], single[method] = [], []
        for _ in range(2):  # (the KD-tree has no thread pool and reads only a few leaves: one query will do)
            backend.query(queries[:1] if method == "kdtree" else queries[repeats:], 16)
        for r in range(rounds):
            t0 = time.perf_counter()
            backend.query(queries[repeats:], 16)
            batch[method].append((time.perf_counter() - t0) * 1e3)
            if r == 0 and batch[method][0] > 3 * min(min(b) for b in batch.values()):
                break  # 3x slower than the best for frames (the KD-tree above 32 dims): no contender
            t0 = time.perf_counter()
            for q in range(repeats):
                backend.query(queries[q : q + 1], 16)
            single[method].append((time.perf_counter() - t0) * 1e3 / repeats)
    timings = {m: {"10 queries": min(batch[m]), "1 query": min(single[m], default=float("inf"))} for m in candidates}
    fastest = min(t["10 queries"] for t in timings.values())
    tied = [m for m in candidates if timings[m]["10 queries"] <= (1 + TIE) * fastest]
    best = min(tied, key=lambda m: timings[m]["1 query"])
    for _ in range(2):  # its vectors back into the cache and its threads awake, after the others' turns
        backends[best].query(queries[repeats:], 16)
    LOGGER.info("search method for %d x %d vectors: %s (10 queries / 1 query: %s)", n, d, best,
                ", ".join(f"{m} {t['10 queries']:.2f} / {t['1 query']:.2f} ms" for m, t in timings.items()))
    return best, timings, backends[best]


def choose_method(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3) -> tuple[str, dict]:
    """Time the available exact methods on ``vectors`` (N, d) and return the fastest for a frame of 10 queries,
    or among those within ``TIE`` (10%) of it, the fastest for one query.

    Each method, in its own block after two warm-up frames, answers a batch of 10 (a frame's worth) and ``repeats``
    single queries, k=16, ``rounds`` times; each time is the best of the rounds. Queries are indexed vectors plus Gaussian
    noise of half the data's per-dimension spread: a new image's objects are not near-duplicates of indexed ones,
    and a KD-tree answers near-duplicates far faster than typical queries, so calibrating on them would favour it
    wrongly. Build time is not counted (an index is built once per open). One method serves all batch sizes (see
    the module docstring). On the SYNTHETIC 376k index this picks faiss at 16-32 dims (frames 1.6-2x faster than
    numpy, single queries 1.3-1.7x slower) and numpy from 64 dims (both faster, frames by only 5-15% at 64).

    Returns
    -------
    method : str
    timings_ms : dict
        ``{method: {"10 queries": ms, "1 query": ms}}`` (``inf`` for one query where a method was dropped after
        its first frame, 3x slower than the best); empty below 2000 vectors, where nothing is timed (the KD-tree,
        or the first available method, is returned).
    """
    method, timings, _ = _calibrate(vectors, repeats, seed, rounds)
    return method, timings


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
        The method in use (``auto`` resolved).
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
        backend = None
        if method == "auto":
            method, self.timings_ms, backend = _calibrate(vectors) if n else ("kdtree", {}, None)
        self.method = method
        self._backend = backend if backend is not None or not n else self._build(method, vectors)
        self._class_backends: dict[int, tuple[object, np.ndarray]] = {}
        self._max_per_image = int(np.bincount(self.image_id).max()) if self.image_id is not None and n else 0

    def _build(self, method: str, vectors: np.ndarray):
        return _Hnsw(vectors, self.hnsw_params) if method == "hnsw" else _BACKENDS[method](vectors)

    @property
    def dims(self) -> int:
        """Dimension d of the vectors."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)

    def _subset(self, class_id: int | None):
        """(backend, ids): the backend among all objects (ids None) or among a class's objects."""
        if class_id is None:
            return self._backend, None
        if class_id not in self._class_backends:
            ids = np.flatnonzero(self.class_id == class_id)
            if not len(ids):
                backend = None
            elif self.method == "hnsw":  # one graph for all classes; small classes are scanned exactly
                backend = (_HnswSubset(self._backend, ids) if len(ids) > self.hnsw_params.exact_below
                           else _Numpy(self.vectors[ids]))
            else:
                backend = _BACKENDS[self.method](self.vectors[ids])
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
