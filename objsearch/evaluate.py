"""Retrieval quality on a folder of images with YOLO-format labels (``objsearch eval``).

Realistic protocol (``collect_labeled``, ``realistic``, ``score_realistic``; what ``eval`` prints first)
-------------------------------------------------------------------------------------------------------
The index holds every detection ``analyze`` would keep (its ``objsearch.hygiene.IndexPolicy``), false positives and
duplicates included; the query objects are the detections of a second labeled folder (or, leave-one-image-out, of
the same one) that match a labeled object; a neighbour is right only when it is an indexed detection that matches a
labeled object of the query's class. See ``realistic`` for the details.

Matched protocol (``collect`` or ``matched_data``, ``score``)
-------------------------------------------------------------
* Every image is analysed once; each detection is matched to a ground-truth box at IoU >= 0.5 (greedy by
  confidence, class-agnostic, each ground-truth box used once) and takes that box's class as its true class.
  Unmatched detections are left out. The matched detections form the evaluation index.
* **Class precision@k** (k = 1, 5, 16): for each indexed object, the fraction of its k nearest neighbours, taken
  from *other images only*, whose true class equals the query's true class. "Class-agnostic" searches all objects;
  "same-class" searches only objects of the query's *detected* class, as ``query --same-class`` does, so it also
  pays for the detector's class mistakes. When fewer than k neighbours qualify (a rare class), the fraction is
  taken over those returned.
* **Instance recall@1**: each image is analysed again after a horizontal flip, a 0.75x resize and JPEG quality 60.
  Each detection there is mapped back to the original pixels and matched one-to-one to that image's indexed objects
  at IoU >= 0.5; the query succeeds when its nearest neighbour in the whole index is that same object. Objects the
  detector does not find again are reported as ``coverage`` and not counted in the recall.
* **Query time per object**: KD-tree search time of all indexed objects at once, divided by their number.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from objsearch.hygiene import IndexPolicy, box_iou
from objsearch.projection import MirrorWhitenedProjection, make_projection
from objsearch.rerank import (MIRROR_SAMPLE_IMAGES, RERANK_DEPTH, RERANK_RATIO, RERANK_SHRINKAGE, promote_instances,
                              sample_positions)
from objsearch.types import Detections, Hits
from objsearch.vectors import memory_store

LOGGER = logging.getLogger(__name__)

TRANSFORMS = ("hflip", "resize0.75", "jpeg60")
PRECISION_KS = (1, 5, 16)


def match_boxes(xyxy: np.ndarray, confidence: np.ndarray, targets: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of detections to target boxes, most confident detection first.

    Parameters
    ----------
    xyxy : ndarray of shape (N, 4), pixels
    confidence : ndarray of shape (N,)
    targets : ndarray of shape (M, 4), pixels
    iou_threshold : float

    Returns
    -------
    ndarray of shape (N,), int64: the matched target's row, or -1.
    """
    out = np.full(len(xyxy), -1, np.int64)
    if len(xyxy) == 0 or len(targets) == 0:
        return out
    iou = box_iou(xyxy, targets)
    used = np.zeros(len(targets), bool)
    for i in np.argsort(-np.asarray(confidence), kind="stable"):
        cand = np.where(used, -1.0, iou[i])
        j = int(cand.argmax())
        if cand[j] >= iou_threshold:
            out[i] = j
            used[j] = True
    return out


def _readable(images, progress=None):
    """``(path, image)`` for each of ``images`` that decodes (``objsearch.media.read_image``: (H, W, 3) uint8 BGR);
    an unreadable one is skipped, logged, and still counted by ``progress(0)``."""
    from objsearch.errors import ImageReadError
    from objsearch.media import read_image

    for path in images:
        try:
            yield path, read_image(path)
        except ImageReadError as exc:
            LOGGER.warning("skipping unreadable image %s: %s", path, exc)
            if progress:
                progress(0)


def read_yolo_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth from a YOLO label file (``class xc yc w h`` normalised per line; missing file: no objects).

    Returns
    -------
    xyxy : ndarray of shape (M, 4), float32, pixels
    class_id : ndarray of shape (M,), int64
    """
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    arr = np.array([[float(v) for v in r[:5]] for r in rows], np.float64).reshape(-1, 5)
    xc, yc, w, h = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    xyxy = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1).astype(np.float32)
    return xyxy, arr[:, 0].astype(np.int64)


def label_path_for(image_path: Path) -> Path:
    """``.../images/x/y.jpg`` -> ``.../labels/x/y.txt``, as ultralytics lays a dataset out."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def apply_transform(image: np.ndarray, name: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Distort ``image`` (H, W, 3) uint8 BGR; also return a function mapping xyxy (N, 4) back to original pixels."""
    h, w = image.shape[:2]
    if name == "hflip":
        return np.ascontiguousarray(image[:, ::-1]), lambda b: np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    if name == "resize0.75":
        small = cv2.resize(image, (max(1, round(w * 0.75)), max(1, round(h * 0.75))), interpolation=cv2.INTER_AREA)
        sx, sy = w / small.shape[1], h / small.shape[0]
        return small, lambda b: b * np.array([sx, sy, sx, sy], np.float32)
    if name == "jpeg60":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR), lambda b: b
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


