"""Vector stores: the contract suite (``tests/vector_store_contract.py``) run against every backend, then what is
particular to the in-memory store (the hnsw graph cache, ``auto``'s calibration, hnsw recall on harder data)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import vector_store_contract as contract
from objsearch.vectors import BACKENDS, VectorStore, memory_store
from objsearch.vectors import hnsw as hnsw_module
from objsearch.vectors.exact import EXACT_METHODS, faiss_available
from objsearch.vectors.hnsw import HnswParams, hnswlib_available
from objsearch.vectors.memory import MemoryVectorStore

HNSW = HnswParams(build_threads=1)


def _memory(method, **kwargs):
    def factory(tmp_path):
        if method == "faiss" and not faiss_available():
            pytest.skip("faiss is not installed")
        if method == "hnsw" and not hnswlib_available():
            pytest.skip("hnswlib is not installed")
        extra = {"hnsw": HNSW} if method == "hnsw" else {}
        if kwargs.get("cached"):
            extra["hnsw_cache"] = tmp_path / "graph.hnsw"

        def make_store(ids, vectors, class_id, image_id):
            return memory_store(method, ids, vectors, class_id, image_id, **extra)

        return make_store

    return factory


def _milvus_lite(**kwargs):
    """A fresh collection in a per-test Milvus Lite database (Lite holds a LOCK per .db: one per test)."""
    def factory(tmp_path):
        pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'objsearch[milvus]')")
        pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'objsearch[milvus]')")
        from objsearch.vectors.milvus import milvus_store

        counter = iter(range(10**6))

        def make_store(ids, vectors, class_id, image_id):
            return milvus_store(str(tmp_path / "milvus.db"), f"contract_{next(counter)}", ids, vectors, class_id,
                                image_id, **kwargs)

        return make_store

    return factory


def _torch(**kwargs):
    """The device store on the CPU (the tests' device); ``chunk_elements`` small makes every search merge chunks."""
    def factory(tmp_path):
        pytest.importorskip("torch")
        from objsearch.vectors.torch_knn import TorchVectorStore

        def make_store(ids, vectors, class_id, image_id):
            return TorchVectorStore(ids, vectors, class_id, image_id, device="cpu", **kwargs)

        return make_store

    return factory


# One factory per backend: ``factory(tmp_path) -> make_store``. A new backend adds itself here.
FACTORIES = {
    "kdtree": _memory("kdtree"),
    "faiss": _memory("faiss"),
    "numpy": _memory("numpy"),
    "hnsw": _memory("hnsw"),
    "hnsw-cached": _memory("hnsw", cached=True),  # every store of a check shares one graph file: reconciled on open
    "auto": _memory("auto"),
    "milvus": _milvus_lite(),  # FLAT: exact
    "torch": _torch(),
    "torch-chunked": _torch(chunk_elements=50),  # a few rows per chunk: the running top k is merged many times
}


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
@pytest.mark.parametrize("check", contract.CHECKS, ids=[c.__name__ for c in contract.CHECKS])
def test_contract(check, factory, tmp_path):
    check(factory(tmp_path))


def test_every_memory_method_has_a_factory():
    assert set(BACKENDS) <= set(FACTORIES)


# -------------------------------------------------------------------------------------------------- methods
def test_unknown_method_and_bad_hnsw_params_are_refused():
    ids, vectors, class_id, image_id, _ = contract.make_data()
    with pytest.raises(ValueError, match="one of auto, kdtree, faiss, numpy, hnsw, got 'annoy'"):
        memory_store("annoy", ids, vectors, class_id, image_id)
    with pytest.raises(ValueError, match="hnsw must be an HnswParams, got dict"):
        memory_store("hnsw", ids, vectors, class_id, image_id, hnsw={"M": 8})
    with pytest.raises(ValueError, match="M must be >= 1, got 0"):
        HnswParams(M=0)
    with pytest.raises(ValueError, match="ef_search must be >= 1 or None, got 0"):
        HnswParams(ef_search=0)
    with pytest.raises(ValueError, match=r"ids must be >= 0 \(-1 pads search results\), got \[-1\]"):
        memory_store("numpy", np.array([-1]), vectors[:1], class_id[:1], image_id[:1])


def test_auto_calibrates_and_calibrates_again_after_growing():
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(2500, 32)).astype(np.float32)
    ids = np.arange(2500) * 3
    class_id, image_id = rng.integers(0, 4, 2500), rng.integers(0, 100, 2500)
    queries = rng.normal(size=(10, 32)).astype(np.float32)
    store = memory_store("auto", ids[:100], vectors[:100], class_id[:100], image_id[:100])
    assert store.backend in EXACT_METHODS and store.timings_ms == {}  # too small to time
    store.add(ids[100:], vectors[100:], class_id[100:], image_id[100:])
    hits = store.search(queries, 16)  # past 2000 objects: timed now
    assert store.backend in EXACT_METHODS and set(store.timings_ms) <= set(EXACT_METHODS)
    assert store.timings_ms
    np.testing.assert_array_equal(hits.ids, contract.oracle(ids, vectors, queries, 16)[1])
    timings = store.timings_ms
    store.remove(ids[:10])
    store.search(queries, 16)
    assert store.timings_ms is timings  # a small change does not calibrate again


