"""The result picture of ``query --out``: the query with labeled boxes on top, one row of neighbour thumbnails per
object below, each labeled (the layout of the original ReverseObjectSearchFast screen, with its "header height"
and "thumb height" settings)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from objsearch.media import decode_thumbnail
from objsearch.types import SearchResult

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(int(class_id) * 7919 + 17)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


@functools.lru_cache(maxsize=4096)
def _label_size(text: str, scale: float) -> tuple[int, int, int]:
    """(width, height, baseline) in pixels of a label box for ``text`` at font ``scale``."""
    weight = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, weight)
    return tw + 4, th + base + 2, base


def _draw_label(img: np.ndarray, text: str, rect: tuple[int, int, int, int], color, scale: float) -> None:
    x, y, w, h = rect
    weight = max(1, int(round(scale * 2)))
    base = _label_size(text, scale)[2]
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), color, -1)
    cv2.putText(img, text, (x + 2, y + h - base - 1), _FONT, scale, (0, 0, 0), weight, cv2.LINE_AA)


def _first_free(candidates, placed: np.ndarray, w: int, h: int, width: int,
                height: int) -> tuple[int, int, int, int] | None:
    """The first candidate top-left corner (clamped into the picture) where a (w, h) rectangle overlaps none of
    ``placed`` ((M, 4) int [x1, y1, x2, y2), exclusive ends), as (x, y, w, h); None when there is none."""
    xy = candidates if isinstance(candidates, np.ndarray) else np.asarray(list(candidates), np.int64)
    xy = xy.reshape(-1, 2)
    if not len(xy):
        return None
    x = np.clip(xy[:, 0], 0, width - w)[:, None]
    y = np.clip(xy[:, 1], 0, height - h)[:, None]
    for start in range(0, len(x), 512):  # in blocks: the first free candidate is usually among the first few
        bx, by = x[start:start + 512], y[start:start + 512]
        hit = ((placed[:, 0] < bx + w) & (bx < placed[:, 2]) & (placed[:, 1] < by + h) & (by < placed[:, 3])).any(axis=1)
        free = np.flatnonzero(~hit)
        if free.size:
            return int(bx[free[0], 0]), int(by[free[0], 0]), w, h
    return None


def place_labels(boxes: np.ndarray, sizes: list[tuple[int, int]], width: int,
                 height: int) -> list[tuple[int, int, int, int] | None]:
    """Where each box's label goes so that no two labels overlap and every label stays inside the picture.

    A label is tried above its box's top-left corner, then inside it below the top edge, then shifted down and to the
    right inside the box, then below the box, then anywhere free in the picture (nearest first); a label that fits
    nowhere is None (the caller lists it elsewhere).

    Parameters
    ----------
    boxes : (N, 4) float, pixels [x1, y1, x2, y2] in the picture.
    sizes : N (width, height) label sizes in pixels.
    width, height : the picture's size in pixels.

    Returns
    -------
    list of N ``(x, y, w, h)`` rectangles in pixels, or None.
    """
    placed = np.zeros((0, 4), np.int64)  # x1, y1, x2, y2 (exclusive) of the labels placed so far
    out: list[tuple[int, int, int, int] | None] = []
    for (bx1, by1, bx2, by2), (w, h) in zip(np.asarray(boxes, np.float64).reshape(-1, 4), sizes):
        if w > width or h > height:
            out.append(None)
            continue
        bx1, by1, bx2, by2 = int(round(bx1)), int(round(by1)), int(round(bx2)), int(round(by2))
        xs = [bx1 + dx for dx in range(0, max(1, bx2 - bx1 - w + 1), max(8, w // 2))][:8]
        ys = [by1 - h, by1, *range(by1 + h, max(by1 + h, by2 - h + 1), h)][:12] + [by2]
        near = np.array([(x, y) for y in ys for x in xs], np.int64).reshape(-1, 2)
        spot = _first_free(near, placed, w, h, width, height)
        if spot is None:  # anywhere in the picture, nearest to the box's top-left corner first
            gx, gy = np.meshgrid(np.arange(0, width - w + 1, max(4, w // 4)), np.arange(0, height - h + 1, max(4, h)))
            order = np.argsort(np.abs(gx - bx1).ravel() + np.abs(gy - by1).ravel(), kind="stable")
            spot = _first_free(np.stack([gx.ravel()[order], gy.ravel()[order]], 1), placed, w, h, width, height)
        out.append(spot)
        if spot is not None:
            placed = np.vstack([placed, [[spot[0], spot[1], spot[0] + w, spot[1] + h]]])
    return out


LINE_HEIGHT = 14  # pixels of one line of tile text (a strip of one line is 16 px high)


def _cell(img: np.ndarray | None, size: int, text: str | list[str], color, strip: int = 16) -> np.ndarray:
    """A (size + strip, size, 3) tile: ``img`` fitted and centred in a square, ``text`` in a strip below (none when
    ``strip`` is 0). ``text`` is one line fitted by ``fit_text``, or a list of lines already fitted (each drawn at
    ``MIN_TEXT_SCALE`` or larger, ``LINE_HEIGHT`` pixels apart)."""
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
    lines = [fit_text(text, size - 4)] if isinstance(text, str) else [(t, TILE_TEXT_SCALE) for t in text]
    for i, (line, scale) in enumerate(lines):
        cv2.putText(tile, line, (2, size + 12 + i * LINE_HEIGHT), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


MIN_TEXT_SCALE = 0.33  # smaller Hershey text is not readable
TILE_TEXT_SCALE = 0.38  # the font scale of tile text that fits


def text_width(text: str, scale: float = TILE_TEXT_SCALE) -> int:
    """Pixels ``text`` takes at font ``scale`` (thickness 1)."""
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def fit_tail(text: str, width: int, scale: float = TILE_TEXT_SCALE) -> str:
    """``text`` as it fits ``width`` pixels at ``scale``: whole when it fits, else its end after ``...`` (a file
    name keeps its number and extension: ``...0000532.jpg``)."""
    if text_width(text, scale) <= width:
        return text
    for start in range(1, len(text)):
        if text_width("..." + text[start:], scale) <= width:
            return "..." + text[start:]
    return "..."


def image_tile_lines(name: str, distance: float, width: int) -> list[str]:
    """The two lines under a whole-image neighbour's tile ``width`` pixels wide: its distance (``d=0.52``, always
    whole) and its file name (``fit_tail``: whole when it fits, else its end)."""
    return [f"d={distance:.2f}", fit_tail(name, width)]
NOTE_COLOR = (80, 200, 255)  # BGR amber: the index cannot answer this row well


def note_cell(text: str, height: int, width: int, scale: float = 0.4) -> np.ndarray:
    """A (height, width, 3) uint8 BGR tile with ``text`` (a ``SearchResult`` note) word-wrapped in amber on dark grey,
    shown at the start of a neighbour row; lines that do not fit end in ``...``."""
    tile = np.full((height, width, 3), 32, np.uint8)
    cv2.rectangle(tile, (0, 0), (width - 1, height - 1), NOTE_COLOR, 1)
    line_h = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] + 6
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(trial, _FONT, scale, 1)[0][0] <= width - 8:
            lines[-1] = trial
        else:
            lines.append(word)
    max_lines = max(1, (height - 4) // line_h)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "..."
    for i, line in enumerate(lines):
        cv2.putText(tile, line, (4, 4 + line_h * (i + 1) - 4), _FONT, scale, NOTE_COLOR, 1, cv2.LINE_AA)
    return tile


def fit_text(text: str, width: int, scale: float = 0.38) -> tuple[str, float]:
    """``text`` and a font scale at which it fits ``width`` pixels: the scale shrinks down to ``MIN_TEXT_SCALE``, then
    the text is shortened from the end of its first word (the class name: ``motorc. d=0.52``) so that what follows
    (the distance) stays whole and readable."""
    def fits(t, sc):
        return cv2.getTextSize(t, _FONT, sc, 1)[0][0] <= width

    while not fits(text, scale) and scale > MIN_TEXT_SCALE:
        scale = max(MIN_TEXT_SCALE, scale - 0.02)
    head, sep, tail = text.rpartition(" ")
    while not fits(text, scale) and len(head) > 1:
        head = head[:-2] + "." if not head.endswith(".") else head[:-3] + "."
        text = head + sep + tail
    return text, scale


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


def label_rects(result: SearchResult, width: int, height: int, scale: float = 1.0,
                font_scale: float = 0.45) -> list[tuple[int, int, int, int] | None]:
    """The label rectangles ``draw_boxes`` uses on a (height, width) picture: ``place_labels`` of ``result``'s
    boxes mapped by ``scale``."""
    dets = result.detections
    sizes = [_label_size(_box_text(result, i), font_scale)[:2] for i in range(len(dets))]
    return place_labels(dets.xyxy.astype(np.float64) * scale, sizes, width, height)


def _box_text(result: SearchResult, i: int) -> str:
    return f"{result.label(result.detections.class_id[i])} {result.detections.confidence[i]:.2f}"


def draw_boxes(image: np.ndarray, result: SearchResult, scale: float = 1.0, thickness: int = 2,
               font_scale: float = 0.45, rects: list | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 BGR with a box and a label (class and confidence) per query object of ``result``,
    drawn in place; ``scale`` maps the boxes (query pixels) onto ``image``. Labels never overlap each other nor leave
    the picture (``place_labels``); one that fits nowhere is left out (its box stays). ``rects``: the labels'
    places when the caller already has them (``label_rects`` with the same arguments)."""
    dets = result.detections
    if rects is None:
        rects = label_rects(result, image.shape[1], image.shape[0], scale, font_scale)
    for i in range(len(dets)):
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in dets.xyxy[i])
        cv2.rectangle(image, (x1, y1), (x2, y2), _color(dets.class_id[i]), thickness)
    for i, rect in enumerate(rects):  # labels over every box
        if rect is not None:
            _draw_label(image, _box_text(result, i), rect, _color(dets.class_id[i]), font_scale)
    return image


