"""Vector backends by name (``objsearch.vectors.registry``): names, options dataclasses, capabilities, the choice
stored with the index, and a new backend made of its module and one registration, proved by the contract suite."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import vector_store_contract as contract
from test_catalog import make_record, new_catalog

from objsearch.catalog import Catalog, CatalogWriter
from objsearch.vectors import BACKENDS, vector_store
from objsearch.vectors import registry
from objsearch.vectors.exact import ExactOptions
from objsearch.vectors.hnsw import HnswParams
from objsearch.vectors.milvus import MilvusOptions
from objsearch.vectors.torch_knn import TorchOptions


def test_every_backend_has_a_name_an_options_dataclass_and_capabilities():
    assert BACKENDS == registry.backend_names() == ("auto", "kdtree", "faiss", "numpy", "hnsw", "torch", "milvus")
    assert {n: registry.get_backend(n).options for n in BACKENDS} == {
        "auto": ExactOptions, "kdtree": ExactOptions, "faiss": ExactOptions, "numpy": ExactOptions,
        "hnsw": HnswParams, "torch": TorchOptions, "milvus": MilvusOptions}
    assert [n for n in BACKENDS if registry.get_backend(n).follows_catalog] == ["milvus"]
    assert registry.array_backends() == ("auto", "kdtree", "faiss", "numpy", "hnsw", "torch")
    with pytest.raises(ValueError, match="backend must be one of auto, kdtree, faiss, numpy, hnsw, torch, milvus, "
                                         "got 'qdrant'"):
        registry.get_backend("qdrant")


def test_options_are_dataclasses_with_defaults_in_code():
    options = registry.make_options("milvus", uri="http://127.0.0.1:19530")
    assert options == MilvusOptions("http://127.0.0.1:19530", None, "FLAT", "Strong")
    assert registry.make_options("hnsw", M=8) == HnswParams(M=8)
    with pytest.raises(ValueError, match=r"backend 'milvus' takes the options .*not \['nprobe'\]"):
        registry.make_options("milvus", nprobe=3)
    with pytest.raises(ValueError, match=r"backend 'numpy' takes the options none, not \['M'\]"):
        registry.make_options("numpy", M=8)
    with pytest.raises(ValueError, match="backend 'hnsw' takes HnswParams, got MilvusOptions"):
        registry.choose("hnsw", MilvusOptions())
    assert registry.choose("torch") == registry.BackendChoice("torch", TorchOptions())


def test_the_choice_is_stored_with_the_index_and_read_back(tmp_path):
    path = tmp_path / "INDEX.h5"
    rng = np.random.default_rng(0)
    with new_catalog(path) as w:
        w.add(make_record(rng, "a.jpg", 3))
        w.commit()
    with Catalog(path) as cat:
        assert registry.stored_choice(cat) is None  # made before (or without) a choice: opens as before
    chosen = registry.choose("milvus", MilvusOptions(uri="http://db:19530", collection="mine", index_type="HNSW"))
    with CatalogWriter.open(path, fsync=False) as w:
        registry.record_choice(w, chosen)
        w.commit()
    with Catalog(path) as cat:
        assert cat.vector_backend == {"name": "milvus", "options": {"uri": "http://db:19530", "collection": "mine",
                                                                    "index_type": "HNSW", "consistency": "Strong"}}
        assert registry.stored_choice(cat) == chosen
    with CatalogWriter.open(path, fsync=False) as w:  # a backend this objsearch does not have
        w.commit(vector_backend={"name": "qdrant", "options": {}})
    with Catalog(path) as cat, pytest.raises(ValueError, match="was set up with vector backend 'qdrant': backend "
                                                               "must be one of"):
        registry.stored_choice(cat)


def test_a_store_opens_from_a_catalog_by_choice(tmp_path):
    path = tmp_path / "INDEX.h5"
    rng = np.random.default_rng(1)
    with new_catalog(path) as w:
        for i in range(4):
            w.add(make_record(rng, f"m{i}.jpg", 5))
        w.commit()
    with Catalog(path) as cat:
        hnsw = registry.get_backend("hnsw")
        assert registry.cache_path(hnsw, f"{path}.", 16) == tmp_path / "INDEX.h5.hnsw16"
        assert registry.cache_path(registry.get_backend("numpy"), f"{path}.", 16) is None
        store = registry.open_catalog_store(registry.choose("hnsw", HnswParams(build_threads=1)), cat, 16,
                                            files=f"{path}.")
        try:
            assert store.backend == "hnsw" and len(store) == len(cat.object_id)
        finally:
            store.close()
        assert (tmp_path / "INDEX.h5.hnsw16").is_file()
        with registry.open_catalog_store(registry.choose("numpy"), cat, 16) as exact:
            hits = exact.search(cat.vectors(16)[:2], 1)
            assert np.array_equal(hits.ids[:, 0], cat.object_id[:2])
    with pytest.raises(ValueError, match="the milvus backend opens only from an index"):
        vector_store("milvus", np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0))


# ------------------------------------------------------------------------------ a new backend: module + registration
@dataclass(frozen=True)
class _ScanOptions:
    """The toy backend's options: a threshold it does not use, to show that options travel."""

    unused: int = 0


