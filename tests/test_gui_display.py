"""The app's display details (issue #10, item 7): a readable tooltip whatever the desktop theme, sliders that show
their values, and a window title that names the open index (pytest-qt, offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

from testdata import WEIGHTS

pytestmark = pytest.mark.gui


def luminance(image) -> np.ndarray:
    """(H, W) float luminance of a QImage."""
    from PyQt6 import QtGui

    image = image.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    h, w = image.height(), image.width()
    data = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8)
    rgb = data.reshape(h, image.bytesPerLine())[:, :w * 3].reshape(h, w, 3).astype(np.float64)
    return rgb @ [0.299, 0.587, 0.114]


@pytest.fixture
def dark_theme(qapp):
    """A desktop theme that pairs dark tooltip text with a dark tooltip background (the reported bug)."""
    from PyQt6 import QtGui, QtWidgets

    old_app, old_tip = qapp.palette(), QtWidgets.QToolTip.palette()
    palette = QtGui.QPalette(old_app)
    palette.setColor(QtGui.QPalette.ColorRole.ToolTipBase, QtGui.QColor("#303030"))
    palette.setColor(QtGui.QPalette.ColorRole.ToolTipText, QtGui.QColor("#202020"))
    qapp.setPalette(palette)
    QtWidgets.QToolTip.setPalette(palette)
    yield
    QtWidgets.QToolTip.hideText()
    qapp.setPalette(old_app)
    QtWidgets.QToolTip.setPalette(old_tip)


@pytest.fixture
def window(qapp, qtbot, small_index, dark_theme):
    from objsearch.gui.window import MainWindow

    w = MainWindow(small_index[0], weights=str(WEIGHTS))
    w.show()
    yield w
    w.shutdown()
    w.close()


def test_tooltip_text_is_readable_on_a_dark_theme(qtbot, window):
    from PyQt6 import QtCore, QtWidgets

    QtWidgets.QToolTip.showText(window.rows.mapToGlobal(QtCore.QPoint(10, 10)),
                                "person d=0.52\nbus.jpg (810 x 1080)", window.rows)
    qtbot.waitUntil(QtWidgets.QToolTip.isVisible, timeout=5000)
    tips = [w for w in QtWidgets.QApplication.topLevelWidgets()
            if w.metaObject().className() == "QTipLabel" and w.isVisible()]
    assert tips
    lum = luminance(tips[0].grab().toImage())
    background = np.median(lum)
    assert np.abs(lum - background).max() > 120, (background, lum.min(), lum.max())


def test_sliders_show_their_values(window):
    window.header_slider.setValue(500)
    window.thumb_slider.setValue(128)
    assert window.header_label.text() == "500 px" and window.thumb_label.text() == "128 px"
    assert window.header_label.isVisible() and window.thumb_label.isVisible()
    assert window.results_label.text() == str(window.results_slider.value())


def test_window_title_names_the_open_index(window, small_index):
    assert small_index[0].name in window.windowTitle()
