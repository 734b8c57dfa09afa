"""What goes into an index: the detections worth keeping (pure numpy, shared by analysis and evaluation).

A user's index holds every detection the detector keeps, so loose boxes, duplicates and false positives come back as
neighbours. ``index_keep`` drops the least useful of them: detections below the index's own minimum confidence
(``index_conf``, usually higher than the query's) and, per class, a detection that overlaps a more confident one of
the same class by ``dedup_iou`` or more (the detector's NMS keeps overlaps up to its ``iou``, 0.7).
"""

from __future__ import annotations

import numpy as np


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


def index_keep(xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, *, min_confidence: float = 0.0,
               dedup_iou: float | None = None) -> np.ndarray:
    """Which detections of ONE image an index keeps.

    Parameters
    ----------
    xyxy : ndarray of shape (N, 4), float, pixels [x1, y1, x2, y2]
    confidence : ndarray of shape (N,), float in [0, 1]
    class_id : ndarray of shape (N,), int
    min_confidence : detections below it are dropped.
    dedup_iou : a detection whose IoU with a more confident kept detection of the same class is >= this is dropped
        (greedy, most confident first); None: no duplicate suppression.

    Returns
    -------
    ndarray of shape (N,), bool
    """
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    class_id = np.asarray(class_id).reshape(-1)
    keep = confidence >= float(min_confidence)
    if dedup_iou is None or keep.sum() < 2:
        return keep
    iou = box_iou(xyxy, xyxy)
    kept: list[int] = []
    for i in np.argsort(-confidence, kind="stable"):
        if not keep[i]:
            continue
        if any(class_id[j] == class_id[i] and iou[i, j] >= dedup_iou for j in kept):
            keep[i] = False
        else:
            kept.append(int(i))
    return keep
