"""Vector backends by name: name -> factory, options dataclass and capabilities, as FiftyOne's similarity backends.

Every backend is one ``Backend`` entry in ``BUILTIN`` below (or ``register``-ed from outside): its name, the dataclass
of its options (defaults in code), how to make a store from arrays (``from_arrays``; None for a backend that keeps
the vectors elsewhere) or from a catalog (``from_catalog``; default: the catalog's vectors through ``from_arrays``),
and what it can do (``follows_catalog``: it keeps its own copy and brings it in step with a catalog itself, through
``store.follow(catalog, previous=...)``, where the others are updated by the caller's id difference). A choice of a
backend and its options (``BackendChoice``) is stored with the index as the root attribute ``vector_backend``
(``objsearch.catalog``); ``stored_choice`` reads it back, so an index opens with the backend it was set up with.

A new backend is its module (the store, implementing ``objsearch.vectors.VectorStore``, and its options dataclass),
one ``Backend`` entry here, and its line in the contract suite's factories (``tests/test_vectors.py``, checks in
``tests/vector_store_contract.py``). The engine and the shells take it by name with ``backend_options``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from objsearch.vectors.exact import ExactOptions
from objsearch.vectors.hnsw import HnswParams
from objsearch.vectors.milvus import MilvusOptions
from objsearch.vectors.torch_knn import TorchOptions


@dataclass(frozen=True)
class Backend:
    """One vector backend.

    Attributes
    ----------
    name : str
        What ``--backend`` and the stored choice call it.
    options : type
        A frozen dataclass whose fields (JSON values) are the backend's options; ``options()`` gives the defaults.
    from_arrays : callable or None
        ``from_arrays(ids (n,) int64, vectors (n, dims) float32, class_id (n,), image_id (n,), options, *, device,
        cache) -> VectorStore``; ``cache`` a file the backend may keep beside the index (None: keep nothing).
        None: the backend keeps its vectors elsewhere and opens only from a catalog (and holds no whole-image
        vectors).
    from_catalog : callable or None
        ``from_catalog(catalog, dims, options, *, device, cache) -> VectorStore``; None: ``from_arrays`` over the
        catalog's live objects and their vectors at ``dims``.
    follows_catalog : bool
        The store keeps its own copy of the vectors and brings it in step with a catalog by itself
        (``store.follow(catalog, previous=(uuid, generation, object_ids))``).
    cache_name : str or None
        Stem of the file kept beside the index at each dims (``hnsw``: ``INDEX.h5.hnsw32``); None: none.
    """

    name: str
    options: type
    from_arrays: Callable | None
    from_catalog: Callable | None = None
    follows_catalog: bool = False
    cache_name: str | None = None


@dataclass(frozen=True)
class BackendChoice:
    """A backend chosen by name with its options: what an index stores (``to_attr``) and an engine opens.

    Attributes
    ----------
    name : str
        A registered backend's name.
    options : object
        An instance of that backend's options dataclass.
    """

    name: str
    options: object

    def to_attr(self) -> dict:
        """The stored form: ``{"name": str, "options": {field: JSON value}}``."""
        return {"name": self.name, "options": dataclasses.asdict(self.options)}

    @classmethod
    def from_attr(cls, value: dict) -> BackendChoice:
        """The choice a stored ``{"name", "options"}`` describes.

        Raises
        ------
        ValueError
            For a backend this objsearch does not have, or options it does not take (the message names them).
        """
        backend = get_backend(value["name"])
        return cls(backend.name, make_options(backend.name, **value["options"]))


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` under its name (replacing one of the same name); returns it.

    Raises
    ------
    ValueError
        When ``backend.options`` is not a dataclass or the backend can make no store.
    """
    if not dataclasses.is_dataclass(backend.options):
        raise ValueError(f"backend {backend.name!r}: options must be a dataclass, got {backend.options!r}")
    if backend.from_arrays is None and backend.from_catalog is None:
        raise ValueError(f"backend {backend.name!r} needs from_arrays or from_catalog")
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """Every registered backend's name, in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises
    ------
    ValueError
        For a name that is not registered: ``backend must be one of auto, kdtree, ..., got 'x'``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def make_options(name: str, **values):
    """The options of backend ``name``: its dataclass's defaults, with ``values`` (field names) set.

    Raises
    ------
    ValueError
        For an unknown backend, or a field the backend's options do not have.
    """
    options = get_backend(name).options
    fields = {f.name for f in dataclasses.fields(options)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"backend {name!r} takes the options {sorted(fields) or 'none'}, not {unknown}")
    return options(**values)


def choose(name: str, options=None) -> BackendChoice:
    """``BackendChoice`` of ``name`` with ``options`` (an instance of its options dataclass; None: the defaults).

    Raises
    ------
    ValueError
        For an unknown backend, or options of another backend's type.
    """
    backend = get_backend(name)
    if options is None:
        options = backend.options()
    if not isinstance(options, backend.options):
        raise ValueError(f"backend {name!r} takes {backend.options.__name__}, got {type(options).__name__}")
    return BackendChoice(name, options)


def stored_choice(catalog) -> BackendChoice | None:
    """The backend the index was set up with (its ``vector_backend`` attribute), None when it records none.

    Raises
    ------
    ValueError
        When the index names a backend or options this objsearch does not have.
    """
    value = catalog.vector_backend
    if value is None:
        return None
    try:
        return BackendChoice.from_attr(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{catalog.path} was set up with vector backend {value['name']!r}: {exc}") from None


def choose_for(catalog, backend: str | BackendChoice | None = None, options=None) -> BackendChoice:
    """What to open ``catalog`` with: ``backend`` (a name, with ``options`` or the defaults; or a ``BackendChoice``),
    or when None, the choice stored with the index (``stored_choice``), else ``auto``.

    Raises
    ------
    ValueError
        For an unknown backend, options of another backend, a ``BackendChoice`` given with ``options``, or a stored
        choice this objsearch cannot open.
    """
    if isinstance(backend, BackendChoice):
        if options is not None:
            raise ValueError("give the options inside the BackendChoice, not beside it")
        get_backend(backend.name)
        return backend
    if backend is None:
        stored = stored_choice(catalog)
        if stored is not None:
            return stored if options is None else choose(stored.name, options)
        backend = "auto"
    return choose(backend, options)


def record_choice(writer, choice: BackendChoice) -> None:
    """Store ``choice`` with the index at ``writer``'s next commit (a ``CatalogWriter``)."""
    writer.set_attrs(vector_backend=choice.to_attr())


