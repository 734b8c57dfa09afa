"""Exact k-nearest-neighbour search over projected vectors (scipy's ``cKDTree``).

``NeighborIndex.search`` returns a fixed shape: ``distances (Q, k)`` ascending (Euclidean) and ``ids (Q, k)``
(object ids, rows of the vectors given at construction), padded with ``inf`` and ``-1`` when fewer than k
neighbours qualify. Options restrict neighbours to a class and exclude objects of a given image.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


class NeighborIndex:
    """KD-tree search with class restriction and per-query image exclusion.

    Parameters
    ----------
    vectors : ndarray of shape (N, d), float32
        Projected vectors, one per object; row i is object id i.
    class_id : ndarray of shape (N,), int, optional
        Detected class per object, needed for ``same_class`` searches.
    image_id : ndarray of shape (N,), int, optional
        Image per object, needed for ``exclude_image_id``.

    Raises
    ------
    ValueError
        When the arrays' lengths disagree or ``vectors`` is not 2-D.
    """

    def __init__(self, vectors: np.ndarray, class_id: np.ndarray | None = None, image_id: np.ndarray | None = None):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must have shape (N, d), got {vectors.shape}")
        n = len(vectors)
        for name, arr in (("class_id", class_id), ("image_id", image_id)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} must have length {n}, got {len(arr)}")
        self.vectors = vectors
        self.class_id = None if class_id is None else np.asarray(class_id, dtype=np.int64)
        self.image_id = None if image_id is None else np.asarray(image_id, dtype=np.int64)
        self._tree = cKDTree(vectors) if n else None
        self._class_trees: dict[int, tuple[cKDTree, np.ndarray]] = {}
        self._max_per_image = int(np.bincount(self.image_id).max()) if self.image_id is not None and n else 0

    @property
    def dims(self) -> int:
        """Dimension d of the vectors."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)

    def _subset(self, class_id: int | None):
        if class_id is None:
            return self._tree, None
        if class_id not in self._class_trees:
            ids = np.flatnonzero(self.class_id == class_id)
            self._class_trees[class_id] = (cKDTree(self.vectors[ids]) if len(ids) else None, ids)
        return self._class_trees[class_id]

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
            Threads for ``cKDTree.query`` (-1: all cores).

        Returns
        -------
        distances : ndarray of shape (Q, k), float32, ascending, ``inf`` where padded
        ids : ndarray of shape (Q, k), int64, object ids, ``-1`` where padded

        Raises
        ------
        ValueError
            For a bad ``k``, a dimension mismatch, or an option the index lacks the arrays for.
        """
        queries = np.asarray(queries, dtype=np.float32)
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
            tree, subset_ids = self._subset(None if group is None else int(group))
            if tree is None:
                continue
            extra = self._max_per_image if exclude_image_id is not None else 0
            kk = min(k + extra, tree.n)
            d, i = tree.query(queries[rows], k=kk, workers=workers)
            d = np.asarray(d, np.float32).reshape(len(rows), kk)
            i = np.asarray(i, np.int64).reshape(len(rows), kk)
            valid = i < tree.n
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
