"""``auto``: time the exact methods on the store's own vectors and keep the fastest.

The fastest for frames (query images usually hold several objects, and the live view sends a frame's worth at once),
or among those within ``TIE`` (10%) of it, the fastest for one query. One method serves every batch size: switching
libraries between calls costs more than it saves (each keeps its own copy of the vectors, so the two evict each other
from the cache, and their thread pools compete). The KD-tree is not tried above ``KDTREE_MAX_DIMS`` dimensions, where
a scan is far faster and building it alone would cost seconds. ``auto`` never picks an approximate method. The
measurements behind these choices are in docs/scale.md ("The in-memory store's choices, measured").
"""

from __future__ import annotations

import logging
import time

import numpy as np

from objsearch.vectors.exact import EXACT_INDEXES, EXACT_METHODS, KDTREE_MAX_DIMS, faiss_available

LOGGER = logging.getLogger(__name__)

TIE = 0.10  # ``auto``: frame times within this fraction of the fastest count as a tie, broken by single queries


def calibrate(vectors: np.ndarray, repeats: int = 5, seed: int = 0, rounds: int = 3):
    """Time the available exact methods on ``vectors`` and return the fastest for a frame of 10 queries, or among
    those within ``TIE`` (10%) of it, the fastest for one query, with its backend already built over ``vectors``.

    Each method, in its own block after two warm-up frames, answers a batch of 10 (a frame's worth) and ``repeats``
    single queries, k=16, ``rounds`` times; each time is the best of the rounds. Queries are stored vectors plus
    Gaussian noise of half the data's per-dimension spread: a new image's objects are not near-duplicates of stored
    ones, and a KD-tree answers near-duplicates far faster than typical queries, so calibrating on them would favour
    it wrongly. Build time is not counted (a store is built once per open). One method serves all batch sizes (see
    the module docstring; what it picks on the SYNTHETIC 376k index is in docs/scale.md).

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
        backend = backends[method] = EXACT_INDEXES[method](vectors)
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