@dataclass
class EvalData:
    """Detections of an evaluation set, ready to score with any projection.

    ``objects`` are the matched detections (the evaluation index): their boxes, confidences, detected ``class_id``,
    ``features`` (N, D) float32, and in ``data`` their ``true_class`` (N,) and ``image_id`` (N,); object id i is row i.
    ``instance_queries[t]`` holds (features (Q, D), object ids (Q,)) for transform t, ``instance_query_class[t]``
    their detected classes (Q,), and ``coverage[t]`` the fraction of indexed objects found again. With
    ``objects.data["mirror_features"]`` the rerank (``Rerank``) can be fitted.
    """

    objects: Detections
    instance_queries: dict[str, tuple[np.ndarray, np.ndarray]]
    coverage: dict[str, float]
    n_images: int
    n_ground_truth: int
    n_detections: int
    instance_query_class: dict[str, np.ndarray] = field(default_factory=dict)


def list_labeled_images(data_dir: Path) -> list[Path]:
    """Images under ``data_dir/images`` (or ``data_dir`` itself when it has no ``images`` folder), sorted."""
    from objsearch.media import list_images

    root = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    return list_images(root)


def collect(detect: Callable[[np.ndarray], Detections], images: list[Path], progress=None) -> EvalData:
    """Run ``detect`` on every image and its three distortions and gather what ``score`` needs.

    Unreadable images are skipped (logged).
    """
    kept_all = []
    inst: dict[str, tuple[list, list]] = {t: ([], []) for t in TRANSFORMS}
    found = {t: 0 for t in TRANSFORMS}
    n_gt = n_det = n_img = 0
    next_id = 0
    for path, image in _readable(images, progress):
        h, w = image.shape[:2]
        gt_xyxy, gt_cls = read_yolo_labels(label_path_for(path), w, h)
        dets = detect(image)
        n_det += len(dets)
        n_gt += len(gt_xyxy)
        match = match_boxes(dets.xyxy, dets.confidence, gt_xyxy)
        keep = match >= 0
        kept = dets[keep]
        ids = np.arange(next_id, next_id + len(kept))
        next_id += len(kept)
        kept.data = {"true_class": gt_cls[match[keep]], "image_id": np.full(len(kept), n_img, np.int64)}
        kept_all.append(kept)
        for t in TRANSFORMS:
            distorted, back = apply_transform(image, t)
            d2 = detect(distorted)
            if len(kept) and len(d2):
                m2 = match_boxes(back(d2.xyxy), d2.confidence, kept.xyxy)
                sel = m2 >= 0
                inst[t][0].append(d2.features[sel])
                inst[t][1].append(ids[m2[sel]])
                found[t] += int(sel.sum())
        n_img += 1
        if progress:
            progress(len(dets))
    n = next_id
    D = next((d.features.shape[1] for d in kept_all if d.features is not None), 0)

    def cat(parts, dtype, width=None):
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return np.zeros((0, width) if width is not None else 0, dtype)
        return np.concatenate(parts).astype(dtype)

    objects = Detections.concat(kept_all) if kept_all else Detections.empty(D)
    if not kept_all:
        objects.data = {"true_class": np.zeros(0, np.int64), "image_id": np.zeros(0, np.int64)}
    return EvalData(
        objects=objects,
        instance_queries={t: (cat(inst[t][0], np.float32, D), cat(inst[t][1], np.int64)) for t in TRANSFORMS},
        coverage={t: found[t] / max(n, 1) for t in TRANSFORMS},
        n_images=n_img,
        n_ground_truth=n_gt,
        n_detections=n_det,
    )


