"""The desktop app, driven with pytest-qt on Qt's offscreen platform: real index, real detector, real frames of
../shared/data/video; the webcam and the screen grab get stand-ins that yield real pixels."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import threading
import time
from pathlib import Path

import cv2
import pytest

from testdata import BUS, COCO128_IMAGES, DATA, WEIGHTS, WEIGHTS_11, coco_images, copy_images, run_cli

pytestmark = pytest.mark.gui

VIDEO = DATA / "video" / "one-by-one-person-detection.mp4"
WAIT_MS = 20000


@pytest.fixture(scope="module")
def window(qapp, coco_index):
    """One window over the coco128 index for the module (the detector loads once)."""
    from objsearch.gui.window import MainWindow

    w = MainWindow(coco_index, weights=str(WEIGHTS))
    w.show()
    yield w
    w.shutdown()
    w.close()


def wait_result(qtbot, window, after: int | None = None):
    """Wait until the window shows a result newer than ``after`` (default: the current count); return it."""
    n = window.n_results_shown if after is None else after
    qtbot.waitUntil(lambda: window.n_results_shown > n, timeout=WAIT_MS)
    return window.last_result


def settle(qtbot, window):
    """Let queued results arrive, then return the current count."""
    window.stop_source()
    qtbot.wait(300)
    return window.n_results_shown


def rows_of(window) -> dict[int, list]:
    rows: dict[int, list] = {}
    for tile in window.rows.tiles:
        rows.setdefault(tile.row, []).append(tile)
    return rows


def test_window_without_index_says_what_to_do(qtbot):
    from objsearch.gui.window import MainWindow

    w = MainWindow(None, weights=str(WEIGHTS))
    qtbot.addWidget(w)
    assert "Open an index" in w.message
    assert w.searcher is None
    assert not w.query_random()
    assert "open an index first" in w.message
    w.shutdown()


def test_random_query_shows_one_row_per_detection_with_k_thumbnails(qtbot, window):
    n = settle(qtbot, window)
    window.results_slider.setValue(16)
    qtbot.wait(200)
    n = settle(qtbot, window)
    assert window.query_random()
    result = wait_result(qtbot, window, n)
    objects = result.result.to_dict()["objects"]
    assert window.source_kind == "random" and result.frame.image_id >= 0
    rows = rows_of(window)
    assert len(rows) == len(objects) > 0
    for r, tiles in rows.items():
        assert [t.column for t in tiles] == list(range(-1, 16))  # the query crop, then 16 neighbours
        assert [t.object_id for t in tiles[1:]] == [nb["object_id"] for nb in objects[r]["neighbors"]]
    # its own objects are left out, every neighbour has a thumbnail, hover text names the image
    own = window.searcher.media(result.frame.image_id).path
    assert all(nb["path"] != own for obj in objects for nb in obj["neighbors"])
    assert set(result.thumbnails) == {nb["object_id"] for obj in objects for nb in obj["neighbors"]}
    nb0 = objects[0]["neighbors"][0]
    assert nb0["path"] in window.rows.tooltips[(0, 0)] and f"{nb0['distance']:.3f}" in window.rows.tooltips[(0, 0)]
    # the header shows the frame with its boxes drawn
    assert window.frame_item.image.shape == result.frame.image.shape
    assert "detect" in window.stage_label.text() and "search" in window.stage_label.text()


def test_results_slider_changes_the_thumbnails(qtbot, window):
    n = settle(qtbot, window)
    window.query_image(BUS)
    wait_result(qtbot, window, n)
    width_16 = window.rows.picture.shape[1]
    n = window.n_results_shown
    window.results_slider.setValue(5)
    result = wait_result(qtbot, window, n)
    assert result.frame.name == str(BUS)
    assert all(len(tiles) == 1 + 5 for tiles in rows_of(window).values())
    assert window.rows.picture.shape[1] < width_16
    window.results_slider.setValue(16)
    wait_result(qtbot, window, n + 1)


def test_thumb_and_header_height_sliders_resize_without_searching_again(qtbot, window):
    n = settle(qtbot, window)
    window.query_image(BUS)
    wait_result(qtbot, window, n)
    n = window.n_results_shown
    height = window.rows.picture.shape[0]
    n_rows = len(rows_of(window))
    window.thumb_slider.setValue(64)
    from objsearch.render import NOTE_BAND

    found = window.last_result.result  # a row with a note and neighbours has the note's line above it
    bands = sum(NOTE_BAND for r in range(n_rows) if found.notes[r] and found.neighbors[r])
    assert window.rows.picture.shape[0] == n_rows * (64 + 16 + 4) - 4 + bands < height
    assert all(t.width == 64 for t in window.rows.tiles)
    window.header_slider.setValue(200)
    assert window.header.height() == 200
    qtbot.wait(200)
    assert window.n_results_shown == n  # display only: no new search
    window.thumb_slider.setValue(96)


def test_clicking_a_neighbour_makes_its_image_the_query(qtbot, window):
    from PyQt6 import QtCore

    n = settle(qtbot, window)
    window.query_image(BUS)
    wait_result(qtbot, window, n)
    tile = next(t for t in window.rows.tiles if t.row == 0 and t.column == 2)
    media_id = window.searcher.catalog.object_media_id[window.searcher.catalog.object_rows([tile.object_id])[0]]
    expected = window.searcher.media_path(media_id)
    n = window.n_results_shown
    qtbot.mouseClick(window.rows, QtCore.Qt.MouseButton.LeftButton,
                     pos=QtCore.QPoint(tile.x + tile.width // 2, tile.y + tile.height // 2))
    result = wait_result(qtbot, window, n)
    assert Path(result.frame.name) == expected
    assert window.source_kind == "image"
    assert result.frame.image_id == media_id


def test_same_class_and_confidence_controls_change_the_search(qtbot, window):
    n = settle(qtbot, window)
    window.query_image(BUS)
    all_classes = wait_result(qtbot, window, n).result.to_dict()
    window.same_class_box.setChecked(True)
    same = wait_result(qtbot, window, n + 1).result.to_dict()
    for obj in same["objects"]:
        assert {nb["class_id"] for nb in obj["neighbors"]} == {obj["class_id"]}
    window.same_class_box.setChecked(False)
    wait_result(qtbot, window, n + 2)
    window.conf_slider.setValue(80)
    strict = wait_result(qtbot, window, n + 3).result.to_dict()
    assert all(o["confidence"] >= 0.8 for o in strict["objects"])
    assert len(strict["objects"]) < len(all_classes["objects"])
    window.conf_slider.setValue(25)
    wait_result(qtbot, window, n + 4)


def test_video_source_searches_real_frames_and_pauses(qtbot, window):
    n = settle(qtbot, window)
    assert window.start_video(VIDEO, realtime=False)
    qtbot.waitUntil(lambda: window.n_results_shown >= n + 6, timeout=WAIT_MS)
    result = window.last_result
    assert result.frame.image.shape == (432, 768, 3)
    assert result.frame.index >= 5 and result.result.to_dict()["frame"] == result.frame.index
    assert "fps" in window.stage_label.text()
    window.play_button.setChecked(True)  # pause
    qtbot.wait(400)
    paused_at = window.n_results_shown
    qtbot.wait(600)
    assert window.n_results_shown == paused_at
    window.source.seek(900)  # people walk through this part of the clip
    window.play_button.setChecked(False)
    qtbot.waitUntil(lambda: window.last_result.frame.index >= 900, timeout=WAIT_MS)
    window.stop_source()


class HeldSearch:
    """Holds the pipeline's next search (its compose step) until ``release``, so that a result is in flight when the
    test pauses or switches the source. Later searches pass straight through."""

    def __init__(self, window):
        self.window, self.compose = window, window.pipeline.compose
        self.entered, self.released, self.frames = threading.Event(), threading.Event(), []

    def __enter__(self):
        def held(result):
            if not self.entered.is_set():
                self.frames.append(result.frame)
                self.entered.set()
                self.released.wait(WAIT_MS / 1000)
            return self.compose(result)

        self.window.pipeline.compose = held
        return self

    def release(self):
        self.released.set()

    def __exit__(self, *exc):
        self.released.set()
        self.window.pipeline.compose = self.compose


def test_pause_drops_the_result_in_flight(qtbot, window):
    n = settle(qtbot, window)
    assert window.start_video(VIDEO, realtime=False)
    qtbot.waitUntil(lambda: window.n_results_shown >= n + 2, timeout=WAIT_MS)
    with HeldSearch(window) as held:
        assert held.entered.wait(WAIT_MS / 1000)  # a frame is being searched
        window.play_button.setChecked(True)  # pause
        paused_at = window.n_results_shown
        held.release()
        qtbot.wait(800)
        assert window.n_results_shown == paused_at
        assert window.pipeline.n_stale >= 1
    window.stop_source()


def test_a_new_source_drops_the_old_sources_result_in_flight(qtbot, window):
    n = settle(qtbot, window)
    assert window.start_video(VIDEO, realtime=False)
    qtbot.waitUntil(lambda: window.n_results_shown >= n + 1, timeout=WAIT_MS)
    with HeldSearch(window) as held:
        assert held.entered.wait(WAIT_MS / 1000)  # a video frame is being searched
        n = window.n_results_shown
        assert window.query_image(BUS)
        held.release()
        assert wait_result(qtbot, window, n).frame.name == str(BUS)
        qtbot.wait(500)
        assert window.n_results_shown == n + 1 and window.last_result.frame.name == str(BUS)
        assert held.frames[0].name == str(VIDEO)


def test_video_that_ends_or_cannot_be_decoded_gives_a_message(qtbot, window, tmp_path):
    cap = cv2.VideoCapture(str(VIDEO))
    short = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"mp4v"), 10, (768, 432))
    for _ in range(4):
        writer.write(cap.read()[1])
    writer.release()
    settle(qtbot, window)
    assert window.start_video(short, realtime=False)
    qtbot.waitUntil(lambda: "ended" in window.message, timeout=WAIT_MS)
    assert window.play_button.text() == "Play"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    assert not window.start_video(broken)
    assert "cannot open video" in window.message and "broken.mp4" in window.message
    assert window.searcher is not None


def test_webcam_stand_in_yields_results_and_a_missing_camera_says_so(qtbot, window):
    n = settle(qtbot, window)
    window.camera_opener = lambda device: cv2.VideoCapture(str(VIDEO))
    try:
        assert window.start_webcam(0)
        qtbot.waitUntil(lambda: window.n_results_shown >= n + 3, timeout=WAIT_MS)
        assert window.last_result.frame.name == "webcam 0"
        assert window.source_kind == "webcam"

        class NoCamera:
            def isOpened(self):
                return False

            def release(self):
                pass

        window.camera_opener = lambda device: NoCamera()
        assert not window.start_webcam(3)
        assert "no camera at device index 3" in window.message
    finally:
        window.camera_opener = None
        window.stop_source()


def test_screen_grab_stand_in_and_a_failing_grab(qtbot, window):
    bus = cv2.imread(str(BUS))
    n = settle(qtbot, window)
    window.screen_grabber = lambda: bus
    try:
        assert window.start_screen((0, 0, bus.shape[1], bus.shape[0]))
        result = wait_result(qtbot, window, n)
        assert result.frame.name.startswith("screen")
        assert "bus" in {o["label"] for o in result.result.to_dict()["objects"]}

        def fail():
            raise OSError("cannot open display")

        window.screen_grabber = fail
        window.start_screen()
        qtbot.waitUntil(lambda: "screen grab failed" in window.message, timeout=WAIT_MS)
        assert window.start_screen((0, 0, 0, 10)) is False
        assert "positive size" in window.message
    finally:
        window.screen_grabber = None
        window.stop_source()


def test_unreadable_image_and_broken_index_keep_the_open_index(qtbot, window, tmp_path):
    settle(qtbot, window)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(300))
    assert not window.query_image(corrupt)
    assert "not a decodable image" in window.message
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"garbage" * 50)
    before = window.searcher
    assert not window.open_index(broken)
    assert "cannot open broken.h5" in window.message
    assert window.searcher is before
    n = window.n_results_shown
    window.open_path(BUS)  # as a dropped file
    assert wait_result(qtbot, window, n).frame.name == str(BUS)


def test_index_built_with_other_weights_is_refused_with_a_message(qtbot, coco_index):
    from objsearch.gui.window import MainWindow

    w = MainWindow(coco_index, weights=str(WEIGHTS_11))
    qtbot.addWidget(w)
    try:
        assert w.searcher is None
        assert "built with weights" in w.message
    finally:
        w.shutdown()


def test_moved_images_ask_for_a_base_directory(qtbot, coco_index, tmp_path):
    from objsearch.gui.window import MainWindow

    w = MainWindow(coco_index, weights=str(WEIGHTS), base_dir=tmp_path)
    qtbot.addWidget(w)
    try:
        assert "not under" in w.message and "Image folder" in w.message
        w.set_base_dir(COCO128_IMAGES)
        assert "read from" in w.message
        n = settle(qtbot, w)
        assert w.query_random()
        assert wait_result(qtbot, w, n).frame.image_id >= 0
    finally:
        w.shutdown()


def test_analyze_worker_reports_progress_can_be_cancelled_and_resumes(qtbot, window, tmp_path):
    from objsearch.catalog import Catalog

    folder = copy_images(coco_images(24), tmp_path / "imgs")
    out = tmp_path / "mine.h5"
    progress = []
    window.bridge.analyze_progress.connect(lambda d, t, o: progress.append((d, t)))
    assert window.analyze_folder(folder, out)
    qtbot.waitUntil(lambda: len(progress) >= 2, timeout=WAIT_MS)
    window.cancel_analysis()
    qtbot.waitUntil(lambda: window._analysis is None, timeout=WAIT_MS)
    assert "cancelled" in window.message
    with Catalog(out) as partial:  # what was finished is in the index, which says it is unfinished
        assert partial.state == "analyzing"
        done_before = progress[-1][0]
        assert len(partial.media_path) == done_before
    assert 2 <= done_before < 24 and progress[-1][1] == 24
    # again: resumes from the journal, finishes, and the window switches to the new index
    progress.clear()
    assert window.analyze_folder(folder, out)
    qtbot.waitUntil(lambda: window._analysis is None, timeout=60000)
    assert "analyzed 24 images" in window.message
    assert progress[0][0] == done_before + 1  # resumed: the journal kept every image reported before the cancel
    assert not out.with_name(out.name + ".journal").exists()
    assert Path(window.searcher.catalog.path) == out
    with Catalog(out) as f:
        assert len(f.media_path) == 24 and f.state == "ready"


def test_save_index_as_copies_a_complete_file(qtbot, window, tmp_path):
    from objsearch.catalog import Catalog

    target = tmp_path / "copy.h5"
    window.save_index(target)
    qtbot.waitUntil(lambda: "saved" in window.message or "cannot save" in window.message, timeout=WAIT_MS)
    assert window.message == f"saved {target}"
    with Catalog(target) as f:
        assert len(f.class_id) == len(window.searcher.catalog.class_id)


def test_app_command_without_a_display_is_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = run_cli("app", env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no display") and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (Debian package xvfb) for a virtual display")
def test_screen_source_grabs_a_real_virtual_display(tmp_path):
    import subprocess
    import sys

    display = ":87"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        code = ("from objsearch.sources import ScreenSource; f = ScreenSource((10, 20, 320, 240)).read(); "
                "print(f.image.shape, f.image.dtype, f.name)")
        env = {**os.environ, "DISPLAY": display}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "(240, 320, 3) uint8 screen 320x240+10+20"
        # a region outside the screen is a message, not a crash
        code = "from objsearch.sources import ScreenSource; ScreenSource((600, 400, 320, 240)).read()"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1 and "SourceError: screen grab failed" in proc.stderr
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def free_display() -> str:
    """A display number no X server holds (no lock file, no socket)."""
    for n in range(90, 200):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return f":{n}"
    pytest.skip("no free X display number")


def opencv_plugin_path() -> str:
    import importlib.util

    return str(Path(importlib.util.find_spec("cv2").origin).parent / "qt" / "plugins")


def xcb_plugin_missing_libraries() -> list[str]:
    """What ``ldd`` finds missing for PyQt6's own xcb plugin on this machine ([] when the README's apt packages, or
    a desktop's, are installed)."""
    from objsearch.gui.display import missing_libraries, platform_plugin

    plugin = platform_plugin("xcb", {})
    return missing_libraries(plugin) if plugin is not None else []


