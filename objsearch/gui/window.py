"""The objsearch window: the query frame with labeled boxes on top (pyqtgraph), one row of neighbours per detected
object below, the controls on the left, frames per second and per-stage milliseconds in the status bar.

The layout, the query sources (random image, webcam, video, screen grab) and the "num results", "header height" and
"thumb height" sliders follow the openFrameworks app ReverseObjectSearchFast. Capture and search run in their own
threads (``objsearch.sources.CaptureThread``, ``objsearch.live.LivePipeline``): the GUI thread only paints.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PyQt6 import QtCore, QtGui, QtWidgets

from objsearch.analysis import JobCancelled, analyze
from objsearch.catalog.snapshot import copy_index
from objsearch.config import load_config
from objsearch.engine import Engine
from objsearch.errors import ObjsearchError
from objsearch.gui.layout import SOURCES, build_layout
from objsearch.gui.rows import TOOLTIP_BACKGROUND, TOOLTIP_STYLE, TOOLTIP_TEXT, Bridge, compose_live
from objsearch.inputs import path_kind
from objsearch.live import LivePipeline, LiveResult, QuerySettings
from objsearch.render import ComposedResult
from objsearch.roots import UntrustedRootError
from objsearch.sources import (CaptureThread, FrameSlot, ImageFileSource, RandomImageSource, SourceError,
                               ScreenSource, VideoFileSource, VideoFrameSource, open_source, parse_source,
                               random_source)
from objsearch.summary import summarize
from objsearch.types import IMAGE_SUFFIXES, VIDEO_SUFFIXES, printable

LOGGER = logging.getLogger(__name__)



class MainWindow(QtWidgets.QMainWindow):
    """The app window.

    Parameters
    ----------
    index : an index file to open at start (None: none; open one or analyze a folder from the window).
    base_dir : where the index's images live now, when they moved.
    weights, device, runtime : detector overrides, as for ``objsearch query``.
    camera_opener, screen_grabber : stand-ins for ``cv2.VideoCapture(device)`` and the mss screen grab (tests).

    Everything a user can get wrong (no camera, an undecodable video, an unreadable image, an index built with
    other weights, a failed screen grab) ends in a message in the window (``message``), never in a crash; the open
    index stays open when opening another one fails.
    """

    def __init__(self, index: str | Path | None = None, *, base_dir: str | Path | None = None,
                 weights: str | None = None, device: str | None = None, camera_opener=None, screen_grabber=None,
                 backend="auto", runtime: str | None = None):
        super().__init__()
        self.runtime = runtime
        self.store_options = {"backend": backend, "runtime": runtime}
        self.setWindowTitle("objsearch")
        self.resize(1400, 900)
        # tooltips: light text on a dark panel whatever the desktop theme (some themes pair dark text with dark)
        self.setStyleSheet(TOOLTIP_STYLE)
        palette = QtWidgets.QToolTip.palette()
        palette.setColor(QtGui.QPalette.ColorRole.ToolTipBase, QtGui.QColor(TOOLTIP_BACKGROUND))
        palette.setColor(QtGui.QPalette.ColorRole.ToolTipText, QtGui.QColor(TOOLTIP_TEXT))
        QtWidgets.QToolTip.setPalette(palette)
        self.setAcceptDrops(True)
        self.weights, self.device = weights, device
        self.camera_opener, self.screen_grabber = camera_opener, screen_grabber
        self.searcher: Engine | None = None
        self.settings = QuerySettings()
        self.thumb_height = 96
        self.slot = FrameSlot()
        self.bridge = Bridge()
        self.bridge.result.connect(self._show_result)
        self.bridge.error.connect(lambda m: self.show_message(m, error=True))
        self.bridge.source_stopped.connect(self._source_stopped)
        self.bridge.analyze_progress.connect(self._analyze_progress)
        self.bridge.analyze_done.connect(self._analyze_done)
        self.bridge.task_done.connect(lambda cb, err: cb(err))
        self.pipeline: LivePipeline | None = None
        self.source = None
        self.source_kind = "random"
        self.capture: CaptureThread | None = None
        self._still = None  # the last one-off frame, searched again when a setting changes
        self.last_result: LiveResult | None = None
        self.n_results_shown = 0
        self._analysis: tuple[threading.Thread, threading.Event, Path, Path] | None = None
        self._frame_shape = None
        self._header_height = 360
        self._random: RandomImageSource | None = None
        self.message = ""
        build_layout(self)
        if index is not None:
            self.open_index(index, base_dir=base_dir)
        else:
            self.show_message("Open an index (Index ▸ Open…) or analyze a folder of images to start.")

    # ------------------------------------------------------------------------------------------------ layout
    # ----------------------------------------------------------------------------------------------- messages
    def show_message(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the controls panel and the status bar (red when ``error``); never a modal dialog."""
        self.message = text
        self.message_label.setText(text)
        self.message_label.setStyleSheet("color: #e05050" if error else "")
        self.statusBar().showMessage(text, 0 if error else 10000)
        (LOGGER.warning if error else LOGGER.info)("%s", text)

    # -------------------------------------------------------------------------------------------------- index
    def open_index(self, path: str | Path, base_dir: str | Path | None = None) -> bool:
        """Open an index file and make it the one searched. On failure the message says why and the previous index
        stays open. Returns whether it opened."""
        path = Path(path)
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
        try:
            old = self.searcher
            # the detector of the index open before is reused when its weights match (the engine checks the sha256)
            detector = old.detector if old is not None and self.weights is None else None
            searcher = Engine(path, weights=self.weights, base_dir=base_dir, device=self.device, detector=detector,
                              **self.store_options)
        except ObjsearchError as exc:
            self.show_message(f"cannot open {path.name}: {exc}", error=True)
            return False
        finally:
            QtWidgets.QApplication.restoreOverrideCursor()
        self.searcher = searcher
        self._random = None
        if self.pipeline is None:
            self.pipeline = LivePipeline(searcher, self.slot, self.bridge.result.emit, on_error=self.bridge.error.emit,
                                         settings=self.settings, compose=self._compose)
            self.pipeline.start()
        else:
            self.pipeline.set_searcher(searcher)
        self.slot.advance()  # results of the old index still in flight are dropped
        if old is not None:
            old.close()
        self.settings.dims = searcher.dims
        self.dims_combo.blockSignals(True)
        self.dims_combo.clear()
        self.dims_combo.addItems([str(d) for d in searcher.catalog.dims])
        self.dims_combo.setCurrentText(str(searcher.dims))
        self.dims_combo.setEnabled(len(searcher.catalog.dims) > 1)
        self.dims_combo.blockSignals(False)
        self.conf_slider.blockSignals(True)
        self.conf_slider.setValue(int(round(searcher.conf * 100)))
        self.conf_label.setText(f"{searcher.conf:.2f}")
        self.conf_slider.blockSignals(False)
        self.settings.conf = None
        self._update_index_label()
        self.setWindowTitle(f"objsearch - {path.name}")
        self.show_message(f"opened {path} ({len(searcher.catalog.object_id):,} objects, search: {searcher.method})")
        if self._check_images() and self.source_kind == "random" and self.capture is None:
            self.query_random()
        return True

    def _update_index_label(self) -> None:
        s = self.searcher
        if s is None:
            self.index_label.setText("no index")
            return
        self.index_label.setText(f"{summarize(s.catalog).headline()}\nimages under {s.base_dir}")
        self.index_label.setToolTip(str(s.catalog.path))

    def _check_images(self) -> bool:
        s = self.searcher
        if s is None or not len(s.catalog.media_id):
            return True
        try:
            first = s.media_path(s.catalog.media_id[0])
        except UntrustedRootError as exc:
            self.show_message(f"{exc} (here: Index ▸ Image folder…)", error=True)
            return False
        if first is not None and first.is_file():
            return True
        self.show_message(f"the index's images are not under {s.base_dir}: choose Index ▸ Image folder… to point at "
                          f"them (search and thumbnails work without them; random and clicked images need them)",
                          error=True)
        return False

    def set_base_dir(self, folder: str | Path) -> None:
        """Where the index's images live now (when they moved)."""
        if self.searcher is None:
            return
        self.searcher.base_dir = Path(folder)
        self._random = None
        self._update_index_label()
        if self._check_images():
            self.show_message(f"images of {self.searcher.catalog.path.name} read from {folder}")

    def save_index(self, path: str | Path) -> None:
        """Copy the open index to ``path`` in the background (the copy appears complete or not at all)."""
        if self.searcher is None:
            self.show_message("no index is open", error=True)
            return
        src, dst = Path(self.searcher.catalog.path), Path(path)
        if dst.resolve() == src.resolve():
            self.show_message(f"{dst} is the open index already")
            return

        def work():
            copy_index(src, dst)

        self._background(work, lambda err: self.show_message(
            f"cannot save {dst}: {err}" if err else f"saved {dst}", error=bool(err)))

    def _background(self, fn, done) -> None:
        def run():
            try:
                fn()
            except (OSError, ObjsearchError) as exc:
                self.bridge.task_done.emit(done, str(exc))
            else:
                self.bridge.task_done.emit(done, None)

        threading.Thread(target=run, daemon=True).start()

    # ---------------------------------------------------------------------------------------------- analysis
    def analyze_folder(self, folder: str | Path, output: str | Path) -> bool:
        """Analyze ``folder`` into ``output`` in a background thread (progress bar, Cancel), then open it. A
        cancelled analysis keeps what it finished (the index says it is unfinished), and analyzing the same folder
        into the same file again resumes."""
        if self._analysis is not None:
            self.show_message("an analysis is already running", error=True)
            return False
        folder, output = Path(folder), Path(output)
        if self.searcher is not None and output.resolve() == Path(self.searcher.catalog.path).resolve():
            self.show_message(f"{output.name} is the open index: choose another file", error=True)
            return False
        weights = self.weights or (str(self.searcher.detector.weights_path) if self.searcher else None)
        try:
            cfg = load_config(None, weights=weights, **({"device": self.device} if self.device else {}),
                              **({"runtime": self.runtime} if self.runtime else {}))
        except ObjsearchError as exc:
            self.show_message(str(exc), error=True)
            return False
        cancel = threading.Event()

        def run():
            try:
                summary = analyze(folder, output, cfg, progress=self.bridge.analyze_progress.emit, cancel=cancel)
            except JobCancelled:
                self.bridge.analyze_done.emit(None, "cancelled")
            except ObjsearchError as exc:
                self.bridge.analyze_done.emit(None, str(exc))
            except Exception as exc:  # a bug: keep the app and the open index alive, log the traceback
                LOGGER.exception("analysis of %s failed", folder)
                self.bridge.analyze_done.emit(None, f"{type(exc).__name__}: {exc}")
            else:
                self.bridge.analyze_done.emit(summary, None)

        thread = threading.Thread(target=run, daemon=True, name="analyze")
        self._analysis = (thread, cancel, folder, output)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.analyze_button.setEnabled(False)
        self.show_message(f"analyzing {folder} → {output}")
        thread.start()
        return True

    def cancel_analysis(self) -> None:
        if self._analysis is not None:
            self._analysis[1].set()
            self.cancel_button.setEnabled(False)

    def _analyze_progress(self, done: int, total: int, n_objects: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(f"%v / %m images, {n_objects:,} objects")

    def _analyze_done(self, summary, error) -> None:
        _, _, folder, output = self._analysis
        self._analysis = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.cancel_button.setEnabled(True)
        self.analyze_button.setEnabled(True)
        if error == "cancelled":
            self.show_message(f"analysis cancelled; {output} holds what was finished. Analyzing {folder.name} into "
                              f"the same file again resumes where it stopped.")
        elif error:
            self.show_message(f"analysis failed: {error}", error=True)
        else:
            skipped = f", {len(summary.skipped)} unreadable files skipped" if summary.skipped else ""
            if self.open_index(output):
                self.show_message(f"analyzed {summary.n_images} images, {summary.n_objects:,} objects in "
                                  f"{summary.seconds:.1f} s{skipped} → {output}")

    # ------------------------------------------------------------------------------------------------ sources
    def _update_source_controls(self) -> None:
        video = self.source_kind == "video" and isinstance(self.source, VideoFileSource)
        for w in (self.play_button, self.seek_slider, self.position_label):
            w.setEnabled(video)
        self.next_button.setEnabled(self.source_kind == "random")

    def select_source(self, kind: str) -> None:
        """Switch the query source (``random``, ``image``, ``webcam``, ``video``, ``screen``), as the toggle does."""
        if kind not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {kind!r}")
        self.source_buttons.button(SOURCES.index(kind)).setChecked(True)
        if kind == "random":
            self.query_random()
        elif kind == "image":
            self._choose_image()
        elif kind == "webcam":
            self.start_webcam(self.camera_spin.value())
        elif kind == "video":
            if isinstance(self.source, VideoFileSource):
                self.start_video(self.source.path)
            else:
                self._choose_video()
        elif kind == "screen":
            self.start_screen()

    def stop_source(self) -> None:
        """Stop a continuous source and release its device or file."""
        if self.capture is not None:
            self.capture.stop()
            self.capture.join(2.0)
            self.capture = None
        if self.source is not None:
            self.source.close()
            self.source = None
        self.slot.advance()  # a result of the old source still in flight is dropped

    def _set_kind(self, kind: str) -> None:
        self.source_kind = kind
        self.source_buttons.button(SOURCES.index(kind)).setChecked(True)
        self._update_source_controls()

    def _submit_still(self, source) -> bool:
        if self.searcher is None:
            self.show_message("open an index first", error=True)
            return False
        try:
            frame = source.read()
        except ObjsearchError as exc:
            self.show_message(str(exc), error=True)
            return False
        self._still = frame
        self.slot.put(frame)
        return True

    def query_random(self) -> bool:
        """Query a random image of the index."""
        self.stop_source()
        self._set_kind("random")
        if self.searcher is None:
            self.show_message("open an index first", error=True)
            return False
        if self._random is None:  # one list of paths per index and image folder, not per click
            try:
                self._random = random_source(self.searcher)
            except SourceError as exc:
                self.show_message(str(exc), error=True)
                return False
        return self._submit_still(self._random)

    def query_image(self, path: str | Path, image_id: int | None = None) -> bool:
        """Query an image file (an indexed image leaves its own objects out of the results)."""
        self.stop_source()
        self._set_kind("image")
        if image_id is None:
            image_id = self.searcher.media_id_of(path) if self.searcher is not None else -1
        return self._submit_still(ImageFileSource(path, image_id))

    def query_object(self, object_id: int) -> bool:
        """Make the image holding an indexed object the new query (a click on a neighbour)."""
        if self.searcher is None:
            return False
        row = int(self.searcher.catalog.object_rows([object_id])[0])
        if row < 0:
            return False
        return self.query_media(int(self.searcher.catalog.object_media_id[row]))

    def _start_continuous(self, kind: str, make_source, realtime: bool = True) -> bool:
        self.stop_source()
        self._set_kind(kind)
        self._still = None
        if self.searcher is None:
            self.show_message("open an index first", error=True)
            return False
        try:
            self.source = make_source()
        except ObjsearchError as exc:
            self.show_message(str(exc), error=True)
            self._update_source_controls()
            return False
        self.slot.reopen()
        name = self.source.name
        self.capture = CaptureThread(
            self.source, self.slot, realtime=realtime,
            on_end=lambda: self.bridge.source_stopped.emit(f"{name} ended", False),
            on_error=lambda m: self.bridge.source_stopped.emit(m, True))
        self.capture.start()
        self._update_source_controls()
        self.play_button.setChecked(False)
        self.show_message(f"live: {name}")
        return True

    def start_webcam(self, device: int = 0) -> bool:
        """Search a camera's frames continuously."""
        self.camera_spin.setValue(int(device))
        return self._start_continuous("webcam", lambda: open_source(f"webcam:{int(device)}",
                                                                      camera_opener=self.camera_opener))

    def start_video(self, path: str | Path, realtime: bool = True, start: int = 0) -> bool:
        """Play a video file from frame ``start`` and search its frames (at the file's frame rate;
        ``realtime=False``: every frame, as fast as the search goes)."""
        def make():
            source = VideoFileSource(path)
            if start:
                source.seek(start)
            return source

        ok = self._start_continuous("video", make, realtime)
        if ok:
            self.seek_slider.setRange(0, max(0, self.source.n_frames - 1))
            self.seek_slider.setValue(0)
        return ok

    def start_screen(self, region: tuple[int, int, int, int] | None = None) -> bool:
        """Grab a screen region continuously; None: the region typed in the controls (empty: the first monitor)."""
        if region is None:  # the typed region is a spec's argument: a malformed one is a message, the source goes on
            try:
                region = parse_source(f"screen:{self.region_edit.text().strip()}")[1]
            except SourceError as exc:
                self.show_message(str(exc), error=True)
                return False
        else:
            self.region_edit.setText(",".join(str(v) for v in region))
        return self._start_continuous("screen", lambda: ScreenSource(region, grabber=self.screen_grabber))

    def _source_stopped(self, message: str, error: bool) -> None:
        if self.capture is not None:
            self.capture.join(1.0)  # it reported its end and is returning
            if not self.capture.is_alive():
                self.capture = None
        self.play_button.blockSignals(True)
        self.play_button.setChecked(True)
        self.play_button.setText("Play")
        self.play_button.blockSignals(False)
        self.show_message(message, error=error)

    def _toggle_pause(self, paused: bool) -> None:
        self.play_button.setText("Play" if paused else "Pause")
        if not isinstance(self.source, VideoFileSource):
            return
        if self.capture is None:  # the video ended: play again from where the slider is
            if not paused:
                path, position = self.source.path, self.seek_slider.value()
                if self.start_video(path):
                    self.source.seek(0 if position >= self.source.n_frames - 1 else position)
            return
        self.capture.pause(paused)
        if paused:
            self.slot.advance()  # Pause means no new result: the frame being searched now is dropped

    def _seek(self, frame: int) -> None:
        if isinstance(self.source, VideoFileSource):
            self.slot.advance()
            self.source.seek(frame)

    # ------------------------------------------------------------------------------------------------ settings
    def _requery(self) -> None:
        """After a search setting changed: drop results made with the old one, search a still frame again."""
        self.slot.advance()
        if self._still is not None and self.capture is None and self.searcher is not None:
            self.slot.put(self._still)

    def _set_k(self, k: int) -> None:
        self.settings.k = int(k)
        self.results_label.setText(str(k))
        self._requery()

    def _set_conf(self, value: int) -> None:
        self.settings.conf = value / 100
        self.conf_label.setText(f"{value / 100:.2f}")
        self._requery()

    def _set_mode(self, text: str) -> None:
        """objects: each object's neighbours; whole image: one row of similar images."""
        self.settings.mode = "image" if text == "whole image" else "objects"
        self.same_class_box.setEnabled(self.settings.mode == "objects")
        self._requery()

    def _neighbor_clicked(self, tile_id: int) -> None:
        """A click on a tile of the shown result: an object's neighbour, or a whole-image neighbour (a media id)."""
        if self.last_result is not None and self.last_result.image_mode:
            self.query_media(tile_id)
        else:
            self.query_object(tile_id)

    def query_media(self, media_id: int) -> bool:
        """Make an indexed media item the new query (a click on a neighbour): its image, or its frame decoded from
        its video."""
        if self.searcher is None:
            return False
        try:
            path = self.searcher.media_path(media_id)
        except UntrustedRootError as exc:
            self.show_message(str(exc), error=True)
            return False
        if path is None:
            self.show_message(f"the indexed path {printable(self.searcher.media(media_id).path)} leaves the image "
                              f"folder; not opened", error=True)
            return False
        media = self.searcher.media(media_id)
        if media.is_video_frame:  # that frame, decoded from its video, is the new query
            self.stop_source()
            self._set_kind("image")
            return self._submit_still(VideoFrameSource(path, media.frame_index, media.timestamp_s, media_id))
        return self.query_image(path, media_id)

    def _set_same_class(self, on: bool) -> None:
        self.settings.same_class = bool(on)
        self._requery()

    def _set_dims(self, text: str) -> None:
        if text:
            self.settings.dims = int(text)
            self._requery()

    def _set_header_height(self, height: int) -> None:
        self._header_height = int(height)
        self.header.setFixedHeight(int(height))

    def _set_thumb_height(self, height: int) -> None:
        self.thumb_height = int(height)
        if self.last_result is not None:
            self.last_result.extra = self._compose(self.last_result)
            self._paint_rows(self.last_result)

    # ------------------------------------------------------------------------------------------------ display
    def _compose(self, result: LiveResult) -> ComposedResult:
        """Runs in the pipeline thread (``objsearch.gui.rows.compose_live``)."""
        return compose_live(result, thumb_height=self.thumb_height, header_height=self._header_height)

    def _paint_rows(self, result: LiveResult) -> None:
        composed = result.extra
        self.rows.set_picture(composed.picture, composed.tiles, composed.tips)

    def _show_result(self, result: LiveResult) -> None:
        if result.generation != self.slot.generation:  # queued before a source change, pause, seek or new settings
            return
        t0 = time.perf_counter()
        boxed = result.extra.boxed
        self.frame_item.setImage(boxed, autoLevels=False, levels=(0, 255))
        if boxed.shape != self._frame_shape:
            self._frame_shape = boxed.shape
            self.header_view.autoRange(padding=0)
        self._paint_rows(result)
        self.last_result = result
        self.n_results_shown += 1
        if isinstance(self.source, VideoFileSource) and not self.seek_slider.isSliderDown():
            self.seek_slider.setValue(result.frame.index)
            self.position_label.setText(f"{result.frame.media.timestamp_s:.1f} s / frame {result.frame.index}")
        paint = (time.perf_counter() - t0) * 1e3
        t = result.timings_ms
        display = t.get("thumbnails", 0) + t.get("compose", 0) + paint
        result.timings_ms["display"] = display
        live = self.capture is not None
        rate = f"{result.fps:.1f} fps · " if live else ""
        dropped = f" · dropped {result.dropped}" if live else ""
        if not result.image_mode:
            what = f"{len(result.result.detections)} objects · detect {t.get('detect', 0):.1f} · features " \
                   f"{t.get('features', 0):.1f}"
        else:
            what = f"{len(result.result.neighbors)} images · detect {t.get('detect', 0):.1f} · image vector " \
                   f"{t.get('image_feature', 0):.1f}"
        self.stage_label.setText(f"{rate}{what} · search {t.get('search', 0):.1f} · display {display:.1f} ms{dropped}")
        if not live:
            self.statusBar().showMessage(result.frame.name, 10000)

    # -------------------------------------------------------------------------------------------- file dialogs
    def _choose_image(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Query image", "", "Images (" + " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES)) + ");;All files (*)")
        if path:
            self.query_image(path)

    def _choose_video(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Video file", "", "Videos (" + " ".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES)) + ");;All files (*)")
        if path:
            self.start_video(path)

    def _choose_index(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open index", "", "objsearch index (*.h5);;All files (*)")
        if path:
            self.open_index(path)

    def _choose_save(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save index as", "", "objsearch index (*.h5)")
        if path:
            self.save_index(path)

    def _choose_base_dir(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder the index's images are in")
        if folder:
            self.set_base_dir(folder)

    def _choose_analyze(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder of images to analyze")
        if not folder:
            return
        output, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Write the index to", str(Path(folder).with_suffix(".h5")),
                                                          "objsearch index (*.h5)")
        if output:
            self.analyze_folder(folder, output)

    # ---------------------------------------------------------------------------------------------- drag & drop
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
            break

    def open_path(self, path: str | Path) -> None:
        """What dropping a file does: an index opens, a video plays, an image is queried."""
        path = Path(path)
        kind = path_kind(path)
        if kind == "index":
            self.open_index(path)
        elif kind == "video":
            self.start_video(path)
        elif kind == "image":
            self.query_image(path)
        else:
            self.show_message(f"{path.name}: not an image, a video or an index file", error=True)

    # ---------------------------------------------------------------------------------------------------- close
    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop capture, search and analysis threads and close the index."""
        self.stop_source()
        if self._analysis is not None:
            self._analysis[1].set()
            self._analysis[0].join(30)
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None


def run_app(index=None, *, base_dir=None, weights=None, device=None, source: str | None = None,
            **store_options) -> int:
    """Start the Qt application with a ``MainWindow`` and run until it closes; returns the exit status.

    ``source`` starts a query source (``objsearch.sources.parse_source``): ``random``, ``webcam[:N]``,
    ``screen[:x,y,w,h]``, or a path to an image or video file. ``store_options`` (``backend``: a name or an
    ``objsearch.vectors.registry.BackendChoice`` with its options; ``runtime``) choose the vector store and the
    detector runtime, as for ``Engine``.

    Raises
    ------
    SourceError
        For a malformed source (before any window opens).
    """
    kind, arg = parse_source(source) if source else (None, None)
    from objsearch.gui.display import drop_opencv_plugin_path

    drop_opencv_plugin_path()  # cv2, imported by now, points Qt at its own Qt 5 plugins
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["objsearch"])
    window = MainWindow(index, base_dir=base_dir, weights=weights, device=device, **store_options)
    window.show()
    if kind == "random":
        window.query_random()
    elif kind == "webcam":
        window.start_webcam(arg)
    elif kind == "screen":
        window.start_screen(arg)
    elif kind == "file":
        window.open_path(arg)
    return app.exec()
