"""Retrieval quality on a folder of images with YOLO-format labels (``objsearch eval``).

Protocol
--------
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from objsearch.projection import make_projection
from objsearch.types import Detections
from objsearch.vectors import memory_store

LOGGER = logging.getLogger(__name__)

TRANSFORMS = ("hflip", "resize0.75", "jpeg60")
PRECISION_KS = (1, 5, 16)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), both xyxy pixels; returns (N, M) float32."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


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
    ``instance_queries[t]`` holds (features (Q, D), object ids (Q,)) for transform t, and ``coverage[t]`` the fraction
    of indexed objects found again.
    """

    objects: Detections
    instance_queries: dict[str, tuple[np.ndarray, np.ndarray]]
    coverage: dict[str, float]
    n_images: int
    n_ground_truth: int
    n_detections: int


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
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            LOGGER.warning("skipping unreadable image %s", path)
            if progress:
                progress(0)
            continue
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


def score(data: EvalData, n_components: int, method: str = "random", random_state: int = 0) -> dict:
    """Retrieval metrics of ``data`` at one projection dimension (see the module docstring).

    Returns a dict: ``dims``, ``precision_at_k`` and ``precision_at_k_same_class`` ({k: value}),
    ``instance_recall_at_1`` ({transform: value, "mean": value}), ``query_ms_per_object``.
    """
    objects = data.objects
    true_class, image_id = objects.data["true_class"], objects.data["image_id"]
    proj = make_projection(method, n_components, random_state).fit(objects.features)
    vectors = proj.transform(objects.features)
    index = memory_store("auto", np.arange(len(vectors)), vectors, objects.class_id, image_id)
    kmax = max(PRECISION_KS)
    t0 = time.perf_counter()
    ids = index.search(vectors, kmax, exclude_image_id=image_id).ids
    elapsed = time.perf_counter() - t0
    ids_same = index.search(vectors, kmax, class_id=objects.class_id, exclude_image_id=image_id).ids

    def classes_of(i):
        return np.where(i >= 0, true_class[np.clip(i, 0, None)], -1)

    out = {
        "dims": n_components,
        "projection": method,
        "precision_at_k": {k: precision_at_k(classes_of(ids), true_class, k) for k in PRECISION_KS},
        "precision_at_k_same_class": {
            k: precision_at_k(classes_of(ids_same), true_class, k) for k in PRECISION_KS
        },
        "instance_recall_at_1": {},
        "query_ms_per_object": elapsed * 1e3 / max(len(vectors), 1),
    }
    recalls = []
    for t, (qf, qid) in data.instance_queries.items():
        if len(qid) == 0:
            out["instance_recall_at_1"][t] = float("nan")
            continue
        top = index.search(proj.transform(qf), 1).ids
        out["instance_recall_at_1"][t] = float((top[:, 0] == qid).mean())
        recalls.append(out["instance_recall_at_1"][t])
    out["instance_recall_at_1"]["mean"] = float(np.mean(recalls)) if recalls else float("nan")
    return out
