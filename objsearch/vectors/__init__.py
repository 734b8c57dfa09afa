"""Vector stores: k-nearest-neighbour search over projected vectors keyed by stable int64 object ids.

Every backend implements ``VectorStore``; the engine sees nothing else. Backends are chosen by name
(``objsearch.vectors.registry``: name -> factory, options dataclass, capabilities; the choice is stored with the
index). ``memory_store`` makes the in-memory one
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

from objsearch.vectors.milvus import MilvusOptions
from objsearch.vectors.registry import backend_names, choose, open_array_store, open_catalog_store, resolve_backend

if TYPE_CHECKING:
    from objsearch.vectors.hnsw import HnswParams
    from objsearch.vectors.memory import MemoryVectorStore

BACKENDS = backend_names()  # the registered ones (``objsearch.vectors.registry``)


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


def vector_store(method: str, ids: np.ndarray, vectors: np.ndarray, class_id: np.ndarray, image_id: np.ndarray, *,
                 device: str | None = None, hnsw: HnswParams | None = None,
                 hnsw_cache: str | os.PathLike | None = None) -> VectorStore:
    """A store of the given arrays for a backend that holds arrays (every one but ``milvus``): in memory
    (``memory_store``) or, for ``torch``, on ``device`` (default the CPU); ``auto`` resolved first for ``device``
    (``resolve_backend``). See ``objsearch.vectors.registry.open_array_store``.

    Parameters
    ----------
    method : str
        A registered backend with ``from_arrays`` (``registry.array_backends()``).
    ids, vectors, class_id, image_id : as for ``memory_store``.
    device : str, optional
        Where ``torch`` keeps the vectors, and what ``auto`` considers (None: the CPU).
    hnsw, hnsw_cache : the ``hnsw`` backend's options and graph file.

    Raises
    ------
    ValueError
        For an unknown method or the input the store refuses.
    objsearch.errors.DeviceError
        For ``torch`` on a device that is not available.
    """
    choice = choose(method, hnsw if method == "hnsw" else None)
    return open_array_store(choice, ids, vectors, class_id, image_id, device=device, cache=hnsw_cache)


def open_store(backend: str, catalog, dims: int, *, milvus_uri: str | os.PathLike | None = None,
               milvus_collection: str | None = None, milvus_index: str = "FLAT", milvus_consistency: str = "Strong",
               hnsw_cache: str | os.PathLike | None = None, device: str | None = None) -> VectorStore:
    """The vector store of ``catalog``'s vectors at ``dims`` for a backend named with the ``milvus`` options as
    keywords (``objsearch.vectors.registry.open_catalog_store`` takes any backend's options).

    Parameters
    ----------
    backend : str
        One of ``BACKENDS``. The in-memory and device ones load the vectors from the catalog; ``milvus`` opens the
        catalog's collection on ``milvus_uri`` and brings it in step with the catalog (created and filled on first
        use, updated by id difference when the catalog changed since; see ``MilvusVectorStore.follow``).
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
    options = MilvusOptions(None if milvus_uri is None else str(milvus_uri), milvus_collection, milvus_index,
                            milvus_consistency) if backend == "milvus" else None
    return open_catalog_store(choose(backend, options), catalog, dims, device=device,
                              cache=hnsw_cache if backend == "hnsw" else None)


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


__all__ = ["BACKENDS", "VectorStore", "follow_index", "memory_store", "open_store", "resolve_backend", "vector_store"]