# ----------------------------------------------------------------------------------------------------- hnsw
@pytest.fixture
def hnsw_data():
    """3000 x 32 Gaussian vectors (hard for a graph: no cluster structure), 6 classes, 400 images."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    ids = 10 + 5 * np.arange(3000, dtype=np.int64)
    class_id = rng.choice(6, 3000, p=[0.4, 0.3, 0.2, 0.07, 0.02, 0.01])
    image_id = rng.integers(0, 400, 3000)
    queries = (vectors[rng.integers(0, 3000, 40)] + rng.normal(scale=0.5, size=(40, 32))).astype(np.float32)
    return ids, vectors, class_id, image_id, queries


@pytest.mark.parametrize("exact_below", [10, 20_000], ids=["over-fetch from the graph", "exact scan of the class"])
def test_hnsw_recall_and_exact_filters_on_harder_data(hnsw_data, exact_below):
    ids, vectors, class_id, image_id, queries = hnsw_data
    store = memory_store("hnsw", ids, vectors, class_id, image_id, hnsw=HnswParams(build_threads=1,
                                                                                    exact_below=exact_below))
    contract.assert_matches_oracle(store, store.search(queries, 16), ids, vectors, queries, 16)
    q = len(queries)
    query_class = np.arange(q) % 6  # classes of 1200 down to 30 objects
    excluded = image_id[np.random.default_rng(3).integers(0, 3000, q)]
    allowed = (class_id[None] == query_class[:, None]) & (image_id[None] != excluded[:, None])
    hits = store.search(queries, 16, class_id=query_class, exclude_image_id=excluded)
    contract.assert_matches_oracle(store, hits, ids, vectors, queries, 16, allowed)
    # after removing a third, in the graph only marked deleted
    gone = ids[::3]
    store.remove(gone)
    keep = ~np.isin(ids, gone)
    allowed = allowed[:, keep]
    hits = store.search(queries, 16, class_id=query_class, exclude_image_id=excluded)
    contract.assert_matches_oracle(store, hits, ids[keep], vectors[keep], queries, 16, allowed)


def test_hnsw_class_far_from_the_queries_falls_back_to_an_exact_scan():
    """A class the over-fetch cannot reach: its members lie far away, so the graph's neighbours hold none."""
    rng = np.random.default_rng(4)
    vectors = np.concatenate([rng.normal(size=(2000, 16)), rng.normal(size=(40, 16)) + 50]).astype(np.float32)
    ids = np.arange(2040) + 500
    class_id = np.r_[np.zeros(2000, int), np.ones(40, int)]
    store = memory_store("hnsw", ids, vectors, class_id, np.zeros(2040, int),
                         hnsw=HnswParams(build_threads=1, exact_below=10))
    queries = vectors[:5] + 0.01
    hits = store.search(queries, 12, class_id=1)
    np.testing.assert_array_equal(hits.ids, contract.oracle(ids, vectors, queries, 12,
                                                            np.broadcast_to(class_id == 1, (5, 2040)))[1])


def test_hnsw_is_reproducible_with_one_build_thread(hnsw_data):
    ids, vectors, class_id, image_id, queries = hnsw_data
    first = memory_store("hnsw", ids, vectors, class_id, image_id, hnsw=HnswParams(build_threads=1, seed=7))
    again = memory_store("hnsw", ids, vectors, class_id, image_id, hnsw=HnswParams(build_threads=1, seed=7))
    np.testing.assert_array_equal(first.search(queries, 10).ids, again.search(queries, 10).ids)


# ------------------------------------------------------------------------------------------------ hnsw cache
def _cached(path, ids, vectors, class_id, image_id, **params):
    return memory_store("hnsw", ids, vectors, class_id, image_id, hnsw=HnswParams(build_threads=1, **params),
                        hnsw_cache=path)


