"""Numeric parts against brute-force oracles on seeded arrays: search, projections; and the core types."""

from __future__ import annotations

import numpy as np
import pytest

from objsearch.config import ConfigError, load_config, parse_dims
from objsearch.detections import Detections
from objsearch.index import NeighborIndex
from objsearch.projection import PCAProjection, RandomProjection, _Projection, make_projection


def brute_force(vectors, queries, k, allowed):
    """Oracle: (Q, k) distances and ids over the rows allowed[q] (bool (Q, N)), padded with inf / -1."""
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - vectors[None].astype(np.float64)) ** 2).sum(-1))
    d = np.where(allowed, d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, 1)
    ids = np.where(np.isfinite(dist), order, -1)
    out_d = np.full((len(queries), k), np.inf)
    out_i = np.full((len(queries), k), -1)
    out_d[:, : dist.shape[1]] = dist
    out_i[:, : ids.shape[1]] = ids
    return out_d, out_i


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    class_id = rng.integers(0, 5, 300)
    image_id = rng.integers(0, 40, 300)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    return vectors, class_id, image_id, queries


def check_against_oracle(got, want):
    (gd, gi), (wd, wi) = got, want
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gd, wd, rtol=1e-4, atol=1e-5)


def test_search_plain_matches_brute_force(data):
    vectors, class_id, image_id, queries = data
    index = NeighborIndex(vectors, class_id, image_id)
    got = index.search(queries, 10)
    check_against_oracle(got, brute_force(vectors, queries, 10, np.ones((25, 300), bool)))
    assert np.all(np.diff(got[0], axis=1) >= 0)


def test_search_same_class_matches_brute_force(data):
    vectors, class_id, image_id, queries = data
    qclass = np.arange(25) % 5
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 7, class_id=qclass)
    check_against_oracle(got, brute_force(vectors, queries, 7, class_id[None] == qclass[:, None]))
    assert np.all(class_id[got[1]] == qclass[:, None])


def test_search_excluding_images_matches_brute_force(data):
    vectors, class_id, image_id, queries = data
    qimage = np.arange(25) % 40
    got = NeighborIndex(vectors, class_id, image_id).search(queries, 12, exclude_image_id=qimage)
    check_against_oracle(got, brute_force(vectors, queries, 12, image_id[None] != qimage[:, None]))
    both = NeighborIndex(vectors, class_id, image_id).search(queries, 12, class_id=qimage % 5, exclude_image_id=qimage)
    allowed = (image_id[None] != qimage[:, None]) & (class_id[None] == (qimage % 5)[:, None])
    check_against_oracle(both, brute_force(vectors, queries, 12, allowed))


def test_search_pads_when_fewer_than_k(data):
    vectors, class_id, image_id, queries = data
    index = NeighborIndex(vectors[:5], class_id[:5], image_id[:5])
    distances, ids = index.search(queries[:3], 9)
    assert distances.shape == ids.shape == (3, 9)
    assert np.all(ids[:, 5:] == -1) and np.all(np.isinf(distances[:, 5:]))
    assert np.all(ids[:, :5] >= 0)
    # a class with no objects at all: everything padded
    distances, ids = index.search(queries[:2], 3, class_id=np.array([99, 99]))
    assert np.all(ids == -1) and np.all(np.isinf(distances))


def test_search_rejects_bad_input(data):
    vectors, class_id, image_id, queries = data
    index = NeighborIndex(vectors)
    with pytest.raises(ValueError, match=r"shape \(Q, 8\)"):
        index.search(queries[:, :4], 3)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="no class ids"):
        index.search(queries, 3, class_id=np.zeros(25, int))
    empty = NeighborIndex(np.zeros((0, 8), np.float32))
    assert np.all(empty.search(queries, 2)[1] == -1)


def test_random_projection_is_seeded_and_round_trips():
    X = np.random.default_rng(1).normal(size=(50, 40)).astype(np.float32)
    a = RandomProjection(16, random_state=3).fit(X)
    b = RandomProjection(16, random_state=3).fit(X)
    c = RandomProjection(16, random_state=4).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert not np.allclose(a.transform(X), c.transform(X))
    assert a.transform(X).shape == (50, 16)
    again = _Projection.from_state(a.to_state())
    np.testing.assert_array_equal(again.transform(X), a.transform(X))
    # Johnson-Lindenstrauss scaling: squared norms preserved on average
    ratio = (a.transform(X) ** 2).sum(1) / (X**2).sum(1)
    assert 0.7 < ratio.mean() < 1.3
    with pytest.raises(ValueError, match=r"shape \(N, 40\)"):
        a.transform(X[:, :39])
    with pytest.raises(RuntimeError, match="not fitted"):
        RandomProjection(16).transform(X)


def test_pca_matches_numpy_svd_and_round_trips():
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(200, 10)) * np.arange(10, 0, -1)).astype(np.float32)
    pca = PCAProjection(4).fit(X)
    Y = pca.transform(X)
    _, s, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(Y), np.abs((X - X.mean(0)) @ vt[:4].T), rtol=1e-3, atol=1e-3)
    variances = Y.var(0)
    assert np.all(np.diff(variances) <= 1e-6)  # components in decreasing variance
    np.testing.assert_allclose(pca.explained_variance_ratio_, s[:4] ** 2 / (s**2).sum(), rtol=1e-5)
    again = _Projection.from_state(pca.to_state())
    np.testing.assert_allclose(again.transform(X), Y, rtol=1e-6)
    # fewer samples than components: trailing components are zero
    small = PCAProjection(8).fit(X[:3])
    assert np.allclose(small.components_[:, 3:], 0)


def test_make_projection_and_config_errors():
    with pytest.raises(ValueError, match="projection must be"):
        make_projection("umap", 32)
    assert parse_dims("32,16,32") == [16, 32]
    with pytest.raises(ConfigError, match="dims must be among"):
        parse_dims("33")
    with pytest.raises(ConfigError, match="projection"):
        load_config(None, projection="tsne")
    assert load_config(None, dims=64, conf=0.5)["dims"] == [64]


def test_config_file_overrides_and_unknown_keys(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("conf: 0.4\ndims: [16, 64]\n")
    cfg = load_config(good, conf=0.6)
    assert cfg["conf"] == 0.6 and cfg["dims"] == [16, 64]
    bad = tmp_path / "bad.yaml"
    bad.write_text("confidence: 0.4\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(bad)


def test_detections_validate_index_and_concat():
    d = Detections(np.array([[0, 0, 1, 1], [1, 1, 3, 3]]), [0.9, 0.3], [1, 2], np.ones((2, 4)))
    assert len(d) == 2 and d.xyxy.dtype == np.float32 and d.class_id.dtype == np.int64
    strong = d[d.confidence > 0.5]
    assert len(strong) == 1 and strong.class_id[0] == 1 and strong.features.shape == (1, 4)
    assert len(d[1]) == 1
    both = Detections.concat([d, strong])
    assert len(both) == 3 and both.features.shape == (3, 4)
    assert len(Detections.empty(4)) == 0 and Detections.empty(4).features.shape == (0, 4)
    with pytest.raises(ValueError, match="same length"):
        Detections(np.zeros((2, 4)), [0.1], [1, 2])
    with pytest.raises(ValueError, match="features must have shape"):
        Detections(np.zeros((2, 4)), [0.1, 0.2], [1, 2], np.zeros((3, 4)))
