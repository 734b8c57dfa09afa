"""The contract every ``objsearch.vectors.VectorStore`` backend passes, as scikit-learn's ``check_estimator`` runs the
same checks on every estimator.

Each ``check_*`` is a plain function of one argument, ``make_store(ids, vectors, class_id, image_id) ->
VectorStore``, a factory that returns a fresh store holding exactly the given objects (``vectors`` of shape
(0, dims) for an empty one). It compares the store with a brute-force float64 numpy oracle on small seeded data
(300 vectors of 16 dims, 8 classes, 30 images, non-contiguous ids ``1000 + 7 * i``) and raises ``AssertionError``
on a difference. Exact stores (``store.exact``) must return the oracle's ids and distances; approximate ones must
reach recall@k >= 0.95 against it, with filters honoured exactly and exact distances for the ids they return.
Every check closes the stores it makes.

Adding a backend (Milvus, say) takes one more factory in ``tests/test_vectors.py``::

    def make_milvus(tmp_path):
        def make(ids, vectors, class_id, image_id):
            return milvus_store(tmp_path / "milvus.db", ids, vectors, class_id, image_id)
        return make

    FACTORIES["milvus"] = make_milvus   # every check in CHECKS now also runs against Milvus

(a factory there takes pytest's ``tmp_path`` and returns ``make_store``), or, from anywhere::

    for check in CHECKS:
        check(make_store)
"""

from __future__ import annotations

import numpy as np

from objsearch.types import Hits
from objsearch.vectors import VectorStore

N, DIMS, N_CLASSES, N_IMAGES, Q, K = 300, 16, 8, 30, 20, 10


# ------------------------------------------------------------------------------------------------- helpers
def make_data(seed: int = 0, n: int = N):
    """Seeded objects and queries: ids (n,) int64 ``1000 + 7 * i``, vectors (n, DIMS) float32, class_id (n,),
    image_id (n,), queries (Q, DIMS) float32 (near stored vectors, not on them)."""
    rng = np.random.default_rng(seed)
    ids = 1000 + 7 * np.arange(n, dtype=np.int64)
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    class_id = rng.integers(0, N_CLASSES, n)
    image_id = rng.integers(0, N_IMAGES, n)
    queries = (vectors[rng.integers(0, n, Q)] + rng.normal(scale=0.3, size=(Q, DIMS))).astype(np.float32)
    return ids, vectors, class_id, image_id, queries


