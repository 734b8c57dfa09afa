"""Vector stores: k-nearest-neighbour search over projected vectors keyed by stable int64 object ids.

Every backend implements ``VectorStore``; the engine sees nothing else. ``memory_store`` makes the in-memory one
(``objsearch.vectors.memory``: KD-tree, faiss, numpy, hnsw, ``auto``); ``objsearch.vectors.torch_knn`` keeps the
vectors in torch tensors on a device (``torch``: exact search on a GPU); ``objsearch.vectors.milvus`` (the only
pymilvus module, imported only when the ``milvus`` backend is chosen) keeps the vectors in a Milvus collection.
``vector_store`` makes an in-memory or device one from arrays, ``open_store`` any of them for a catalog. A backend
proves itself by passing the contract suite in ``tests/vector_store_contract.py``.

``auto`` and the device: on a CUDA device (``--device 0``) ``auto`` picks ``torch`` for an index of at least
``objsearch.vectors.torch_knn.AUTO_MIN_VECTORS`` objects, else (and always on the CPU) the in-memory store's
calibrated exact method (``resolve_backend``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from objsearch.types import Hits

if TYPE_CHECKING:
    from objsearch.vectors.hnsw import HnswParams
    from objsearch.vectors.memory import MemoryVectorStore

MEMORY_BACKENDS = ("auto", "kdtree", "faiss", "numpy", "hnsw")
DEVICE_BACKENDS = ("torch",)
BACKENDS = MEMORY_BACKENDS + DEVICE_BACKENDS + ("milvus",)


@runtime_checkable
class VectorStore(Protocol):
    """What every vector store offers.

    Attributes
    ----------
    backend : str
        ``kdtree``, ``faiss``, ``numpy``, ``hnsw``, ``torch``, ``milvus``; ``auto`` already resolved.
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


def resolve_backend(backend: str, n: int, device: str | None = None) -> str:
    """The backend ``backend`` means for ``n`` vectors searched next to ``device``: ``auto`` becomes ``torch`` on a CUDA
    device (``cuda``, ``cuda:N`` or a bare GPU index) from ``torch_knn.AUTO_MIN_VECTORS`` vectors on; anything else
    is returned as it is (the in-memory ``auto`` then calibrates among the exact CPU methods)."""
    if backend != "auto" or device is None:
        return backend
    from objsearch.detector import device_name
    from objsearch.vectors.torch_knn import AUTO_MIN_VECTORS

    return "torch" if device_name(device).startswith("cuda") and n >= AUTO_MIN_VECTORS else backend


def vector_store(method: str, ids: np.ndarray, vectors: np.ndarray, class_id: np.ndarray, image_id: np.ndarray, *,
                 device: str | None = None, hnsw: HnswParams | None = None,
                 hnsw_cache: str | os.PathLike | None = None) -> VectorStore:
    """An in-memory store (``memory_store``) or, for ``torch``, a device store (``TorchVectorStore`` on ``device``,
    default the CPU); ``auto`` resolved first for ``device`` (``resolve_backend``).

    Parameters
    ----------
    method : str
        One of ``MEMORY_BACKENDS`` or ``DEVICE_BACKENDS``.
    ids, vectors, class_id, image_id : as for ``memory_store``.
    device : str, optional
        Where ``torch`` keeps the vectors, and what ``auto`` considers (None: the CPU).
    hnsw, hnsw_cache : as for ``memory_store``.

    Raises
    ------
    ValueError
        For an unknown method or the input the store refuses.
    objsearch.errors.DeviceError
        For ``torch`` on a device that is not available.
    """
    method = resolve_backend(method, len(ids), device)
    if method in DEVICE_BACKENDS:
        from objsearch.vectors.torch_knn import TorchVectorStore

        return TorchVectorStore(ids, vectors, class_id, image_id, device=device or "cpu")
    return memory_store(method, ids, vectors, class_id, image_id, hnsw=hnsw, hnsw_cache=hnsw_cache)


