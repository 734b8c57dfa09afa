"""Provenance of an index: the detector and the settings it was built with, found again to add to it, sync it or
search it.

``load_detector`` loads a detector for a configuration; ``detector_for_index`` the one an index was built with (its
weights found by sha256 among places the user controls, ``weights_for_index``; its recipe version checked);
``index_config`` the configuration it was built with, as ``load_config`` resolves it; ``image_vectors_stale`` whether
its whole-image vectors are of another image recipe than a detector makes. Both the jobs (``objsearch.analysis``)
and the search facade (``objsearch.engine``) build on this module; it imports neither.
"""

from __future__ import annotations

from pathlib import Path

from objsearch.config import ConfigError, load_config
from objsearch.errors import IndexFileError, WeightsMismatchError, WeightsNotFoundError
from objsearch.weights import resolve_weights, trusted_weights


def load_detector(cfg: dict, weights: str | None = None):
    """A ``Detector`` for the resolved configuration; ``weights`` overrides ``cfg["weights"]``.

    Raises
    ------
    WeightsNotFoundError
        When no checkpoint can be found or loaded; the message lists where it looked.
    """
    from objsearch.detector import Detector  # torch is imported only here

    chosen, looked = resolve_weights(weights or cfg.get("weights"))
    try:
        return Detector(chosen, imgsz=cfg["imgsz"], conf=cfg["conf"], iou=cfg["iou"], max_det=cfg["max_det"],
                        device=cfg["device"], recipe=cfg["feature_recipe"], runtime=cfg.get("runtime", "auto"))
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc} (looked in: {'; '.join(looked)})") from None


def weights_for_index(catalog, cfg: dict, *, weights: str | None = None) -> str:
    """The checkpoint an index was built with, found only among places the user controls.

    An index never chooses code: its ``weights_sha256`` only checks candidates. With ``weights`` (``--weights``) that
    file must match; otherwise the candidates are the configuration's weights, ``$OBJSEARCH_WEIGHTS``, the project's
    ``weights/*.pt`` and the shared data's weights (``objsearch.weights.trusted_weights``), and the first whose
    sha256 matches is returned.

    Raises
    ------
    WeightsMismatchError
        When ``weights`` differs from the index's, or no candidate matches.
    WeightsNotFoundError
        When ``weights`` names no file.
    """
    from objsearch.detector import file_sha256

    want = catalog.weights_sha256
    name = catalog.attrs.get("weights_name", "?")
    if weights is not None:
        path, _ = resolve_weights(weights)
        if Path(path).is_file() and file_sha256(path) != want:
            raise WeightsMismatchError(
                f"{catalog.path} was built with weights {name} (sha256 {want[:12]}…), but {Path(path).name} is "
                f"another file; pass the matching --weights")
        return path
    for candidate in trusted_weights(cfg.get("weights")):
        try:
            if file_sha256(candidate) == want:
                return str(candidate)
        except OSError:
            continue
    raise WeightsMismatchError(
        f"{catalog.path} was built with weights {name} (sha256 {want[:12]}…), which are not among the weights "
        f"objsearch may load here; pass that file with --weights")


def detector_for_index(catalog, cfg: dict, *, weights: str | None = None, detector=None):
    """The detector an index was built with: ``detector`` when its weights match (e.g. the one of the index opened
    before), else one loaded from ``weights_for_index``, with the index's recipe and thresholds.

    Raises
    ------
    WeightsMismatchError, WeightsNotFoundError
        See ``weights_for_index``.
    IndexFileError
        When the index's features were made by another recipe version.
    """
    if weights is not None or detector is None or detector.weights_sha256 != catalog.weights_sha256 \
            or cfg.get("runtime", detector.runtime) not in (detector.runtime, detector.runtime_requested):
        detector = load_detector(cfg, weights_for_index(catalog, cfg, weights=weights))
    made, stored = detector.feature_recipe(), catalog.attrs["feature_recipe"]
    if (made["n_features"], made["version"]) != (stored.get("n_features"), stored.get("version")):
        raise IndexFileError(
            f"{catalog.path} holds features of recipe version {stored.get('version', 1)} "
            f"({stored.get('n_features')}-d); this objsearch makes version {made['version']} "
            f"({made['n_features']}-d): analyze the images again")
    return detector


def job_detector(cfg: dict, weights: str | None = None, detector=None):
    """The detector a new analysis runs: ``detector`` when one is given (already loaded), else ``load_detector(cfg,
    weights)``.

    Raises
    ------
    WeightsNotFoundError
        When no checkpoint can be found or loaded.
    """
    if detector is not None:
        return detector
    return load_detector(cfg, weights)


def index_config(catalog) -> dict:
    """The configuration an index was built with, as ``load_config`` resolves it (for add, sync and search).

    Parameters
    ----------
    catalog : Catalog or CatalogWriter
        The open index.

    Returns
    -------
    dict
        A resolved configuration: the stored thresholds, thumbnail and projection settings, video sampling and
        index hygiene (``index_conf``, ``dedup_iou``, ``index_mirror``, ``rerank_dims``: None or False for an index
        made before they existed), and the stored recipe's blocks as ``feature_recipe``.

    Raises
    ------
    IndexFileError
        When the stored ``config`` or ``feature_recipe`` attribute is damaged.
    """
    stored = catalog.attrs.get("config", {})
    keep = ("imgsz", "iou", "max_det", "conf", "thumb_size", "thumb_quality", "projection", "seed", "batch",
            "video_fps", "video_stride", "rerank_recipe")
    recipe = catalog.attrs.get("feature_recipe", {})
    blocks = recipe.get("blocks") if isinstance(recipe, dict) else None
    if not isinstance(blocks, dict) or not isinstance(recipe.get("imgsz", 640), int) \
            or not isinstance(recipe.get("n_features", 1), int) or not isinstance(recipe.get("version", 1), int):
        raise IndexFileError(f"{catalog.path} is damaged: its feature_recipe attribute is not a mapping with "
                             f"blocks {{name: weight}} and integer imgsz, n_features and version")
    if not isinstance(stored, dict):
        raise IndexFileError(f"{catalog.path} is damaged: its config attribute is not a mapping")
    overrides = {k: v for k, v in stored.items() if k in keep}
    # index hygiene: what the index was built with; an index made before these settings existed keeps none
    hygiene = {"index_conf": stored.get("index_conf"), "dedup_iou": stored.get("dedup_iou"),
               "index_mirror": stored.get("index_mirror", False), "rerank_dims": stored.get("rerank_dims")}
    overrides.update(hygiene)
    if "imgsz" in recipe:
        overrides["imgsz"] = recipe["imgsz"]
    try:
        cfg = load_config(None, **overrides, feature_recipe=blocks)
    except ConfigError as exc:
        raise IndexFileError(f"{catalog.path} is damaged: its stored config or feature_recipe is invalid ({exc})") \
            from None
    cfg["feature_recipe"] = blocks
    cfg.update({k: v for k, v in hygiene.items() if v is None})  # load_config ignores None overrides
    return cfg


def image_vectors_stale(catalog, detector) -> bool:
    """Whether ``catalog`` (a Catalog or CatalogWriter) lacks whole-image vectors or holds ones of another image
    recipe than ``detector`` makes (``sync`` then makes them all again)."""
    if not catalog.has_image_vectors:
        return True
    made, stored = detector.image_feature_recipe(), catalog.image_recipe
    return (made["n_features"], made["version"], made["blocks"]) != (
        stored.get("n_features"), stored.get("version"), stored.get("blocks"))
