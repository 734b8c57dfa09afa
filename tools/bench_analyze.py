"""Analysis throughput: ``objsearch analyze`` images/s against bare ``YOLO.predict`` over the same files (issue 4).

Usage::

    python tools/bench_analyze.py [DIR] [--repeats 2] [--device cpu] [--batch 1,4] [--runtime torch,onnx,openvino]

Both run in this process on the same files (default ``../shared/data/coco128``), alternating, best of
``--repeats`` each. The bare predict streams the files through ultralytics (decoding included) and keeps nothing;
the analysis also pools features, encodes thumbnails and writes the journal and the index file.
Target: analysis >= 0.85x the bare predict's images/s. ``--batch`` lists detector batch sizes (the configuration
key ``batch``) to time against each other in the same run, alternating with the bare predict.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--runtime", default=None, help="comma-separated detector runtimes: torch, onnx, openvino "
                                                        "(default: the configured one)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch at 2 threads spin-waits on a busy machine otherwise

    import torch
    from ultralytics import YOLO

    from objsearch.analysis import analyze
    from objsearch.config import load_config
    from objsearch.provenance import load_detector
    from objsearch.media import list_images

    cfg = load_config(None, device=args.device)
    runtimes = args.runtime.split(",") if args.runtime else [cfg["runtime"]]
    detectors = {rt: load_detector({**cfg, "runtime": rt}) for rt in runtimes}
    detector = detectors[runtimes[0]]
    files = [str(p) for p in list_images(args.folder)]
    yolo = YOLO(detector.weights_path)
    yolo.predict(files[0], verbose=False, device=args.device)  # warm-up (and ultralytics' thread setting)
    batches = [(rt, int(b)) for rt in runtimes
               for b in (args.batch.split(",") if args.batch else [cfg["batch"]])]
    bare, ours = [], {b: [] for b in batches}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _result in yolo.predict(files, stream=True, verbose=False, device=args.device, conf=cfg["conf"]):
            pass
        bare.append(len(files) / (time.perf_counter() - t0))
        for rt, b in batches:
            with tempfile.TemporaryDirectory() as tmp:
                summary = analyze(args.folder, Path(tmp) / "bench.h5", {**cfg, "batch": b, "runtime": rt},
                                  detector=detectors[rt])
            ours[rt, b].append(summary.n_images / summary.seconds)
    print(f"{len(files)} images in {args.folder}; device {args.device}; torch threads {torch.get_num_threads()}; "
          f"best of {args.repeats}")
    print(f"  bare YOLO.predict  {max(bare):6.1f} images/s")
    for rt, b in batches:
        print(f"  objsearch analyze  {max(ours[rt, b]):6.1f} images/s  {rt} batch {b} ({summary.n_objects} objects)")
    for rt, b in batches:
        print(f"ratio analyze {rt} batch {b} / bare predict: {max(ours[rt, b]) / max(bare):.3f}  (target >= 0.85)")
    for rt, b in batches[1:]:
        print(f"ratio analyze {rt} batch {b} / {batches[0][0]} batch {batches[0][1]}: "
              f"{max(ours[rt, b]) / max(ours[batches[0]]):.3f}")


if __name__ == "__main__":
    main()
