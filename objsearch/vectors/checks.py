"""The argument checks every vector store makes, one wording for all (the contract suite holds each store to them):
``check_new`` for ``add``, ``check_query`` for ``search``, ``int_array`` for ids, ``some_values`` to name ids in a
message.
"""

from __future__ import annotations

import numpy as np


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
        raise ValueError(f"vectors must be finite, got NaN or infinity for ids {some_values(bad)}")
    class_id = int_array("class_id", class_id, n)
    image_id = int_array("image_id", image_id, n)
    if n and ids.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 pads search results), got {some_values(ids[ids < 0])}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) < n:
        raise ValueError(f"ids must be distinct, got repeated ids {some_values(unique[counts > 1])}")
    return ids, vectors, class_id, image_id


def int_array(name: str, values, n: int | None = None) -> np.ndarray:
    """``values`` as a (n,) int64 array (an empty input of any shape is (0,)).

    Raises
    ------
    ValueError
        For another rank, a length other than ``n`` (when given) or a dtype that is not an integer one.
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


def some_values(values: np.ndarray, limit: int = 10) -> str:
    """The first ``limit`` of ``values`` (ints), as a short list for an error message: ``[1, 2, ... (12 in all)]``."""
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    return str(values[:limit])[:-1] + (f", ... ({len(values)} in all)]" if len(values) > limit else "]")
