"""Video indexing speed and size: ``objsearch analyze`` of a video at 1 fps, frames/s, against bare ultralytics
``YOLO.predict`` on the same sampled frames, and index bytes per video minute (issue 13).

Usage::

    python tools/bench_video_index.py [VIDEO ...] [--video-fps 1] [--repeats 2] [--imgsz 640] [--device cpu]

Everything runs in this process, alternating (analyze, then predict, ``--repeats`` times; best of each), so the
ratio holds on a busy machine even when the absolute numbers do not. The analysis is end to end: decoding the
sampled frames (``grab`` over the others), detection with features, thumbnails, journal and index commits. The bare
predict gets the same frames already decoded (their decode time is printed beside it, measured alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path, default=[DATA / "video" / "walking.mp4",
                                                                  DATA / "video" / "car-detection.mp4"])
    parser.add_argument("--video-fps", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from ultralytics import YOLO

    from objsearch.analysis import analyze
    from objsearch.catalog import Catalog
    from objsearch.config import load_config
    from objsearch.provenance import load_detector
    from objsearch.media import read_video_frames, video_info

    cfg = load_config(None, device=args.device, imgsz=args.imgsz, video_fps=args.video_fps)
    detector = load_detector(cfg)
    t0 = time.perf_counter()
    frames = [f.image for v in args.videos for f in read_video_frames(v, sample_fps=args.video_fps)]
    decode_s = time.perf_counter() - t0
    minutes = sum(video_info(v).duration_s for v in args.videos) / 60
    print(f"{len(args.videos)} videos, {minutes * 60:.1f} s in all, {len(frames)} frames at {args.video_fps} fps; "
          f"decoding them alone (grab over the rest): {decode_s:.2f} s ({len(frames) / decode_s:.1f} frames/s)")
    yolo = YOLO(detector.weights_path)
    yolo.predict(frames[0], verbose=False, device=args.device, imgsz=cfg["imgsz"])  # warm-up
    detector.warmup(frames[0].shape)
    ours, bare, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for v in args.videos:
            shutil.copy(v, folder / v.name)
        for r in range(args.repeats):
            out = Path(tmp) / f"videos{r}.h5"
            summary = analyze(folder, out, cfg, detector=detector)
            ours.append(summary.n_added / summary.seconds)
            sizes.append((out.stat().st_size, summary.n_objects))
            with Catalog(out) as c:
                assert len(c.media_id) == len(frames), (len(c.media_id), len(frames))
            t0 = time.perf_counter()
            for frame in frames:
                yolo.predict(frame, verbose=False, device=args.device, imgsz=cfg["imgsz"], conf=cfg["conf"])
            bare.append(len(frames) / (time.perf_counter() - t0))
    best_ours, best_bare = max(ours), max(bare)
    size, n_objects = sizes[-1]
    print(f"objsearch analyze (end to end): {best_ours:.2f} frames/s  (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"bare YOLO.predict (frames decoded already): {best_bare:.2f} frames/s  "
          f"(runs: {', '.join(f'{x:.2f}' for x in bare)})")
    print(f"ratio analyze / bare predict: {best_ours / best_bare:.2f}x; with the bare predict charged the same "
          f"decoding: {best_ours / (len(frames) / (len(frames) / best_bare + decode_s)):.2f}x")
    print(f"index: {size / 1e6:.2f} MB for {minutes:.2f} video minutes = {size / minutes / 1e6:.2f} MB per video "
          f"minute at {args.video_fps} fps ({size / len(frames) / 1e3:.1f} kB per frame, {n_objects} objects, "
          f"imgsz {cfg['imgsz']}, dims {cfg['dims']})")


if __name__ == "__main__":
    main()