def test_hnsw_cache_is_written_then_loaded_with_the_same_answers(hnsw_data, tmp_path, caplog):
    ids, vectors, class_id, image_id, queries = hnsw_data
    path = tmp_path / "graph.hnsw"
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        first = _cached(path, ids, vectors, class_id, image_id)
    assert path.is_file() and "built" in caplog.text
    header = json.loads(path.with_name("graph.hnsw.json").read_text())
    assert header["dims"] == 32 and header["M"] == 16 and header["count"] == 3000 and header["deleted"] == []
    assert header["ids_digest"] == hnsw_module.ids_digest(ids[::-1])  # order does not matter
    mtime = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        again = _cached(path, ids, vectors, class_id, image_id)
    assert "loaded" in caplog.text and "built" not in caplog.text
    assert path.stat().st_mtime_ns == mtime  # unchanged: not written again
    np.testing.assert_array_equal(first.search(queries, 10).ids, again.search(queries, 10).ids)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_hnsw_cache_is_reconciled_with_the_given_ids(hnsw_data, tmp_path, caplog):
    ids, vectors, class_id, image_id, queries = hnsw_data
    path = tmp_path / "graph.hnsw"
    store = _cached(path, ids[:2000], vectors[:2000], class_id[:2000], image_id[:2000])
    store.remove(ids[:100])  # marked deleted, saved on close
    store.close()
    assert len(json.loads(path.with_name("graph.hnsw.json").read_text())["deleted"]) == 100
    # open with ids 50..2999: 50..99 were deleted in the graph (revived), 100..1999 live, 2000..2999 new
    given = slice(50, 3000)
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        store = _cached(path, ids[given], vectors[given], class_id[given], image_id[given])
    assert "loaded" in caplog.text and "1050 objects added, 0 removed" in caplog.text
    contract.assert_matches_oracle(store, store.search(queries, 16), ids[given], vectors[given], queries, 16)
    # and ids 0..499: 0..49 deleted in the graph (revived), 500..2999 marked deleted, never returned
    store.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        store = _cached(path, ids[:500], vectors[:500], class_id[:500], image_id[:500])
    assert "50 objects added, 2500 removed" in caplog.text
    contract.assert_matches_oracle(store, store.search(queries, 16), ids[:500], vectors[:500], queries, 16)


@pytest.mark.parametrize("change", ["M", "dims", "vectors", "sidecar", "graph"])
def test_hnsw_cache_that_does_not_match_is_rebuilt(hnsw_data, tmp_path, caplog, change):
    ids, vectors, class_id, image_id, queries = hnsw_data
    path = tmp_path / "graph.hnsw"
    _cached(path, ids[:500], vectors[:500], class_id[:500], image_id[:500])
    params, v = {}, vectors[:500]
    if change == "M":
        params = {"M": 8}
    elif change == "dims":
        v = vectors[:500, :16]
    elif change == "vectors":  # another projection with the same dims
        v = vectors[:500] * 2
    elif change == "sidecar":
        path.with_name("graph.hnsw.json").write_text("{not json")
    else:  # the graph replaced after its sidecar was written (a crash between the two replaces)
        path.write_bytes(path.read_bytes() + b"\0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        store = _cached(path, ids[:500], v, class_id[:500], image_id[:500], **params)
    assert "building the hnsw graph" in caplog.text and "loaded" not in caplog.text
    contract.assert_matches_oracle(store, store.search(queries[:, : v.shape[1]], 8), ids[:500], v,
                                   queries[:, : v.shape[1]], 8)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
        _cached(path, ids[:500], v, class_id[:500], image_id[:500], **params)
    assert "loaded" in caplog.text  # the rebuilt graph was saved


def test_hnsw_cache_in_a_read_only_folder_stays_in_memory(hnsw_data, tmp_path, caplog, monkeypatch):
    ids, vectors, class_id, image_id, queries = hnsw_data
    folder = tmp_path / "ro"
    folder.mkdir()
    _cached(folder / "graph.hnsw", ids[:300], vectors[:300], class_id[:300], image_id[:300]).close()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: permissions do not bind, so the folder says it is read-only
        real_access = os.access
        monkeypatch.setattr(hnsw_module.os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    try:
        with caplog.at_level(logging.INFO, logger="objsearch.vectors"):
            store = _cached(folder / "graph.hnsw", ids[:400], vectors[:400], class_id[:400], image_id[:400])
            contract.assert_matches_oracle(store, store.search(queries, 8), ids[:400], vectors[:400], queries, 8)
            store.close()
        assert "loaded" in caplog.text and "not writable" in caplog.text
        assert sorted(p.name for p in folder.iterdir()) == ["graph.hnsw", "graph.hnsw.json"]
    finally:
        folder.chmod(0o755)


def test_store_is_a_vector_store_and_a_context_manager():
    ids, vectors, class_id, image_id, queries = contract.make_data()
    with MemoryVectorStore(ids, vectors, class_id, image_id, "numpy") as store:
        assert isinstance(store, VectorStore)
        assert "numpy" in repr(store)
    with pytest.raises(RuntimeError, match="closed"):
        store.search(queries, 3)
