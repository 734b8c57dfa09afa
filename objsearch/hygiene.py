"""What goes into an index: the detections worth keeping (pure numpy); the one home of the index policy that
analysis, evaluation and the command line apply.

A user's index holds every detection the detector keeps, so loose boxes, duplicates and false positives come back as
neighbours. ``IndexPolicy`` (built from the configuration's ``index_conf``, ``dedup_iou`` and ``index_mirror``) says
what an index keeps of one image's detections: those at or above its minimum confidence (the larger of the query's
``conf`` and ``index_conf``) and, per class, not overlapping a more confident one of the same class by ``dedup_iou`` or
more (``index_keep``; the detector's NMS keeps overlaps up to its ``iou``, 0.7); with ``mirror`` each object's
features are the mean of its own and its mirrored features, so that a mirrored query finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from objsearch.types import Detections


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


@dataclass(frozen=True)
class IndexPolicy:
    """What an index keeps of the detector's output and how its vectors are made.

    Attributes
    ----------
    index_conf : float in [0, 1] or None
        Minimum confidence of an indexed detection; None: the query's ``conf`` (see ``min_confidence``).
    dedup_iou : float in [0, 1] or None
        Class-aware duplicate suppression: a detection whose IoU with a more confident kept one of its class is at
        least this is dropped; None: off.
    mirror : bool
        Index the mean of each object's features and its mirrored features (``Detector.detect_batch(mirror=True)``
        puts them in ``data["mirror_features"]``).
    """

    index_conf: float | None = None
    dedup_iou: float | None = None
    mirror: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> IndexPolicy:
        """The policy of a resolved configuration (``load_config``, ``analysis.index_config``): its ``index_conf``,
        ``dedup_iou`` and ``index_mirror`` (an older index's configuration may lack them: None, None, False)."""
        index_conf, dedup_iou = cfg.get("index_conf"), cfg.get("dedup_iou")
        return cls(None if index_conf is None else float(index_conf), None if dedup_iou is None else float(dedup_iou),
                   bool(cfg.get("index_mirror", False)))

    def min_confidence(self, conf: float) -> float:
        """The lowest confidence an index keeps when queries keep ``conf`` and above: the larger of the two."""
        return float(conf) if self.index_conf is None else max(float(conf), self.index_conf)

    def keep(self, dets: Detections, conf: float) -> np.ndarray:
        """Which of ``dets`` (the detections of ONE image) the index keeps: (N,) bool (see ``index_keep``)."""
        return index_keep(dets.xyxy, dets.confidence, dets.class_id, min_confidence=self.min_confidence(conf),
                          dedup_iou=self.dedup_iou)

    def features(self, dets: Detections) -> np.ndarray | None:
        """The vectors the index stores for ``dets``: (N, D) float32, the mean of ``features`` and
        ``data["mirror_features"]`` with ``mirror``, else ``features`` (None when ``dets`` has none).

        Raises
        ------
        KeyError
            With ``mirror``, for detections made without the mirror pass.
        """
        if not self.mirror or dets.features is None:
            return dets.features
        return 0.5 * (dets.features + dets.data["mirror_features"])