def oracle(ids, vectors, queries, k, allowed=None):
    """The k nearest allowed objects of each query by exhaustive float64 distances.

    ``allowed`` (Q, n) bool (None: all). Returns distances (Q, k) ascending and ids (Q, k) (the given ids), padded
    with inf / -1.
    """
    dist = np.linalg.norm(queries[:, None, :].astype(np.float64) - vectors[None].astype(np.float64), axis=2)
    if allowed is not None:
        dist = np.where(allowed, dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    out_d = np.full((len(queries), k), np.inf)
    out_i = np.full((len(queries), k), -1, np.int64)
    top_d = np.take_along_axis(dist, order, 1)
    out_d[:, : order.shape[1]] = top_d
    out_i[:, : order.shape[1]] = np.where(np.isfinite(top_d), ids[order], -1)
    return out_d, out_i


def recall_at_k(got_ids, exact_ids):
    """Mean over queries of the fraction of the exact (non-padded) neighbours that were returned (1 for a query that
    has none)."""
    hits = [len(set(g[g >= 0]) & set(e[e >= 0])) / (e >= 0).sum() if (e >= 0).any() else 1.0
            for g, e in zip(got_ids, exact_ids)]
    return float(np.mean(hits))


def assert_well_formed(hits, q, k):
    assert isinstance(hits, Hits), f"search must return Hits, got {type(hits).__name__}"
    assert hits.distances.shape == hits.ids.shape == (q, k), f"expected ({q}, {k}), got {hits.ids.shape}"
    assert hits.distances.dtype == np.float32 and hits.ids.dtype == np.int64
    assert np.array_equal(hits.ids == -1, np.isinf(hits.distances)), "padding must be -1 ids with inf distances"
    assert np.all(hits.distances[:, 1:] >= hits.distances[:, :-1]), "distances must ascend"
    found = hits.ids >= 0
    assert np.all(found[:, :-1] | ~found[:, 1:]), "padding must come last"
    for row in hits.ids:
        assert len(set(row[row >= 0])) == (row >= 0).sum(), "an id returned twice for one query"


def assert_matches_oracle(store, hits, ids, vectors, queries, k, allowed=None):
    """``hits`` against the oracle: the same for an exact store; recall >= 0.95, allowed ids only, k filled when k
    qualify and exact distances for an approximate one."""
    assert_well_formed(hits, len(queries), k)
    exp_d, exp_i = oracle(ids, vectors, queries, k, allowed)
    if store.exact:
        np.testing.assert_array_equal(hits.ids, exp_i)
        np.testing.assert_allclose(hits.distances, exp_d, rtol=1e-5, atol=1e-5)
        return
    found = hits.ids >= 0
    row_of = {int(i): r for r, i in enumerate(ids)}
    rows = np.vectorize(lambda i: row_of.get(int(i), -1), otypes=[np.int64])(hits.ids)
    assert np.all(rows[found] >= 0), "an id that was never added (or was removed) came back"
    if allowed is not None:
        assert np.all(np.take_along_axis(allowed, np.maximum(rows, 0), 1)[found]), "a filtered-out object came back"
    np.testing.assert_array_equal(found.sum(1), (exp_i >= 0).sum(1), err_msg="k neighbours expected where k qualify")
    true = np.linalg.norm(vectors[np.maximum(rows, 0)].astype(np.float64) - queries[:, None, :], axis=2)
    np.testing.assert_allclose(hits.distances[found], true[found], rtol=1e-4, atol=1e-4)
    assert recall_at_k(hits.ids, exp_i) >= 0.95


def _store(make_store, ids, vectors, class_id, image_id) -> VectorStore:
    store = make_store(ids, vectors, class_id, image_id)
    assert isinstance(store, VectorStore), f"{type(store).__name__} does not implement VectorStore"
    return store


def _raises(exc_type, fn, *args, match: str | None = None, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        if match is not None:
            assert match in str(exc), f"expected {match!r} in the message, got {str(exc)!r}"
        return
    raise AssertionError(f"{getattr(fn, '__name__', fn)} should have raised {exc_type.__name__}")


# -------------------------------------------------------------------------------------------------- checks
def check_protocol(make_store):
    """The attributes of the protocol: backend resolved, dims, exact, len."""
    ids, vectors, class_id, image_id, _ = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        assert isinstance(store.backend, str) and store.backend and store.backend != "auto"
        assert store.dims == DIMS and isinstance(store.exact, bool) and len(store) == N
    finally:
        store.close()


def check_plain_knn_equals_oracle(make_store):
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        for k in (1, K):
            assert_matches_oracle(store, store.search(queries, k), ids, vectors, queries, k)
        # a query on a stored vector finds that object first, at distance 0
        hits = store.search(vectors[:5], 3)
        np.testing.assert_array_equal(hits.ids[:, 0], ids[:5])
        np.testing.assert_allclose(hits.distances[:, 0], 0, atol=1e-3)
    finally:
        store.close()


def check_returns_the_given_ids(make_store):
    """Ids are the given ones (non-contiguous, in shuffled order), never row numbers."""
    ids, vectors, class_id, image_id, queries = make_data()
    perm = np.random.default_rng(5).permutation(N)
    ids, vectors, class_id, image_id = ids[perm] * 13 + 5, vectors[perm], class_id[perm], image_id[perm]
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        hits = store.search(queries, K)
        assert np.isin(hits.ids, ids).all()
        assert_matches_oracle(store, hits, ids, vectors, queries, K)
    finally:
        store.close()


def check_class_filter(make_store):
    """``class_id`` as one int for all queries and as one per query."""
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        allowed = np.broadcast_to(class_id == 3, (Q, N))
        assert_matches_oracle(store, store.search(queries, K, class_id=3), ids, vectors, queries, K, allowed)
        per_query = np.arange(Q) % N_CLASSES
        allowed = class_id[None] == per_query[:, None]
        hits = store.search(queries, K, class_id=per_query)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, allowed)
    finally:
        store.close()


def check_exclude_image(make_store):
    """``exclude_image_id`` as one int, one per query, and -1 (nothing excluded)."""
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        allowed = np.broadcast_to(image_id != 4, (Q, N))
        hits = store.search(queries, K, exclude_image_id=4)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, allowed)
        # each query excludes the image of its own nearest neighbour: the hardest case for over-fetching
        nearest_image = image_id[(oracle(np.arange(N), vectors, queries, 1)[1][:, 0])]
        allowed = image_id[None] != nearest_image[:, None]
        hits = store.search(queries, K, exclude_image_id=nearest_image)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, allowed)
        mixed = np.where(np.arange(Q) % 2 == 0, nearest_image, -1)
        allowed = (image_id[None] != mixed[:, None]) | (mixed[:, None] == -1)
        hits = store.search(queries, K, exclude_image_id=mixed)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, allowed)
        assert_matches_oracle(store, store.search(queries, K, exclude_image_id=-1), ids, vectors, queries, K)
    finally:
        store.close()


