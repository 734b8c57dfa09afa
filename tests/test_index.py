"""NeighborIndex.search against a brute-force numpy oracle on seeded arrays: equality for every exact method,
recall, exact filters and padding for the approximate one."""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest

from objsearch import index as index_module

N, D, Q = 300, 8, 25

# The exact search methods the index offers (only the KD-tree in versions without a ``method`` argument).
HAS_METHODS = "method" in inspect.signature(index_module.NeighborIndex).parameters
METHODS = [m for m in getattr(index_module, "SEARCH_METHODS", ("kdtree",))
           if m != "auto" and m not in getattr(index_module, "APPROXIMATE_METHODS", ())]


@pytest.fixture(params=METHODS)
def NeighborIndex(request):
    """``NeighborIndex`` bound to one search method (each test runs once per method)."""
    method = request.param
    if method == "faiss" and not index_module.faiss_available():
        pytest.skip("faiss is not installed")
    if not HAS_METHODS:
        return index_module.NeighborIndex
    return functools.partial(index_module.NeighborIndex, method=method)


def brute_force(vectors, queries, k, allowed=None):
    """Oracle: the k nearest allowed rows of each query by exhaustive float64 distances.

    ``allowed`` (Q, N) bool (None: all). Returns distances (Q, k) ascending and ids (Q, k), padded with inf / -1.
    """
    dist = np.linalg.norm(queries[:, None, :].astype(np.float64) - vectors[None].astype(np.float64), axis=2)
    if allowed is not None:
        dist = np.where(allowed, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")
    out_d = np.full((len(queries), k), np.inf)
    out_i = np.full((len(queries), k), -1, np.int64)
    width = min(k, vectors.shape[0])
    top = order[:, :width]
    top_d = np.take_along_axis(dist, top, 1)
    out_d[:, :width] = top_d
    out_i[:, :width] = np.where(np.isfinite(top_d), top, -1)
    return out_d, out_i


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    class_id = rng.integers(0, 5, N)
    image_id = rng.integers(0, 40, N)
    queries = rng.normal(size=(Q, D)).astype(np.float32)
    return vectors, class_id, image_id, queries


def assert_same_neighbours(got, expected):
    (got_d, got_i), (exp_d, exp_i) = got, expected
    assert got_d.shape == exp_d.shape and got_i.shape == exp_i.shape
    assert got_d.dtype == np.float32 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, exp_i)
    np.testing.assert_allclose(got_d, exp_d, rtol=1e-5, atol=1e-5)


def test_plain_search_equals_brute_force(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 10)
    assert_same_neighbours(got, brute_force(vectors, queries, 10))


def test_distances_ascend(data, NeighborIndex):
    vectors, _, _, queries = data
    distances, _ = NeighborIndex(vectors).search(queries, 20)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_same_class_search_equals_brute_force(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    query_class = np.arange(Q) % 5
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 7, class_id=query_class)
    assert_same_neighbours(got, brute_force(vectors, queries, 7, class_id[None] == query_class[:, None]))
    assert np.all(class_id[got[1]] == query_class[:, None])


def test_excluding_an_image_equals_brute_force(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    excluded = np.arange(Q) % 40
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 12, exclude_image_id=excluded)
    assert_same_neighbours(got, brute_force(vectors, queries, 12, image_id[None] != excluded[:, None]))
    assert not np.any(image_id[got[1]] == excluded[:, None])


def test_excluding_the_image_of_each_nearest_neighbour(data, NeighborIndex):
    """The hard case for the over-fetch: the excluded image owns each query's nearest objects."""
    vectors, class_id, image_id, _ = data
    queries = vectors[:Q] + 1e-3
    excluded = image_id[:Q]
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 15, exclude_image_id=excluded)
    assert_same_neighbours(got, brute_force(vectors, queries, 15, image_id[None] != excluded[:, None]))


