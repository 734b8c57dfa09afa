"""The core type that flows through every stage: a set of detected objects in one image.

The layout follows roboflow/supervision's ``Detections`` (parallel numpy arrays, mask-indexable, ``empty()``,
``concat()``), with a ``features`` array added for the per-object feature vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Objects detected in one image.

    Attributes
    ----------
    xyxy : ndarray of shape (N, 4), float32
        Boxes ``[x1, y1, x2, y2]`` in pixels of the original image.
    confidence : ndarray of shape (N,), float32
        Detector confidence in [0, 1].
    class_id : ndarray of shape (N,), int64
        Class index into the detector's class names.
    features : ndarray of shape (N, D), float32, or None
        One raw feature vector per object (see ``objsearch.detector``).

    Raises
    ------
    ValueError
        When the arrays' shapes disagree.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (N, 4), got {xyxy.shape}")
        self.xyxy = xyxy
        n = len(self.xyxy)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        if len(self.confidence) != n or len(self.class_id) != n:
            raise ValueError(
                f"xyxy, confidence and class_id must have the same length, got "
                f"{n}, {len(self.confidence)} and {len(self.class_id)}"
            )
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.ndim != 2 or len(self.features) != n:
                raise ValueError(f"features must have shape ({n}, D), got {self.features.shape}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Select objects by boolean mask, integer array or slice; always returns ``Detections``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            class_id=self.class_id[index],
            features=None if self.features is None else self.features[index],
        )

    @classmethod
    def empty(cls, n_features: int | None = None) -> Detections:
        """No objects; ``features`` has shape (0, n_features) when ``n_features`` is given, else None."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            features=None if n_features is None else np.zeros((0, n_features), np.float32),
        )

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        """Join several sets; features are kept only when every part has them."""
        if not parts:
            return cls.empty()
        with_features = all(p.features is not None for p in parts)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            confidence=np.concatenate([p.confidence for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            features=np.concatenate([p.features for p in parts]) if with_features else None,
        )
