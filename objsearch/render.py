"""The result picture of ``query --out``: the query with labeled boxes on top, one row of neighbour thumbnails per
object below, each labeled (the layout of the original ReverseObjectSearchFast screen, with its "header height"
and "thumb height" settings)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from objsearch.media import decode_thumbnail
from objsearch.types import SearchResult

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(int(class_id) * 7919 + 17)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


def _label(img: np.ndarray, text: str, x: int, y: int, color, scale: float = 0.45) -> None:
    weight = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, weight)
    y = max(y, th + base)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), color, -1)
    cv2.putText(img, text, (x + 2, y - base), _FONT, scale, (0, 0, 0), weight, cv2.LINE_AA)


def _fit(img: np.ndarray, height: int) -> np.ndarray:
    scale = height / img.shape[0]
    return cv2.resize(img, (max(1, round(img.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def _cell(img: np.ndarray | None, size: int, text: str, color, strip: int = 16) -> np.ndarray:
    """A (size + strip, size, 3) tile: ``img`` fitted and centred in a square, ``text`` in a strip below (none when
    ``strip`` is 0)."""
    tile = np.full((size + strip, size, 3), 32, np.uint8)
    if img is not None and img.size:
        scale = size / max(img.shape[:2])
        w, h = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
        small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        y0, x0 = (size - h) // 2, (size - w) // 2
        tile[y0:y0 + h, x0:x0 + w] = small
    if not strip:
        return tile
    tile[size:] = color
    scale = 0.38
    while cv2.getTextSize(text, _FONT, scale, 1)[0][0] > size - 4 and scale > 0.25:
        scale -= 0.03
    cv2.putText(tile, text, (2, size + strip - 4), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


@dataclass
class Tile:
    """Where one thumbnail sits in the rows picture: pixels ``x, y, width, height``; ``row`` (the query object) and
    ``column`` (-1: the query object's own crop, 0..k-1: its neighbours by rank); ``object_id`` of the neighbour in the
    index (-1 for the query crop)."""

    x: int
    y: int
    width: int
    height: int
    row: int
    column: int
    object_id: int


def _decode(data) -> np.ndarray | None:
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        return data
    return decode_thumbnail(data)


def draw_boxes(image: np.ndarray, result: SearchResult, scale: float = 1.0, thickness: int = 2,
               font_scale: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3) uint8 BGR with a labeled box (class and confidence) per query object of ``result``,
    drawn in place; ``scale`` maps the boxes (query pixels) onto ``image``."""
    dets = result.detections
    for i in range(len(dets)):
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in dets.xyxy[i])
        color = _color(dets.class_id[i])
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        _label(image, f"{result.label(dets.class_id[i])} {dets.confidence[i]:.2f}", x1, y1, color, font_scale)
    return image


def compose_rows(image: np.ndarray, result: SearchResult, thumbnails: dict, *, thumb_height: int = 96,
                 gap: int = 3, separator: int = 12) -> tuple[np.ndarray, list[Tile]]:
    """One row per query object: its crop from ``image``, then its neighbours' thumbnails, each labeled.

    Parameters
    ----------
    image : (H, W, 3) uint8 BGR, the query image.
    result : the search result of ``image``.
    thumbnails : by object id, JPEG bytes or decoded (h, w, 3) uint8 BGR arrays; a missing one draws an empty tile.
    thumb_height : tile size in pixels (the original app's "thumb height").

    Returns
    -------
    picture : (R, C, 3) uint8 BGR; (0, 0, 3) when there are no objects.
    tiles : where each tile is, for hit-testing (hover, click).
    """
    size, strip = int(thumb_height), 16
    tile_h = size + strip
    tiles: list[Tile] = []
    rows = []
    dets = result.detections
    for r in range(len(dets)):
        y = r * (tile_h + 4)
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.xyxy[r])
        crop = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        parts = [_cell(crop, size, f"{result.label(dets.class_id[r])} {dets.confidence[r]:.2f}",
                       _color(dets.class_id[r]))]
        tiles.append(Tile(0, y, size, tile_h, r, -1, -1))
        x = size + separator
        parts.append(np.full((tile_h, separator, 3), 24, np.uint8))
        for c, nb in enumerate(result.neighbors[r]):
            thumb = _decode(thumbnails.get(nb.object_id))
            parts += [_cell(thumb, size, f"{result.label(nb.class_id)} d={nb.distance:.2f}", _color(nb.class_id)),
                      np.full((tile_h, gap, 3), 24, np.uint8)]
            tiles.append(Tile(x, y, size, tile_h, r, c, int(nb.object_id)))
            x += size + gap
        rows.append(np.hstack(parts))
    if not rows:
        return np.zeros((0, 0, 3), np.uint8), tiles
    width = max(r.shape[1] for r in rows)
    picture = np.full((len(rows) * (tile_h + 4) - 4, width, 3), 24, np.uint8)
    for r, row in enumerate(rows):
        y = r * (tile_h + 4)
        picture[y:y + tile_h, :row.shape[1]] = row
    return picture, tiles


def render_result(image: np.ndarray, result: dict, thumbnails: dict, *, header_height: int = 480,
                  thumb_height: int = 96) -> np.ndarray:
    """Draw a query result: the query with labeled boxes on top, one row of neighbours per object below.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8 BGR, the query image.
    result : the ``query --json`` object (``Searcher.to_json``).
    thumbnails : JPEG bytes (or decoded arrays) by object id, for every neighbour in ``result``.
    header_height, thumb_height : pixels (the original app's "header height" and "thumb height" sliders).

    Returns
    -------
    ndarray of shape (H2, W2, 3), uint8 BGR.
    """
    scale = header_height / image.shape[0]
    header = draw_boxes(_fit(image, header_height), result, scale)
    rows, _ = compose_rows(image, result, thumbnails, thumb_height=thumb_height)
    width = max(header.shape[1], rows.shape[1])

    def pad_to(img):
        return np.hstack([img, np.full((img.shape[0], width - img.shape[1], 3), 24, np.uint8)])

    parts = [pad_to(header)]
    if rows.size:
        parts += [np.full((4, width, 3), 24, np.uint8), pad_to(rows)]
    return np.vstack(parts)


def annotate_frame(image: np.ndarray, result: SearchResult, thumbnails: dict, *, n_neighbors: int = 3,
                   thumb_size: int = 48) -> np.ndarray:
    """A copy of a video frame (H, W, 3) uint8 BGR with a labeled box per object and, inside each box's top-left
    corner, its first ``n_neighbors`` neighbours' thumbnails (``thumbnails`` by object id, JPEG bytes or arrays),
    as far as they fit in the frame. Used by ``objsearch video --out``."""
    out = draw_boxes(image.copy(), result, 1.0, max(2, image.shape[1] // 400))
    h, w = out.shape[:2]
    for r in range(len(result.detections)):
        x1, y1 = (int(round(float(v))) for v in result.detections.xyxy[r][:2])
        x, y = max(0, x1 + 2), max(0, y1 + 2)
        for nb in result.neighbors[r][:n_neighbors]:
            thumb = _decode(thumbnails.get(nb.object_id))
            if thumb is None or x + thumb_size > w or y + thumb_size > h:
                break
            out[y:y + thumb_size, x:x + thumb_size] = _cell(thumb, thumb_size, "", None, strip=0)
            cv2.rectangle(out, (x, y), (x + thumb_size - 1, y + thumb_size - 1), _color(nb.class_id), 1)
            x += thumb_size + 2
    return out