def check_both_filters(make_store):
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        per_class = np.arange(Q) % N_CLASSES
        excluded = image_id[np.random.default_rng(3).integers(0, N, Q)]
        allowed = (class_id[None] == per_class[:, None]) & (image_id[None] != excluded[:, None])
        hits = store.search(queries, K, class_id=per_class, exclude_image_id=excluded)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, allowed)
        allowed = (class_id[None] == 2) & (image_id[None] != 7)
        hits = store.search(queries, K, class_id=2, exclude_image_id=7)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, np.broadcast_to(allowed, (Q, N)))
    finally:
        store.close()


def check_padding_when_fewer_than_k_qualify(make_store):
    """k larger than the store, a class with fewer than k objects, a class absent, an image holding all but a few."""
    ids, vectors, class_id, image_id, queries = make_data()
    small = _store(make_store, ids[:5], vectors[:5], class_id[:5], image_id[:5])
    try:
        assert_matches_oracle(small, small.search(queries, 9), ids[:5], vectors[:5], queries, 9)
    finally:
        small.close()
    rare = class_id.copy()
    rare[rare == 7] = 6
    rare[:4] = 7  # class 7: 4 objects
    store = _store(make_store, ids, vectors, rare, image_id)
    try:
        hits = store.search(queries, K, class_id=7)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, np.broadcast_to(rare == 7, (Q, N)))
        assert np.all((hits.ids >= 0).sum(1) == 4)
        hits = store.search(queries, K, class_id=99)
        assert_well_formed(hits, Q, K)
        assert np.all(hits.ids == -1)
        # some queries in an absent class, others in a present one
        mixed = np.where(np.arange(Q) % 2 == 0, 99, 3)
        allowed = rare[None] == mixed[:, None]
        assert_matches_oracle(store, store.search(queries, K, class_id=mixed), ids, vectors, queries, K, allowed)
    finally:
        store.close()
    one_image = np.where(np.arange(N) < 3, 1, 0)  # all but 3 objects in image 0
    store = _store(make_store, ids, vectors, class_id, one_image)
    try:
        hits = store.search(queries, K, exclude_image_id=0)
        assert_matches_oracle(store, hits, ids, vectors, queries, K, np.broadcast_to(one_image != 0, (Q, N)))
        assert np.all((hits.ids >= 0).sum(1) == 3)
    finally:
        store.close()