class _ScanStore:
    """A toy backend (what a new module would hold): an exact scan in plain numpy over a dict of ids."""

    backend = "scan"
    exact = True

    def __init__(self, ids, vectors, class_id, image_id, options: _ScanOptions) -> None:
        self.options = options
        self.dims = int(np.asarray(vectors).shape[-1])
        self._rows: dict[int, tuple[np.ndarray, int, int]] = {}
        self.add(ids, vectors, class_id, image_id)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, ids, vectors, class_id, image_id) -> None:
        from objsearch.vectors.checks import check_new, some_values

        ids, vectors, class_id, image_id = check_new(ids, vectors, class_id, image_id, self.dims)
        present = [i for i in ids.tolist() if i in self._rows]
        if present:
            raise ValueError(f"ids must not be in the store already, got {len(present)} present: "
                             f"{some_values(present)}")
        for i, v, c, m in zip(ids.tolist(), vectors, class_id.tolist(), image_id.tolist()):
            self._rows[i] = (v.copy(), c, m)

    def remove(self, ids) -> int:
        from objsearch.vectors.checks import int_array

        return sum(self._rows.pop(i, None) is not None for i in np.unique(int_array("ids", ids)).tolist())

    def search(self, vectors, k, *, class_id=None, exclude_image_id=None):
        from objsearch.types import Hits
        from objsearch.vectors.checks import check_query

        queries, k, class_id, exclude = check_query(vectors, k, class_id, exclude_image_id, self.dims)
        hits = Hits.empty(len(queries), k)
        for q, query in enumerate(queries):
            found = [(float(np.linalg.norm(v - query)), i) for i, (v, c, m) in self._rows.items()
                     if (class_id is None or c == class_id[q]) and (exclude is None or m != exclude[q])]
            found.sort()
            for j, (d, i) in enumerate(found[:k]):
                hits.distances[q, j], hits.ids[q, j] = d, i
        return hits

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def scan_backend(monkeypatch):
    """The toy backend registered as ``scan`` for one test (its registration: one ``Backend``)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry.register(registry.Backend(
        "scan", _ScanOptions,
        lambda ids, vectors, class_id, image_id, options, *, device=None, cache=None:
        _ScanStore(ids, vectors, class_id, image_id, options)))


@pytest.mark.parametrize("check", contract.CHECKS, ids=[c.__name__ for c in contract.CHECKS])
def test_a_registered_backend_passes_the_contract(scan_backend, check):
    choice = registry.choose("scan", registry.make_options("scan", unused=3))

    def make_store(ids, vectors, class_id, image_id):
        store = registry.open_array_store(choice, ids, vectors, class_id, image_id)
        assert store.options.unused == 3
        return store

    check(make_store)
    assert "scan" in registry.backend_names() and dataclasses.asdict(choice.options) == {"unused": 3}


def test_register_refuses_a_backend_it_cannot_use(scan_backend):
    with pytest.raises(ValueError, match="options must be a dataclass"):
        registry.register(registry.Backend("bad", dict, lambda *a, **k: None))
    with pytest.raises(ValueError, match="needs from_arrays or from_catalog"):
        registry.register(registry.Backend("bad", _ScanOptions, None))
