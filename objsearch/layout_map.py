"""A map of the index: its object (or whole-image) vectors laid out in 2-D, kept beside the index and kept current.

**Layout.** t-SNE (openTSNE: FFT-accelerated interpolation, Linderman et al. 2019; Poličar et al., "openTSNE",
JSS 2024) of a random subsample of at most ``max_landmarks`` items, then every other item placed at the mean position
of its ``PLACE_K`` nearest laid-out items in the vector space: the subsample-then-interpolate scheme of Kobak & Berens,
"The art of using t-SNE for single-cell transcriptomics" (Nat. Commun. 2019), which is what makes a 376k-point map
affordable on two cores (a full t-SNE or UMAP of 376k points takes tens of minutes there; docs/watch-duplicates-map.md).
The computation runs in a child process (``python -m objsearch.layout_map``, at a lower priority), so searches never
wait for it; it prints its progress as JSON lines.

**Kept with the index** in a sidecar file ``INDEX.h5.map-<kind>-d<dims>.npz`` (numpy arrays, read without pickle),
written atomically (a temporary file renamed over it) by whoever computed it. It is keyed by the index's uuid and
holds a position per *stable id*: ids are never reused and an id's vector never changes, so a map stays true for every
id it holds whatever the index went through since (add, remove, sync, compact). Why a sidecar and not a group in the
index: the index has one writer at a time under a lock, and a map written by the server (a reader) would have to take
that lock for the duration and bump the generation that every reader follows; losing the sidecar costs a recompute.

**Refreshed when the index changes**: removed ids are dropped, new ids are placed like the non-subsampled ones
(``place``); when more than ``RELAYOUT_FRACTION`` of the points were placed after the layout, a new layout starts in
the background (the old map is served until it is done).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

LOGGER = logging.getLogger(__name__)

MAP_FORMAT = 1
KINDS = ("objects", "images")
DEFAULT_LANDMARKS = 10_000
PLACE_K = 10
RELAYOUT_FRACTION = 0.2
PLACE_BATCH = 16_384


class MapError(Exception):
    """A map that cannot be computed or read (the message says why)."""


@dataclass
class IndexMap:
    """2-D positions of an index's items.

    kind : ``objects`` (ids are object ids) or ``images`` (media ids).
    dims : the projection dimension the layout was computed from.
    index_uuid : the index it belongs to.
    ids : ndarray of shape (N,), int64, increasing.
    xy : ndarray of shape (N, 2), float32, arbitrary units (t-SNE's), centred near 0.
    laid_out : ndarray of shape (N,), bool: part of the last layout (False: placed after it).
    n_landmarks : items the t-SNE itself ran on.
    seed : the subsample's and t-SNE's seed.
    layout_s : seconds the layout took.
    """

    kind: str
    dims: int
    index_uuid: str
    ids: np.ndarray
    xy: np.ndarray
    laid_out: np.ndarray
    n_landmarks: int
    seed: int
    layout_s: float

    @property
    def placed_fraction(self) -> float:
        return float(1.0 - self.laid_out.mean()) if len(self.ids) else 0.0


def sidecar_path(index: str | Path, kind: str, dims: int) -> Path:
    """Where the map of ``index``'s ``kind`` vectors at ``dims`` lives: ``INDEX.h5.map-<kind>-d<dims>.npz``."""
    return Path(f"{index}.map-{kind}-d{int(dims)}.npz")


def save_map(path: str | Path, m: IndexMap) -> None:
    """Write ``m`` to ``path`` atomically (a temporary file in the same folder, then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    meta = {"format": MAP_FORMAT, "kind": m.kind, "dims": int(m.dims), "index_uuid": m.index_uuid,
            "n_landmarks": int(m.n_landmarks), "seed": int(m.seed), "layout_s": float(m.layout_s)}
    try:
        with open(tmp, "wb") as out:
            np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), ids=m.ids.astype(np.int64),
                     xy=m.xy.astype(np.float32), laid_out=m.laid_out.astype(np.uint8))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_map(path: str | Path, *, index_uuid: str, kind: str, dims: int) -> IndexMap | None:
    """The map at ``path`` when it belongs to this index, kind and dims and is sound (finite positions, increasing
    ids, matching lengths); None when it is missing, of another index, or damaged (a warning says which)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            ids, xy, laid_out = z["ids"], z["xy"], z["laid_out"]
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        LOGGER.warning("ignoring the map %s: %s", path, exc)
        return None
    if not isinstance(meta, dict) or meta.get("format") != MAP_FORMAT:
        LOGGER.warning("ignoring the map %s: not format %d", path, MAP_FORMAT)
        return None
    if meta.get("index_uuid") != index_uuid or meta.get("kind") != kind or meta.get("dims") != int(dims):
        return None
    n = len(ids)
    if (ids.dtype != np.int64 or ids.ndim != 1 or xy.dtype != np.float32 or xy.shape != (n, 2)
            or laid_out.shape != (n,) or not np.all(np.isfinite(xy)) or (n > 1 and np.any(np.diff(ids) <= 0))):
        LOGGER.warning("ignoring the map %s: its arrays are damaged", path)
        return None
    try:
        return IndexMap(kind=kind, dims=int(dims), index_uuid=index_uuid, ids=ids, xy=xy, laid_out=laid_out.astype(bool),
                        n_landmarks=int(meta.get("n_landmarks", 0)), seed=int(meta.get("seed", 0)),
                        layout_s=float(meta.get("layout_s", 0.0)))
    except (TypeError, ValueError):
        LOGGER.warning("ignoring the map %s: its metadata is damaged", path)
        return None


def place(ref_vectors: np.ndarray, ref_xy: np.ndarray, vectors: np.ndarray, k: int = PLACE_K) -> np.ndarray:
    """Positions (Q, 2) float32 of ``vectors`` (Q, d) float32: the mean position of each one's ``k`` nearest among
    ``ref_vectors`` (R, d) float32 whose positions are ``ref_xy`` (R, 2) (Kobak & Berens 2019).

    Raises
    ------
    ValueError
        When there is no reference point.
    """
    if len(ref_vectors) == 0:
        raise ValueError("cannot place points on an empty map")
    out = np.zeros((len(vectors), 2), np.float32)
    if len(vectors) == 0:
        return out
    k = min(int(k), len(ref_vectors))
    try:
        import faiss

        index = faiss.IndexFlatL2(ref_vectors.shape[1])
        index.add(np.ascontiguousarray(ref_vectors, np.float32))
        search = lambda q: index.search(np.ascontiguousarray(q, np.float32), k)[1]  # noqa: E731
    except ImportError:
        from scipy.spatial import cKDTree

        tree = cKDTree(ref_vectors)
        search = lambda q: tree.query(q, k=k)[1].reshape(len(q), k)  # noqa: E731
    for start in range(0, len(vectors), PLACE_BATCH):
        nearest = search(vectors[start:start + PLACE_BATCH])
        out[start:start + PLACE_BATCH] = ref_xy[nearest].mean(axis=1)
    return out


def compute_layout(vectors: np.ndarray, *, seed: int = 0, max_landmarks: int = DEFAULT_LANDMARKS, n_jobs: int = 1,
                   progress: Callable[[float, str], None] | None = None) -> tuple[np.ndarray, int]:
    """2-D positions (N, 2) float32 of ``vectors`` (N, d) float32, and the number of landmarks t-SNE ran on.

    t-SNE (openTSNE, perplexity min(30, (L - 1) / 3), PCA initialisation, 250 early-exaggeration and 500 further
    iterations) of ``L = min(N, max_landmarks)`` items drawn with ``seed``; the others placed by ``place``.
    ``progress(fraction in [0, 1], phase)`` is called along the way.

    Raises
    ------
    MapError
        When openTSNE is not installed.
    """
    report = progress or (lambda fraction, phase: None)
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), np.float32), 0
    rng = np.random.default_rng(seed)
    landmarks = np.sort(rng.choice(n, max_landmarks, replace=False)) if n > max_landmarks else np.arange(n)
    x = np.ascontiguousarray(vectors[landmarks], np.float64)
    if len(landmarks) < 8:  # too few for t-SNE: their first two principal components
        centred = x - x.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False) if len(x) > 1 else (None, None, np.eye(2, x.shape[1]))
        xy_l = (centred @ vt[:2].T) if vt.shape[0] >= 2 else np.zeros((len(x), 2))
    else:
        try:
            from openTSNE import TSNEEmbedding, affinity, initialization
        except ImportError as exc:
            raise MapError(f"the map needs openTSNE (pip install 'objsearch[web]'): {exc}") from None
        report(0.02, "neighbours")
        perplexity = float(min(30.0, (len(x) - 1) / 3.0))
        aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=n_jobs, random_state=seed,
                                         method="annoy" if len(x) > 1000 else "exact")
        init = initialization.pca(x, random_state=seed)
        emb = TSNEEmbedding(init, aff, negative_gradient_method="fft" if len(x) > 1000 else "bh", n_jobs=n_jobs,
                            random_state=seed)
        total = 750

        def stage(offset: int, phase: str):
            def callback(iteration: int, error: float, embedding) -> bool:
                report(0.1 + 0.8 * (offset + iteration) / total, phase)
                return False

            return callback

        report(0.1, "early exaggeration")
        emb = emb.optimize(250, exaggeration=12, momentum=0.5, callbacks=stage(0, "early exaggeration"),
                           callbacks_every_iters=25)
        emb = emb.optimize(500, momentum=0.8, callbacks=stage(250, "optimisation"), callbacks_every_iters=25)
        xy_l = np.asarray(emb)
    xy = np.zeros((n, 2), np.float32)
    xy[landmarks] = xy_l
    if len(landmarks) < n:
        report(0.92, "placing the rest")
        rest = np.setdiff1d(np.arange(n), landmarks)
        xy[rest] = place(vectors[landmarks], xy[landmarks], vectors[rest])
    report(1.0, "done")
    return xy, len(landmarks)