def precision_at_k(neighbor_class: np.ndarray, query_class: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the first k returned neighbours whose class equals the query's.

    ``neighbor_class`` (Q, >=k) int, -1 where no neighbour was returned (fewer than k qualified: the fraction is
    taken over those returned; a query with none is left out); ``query_class`` (Q,) int. NaN when no query counts.
    """
    top = neighbor_class[:, :k]
    returned = (top >= 0).sum(1)
    hits = (top == query_class[:, None]).sum(1)
    counted = returned > 0
    if not counted.any():
        return float("nan")
    return float((hits[counted] / returned[counted]).mean())


@dataclass(frozen=True)
class Rerank:
    """How an index made with ``rerank_dims`` reranks (``objsearch.rerank``), for scoring it like the engine searches.

    ``dims``: the rerank projection's; ``column_scale`` (D,): the per-column factors from the feature recipe to the
    rerank recipe (``objsearch.rerank.column_scale``); ``ratio``, ``depth``, ``sample_images``: as the engine and
    the analysis use them.
    """

    dims: int
    column_scale: np.ndarray
    ratio: float = RERANK_RATIO
    depth: int = RERANK_DEPTH
    sample_images: int = MIRROR_SAMPLE_IMAGES


class Searcher:
    """What the engine does with an index, on an evaluation index held in memory.

    The search projection (``method``, ``n_components``) is fitted on ``index.features``; with ``rerank``, the
    rerank projection is fitted as the analysis fits it (all features, and the mirror pairs of the objects of up to
    ``rerank.sample_images`` of the ``n_images`` images, spread evenly: ``objsearch.rerank.sample_positions``; it
    needs ``index.data["mirror_features"]``, and ``index.data["pair_features"]`` when the index holds averaged
    features), and a search moves each row's clear instance first (``promote_instances`` over ``rerank.depth``
    candidates).

    Raises
    ------
    ValueError
        When ``rerank`` is given and the index has no mirror features.
    """

    def __init__(self, index: Detections, n_components: int, method: str = "pca", random_state: int = 0,
                 rerank: Rerank | None = None, n_images: int | None = None) -> None:
        self.index = index
        self.projection = make_projection(method, n_components, random_state).fit(index.features)
        self.store = memory_store("auto", np.arange(len(index)), self.projection.transform(index.features),
                                  index.class_id, index.data["image_id"])
        self.rerank = rerank
        if rerank is not None:
            if "mirror_features" not in index.data:
                raise ValueError("a rerank needs the index's mirror features (collect with mirror=True)")
            image_id = index.data["image_id"]
            n = int(n_images) if n_images is not None else int(image_id.max(initial=-1)) + 1
            sample = np.isin(image_id, sample_positions(n, rerank.sample_images))
            raw = index.data.get("pair_features", index.features)
            pairs = (raw[sample], index.data["mirror_features"][sample])
            self.rerank_projection = MirrorWhitenedProjection(rerank.dims, random_state, RERANK_SHRINKAGE).fit(
                index.features, pairs, rerank.column_scale)
            self.rerank_vectors = self.rerank_projection.transform(index.features)

    def search(self, features: np.ndarray, k: int, *, query_class: np.ndarray, class_id=None,
               exclude_image_id=None) -> Hits:
        """Hits (Q, k) of the queries' ``features`` (Q, D) whose detected classes are ``query_class`` (Q,);
        ``class_id`` and ``exclude_image_id`` as ``VectorStore.search``."""
        vectors = self.projection.transform(features)
        if self.rerank is None:
            return self.store.search(vectors, k, class_id=class_id, exclude_image_id=exclude_image_id)
        n = max(k, min(self.rerank.depth, len(self.index)))
        hits = self.store.search(vectors, n, class_id=class_id, exclude_image_id=exclude_image_id)
        safe = np.clip(hits.ids, 0, None)
        hits = promote_instances(hits, self.rerank_projection.transform(features), self.rerank_vectors[safe],
                                 query_class, self.index.class_id[safe], self.rerank.ratio)
        return Hits(hits.distances[:, :k], hits.ids[:, :k])


def score(data: EvalData, n_components: int, method: str = "random", random_state: int = 0,
          rerank: Rerank | None = None) -> dict:
    """Retrieval metrics of ``data`` at one projection dimension (see the module docstring).

    Returns a dict: ``dims``, ``precision_at_k`` and ``precision_at_k_same_class`` ({k: value}),
    ``instance_recall_at_1`` ({transform: value, "mean": value}), ``query_ms_per_object``.
    """
    objects = data.objects
    true_class, image_id = objects.data["true_class"], objects.data["image_id"]
    searcher = Searcher(objects, n_components, method, random_state, rerank, data.n_images)
    kmax = max(PRECISION_KS)
    t0 = time.perf_counter()
    ids = searcher.search(objects.features, kmax, query_class=objects.class_id, exclude_image_id=image_id).ids
    elapsed = time.perf_counter() - t0
    ids_same = searcher.search(objects.features, kmax, query_class=objects.class_id, class_id=objects.class_id,
                               exclude_image_id=image_id).ids

    def classes_of(i):
        return np.where(i >= 0, true_class[np.clip(i, 0, None)], -1)

    out = {
        "dims": n_components,
        "projection": method,
        "rerank": rerank is not None,
        "precision_at_k": {k: precision_at_k(classes_of(ids), true_class, k) for k in PRECISION_KS},
        "precision_at_k_same_class": {
            k: precision_at_k(classes_of(ids_same), true_class, k) for k in PRECISION_KS
        },
        "instance_recall_at_1": {},
        "query_ms_per_object": elapsed * 1e3 / max(len(objects), 1),
    }
    recalls = []
    for t, (qf, qid) in data.instance_queries.items():
        if len(qid) == 0:
            out["instance_recall_at_1"][t] = float("nan")
            continue
        query_class = data.instance_query_class.get(t, objects.class_id[qid])
        top = searcher.search(qf, 1, query_class=query_class).ids
        out["instance_recall_at_1"][t] = float((top[:, 0] == qid).mean())
        recalls.append(out["instance_recall_at_1"][t])
    out["instance_recall_at_1"]["mean"] = float(np.mean(recalls)) if recalls else float("nan")
    return out


# ------------------------------------------------------------------------------------------ the realistic protocol
@dataclass
class LabeledSet:
    """Every detection of a labeled image set, from one detector pass per image and view.

    ``detections``: all detections at the collection confidence, boxes in pixels, ``features`` (N, D) float32, and in
    ``data``: ``image_id`` (N,) int64 (row of ``names``), ``true_class`` (N,) int64 (the class of the labeled object
    the detection matches, IoU >= 0.5, most confident first, one-to-one; -1 when it matches none) and, when collected
    with ``mirror``, ``mirror_features`` (N, D). ``views[t]``: the detections of each distortion t, boxes mapped back
    to the original pixels, ``data["image_id"]``. ``gt_xyxy`` (M, 4), ``gt_class`` (M,), ``gt_image_id`` (M,): the
    labels.
    """

    detections: Detections
    views: dict[str, Detections]
    gt_xyxy: np.ndarray
    gt_class: np.ndarray
    gt_image_id: np.ndarray
    names: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.names)


def label_detections(xyxy: np.ndarray, confidence: np.ndarray, image_id: np.ndarray, gt_xyxy: np.ndarray,
                     gt_class: np.ndarray, gt_image_id: np.ndarray) -> np.ndarray:
    """The true class of each detection: that of the labeled object of its image it matches (``match_boxes``: IoU
    >= 0.5, most confident first, one-to-one, class-agnostic), -1 when it matches none.

    Parameters
    ----------
    xyxy : (N, 4) pixels; confidence : (N,); image_id : (N,) int
    gt_xyxy : (M, 4) pixels; gt_class : (M,) int; gt_image_id : (M,) int

    Returns
    -------
    ndarray of shape (N,), int64
    """
    out = np.full(len(xyxy), -1, np.int64)
    image_id = np.asarray(image_id)
    for img in np.unique(image_id):
        rows = np.flatnonzero(image_id == img)
        g = np.flatnonzero(gt_image_id == img)
        match = match_boxes(xyxy[rows], np.asarray(confidence)[rows], gt_xyxy[g])
        out[rows[match >= 0]] = np.asarray(gt_class)[g[match[match >= 0]]]
    return out


def collect_labeled(detect: Callable[..., Detections], images: list[Path], *, conf: float, mirror: bool = False,
                    progress=None) -> LabeledSet:
    """Run ``detect(image, conf=conf, mirror=mirror)`` on every image and ``detect(view, conf=conf)`` on its three
    distortions (``TRANSFORMS``). Unreadable images are skipped (logged)."""
    parts, gts = [], []
    views: dict[str, list] = {t: [] for t in TRANSFORMS}
    names: list[str] = []
    for path, image in _readable(images, progress):
        img = len(names)
        names.append(str(path))
        h, w = image.shape[:2]
        gt_xyxy, gt_cls = read_yolo_labels(label_path_for(path), w, h)
        gts.append((gt_xyxy, gt_cls, np.full(len(gt_cls), img, np.int64)))
        dets = detect(image, conf=conf, mirror=mirror)
        dets.data = {**dets.data, "image_id": np.full(len(dets), img, np.int64)}
        parts.append(dets)
        for t in TRANSFORMS:
            distorted, back = apply_transform(image, t)
            d2 = detect(distorted, conf=conf)
            views[t].append(Detections(back(d2.xyxy), d2.confidence, d2.class_id, d2.features,
                                       {"image_id": np.full(len(d2), img, np.int64)}))
        if progress:
            progress(len(dets))
    gt_xyxy = np.concatenate([g[0] for g in gts]).reshape(-1, 4) if gts else np.zeros((0, 4), np.float32)
    gt_class = np.concatenate([g[1] for g in gts]) if gts else np.zeros(0, np.int64)
    gt_image = np.concatenate([g[2] for g in gts]) if gts else np.zeros(0, np.int64)
    dets = Detections.concat(parts) if parts else Detections.empty(0)
    if not parts:
        dets.data = {"image_id": np.zeros(0, np.int64)}
    dets.data["true_class"] = label_detections(dets.xyxy, dets.confidence, dets.data["image_id"], gt_xyxy,
                                               gt_class, gt_image)
    return LabeledSet(dets, {t: Detections.concat(v) if v else Detections.empty(0) for t, v in views.items()},
                      gt_xyxy, gt_class, gt_image, names)


def matched_data(labeled: LabeledSet, conf: float) -> EvalData:
    """The matched protocol's ``EvalData`` (see the module docstring) from a ``LabeledSet``: the detections at
    ``conf`` or more that match a labeled object form the index; the views' detections at ``conf`` or more that
    match one of them one-to-one (IoU >= 0.5) are the instance queries."""
    dets = labeled.detections
    sel = dets.confidence >= conf
    objects = dets[sel]
    objects.data = {key: objects.data[key] for key in ("true_class", "image_id", "mirror_features")
                    if key in objects.data}
    objects = objects[objects.data["true_class"] >= 0]
    inst, cov, classes = _instance_targets(objects, labeled.views, conf)
    return EvalData(objects=objects, instance_queries=inst, coverage=cov, n_images=labeled.n_images,
                    n_ground_truth=len(labeled.gt_class), n_detections=int(sel.sum()), instance_query_class=classes)


def _instance_targets(index: Detections, views: dict[str, Detections], conf: float):
    """For each view: (features (Q, D), target row of ``index`` (Q,)) of the view detections at ``conf`` or more
    matched one-to-one to an ``index`` object of the same image; the fraction of ``index`` objects found; and for
    each view the matched detections' classes (Q,)."""
    out, coverage, classes = {}, {}, {}
    for t, view in views.items():
        view = view[view.confidence >= conf] if len(view) else view
        feats, targets, cls = [], [], []
        for img in np.unique(index.data["image_id"]):
            rows = np.flatnonzero(index.data["image_id"] == img)
            vrows = np.flatnonzero(view.data["image_id"] == img) if len(view) else np.zeros(0, np.int64)
            if len(vrows) == 0:
                continue
            m = match_boxes(view.xyxy[vrows], view.confidence[vrows], index.xyxy[rows])
            feats.append(view.features[vrows[m >= 0]])
            targets.append(rows[m[m >= 0]])
            cls.append(view.class_id[vrows[m >= 0]])
        D = index.features.shape[1] if index.features is not None and index.features.ndim == 2 else 0
        f = np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, D), np.float32)
        q = np.concatenate(targets).astype(np.int64) if targets else np.zeros(0, np.int64)
        out[t] = (f, q)
        classes[t] = np.concatenate(cls).astype(np.int64) if cls else np.zeros(0, np.int64)
        coverage[t] = len(q) / max(len(index), 1)
    return out, coverage, classes


