"""What an index gets after its objects are in: the projections fitted to its data (PCA, the rerank projection of
``objsearch.rerank``) at the end of an analysis, and what ``sync`` gives an index made before a feature existed
(whole-image vectors, rerank vectors), each made from the indexed files read again and committed in one transaction.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from objsearch.analysis.runner import JobCancelled, JobRun, ProgressFn
from objsearch.errors import ImageReadError, ObjsearchError
from objsearch.media import read_media
from objsearch.projection import PCAProjection, make_projection
from objsearch.provenance import index_config
from objsearch.roots import Roots, UntrustedRootError

LOGGER = logging.getLogger(__name__)


def fit_pending_projections(run: JobRun, n_features: int) -> None:
    """Fit the projections that need the data (PCA, and the rerank projection at ``rerank_dims``) from the stored
    features of every analysed object, streamed, and store them (the run's last objects are committed first: the
    fit reads committed rows only)."""
    writer = run.writer
    run.flush()
    pending = writer.attrs.get("pending_projections") or []
    stored = writer.attrs["config"]
    for d in pending:
        if stored.get("rerank_dims") is not None and int(d) == int(stored["rerank_dims"]):
            proj = fit_rerank_projection(writer, run.detector, stored)
            if proj is None:
                continue
        else:
            proj = PCAProjection(int(d), int(stored["seed"]))
            proj.fit_streaming((f for _, f in writer.iter_features()), n_features)
        writer.set_projection(proj)
    if pending:
        writer.set_attrs(pending_projections=[])


def fit_rerank_projection(writer, detector, cfg: dict, *, roots: Roots | None = None):
    """The index's rerank projection (``objsearch.rerank``): ``MirrorWhitenedProjection`` to ``cfg["rerank_dims"]``
    of the stored features reweighted by ``cfg["rerank_recipe"]``, whitened with the mirror pairs of up to
    ``MIRROR_SAMPLE_IMAGES`` indexed media items spread over the index (read again, one detector pass each on the
    image and its mirror image) under the index's ``roots`` (default: its roots as recorded; an item under a root
    this user did not choose is passed over, as one whose path leaves its root). None (logged) when fewer than 2
    objects are found in them: the index is then searched without reranking.
    """
    from objsearch.hygiene import IndexPolicy
    from objsearch.pooling import parse_recipe
    from objsearch.projection import MirrorWhitenedProjection
    from objsearch.rerank import RERANK_SHRINKAGE, column_scale, mirror_pairs, sample_positions

    rows = sample_positions(len(writer.media_id))
    max_pixels = int(cfg.get("max_pixels", 100_000_000))

    roots = Roots.of(writer) if roots is None else roots
    media_roots = writer.media_root

    def images():
        for r in rows:
            try:
                path = roots.resolve(int(media_roots[int(r)]), writer.media_path[int(r)])
            except UntrustedRootError as exc:
                LOGGER.warning("rerank projection: skipping an item: %s", exc)
                continue
            if path is None:
                continue
            try:
                yield read_media(path, int(writer.media_frame_index[int(r)]), max_pixels)
            except ImageReadError as exc:
                LOGGER.warning("rerank projection: skipping %s: %s", path, exc)

    policy = IndexPolicy.from_config(cfg)
    pairs = mirror_pairs(detector, images(), conf=policy.min_confidence(cfg["conf"]), dedup_iou=policy.dedup_iou)
    if len(pairs[0]) < 2:
        LOGGER.warning("rerank projection not made: the %d sampled images hold %d objects", len(rows), len(pairs[0]))
        return None
    scale = column_scale(detector.block_sizes(), detector.recipe, parse_recipe(cfg["rerank_recipe"]))
    proj = MirrorWhitenedProjection(int(cfg["rerank_dims"]), int(cfg["seed"]), RERANK_SHRINKAGE)
    return proj.fit_streaming((f for _, f in writer.iter_features()), detector.n_features, pairs, scale)


def image_projections(detector, cfg: dict) -> list:
    """The whole-image projections of a new index: random, seeded like the object ones, one per ``cfg["dims"]``
    (PCA applies to the object vectors only), fitted to the detector's ``n_image_features``."""
    return [make_projection("random", int(d), int(cfg["seed"])).fit(
        np.zeros((1, detector.n_image_features), np.float32)) for d in cfg["dims"]]


def add_image_vectors(writer, detector, *, max_pixels: int = 100_000_000, progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> int:
    """Give every live media item of ``writer``'s index its whole-image vector (re-running the detector on each
    image) and commit them in one transaction; returns the number of media items. For an index made before image
    search, or whose image recipe differs from ``detector``'s. Nothing is written unless every item succeeds.

    Raises
    ------
    ObjsearchError
        When an indexed file cannot be read any more (run ``objsearch sync`` after fixing it, or remove it).
    UntrustedRootError
        When an item lies under a root the user did not choose (see ``objsearch.roots``).
    JobCancelled
        When ``cancel`` was set (nothing was written).
    """
    ids = writer.media_id
    paths, frames, media_roots = writer.media_path, writer.media_frame_index, writer.media_root
    roots = Roots.of(writer)
    cfg = index_config(writer)
    feats = np.zeros((len(ids), detector.n_image_features), np.float32)
    for i, (rel, frame, root) in enumerate(zip(paths, frames, media_roots.tolist())):
        if cancel is not None and cancel.is_set():
            raise JobCancelled("cancelled before the image vectors were written; run `objsearch sync` again")
        path = roots.resolve(root, rel)
        if path is None:
            raise ObjsearchError(f"cannot make the image vector of {rel!r}: its path leaves {roots.folders[root]}")
        try:
            image = read_media(path, int(frame), max_pixels)
        except ImageReadError as exc:
            raise ObjsearchError(f"cannot make the image vector of an indexed item: {exc}") from None
        feats[i] = detector(image, conf=cfg["conf"]).image_feature
        if progress:
            progress(i + 1, len(ids), 0)
    dims = writer.dims or cfg["dims"]  # the object vectors' dimensions (index_config does not keep "dims")
    writer.set_image_vectors(detector.image_feature_recipe(), ids, feats,
                             image_projections(detector, {**cfg, "dims": dims}))
    writer.commit()
    return len(ids)


def add_rerank_vectors(writer, detector, cfg: dict, *, roots: Roots | None = None) -> int | None:
    """Give an index made before reranking (its stored configuration has no ``rerank_dims`` key) the rerank vectors
    of the default configuration (``objsearch.rerank``; one commit; its search vectors are kept as they are).
    Returns their dimension, None when nothing was made (the index has them, was made with ``rerank_dims: null``,
    or the mirror sample held no objects)."""
    from objsearch.config import load_config

    stored = writer.attrs.get("config", {})
    if writer.rerank_dims is not None or "rerank_dims" in stored or not len(writer.object_id):
        return None
    defaults = load_config(None, dims=writer.dims)
    if defaults["rerank_dims"] is None:
        return None
    settings = {**cfg, "rerank_dims": defaults["rerank_dims"], "rerank_recipe": defaults["rerank_recipe"]}
    proj = fit_rerank_projection(writer, detector, settings, roots=roots)
    if proj is None:
        return None
    writer.set_projection(proj)
    writer.set_attrs(config={**stored, "rerank_dims": settings["rerank_dims"],
                             "rerank_recipe": settings["rerank_recipe"]})
    writer.commit()
    return int(settings["rerank_dims"])