def open_store(backend: str, catalog, dims: int, *, milvus_uri: str | os.PathLike | None = None,
               milvus_collection: str | None = None, milvus_index: str = "FLAT", milvus_consistency: str = "Strong",
               hnsw_cache: str | os.PathLike | None = None, device: str | None = None) -> VectorStore:
    """The vector store of ``catalog``'s vectors at ``dims`` for a backend.

    Parameters
    ----------
    backend : str
        One of ``BACKENDS``. The in-memory and device ones load the vectors from the catalog; ``milvus`` opens the
        catalog's
        collection on ``milvus_uri`` and brings it in step with the catalog (created and filled on first use,
        updated by id difference when the catalog changed since; see ``MilvusVectorStore.follow``).
    catalog : objsearch.catalog.Catalog
    dims : int
        A stored projection dimension.
    milvus_uri : path or str, optional
        A Milvus Lite database (``*.db``) or a server URI; None: ``INDEX.h5.milvus.db`` beside the index.
    milvus_collection : str, optional
        None: ``objsearch_<index uuid[:12]>_d<dims>``.
    milvus_index, milvus_consistency : str
        Milvus index type (``FLAT`` exact, ``HNSW``, ``IVF_FLAT``, ``IVF_SQ8``) and consistency level.
    hnsw_cache : path, optional
        Where the in-memory ``hnsw`` graph is kept.
    device : str, optional
        Where ``torch`` keeps the vectors (None: the CPU); ``auto`` on a CUDA device may pick ``torch``
        (``resolve_backend``).

    Raises
    ------
    ValueError
        For an unknown backend or bad parameters.
    objsearch.errors.VectorStoreError
        When Milvus is not installed, unreachable, or its collection belongs to another index or dims.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "milvus":
        from objsearch.vectors.milvus import open_for_catalog  # pymilvus is imported only there

        uri = milvus_uri if milvus_uri is not None else f"{catalog.path}.milvus.db"
        return open_for_catalog(catalog, dims, uri, collection=milvus_collection, index_type=milvus_index,
                                consistency=milvus_consistency)
    return vector_store(backend, catalog.object_id, catalog.vectors(dims), catalog.class_id, catalog.object_media_id,
                        device=device, hnsw_cache=hnsw_cache if backend == "hnsw" else None)


def follow_index(index: str | os.PathLike, milvus_uri: str | os.PathLike, *, collection: str | None = None,
                 previous: tuple | None = None) -> list[tuple[int, int, int]]:
    """Bring the Milvus collections of ``index`` on ``milvus_uri`` in step with it (after add, remove or sync).

    Only collections that exist are updated (one is created when a search first uses it): ``collection`` when
    given, else the default name of each stored dims.

    Parameters
    ----------
    index : path of the index file.
    milvus_uri : Milvus Lite path or server URI.
    collection : str, optional
    previous : (index_uuid, generation, object_ids), optional
        The catalog state before the job; see ``MilvusVectorStore.follow``.

    Returns
    -------
    list of (dims, added, removed)

    Raises
    ------
    objsearch.errors.VectorStoreError
        See ``MilvusVectorStore.follow``.
    """
    from objsearch.catalog import Catalog
    from objsearch.vectors.milvus import MilvusVectorStore, collection_dims, connect, default_collection

    done = []
    with Catalog(index) as catalog:
        client = connect(milvus_uri)
        try:
            names = [collection] if collection else [default_collection(catalog.uuid, d) for d in catalog.dims]
            for name in names:
                if not client.has_collection(name):
                    continue
                dims = collection_dims(client, name)
                if dims not in catalog.dims:
                    from objsearch.errors import VectorStoreError

                    raise VectorStoreError(f"Milvus collection {name} holds {dims}-d vectors; {catalog.path} holds "
                                           f"{catalog.dims}")
                store = MilvusVectorStore(milvus_uri, name, dims, client=client)
                try:
                    added, removed = store.follow(catalog, previous=previous)
                finally:
                    store.close()
                done.append((dims, added, removed))
        finally:
            client.close()
    return done


__all__ = ["BACKENDS", "DEVICE_BACKENDS", "MEMORY_BACKENDS", "VectorStore", "follow_index", "memory_store",
           "open_store", "resolve_backend", "vector_store"]
