"""Benchmark one query: per-stage milliseconds and the ratio to a bare ``YOLO.predict`` on the same image.

Usage::

    python tools/bench_query.py [-i INDEX.h5] [--image ../shared/data/samples/bus.jpg] [--repeats 30]

Without ``-i`` it analyses ``../shared/data/coco128`` into a temporary index first. Both pipelines run interleaved
in the same process, on the same file (decoding included on both sides), and medians are compared, because these
machines are noisy. Target (issue 2): whole query <= 1.25x the bare predict.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

from _common import DATA, coco128_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path)
    parser.add_argument("--image", type=Path, default=DATA / "samples" / "bus.jpg")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    from ultralytics import YOLO

    from objsearch.engine import Engine

    stack = contextlib.ExitStack()
    index = stack.enter_context(coco128_index(args.index, args.device))
    searcher = Engine(index, device=args.device)
    yolo = YOLO(searcher.detector.weights_path)
    source = str(args.image)
    for _ in range(3):  # warm-up both
        yolo.predict(source, verbose=False, device=args.device)
        searcher.search_file(args.image, k=args.k).to_dict()
    bare, ours, stages = [], [], {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        yolo.predict(source, verbose=False, device=args.device)
        bare.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        payload = searcher.search_file(args.image, k=args.k).to_dict()
        ours.append((time.perf_counter() - t0) * 1e3)
        for name, ms in payload["timings_ms"].items():
            stages.setdefault(name, []).append(ms)
    med = statistics.median
    print(f"machine: {torch.get_num_threads()} torch threads, device {args.device}; index {index} "
          f"({len(searcher.catalog.object_id)} objects, {searcher.dims} dims); image {args.image.name}; "
          f"{len(payload['objects'])} objects, k={args.k}; {args.repeats} interleaved repeats, medians")
    for name in ("decode", "detect", "features", "search", "assemble"):
        print(f"  {name:<9} {med(stages[name]):8.2f} ms")
    print(f"  {'query':<9} {med(ours):8.2f} ms   (wall time of search_file + to_dict)")
    print(f"  {'predict':<9} {med(bare):8.2f} ms   (bare YOLO.predict on the same file)")
    print(f"ratio query / bare predict: {med(ours) / med(bare):.3f}  (target <= 1.25)")
    searcher.close()
    stack.close()


if __name__ == "__main__":
    main()
