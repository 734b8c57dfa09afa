"""The window's widgets and how they are laid out: the header (the query frame, pyqtgraph), the rows of neighbours
in a scroll area, the controls dock on the left (query source, search, display, index) and the status bar. Every
control calls a method of ``objsearch.gui.window.MainWindow``; ``build_layout`` sets the widgets as its attributes.
"""

from __future__ import annotations

import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from objsearch.gui.rows import ResultsView, slider, with_label

SOURCES = ("random", "image", "webcam", "video", "screen")
SOURCE_LABELS = {"random": "Random image", "image": "Image file", "webcam": "Webcam", "video": "Video file",
                 "screen": "Screen grab"}


def build_layout(win) -> None:
    """Make ``win``'s widgets (``win.header``, ``win.rows``, ``win.results_slider``, ...) and connect them to its
    methods."""
    win.header = pg.GraphicsLayoutWidget()
    win.header.setBackground((24, 24, 24))
    win.header_view = win.header.addViewBox(lockAspect=True, invertY=True, enableMouse=False)
    win.header_view.setMenuEnabled(False)
    win.frame_item = pg.ImageItem(axisOrder="row-major")
    win.header_view.addItem(win.frame_item)
    win.header.setFixedHeight(360)

    win.rows = ResultsView()
    win.rows.neighbor_clicked.connect(win._neighbor_clicked)
    scroll = QtWidgets.QScrollArea()
    scroll.setWidget(win.rows)
    scroll.setWidgetResizable(False)
    scroll.setStyleSheet("background: rgb(24, 24, 24)")
    win.rows_scroll = scroll

    central = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(central)
    layout.setContentsMargins(2, 2, 2, 2)
    layout.addWidget(win.header)
    layout.addWidget(scroll, 1)
    win.setCentralWidget(central)

    panel = QtWidgets.QWidget()
    form = QtWidgets.QVBoxLayout(panel)

    # sources
    box = QtWidgets.QGroupBox("Query source")
    grid = QtWidgets.QGridLayout(box)
    win.source_buttons = QtWidgets.QButtonGroup(win)
    for i, kind in enumerate(SOURCES):
        b = QtWidgets.QRadioButton(SOURCE_LABELS[kind])
        b.setObjectName(f"source_{kind}")
        win.source_buttons.addButton(b, i)
        grid.addWidget(b, i, 0)
    win.source_buttons.button(0).setChecked(True)
    win.source_buttons.idClicked.connect(lambda i: win.select_source(SOURCES[i]))
    win.next_button = QtWidgets.QPushButton("Next")
    win.next_button.setToolTip("Another random image of the index (R)")
    win.next_button.clicked.connect(win.query_random)
    QtGui.QShortcut(QtGui.QKeySequence("R"), win, activated=win.query_random)
    grid.addWidget(win.next_button, 0, 1)
    open_image = QtWidgets.QPushButton("Open…")
    open_image.setToolTip("Query an image file (or drop one on the window)")
    open_image.clicked.connect(win._choose_image)
    grid.addWidget(open_image, 1, 1)
    win.camera_spin = QtWidgets.QSpinBox()
    win.camera_spin.setRange(0, 15)
    win.camera_spin.setPrefix("device ")
    grid.addWidget(win.camera_spin, 2, 1)
    open_video = QtWidgets.QPushButton("Open…")
    open_video.clicked.connect(win._choose_video)
    grid.addWidget(open_video, 3, 1)
    win.region_edit = QtWidgets.QLineEdit()
    win.region_edit.setPlaceholderText("whole screen, or x,y,w,h")
    win.region_edit.setToolTip("Screen region to grab: left,top,width,height in pixels; empty for the first monitor")
    win.region_edit.editingFinished.connect(lambda: win.source_kind == "screen" and win.start_screen())
    grid.addWidget(win.region_edit, 4, 1)
    win.play_button = QtWidgets.QPushButton("Pause")
    win.play_button.setCheckable(True)
    win.play_button.toggled.connect(win._toggle_pause)
    win.seek_slider = slider(0, 0, 0)
    win.seek_slider.sliderMoved.connect(win._seek)
    win.position_label = QtWidgets.QLabel("")
    grid.addWidget(win.play_button, 5, 0)
    grid.addWidget(win.position_label, 5, 1)
    grid.addWidget(win.seek_slider, 6, 0, 1, 2)
    form.addWidget(box)

    # search
    box = QtWidgets.QGroupBox("Search")
    f = QtWidgets.QFormLayout(box)
    win.results_slider = slider(1, 100, win.settings.k)
    win.results_slider.valueChanged.connect(win._set_k)
    win.results_label = QtWidgets.QLabel(str(win.settings.k))
    f.addRow("Results", with_label(win.results_slider, win.results_label))
    win.conf_slider = slider(1, 95, 25)
    win.conf_slider.valueChanged.connect(win._set_conf)
    win.conf_label = QtWidgets.QLabel("0.25")
    f.addRow("Confidence", with_label(win.conf_slider, win.conf_label))
    win.mode_combo = QtWidgets.QComboBox()
    win.mode_combo.addItems(["objects", "whole image"])
    win.mode_combo.currentTextChanged.connect(win._set_mode)
    f.addRow("Search", win.mode_combo)
    win.same_class_box = QtWidgets.QCheckBox("same class only")
    win.same_class_box.toggled.connect(win._set_same_class)
    f.addRow("", win.same_class_box)
    win.dims_combo = QtWidgets.QComboBox()
    win.dims_combo.currentTextChanged.connect(win._set_dims)
    f.addRow("Dimensions", win.dims_combo)
    form.addWidget(box)

    # display
    box = QtWidgets.QGroupBox("Display")
    f = QtWidgets.QFormLayout(box)
    win.header_slider = slider(120, 1080, 360)
    win.header_slider.valueChanged.connect(win._set_header_height)
    win.header_label = QtWidgets.QLabel(f"{win.header_slider.value()} px")
    win.header_slider.valueChanged.connect(lambda v: win.header_label.setText(f"{v} px"))
    f.addRow("Header height", with_label(win.header_slider, win.header_label))
    win.thumb_slider = slider(32, 256, win.thumb_height)
    win.thumb_slider.valueChanged.connect(win._set_thumb_height)
    win.thumb_label = QtWidgets.QLabel(f"{win.thumb_height} px")
    win.thumb_slider.valueChanged.connect(lambda v: win.thumb_label.setText(f"{v} px"))
    f.addRow("Thumb height", with_label(win.thumb_slider, win.thumb_label))
    form.addWidget(box)

    # index
    box = QtWidgets.QGroupBox("Index")
    v = QtWidgets.QVBoxLayout(box)
    win.index_label = QtWidgets.QLabel("no index")
    win.index_label.setWordWrap(True)
    v.addWidget(win.index_label)
    row = QtWidgets.QHBoxLayout()
    for text, slot in (("Open…", win._choose_index), ("Save as…", win._choose_save),
                       ("Image folder…", win._choose_base_dir)):
        b = QtWidgets.QPushButton(text)
        b.clicked.connect(slot)
        row.addWidget(b)
    v.addLayout(row)
    win.analyze_button = QtWidgets.QPushButton("Analyze folder…")
    win.analyze_button.clicked.connect(win._choose_analyze)
    v.addWidget(win.analyze_button)
    win.progress = QtWidgets.QProgressBar()
    win.progress.setVisible(False)
    win.cancel_button = QtWidgets.QPushButton("Cancel analysis")
    win.cancel_button.setVisible(False)
    win.cancel_button.clicked.connect(win.cancel_analysis)
    v.addWidget(win.progress)
    v.addWidget(win.cancel_button)
    form.addWidget(box)

    win.message_label = QtWidgets.QLabel("")
    win.message_label.setWordWrap(True)
    win.message_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
    form.addWidget(win.message_label)
    form.addStretch(1)

    dock = QtWidgets.QDockWidget("Controls", win)
    dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable)
    scroll_panel = QtWidgets.QScrollArea()
    scroll_panel.setWidget(panel)
    scroll_panel.setWidgetResizable(True)
    scroll_panel.setMinimumWidth(300)
    dock.setWidget(scroll_panel)
    win.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, dock)
    win.stage_label = QtWidgets.QLabel("")
    win.statusBar().addPermanentWidget(win.stage_label)
    win._update_source_controls()
