"""Benchmark one query: per-stage milliseconds and the ratio to a bare ``YOLO.predict`` on the same image.

Usage::

    python tools/bench_query.py [-i INDEX.h5] [--image ../shared/data/samples/bus.jpg] [--repeats 30]
        [--runtime torch,onnx,openvino] [--threads 1,2]

Without ``-i`` it analyses ``../shared/data/coco128`` into a temporary index first. Both pipelines run interleaved
in the same process, on the same file (decoding included on both sides), and medians are compared, because these
machines are noisy. Target (issue 2): whole query <= 1.25x the bare predict; issue 11 with a fast runtime: <= 0.8x
(coco128 index), <= 0.9x (SYNTHETIC 376k index).

``--runtime`` and ``--threads`` list detector runtimes and thread counts: every combination is timed in the same
rounds (one Engine, its detector swapped per combination), against the bare predict at ultralytics' own thread
setting (cpu_count - 1). ``OMP_WAIT_POLICY`` defaults to PASSIVE here (torch at 2 threads spin-waits otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

from _common import DATA, coco128_index


def feature_read_ms(searcher, repeats: int) -> tuple[float, int]:
    """Median ms to read the stored features of one query's candidates (5 objects x RERANK_DEPTH random ids) from
    the index file, and the number of candidates."""
    import numpy as np

    from objsearch.rerank import RERANK_DEPTH

    rng = np.random.default_rng(0)
    ids = searcher.catalog.object_id
    n = min(len(ids), 5 * RERANK_DEPTH)
    times = []
    for _ in range(repeats):
        pick = rng.choice(ids, n, replace=False)
        t0 = time.perf_counter()
        searcher.catalog.features(pick)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path)
    parser.add_argument("--image", type=Path, default=DATA / "samples" / "bus.jpg")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", help="comma-separated runtimes: torch, onnx, openvino")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default: ultralytics')")
    parser.add_argument("--rerank", action="store_true", help="also time each variant without the rerank (issue 21: "
                        "<= 1.1x at coco128, <= 1.2x at the SYNTHETIC 376k index)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch
    from ultralytics import YOLO

    from objsearch.engine import Engine

    stack = contextlib.ExitStack()
    index = stack.enter_context(coco128_index(args.index, args.device))
    searcher = Engine(index, device=args.device)
    yolo = YOLO(searcher.detector.weights_path)
    source = str(args.image)
    yolo.predict(source, verbose=False, device=args.device)  # ultralytics sets torch's threads here
    bare_threads = torch.get_num_threads()
    from objsearch.detector import Detector

    base = searcher.detector
    variants = {}
    for runtime in args.runtime.split(","):
        for n in (args.threads.split(",") if args.threads else [str(bare_threads)]):
            det = base if runtime == base.runtime else Detector(
                base.weights_path, imgsz=base.imgsz, conf=base.conf, iou=base.iou, max_det=base.max_det,
                device=args.device, recipe=base.recipe, runtime=runtime, threads=int(n))
            variants[f"{runtime}/{n}"] = (det, int(n))

    if args.rerank and searcher.reranks:  # the same query without the rerank (how the index searched before it)
        variants = {**{f"{name} rerank": (det, n, True) for name, (det, n) in variants.items()},
                    **{f"{name} plain": (det, n, False) for name, (det, n) in variants.items()}}
    else:
        variants = {name: (det, n, True) for name, (det, n) in variants.items()}

    def run(det, n, rerank=True):
        torch.set_num_threads(n)  # the torch runtime's threads (the others were fixed when made)
        searcher.detector = det
        image, decode, _ = searcher._query_file(args.image, None, False)
        result = searcher.search(image, k=args.k, rerank=rerank, timings={"decode": decode})
        return result.to_dict()

    def bare_predict():
        torch.set_num_threads(bare_threads)
        yolo.predict(source, verbose=False, device=args.device)

    for _ in range(3):  # warm-up all
        bare_predict()
        for det, n, rr in variants.values():
            run(det, n, rr)
    bare, ours, stages = [], {v: [] for v in variants}, {v: {} for v in variants}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_predict()
        bare.append((time.perf_counter() - t0) * 1e3)
        for name, (det, n, rr) in variants.items():
            t0 = time.perf_counter()
            payload = run(det, n, rr)
            ours[name].append((time.perf_counter() - t0) * 1e3)
            for stage, ms in payload["timings_ms"].items():
                stages[name].setdefault(stage, []).append(ms)
    med = statistics.median
    print(f"machine: {os.cpu_count()} cores, bare predict at {bare_threads} torch thread(s), device {args.device}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; index {index} ({len(searcher.catalog.object_id)} "
          f"objects, {searcher.dims} dims); image {args.image.name}; {len(payload['objects'])} objects, k={args.k}; "
          f"{args.repeats} interleaved repeats, medians")
    print(f"  {'runtime/threads':<16}" + "".join(f"{s:>9}" for s in ("decode", "detect", "features", "search",
                                                                     "assemble", "query", "ratio")))
    for name in variants:
        row = [med(stages[name][s]) for s in ("decode", "detect", "features", "search", "assemble")]
        print(f"  {name:<16}" + "".join(f"{v:9.2f}" for v in row) + f"{med(ours[name]):9.2f}"
              f"{med(ours[name]) / med(bare):9.3f}")
    print(f"  {'bare predict':<16}{'':45}{med(bare):9.2f}    1.000   (bare YOLO.predict on the same file)")
    if args.rerank and searcher.reranks:
        for name in variants:
            if name.endswith(" rerank"):
                plain = name[: -len(" rerank")] + " plain"
                print(f"  {name[: -len(' rerank')]}: whole query with the rerank / without: "
                      f"{med(ours[name]) / med(ours[plain]):.3f}; search stage {med(stages[name]['search']):.2f} / "
                      f"{med(stages[plain]['search']):.2f} ms")
        full = feature_read_ms(searcher, args.repeats)
        print(f"  reading the {full[1]} candidates' stored features (D={searcher.catalog.n_features}) from the HDF5 "
              f"file per query instead (the rerank by stored features, not adopted): {full[0]:.2f} ms (median)")
    searcher.detector = base
    searcher.close()
    stack.close()


if __name__ == "__main__":
    main()
