"""Milvus as a vector store: the only module that imports pymilvus.

``MilvusVectorStore`` implements ``objsearch.vectors.VectorStore`` on one Milvus collection, through the same
``MilvusClient`` code for Milvus Lite (``uri`` a local path ending in ``.db``) and a Milvus server or cluster
(``uri`` such as ``http://127.0.0.1:19530``). Install with ``pip install objsearch[milvus]``.

The collection
--------------
One collection per index and projection dimension, named ``objsearch_<index uuid[:12]>_d<dims>`` unless the user
names one. Fields: ``object_id`` INT64 primary key (the catalog's stable id), ``vector`` FLOAT_VECTOR(dims),
``class_id`` INT64, ``image_id`` INT64 (the catalog's media id), ``confidence`` FLOAT. The HDF5 index stays the
catalog: Milvus holds only what search needs, and the collection records which catalog state it mirrors in its
properties (``objsearch.index_uuid``, ``objsearch.generation``, ``objsearch.dims``).

``follow(catalog)`` brings the collection in step with a catalog: created and filled on first use; a collection of
the same index at another generation is brought up to date by id difference (ids are never reused by the catalog,
so an id's vector never changes); one of another index, of other dims, or not made by objsearch is refused with a
one-line ``VectorStoreError``.

Search
------
L2 metric; Milvus returns squared distances, the store returns Euclidean ones. The same-class and exclude-image
filters are Milvus boolean expressions (``class_id == 3 and image_id != 17``), one search call per distinct filter
with all the queries that share it, so nothing is over-fetched. ``index_type="FLAT"`` is exact (the default);
``HNSW``, ``IVF_FLAT`` and ``IVF_SQ8`` are approximate (``exact`` False; ``tools/bench_milvus.py`` reports their
recall@k against FLAT).

Consistency
-----------
Every call names its consistency level. The default, ``Strong``, makes every search see every write acknowledged
before it, by any client: a result never misses what the user just added (or shows what was just removed), at the
price measured on a Milvus 2.3.5 server in ``docs/scaling.md`` (see ``tools/bench_milvus.py``). ``Session`` (read
your own writes, this client's only) and ``Bounded``/``Eventually`` may be chosen where that guarantee is not
needed. Milvus Lite applies every write before it returns, whatever the level.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from objsearch.errors import ObjsearchError, VectorStoreError
from objsearch.types import Hits
from objsearch.vectors.checks import check_new, check_query, int_array, some_values

LOGGER = logging.getLogger(__name__)

INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
MAX_TOPK = 16384  # Milvus' limit on k per search
INSERT_ROWS = 8192  # rows per insert call (well under gRPC's 64 MB message limit at 256 dims)
IN_LIST = 4096
SEARCH_THREADS = 8  # concurrent search calls when queries carry different filters  # ids per ``object_id in [...]`` expression
_PROPS = ("objsearch.index_uuid", "objsearch.generation", "objsearch.dims")



@dataclass(frozen=True)
class MilvusOptions:
    """Options of the ``milvus`` backend (``objsearch.vectors.registry``), stored with the index when chosen for it.

    Attributes
    ----------
    uri : str or None
        A Milvus Lite database (``*.db``) or a server URI; None: ``INDEX.h5.milvus.db`` beside the index.
    collection : str or None
        None: ``objsearch_<index uuid[:12]>_d<dims>`` (``default_collection``).
    index_type : str
        One of ``INDEX_TYPES``: ``FLAT`` (exact), ``HNSW``, ``IVF_FLAT``, ``IVF_SQ8`` (approximate).
    consistency : str
        One of ``CONSISTENCY_LEVELS``.
    """

    uri: str | None = None
    collection: str | None = None
    index_type: str = "FLAT"
    consistency: str = "Strong"

def default_collection(index_uuid: str, dims: int) -> str:
    """The collection name of one index's vectors at ``dims``: ``objsearch_<uuid[:12]>_d<dims>``."""
    return f"objsearch_{str(index_uuid)[:12]}_d{int(dims)}"


def default_params(index_type: str) -> tuple[dict, dict]:
    """(index build params, search params) for an index type: HNSW M=16, efConstruction=200, ef from k; IVF
    nlist=1024 (capped at the rows), nprobe=32."""
    if index_type == "HNSW":
        return {"M": 16, "efConstruction": 200}, {"ef": 64}
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        return {"nlist": 1024}, {"nprobe": 32}
    return {}, {}


