"""The device store (``--backend torch``) beyond the contract suite (which ``tests/test_vectors.py`` runs against it):
its memory bound, ``auto``'s device rule, and the engine searching through it."""

from __future__ import annotations

import numpy as np
import pytest
from testdata import BUS

import vector_store_contract as contract

torch = pytest.importorskip("torch")


def test_no_chunk_holds_more_distances_than_allowed(monkeypatch):
    """Every distance block is at most ``chunk_elements`` (queries x rows), whatever the number of queries, and the
    answer is the oracle's."""
    from objsearch.vectors.torch_knn import TorchVectorStore

    rng = np.random.default_rng(0)
    n, dims = 5000, 32
    ids = np.arange(n, dtype=np.int64) * 3
    vectors = rng.normal(size=(n, dims)).astype(np.float32)
    class_id, image_id = rng.integers(0, 5, n), rng.integers(0, 200, n)
    seen = []
    addmm = torch.addmm

    def recording(*args, **kwargs):
        out = addmm(*args, **kwargs)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch, "addmm", recording)
    store = TorchVectorStore(ids, vectors, class_id, image_id, chunk_elements=4096)
    for q in (1, 7, 64):
        queries = (vectors[:q] + rng.normal(scale=0.2, size=(q, dims))).astype(np.float32)
        seen.clear()
        hits = store.search(queries, 10, class_id=class_id[:q], exclude_image_id=image_id[:q])
        assert len(seen) >= n * q // 4096 and max(seen) <= 4096
        allowed = (class_id[None] == class_id[:q, None]) & (image_id[None] != image_id[:q, None])
        contract.assert_matches_oracle(store, hits, ids, vectors, queries, 10, allowed)
    store.close()


def test_auto_picks_the_device_store_on_a_gpu_for_large_indexes():
    """The device rule of ``auto``: ``torch`` on a CUDA device from ``AUTO_MIN_VECTORS`` on, the in-memory ``auto``
    otherwise (on the CPU always); an explicit backend is never changed."""
    from objsearch.vectors import resolve_backend
    from objsearch.vectors.torch_knn import AUTO_MIN_VECTORS

    big, small = AUTO_MIN_VECTORS, AUTO_MIN_VECTORS - 1
    assert resolve_backend("auto", big, "cuda") == "torch"
    assert resolve_backend("auto", big, "0") == "torch" and resolve_backend("auto", big, "cuda:1") == "torch"
    assert resolve_backend("auto", small, "cuda:0") == "auto"
    assert resolve_backend("auto", 10**8, "cpu") == "auto" and resolve_backend("auto", 10**8, None) == "auto"
    assert resolve_backend("faiss", big, "cuda") == "faiss" and resolve_backend("torch", 1, "cpu") == "torch"


def test_a_device_that_is_not_here_is_a_device_error():
    from objsearch.errors import DeviceError
    from objsearch.vectors.torch_knn import TorchVectorStore

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    ids, vectors, class_id, image_id, _ = contract.make_data()
    with pytest.raises(DeviceError, match="CUDA"):
        TorchVectorStore(ids, vectors, class_id, image_id, device="cuda")
    with pytest.raises(ValueError, match="chunk_elements"):
        TorchVectorStore(ids, vectors, class_id, image_id, chunk_elements=0)


def test_the_engine_searches_through_the_device_store(small_index, detector):
    """``Engine(backend="torch")`` finds the neighbours the exact in-memory search finds, for objects and whole
    images."""
    from objsearch.engine import Engine

    index, _ = small_index
    results = {}
    for backend in ("numpy", "torch"):
        with Engine(index, backend=backend, detector=detector) as engine:
            assert engine.method == backend
            found = engine.search_file(BUS, k=5)
            image = engine.search_image_file(BUS, k=3)
            results[backend] = ([[nb.object_id for nb in row] for row in found.neighbors],
                                [nb.media.media_id for nb in image.neighbors])
    assert results["torch"] == results["numpy"] and len(results["torch"][0]) >= 3
