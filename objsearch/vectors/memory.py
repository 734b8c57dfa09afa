"""The in-memory vector store: exact k-NN (KD-tree, faiss, numpy) and one approximate method (hnsw), on stable ids.

``MemoryVectorStore.search`` returns ``Hits``: ``distances (Q, k)`` ascending (Euclidean) and ``ids (Q, k)`` (the
stable int64 object ids given to ``add``, never row numbers), padded with ``inf`` and ``-1`` when fewer than k
neighbours qualify. Options restrict neighbours to a class and exclude objects of a given image.

Objects are added and removed while the store lives. The store keeps its arrays (ids, vectors, class and image per
object) compact and rebuilds what a method needs lazily, at the first search after a change: the KD-tree is built
again, numpy's norms are recomputed, faiss' ``IndexFlatL2`` only adds the new vectors (and is copied again after a
removal), and the hnsw graph is changed in place (``add_items`` with the ids as labels, ``mark_deleted`` for
removals: no rebuild). Per-class structures are dropped on every change. Removed objects are never returned.

Exact methods (all return the same neighbours; ties aside):

``kdtree``
    scipy's ``cKDTree`` (what the original apps used, via ofxKDTree). Fastest at low dimensions; its cost grows
    steeply with the dimension (the "curse of dimensionality", Weber et al., VLDB 1998).
``faiss``
    faiss ``IndexFlatL2`` (exhaustive SIMD/BLAS scan, faiss-cpu from PyPI).
``numpy``
    Brute force with one BLAS matrix product and ``argpartition``; needs nothing beyond numpy.
``auto`` (default)
    Times the exact methods on the store's vectors (frames of 10 queries and single queries sampled from the store,
    each method in its own warmed-up block, best of 3 rounds) and keeps the fastest for frames (query images usually
    hold several objects, and the live view sends a frame's worth at once), or among those within 10% of it, the
    fastest for one query (numpy at 64 dims). One method serves every batch size: at 16-32 dims
    numpy's one-row product is faster than faiss for a single query, but switching libraries between calls cost
    more than it saves on a 2-core machine (each keeps its own copy of the vectors, so the two evict each other
    from the cache, and their thread pools compete: a faiss batch took 9.0 instead of 5.1 ms right after a numpy
    query, a numpy query 4.9 instead of 1.2 ms right after a faiss batch; 376k x 16). The KD-tree is not tried
    above ``KDTREE_MAX_DIMS`` dimensions, where it measured 10-100x slower than a scan (``tools/bench_search.py``)
    and building it alone would cost seconds. ``auto`` never picks an approximate method. It calibrates when the
    store is made, and again at the first search after the number of objects crossed 2000 or doubled or halved
    since (a store that starts empty and is filled by ``add`` does not keep the small-store choice).

Approximate method (never chosen by ``auto``):

``hnsw``
    hnswlib's hierarchical navigable small-world graph (Malkov & Yashunin, TPAMI 2018), parameters in
    ``HnswParams``. Much faster per query on large stores, at the price of building the graph (tens of seconds for
    376k objects; ``hnsw_cache`` saves it so that later opens load it instead) and of missing a few true
    neighbours (recall@16 against exact is printed by ``tools/bench_search.py``). Filters are honoured exactly:
    class restriction over-fetches from the one graph and keeps the class's members, falling back to an exact scan
    of the class for the rare query that does not get k of them (classes of at most ``HnswParams.exact_below``
    objects are always scanned exactly: that is fast and over-fetching for them would not be); image exclusion
    over-fetches as the exact methods do (k plus the most objects of any one image), so it always fills k when k
    objects qualify.

The hnsw graph cache (``hnsw_cache``)
    A file written by hnswlib's ``save_index``, with a JSON sidecar (``<file>.json``) recording the format, the
    graph's dims, ``M``, ``ef_construction`` and ``seed``, the size and modification time of the graph file it
    describes, a SHA-256 digest of the sorted live ids, and the labels marked deleted in the graph. On opening, a
    cache whose sidecar matches is loaded and reconciled with the given objects: ids it lacks are added, live ids
    not given are marked deleted, and a sample of shared ids is checked to hold the same vectors (a different
    projection under the same dims rebuilds). A missing or mismatched cache is rebuilt. The cache is written back
    (temporary file + ``os.replace``, graph first, then the sidecar, so a crash in between leaves a sidecar that no
    longer matches the graph's size and time, which rebuilds) when the graph changed on opening and on ``close``;
    a folder that is not writable keeps the graph in memory only (logged). Measured with ``tools/bench_search.py
    --synthetic 376459 --dims 32 --only-hnsw-cache`` on the 2-core machine while others loaded it (load average
    7-10): building and saving the graph took 275 s (23-36 s when the machine is quiet), opening from the cache
    0.9 s (104 MB with its sidecar), recall@16 1.000 for 300 queries; at 50k x 32 opening with 1% of the ids gone
    took 0.13 s and with them back 0.12 s (a label that returns with its old vector is only unmarked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from objsearch.types import Hits

LOGGER = logging.getLogger(__name__)

SEARCH_METHODS = ("auto", "kdtree", "faiss", "numpy", "hnsw")
EXACT_METHODS = ("kdtree", "faiss", "numpy")
APPROXIMATE_METHODS = ("hnsw",)
KDTREE_MAX_DIMS = 64
CACHE_FORMAT = "objsearch-hnsw/1"


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


# ------------------------------------------------------------------------------------------- exact backends
# Each answers query(queries (Q, d), k, workers) -> (distances (Q, k) float32, positions (Q, k) int64, -1 padded),
# positions being rows of the vectors it was built on.
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

        self.n = 0
        self.index = faiss.IndexFlatL2(vectors.shape[1])
        self.extend(vectors)

    def extend(self, vectors: np.ndarray) -> None:
        """Append rows (faiss copies them)."""
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.n += len(vectors)

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


_BACKENDS = {"kdtree": _KDTree, "faiss": _Faiss, "numpy": _Numpy}  # exact; hnsw is built by the store


TIE = 0.10  # ``auto``: frame times within this fraction of the fastest count as a tie, broken by single queries


def _calibrate(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3):
    """Time the available exact methods on ``vectors`` and return the fastest for a frame of 10 queries, or among
    those within ``TIE`` (10%) of it, the fastest for one query, with its backend already built over ``vectors``.

    Each method, in its own block after two warm-up frames, answers a batch of 10 (a frame's worth) and ``repeats``
    single queries, k=16, ``rounds`` times; each time is the best of the rounds. Queries are stored vectors plus
    Gaussian noise of half the data's per-dimension spread: a new image's objects are not near-duplicates of stored
    ones, and a KD-tree answers near-duplicates far faster than typical queries, so calibrating on them would favour
    it wrongly. Build time is not counted (a store is built once per open). One method serves all batch sizes (see
    the module docstring). On the SYNTHETIC 376k index this picks faiss at 16-32 dims (frames 1.6-2x faster than
    numpy, single queries 1.3-1.7x slower) and numpy from 64 dims (both faster, frames by only 5-15% at 64).

    Parameters
    ----------
    vectors : ndarray of shape (N, d), float32

    Returns
    -------
    method : str
    timings_ms : dict
        ``{method: {"10 queries": ms, "1 query": ms}}`` (``inf`` for one query where a method was dropped after
        its first frame, 3x slower than the best); empty below 2000 vectors, where nothing is timed (the KD-tree,
        or the first available method, is returned).
    backend : object or None
        The chosen method's structure over ``vectors``; None when nothing was timed.
    """
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


# ------------------------------------------------------------------------------------------------------ hnsw
def ids_digest(ids: np.ndarray) -> str:
    """SHA-256 (hex) of the sorted ids as little-endian int64: the same for the same set in any order."""
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).astype("<i8").tobytes()).hexdigest()


class _HnswGraph:
    """An hnswlib graph whose labels are the store's ids, with the labels it holds marked deleted."""

    def __init__(self, dims: int, params: HnswParams, graph=None, deleted: set[int] | None = None) -> None:
        import hnswlib

        self.dims = dims
        self.params = params
        if graph is None:
            graph = hnswlib.Index(space="l2", dim=dims)
            graph.init_index(max_elements=1, M=params.M, ef_construction=params.ef_construction,
                             random_seed=params.seed)
        self.graph = graph
        self.deleted = set() if deleted is None else deleted

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Insert ``vectors`` (n, dims) under the labels ``ids`` (n,); a label marked deleted is revived in place."""
        if not len(ids):
            return
        if self.deleted:  # labels marked deleted that come back with the same vector: unmarked, not re-inserted
            ids = np.asarray(ids, np.int64)
            back = np.flatnonzero(np.isin(ids, np.fromiter(self.deleted, np.int64, len(self.deleted))))
            if len(back):
                for label in ids[back]:
                    self.graph.unmark_deleted(int(label))
                    self.deleted.discard(int(label))
                same = np.all(self.graph.get_items(ids[back]) == vectors[back], axis=1)
                LOGGER.debug("hnsw: %d deleted labels revived, %d of them with a new vector", len(back),
                             int((~same).sum()))
                fresh = np.ones(len(ids), bool)
                fresh[back[same]] = False  # the others are updated in place by add_items (hnswlib's updatePoint)
                ids, vectors = ids[fresh], vectors[fresh]
                if not len(ids):
                    return
        needed = self.graph.get_current_count() + len(ids)  # an upper bound: updated labels keep their slot
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, int(self.graph.get_max_elements() * 1.25)))
        self.graph.add_items(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64),
                             num_threads=self.params.build_threads)

    def remove(self, ids: np.ndarray) -> None:
        """Mark the live labels ``ids`` deleted (hnswlib skips them in every later search)."""
        for label in ids:
            self.graph.mark_deleted(int(label))
            self.deleted.add(int(label))

    def live_ids(self) -> np.ndarray:
        labels = np.asarray(self.graph.get_ids_list(), np.int64)
        if self.deleted:
            labels = labels[~np.isin(labels, np.fromiter(self.deleted, np.int64, len(self.deleted)))]
        return labels

    def knn(self, queries: np.ndarray, k: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances (Q, k), labels (Q, k) int64); RuntimeError when hnswlib cannot find k live labels."""
        self.graph.set_ef(self.params.ef(k))
        labels, d2 = self.graph.knn_query(queries, k=k, num_threads=workers)
        return d2, labels.astype(np.int64)

    # ----------------------------------------------------------------------------------------------- cache
    def header(self, live: np.ndarray) -> dict:
        return {"format": CACHE_FORMAT, "space": "l2", "dims": self.dims, "M": self.params.M,
                "ef_construction": self.params.ef_construction, "seed": self.params.seed,
                "count": int(len(live)), "ids_digest": ids_digest(live), "deleted": sorted(self.deleted)}

    def save(self, path: Path, live: np.ndarray) -> bool:
        """Write the graph to ``path`` and its sidecar, each atomically; False (logged) where that is not possible."""
        sidecar = _sidecar(path)
        if not os.access(path.parent, os.W_OK):
            LOGGER.info("hnsw cache folder %s is not writable: the graph stays in memory only", path.parent)
            return False
        tmp_graph = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        try:
            self.graph.save_index(str(tmp_graph))
            stat = tmp_graph.stat()
            header = {**self.header(live), "graph_bytes": stat.st_size, "graph_mtime_ns": stat.st_mtime_ns}
            tmp_sidecar.write_text(json.dumps(header))
            os.replace(tmp_graph, path)  # graph first: a crash before the sidecar leaves a mismatch, so a rebuild
            os.replace(tmp_sidecar, sidecar)
        except (OSError, RuntimeError) as exc:
            LOGGER.warning("could not save the hnsw graph to %s (%s): it stays in memory only", path, exc)
            for tmp in (tmp_graph, tmp_sidecar):
                tmp.unlink(missing_ok=True)
            return False
        LOGGER.info("saved the hnsw graph of %d objects to %s", len(live), path)
        return True

    @classmethod
    def load(cls, path: Path, dims: int, params: HnswParams) -> tuple[_HnswGraph | None, dict, str]:
        """(graph, header, "") from a matching cache, or (None, {}, why not)."""
        import hnswlib

        sidecar = _sidecar(path)
        if not path.is_file():
            return None, {}, f"no graph file {path}"
        try:
            header = json.loads(sidecar.read_text())
            stat = path.stat()
        except (OSError, ValueError) as exc:
            return None, {}, f"unreadable sidecar {sidecar} ({exc})"
        expected = {"format": CACHE_FORMAT, "space": "l2", "dims": dims, "M": params.M,
                    "ef_construction": params.ef_construction, "seed": params.seed,
                    "graph_bytes": stat.st_size, "graph_mtime_ns": stat.st_mtime_ns}
        wrong = [f"{key} {header.get(key)!r} (expected {value!r})" for key, value in expected.items()
                 if header.get(key) != value]
        if wrong:
            return None, {}, "the cache does not match: " + ", ".join(wrong)
        graph = hnswlib.Index(space="l2", dim=dims)
        try:
            graph.load_index(str(path))
        except (RuntimeError, OSError) as exc:
            return None, {}, f"hnswlib could not load {path} ({exc})"
        return cls(dims, params, graph, {int(i) for i in header.get("deleted", [])}), header, ""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


class _HnswAll:
    """Approximate search among all live objects; returns rows of the store (exact scan where hnswlib cannot fill k)."""

    def __init__(self, graph: _HnswGraph, vectors: np.ndarray, rows_of) -> None:
        self.graph = graph
        self.vectors = vectors
        self.n = len(vectors)
        self.rows_of = rows_of
        self._exact: _Numpy | None = None

    def exact(self) -> _Numpy:
        if self._exact is None:
            self._exact = _Numpy(self.vectors)
        return self._exact

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        try:
            d2, labels = self.graph.knn(queries, k, workers)
        except RuntimeError:  # "cannot return the results in a contiguous 2D array": k close to the live count
            LOGGER.debug("hnsw could not return %d of %d neighbours; exact scan instead", k, self.n)
            return self.exact().query(queries, k)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32), self.rows_of(labels)


