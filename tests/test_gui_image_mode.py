"""The app's whole-image mode, under Qt's offscreen platform (as tests/test_gui.py): the mode toggle, one row of
similar images, and a click on one making it the query."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from testdata import BUS, WEIGHTS

pytestmark = pytest.mark.gui

WAIT_MS = 20000


@pytest.fixture(scope="module")
def window(qapp, small_index):
    from objsearch.gui.window import MainWindow

    w = MainWindow(small_index[0], weights=str(WEIGHTS))
    w.show()
    yield w
    w.shutdown()
    w.close()


def wait_result(qtbot, window, n):
    qtbot.waitUntil(lambda: window.n_results_shown > n, timeout=WAIT_MS)
    return window.last_result


def test_mode_toggle_shows_one_row_of_similar_images_and_a_click_queries_one(qtbot, window):
    from PyQt6 import QtCore

    window.results_slider.setValue(5)
    qtbot.wait(200)
    n = window.n_results_shown
    window.query_image(BUS)
    objects = wait_result(qtbot, window, n)
    assert hasattr(objects.result, "detections") and len({t.row for t in window.rows.tiles}) > 1

    n = window.n_results_shown
    window.mode_combo.setCurrentText("whole image")
    result = wait_result(qtbot, window, n)  # the still query is searched again in the new mode
    assert window.settings.mode == "image" and not window.same_class_box.isEnabled()
    assert result.frame.name == str(BUS)
    tiles = window.rows.tiles
    assert {t.row for t in tiles} == {0} and [t.column for t in tiles] == list(range(-1, 5))
    want = [nb["image_id"] for nb in result.result.to_dict()["neighbors"]]
    assert [t.object_id for t in tiles[1:]] == want and len(want) == 5
    assert set(result.thumbnails) == set(want) and all(v is not None for v in result.thumbnails.values())
    nb0 = result.result.neighbors[0]
    assert nb0.media.path in window.rows.tooltips[(0, 0)] and f"{nb0.distance:.3f}" in window.rows.tooltips[(0, 0)]
    assert "images" in window.stage_label.text() and "image vector" in window.stage_label.text()

    tile = tiles[2]
    expected = window.searcher.media_path(tile.object_id)
    n = window.n_results_shown
    qtbot.mouseClick(window.rows, QtCore.Qt.MouseButton.LeftButton,
                     pos=QtCore.QPoint(tile.x + tile.width // 2, tile.y + tile.height // 2))
    clicked = wait_result(qtbot, window, n)
    assert Path(clicked.frame.name) == expected and clicked.frame.image_id == tile.object_id
    assert tile.object_id not in [nb.media.media_id for nb in clicked.result.neighbors]  # itself left out

    n = window.n_results_shown
    window.mode_combo.setCurrentText("objects")
    back = wait_result(qtbot, window, n)
    assert hasattr(back.result, "detections") and window.same_class_box.isEnabled()
