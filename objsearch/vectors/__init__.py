"""Vector stores: k-nearest-neighbour search over projected vectors keyed by stable int64 object ids.

Every backend implements ``VectorStore``; the engine sees nothing else. ``memory_store`` makes the in-memory one
(``objsearch.vectors.memory``: KD-tree, faiss, numpy, hnsw, ``auto``). A backend proves itself by passing the
contract suite in ``tests/vector_store_contract.py``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from objsearch.types import Hits

if TYPE_CHECKING:
    from objsearch.vectors.memory import HnswParams, MemoryVectorStore

BACKENDS = ("auto", "kdtree", "faiss", "numpy", "hnsw")


@runtime_checkable
class VectorStore(Protocol):
    """What every vector store offers.

    Attributes
    ----------
    backend : str
        ``kdtree``, ``faiss``, ``numpy``, ``hnsw`` (later ``milvus``); ``auto`` already resolved.
    dims : int
        Dimension of the vectors.
    exact : bool
        True when ``search`` returns the true k nearest (ties aside); False for approximate indexes (hnsw), which
        the contract holds to recall@k >= 0.95 with exact filters and exact distances instead.
    """

    backend: str
    dims: int
    exact: bool

    def __len__(self) -> int:
        """Live vectors (added and not removed)."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, class_id: np.ndarray, image_id: np.ndarray) -> None:
        """Add objects.

        Parameters
        ----------
        ids : ndarray of shape (n,), int64
            Stable object ids, >= 0, not in the store yet and distinct.
        vectors : ndarray of shape (n, dims), float32, finite
        class_id : ndarray of shape (n,), int
        image_id : ndarray of shape (n,), int

        Raises
        ------
        ValueError
            For a wrong shape, a non-finite vector, or ids present already or repeated (the message names them).
        """
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove objects by id (ids not present are ignored); returns how many were removed."""
        ...

    def search(self, vectors: np.ndarray, k: int, *, class_id: int | np.ndarray | None = None,
               exclude_image_id: int | np.ndarray | None = None) -> Hits:
        """The k nearest objects of each query.

        Parameters
        ----------
        vectors : ndarray of shape (Q, dims), float32
        k : int, >= 1
        class_id : None, int or ndarray of shape (Q,), int
            Only neighbours of this class.
        exclude_image_id : None, int or ndarray of shape (Q,), int
            Leave out this image's objects; -1 excludes nothing.

        Returns
        -------
        Hits
            ``distances`` (Q, k) float32 ascending Euclidean, ``inf``-padded; ``ids`` (Q, k) int64, ``-1``-padded.
        """
        ...

    def close(self) -> None:
        """Release the store (and persist what it keeps, if anything); calling it twice is harmless."""
        ...


def memory_store(method: str, ids: np.ndarray, vectors: np.ndarray, class_id: np.ndarray, image_id: np.ndarray, *,
                 hnsw: HnswParams | None = None, hnsw_cache: str | os.PathLike | None = None) -> MemoryVectorStore:
    """An in-memory store (``MemoryVectorStore``) with the search ``method`` (one of ``BACKENDS``).

    Parameters
    ----------
    method : str
        ``auto``, ``kdtree``, ``faiss``, ``numpy`` or ``hnsw``.
    ids : ndarray of shape (n,), int64
    vectors : ndarray of shape (n, dims), float32; shape (0, dims) for an empty store
    class_id, image_id : ndarray of shape (n,), int
    hnsw : HnswParams, optional
    hnsw_cache : path, optional
        File where the hnsw graph is saved and loaded from.

    Returns
    -------
    MemoryVectorStore
    """
    from objsearch.vectors.memory import MemoryVectorStore

    return MemoryVectorStore(ids, vectors, class_id, image_id, method, hnsw=hnsw, hnsw_cache=hnsw_cache)


__all__ = ["BACKENDS", "VectorStore", "memory_store"]