@dataclass
class RealisticData:
    """The realistic protocol's inputs (see ``realistic``)."""

    index: Detections
    queries: Detections
    instance_index: Detections
    instance_queries: dict[str, tuple[np.ndarray, np.ndarray]]
    coverage: dict[str, float]
    exclude_same_image: bool
    instance_query_class: dict[str, np.ndarray] = field(default_factory=dict)
    n_index_images: int = 0  # images of the index (the rerank's mirror sample is drawn from them)
    n_instance_images: int = 0  # images of the instance index


def _indexed(labeled: LabeledSet, conf: float, policy: IndexPolicy, image_offset: int = 0) -> Detections:
    dets = labeled.detections
    keep = np.zeros(len(dets), bool)
    image_id = dets.data["image_id"]
    for img in np.unique(image_id):
        rows = np.flatnonzero(image_id == img)
        keep[rows] = policy.keep(dets[rows], conf)
    out = dets[keep]
    features = policy.features(out)
    true_class = label_detections(out.xyxy, out.confidence, out.data["image_id"], labeled.gt_xyxy,
                                  labeled.gt_class, labeled.gt_image_id)
    label_iou = best_label_iou(out.xyxy, out.data["image_id"], labeled.gt_xyxy, labeled.gt_image_id)
    data = {"image_id": out.data["image_id"] + image_offset, "true_class": true_class, "label_iou": label_iou}
    if "mirror_features" in out.data:  # the mirror pairs a rerank projection is fitted with (not averaged)
        data.update(pair_features=out.features, mirror_features=out.data["mirror_features"])
    return Detections(out.xyxy, out.confidence, out.class_id, features, data)