def check_empty_store(make_store):
    empty = np.zeros(0, np.int64)
    store = _store(make_store, empty, np.zeros((0, DIMS), np.float32), empty, empty)
    try:
        assert len(store) == 0 and store.dims == DIMS
        _, _, _, _, queries = make_data()
        for kwargs in ({}, {"class_id": 1}, {"exclude_image_id": 2}):
            hits = store.search(queries, 4, **kwargs)
            assert_well_formed(hits, Q, 4)
            assert np.all(hits.ids == -1)
        assert store.remove(np.array([1, 2])) == 0
    finally:
        store.close()


def check_no_queries(make_store):
    ids, vectors, class_id, image_id, _ = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        none = np.zeros((0, DIMS), np.float32)
        assert_well_formed(store.search(none, K), 0, K)
        assert_well_formed(store.search(none, K, class_id=np.zeros(0, int), exclude_image_id=np.zeros(0, int)), 0, K)
    finally:
        store.close()


def check_add_then_search_finds_the_new(make_store):
    """A store made with the first half, the second half added in two batches: as if made with all."""
    ids, vectors, class_id, image_id, queries = make_data()
    half = N // 2
    store = _store(make_store, ids[:half], vectors[:half], class_id[:half], image_id[:half])
    try:
        store.search(queries, K)  # structures built before the additions must follow them
        store.search(queries, K, class_id=1)
        store.add(ids[half:250], vectors[half:250], class_id[half:250], image_id[half:250])
        store.add(ids[250:], vectors[250:], class_id[250:], image_id[250:])
        assert len(store) == N
        assert_matches_oracle(store, store.search(queries, K), ids, vectors, queries, K)
        allowed = np.broadcast_to(class_id == 1, (Q, N))
        assert_matches_oracle(store, store.search(queries, K, class_id=1), ids, vectors, queries, K, allowed)
        hits = store.search(vectors[-5:], 1)  # each new vector is its own nearest neighbour
        np.testing.assert_array_equal(hits.ids[:, 0], ids[-5:])
        # an empty store filled by add
        empty = np.zeros(0, np.int64)
        grown = _store(make_store, empty, np.zeros((0, DIMS), np.float32), empty, empty)
        try:
            grown.add(ids, vectors, class_id, image_id)
            assert_matches_oracle(grown, grown.search(queries, K), ids, vectors, queries, K)
        finally:
            grown.close()
    finally:
        store.close()


def check_removed_are_never_returned(make_store):
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        store.search(queries, K)
        store.search(queries, K, class_id=2)
        # remove the true nearest neighbours of every query (the ones most likely to come back) and more
        nearest = oracle(ids, vectors, queries, 3)[1].reshape(-1)
        gone = np.unique(np.concatenate([nearest, ids[::4]]))
        assert store.remove(gone) == len(gone)
        assert len(store) == N - len(gone)
        keep = ~np.isin(ids, gone)
        for k in (1, K, N):
            hits = store.search(queries, k)
            assert not np.isin(hits.ids, gone).any()
            assert_matches_oracle(store, hits, ids[keep], vectors[keep], queries, k)
        allowed = np.broadcast_to(class_id[keep] == 2, (Q, keep.sum()))
        hits = store.search(queries, K, class_id=2)
        assert_matches_oracle(store, hits, ids[keep], vectors[keep], queries, K, allowed)
        hits = store.search(vectors[~keep][:10], 1)  # a removed object's own vector finds another object
        assert not np.isin(hits.ids, gone).any()
        # remove everything: only padding
        assert store.remove(ids) == keep.sum() and len(store) == 0
        assert np.all(store.search(queries, K).ids == -1)
    finally:
        store.close()


def check_remove_ignores_unknown_ids(make_store):
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        assert store.remove(np.array([1, 2, 1001, 10**12])) == 0
        assert store.remove(np.zeros(0, np.int64)) == 0
        assert store.remove(np.array([ids[0], 3, ids[0]])) == 1  # a repeated id counts once
        assert store.remove(np.array([ids[0]])) == 0  # already removed
        assert len(store) == N - 1
        assert_matches_oracle(store, store.search(queries, K), ids[1:], vectors[1:], queries, K)
    finally:
        store.close()


