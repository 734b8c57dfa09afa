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


def _cell(img: np.ndarray | None, size: int, text: str, color, strip: int = 16) -> np.ndarray:
    """A (size + strip, size, 3) tile: ``img`` fitted and centred in a square, ``text`` in a strip below."""
    tile = np.full((size + strip, size, 3), 32, np.uint8)
    if img is not None and img.size:
        scale = size / max(img.shape[:2])
        w, h = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
        small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        y0, x0 = (size - h) // 2, (size - w) // 2
        tile[y0:y0 + h, x0:x0 + w] = small
    tile[size:] = color
    scale = 0.38
    while cv2.getTextSize(text, _FONT, scale, 1)[0][0] > size - 4 and scale > 0.25:
        scale -= 0.03
    cv2.putText(tile, text, (2, size + strip - 4), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def render_result(image: np.ndarray, result: dict, thumbnails: dict[int, bytes], *, header_height: int = 480,
                  thumb_height: int = 96) -> np.ndarray:
    """Draw a query result.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8 BGR, the query image.
    result : the ``query --json`` object (``Searcher.to_json``).
    thumbnails : JPEG bytes by object id, for every neighbour in ``result``.
    header_height, thumb_height : pixels (the original app's "header height" and "thumb height" sliders).

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
    gap = np.full((thumb_height + 16, 3, 3), 24, np.uint8)
    for obj in result["objects"]:
        x1, y1, x2, y2 = (int(round(v)) for v in obj["box"])
        crop = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        row = [_cell(crop, thumb_height, f"{obj['label']} {obj['confidence']:.2f}", _color(obj["class_id"])),
               np.full((thumb_height + 16, 12, 3), 24, np.uint8)]
        for nb in obj["neighbors"]:
            data = thumbnails.get(nb["object_id"])
            thumb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
            row += [_cell(thumb, thumb_height, f"{nb['label']} {nb['distance']:.2f}", _color(nb["class_id"])), gap]
        rows.append(np.hstack(row))
    width = max([header.shape[1]] + [r.shape[1] for r in rows])

    def pad_to(img):
        return np.hstack([img, np.full((img.shape[0], width - img.shape[1], 3), 24, np.uint8)])

    parts = [pad_to(header)]
    for r in rows:
        parts.append(np.full((4, width, 3), 24, np.uint8))
        parts.append(pad_to(r))
    return np.vstack(parts)