def catalog_vectors(catalog, kind: str, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,) int64 increasing, vectors (N, dims) float32) of ``catalog``'s objects or media items.

    Raises
    ------
    IndexFileError
        For images without whole-image vectors, or dims the index does not hold.
    """
    if kind == "images":
        return np.asarray(catalog.media_id, np.int64), catalog.image_vectors(dims)
    return np.asarray(catalog.object_id, np.int64), catalog.vectors(dims)


def layout_index(index: str | Path, kind: str = "objects", dims: int = 32, *, seed: int = 0,
                 max_landmarks: int = DEFAULT_LANDMARKS, n_jobs: int = 1,
                 progress: Callable[[float, str], None] | None = None) -> IndexMap:
    """Lay out the vectors of ``index`` and save the map beside it (``sidecar_path``); returns it.

    Raises
    ------
    IndexFileError
        When the index cannot be read, or lacks these vectors.
    MapError
        When openTSNE is not installed.
    """
    from objsearch.catalog import Catalog

    t0 = time.perf_counter()
    with Catalog(index) as catalog:
        ids, vectors = catalog_vectors(catalog, kind, dims)
        uuid = catalog.uuid
    xy, n_landmarks = compute_layout(vectors, seed=seed, max_landmarks=max_landmarks, n_jobs=n_jobs,
                                     progress=progress)
    m = IndexMap(kind=kind, dims=int(dims), index_uuid=uuid, ids=ids, xy=xy, laid_out=np.ones(len(ids), bool),
                 n_landmarks=n_landmarks, seed=seed, layout_s=time.perf_counter() - t0)
    save_map(sidecar_path(index, kind, dims), m)
    return m


def follow(m: IndexMap, ids: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray]) -> tuple[IndexMap, int, int]:
    """``m`` brought in step with the live ``ids`` (N,) int64 increasing: removed ids dropped, new ones placed among
    the kept ones (``place``); ``vectors_of(ids)`` gives the vectors (n, dims) float32 of live ids. Returns (the map,
    placed, dropped)."""
    keep = np.isin(m.ids, ids)
    new = np.setdiff1d(ids, m.ids)
    dropped = int((~keep).sum())
    if not len(new) and not dropped:
        return m, 0, 0
    ref_ids, ref_xy, ref_laid = m.ids[keep], m.xy[keep], m.laid_out[keep]
    if len(new) and len(ref_ids):
        new_xy = place(vectors_of(ref_ids), ref_xy, vectors_of(new))
    else:
        new_xy = np.zeros((len(new), 2), np.float32)
    all_ids = np.concatenate([ref_ids, new])
    order = np.argsort(all_ids, kind="stable")
    out = IndexMap(kind=m.kind, dims=m.dims, index_uuid=m.index_uuid, ids=all_ids[order],
                   xy=np.concatenate([ref_xy, new_xy])[order],
                   laid_out=np.concatenate([ref_laid, np.zeros(len(new), bool)])[order],
                   n_landmarks=m.n_landmarks, seed=m.seed, layout_s=m.layout_s)
    return out, int(len(new)), dropped


# ------------------------------------------------------------------------------------------- the background service
def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class MapService:
    """The map of one kind of an open ``Engine``'s index, for the web server: computed once in a child process with
    progress, kept in its sidecar, followed as the index changes; never in the way of a search (the layout runs in
    another process at a lower priority; following places a few new points).

    Parameters
    ----------
    engine : objsearch.engine.Engine (its ``catalog`` is read; ``Engine.refresh`` replaces it).
    kind : ``objects`` or ``images``.
    dims : projection dimension laid out; None: the engine's.
    max_landmarks, seed : as for ``compute_layout``.
    """

    def __init__(self, engine, kind: str = "objects", *, dims: int | None = None,
                 max_landmarks: int = DEFAULT_LANDMARKS, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.engine = engine
        self.kind = kind
        self.dims = int(dims if dims is not None else engine.dims)
        self.max_landmarks, self.seed = int(max_landmarks), int(seed)
        self.state = "missing"  # missing | computing | ready | failed
        self.progress = 0.0
        self.phase = ""
        self.error = ""
        self._map: IndexMap | None = None
        self._seen = None  # (uuid, generation) the map follows
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._version = 0
        self._disk = None  # (mtime_ns, size) of the sidecar as last read or written here

    @property
    def path(self) -> Path:
        return sidecar_path(self.engine.catalog.path, self.kind, self.dims)

    def status(self) -> dict:
        """JSON-ready: state (missing, computing, ready, failed), computing (a layout runs, possibly a new one
        while the old map is served), progress (0..1) and phase of the layout, error, kind, dims, n_points,
        placed_fraction, layout_s, version (changes whenever the points change)."""
        with self._lock:
            m = self._map
            running = self._proc is not None and self._proc.poll() is None
            return {"state": self.state, "computing": running, "progress": round(self.progress, 3),
                    "phase": self.phase,
                    "error": self.error, "kind": self.kind, "dims": self.dims,
                    "n_points": 0 if m is None else int(len(m.ids)),
                    "placed_fraction": 0.0 if m is None else round(m.placed_fraction, 4),
                    "layout_s": 0.0 if m is None else round(m.layout_s, 1), "version": self._version}

    def _vectors_of(self, catalog, ids: np.ndarray) -> np.ndarray:
        if self.kind == "images":
            return catalog.image_vectors(self.dims)[catalog.media_rows(ids)]
        return catalog.vectors(self.dims)[catalog.object_rows(ids)]

    def current(self) -> IndexMap | None:
        """The map in step with the engine's catalog now (loading the sidecar, placing new ids, dropping removed
        ones, starting a layout when there is none or too much was placed since); None until one exists."""
        catalog = self.engine.catalog
        key = (catalog.uuid, catalog.generation)
        with self._lock:
            if self._map is not None and self._disk != _signature(self.path):
                self._map = None  # a new layout was written (by the child process): take it
            if self._map is None or self._map.index_uuid != catalog.uuid:
                self._disk = _signature(self.path)
                self._map = load_map(self.path, index_uuid=catalog.uuid, kind=self.kind, dims=self.dims)
                self._seen = None
                if self._map is not None:
                    self.state = "ready"
                    self._version += 1
            if self._map is None:
                self.start()
                return None
            if self._seen != key:
                ids = np.asarray(catalog.media_id if self.kind == "images" else catalog.object_id, np.int64)
                m, placed, dropped = follow(self._map, ids, lambda i: self._vectors_of(catalog, i))
                if placed or dropped:
                    self._map = m
                    self._version += 1
                    if self._disk == _signature(self.path):  # never over a layout written meanwhile
                        try:
                            save_map(self.path, m)
                            self._disk = _signature(self.path)
                        except OSError as exc:  # a read-only folder: the map lives in memory only
                            LOGGER.warning("cannot save the map %s: %s", self.path, exc)
                self._seen = key
                if m.placed_fraction > RELAYOUT_FRACTION:
                    self.start()
            return self._map

    def start(self) -> None:
        """Start a layout in a child process unless one runs (no-op then)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self.state == "failed" and self._map is None:
                return  # said once; a restart of the server tries again
            catalog = self.engine.catalog
            if self.kind == "images" and not catalog.has_image_vectors:
                self.state, self.error = "failed", "the index has no whole-image vectors (run objsearch sync)"
                return
            cmd = [sys.executable, "-m", "objsearch.layout_map", str(catalog.path), "--kind", self.kind, "--dims",
                   str(self.dims), "--seed", str(self.seed), "--max-landmarks", str(self.max_landmarks)]
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            self.state = "computing" if self._map is None else self.state
            self.progress, self.phase, self.error = 0.0, "starting", ""
            threading.Thread(target=self._monitor, args=(self._proc,), daemon=True, name="map-layout").start()

    def _monitor(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
                with self._lock:
                    self.progress, self.phase = float(msg["progress"]), str(msg["phase"])
            except (ValueError, KeyError, TypeError):
                continue
        err = proc.stderr.read()
        code = proc.wait()
        with self._lock:
            if code == 0:
                self._map = None  # reloaded (and followed) on the next call
                self.state, self.progress, self.phase = "ready", 1.0, "done"
            else:
                lines = [ln for ln in err.strip().splitlines() if ln.strip()]
                self.error = lines[-1] if lines else f"the layout process exited with {code}"
                self.state = "failed" if self._map is None else "ready"
                LOGGER.error("map layout failed: %s", err.strip()[-2000:])

    def wait(self, timeout_s: float = 600.0) -> bool:
        """Wait for a running layout to end (for tests and tools); returns whether none runs now."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        deadline = time.monotonic() + 5
        while self.state == "computing" and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop a running layout (by its pid)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m objsearch.layout_map INDEX [--kind objects|images] [--dims 32]``: lay out and save the map,
    printing progress as JSON lines ``{"progress": 0..1, "phase": ...}``; the last line carries ``done``."""
    import argparse

    parser = argparse.ArgumentParser(description="Lay out an index's vectors in 2-D and keep the map beside it.")
    parser.add_argument("index", type=Path)
    parser.add_argument("--kind", choices=KINDS, default="objects")
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-landmarks", type=int, default=DEFAULT_LANDMARKS)
    parser.add_argument("--nice", type=int, default=10, help="lower this process's priority by this much")
    args = parser.parse_args(argv)
    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)

    def progress(fraction: float, phase: str) -> None:
        print(json.dumps({"progress": round(fraction, 4), "phase": phase}), flush=True)

    from objsearch.errors import ObjsearchError

    try:
        m = layout_index(args.index, args.kind, args.dims, seed=args.seed, max_landmarks=args.max_landmarks,
                         progress=progress)
    except (ObjsearchError, MapError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"progress": 1.0, "phase": "done", "n_points": int(len(m.ids)),
                      "layout_s": round(m.layout_s, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
