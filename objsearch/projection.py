"""Projection of raw feature vectors into a small subspace: random Gaussian (default) or PCA.

Both follow scikit-learn's estimator shape: ``__init__`` stores parameters, ``fit`` sets trailing-underscore
attributes and returns ``self``, ``transform`` checks it was fitted and that the feature count matches. They are
persisted with the index (``to_state`` / ``from_state``) so queries use exactly the same projection.

The random projection is the Johnson-Lindenstrauss construction of ``sklearn.random_projection
.GaussianRandomProjection``: entries drawn from N(0, 1/n_components), which keeps expected squared distances. The
original ReverseObjectSearchFast app used a random projection too (to 16-256 dims).

``MirrorWhitenedProjection`` is the index's second, longer projection (the rerank vectors, ``objsearch.rerank``): a
PCA followed by whitening with the covariance of the differences between objects' features and their mirror
images' features, so that a horizontally flipped object lands near the original. It is a linear map like the others
and is stored the same way.
"""

from __future__ import annotations

import numpy as np

PROJECTION_METHODS = ("random", "pca")  # what a configuration may choose for the search vectors
STORED_PROJECTION_METHODS = PROJECTION_METHODS + ("mirror_whitened",)  # what an index may hold
ALLOWED_DIMS = (16, 32, 64, 128, 256)


def _check_scale(column_scale, n_features: int) -> np.ndarray | None:
    """``column_scale`` as (n_features,) float64 of positive finite values, or None."""
    if column_scale is None:
        return None
    scale = np.asarray(column_scale, np.float64).reshape(-1)
    if scale.shape != (n_features,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"column_scale must hold {n_features} positive finite numbers, got shape {scale.shape}")
    return scale


