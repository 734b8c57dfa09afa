"""RandomProjection and PCAProjection on seeded arrays: reproducibility, shapes, persistence, numpy SVD oracle."""

from __future__ import annotations

import numpy as np
import pytest

from objsearch.projection import PCAProjection, RandomProjection, Projection, make_projection


@pytest.fixture
def X():
    return np.random.default_rng(1).normal(size=(60, 40)).astype(np.float32)


def test_random_projection_is_reproducible_from_its_seed(X):
    a = RandomProjection(16, random_state=3).fit_transform(X)
    b = RandomProjection(16, random_state=3).fit(X[:5]).transform(X)  # the matrix does not depend on the samples
    c = RandomProjection(16, random_state=4).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_random_projection_shapes_and_dtype(X):
    proj = RandomProjection(32, random_state=0).fit(X)
    assert proj.components_.shape == (40, 32) and proj.n_features_in_ == 40
    Y = proj.transform(X)
    assert Y.shape == (60, 32) and Y.dtype == np.float32


def test_random_projection_keeps_squared_norms_on_average(X):
    Y = RandomProjection(256, random_state=0).fit_transform(X)
    ratio = (Y.astype(np.float64) ** 2).sum(1) / (X.astype(np.float64) ** 2).sum(1)
    assert 0.8 < ratio.mean() < 1.2  # Johnson-Lindenstrauss scaling, entries ~ N(0, 1/n_components)


@pytest.mark.parametrize("cls", [RandomProjection, PCAProjection])
def test_state_round_trip_gives_an_identical_transform(cls, X):
    proj = cls(16, random_state=7).fit(X)
    state = proj.to_state()
    assert state["method"] == proj.method and state["n_components"] == 16 and state["random_state"] == 7
    again = Projection.from_state(state)
    assert type(again) is cls and again.n_features_in_ == 40 and again.random_state == 7
    np.testing.assert_array_equal(again.transform(X), proj.transform(X))


@pytest.mark.parametrize("cls", [RandomProjection, PCAProjection])
def test_wrong_feature_count_is_refused(cls, X):
    proj = cls(8).fit(X)
    with pytest.raises(ValueError, match=r"shape \(N, 40\), got \(60, 39\)"):
        proj.transform(X[:, :39])
    with pytest.raises(ValueError, match="2-D"):
        proj.fit(X[0])


@pytest.mark.parametrize("cls", [RandomProjection, PCAProjection])
def test_transform_before_fit_is_refused(cls, X):
    with pytest.raises(RuntimeError, match="not fitted"):
        cls(8).transform(X)


def test_transform_leaves_the_input_alone(X):
    before = X.copy()
    PCAProjection(4).fit_transform(X)
    RandomProjection(4).fit_transform(X)
    np.testing.assert_array_equal(X, before)


def test_pca_equals_numpy_svd_up_to_sign():
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(200, 10)) * np.arange(10, 0, -1)).astype(np.float32)
    Y = PCAProjection(4).fit_transform(X)
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    expected = Xc @ vt[:4].T
    signs = np.sign((Y * expected).sum(0))
    np.testing.assert_allclose(Y, expected * signs, rtol=1e-4, atol=1e-4)


def test_pca_components_come_in_decreasing_variance():
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(300, 12)) * np.linspace(5, 0.5, 12)).astype(np.float32)
    pca = PCAProjection(6).fit(X)
    variances = pca.transform(X).var(0)
    assert np.all(np.diff(variances) < 0)
    _, s, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    np.testing.assert_allclose(pca.explained_variance_ratio_, (s**2 / (s**2).sum())[:6], rtol=1e-4)
    np.testing.assert_allclose(pca.components_.T @ pca.components_, np.eye(6), atol=1e-5)  # orthonormal


def test_pca_with_fewer_samples_than_components():
    X = np.random.default_rng(4).normal(size=(3, 10)).astype(np.float32)
    pca = PCAProjection(8).fit(X)
    assert pca.components_.shape == (10, 8)
    assert np.allclose(pca.components_[:, 3:], 0) and np.allclose(pca.explained_variance_ratio_[3:], 0)
    with pytest.raises(ValueError, match="at least one sample"):
        PCAProjection(2).fit(np.zeros((0, 10)))


def test_make_projection_checks_its_arguments():
    assert isinstance(make_projection("random", 32, 5), RandomProjection)
    pca = make_projection("pca", 16)
    assert isinstance(pca, PCAProjection) and pca.n_components == 16
    with pytest.raises(ValueError, match="projection must be one of random, pca, got 'umap'"):
        make_projection("umap", 32)
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        make_projection("random", 0)


def test_from_state_refuses_bad_states(X):
    state = RandomProjection(8).fit(X).to_state()
    with pytest.raises(ValueError, match="unknown projection method"):
        Projection.from_state({**state, "method": "umap"})
    with pytest.raises(ValueError, match=r"components must have shape \(D, 16\)"):
        Projection.from_state({**state, "n_components": 16})
