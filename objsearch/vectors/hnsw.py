"""The approximate ``hnsw`` method of the in-memory store: hnswlib's graph, its parameters and its cache file.

hnswlib's hierarchical navigable small-world graph (Malkov & Yashunin, TPAMI 2018), parameters in ``HnswParams``.
Much faster per query on large stores, at the price of building the graph (tens of seconds for 376k objects; the
cache saves it so that later opens load it instead) and of missing a few true neighbours (recall@16 against exact is
printed by ``tools/bench_search.py``; measurements in docs/scale.md). The graph's labels are the store's ids; a
removal marks the label deleted (no rebuild) and an add inserts in place. Filters are honoured exactly: class
restriction over-fetches from the one graph (``HnswSubset``) and keeps the class's members, falling back to an exact
scan of the class for the rare query that does not get k of them (classes of at most ``HnswParams.exact_below``
objects are always scanned exactly).

The graph cache (``hnsw_cache``)
    A file written by hnswlib's ``save_index``, with a JSON sidecar (``<file>.json``) recording the format, the
    graph's dims, ``M``, ``ef_construction`` and ``seed``, the size and modification time of the graph file it
    describes, a SHA-256 digest of the sorted live ids, and the labels marked deleted in the graph. On opening
    (``open_graph``), a cache whose sidecar matches is loaded and reconciled with the given objects: ids it lacks are
    added, live ids not given are marked deleted, and a sample of shared ids is checked to hold the same vectors (a
    different projection under the same dims rebuilds). A missing or mismatched cache is rebuilt. The cache is
    written back (temporary file + ``os.replace``, graph first, then the sidecar, so a crash in between leaves a
    sidecar that no longer matches the graph's size and time, which rebuilds) when the graph changed on opening and
    when the store closes; a folder that is not writable keeps the graph in memory only (logged).
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

from objsearch.vectors.exact import NumpyIndex

LOGGER = logging.getLogger(__name__)

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
        Candidate list while searching (at least the number of neighbours fetched); None: ``max(128, 4 * fetched)``
        (recall and speed at 64 and 128: docs/scale.md).
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


def hnswlib_available() -> bool:
    """Whether the hnswlib package imports."""
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


def ids_digest(ids: np.ndarray) -> str:
    """SHA-256 (hex) of the sorted ids as little-endian int64: the same for the same set in any order."""
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).astype("<i8").tobytes()).hexdigest()


class HnswGraph:
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
        """The labels in the graph not marked deleted: (n,) int64."""
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
        """The sidecar's fields for a graph holding the live ids ``live`` (graph file size and time added by
        ``save``)."""
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
    def load(cls, path: Path, dims: int, params: HnswParams) -> tuple[HnswGraph | None, dict, str]:
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
    """The JSON sidecar of the graph file ``path``: ``<path>.json``."""
    return path.with_name(path.name + ".json")


class HnswAll:
    """Approximate search among all live objects; returns rows of the store (exact scan where hnswlib cannot fill k)."""

    def __init__(self, graph: HnswGraph, vectors: np.ndarray, rows_of) -> None:
        self.graph = graph
        self.vectors = vectors
        self.n = len(vectors)
        self.rows_of = rows_of
        self._exact: NumpyIndex | None = None

    def exact(self) -> NumpyIndex:
        """An exact scan over the same vectors, made on first use."""
        if self._exact is None:
            self._exact = NumpyIndex(self.vectors)
        return self._exact

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        try:
            d2, labels = self.graph.knn(queries, k, workers)
        except RuntimeError:  # "cannot return the results in a contiguous 2D array": k close to the live count
            LOGGER.debug("hnsw could not return %d of %d neighbours; exact scan instead", k, self.n)
            return self.exact().query(queries, k)
        return np.sqrt(np.maximum(d2, 0)).astype(np.float32), self.rows_of(labels)


class HnswSubset:
    """Approximate search among the store rows ``rows`` with the graph over all rows.

    Over-fetches from the graph (twice the subset's inverse frequency times k), keeps the members in graph order
    and answers the queries that did not get k members by an exact scan of the subset. Returns positions in
    ``rows``, like the other backends built on a subset.
    """

    def __init__(self, full: HnswAll, rows: np.ndarray) -> None:
        self.full = full
        self.rows = rows
        self.n = len(rows)
        self.position = np.full(full.n, -1, np.int64)
        self.position[rows] = np.arange(self.n)
        self._exact: NumpyIndex | None = None

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
                self._exact = NumpyIndex(self.full.vectors[self.rows])
            d[short], pos[short] = self._exact.query(queries[short], k)
        return d, pos


def open_graph(cache: Path | None, dims: int, params: HnswParams, ids: np.ndarray,
               vectors: np.ndarray) -> tuple[HnswGraph, bool]:
    """The graph of ``vectors`` (n, dims) float32 under the labels ``ids`` (n,) int64: loaded from ``cache`` and
    reconciled with the ids (``reconcile``), or built; saved to ``cache`` when it changed.

    Returns
    -------
    graph : HnswGraph
    unsaved : bool
        Whether the graph differs from what ``cache`` holds (no cache, or a folder that cannot be written).
    """
    t0 = time.perf_counter()
    graph, why, unsaved = None, "no cache path given", False
    if cache is not None:
        graph, header, why = HnswGraph.load(cache, dims, params)
        if graph is not None:
            graph, why, unsaved = reconcile(graph, header, ids, vectors)
    if graph is not None:
        LOGGER.info("hnsw graph loaded from %s in %.2f s", cache, time.perf_counter() - t0)
    else:
        if cache is not None:
            LOGGER.info("building the hnsw graph: %s", why)
        graph = HnswGraph(dims, params)
        graph.add(vectors, ids)
        unsaved = True
        LOGGER.info("hnsw graph of %d x %d built in %.2f s", len(ids), dims, time.perf_counter() - t0)
    if unsaved and cache is not None and graph.save(cache, ids):
        unsaved = False
    return graph, unsaved


def reconcile(graph: HnswGraph, header: dict, ids: np.ndarray, vectors: np.ndarray,
              sample: int = 256) -> tuple[HnswGraph | None, str, bool]:
    """Make a loaded graph hold exactly ``ids`` (n,) with ``vectors`` (n, dims): ids it lacks are added, live labels
    not among them are marked deleted, and ``sample`` shared ids are checked to hold the same vectors.

    Returns
    -------
    (graph, "", changed), or (None, why it cannot be used, False)
    """
    if header.get("ids_digest") == ids_digest(ids):
        live = ids
        to_add = np.zeros(0, np.int64)
        to_remove = np.zeros(0, np.int64)
    else:
        live = graph.live_ids()
        to_add = np.flatnonzero(~np.isin(ids, live))
        to_remove = np.setdiff1d(live, ids)
    shared_rows = np.flatnonzero(np.isin(ids, live)) if len(live) != len(ids) else np.arange(len(ids))
    if len(shared_rows):  # the same ids must still hold the same vectors (a new projection would not)
        picked = np.random.default_rng(0).choice(shared_rows, min(sample, len(shared_rows)), replace=False)
        if not np.array_equal(graph.graph.get_items(ids[picked]), vectors[picked]):
            return None, "the cached graph holds other vectors for the same ids", False
    changed = bool(len(to_add) or len(to_remove))
    if changed:
        graph.add(vectors[to_add], ids[to_add])
        graph.remove(to_remove)
        LOGGER.info("hnsw cache reconciled: %d objects added, %d removed", len(to_add), len(to_remove))
    return graph, "", changed