def _scatter(chunks, n_features: int, scale: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sum (D,), scatter X^T X (D, D)) in float64 of the chunks, each column multiplied by ``scale``."""
    n, total = 0, np.zeros(n_features, np.float64)
    scatter = np.zeros((n_features, n_features), np.float64)
    for chunk in chunks:
        X = _check_features(chunk, n_features).astype(np.float64)
        if scale is not None:
            X = X * scale
        n += len(X)
        total += X.sum(0)
        scatter += X.T @ X
    return n, total, scatter


def _check_features(X, n_features_in: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    if n_features_in is not None and X.shape[1] != n_features_in:
        raise ValueError(f"features must have shape (N, {n_features_in}), got {X.shape}")
    return X


class Projection:
    """What every projection shares: ``n_components`` and ``random_state`` stored at ``__init__``; ``transform`` of
    (n_samples, n_features_in_) float features to (n_samples, n_components) float32 once fitted; its state as a dict
    (``to_state``) and back (``from_state``, which picks the subclass by ``method``), as the index file keeps it."""

    method = ""

    def __init__(self, n_components: int = 32, random_state: int = 0) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def transform(self, X) -> np.ndarray:
        """Project features.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, n_components), float32

        Raises
        ------
        RuntimeError
            When called before ``fit``.
        ValueError
            When ``X`` has another number of features.
        """
        self._check_fitted()
        X = _check_features(X, self.n_features_in_)
        return (X - self.mean_) @ self.components_

    def fit_transform(self, X) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)

    def to_state(self) -> dict:
        """Arrays and attributes that ``from_state`` needs: ``components`` (n_features, n_components) float32,
        ``mean`` (n_features,) float32, ``method``, ``n_components``, ``random_state``."""
        self._check_fitted()
        return {
            "method": self.method,
            "n_components": int(self.n_components),
            "random_state": int(self.random_state),
            "components": self.components_,
            "mean": self.mean_,
        }

    @staticmethod
    def from_state(state: dict) -> RandomProjection | PCAProjection:
        """Rebuild a fitted projection from ``to_state()`` output.

        Raises
        ------
        ValueError
            For an unknown method or components whose shape disagrees with ``n_components``.
        """
        cls = {"random": RandomProjection, "pca": PCAProjection,
               "mirror_whitened": MirrorWhitenedProjection}.get(str(state["method"]))
        if cls is None:
            raise ValueError(f"unknown projection method {state['method']!r}; expected one of "
                             f"{STORED_PROJECTION_METHODS}")
        proj = cls(int(state["n_components"]), int(state["random_state"]))
        components = np.asarray(state["components"], dtype=np.float32)
        if components.ndim != 2 or components.shape[1] != proj.n_components:
            raise ValueError(f"components must have shape (D, {proj.n_components}), got {components.shape}")
        proj.components_ = components
        proj.mean_ = np.asarray(state["mean"], dtype=np.float32).reshape(-1)
        proj.n_features_in_ = components.shape[0]
        return proj


class RandomProjection(Projection):
    """Gaussian random projection with entries ~ N(0, 1 / n_components), seeded by ``random_state``.

    ``fit`` only reads the number of features; the matrix depends on (n_features, n_components, random_state) alone.

    Attributes
    ----------
    components_ : ndarray of shape (n_features_in_, n_components), float32
    mean_ : ndarray of shape (n_features_in_,), float32, all zeros (kept so every projection is ``(X - mean) @ C``)
    """

    method = "random"

    def fit(self, X) -> RandomProjection:
        """Draw the matrix for ``X.shape[1]`` features. ``X`` : ndarray of shape (n_samples, n_features)."""
        X = _check_features(X)
        rng = np.random.default_rng(self.random_state)
        self.n_features_in_ = X.shape[1]
        self.components_ = rng.normal(0.0, 1.0 / np.sqrt(self.n_components), (X.shape[1], self.n_components)).astype(
            np.float32
        )
        self.mean_ = np.zeros(X.shape[1], np.float32)
        return self


class PCAProjection(Projection):
    """Principal component analysis (centred, not whitened), components from an SVD of the centred data.

    With fewer samples than ``n_components`` the trailing components are zero. ``random_state`` is kept for the
    record; the SVD is deterministic (signs are fixed so each component's largest entry is positive).

    Attributes
    ----------
    components_ : ndarray of shape (n_features_in_, n_components), float32
    mean_ : ndarray of shape (n_features_in_,), float32
    explained_variance_ratio_ : ndarray of shape (n_components,), float64
    """

    method = "pca"

    def fit(self, X, column_scale=None) -> PCAProjection:
        """Fit on ``X`` : ndarray of shape (n_samples, n_features), n_samples >= 1 (``column_scale``: see
        ``fit_streaming``).

        Raises
        ------
        ValueError
            When ``X`` is empty, or for a bad ``column_scale``.
        """
        X = _check_features(X)
        if len(X) == 0:
            raise ValueError("PCA needs at least one sample to fit, got 0")
        if column_scale is not None:
            return self.fit_streaming([X], X.shape[1], column_scale)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(0).astype(np.float32)
        Xc = (X - self.mean_).astype(np.float64)
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
        k = min(self.n_components, vt.shape[0])
        comps = np.zeros((X.shape[1], self.n_components), np.float64)
        comps[:, :k] = vt[:k].T
        signs = np.sign(comps[np.abs(comps).argmax(0), np.arange(self.n_components)])
        signs[signs == 0] = 1
        self.components_ = (comps * signs).astype(np.float32)
        var = s**2
        ratio = np.zeros(self.n_components)
        ratio[:k] = var[:k] / max(var.sum(), 1e-12)
        self.explained_variance_ratio_ = ratio
        return self

    def fit_streaming(self, chunks, n_features: int, column_scale=None) -> PCAProjection:
        """Fit from chunks of samples without holding them all: one pass accumulating the sum and the scatter
        matrix (float64, (D, D)), then an eigendecomposition of the covariance. The components equal ``fit``'s
        (the right singular vectors of the centred data) up to rounding; memory is O(chunk + D^2).

        Parameters
        ----------
        chunks : iterable of ndarray of shape (n_i, n_features)
        n_features : D, used when there are no samples at all.
        column_scale : None or ndarray of shape (D,), positive
            Fit the PCA of the features with each column multiplied by this (e.g. one feature block weighted
            differently from the stored features); the scale is folded into ``components_`` (each row i multiplied
            by ``column_scale[i]``) and ``mean_`` stays the mean of the unscaled features, so ``transform`` takes
            the stored features as they are.

        Raises
        ------
        ValueError
            When a chunk has another number of features, or for a bad ``column_scale``.
        """
        scale = _check_scale(column_scale, n_features)
        n, total, scatter = _scatter(chunks, n_features, scale)
        self.n_features_in_ = n_features
        mean = total / max(n, 1)
        cov = scatter / max(n, 1) - np.outer(mean, mean)
        rank = max(0, n - 1) if n else 0
        comps, self.explained_variance_ratio_ = _pca_components(mean, cov, self.n_components, rank)
        if scale is None:
            self.mean_, self.components_ = mean.astype(np.float32), comps
        else:
            self.mean_ = (mean / scale).astype(np.float32)
            self.components_ = (comps * scale[:, None]).astype(np.float32)
        return self


class MirrorWhitenedProjection(Projection):
    """Features -> ``n_components`` dims in which an object and its mirror image are close: a PCA to
    ``n_components`` dims, then whitening by the covariance of the mirror differences in that subspace.

    With F the features of objects and G the features of the same objects pooled from the horizontally flipped
    image (``Detector.detect_batch(mirror=True)``), and P the PCA (D -> d), the map is ``x -> P(x) W`` with
    ``W = s (S + shrinkage * s^2 I)^(-1/2)``, S = cov of ``P(F) - P(G)`` (d x d), s^2 = trace(S) / d: directions in
    which a feature changes under a flip are shrunk, the others kept (a linear discriminant of "same object" against
    "any object", as in metric learning from equivalence constraints: Kostinger et al., "Large scale metric learning
    from equivalence constraints", CVPR 2012, without its second covariance). PCA first keeps the number of
    parameters estimated from the pairs at d^2 (a few hundred pairs suffice, measured in docs/neighbours.md).

    Parameters
    ----------
    n_components : int, d
    random_state : int, kept for the record (the fit is deterministic)
    shrinkage : float, > 0, how much of the average mirror variance is added to every direction before whitening

    Attributes
    ----------
    components_ : ndarray of shape (n_features_in_, n_components), float32
    mean_ : ndarray of shape (n_features_in_,), float32
    n_pairs_ : int, the mirror pairs the whitening was estimated from
    """

    method = "mirror_whitened"

    def __init__(self, n_components: int = 64, random_state: int = 0, shrinkage: float = 0.1) -> None:
        super().__init__(n_components, random_state)
        self.shrinkage = shrinkage

    def fit_streaming(self, chunks, n_features: int, mirror_pairs, column_scale=None) -> MirrorWhitenedProjection:
        """Fit the PCA from ``chunks`` (streamed, as ``PCAProjection.fit_streaming``) and the whitening from
        ``mirror_pairs``.

        Parameters
        ----------
        chunks : iterable of ndarray of shape (n_i, n_features), the indexed features
        n_features : D
        mirror_pairs : (F, G), ndarrays of shape (m, D): features and the same objects' mirrored features, m >= 2
        column_scale : None or ndarray of shape (D,), positive; see ``PCAProjection.fit_streaming``

        Raises
        ------
        ValueError
            For fewer than 2 pairs, pairs of another shape, or a bad ``column_scale`` or ``shrinkage``.
        """
        if not float(self.shrinkage) > 0:
            raise ValueError(f"shrinkage must be > 0, got {self.shrinkage}")
        F = _check_features(mirror_pairs[0], n_features)
        G = _check_features(mirror_pairs[1], n_features)
        if F.shape != G.shape or len(F) < 2:
            raise ValueError(f"mirror_pairs must be two arrays of the same shape (m >= 2, {n_features}), got "
                             f"{F.shape} and {G.shape}")
        pca = PCAProjection(self.n_components, self.random_state).fit_streaming(chunks, n_features, column_scale)
        diff = ((F - G).astype(np.float64) @ pca.components_.astype(np.float64))
        cov = diff.T @ diff / len(diff)
        s2 = max(float(np.trace(cov)) / len(cov), 1e-12)
        values, vectors = np.linalg.eigh(cov + float(self.shrinkage) * s2 * np.eye(len(cov)))
        whiten = (vectors * (np.sqrt(s2) / np.sqrt(values))) @ vectors.T
        self.n_features_in_ = n_features
        self.mean_ = pca.mean_
        self.components_ = (pca.components_.astype(np.float64) @ whiten).astype(np.float32)
        self.n_pairs_ = len(F)
        return self

    def fit(self, X, mirror_pairs, column_scale=None) -> MirrorWhitenedProjection:
        """``fit_streaming([X], X.shape[1], mirror_pairs, column_scale)``; X : ndarray of shape (n, D), n >= 1."""
        X = _check_features(X)
        if len(X) == 0:
            raise ValueError("the projection needs at least one sample to fit, got 0")
        return self.fit_streaming([X], X.shape[1], mirror_pairs, column_scale)


EIGEN_RTOL = 1e-9  # eigenvalues below this fraction of the largest count as zero (float64 covariance rounding)


def _pca_components(mean: np.ndarray, cov: np.ndarray, n_components: int, rank: int):
    """Top ``n_components`` eigenvectors of ``cov`` (D, D) as columns (D, n_components), signs fixed so each column's
    largest entry is positive, zero beyond ``rank``; and the explained variance ratio."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    # directions without variance (rounding noise of the covariance, e.g. repeated samples) are arbitrary: zeroed
    rank = min(rank, int((values > values[0] * EIGEN_RTOL).sum())) if len(values) and values[0] > 0 else 0
    k = min(n_components, rank, vectors.shape[1])
    comps = np.zeros((cov.shape[0], n_components), np.float64)
    comps[:, :k] = vectors[:, :k]
    signs = np.sign(comps[np.abs(comps).argmax(0), np.arange(n_components)])
    signs[signs == 0] = 1
    ratio = np.zeros(n_components)
    ratio[:k] = values[:k] / max(values.sum(), 1e-12)
    return (comps * signs).astype(np.float32), ratio


def make_projection(method: str, n_components: int, random_state: int = 0) -> RandomProjection | PCAProjection:
    """A new, unfitted projection.

    Raises
    ------
    ValueError
        For a method other than ``random`` or ``pca``, or ``n_components`` < 1.
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTION_METHODS)}, got {method!r}")
    if int(n_components) < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    cls = RandomProjection if method == "random" else PCAProjection
    return cls(int(n_components), int(random_state))
