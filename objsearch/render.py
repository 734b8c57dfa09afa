"""The result picture of ``query --out``: the query with labeled boxes on top, one row of neighbour thumbnails per
object below, each labeled (the layout of the original ReverseObjectSearchFast screen, with its "header height"
and "thumb height" settings)."""

from __future__ import annotations

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(int(class_id) * 7919 + 17)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


def _label(img: np.ndarray, text: str, x: int, y: int, color, scale: float = 0.45) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    y = max(y, th + base)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), color, -1)
    cv2.putText(img, text, (x + 2, y - base), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _fit(img: np.ndarray, height: int) -> np.ndarray:
    scale = height / img.shape[0]
    return cv2.resize(img, (max(1, round(img.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def render_result(image: np.ndarray, result: dict, thumbnails: dict[int, bytes], *, header_height: int = 480,
                  thumb_height: int = 96, label_width: int = 150) -> np.ndarray:
    """Draw a query result.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8 BGR, the query image.
    result : the ``query --json`` object (``Searcher.to_json``).
    thumbnails : JPEG bytes by object id, for every neighbour in ``result``.
    header_height, thumb_height, label_width : pixels.

    Returns
    -------
    ndarray of shape (H2, W2, 3), uint8 BGR.
    """
    scale = header_height / image.shape[0]
    header = _fit(image, header_height)
    for obj in result["objects"]:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in obj["box"])
        color = _color(obj["class_id"])
        cv2.rectangle(header, (x1, y1), (x2, y2), color, 2)
        _label(header, f"{obj['label']} {obj['confidence']:.2f}", x1, y1, color)
    rows = []
    for obj in result["objects"]:
        color = _color(obj["class_id"])
        x1, y1, x2, y2 = (int(round(v)) for v in obj["box"])
        crop = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        cells = [_fit(crop, thumb_height) if crop.size else np.zeros((thumb_height, thumb_height, 3), np.uint8)]
        cells[0] = cells[0][:, :label_width]
        pad = np.full((thumb_height, max(0, label_width - cells[0].shape[1]), 3), 40, np.uint8)
        first = np.hstack([cells[0], pad])
        _label(first, obj["label"], 2, 16, color, 0.5)
        row = [first]
        for nb in obj["neighbors"]:
            data = thumbnails.get(nb["object_id"])
            thumb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
            cell = _fit(thumb, thumb_height) if thumb is not None else np.zeros((thumb_height, thumb_height, 3), np.uint8)
            cell = cell.copy()
            _label(cell, f"{nb['label']} {nb['distance']:.2f}", 0, thumb_height - 1, _color(nb["class_id"]), 0.35)
            row.append(np.full((thumb_height, 3, 3), 255, np.uint8))
            row.append(cell)
        rows.append(np.hstack(row))
    width = max([header.shape[1]] + [r.shape[1] for r in rows])

    def pad_to(img):
        return np.hstack([img, np.full((img.shape[0], width - img.shape[1], 3), 24, np.uint8)])

    parts = [pad_to(header)]
    for r in rows:
        parts.append(np.full((3, width, 3), 24, np.uint8))
        parts.append(pad_to(r))
    return np.vstack(parts)