def test_scalar_exclusion_and_minus_one(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    index = NeighborIndex(vectors, class_id, image_id)
    got = index.search(queries, 5, exclude_image_id=3)
    assert_same_neighbours(got, brute_force(vectors, queries, 5, np.broadcast_to(image_id != 3, (Q, N))))
    assert_same_neighbours(index.search(queries, 5, exclude_image_id=-1), brute_force(vectors, queries, 5))


def test_same_class_and_exclusion_together(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    query_class, excluded = np.arange(Q) % 5, np.arange(Q) % 40
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 9, class_id=query_class,
                                                            exclude_image_id=excluded)
    allowed = (class_id[None] == query_class[:, None]) & (image_id[None] != excluded[:, None])
    assert_same_neighbours(got, brute_force(vectors, queries, 9, allowed))


def test_padding_when_fewer_than_k_qualify(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    class_id = class_id.copy()
    class_id[:] = 0
    class_id[[5, 50, 150]] = 4  # a rare class: three objects
    distances, ids = NeighborIndex(vectors, class_id, image_id).search(queries, 6, class_id=np.full(Q, 4))
    assert np.all(np.isin(ids[:, :3], [5, 50, 150]))
    assert np.all(ids[:, 3:] == -1) and np.all(np.isinf(distances[:, 3:]))
    assert np.all(np.isfinite(distances[:, :3]))


def test_k_larger_than_the_index(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    small = NeighborIndex(vectors[:5], class_id[:5], image_id[:5])
    got = small.search(queries, 9)
    assert_same_neighbours(got, brute_force(vectors[:5], queries, 9))
    assert np.all(got[1][:, 5:] == -1) and np.all(np.isinf(got[0][:, 5:]))
    assert sorted(got[1][0, :5]) == [0, 1, 2, 3, 4]


def test_k_of_one_and_a_single_object(data, NeighborIndex):
    vectors, _, _, queries = data
    assert_same_neighbours(NeighborIndex(vectors).search(queries, 1), brute_force(vectors, queries, 1))
    distances, ids = NeighborIndex(vectors[:1]).search(queries, 3)
    assert np.all(ids[:, 0] == 0) and np.all(ids[:, 1:] == -1) and np.all(np.isinf(distances[:, 1:]))


def test_class_absent_from_the_index_gives_only_padding(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    distances, ids = NeighborIndex(vectors, class_id, image_id).search(queries[:2], 4, class_id=np.array([99, 99]))
    assert ids.shape == (2, 4) and np.all(ids == -1) and np.all(np.isinf(distances))


def test_empty_index_gives_only_padding(data, NeighborIndex):
    *_, queries = data
    distances, ids = NeighborIndex(np.zeros((0, D), np.float32)).search(queries, 3)
    assert ids.shape == distances.shape == (Q, 3)
    assert np.all(ids == -1) and np.all(np.isinf(distances))


def test_search_leaves_the_callers_arrays_alone(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    before = [a.copy() for a in (vectors, class_id, image_id, queries)]
    NeighborIndex(vectors, class_id, image_id).search(queries, 4, class_id=class_id[:Q], exclude_image_id=image_id[:Q])
    for a, b in zip((vectors, class_id, image_id, queries), before):
        np.testing.assert_array_equal(a, b)


def test_bad_input_is_refused_with_what_was_expected(data, NeighborIndex):
    vectors, class_id, image_id, queries = data
    index = NeighborIndex(vectors)
    with pytest.raises(ValueError, match=r"shape \(Q, 8\), got \(25, 4\)"):
        index.search(queries[:, :4], 3)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="no class ids"):
        index.search(queries, 3, class_id=np.zeros(Q, int))
    with pytest.raises(ValueError, match="no image ids"):
        index.search(queries, 3, exclude_image_id=0)
    with pytest.raises(ValueError, match="class_id must have length 300"):
        NeighborIndex(vectors, class_id[:10])
    with pytest.raises(ValueError, match=r"vectors must have shape \(N, d\)"):
        NeighborIndex(vectors[0])


@pytest.mark.skipif(not HAS_METHODS, reason="this version has only the KD-tree")
def test_auto_method_picks_an_exact_one(data):
    vectors, class_id, image_id, queries = data
    index = index_module.NeighborIndex(vectors, class_id, image_id, method="auto")
    assert index.method in METHODS
    assert_same_neighbours(index.search(queries, 6), brute_force(vectors, queries, 6))
    with pytest.raises(ValueError, match="search method must be one of"):
        index_module.NeighborIndex(vectors, method="annoy")


def test_many_high_dimensional_vectors_equal_brute_force(NeighborIndex):
    """3000 x 128: above the size where ``auto`` times the methods, and past the KD-tree's comfortable dims."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, 128)).astype(np.float32)
    image_id = rng.integers(0, 500, 3000)
    queries = vectors[:20] + rng.normal(scale=0.1, size=(20, 128)).astype(np.float32)
    got = NeighborIndex(vectors, None, image_id).search(queries, 16, exclude_image_id=image_id[:20])
    assert_same_neighbours(got, brute_force(vectors, queries, 16, image_id[None] != image_id[:20, None]))


@pytest.mark.skipif(not HAS_METHODS, reason="this version has only the KD-tree")
def test_auto_method_on_a_large_index_equals_brute_force():
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(2500, 32)).astype(np.float32)
    queries = rng.normal(size=(10, 32)).astype(np.float32)
    index = index_module.NeighborIndex(vectors, method="auto")
    assert index.method in METHODS and set(index.timings_ms) <= set(METHODS) and index.timings_ms
    assert_same_neighbours(index.search(queries, 16), brute_force(vectors, queries, 16))
    assert_same_neighbours(index.search(queries[:1], 16), brute_force(vectors, queries[:1], 16))
    assert_same_neighbours(index.search(queries[:3], 16), brute_force(vectors, queries[:3], 16))


# ------------------------------------------------------------------------------------------------------- hnsw
# The approximate method: recall against the oracle instead of equality; filters and padding exactly.

needs_hnsw = pytest.mark.skipif(
    "hnsw" not in getattr(index_module, "SEARCH_METHODS", ()) or not index_module.hnswlib_available(),
    reason="no hnsw method or hnswlib not installed")


def recall_at_k(got_ids, exact_ids):
    """Mean fraction of the exact (non-padded) neighbours that were returned, per query."""
    hits = [len(set(g[g >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for g, e in zip(got_ids, exact_ids)]
    return float(np.mean(hits))


@pytest.fixture
def hnsw_data():
    """3000 x 32 Gaussian vectors (hard for a graph: no cluster structure), 6 classes, 400 images."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    class_id = rng.choice(6, 3000, p=[0.4, 0.3, 0.2, 0.07, 0.02, 0.01])
    image_id = rng.integers(0, 400, 3000)
    queries = (vectors[rng.integers(0, 3000, 40)] + rng.normal(scale=0.5, size=(40, 32))).astype(np.float32)
    return vectors, class_id, image_id, queries


def hnsw_index(vectors, class_id=None, image_id=None, **params):
    params = {"build_threads": 1, **params}
    return index_module.NeighborIndex(vectors, class_id, image_id, method="hnsw",
                                      hnsw=index_module.HnswParams(**params))


def assert_well_formed(distances, ids, k, q):
    assert distances.shape == ids.shape == (q, k)
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    assert np.all(np.diff(distances, axis=1) >= 0)
    assert np.array_equal(ids == -1, np.isinf(distances))


@needs_hnsw
def test_hnsw_recall_against_the_oracle(hnsw_data):
    vectors, class_id, image_id, queries = hnsw_data
    distances, ids = hnsw_index(vectors).search(queries, 16)
    assert_well_formed(distances, ids, 16, len(queries))
    _, exact = brute_force(vectors, queries, 16)
    assert recall_at_k(ids, exact) >= 0.95
    assert np.all(ids >= 0)


@needs_hnsw
def test_hnsw_distances_are_euclidean_not_squared(hnsw_data):
    vectors, _, _, queries = hnsw_data
    distances, ids = hnsw_index(vectors).search(queries, 8)
    true = np.linalg.norm(vectors[ids].astype(np.float64) - queries[:, None, :], axis=2)
    np.testing.assert_allclose(distances, true, rtol=1e-4, atol=1e-4)


@needs_hnsw
@pytest.mark.parametrize("exact_below", [10, 20_000], ids=["over-fetch from the graph", "exact scan of the class"])
def test_hnsw_filters_are_honoured_exactly(hnsw_data, exact_below):
    vectors, class_id, image_id, queries = hnsw_data
    index = hnsw_index(vectors, class_id, image_id, exact_below=exact_below)
    q = len(queries)
    query_class = np.arange(q) % 6  # classes of 1200 down to 30 objects
    excluded = image_id[np.random.default_rng(3).integers(0, 3000, q)]
    distances, ids = index.search(queries, 16, class_id=query_class, exclude_image_id=excluded)
    assert_well_formed(distances, ids, 16, q)
    allowed = (class_id[None] == query_class[:, None]) & (image_id[None] != excluded[:, None])
    found = ids >= 0
    assert np.all(class_id[ids[found]] == np.broadcast_to(query_class[:, None], ids.shape)[found])
    assert np.all(image_id[ids[found]] != np.broadcast_to(excluded[:, None], ids.shape)[found])
    # every query gets k neighbours when k qualify, and they are nearly the exact ones
    assert np.all(found.sum(1) == np.minimum(16, allowed.sum(1)))
    assert recall_at_k(ids, brute_force(vectors, queries, 16, allowed)[1]) >= 0.95


@needs_hnsw
def test_hnsw_class_far_from_the_queries_falls_back_to_an_exact_scan():
    """A class the over-fetch cannot reach: its members lie far away, so the graph's neighbours hold none."""
    rng = np.random.default_rng(4)
    near = rng.normal(size=(2000, 16)).astype(np.float32)
    far = (rng.normal(size=(40, 16)) + 50).astype(np.float32)
    vectors = np.concatenate([near, far])
    class_id = np.r_[np.zeros(2000, int), np.ones(40, int)]
    queries = near[:5] + 0.01
    got = hnsw_index(vectors, class_id, exact_below=10).search(queries, 12, class_id=np.ones(5, int))
    assert_same_neighbours(got, brute_force(vectors, queries, 12, np.broadcast_to(class_id == 1, (5, 2040))))


@needs_hnsw
def test_hnsw_excluding_the_image_of_each_nearest_neighbour(hnsw_data):
    vectors, class_id, image_id, _ = hnsw_data
    queries = vectors[:30] + 1e-3
    excluded = image_id[:30]
    distances, ids = hnsw_index(vectors, class_id, image_id).search(queries, 16, exclude_image_id=excluded)
    assert_well_formed(distances, ids, 16, 30)
    assert np.all(ids >= 0) and not np.any(image_id[ids] == excluded[:, None])
    allowed = image_id[None] != excluded[:, None]
    assert recall_at_k(ids, brute_force(vectors, queries, 16, allowed)[1]) >= 0.95


@needs_hnsw
def test_hnsw_padding_and_small_indexes(hnsw_data):
    vectors, class_id, image_id, queries = hnsw_data
    # k larger than the index: all of it, then padding
    got = hnsw_index(vectors[:5], class_id[:5], image_id[:5]).search(queries, 9)
    assert_same_neighbours(got, brute_force(vectors[:5], queries, 9))
    # one object; an empty index
    distances, ids = hnsw_index(vectors[:1]).search(queries, 3)
    assert np.all(ids[:, 0] == 0) and np.all(ids[:, 1:] == -1) and np.all(np.isinf(distances[:, 1:]))
    distances, ids = hnsw_index(np.zeros((0, 32), np.float32)).search(queries, 3)
    assert ids.shape == (len(queries), 3) and np.all(ids == -1) and np.all(np.isinf(distances))
    # a class with fewer than k objects, and one absent from the index
    index = hnsw_index(vectors, class_id, image_id)
    n5 = int((class_id == 5).sum())
    distances, ids = index.search(queries, n5 + 4, class_id=np.full(len(queries), 5))
    assert np.all(ids[:, n5:] == -1) and np.all(np.isinf(distances[:, n5:])) and np.all(ids[:, :n5] >= 0)
    distances, ids = index.search(queries[:2], 4, class_id=np.array([99, 99]))
    assert np.all(ids == -1) and np.all(np.isinf(distances))


@needs_hnsw
def test_hnsw_is_reproducible_with_one_build_thread(hnsw_data):
    vectors, _, _, queries = hnsw_data
    first = hnsw_index(vectors, seed=7).search(queries, 10)
    again = hnsw_index(vectors, seed=7).search(queries, 10)
    np.testing.assert_array_equal(first[1], again[1])


@needs_hnsw
def test_hnsw_parameters_are_checked(hnsw_data):
    vectors, *_ = hnsw_data
    with pytest.raises(ValueError, match="M must be >= 1, got 0"):
        index_module.HnswParams(M=0)
    with pytest.raises(ValueError, match="ef_search must be >= 1 or None, got 0"):
        index_module.HnswParams(ef_search=0)
    with pytest.raises(ValueError, match="hnsw must be an HnswParams, got dict"):
        index_module.NeighborIndex(vectors, method="hnsw", hnsw={"M": 8})
