"""Analysis throughput: ``objsearch analyze`` images/s against bare ``YOLO.predict`` over the same files (issue 4).

Usage::

    python tools/bench_analyze.py [DIR] [--repeats 2] [--device cpu] [--batch 1,4]

Both run in this process on the same files (default ``../shared/data/coco128``), alternating, best of
``--repeats`` each. The bare predict streams the files through ultralytics (decoding included) and keeps nothing;
the analysis also pools features, encodes thumbnails and writes the journal and the index file.
Target: analysis >= 0.85x the bare predict's images/s. ``--batch`` lists detector batch sizes (the configuration
key ``batch``) to time against each other in the same run, alternating with the bare predict.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DATA / "coco128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default: the configured one)")
    args = parser.parse_args()

    import torch
    from ultralytics import YOLO

    from objsearch.analysis import analyze
    from objsearch.config import load_config
    from objsearch.engine import load_detector
    from objsearch.media import list_images

    cfg = load_config(None, device=args.device)
    detector = load_detector(cfg)
    files = [str(p) for p in list_images(args.folder)]
    yolo = YOLO(detector.weights_path)
    yolo.predict(files[0], verbose=False, device=args.device)  # warm-up (and ultralytics' thread setting)
    batches = [int(b) for b in args.batch.split(",")] if args.batch else [cfg["batch"]]
    bare, ours = [], {b: [] for b in batches}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _result in yolo.predict(files, stream=True, verbose=False, device=args.device, conf=cfg["conf"]):
            pass
        bare.append(len(files) / (time.perf_counter() - t0))
        for b in batches:
            with tempfile.TemporaryDirectory() as tmp:
                summary = analyze(args.folder, Path(tmp) / "bench.h5", {**cfg, "batch": b}, detector=detector)
            ours[b].append(summary.n_images / summary.seconds)
    print(f"{len(files)} images in {args.folder}; device {args.device}; torch threads {torch.get_num_threads()}; "
          f"best of {args.repeats}")
    print(f"  bare YOLO.predict  {max(bare):6.1f} images/s")
    for b in batches:
        print(f"  objsearch analyze  {max(ours[b]):6.1f} images/s  batch {b} ({summary.n_objects} objects)")
    for b in batches:
        print(f"ratio analyze batch {b} / bare predict: {max(ours[b]) / max(bare):.3f}  (target >= 0.85)")
    for b in batches[1:]:
        print(f"ratio analyze batch {b} / batch {batches[0]}: {max(ours[b]) / max(ours[batches[0]]):.3f}")


if __name__ == "__main__":
    main()