def cache_path(backend: Backend, files: str | os.PathLike | None, dims: int) -> Path | None:
    """The file ``backend`` keeps beside the index at ``dims``: ``<files><cache_name><dims>``, with ``files`` the
    prefix of the index's side files (``INDEX.h5.`` for objects, ``INDEX.h5.image-`` for whole images); None when
    the backend keeps none or no prefix is given."""
    if backend.cache_name is None or files is None:
        return None
    return Path(f"{os.fspath(files)}{backend.cache_name}{int(dims)}")


def open_catalog_store(choice: BackendChoice, catalog, dims: int, *, device: str | None = None,
                       files: str | os.PathLike | None = None, cache: str | os.PathLike | None = None):
    """The store of ``catalog``'s objects at ``dims`` for ``choice``.

    Parameters
    ----------
    choice : BackendChoice
    catalog : objsearch.catalog.Catalog
    dims : int, a stored projection dimension.
    device : where a device backend keeps the vectors, and what ``auto`` considers (None: the CPU).
    files : prefix of the side files (see ``cache_path``); ``cache``, when given, names the file itself.

    Raises
    ------
    ValueError
        For options or input the store refuses.
    objsearch.errors.VectorStoreError, objsearch.errors.DeviceError
        As the backend's store raises them.
    """
    backend = get_backend(choice.name)
    cache = Path(cache) if cache is not None else cache_path(backend, files, dims)
    if backend.from_catalog is not None:
        return backend.from_catalog(catalog, dims, choice.options, device=device, cache=cache)
    return backend.from_arrays(catalog.object_id, catalog.vectors(dims), catalog.class_id, catalog.object_media_id,
                               choice.options, device=device, cache=cache)