NOTE_BAND = 18  # pixels of the line above a row that holds its note


def note_band(text: str, width: int, height: int = NOTE_BAND, scale: float = 0.4) -> np.ndarray:
    """A (height, width, 3) uint8 BGR band with ``text`` (a ``SearchResult`` note) in amber on dark grey on one line,
    ending in ``...`` where it does not fit."""
    band = np.full((height, width, 3), 24, np.uint8)
    if text_width(text, scale) > width - 8:
        while text and text_width(text + "...", scale) > width - 8:
            text = text[:-1]
        text += "..."
    cv2.putText(band, text, (4, height - 5), _FONT, scale, NOTE_COLOR, 1, cv2.LINE_AA)
    return band


def compose_rows(image: np.ndarray, result: SearchResult, thumbnails: dict, *, thumb_height: int = 96,
                 gap: int = 3, separator: int = 12) -> tuple[np.ndarray, list[Tile]]:
    """One row per query object: its crop from ``image``, then its neighbours' thumbnails, each labeled. A row whose
    object has a note (the index holds none or few objects of its class) shows it on a line of its own above the
    row's thumbnails (``note_band``: never over a thumbnail), or in place of the neighbours when there are none
    (``note_cell``).

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
    y = 0
    for r in range(len(dets)):
        note = result.notes[r] if r < len(result.notes) else ""
        band = NOTE_BAND if note and result.neighbors[r] else 0
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.xyxy[r])
        crop = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        parts = [_cell(crop, size, f"{result.label(dets.class_id[r])} {dets.confidence[r]:.2f}",
                       _color(dets.class_id[r]))]
        tiles.append(Tile(0, y + band, size, tile_h, r, -1, -1))
        x = size + separator
        parts.append(np.full((tile_h, separator, 3), 24, np.uint8))
        for c, nb in enumerate(result.neighbors[r]):
            thumb = _decode(thumbnails.get(nb.object_id))
            parts += [_cell(thumb, size, f"{result.label(nb.class_id)} d={nb.distance:.2f}", _color(nb.class_id)),
                      np.full((tile_h, gap, 3), 24, np.uint8)]
            tiles.append(Tile(x, y + band, size, tile_h, r, c, int(nb.object_id)))
            x += size + gap
        if note and not result.neighbors[r]:  # nothing to show: the note takes the row
            parts.append(note_cell(note, tile_h, 2 * size))
        row = np.hstack(parts)
        if band:  # the index holds none or few of this class: a line above the row's thumbnails
            start = size + separator
            line = np.full((band, row.shape[1], 3), 24, np.uint8)
            line[:, start:] = note_band(note, row.shape[1] - start, band)
            row = np.vstack([line, row])
        rows.append((y, row))
        y += row.shape[0] + 4
    if not rows:
        return np.zeros((0, 0, 3), np.uint8), tiles
    width = max(row.shape[1] for _, row in rows)
    picture = np.full((y - 4, width, 3), 24, np.uint8)
    for top, row in rows:
        picture[top:top + row.shape[0], :row.shape[1]] = row
    return picture, tiles


def render_result(image: np.ndarray, result: SearchResult, thumbnails: dict, *, header_height: int = 480,
                  thumb_height: int = 96) -> np.ndarray:
    """Draw a query result: the query with labeled boxes on top, one row of neighbours per object below.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8 BGR, the query image.
    result : the search result of ``image`` (``Engine.search``; ``query --json`` prints its ``to_dict()``).
    thumbnails : JPEG bytes (or decoded arrays) by object id, for every neighbour in ``result``
        (``result.object_ids()``).
    header_height, thumb_height : pixels (the original app's "header height" and "thumb height" sliders). The query
        is scaled to ``header_height``; when that leaves it narrower than the rows below, it grows (up to twice
        ``header_height``) to fill the picture's width, centred.

    Returns
    -------
    ndarray of shape (H2, W2, 3), uint8 BGR.
    """
    rows, _ = compose_rows(image, result, thumbnails, thumb_height=thumb_height)
    h, w = image.shape[:2]
    scale = header_height / h
    if rows.size and w * scale < rows.shape[1]:  # a narrow query: grow it (up to twice the height) to fill the width
        scale = min(rows.shape[1] / w, 2 * header_height / h)
    fitted = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    font = 0.45 * max(1.0, fitted.shape[0] / 480)
    header = draw_boxes(fitted, result, scale, max(2, round(2 * font / 0.45)), font)
    width = max(header.shape[1], rows.shape[1] if rows.size else 0)
    left = (width - header.shape[1]) // 2
    top = np.full((header.shape[0], width, 3), 24, np.uint8)
    top[:, left:left + header.shape[1]] = header

    def pad_to(img):
        return np.hstack([img, np.full((img.shape[0], width - img.shape[1], 3), 24, np.uint8)])

    parts = [top]
    if rows.size:
        parts += [np.full((4, width, 3), 24, np.uint8), pad_to(rows)]
    return np.vstack(parts)


IMAGE_STRIP = 2 * LINE_HEIGHT + 2  # the two text lines under a whole-image tile (distance, file name)


def _image_cells(image: np.ndarray, result, pictures: dict, size: int) -> list[np.ndarray]:
    """The query's tile, then one tile per whole-image neighbour: its picture, ``d=0.52`` and its file name under it
    (``image_tile_lines``), each (size + IMAGE_STRIP, size, 3) uint8 BGR."""
    cells = [_cell(image, size, ["query", ""], (200, 200, 200), strip=IMAGE_STRIP)]
    for nb in result.neighbors:
        name = nb.media.display_name() if hasattr(nb.media, "display_name") else str(nb.media.path)
        name = name.rsplit("/", 1)[-1]  # the file name (and a video frame's time), not its folders
        cells.append(_cell(_decode(pictures.get(nb.media.media_id)), size,
                           image_tile_lines(name, nb.distance, size - 4), (170, 210, 170), strip=IMAGE_STRIP))
    return cells


@dataclass
class ComposedResult:
    """A search result drawn for the app: made in the live pipeline's thread (``LivePipeline(compose=...)``, into
    ``LiveResult.extra``), painted in the GUI thread.

    Attributes
    ----------
    boxed : ndarray of shape (H, W, 3), uint8 RGB, C-contiguous
        The query frame with its objects' boxes and labels (the frame itself in whole-image mode).
    picture : ndarray of shape (H2, W2, 3), uint8
        The rows of neighbours (``compose_rows`` or ``compose_image_row``).
    tiles : list of Tile
        Where each thumbnail lies in ``picture``.
    tips : dict of (row, column) to str
        Tooltips by tile; column -1 is the query object (or the whole query image).
    """

    boxed: np.ndarray
    picture: np.ndarray
    tiles: list[Tile]
    tips: dict[tuple[int, int], str]


def compose_image_row(image: np.ndarray, result, pictures: dict, *, thumb_height: int = 96, gap: int = 3,
                      separator: int = 12) -> tuple[np.ndarray, list[Tile]]:
    """One row for a whole-image search (``ImageSearchResult``): the query, then each neighbour's whole picture
    with its distance and file name under it.

    Parameters
    ----------
    image : (H, W, 3) uint8 BGR, the query image.
    result : ``objsearch.types.ImageSearchResult``.
    pictures : by media id, (h, w, 3) uint8 BGR arrays or JPEG bytes; a missing one draws an empty tile.

    Returns
    -------
    picture : (thumb_height + IMAGE_STRIP, C, 3) uint8 BGR.
    tiles : where each tile is (``row`` 0; ``column`` -1 for the query; ``object_id`` holds the media id).
    """
    size = int(thumb_height)
    tile_h = size + IMAGE_STRIP
    cells = _image_cells(image, result, pictures, size)
    parts = [cells[0], np.full((tile_h, separator, 3), 24, np.uint8)]
    tiles = [Tile(0, 0, size, tile_h, 0, -1, -1)]
    x = size + separator
    for c, (nb, cell) in enumerate(zip(result.neighbors, cells[1:])):
        parts += [cell, np.full((tile_h, gap, 3), 24, np.uint8)]
        tiles.append(Tile(x, 0, size, tile_h, 0, c, int(nb.media.media_id)))
        x += size + gap
    return np.hstack(parts), tiles


def image_grid_columns(n: int, query_width: int, size: int, gap: int = 3, min_columns: int = 4) -> int:
    """How many whole-image tiles of ``size`` pixels go in one row of the ``query --mode image --out`` picture: as
    many as the query's width holds (at least ``min_columns``, at most ``n``), so that the query fills the header
    and the tiles wrap under it instead of running past it."""
    fits = max(1, (int(query_width) + gap) // (size + gap))
    return max(1, min(n, max(fits, min_columns)))


def render_image_result(image: np.ndarray, result, pictures: dict, *, header_height: int = 480,
                        thumb_height: int = 128, gap: int = 3) -> np.ndarray:
    """Draw a whole-image search: the query scaled to ``header_height`` on top, the similar images below in rows as
    wide as the query (``image_grid_columns``), nearest first, each with its distance and file name.

    Returns
    -------
    (H2, W2, 3) uint8 BGR.
    """
    return render_image_layout(image, result, pictures, header_height=header_height, thumb_height=thumb_height,
                               gap=gap)[0]


def render_image_layout(image: np.ndarray, result, pictures: dict, *, header_height: int = 480,
                        thumb_height: int = 128, gap: int = 3) -> tuple[np.ndarray, tuple, list[Tile]]:
    """``render_image_result``'s picture, with where the query sits (``(x, y, w, h)`` pixels) and where each
    neighbour's tile sits (``Tile``, ``column`` its rank)."""
    size = int(thumb_height)
    tile_h = size + IMAGE_STRIP
    h, w = image.shape[:2]
    scale = header_height / h
    fitted = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    cells = _image_cells(image, result, pictures, size)[1:]
    cols = image_grid_columns(len(cells), fitted.shape[1], size, gap)
    grid_w = cols * (size + gap) - gap if cells else 0
    width = max(fitted.shape[1], grid_w)
    n_rows = -(-len(cells) // cols) if cells else 0
    top = fitted.shape[0] + 4
    picture = np.full((top + n_rows * (tile_h + gap), width, 3), 24, np.uint8)
    left = (width - fitted.shape[1]) // 2
    picture[:fitted.shape[0], left:left + fitted.shape[1]] = fitted
    tiles = []
    for c, (nb, cell) in enumerate(zip(result.neighbors, cells)):
        x, y = (c % cols) * (size + gap), top + (c // cols) * (tile_h + gap)
        picture[y:y + tile_h, x:x + size] = cell
        tiles.append(Tile(x, y, size, tile_h, c // cols, c, int(nb.media.media_id)))
    return picture, (left, 0, fitted.shape[1], fitted.shape[0]), tiles


def place_insets(boxes: np.ndarray, size: tuple[int, int], width: int, height: int, *,
                 obstacles: np.ndarray | None = None, reach: float = 3.0) -> list[tuple[int, int, int, int] | None]:
    """Where each box's strip of neighbour thumbnails goes: outside every box and obstacle, not over another strip,
    inside the picture, and near its own box (above it, below it, to its right or left, else the nearest free spot
    within ``reach`` strip heights); None where no such spot exists.

    Parameters
    ----------
    boxes : (N, 4) float, pixels [x1, y1, x2, y2] in the picture.
    size : (width, height) of a strip in pixels.
    width, height : the picture's size in pixels.
    obstacles : (M, 4) float, more rectangles [x1, y1, x2, y2] to keep clear (the boxes' labels).

    Returns
    -------
    list of N ``(x, y, w, h)`` rectangles in pixels, or None.
    """
    w, h = size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    blocked = [np.round(boxes).astype(np.int64)]
    if obstacles is not None and len(obstacles):
        blocked.append(np.round(np.asarray(obstacles, np.float64).reshape(-1, 4)).astype(np.int64))
    placed = np.vstack(blocked)
    placed[:, 2:] += 1  # boxes are drawn on their last pixel too
    out: list[tuple[int, int, int, int] | None] = []
    if w > width or h > height:
        return [None] * len(boxes)
    step = max(4, h // 3)
    for bx1, by1, bx2, by2 in np.round(boxes).astype(int).tolist():
        near = [(bx1, by1 - h - 1), (bx1, by2 + 2), (bx2 + 2, by1), (bx1 - w - 1, by1), (bx2 - w, by1 - h - 1),
                (bx2 - w, by2 + 2)]
        r = int(reach * h)
        gx, gy = np.meshgrid(np.arange(bx1 - r, bx2 + r + 1, step), np.arange(by1 - r, by2 + r + 1, step))
        gx, gy = gx.ravel(), gy.ravel()
        inside = (gx >= 0) & (gy >= 0) & (gx <= width - w) & (gy <= height - h)
        gx, gy = gx[inside], gy[inside]
        order = np.argsort(np.abs(gx - bx1) + np.abs(gy - by1), kind="stable")
        near = np.array([(x, y) for x, y in near if 0 <= x <= width - w and 0 <= y <= height - h], np.int64)
        spot = _first_free(np.vstack([near.reshape(-1, 2), np.stack([gx[order], gy[order]], 1)]), placed, w, h,
                           width, height)
        out.append(spot)
        if spot is not None:
            placed = np.vstack([placed, [[spot[0], spot[1], spot[0] + w, spot[1] + h]]])
    return out


def object_color(r: int) -> tuple[int, int, int]:
    """A bright BGR colour for the ``r``-th object of a frame, far in hue from its neighbours in the list (golden-
    ratio hue steps): it ties a box to its neighbour strip when every box has the same class colour."""
    hue = int((r * 0.618033988749895 % 1.0) * 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 230, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(v) for v in bgr)


def _closest_points(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[tuple, tuple]:
    """The closest points of two rectangles ``(x1, y1, x2, y2)`` (inclusive pixels), one on each border: where their
    spans overlap, the middle of the overlap; else the facing edges."""
    def span(lo1, hi1, lo2, hi2):
        if max(lo1, lo2) <= min(hi1, hi2):
            mid = (max(lo1, lo2) + min(hi1, hi2)) // 2
            return mid, mid
        return (hi1, lo2) if hi1 < lo2 else (lo1, hi2)

    (ax, bx), (ay, by) = span(a[0], a[2], b[0], b[2]), span(a[1], a[3], b[1], b[3])
    return (ax, ay), (bx, by)


@dataclass
class Strip:
    """One box's strip of neighbour thumbnails in an annotated video frame: the object's row ``r``, the strip's
    place ``(x, y, w, h)`` in pixels, how many thumbnails it holds, its ``color`` (BGR; the frame around the strip,
    the leader line and the dot on the box) and the leader line's ends (``start`` on the strip's border, ``end`` on
    the box's)."""

    r: int
    rect: tuple[int, int, int, int]
    n_thumbnails: int
    color: tuple[int, int, int]
    start: tuple[int, int]
    end: tuple[int, int]


def strip_layout(result: SearchResult, width: int, height: int, *, n_neighbors: int = 3, thumb_size: int = 48,
                 label_rects_: list | None = None) -> list[Strip]:
    """Where ``annotate_frame`` puts each box's strip (outside every box and label: ``place_insets``; a shorter strip
    where the full one does not fit, none where nothing fits) and how it joins its box."""
    dets = result.detections
    rects = label_rects_ if label_rects_ is not None else label_rects(result, width, height)
    labels = [(x, y, x + lw, y + lh) for x, y, lw, lh in filter(None, rects)]
    counts = [min(n_neighbors, len(result.neighbors[r])) for r in range(len(dets))]
    n = max(counts, default=0)
    spots: list = [None] * len(dets)
    taken = np.asarray(labels, np.float64).reshape(-1, 4)
    for size in range(n, 0, -1):  # the full strip where it fits, a shorter one where it does not
        todo = [r for r in range(len(dets)) if spots[r] is None and counts[r] >= size]
        if not todo:
            continue
        strip_w = size * (thumb_size + 2) - 2
        others = np.vstack([taken, dets.xyxy.astype(np.float64)])
        found = place_insets(dets.xyxy[todo], (strip_w, thumb_size), width, height, obstacles=others)
        for r, spot in zip(todo, found):
            if spot is not None:
                spots[r] = (spot, size)
                taken = np.vstack([taken, [[spot[0], spot[1], spot[0] + spot[2], spot[1] + spot[3]]]])
    strips = []
    for r, placed in enumerate(spots):
        if placed is None:
            continue
        (x, y, w, h), size = placed
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.xyxy[r])
        box = (min(max(x1, 0), width - 1), min(max(y1, 0), height - 1), min(max(x2, 0), width - 1),
               min(max(y2, 0), height - 1))  # the part of the box inside the frame
        start, end = _closest_points((x, y, x + w - 1, y + h - 1), box)
        strips.append(Strip(r, (x, y, w, h), size, object_color(r), start, end))
    return strips


def annotate_frame(image: np.ndarray, result: SearchResult, thumbnails: dict, *, n_neighbors: int = 3,
                   thumb_size: int = 48) -> np.ndarray:
    """A copy of a video frame (H, W, 3) uint8 BGR with a labeled box per object and, next to each box, a strip of
    its first ``n_neighbors`` neighbours' thumbnails (``thumbnails`` by object id, JPEG bytes or arrays). Strips go
    outside every box and label (``strip_layout``), so they do not hide the objects in a crowd; an object with no free
    spot near it gets one thumbnail, or none. Each strip is framed in a colour of its own and joined to its box by a
    leader line of that colour ending in a dot on the box, so that in a crowd of one class (one box colour) every
    strip says whose it is. Used by ``objsearch video --out``."""
    h, w = image.shape[:2]
    rects = label_rects(result, w, h)
    out = draw_boxes(image.copy(), result, 1.0, max(2, image.shape[1] // 400), rects=rects)
    strips = strip_layout(result, w, h, n_neighbors=n_neighbors, thumb_size=thumb_size, label_rects_=rects)
    for strip in strips:  # the leader lines first, then their dots: thumbnails stay on top
        cv2.line(out, strip.start, strip.end, strip.color, 2, cv2.LINE_8)
    for strip in strips:
        cv2.circle(out, strip.end, 4, strip.color, -1, cv2.LINE_8)
    for strip in strips:
        x, y, sw, sh = strip.rect
        for nb in result.neighbors[strip.r][:strip.n_thumbnails]:
            thumb = _decode(thumbnails.get(nb.object_id))
            if thumb is not None:
                out[y:y + thumb_size, x:x + thumb_size] = _cell(thumb, thumb_size, "", None, strip=0)
            x += thumb_size + 2
        x, y = strip.rect[:2]
        cv2.rectangle(out, (x, y), (x + sw - 1, y + sh - 1), strip.color, 2, cv2.LINE_8)
    return out


def compose_grid(cells: list[tuple[np.ndarray | bytes | None, str, tuple[int, int, int]]], *, size: int = 128,
                 columns: int = 8, gap: int = 3) -> np.ndarray:
    """Tiles in a grid, left to right then down: each cell is (picture as (h, w, 3) uint8 BGR or JPEG bytes or
    None, caption, caption colour BGR), drawn as ``_cell`` draws a neighbour. Returns (H, W, 3) uint8 BGR (one picture
    per near-duplicate group of ``objects duplicates --out``)."""
    columns = max(1, min(int(columns), len(cells) or 1))
    tile_h, tile_w = size + 16, size
    n_rows = max(1, -(-len(cells) // columns))
    out = np.full((n_rows * (tile_h + gap) - gap, columns * (tile_w + gap) - gap, 3), 24, np.uint8)
    for i, (picture, text, color) in enumerate(cells):
        r, c = divmod(i, columns)
        y, x = r * (tile_h + gap), c * (tile_w + gap)
        out[y:y + tile_h, x:x + tile_w] = _cell(_decode(picture), size, text, color)
    return out