def test_app_command_with_no_x_server_is_one_line_not_an_abort():
    """The one line this machine gets: no X server answers, or, where the xcb plugin's system libraries are missing
    (a fresh server without the optional apt packages), the libraries and their packages (Qt fails on those first)."""
    from objsearch.gui.display import debian_package

    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(DISPLAY=free_display(), QT_QPA_PLATFORM_PLUGIN_PATH=opencv_plugin_path())
    proc = run_cli("app", env=env, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # an exit status, not a signal (Qt's abort: -6)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    missing = xcb_plugin_missing_libraries()
    if missing:
        packages = " ".join(dict.fromkeys(debian_package(m) for m in missing))
        assert lines[0] == (f"error: the Qt xcb platform plugin cannot load: missing {', '.join(missing)} (on "
                            f"Debian/Ubuntu: sudo apt-get install {packages})")
    else:
        assert lines[0] == (f"error: cannot open the display {env['DISPLAY']}: no X server answers there (start the "
                            f"app in a desktop session, or under xvfb-run)")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_app_command_with_an_unknown_platform_is_one_line():
    env = {**os.environ, "QT_QPA_PLATFORM": "nosuchplatform"}
    proc = run_cli("app", env=env, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: no Qt platform plugin "nosuchplatform"'), proc.stderr
    assert "offscreen" in lines[0]


def test_opencv_plugin_path_is_dropped_and_others_are_kept():
    from objsearch.gui.display import drop_opencv_plugin_path

    env = {"QT_QPA_PLATFORM_PLUGIN_PATH": opencv_plugin_path(), "QT_QPA_FONTDIR": opencv_plugin_path() + "/../fonts"}
    assert drop_opencv_plugin_path(env) and env == {}
    env = {"QT_QPA_PLATFORM_PLUGIN_PATH": "/opt/qt/plugins/platforms"}
    assert not drop_opencv_plugin_path(env) and env == {"QT_QPA_PLATFORM_PLUGIN_PATH": "/opt/qt/plugins/platforms"}


def test_a_platform_plugin_missing_a_library_is_named_with_its_package(tmp_path):
    """PyQt6's xcb plugin with its libQt6XcbQpa patched to need libxcb-icccX.so.4 (ldd reports it missing), and
    the lines Qt printed on a machine without libxcb-icccm4."""
    import importlib.util

    from objsearch.gui.display import debian_package, explain_qt_failure, missing_libraries

    qt = Path(importlib.util.find_spec("PyQt6").origin).parent / "Qt6"
    (tmp_path / "plugins" / "platforms").mkdir(parents=True)
    (tmp_path / "lib").mkdir()
    for lib in (qt / "lib").iterdir():
        if lib.name != "libQt6XcbQpa.so.6":
            (tmp_path / "lib" / lib.name).symlink_to(lib)
    qpa = (qt / "lib" / "libQt6XcbQpa.so.6").read_bytes()
    assert b"libxcb-icccm.so.4" in qpa
    (tmp_path / "lib" / "libQt6XcbQpa.so.6").write_bytes(qpa.replace(b"libxcb-icccm.so.4", b"libxcb-icccX.so.4"))
    plugin = tmp_path / "plugins" / "platforms" / "libqxcb.so"
    shutil.copy(qt / "plugins" / "platforms" / "libqxcb.so", plugin)
    if shutil.which("ldd") is None:
        pytest.skip("needs ldd")
    # on a machine without the optional apt packages ldd also misses what the unpatched plugin misses
    before = xcb_plugin_missing_libraries()
    missing = missing_libraries(plugin)
    assert "libxcb-icccX.so.4" in missing and set(missing) - set(before) == {"libxcb-icccX.so.4"}, (missing, before)
    qt_output = ('qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform '
                 'plugin.\nqt.qpa.plugin: Could not load the Qt platform plugin "xcb" in "" even though it was found.\n'
                 'This application failed to start because no Qt platform plugin could be initialized.\n')
    line = explain_qt_failure(qt_output, {"QT_QPA_PLATFORM_PLUGIN_PATH": str(plugin.parent)})
    packages = " ".join(dict.fromkeys(debian_package(m) for m in missing))
    assert line == (f"the Qt xcb platform plugin cannot load: missing {', '.join(missing)} (on Debian/Ubuntu: sudo "
                    f"apt-get install {packages})")
    assert "libxcb-icccx4" in packages.split()
    assert [debian_package(n) for n in ("libxcb-icccm.so.4", "libxkbcommon-x11.so.0", "libEGL.so.1",
                                        "libdbus-1.so.3", "libxcb-render-util.so.0")] == [
        "libxcb-icccm4", "libxkbcommon-x11-0", "libegl1", "libdbus-1-3", "libxcb-render-util0"]


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (Debian package xvfb) for a virtual display")
def test_app_command_starts_on_a_real_virtual_display(tmp_path, small_index):
    """The real app on a real X server with an index the test made: it opens it and stays up. (Not the index found
    without -i: that one is whatever `objsearch demo` left in the checkout, if anything.)"""
    import subprocess
    import sys

    from objsearch.gui.display import debian_package

    missing = xcb_plugin_missing_libraries()
    if missing:
        pytest.skip(f"PyQt6's xcb platform plugin cannot load here: missing {', '.join(missing)} (apt-get install "
                    f"{' '.join(dict.fromkeys(debian_package(m) for m in missing))})")
    display = free_display()
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = None
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
            assert xvfb.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.1)
        env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
        env.update(DISPLAY=display, QT_QPA_PLATFORM_PLUGIN_PATH=opencv_plugin_path())  # as cv2 leaves it
        log = tmp_path / "stderr.txt"
        with open(log, "w") as err:
            app = subprocess.Popen([sys.executable, "-m", "objsearch", "-v", "app", "-i", str(small_index[0]),
                                    "--weights", str(WEIGHTS)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                   stderr=err)
        deadline = time.monotonic() + 120
        while f"opened {small_index[0]}" not in log.read_text():  # the window was built (logged with -v)
            assert app.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(3.0)
        assert app.poll() is None, log.read_text()  # still up
        app.terminate()  # by PID
        app.wait(30)
        assert "error:" not in log.read_text() and "Traceback" not in log.read_text()
    finally:
        if app is not None and app.poll() is None:
            app.kill()
            app.wait(10)
        xvfb.terminate()
        xvfb.wait(10)


def test_app_command_with_a_missing_index_is_one_line(tmp_path):
    proc = run_cli("app", "-i", tmp_path / "missing.h5", timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"error: index file {tmp_path / 'missing.h5'} does not exist"


def test_dropping_an_image_file_on_the_window_queries_it(qtbot, window):
    from PyQt6 import QtCore, QtGui

    n = settle(qtbot, window)
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(DATA / "samples" / "zidane.jpg"))])
    event = QtGui.QDropEvent(QtCore.QPointF(50, 50), QtCore.Qt.DropAction.CopyAction, mime,
                             QtCore.Qt.MouseButton.LeftButton, QtCore.Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    result = wait_result(qtbot, window, n)
    assert result.frame.name.endswith("zidane.jpg") and window.source_kind == "image"
    assert "person" in {o["label"] for o in result.result.to_dict()["objects"]}


def test_a_video_neighbour_shows_its_time_and_a_click_queries_that_frame(qtbot, tmp_path):
    """An index with a video: its neighbours' tooltips give the time (and moment); clicking one makes that frame,
    decoded from the video, the query."""
    from PyQt6 import QtCore

    from objsearch.gui.window import MainWindow
    from objsearch.media import read_video_frame

    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(DATA / "video" / "walking.mp4", folder / "walking.mp4")
    shutil.copy(coco_images(1)[0], folder)
    index = tmp_path / "walk.h5"
    done = run_cli("analyze", folder, "-o", index, "--weights", WEIGHTS, "--imgsz", "320", "--video-fps", "0.5")
    assert done.returncode == 0, done.stderr
    w = MainWindow(index, weights=str(WEIGHTS))
    w.show()
    try:
        n = w.n_results_shown
        w.query_image(COCO128_IMAGES / "000000000036.jpg")  # a person
        wait_result(qtbot, w, n)
        def media_of(tile):
            return w.searcher.media(int(w.searcher.catalog.object_media_id[
                w.searcher.catalog.object_rows([tile.object_id])[0]]))

        # the person's row holds frames of the walking clip (the other image has no person)
        tile = next((t for t in w.rows.tiles if t.column >= 0 and media_of(t).is_video_frame), None)
        assert tile is not None
        media = media_of(tile)
        tip = w.rows.tooltips[(tile.row, tile.column)]
        assert "walking.mp4 @ 00:00:" in tip and "click: search this frame" in tip
        n = w.n_results_shown
        qtbot.mouseClick(w.rows, QtCore.Qt.MouseButton.LeftButton,
                         pos=QtCore.QPoint(tile.x + tile.width // 2, tile.y + tile.height // 2))
        result = wait_result(qtbot, w, n)
        assert result.frame.is_video and result.frame.index == media.frame_index
        assert result.frame.image_id == media.media_id
        assert (result.frame.image == read_video_frame(folder / "walking.mp4", media.frame_index)).all()
        assert result.result.to_dict()["frame"] == media.frame_index
    finally:
        w.shutdown()
        w.close()