def open_array_store(choice: BackendChoice, ids, vectors, class_id, image_id, *, device: str | None = None,
                     cache: str | os.PathLike | None = None):
    """A store of the given arrays (ids (n,) int64, vectors (n, dims) float32, class_id (n,), image_id (n,)).

    Raises
    ------
    ValueError
        For a backend that opens only from a catalog (``from_arrays`` None), or input the store refuses.
    """
    backend = get_backend(choice.name)
    if backend.from_arrays is None:
        raise ValueError(f"the {choice.name} backend opens only from an index")
    return backend.from_arrays(ids, vectors, class_id, image_id, choice.options, device=device,
                               cache=None if cache is None else Path(cache))


def array_backends() -> tuple[str, ...]:
    """The backends that can hold any arrays (whole-image vectors too)."""
    return tuple(name for name, backend in _REGISTRY.items() if backend.from_arrays is not None)


# ------------------------------------------------------------------------------------------ the built-in ones
def _memory(method: str) -> Callable:
    def from_arrays(ids, vectors, class_id, image_id, options, *, device=None, cache=None):
        from objsearch.vectors.memory import MemoryVectorStore

        hnsw = options if isinstance(options, HnswParams) else None
        return MemoryVectorStore(ids, vectors, class_id, image_id, method, hnsw=hnsw, hnsw_cache=cache)

    return from_arrays


def resolve_backend(backend: str, n: int, device: str | None = None) -> str:
    """The backend ``backend`` means for ``n`` vectors searched next to ``device``: ``auto`` becomes ``torch`` on a CUDA
    device (``cuda``, ``cuda:N`` or a bare GPU index) from ``torch_knn.AUTO_MIN_VECTORS`` vectors on; anything else
    is returned as it is (the in-memory ``auto`` then calibrates among the exact CPU methods)."""
    if backend != "auto" or device is None:
        return backend
    from objsearch.detector import device_name
    from objsearch.vectors.torch_knn import AUTO_MIN_VECTORS

    return "torch" if device_name(device).startswith("cuda") and n >= AUTO_MIN_VECTORS else backend


def _auto(ids, vectors, class_id, image_id, options, *, device=None, cache=None):
    """``auto``: ``torch`` on a CUDA device for a large index (``resolve_backend``), else the in-memory store's
    calibrated exact method."""
    if resolve_backend("auto", len(ids), device) == "torch":
        return _torch(ids, vectors, class_id, image_id, TorchOptions(), device=device)
    return _memory("auto")(ids, vectors, class_id, image_id, options)


def _torch(ids, vectors, class_id, image_id, options, *, device=None, cache=None):
    from objsearch.vectors.torch_knn import TorchVectorStore

    return TorchVectorStore(ids, vectors, class_id, image_id, device=device or "cpu",
                            chunk_elements=options.chunk_elements)


def _milvus(catalog, dims, options, *, device=None, cache=None):
    from objsearch.vectors.milvus import open_for_catalog

    uri = options.uri if options.uri is not None else f"{catalog.path}.milvus.db"
    return open_for_catalog(catalog, dims, uri, collection=options.collection, index_type=options.index_type,
                            consistency=options.consistency)


BUILTIN = (
    Backend("auto", ExactOptions, _auto),
    Backend("kdtree", ExactOptions, _memory("kdtree")),
    Backend("faiss", ExactOptions, _memory("faiss")),
    Backend("numpy", ExactOptions, _memory("numpy")),
    Backend("hnsw", HnswParams, _memory("hnsw"), cache_name="hnsw"),
    Backend("torch", TorchOptions, _torch),
    Backend("milvus", MilvusOptions, None, _milvus, follows_catalog=True),
)
_REGISTRY.update((backend.name, backend) for backend in BUILTIN)