class _HnswSubset:
    """Approximate search among the store rows ``rows`` with the graph over all rows.

    Over-fetches from the graph (twice the subset's inverse frequency times k), keeps the members in graph order
    and answers the queries that did not get k members by an exact scan of the subset. Returns positions in
    ``rows``, like the other backends built on a subset.
    """

    def __init__(self, full: _HnswAll, rows: np.ndarray) -> None:
        self.full = full
        self.rows = rows
        self.n = len(rows)
        self.position = np.full(full.n, -1, np.int64)
        self.position[rows] = np.arange(self.n)
        self._exact: _Numpy | None = None

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
                self._exact = _Numpy(self.full.vectors[self.rows])
            d[short], pos[short] = self._exact.query(queries[short], k)
        return d, pos


# ----------------------------------------------------------------------------------------------------- store
def check_query(vectors, k, class_id, exclude_image_id, dims: int):
    """What every store's ``search`` checks: (queries float32 C-contiguous (Q, dims), k int, class_id int64 (Q,) or
    None, exclude_image_id int64 (Q,) or None); a scalar filter applies to every query.

    Raises
    ------
    ValueError
        For a query that is not (Q, dims) or not finite, a ``k`` that is not an int >= 1, or a filter of the wrong
        shape.
    """
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dims:
        raise ValueError(f"query vectors must have shape (Q, {dims}), got {queries.shape}")
    if not np.isfinite(queries).all():
        raise ValueError("query vectors must be finite, got NaN or infinity")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    q = len(queries)
    return (queries, int(k), _per_query("class_id", class_id, q),
            _per_query("exclude_image_id", exclude_image_id, q))