def best_label_iou(xyxy: np.ndarray, image_id: np.ndarray, gt_xyxy: np.ndarray, gt_image_id: np.ndarray) -> np.ndarray:
    """The largest IoU of each detection with any labeled object of its image (0 when the image has none).

    Parameters
    ----------
    xyxy : (N, 4) pixels; image_id : (N,) int; gt_xyxy : (M, 4) pixels; gt_image_id : (M,) int

    Returns
    -------
    ndarray of shape (N,), float32
    """
    out = np.zeros(len(xyxy), np.float32)
    image_id = np.asarray(image_id)
    for img in np.unique(image_id):
        rows = np.flatnonzero(image_id == img)
        g = np.flatnonzero(gt_image_id == img)
        if len(g):
            out[rows] = box_iou(xyxy[rows], gt_xyxy[g]).max(1)
    return out


def _queries(labeled: LabeledSet, conf: float, image_offset: int = 0) -> Detections:
    dets = labeled.detections
    q = dets[(dets.confidence >= conf) & (dets.data["true_class"] >= 0)]
    data = {"image_id": q.data["image_id"] + image_offset, "true_class": q.data["true_class"]}
    if "class_scores" in q.data:
        data["class_scores"] = q.data["class_scores"]
    return Detections(q.xyxy, q.confidence, q.class_id, q.features, data)


