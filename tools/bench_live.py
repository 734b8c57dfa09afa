"""Benchmark the app's live pipeline on a video: frames per second of the real window (offscreen Qt) searching
every frame, against a bare ``YOLO.predict`` on the same frames, in the same run (issue 3, item 9).

Usage::

    QT_QPA_PLATFORM=offscreen python tools/bench_live.py [-i INDEX.h5] [--runtime torch|onnx|openvino] \
        [--video ../shared/data/video/one-by-one-person-detection.mp4] [--start 600] [--frames 200] [--rounds 2]

Without ``-i`` it analyses ``../shared/data/coco128`` into a temporary index first. The live side is the whole app
pipeline: decoding in the capture thread, detection, features, search, thumbnails and rows composed in the search
thread, and the window painting each result (``MainWindow.start_video(realtime=False)``: no frame is dropped, so
both sides process the same frames). The bare side is ``YOLO.predict`` on the same frames, already decoded. Rounds
alternate and medians are compared, because these machines are noisy. Target: live >= 0.8x the bare predict rate.
Then the video plays at its own frame rate for ``--realtime-seconds`` to show that the window keeps up (fps, drops).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

from _common import DATA, coco128_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path)
    parser.add_argument("--video", type=Path, default=DATA / "video" / "one-by-one-person-detection.mp4")
    parser.add_argument("--start", type=int, default=600)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--realtime-seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: what YOLO.predict sets, "
                                                    "cpu_count - 1)")
    parser.add_argument("--runtime", default="torch", help="what runs the app's detector: torch, onnx, openvino, auto "
                                                           "(the bare side is always ultralytics' PyTorch predict)")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    import cv2
    import torch
    from PyQt6 import QtCore, QtWidgets
    from ultralytics import YOLO

    from objsearch.gui.window import MainWindow

    stack = contextlib.ExitStack()
    index = stack.enter_context(coco128_index(args.index, args.device))

    cap = cv2.VideoCapture(str(args.video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, args.start)
    frames = [cap.read()[1] for _ in range(args.frames)]
    video_fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    if any(f is None for f in frames):
        sys.exit(f"error: {args.video} has fewer than {args.start + args.frames} frames")

    from objsearch.catalog import Catalog
    from objsearch.config import load_config
    from objsearch.provenance import weights_for_index

    with Catalog(index) as f:
        conf = float(f.attrs["config"]["conf"])
        weights = weights_for_index(f, load_config(None, device=args.device))
    yolo = YOLO(weights)
    yolo.predict(frames[0], verbose=False, device=args.device, conf=conf)  # ultralytics sets torch's threads here
    if args.threads:
        torch.set_num_threads(args.threads)
    # torch's thread count is taken per thread when the thread first runs torch code, so it is fixed here, before
    # the app's search thread exists: both sides run on the same number of threads
    threads = torch.get_num_threads()

    app = QtWidgets.QApplication(["bench_live"])
    window = MainWindow(index, device=args.device, runtime=args.runtime)
    window.resize(1400, 900)
    window.show()

    def bare() -> float:
        t0 = time.perf_counter()
        for f in frames:
            yolo.predict(f, verbose=False, device=args.device, conf=conf)
        return len(frames) / (time.perf_counter() - t0)

    def run_until(predicate, timeout_s: float) -> None:
        """Run Qt's event loop (no busy polling) until ``predicate()`` holds after a result, or the timeout."""
        loop = QtCore.QEventLoop()

        def check(_result=None):
            if predicate():
                loop.quit()

        window.bridge.result.connect(check)
        QtCore.QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        check()
        loop.exec()
        window.bridge.result.disconnect(check)

    stages: dict[str, list[float]] = {}  # per stage, every live frame of every round

    def collect(result) -> None:  # connected after the window's own slot, which adds "display"
        for name, ms in result.timings_ms.items():
            stages.setdefault(name, []).append(ms)

    def live() -> float:
        window.stop_source()
        app.processEvents()
        first = window.n_results_shown
        last = args.start + args.frames - 1
        t0 = time.perf_counter()
        window.bridge.result.connect(collect)
        window.start_video(args.video, realtime=False, start=args.start)
        run_until(lambda: window.last_result is not None and window.n_results_shown > first
                  and window.last_result.frame.index >= last, 600)
        seconds = time.perf_counter() - t0
        window.bridge.result.disconnect(collect)
        shown = window.n_results_shown - first
        window.stop_source()
        if window.last_result.frame.index < last:
            sys.exit(f"error: the live pipeline stopped at frame {window.last_result.frame.index}: {window.message}")
        return shown / seconds

    run_until(lambda: False, 2.0)  # the first random query, warm-up
    bare_fps, live_fps = [], []
    for _ in range(args.rounds):
        bare_fps.append(bare())
        live_fps.append(live())
    med = statistics.median
    print(f"machine: {os.cpu_count()} cores, device {args.device}, {threads} thread(s) for both sides, app runtime "
          f"{window.searcher.detector.runtime}; index "
          f"{index} ({len(window.searcher.catalog.object_id)} objects, {window.searcher.dims} dims, "
          f"{window.searcher.method}); video {args.video.name} frames "
          f"{args.start}-{args.start + args.frames - 1} ({frames[0].shape[1]}x{frames[0].shape[0]}); "
          f"k={window.settings.k}; {args.rounds} alternating rounds, medians")
    def rounds(values):
        return ", ".join(f"{v:.1f}" for v in values)

    print(f"  bare YOLO.predict  {med(bare_fps):6.1f} frames/s  (rounds: {rounds(bare_fps)})")
    print(f"  live app pipeline  {med(live_fps):6.1f} frames/s  (rounds: {rounds(live_fps)})")
    print("  live stages, median ms per frame: " + ", ".join(f"{k} {med(v):.1f}" for k, v in stages.items()))
    print(f"ratio live / bare predict: {med(live_fps) / med(bare_fps):.3f}  (target >= 0.8)")

    if args.realtime_seconds > 0:
        window.stop_source()
        first = window.n_results_shown
        t0 = time.perf_counter()
        window.start_video(args.video, realtime=True, start=args.start)
        run_until(lambda: time.perf_counter() - t0 > args.realtime_seconds, args.realtime_seconds + 5)
        seconds = time.perf_counter() - t0
        shown = window.n_results_shown - first
        read = window.capture.n_read if window.capture else 0
        dropped = window.slot.dropped
        window.stop_source()
        print(f"real time (the file's {video_fps:.1f} fps) "
              f"for {seconds:.1f} s: {shown / seconds:.1f} results/s, {read} frames read, {dropped} dropped")
    window.shutdown()
    stack.close()


if __name__ == "__main__":
    main()