def collection_dims(client, name: str) -> int:
    """The vector dimension of an existing collection (-1 when it has no ``vector`` field)."""
    info = client.describe_collection(name)
    for f in info.get("fields", []):
        if f["name"] == "vector":
            return int(f.get("params", {}).get("dim", -1))
    return -1


def _is_local(uri: str) -> bool:
    return "://" not in str(uri)


def connect(uri: str | os.PathLike, *, token: str = ""):
    """A ``MilvusClient`` for a Milvus Lite path (``*.db``) or a server URI.

    Raises
    ------
    VectorStoreError
        When pymilvus (or milvus-lite, for a path) is not installed, the path is not a ``.db``, the Lite database is
        held by another process, or the server does not answer.
    """
    uri = str(uri)
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise VectorStoreError("the milvus backend needs pymilvus (pip install 'objsearch[milvus]')") from None
    if _is_local(uri):
        if not uri.endswith(".db"):
            raise VectorStoreError(f"a Milvus Lite database is a path ending in .db, got {uri!r} (a server is a URI "
                                   f"such as http://127.0.0.1:19530)")
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise VectorStoreError(f"{uri} is a Milvus Lite path, which needs milvus-lite "
                                   f"(pip install 'objsearch[milvus]')") from None
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        _quiet_lite_server()
    lite_logger = logging.getLogger("milvus_lite")
    level = lite_logger.level
    if _is_local(uri):
        lite_logger.setLevel(logging.CRITICAL)  # it logs a traceback before pymilvus raises a vaguer error
    try:
        return MilvusClient(uri, token=token) if token else MilvusClient(uri)
    except Exception as exc:  # pymilvus raises MilvusException, milvus-lite its own, grpc its own
        if _is_local(uri) and _lite_locked(uri):
            raise VectorStoreError(
                f"the Milvus Lite database {uri} is open in another process (Lite allows one); stop it, or share the "
                f"database through a server (`milvus-lite server --data-dir ...` or a Milvus server URI)") from None
        raise VectorStoreError(f"cannot connect to Milvus at {uri}: {_one_line(exc)}") from None
    finally:
        lite_logger.setLevel(level)