def check_new(ids, vectors, class_id, image_id, dims: int):
    """What every store's ``add`` checks: (ids int64 (n,), vectors float32 C-contiguous (n, dims), class_id int64
    (n,), image_id int64 (n,)), ``vectors`` copied only when it is not float32 C-contiguous already.

    Raises
    ------
    ValueError
        For a wrong shape or dtype, a non-finite vector, a negative id or a repeated id (the message names them).
    """
    ids = int_array("ids", ids)
    n = len(ids)
    vectors = np.asarray(vectors)
    if vectors.size == 0 and n == 0:
        vectors = vectors.reshape(0, dims)
    if vectors.ndim != 2 or vectors.shape != (n, dims):
        raise ValueError(f"vectors must have shape ({n}, {dims}), got {vectors.shape}")
    if vectors.dtype.kind not in "fiu":
        raise ValueError(f"vectors must be numbers, got dtype {vectors.dtype}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        bad = ids[~np.isfinite(vectors).all(1)]
        raise ValueError(f"vectors must be finite, got NaN or infinity for ids {short_list(bad)}")
    class_id = int_array("class_id", class_id, n)
    image_id = int_array("image_id", image_id, n)
    if n and ids.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 pads search results), got {short_list(ids[ids < 0])}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) < n:
        raise ValueError(f"ids must be distinct, got repeated ids {short_list(unique[counts > 1])}")
    return ids, vectors, class_id, image_id


