"""The desktop app's rows of neighbours and its small widgets: ``compose_live`` lays a live result out as one picture
(in the pipeline thread), ``ResultsView`` paints it 1:1 with a tooltip per tile, ``Bridge`` carries results from
worker threads to the GUI thread."""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from objsearch.live import LiveResult
from objsearch.render import ComposedResult, compose_image_row, compose_rows, draw_boxes
from objsearch.types import format_timestamp, printable

TOOLTIP_BACKGROUND, TOOLTIP_TEXT = "#202020", "#f0f0f0"
TOOLTIP_STYLE = (f"QToolTip {{ color: {TOOLTIP_TEXT}; background-color: {TOOLTIP_BACKGROUND}; "
                 "border: 1px solid #808080; padding: 3px; }")


class Bridge(QtCore.QObject):
    """Signals that carry results from worker threads to the GUI thread (queued connections)."""

    result = QtCore.pyqtSignal(object)
    error = QtCore.pyqtSignal(str)
    source_stopped = QtCore.pyqtSignal(str, bool)  # message, is_error
    analyze_progress = QtCore.pyqtSignal(int, int, int)
    analyze_done = QtCore.pyqtSignal(object, object)  # summary or None, error message or None
    task_done = QtCore.pyqtSignal(object, object)  # callback, error message or None


def qimage(bgr: np.ndarray) -> QtGui.QImage:
    """A QImage sharing ``bgr`` (H, W, 3) uint8 (keep the array alive while the image is used)."""
    h, w = bgr.shape[:2]
    return QtGui.QImage(bgr.data, w, h, bgr.strides[0], QtGui.QImage.Format.Format_BGR888)


class ResultsView(QtWidgets.QWidget):
    """The rows picture: paints it 1:1, shows a tooltip per tile (path, class, distance) and emits
    ``neighbor_clicked(object_id)`` when a neighbour is clicked."""

    neighbor_clicked = QtCore.pyqtSignal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.picture = np.zeros((0, 0, 3), np.uint8)
        self.tiles = []
        self.tooltips: dict[tuple[int, int], str] = {}
        self._image = None
        self.setMinimumSize(1, 1)

    def set_picture(self, picture: np.ndarray, tiles, tooltips: dict[tuple[int, int], str]) -> None:
        self.picture = np.ascontiguousarray(picture)
        self.tiles, self.tooltips = tiles, tooltips
        self._image = qimage(self.picture) if self.picture.size else None
        h, w = self.picture.shape[:2]
        self.setFixedSize(max(w, 1), max(h, 1))
        self.update()

    def tile_at(self, x: float, y: float):
        for tile in self.tiles:
            if tile.x <= x < tile.x + tile.width and tile.y <= y < tile.y + tile.height:
                return tile
        return None

    def paintEvent(self, event) -> None:
        painter = QtGui.QPainter(self)
        painter.fillRect(self.rect(), QtGui.QColor(24, 24, 24))
        if self._image is not None:
            painter.drawImage(0, 0, self._image)
        painter.end()

    def mouseMoveEvent(self, event) -> None:
        pos = event.position()
        tile = self.tile_at(pos.x(), pos.y())
        if tile is None:
            QtWidgets.QToolTip.hideText()
            self.unsetCursor()
            return
        text = self.tooltips.get((tile.row, tile.column), "")
        self.setCursor(QtCore.Qt.CursorShape.PointingHandCursor if tile.object_id >= 0 else
                       QtCore.Qt.CursorShape.ArrowCursor)
        QtWidgets.QToolTip.showText(event.globalPosition().toPoint(), text, self)

    def mousePressEvent(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = event.position()
        tile = self.tile_at(pos.x(), pos.y())
        if tile is not None and tile.object_id >= 0:
            self.neighbor_clicked.emit(tile.object_id)


def slider(lo: int, hi: int, value: int) -> QtWidgets.QSlider:
    s = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


def with_label(slider_: QtWidgets.QSlider, label: QtWidgets.QLabel) -> QtWidgets.QWidget:
    """``slider_`` with ``label`` (its value) on its right."""
    w = QtWidgets.QWidget()
    h = QtWidgets.QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    label.setMinimumWidth(32)
    h.addWidget(slider_, 1)
    h.addWidget(label)
    return w


def compose_live(result: LiveResult, *, thumb_height: int, header_height: int) -> ComposedResult:
    """The boxed frame (H, W, 3) uint8 RGB and the rows picture of a live ``result`` with its tiles and their tooltips,
    keyed by (row, column), as a ``render.ComposedResult``; runs in the pipeline thread. Labels are drawn larger for a frame shown shrunk into a
    header ``header_height`` pixels high; neighbours are ``thumb_height`` pixels high."""
    image = result.frame.image
    found = result.result
    if result.image_mode:  # an ImageSearchResult
        picture, tiles = compose_image_row(image, found, result.thumbnails, thumb_height=thumb_height)
        tips = {(0, -1): f"query: the whole of {printable(result.frame.name)}"}
        for c, nb in enumerate(found.neighbors):
            tips[(0, c)] = f"{nb.media.display_name()}\ndistance {nb.distance:.3f}\nclick: search this image"
        return ComposedResult(np.ascontiguousarray(image[..., ::-1]), picture, tiles, tips)
    dets = found.detections
    shrink = max(1.0, image.shape[0] / max(header_height, 1))  # labels stay readable once scaled down
    boxed = draw_boxes(image.copy(), found, 1.0, max(2, int(round(1.5 * shrink))), 0.45 * shrink)[..., ::-1]
    picture, tiles = compose_rows(image, found, result.thumbnails, thumb_height=thumb_height)
    tips = {}
    for r in range(len(dets)):
        x1, y1, x2, y2 = (float(v) for v in dets.xyxy[r])
        note = f"\n{found.notes[r]}" if r < len(found.notes) and found.notes[r] else ""
        tips[(r, -1)] = (f"query object: {found.label(dets.class_id[r])} {dets.confidence[r]:.2f}, box "
                         f"{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f} in {printable(result.frame.name)}{note}")
        for c, nb in enumerate(found.neighbors[r]):
            moment = (f"\nmoment {format_timestamp(nb.moment.start_s)}-{format_timestamp(nb.moment.end_s)}, "
                      f"{nb.moment.frames} frames" if nb.moment is not None and nb.moment.frames > 1 else "")
            tips[(r, c)] = (f"{nb.media.display_name()}\n{found.label(nb.class_id)} {nb.confidence:.2f}, "
                            f"distance {nb.distance:.3f} (object {nb.object_id}){moment}\nclick: search this "
                            f"{'frame' if nb.media.is_video_frame else 'image'}")
    return ComposedResult(np.ascontiguousarray(boxed), picture, tiles, tips)
