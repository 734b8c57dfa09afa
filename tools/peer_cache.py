"""The peer of issue 21: crop each detected object and embed the crop with ultralytics' ``YOLO.embed()`` (a second
network pass per object), for the detections cached by tools/levers_cache.py, so tools/eval_neighbours.py can score
it on the same protocols as our features.

For each dataset: every original-image detection at confidence >= 0.25 (the query threshold; the index keeps a subset)
and, for coco_extra_dev (where the query images are), every detection at >= 0.25 of its three distortions, cropped
from the distorted image at the box (mapped forward from the cached original pixels), embedded with
``yolo_embedder`` (``YOLO(weights).embed(crop)``, its default layer, imgsz 640) and L2-normalised. Also times, in the
same run and on the same images, our own per-object cost (``Detector`` timings: ``features`` per object) and the
detector pass. One ``peer_<weights>_<dataset>.npz`` per dataset next to the cache; an existing file is reused.

    PYTHONPATH=$PWD YOLO_OFFLINE=1 nice -n 10 .venv/bin/python tools/peer_cache.py CACHE_DIR [11n]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from objsearch import evaluate as ev
from objsearch.detector import Detector, yolo_embedder
from objsearch.types import StageTimes

from levers_cache import DATASETS, WEIGHTS

QUERY_CONF = 0.25


def forward(xyxy: np.ndarray, name: str, width: int, height: int, small_shape: tuple[int, int]) -> np.ndarray:
    """Boxes (N, 4) in original pixels -> the same boxes in the pixels of the view ``name`` (the inverse of the map
    ``evaluate.apply_transform`` returns)."""
    if name == "hflip":
        return np.stack([width - xyxy[:, 2], xyxy[:, 1], width - xyxy[:, 0], xyxy[:, 3]], 1)
    if name == "resize0.75":
        sx, sy = small_shape[1] / width, small_shape[0] / height
        return xyxy * np.array([sx, sy, sx, sy], np.float32)
    return xyxy


def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The pixels of ``box`` (x1, y1, x2, y2) in ``image``, rounded outward, clipped, at least 1x1."""
    h, w = image.shape[:2]
    x1, y1 = int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(box[2]), x1 + 1, w)), int(np.clip(np.ceil(box[3]), y1 + 1, h))
    return np.ascontiguousarray(image[y1:y2, x1:x2])


def cache_one(weights: Path, folder: Path, levers: Path, out: Path, views: bool) -> None:
    z = np.load(levers)
    images = ev.list_labeled_images(folder)
    names = [str(n) for n in z["names"]]
    if [p.name for p in images] != names:
        raise SystemExit(f"{levers} was made from other images than {folder}")
    embed = yolo_embedder(weights)
    detector = Detector(weights)
    keep = {"orig": np.flatnonzero(z["orig_conf"] >= QUERY_CONF)}
    if views:
        keep.update({t: np.flatnonzero(z[f"{t}_conf"] >= QUERY_CONF) for t in ev.TRANSFORMS})
    feats = {v: [None] * len(rows) for v, rows in keep.items()}
    embed_ms, ours_ms, pass_ms = [], [], []
    t0 = time.time()
    for i, path in enumerate(images):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        timings = StageTimes()
        tp = time.perf_counter()
        dets = detector(image, timings=timings)
        pass_ms.append((time.perf_counter() - tp) * 1e3)
        if len(dets):
            ours_ms.append(timings.features / len(dets))
        for v, rows in keep.items():
            sel = np.flatnonzero(z[f"{v}_img"][rows] == i)
            if not len(sel):
                continue
            view = image if v == "orig" else ev.apply_transform(image, v)[0]
            boxes = z[f"{v}_xyxy"][rows[sel]]
            boxes = boxes if v == "orig" else forward(boxes, v, w, h, view.shape[:2])
            for j, box in zip(sel, boxes):
                te = time.perf_counter()
                e = embed(crop(view, box))
                if v == "orig":
                    embed_ms.append((time.perf_counter() - te) * 1e3)
                feats[v][j] = e / max(float(np.linalg.norm(e)), 1e-12)
        if i % 20 == 0:
            print(f"{out.name}: {i}/{len(images)} {time.time() - t0:.0f}s", flush=True)
    arrays = {f"{v}_rows": rows for v, rows in keep.items()}
    arrays.update({f"{v}_embed": np.stack(f).astype(np.float32) for v, f in feats.items()})
    arrays.update(embed_ms=np.array(embed_ms), ours_ms=np.array(ours_ms), pass_ms=np.array(pass_ms))
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.rename(out)
    med = statistics.median
    print(f"{out.name}: embed {med(embed_ms):.1f} ms/object, ours {med(ours_ms):.3f} ms/object, "
          f"pass {med(pass_ms):.1f} ms/image (medians)")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    cache = Path(sys.argv[1])
    for wname in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["11n"]):
        for dname, folder in DATASETS.items():
            out = cache / f"peer_{wname}_{dname}.npz"
            if not out.exists():
                cache_one(WEIGHTS[wname], folder, cache / f"{wname}_{dname}.npz", out, views=dname == "extra")


if __name__ == "__main__":
    main()