def int_array(name: str, values, n: int | None = None) -> np.ndarray:
    """``values`` as a (n,) int64 array (any length when ``n`` is None; an empty input of any shape is (0,)).

    Raises
    ------
    ValueError
        When it is not one-dimensional, not of length ``n``, or not of an integer dtype; the message names ``name``.
    """
    arr = np.asarray(values)
    if arr.size == 0:
        arr = arr.reshape(0).astype(np.int64)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"{name} must have shape ({'n' if n is None else n},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _per_query(name: str, value, q: int) -> np.ndarray | None:
    """None, an int or a (Q,) int array -> None or (Q,) int64."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be None, an int or an int array of shape ({q},), got dtype {arr.dtype}")
    if arr.ndim == 0:
        return np.full(q, int(arr), np.int64)
    if arr.shape != (q,):
        raise ValueError(f"{name} must be None, an int or an array of shape ({q},), got shape {arr.shape}")
    return arr.astype(np.int64)


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
        ``auto``'s latest calibration (see ``_calibrate``); empty otherwise.

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
        self._graph: _HnswGraph | None = None
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
            raise ValueError(f"ids must not be in the store already, got {len(present)} present: {short_list(present)}")
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
            self.backend, timings, backend = _calibrate(self._vectors)
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
            self._whole = _HnswAll(self._graph, self._vectors, self._rows_of)
        elif (self.backend == "faiss" and isinstance(self._whole, _Faiss) and not self._removed_since_build
              and self._whole.n <= n):
            self._whole.extend(self._vectors[self._whole.n:])  # only appended since it was built
        else:
            self._whole = _BACKENDS[self.backend](self._vectors) if n else None
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
                self._classes[class_id] = (_HnswSubset(self._whole, rows) if len(rows) > self.hnsw_params.exact_below
                                           else _Numpy(self._vectors[rows]), rows)
            else:
                self._classes[class_id] = (_BACKENDS[self.backend](self._vectors[rows]), rows)
        return self._classes[class_id]

    def _open_graph(self) -> None:
        """Load the hnsw graph from the cache and reconcile it with the objects, or build it; save it if changed."""
        t0 = time.perf_counter()
        graph, why = None, "no cache path given"
        if self.hnsw_cache is not None:
            graph, header, why = _HnswGraph.load(self.hnsw_cache, self.dims, self.hnsw_params)
            if graph is not None:
                graph, why = self._reconcile(graph, header)
        if graph is not None:
            self._graph = graph
            LOGGER.info("hnsw graph loaded from %s in %.2f s", self.hnsw_cache, time.perf_counter() - t0)
        else:
            if self.hnsw_cache is not None:
                LOGGER.info("building the hnsw graph: %s", why)
            self._graph = _HnswGraph(self.dims, self.hnsw_params)
            self._graph.add(self._vectors, self._ids)
            self._graph_unsaved = True
            LOGGER.info("hnsw graph of %d x %d built in %.2f s", len(self), self.dims, time.perf_counter() - t0)
        if self._graph_unsaved and self.hnsw_cache is not None:
            if self._graph.save(self.hnsw_cache, self._ids):
                self._graph_unsaved = False

    def _reconcile(self, graph: _HnswGraph, header: dict, sample: int = 256):
        """Make a loaded graph hold exactly the store's ids: (graph, "") or (None, why it cannot be used)."""
        if header.get("ids_digest") == ids_digest(self._ids):
            live = self._ids
            to_add = np.zeros(0, np.int64)
            to_remove = np.zeros(0, np.int64)
        else:
            live = graph.live_ids()
            to_add = np.flatnonzero(~np.isin(self._ids, live))
            to_remove = np.setdiff1d(live, self._ids)
        shared_rows = np.flatnonzero(np.isin(self._ids, live)) if len(live) != len(self._ids) else np.arange(len(self))
        if len(shared_rows):  # the same ids must still hold the same vectors (a new projection would not)
            picked = np.random.default_rng(0).choice(shared_rows, min(sample, len(shared_rows)), replace=False)
            if not np.array_equal(graph.graph.get_items(self._ids[picked]), self._vectors[picked]):
                return None, "the cached graph holds other vectors for the same ids"
        if len(to_add) or len(to_remove):
            graph.add(self._vectors[to_add], self._ids[to_add])
            graph.remove(to_remove)
            self._graph_unsaved = True
            LOGGER.info("hnsw cache reconciled: %d objects added, %d removed", len(to_add), len(to_remove))
        return graph, ""


def short_list(values: np.ndarray, limit: int = 10) -> str:
    """The first ``limit`` values, as a short list for a message."""
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    return str(values[:limit])[:-1] + (f", ... ({len(values)} in all)]" if len(values) > limit else "]")
