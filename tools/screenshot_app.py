"""Take docs/app.md's screenshot of the real app window on a real query, on a virtual X display.

Usage::

    .venv/bin/objsearch analyze ../shared/data/coco128 -o /tmp/coco128.h5
    xvfb-run -s "-screen 0 1500x950x24" .venv/bin/python tools/screenshot_app.py -i /tmp/coco128.h5 \
        --image ../shared/data/samples/bus.jpg -o docs/app.jpg

The window opens on the display (Qt's xcb platform under Xvfb), queries the image, waits for the result and saves
the screen pixels of the window, grabbed with mss (the same grabber as the app's screen source); ``--qt-grab``
renders the window with ``QWidget.grab()`` instead (works on Qt's offscreen platform too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-i", "--index", required=True, type=Path)
    ap.add_argument("--image", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/samples/bus.jpg")
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/app.jpg"))
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--size", default="1440x900", help="window size WxH")
    ap.add_argument("--qt-grab", action="store_true", help="QWidget.grab() instead of the screen pixels")
    args = ap.parse_args()

    from PyQt6 import QtWidgets

    from objsearch.gui.window import MainWindow

    app = QtWidgets.QApplication(sys.argv)
    window = MainWindow(args.index)
    width, height = (int(v) for v in args.size.split("x"))
    window.resize(width, height)
    window.move(0, 0)
    window.show()
    window.results_slider.setValue(args.k)
    window.header_slider.setValue(400)

    def pump(seconds: float, until=lambda: False) -> None:
        end = time.time() + seconds
        while time.time() < end and not until():
            app.processEvents()
            time.sleep(0.01)

    pump(3)
    n = window.n_results_shown
    if not window.query_image(args.image):
        print(f"error: {window.message}", file=sys.stderr)
        return 1
    pump(30, lambda: window.n_results_shown > n)
    if window.n_results_shown <= n:
        print(f"error: no result shown ({window.message})", file=sys.stderr)
        return 1
    pump(1.0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.qt_grab:
        ok = window.grab().save(str(args.output))
    else:
        import mss

        geo = window.frameGeometry()
        with (getattr(mss, "MSS", None) or mss.mss)() as sct:
            shot = np.asarray(sct.grab({"left": geo.x(), "top": geo.y(), "width": geo.width(), "height": geo.height()}))
        ok = cv2.imwrite(str(args.output), shot[..., :3], [cv2.IMWRITE_JPEG_QUALITY, 85])
    window.shutdown()
    print(f"{'wrote' if ok else 'could not write'} {args.output}: {window.stage_label.text()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