def check_readding_after_removal(make_store):
    """A removed id may be added again, with another vector, which is the one found."""
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        store.search(queries, K)
        moved = ids[:10]
        store.remove(moved)
        new_vectors = vectors[:10] + 5.0
        store.add(moved, new_vectors, class_id[:10], image_id[:10])
        assert len(store) == N
        all_vectors = np.concatenate([new_vectors, vectors[10:]])
        assert_matches_oracle(store, store.search(queries, K), ids, all_vectors, queries, K)
        hits = store.search(new_vectors, 1)
        np.testing.assert_array_equal(hits.ids[:, 0], moved)
    finally:
        store.close()


def check_duplicate_ids_are_refused(make_store):
    ids, vectors, class_id, image_id, _ = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        _raises(ValueError, store.add, ids[3:5], vectors[:2], class_id[:2], image_id[:2], match=str(ids[3]))
        new = np.array([5, 6, 5])
        _raises(ValueError, store.add, new, vectors[:3], class_id[:3], image_id[:3], match="5")
        assert len(store) == N  # a refused call changes nothing
        assert not np.isin(store.search(vectors[:3], 5).ids, [5, 6]).any()
    finally:
        store.close()
    _raises(ValueError, make_store, np.array([1, 2, 1]), vectors[:3], class_id[:3], image_id[:3])


def check_bad_input_is_refused(make_store):
    """Wrong dims, NaN or infinite vectors, mismatched lengths, bad k: ValueError, and nothing changes."""
    ids, vectors, class_id, image_id, queries = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        new = np.array([1, 2])
        _raises(ValueError, store.add, new, np.zeros((2, DIMS + 1), np.float32), class_id[:2], image_id[:2],
                match=str(DIMS))
        for bad in (np.nan, np.inf):
            v = np.zeros((2, DIMS), np.float32)
            v[1, 3] = bad
            _raises(ValueError, store.add, new, v, class_id[:2], image_id[:2])
        _raises(ValueError, store.add, new, vectors[:3], class_id[:2], image_id[:2])
        _raises(ValueError, store.add, new, vectors[:2], class_id[:3], image_id[:2])
        _raises(ValueError, store.add, new, vectors[:2], class_id[:2], image_id[:1])
        assert len(store) == N
        _raises(ValueError, store.search, queries[:, :-1], K, match=str(DIMS))
        _raises(ValueError, store.search, queries[0], K)
        _raises(ValueError, store.search, queries, 0)
        _raises(ValueError, store.search, queries, K, class_id=np.zeros(Q + 1, int))
        _raises(ValueError, store.search, queries, K, exclude_image_id=np.zeros(Q - 1, int))
    finally:
        store.close()
    _raises(ValueError, make_store, ids[:3], vectors[:3, :5].reshape(3, 5, 1), class_id[:3], image_id[:3])
    nan = vectors[:3].copy()
    nan[0, 0] = np.nan
    _raises(ValueError, make_store, ids[:3], nan, class_id[:3], image_id[:3])


def check_callers_arrays_are_left_alone(make_store):
    ids, vectors, class_id, image_id, queries = make_data()
    copies = [a.copy() for a in (ids, vectors, class_id, image_id, queries)]
    store = _store(make_store, ids, vectors, class_id, image_id)
    try:
        store.search(queries, K, class_id=class_id[:Q], exclude_image_id=image_id[:Q])
        store.remove(ids[:5])
        store.add(ids[:5], vectors[:5], class_id[:5], image_id[:5])
        vectors[:] += 100.0  # the store keeps its own copy
        hits = store.search(queries, K)
        vectors[:] = copies[1]
        assert_matches_oracle(store, hits, ids, vectors, queries, K)
    finally:
        store.close()
    for before, after in zip(copies, (ids, vectors, class_id, image_id, queries)):
        np.testing.assert_array_equal(before, after)


def check_close(make_store):
    ids, vectors, class_id, image_id, _ = make_data()
    store = _store(make_store, ids, vectors, class_id, image_id)
    store.close()
    store.close()  # harmless twice


CHECKS = [value for name, value in list(globals().items()) if name.startswith("check_") and callable(value)]