def _lite_locked(uri: str) -> bool:
    """Whether another process holds the LOCK of a Milvus Lite database directory."""
    lock = Path(uri) / "LOCK"
    if not lock.is_file():
        return False
    import fcntl

    with open(lock, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _hit_id(hit) -> int:
    """A search hit's primary key: pymilvus 3 names it after the field, 2.x ``id``."""
    return int(hit["object_id"] if "object_id" in hit else hit["id"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class LiteUnimplementedFilter(logging.Filter):
    """Drops gRPC's log record of an RPC that Milvus Lite's in-process server does not implement, and nothing else.

    Milvus Lite serves pymilvus through a gRPC servicer in this process; an RPC it lacks (``AllocTimestamp``, which
    pymilvus asks for when it waits for an index on a new collection) raises the generated stub's
    ``NotImplementedError('Method not implemented!')``, which grpc logs as ``ERROR Exception calling application``
    with a traceback, while pymilvus ignores the failure by design (``ignore_unimplemented``) and the command
    succeeds. A record is dropped only when its exception is that ``NotImplementedError`` raised in a generated
    ``*_pb2_grpc.py`` stub; every other error of the server is logged as before. A server in another process (a
    Milvus URI) logs in that process, so this never hides a server's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NotImplementedError):
            return True
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return not (tb is not None and tb.tb_frame.f_code.co_filename.endswith("_pb2_grpc.py"))


_LITE_FILTER = LiteUnimplementedFilter()


def _quiet_lite_server() -> None:
    """Install ``LiteUnimplementedFilter`` on grpc's server logger (once)."""
    grpc_server = logging.getLogger("grpc._server")
    if _LITE_FILTER not in grpc_server.filters:
        grpc_server.addFilter(_LITE_FILTER)


class MilvusVectorStore:
    """k-NN search in one Milvus collection (see the module docstring).

    Parameters
    ----------
    uri : str or path
        A Milvus Lite database (a path ending in ``.db``) or a server URI (``http://host:19530``).
    collection : str
        The collection's name; created (empty) when missing.
    dims : int
        Vector dimension; an existing collection of another dimension is refused.
    index_type : str
        ``FLAT`` (exact, the default), ``HNSW``, ``IVF_FLAT`` or ``IVF_SQ8`` (approximate).
    index_params, search_params : dict, optional
        Build and search parameters of the index type (defaults: ``default_params``).
    consistency : str
        ``Strong`` (default: every search sees every acknowledged write), ``Session``, ``Bounded`` or ``Eventually``.
    client : MilvusClient, optional
        An open client to use (not closed by ``close``); None: one is opened for ``uri``.
    token : str
        Credentials for a server (``user:password`` or an API key); never logged.

    Attributes
    ----------
    backend : str
        ``milvus``.
    dims : int
    exact : bool
        True for ``FLAT``.
    uri, collection, index_type, consistency : str

    Raises
    ------
    VectorStoreError
        When Milvus cannot be reached, or the collection exists with another schema or dimension.
    ValueError
        For an unknown index type or consistency level, or dims < 1.
    """

    backend = "milvus"

    def __init__(self, uri, collection: str, dims: int, *, index_type: str = "FLAT", index_params: dict | None = None,
                 search_params: dict | None = None, consistency: str = "Strong", client=None, token: str = "") -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, got {consistency!r}")
        if isinstance(dims, bool) or int(dims) < 1:
            raise ValueError(f"dims must be >= 1, got {dims!r}")
        self.uri, self.collection, self.dims = str(uri), str(collection), int(dims)
        self.index_type, self.consistency = index_type, consistency
        self.exact = index_type == "FLAT"
        build, search = default_params(index_type)
        self.index_params = {**build, **(index_params or {})}
        self.search_params = {**search, **(search_params or {})}
        self._own_client = client is None
        self._client = client if client is not None else connect(uri, token=token)
        self._closed = False
        try:
            self._open_collection()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ collection
    def _call(self, what: str, fn, *args, **kwargs):
        """A pymilvus call whose failure becomes one ``VectorStoreError`` line."""
        try:
            return fn(*args, **kwargs)
        except ObjsearchError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"Milvus {what} on {self.collection} at {self.uri} failed: {_one_line(exc)}") \
                from None

    def _open_collection(self) -> None:
        c = self._client
        if not self._call("has_collection", c.has_collection, self.collection):
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="objsearch object vectors")
            schema.add_field("object_id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dims)
            schema.add_field("class_id", DataType.INT64)
            schema.add_field("image_id", DataType.INT64)
            schema.add_field("confidence", DataType.FLOAT)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type=self.index_type, metric_type="L2",
                            params=dict(self.index_params))
            self._call("create_collection", c.create_collection, self.collection, schema=schema, index_params=index,
                       consistency_level=self.consistency)
            LOGGER.info("created Milvus collection %s (%d dims, %s) at %s", self.collection, self.dims,
                        self.index_type, self.uri)
        else:
            self._check_schema()
        self._call("load_collection", c.load_collection, self.collection)

    def _check_schema(self) -> None:
        info = self._call("describe_collection", self._client.describe_collection, self.collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        want = {"object_id", "vector", "class_id", "image_id", "confidence"}
        if not want <= set(fields) or not fields["object_id"].get("is_primary"):
            raise VectorStoreError(f"Milvus collection {self.collection} at {self.uri} was not made by objsearch "
                                   f"(fields {sorted(fields)}); name another with --milvus-collection")
        dim = int(fields["vector"].get("params", {}).get("dim", -1))
        if dim != self.dims:
            raise VectorStoreError(f"Milvus collection {self.collection} at {self.uri} holds {dim}-d vectors, not "
                                   f"{self.dims}-d; name another with --milvus-collection")
        indexes = self._call("list_indexes", self._client.list_indexes, self.collection)
        if indexes:
            desc = self._call("describe_index", self._client.describe_index, self.collection, indexes[0])
            made = str(desc.get("index_type", self.index_type))
            if made != self.index_type:
                LOGGER.info("Milvus collection %s has a %s index (asked for %s); using it", self.collection, made,
                            self.index_type)
                self.index_type = made
                self.exact = made == "FLAT"
                build, search = default_params(made)
                self.search_params = {**search, **self.search_params} if made != "FLAT" else {}

    @property
    def state(self) -> dict:
        """The catalog state the collection mirrors: ``{"index_uuid", "generation", "dims"}`` (strings; empty for a
        collection no catalog was written to)."""
        info = self._call("describe_collection", self._client.describe_collection, self.collection)
        props = info.get("properties", {}) or {}
        return {key.split(".", 1)[1]: str(props[key]) for key in _PROPS if key in props}

    def mark(self, index_uuid: str, generation: int) -> None:
        """Record that the collection now mirrors catalog ``index_uuid`` at ``generation``."""
        props = {"objsearch.index_uuid": str(index_uuid), "objsearch.generation": str(int(generation)),
                 "objsearch.dims": str(self.dims)}
        self._call("alter_collection_properties", self._client.alter_collection_properties, self.collection,
                   properties=props)

    def all_ids(self, batch: int = 16384) -> np.ndarray:
        """Every id in the collection, sorted: (n,) int64 (an iterator over the collection: O(n) transfer)."""
        self._check_open()
        # Milvus Lite has no MVCC timestamp for an iterator's session; pymilvus then warns and uses the client's
        # clock, which is what Lite's single process wants: that one warning is not shown for a Lite database
        iterator_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
        level = iterator_log.level
        if _is_local(self.uri):
            iterator_log.setLevel(logging.ERROR)
        try:
            it = self._call("query_iterator", self._client.query_iterator, self.collection, batch_size=batch,
                            filter="object_id >= 0", output_fields=["object_id"], consistency_level=self.consistency)
        finally:
            iterator_log.setLevel(level)
        chunks = []
        try:
            while True:
                rows = self._call("query_iterator", it.next)
                if not rows:
                    break
                chunks.append(np.fromiter((r["object_id"] for r in rows), np.int64, len(rows)))
        finally:
            it.close()
        return np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (distinct) are in the collection: sorted (m,) int64. Always read with Strong consistency:
        add and remove decide on it (under Bounded a fresh id was not seen, so not removed: measured on 2.3.5)."""
        found = []
        for start in range(0, len(ids), IN_LIST):
            part = ids[start:start + IN_LIST]
            rows = self._call("query", self._client.query, self.collection,
                              filter=f"object_id in [{','.join(str(int(i)) for i in part)}]",
                              output_fields=["object_id"], consistency_level="Strong")  # writes decide on it
            found += [int(r["object_id"]) for r in rows]
        return np.unique(np.asarray(found, np.int64))

    # --------------------------------------------------------------------------------------------- protocol
    def __len__(self) -> int:
        self._check_open()
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"],
                          consistency_level=self.consistency)
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids, vectors, class_id, image_id, *, confidence=None) -> None:
        """Add objects (see ``VectorStore.add``); ``confidence`` (n,) float, optional, is stored alongside.

        Raises
        ------
        ValueError
            For a wrong shape or dtype, a non-finite vector, a negative id, or ids already in the collection or
            repeated (the message names them); nothing is written then.
        VectorStoreError
            When Milvus fails.
        """
        self._check_open()
        ids, vectors, class_id, image_id = self._check_new(ids, vectors, class_id, image_id)
        n = len(ids)
        conf = np.zeros(n, np.float32) if confidence is None else np.asarray(confidence, np.float32).reshape(-1)
        if conf.shape != (n,):
            raise ValueError(f"confidence must have shape ({n},), got {conf.shape}")
        if not n:
            return
        present = self._present(ids)
        if len(present):
            raise ValueError(f"ids must not be in the store already, got {len(present)} present: "
                             f"{some_values(present)}")
        self._insert(ids, vectors, class_id, image_id, conf, upsert=False)

    def _insert(self, ids, vectors, class_id, image_id, conf, *, upsert: bool) -> None:
        fn = self._client.upsert if upsert else self._client.insert
        for start in range(0, len(ids), INSERT_ROWS):
            end = start + INSERT_ROWS
            rows = [{"object_id": int(i), "vector": v, "class_id": int(c), "image_id": int(m), "confidence": float(s)}
                    for i, v, c, m, s in zip(ids[start:end], vectors[start:end], class_id[start:end],
                                             image_id[start:end], conf[start:end])]
            self._call("upsert" if upsert else "insert", fn, self.collection, rows)

    def remove(self, ids) -> int:
        """Remove objects by id (ids not present are ignored); returns how many were removed."""
        self._check_open()
        ids = np.unique(int_array("ids", ids))
        present = self._present(ids) if len(ids) else ids
        for start in range(0, len(present), IN_LIST):
            self._call("delete", self._client.delete, self.collection, ids=[int(i) for i in present[start:start + IN_LIST]])
        return int(len(present))

    def search(self, vectors, k: int, *, class_id=None, exclude_image_id=None) -> Hits:
        """The k nearest objects of each query (see ``VectorStore.search``); k above Milvus' limit of 16384 is
        padded past it.

        Raises
        ------
        ValueError
            For a bad ``k``, a query that is not (Q, dims) or not finite, or a filter of the wrong shape.
        VectorStoreError
            When Milvus fails.
        """
        self._check_open()
        queries, k, class_id, exclude = check_query(vectors, k, class_id, exclude_image_id, self.dims)
        q = len(queries)
        hits = Hits.empty(q, k)
        if q == 0:
            return hits
        keys = np.stack([class_id if class_id is not None else np.full(q, -1),
                         exclude if exclude is not None else np.full(q, -1)], 1)
        groups, group_of = np.unique(keys, axis=0, return_inverse=True)
        group_of = group_of.reshape(-1)
        limit = min(k, MAX_TOPK)
        params = {"metric_type": "L2", "params": dict(self.search_params)}
        if self.index_type == "HNSW":
            params["params"]["ef"] = max(int(self.search_params.get("ef", 64)), limit)
        def one_group(g: int):
            cid, excluded = groups[g]
            rows = np.flatnonzero(group_of == g)
            terms = ([f"class_id == {int(cid)}"] if class_id is not None else []) + \
                    ([f"image_id != {int(excluded)}"] if exclude is not None and excluded >= 0 else [])
            return rows, self._call("search", self._client.search, self.collection, data=queries[rows],
                                    limit=limit, filter=" and ".join(terms), output_fields=["object_id"],
                                    search_params=params, consistency_level=self.consistency, anns_field="vector")

        if len(groups) > 1:  # one call per filter: issued together, so their waits (consistency) overlap
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(groups), SEARCH_THREADS)) as pool:
                answers = list(pool.map(one_group, range(len(groups))))
        else:
            answers = [one_group(0)]
        for rows, result in answers:
            for row, found in zip(rows, result):
                n = len(found)
                if not n:
                    continue
                hits.ids[row, :n] = [_hit_id(h) for h in found]
                squared = np.asarray([h["distance"] for h in found], np.float64)
                hits.distances[row, :n] = np.sqrt(np.maximum(squared, 0.0))
        # Milvus orders by float32 squared distance; keep the contract's ascending order after the square root
        order = np.argsort(hits.distances, axis=1, kind="stable")
        hits.distances[:] = np.take_along_axis(hits.distances, order, 1)
        hits.ids[:] = np.take_along_axis(hits.ids, order, 1)
        return hits

    def close(self) -> None:
        """Close the client when the store opened it; the collection stays on the server (or in the ``.db``)."""
        if self._closed:
            return
        self._closed = True
        if self._own_client and getattr(self, "_client", None) is not None:
            try:
                self._client.close()
            except Exception as exc:  # closing must not fail a caller that is already unwinding
                LOGGER.debug("closing the Milvus client failed: %s", exc)

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        self._check_open()
        self._call("drop_collection", self._client.drop_collection, self.collection)

    def __enter__(self) -> MilvusVectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusVectorStore(uri={self.uri!r}, collection={self.collection!r}, dims={self.dims}, " \
               f"index_type={self.index_type!r})"

    # ---------------------------------------------------------------------------------------- catalog sync
    def follow(self, catalog, *, previous=None) -> tuple[int, int]:
        """Bring the collection in step with ``catalog`` (an ``objsearch.catalog.Catalog``) at this store's dims.

        Parameters
        ----------
        catalog : Catalog
        previous : (index_uuid, generation, object_ids), optional
            A catalog state the caller knows the collection mirrored before; when the collection is still marked
            with it, the update is the id difference between it and ``catalog`` (no listing of the collection).

        Returns
        -------
        (added, removed) : tuple of int

        Raises
        ------
        VectorStoreError
            When the collection mirrors another index, or holds objects without saying which index (not empty and
            unmarked).
        """
        self._check_open()
        state = self.state
        uuid, generation = str(catalog.uuid), int(catalog.generation)
        if state.get("index_uuid") not in (None, uuid):
            raise VectorStoreError(
                f"Milvus collection {self.collection} at {self.uri} mirrors another index (uuid "
                f"{state['index_uuid'][:12]}…), not {catalog.path}; name another with --milvus-collection")
        if state.get("index_uuid") == uuid and state.get("generation") == str(generation):
            return 0, 0
        ids = np.asarray(catalog.object_id, np.int64)
        if (previous is not None and state.get("index_uuid") == uuid and previous[0] == uuid
                and state.get("generation") == str(int(previous[1]))):
            known = np.asarray(previous[2], np.int64)
            gone = np.setdiff1d(known, ids)
            fresh = np.isin(ids, known, invert=True)
        else:
            if not state and len(self) and previous is None:
                LOGGER.info("Milvus collection %s holds objects but no catalog mark; syncing by id", self.collection)
            have = self.all_ids()
            gone = np.setdiff1d(have, ids)
            fresh = np.isin(ids, have, invert=True)
        removed = 0
        for start in range(0, len(gone), IN_LIST):
            part = [int(i) for i in gone[start:start + IN_LIST]]
            self._call("delete", self._client.delete, self.collection, ids=part)
            removed += len(part)
        added = int(fresh.sum())
        if added:
            vectors = catalog.vectors(self.dims)
            # upsert: idempotent if another process added some of them meanwhile (Milvus does not refuse repeated
            # primary keys on insert)
            self._insert(ids[fresh], vectors[fresh], np.asarray(catalog.class_id)[fresh],
                         np.asarray(catalog.object_media_id)[fresh], np.asarray(catalog.confidence)[fresh],
                         upsert=True)
        self.mark(uuid, generation)
        if added or removed:
            LOGGER.info("Milvus collection %s: %d objects added, %d removed (catalog generation %d)", self.collection,
                        added, removed, generation)
        return added, int(removed)

    # ---------------------------------------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this vector store is closed")

    def _check_new(self, ids, vectors, class_id, image_id):
        return check_new(ids, vectors, class_id, image_id, self.dims)


def milvus_store(uri, collection: str, ids, vectors, class_id, image_id, *, confidence=None,
                 replace: bool = True, **kwargs) -> MilvusVectorStore:
    """A store on a fresh collection holding exactly the given objects (the contract suite's factory shape).

    Parameters
    ----------
    uri, collection : see ``MilvusVectorStore``
    ids, vectors, class_id, image_id : as ``MilvusVectorStore.add``; ``vectors`` (0, dims) for an empty store.
    replace : drop an existing collection of that name first.
    **kwargs : passed to ``MilvusVectorStore`` (index_type, consistency, ...).
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must have shape (n, dims), got {vectors.shape}")
    client = kwargs.pop("client", None)
    if replace:
        client = client or connect(uri, token=kwargs.get("token", ""))
        if client.has_collection(collection):
            client.drop_collection(collection)
        kwargs["client"] = client
        store = MilvusVectorStore(uri, collection, vectors.shape[1], **kwargs)
        store._own_client = True  # the client was made here: the store closes it
    else:
        store = MilvusVectorStore(uri, collection, vectors.shape[1], client=client, **kwargs)
    try:
        store.add(ids, vectors, class_id, image_id, confidence=confidence)
    except BaseException:
        store.close()
        raise
    return store


def open_for_catalog(catalog, dims: int, uri, *, collection: str | None = None, index_type: str = "FLAT",
                     consistency: str = "Strong", token: str = "") -> MilvusVectorStore:
    """The store of ``catalog``'s vectors at ``dims`` on ``uri``, created or brought in step (``follow``).

    Raises
    ------
    VectorStoreError
        See ``connect``, ``MilvusVectorStore`` and ``MilvusVectorStore.follow``.
    """
    name = collection or default_collection(catalog.uuid, dims)
    store = MilvusVectorStore(uri, name, dims, index_type=index_type, consistency=consistency, token=token)
    try:
        store.follow(catalog)
    except BaseException:
        store.close()
        raise
    return store


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact (non-padded) neighbours found: ids (Q, k) each."""
    shares = [len(set(a[a >= 0]) & set(e[e >= 0])) / (e >= 0).sum() if (e >= 0).any() else 1.0
              for a, e in zip(approximate, exact)]
    return float(np.mean(shares)) if shares else math.nan


__all__ = ["CONSISTENCY_LEVELS", "INDEX_TYPES", "MilvusVectorStore", "connect", "default_collection",
           "milvus_store", "open_for_catalog", "recall_at_k"]