def realistic(index_set: LabeledSet, query_set: LabeledSet | None, conf: float,
              policy: IndexPolicy = IndexPolicy()) -> RealisticData:
    """The realistic protocol's index and queries.

    * **Index**: every detection of ``index_set`` a user's ``analyze`` would keep (confidence >= ``conf``, or
      ``policy.index_conf``; duplicates suppressed when ``policy.dedup_iou``), whether or not it matches a labeled
      object; each carries its true class (-1 for a false positive, a loose box or a duplicate).
    * **Queries**: the detections of ``query_set`` (or, leave-one-image-out, of ``index_set``; their own image is then
      excluded from the search) at confidence >= ``conf`` that match a labeled object, with that object's class.
    * **Instance queries**: the distortions' detections at ``conf`` or more of the query images, matched one-to-one
      (IoU >= 0.5) to an indexed detection of the same image that matches a labeled object; the instance index is the
      index plus, when ``query_set`` is given, the query images' own indexed detections.
    """
    index = _indexed(index_set, conf, policy)
    if query_set is None:
        queries, instance_index, source = _queries(index_set, conf), index, index_set
        offset = 0
    else:
        offset = index_set.n_images
        queries = _queries(query_set, conf, offset)
        instance_index = Detections.concat([index, _indexed(query_set, conf, policy, offset)])
        source = query_set
    labeled_rows = np.flatnonzero(instance_index.data["true_class"] >= 0)
    targets = instance_index[labeled_rows]
    targets = Detections(targets.xyxy, targets.confidence, targets.class_id, targets.features,
                         {"image_id": targets.data["image_id"] - offset})
    inst, coverage, classes = _instance_targets(targets[targets.data["image_id"] >= 0], source.views, conf)
    shift = int(np.count_nonzero(targets.data["image_id"] < 0))
    inst = {t: (f, labeled_rows[q + shift]) for t, (f, q) in inst.items()}
    n_instance_images = index_set.n_images + (0 if query_set is None else query_set.n_images)
    return RealisticData(index, queries, instance_index, inst, coverage, query_set is None, classes,
                         index_set.n_images, n_instance_images)


