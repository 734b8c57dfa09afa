"""The exact k-NN structures of the in-memory store (``objsearch.vectors.memory``): KD-tree, faiss and numpy.

Each is built over ``vectors`` (n, d) float32 and answers ``query(queries (Q, d), k, workers)`` with
``(distances (Q, k) float32 Euclidean ascending, positions (Q, k) int64)``, positions being rows of the vectors it
was built on, -1 padded. All three return the same neighbours (ties aside); which is fastest depends on the size and
the dimension (``objsearch.vectors.calibrate``; measurements in docs/scale.md).

``kdtree``
    scipy's ``cKDTree`` (what the original apps used, via ofxKDTree). Fastest at low dimensions; its cost grows
    steeply with the dimension (the "curse of dimensionality", Weber et al., VLDB 1998), so ``auto`` does not try it
    above ``KDTREE_MAX_DIMS``.
``faiss``
    faiss ``IndexFlatL2`` (exhaustive SIMD/BLAS scan, faiss-cpu from PyPI).
``numpy``
    Brute force with one BLAS matrix product and ``argpartition``; needs nothing beyond numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_METHODS = ("kdtree", "faiss", "numpy")
KDTREE_MAX_DIMS = 64


@dataclass(frozen=True)
class ExactOptions:
    """Options of the exact in-memory backends and ``auto`` (``objsearch.vectors.registry``): none; they take their
    structure from the vectors alone."""


def faiss_available() -> bool:
    """Whether the faiss package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class KDTreeIndex:
    """scipy's ``cKDTree`` over ``vectors`` (n, d)."""

    def __init__(self, vectors: np.ndarray) -> None:
        from scipy.spatial import cKDTree  # scipy is imported when a KD-tree is first built

        self.n = len(vectors)
        self.tree = cKDTree(vectors)

    def query(self, queries: np.ndarray, k: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        d, i = self.tree.query(queries, k=k, workers=workers)
        d = np.asarray(d, np.float32).reshape(len(queries), k)
        i = np.asarray(i, np.int64).reshape(len(queries), k)
        return d, np.where(i < self.n, i, -1)


class FaissIndex:
    """faiss ``IndexFlatL2`` over ``vectors`` (n, d); ``extend`` appends rows without a rebuild."""

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


class NumpyIndex:
    """Brute force over ``vectors`` (n, d): one BLAS product and ``argpartition``."""

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


EXACT_INDEXES = {"kdtree": KDTreeIndex, "faiss": FaissIndex, "numpy": NumpyIndex}  # method -> structure