def precision_right(right: np.ndarray, returned: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of right neighbours among the first k returned.

    ``right``, ``returned``: (Q, >=k) bool. A query with nothing returned is left out; NaN when none counts.
    """
    n = returned[:, :k].sum(1)
    hits = (right[:, :k] & returned[:, :k]).sum(1)
    counted = n > 0
    return float((hits[counted] / n[counted]).mean()) if counted.any() else float("nan")


MISS_KINDS = ("query_class_mistake", "neighbour_class_mistake", "other_class", "duplicate", "loose_box",
              "false_detection")
LOOSE_IOU = 0.1  # a neighbour overlapping a labeled object at least this much (and under 0.5) is a loose box


def miss_breakdown(ids: np.ndarray, query_true: np.ndarray, query_class: np.ndarray, index_true: np.ndarray,
                   index_class: np.ndarray, index_label_iou: np.ndarray, k: int = 5) -> dict:
    """Why the wrong neighbours among the first k are wrong (realistic protocol).

    A returned neighbour is wrong unless it is an indexed detection matching a labeled object of the query's true
    class. Each wrong one counts once, as the first that applies of:

    ``query_class_mistake``      the query object itself was detected as another class than its label;
    ``neighbour_class_mistake``  the neighbour was detected as the query's class but is labeled another class;
    ``other_class``              the neighbour is a labeled object of another class, detected as such (the features
                                 put two classes together);
    ``duplicate``                it overlaps a labeled object at IoU >= 0.5 that another detection matched;
    ``loose_box``                it overlaps a labeled object at ``LOOSE_IOU`` <= IoU < 0.5;
    ``false_detection``          it overlaps no labeled object (COCO's labels are not complete: some are real but
                                 unlabeled objects).

    Parameters
    ----------
    ids : (Q, >=k) int64 neighbour rows of the index, -1 where none was returned
    query_true, query_class : (Q,) int, the query's labeled and detected class
    index_true : (N,) int, the labeled class each indexed detection matches (-1: none)
    index_class : (N,) int, its detected class
    index_label_iou : (N,) float, its largest IoU with any labeled object of its image

    Returns
    -------
    dict: ``miss_rate`` (wrong / returned among the first k), ``n_missed``, and for each of ``MISS_KINDS`` its share
    of the wrong neighbours (shares sum to 1 when anything was missed).
    """
    top = ids[:, :k]
    returned = top >= 0
    safe = np.clip(top, 0, None)
    n_true, n_class, n_iou = index_true[safe], index_class[safe], index_label_iou[safe]
    right = returned & (n_true == np.asarray(query_true)[:, None])
    wrong = returned & ~right
    kinds = np.full(top.shape, -1)
    conditions = [
        np.broadcast_to((np.asarray(query_class) != np.asarray(query_true))[:, None], top.shape),
        (n_true >= 0) & (n_class == np.asarray(query_class)[:, None]),
        n_true >= 0,
        n_iou >= 0.5,
        n_iou >= LOOSE_IOU,
        np.ones(top.shape, bool),
    ]
    for i, cond in enumerate(conditions):
        kinds = np.where(wrong & (kinds < 0) & cond, i, kinds)
    n_wrong = int(wrong.sum())
    out = {"miss_rate": n_wrong / max(int(returned.sum()), 1), "n_missed": n_wrong}
    for i, name in enumerate(MISS_KINDS):
        out[name] = int((kinds == i).sum()) / max(n_wrong, 1)
    return out


def precision_by_class(right: np.ndarray, returned: np.ndarray, query_true: np.ndarray, k: int = 5) -> dict:
    """Precision@k per labeled query class: ``{class_id: (n_queries, precision)}`` (queries with nothing returned
    are left out; see ``precision_right``)."""
    n = returned[:, :k].sum(1)
    hits = (right[:, :k] & returned[:, :k]).sum(1)
    counted = n > 0
    per_query = np.where(counted, hits / np.maximum(n, 1), np.nan)
    out = {}
    for c in np.unique(np.asarray(query_true)[counted]):
        sel = counted & (query_true == c)
        out[int(c)] = (int(sel.sum()), float(per_query[sel].mean()))
    return out


def rerank_by_quality(hits, confidence: np.ndarray, quality_weight: float, k: int):
    """Neighbour ids (Q, k) re-ranked by ``distance * (1 + quality_weight * (1 - confidence))``: a loose or doubtful
    detection (low confidence) drops below a near-tie of higher confidence. ``hits``: a ``Hits`` of more than k
    candidates; ``confidence``: (N,) of the indexed objects by id."""
    ids, dist = hits.ids, hits.distances
    conf = np.where(ids >= 0, confidence[np.clip(ids, 0, None)], 0.0)
    adjusted = np.where(ids >= 0, dist * (1.0 + quality_weight * (1.0 - conf)), np.inf)
    order = np.argsort(adjusted, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1)


def score_realistic(data: RealisticData, n_components: int, method: str = "random", random_state: int = 0,
                    quality_weight: float = 0.0, rerank: Rerank | None = None) -> dict:
    """Metrics of the realistic protocol at one projection dimension, searched as the engine searches (``Searcher``;
    with ``rerank``, as an index made with ``rerank_dims``).

    A neighbour is right when it is an indexed detection that matches a labeled object of the query's true class.
    Returns a dict: ``dims``, ``projection``, ``rerank`` (bool), ``precision_at_k`` (class-agnostic),
    ``precision_at_k_same_class`` (search restricted to the query's detected class), ``false_neighbours_same_class``
    (the fraction of same-class neighbours at k=5 that match no labeled object), ``instance_recall_at_1``
    ({transform, "mean"}), ``n_index``, ``n_index_unmatched``, ``n_queries``, ``miss_breakdown`` and
    ``precision_at_5_by_class`` ({"class_agnostic": ..., "same_class": ...}: ``miss_breakdown`` and
    ``precision_by_class`` at k=5). ``quality_weight`` (measured, not adopted): rank near-ties by confidence
    (``rerank_by_quality``) instead of the rerank.
    """
    index, queries = data.index, data.queries
    true_class = index.data["true_class"]
    searcher = Searcher(index, n_components, method, random_state, None if quality_weight else rerank,
                        data.n_index_images or None)
    kmax = max(PRECISION_KS)
    exclude = queries.data["image_id"] if data.exclude_same_image else None
    out = {"dims": n_components, "projection": method, "rerank": rerank is not None and not quality_weight,
           "n_index": len(index), "n_index_unmatched": int(np.count_nonzero(true_class < 0)),
           "n_queries": len(queries), "precision_at_k": {}, "precision_at_k_same_class": {},
           "instance_recall_at_1": {}, "miss_breakdown": {}, "precision_at_5_by_class": {}}
    for key, name, class_id in (("precision_at_k", "class_agnostic", None),
                                ("precision_at_k_same_class", "same_class", queries.class_id)):
        if quality_weight:
            hits = searcher.store.search(searcher.projection.transform(queries.features), 3 * kmax,
                                         class_id=class_id, exclude_image_id=exclude)
            ids = rerank_by_quality(hits, index.confidence, quality_weight, kmax)
        else:
            ids = searcher.search(queries.features, kmax, query_class=queries.class_id, class_id=class_id,
                                  exclude_image_id=exclude).ids
        returned = ids >= 0
        neighbour_class = np.where(returned, true_class[np.clip(ids, 0, None)], -1)
        right = returned & (neighbour_class == queries.data["true_class"][:, None])
        out[key] = {k: precision_right(right, returned, k) for k in PRECISION_KS}
        out["miss_breakdown"][name] = miss_breakdown(ids, queries.data["true_class"], queries.class_id, true_class,
                                                     index.class_id, index.data["label_iou"])
        out["precision_at_5_by_class"][name] = precision_by_class(right, returned, queries.data["true_class"])
        if class_id is not None:
            n5 = returned[:, :5].sum()
            out["false_neighbours_same_class"] = float((returned[:, :5] & (neighbour_class[:, :5] < 0)).sum()
                                                       / max(n5, 1))
    inst_index = data.instance_index
    searcher_i = Searcher(inst_index, n_components, method, random_state, None if quality_weight else rerank,
                          data.n_instance_images or None)
    recalls = []
    for t, (qf, target) in data.instance_queries.items():
        if len(target) == 0:
            out["instance_recall_at_1"][t] = float("nan")
            continue
        query_class = data.instance_query_class.get(t, inst_index.class_id[target])
        top = searcher_i.search(qf, 1, query_class=query_class).ids[:, 0]
        out["instance_recall_at_1"][t] = float((top == target).mean())
        recalls.append(out["instance_recall_at_1"][t])
    out["instance_recall_at_1"]["mean"] = float(np.mean(recalls)) if recalls else float("nan")
    return out


# ------------------------------------------------------------------------------------ the bigger development protocol
def take_images(labeled: LabeledSet, image_ids) -> LabeledSet:
    """The images ``image_ids`` (rows of ``labeled.names``, in that order) of a labeled set, renumbered 0..n-1."""
    image_ids = np.asarray(image_ids, np.int64)
    remap = np.full(labeled.n_images, -1, np.int64)
    remap[image_ids] = np.arange(len(image_ids))

    def part(dets: Detections) -> Detections:
        if not len(dets):
            return dets
        out = dets[remap[dets.data["image_id"]] >= 0]
        out.data = {**out.data, "image_id": remap[out.data["image_id"]]}
        return out

    g = remap[labeled.gt_image_id] >= 0
    return LabeledSet(part(labeled.detections), {t: part(v) for t, v in labeled.views.items()}, labeled.gt_xyxy[g],
                      labeled.gt_class[g], remap[labeled.gt_image_id[g]], [labeled.names[i] for i in image_ids])


def join_labeled(first: LabeledSet, second: LabeledSet) -> LabeledSet:
    """One labeled set of the images of ``first`` then ``second`` (the second's image ids shifted); detection data
    keys kept only when both sets have them."""
    offset = first.n_images

    def both(a: Detections, b: Detections) -> Detections:
        keys = set(a.data) & set(b.data)
        b = Detections(b.xyxy, b.confidence, b.class_id, b.features,
                       {k: (v + offset if k == "image_id" else v) for k, v in b.data.items() if k in keys})
        a = Detections(a.xyxy, a.confidence, a.class_id, a.features, {k: v for k, v in a.data.items() if k in keys})
        return Detections.concat([a, b])

    return LabeledSet(both(first.detections, second.detections),
                      {t: both(first.views[t], second.views[t]) for t in first.views},
                      np.concatenate([first.gt_xyxy, second.gt_xyxy]).reshape(-1, 4),
                      np.concatenate([first.gt_class, second.gt_class]),
                      np.concatenate([first.gt_image_id, second.gt_image_id + offset]), first.names + second.names)


def bigger_protocol(index_set: LabeledSet, query_set: LabeledSet) -> tuple[LabeledSet, LabeledSet]:
    """The bigger development protocol (docs/neighbours.md): the index holds ``index_set`` and every other image of
    ``query_set`` (sorted by file name: positions 0, 2, 4, ...), and the remaining images (positions 1, 3, 5, ...)
    query it. Returns (index set, query set) for ``realistic``."""
    order = np.argsort([Path(n).name for n in query_set.names], kind="stable")
    return join_labeled(index_set, take_images(query_set, order[0::2])), take_images(query_set, order[1::2])


def rerank_settings(detector, cfg: dict) -> Rerank | None:
    """The ``Rerank`` an index made with ``cfg`` would use (``cfg["rerank_dims"]``, ``cfg["rerank_recipe"]`` over
    ``detector``'s feature recipe); None when ``rerank_dims`` is null."""
    from objsearch.pooling import parse_recipe
    from objsearch.rerank import column_scale

    if cfg.get("rerank_dims") is None:
        return None
    return Rerank(int(cfg["rerank_dims"]), column_scale(detector.block_sizes(), detector.recipe,
                                                         parse_recipe(cfg["rerank_recipe"])))


def format_misses(result: dict, class_names: list[str], n_classes: int = 10, min_queries: int = 5) -> list[str]:
    """Lines describing a ``score_realistic`` result's misses at k=5 (``miss_breakdown``) and its precision@5 per
    class: the ``n_classes`` classes with most queries and the ``n_classes`` worst of those with at least
    ``min_queries`` queries, as ``name P@5 (queries)``."""

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    lines = []
    for mode, label in (("class_agnostic", "class-agnostic"), ("same_class", "same-class")):
        b = result["miss_breakdown"][mode]
        lines.append(f"{label} misses at 5: {b['miss_rate']:.3f} of the neighbours; of them "
                     + ", ".join(f"{k.replace('_', ' ')} {b[k]:.2f}" for k in MISS_KINDS))
        by = {int(c): v for c, v in result["precision_at_5_by_class"][mode].items()}
        common = sorted(by, key=lambda c: (-by[c][0], c))[:n_classes]
        worst = sorted((c for c in by if by[c][0] >= min_queries), key=lambda c: (by[c][1], c))[:n_classes]
        lines.append(f"{label} P@5, most queried: " + ", ".join(f"{name(c)} {by[c][1]:.2f} ({by[c][0]})"
                                                                 for c in common))
        lines.append(f"{label} P@5, worst (>= {min_queries} queries): "
                     + ", ".join(f"{name(c)} {by[c][1]:.2f} ({by[c][0]})" for c in worst))
    return lines
