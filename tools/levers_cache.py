"""Run the detector once per image, view and weights and keep everything the lever study needs (tools/eval_levers.py).

For each weights file and dataset folder: every detection at confidence >= 0.1 of the original image (with all five
feature blocks, each L2-normalised, weight 1, the same blocks pooled on the mirrored input, and the class scores
(N, 80)), and of its three
distortions (hflip, resize0.75, jpeg60; boxes mapped back to the original pixels), plus the ground truth. One
``.npz`` per (weights, dataset) under the cache folder; an existing file is reused.

    PYTHONPATH=$PWD YOLO_OFFLINE=1 nice -n 10 .venv/bin/python tools/levers_cache.py CACHE_DIR [11n,v8n]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from objsearch import evaluate as ev
from objsearch.detector import Detector
from objsearch.pooling import FEATURE_BLOCKS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = {"v8n": DATA / "weights" / "yolov8n-reconstructed.pt", "11n": DATA / "weights" / "yolo11n-reconstructed.pt"}
DATASETS = {"coco128": DATA / "coco128", "extra": DATA / "coco_extra_dev"}
CACHE_CONF = 0.1


def block_slices(detector: Detector) -> dict[str, tuple[int, int]]:
    nc = len(detector.names)
    head = detector.head
    sizes = {"cls_cell": head.cv3[0][-1].in_channels, "cls_logits": nc, "cls_roi": head.cv3[0][-1].in_channels,
             "box_cell": head.cv2[0][-1].in_channels,
             "neck_roi": sum(int(head.cv2[i][0].conv.in_channels) for i in range(head.nl))}
    out, at = {}, 0
    for name in FEATURE_BLOCKS:
        out[name] = (at, at + int(sizes[name]))
        at += int(sizes[name])
    out["neck_levels"] = tuple(int(head.cv2[i][0].conv.in_channels) for i in range(head.nl))
    return out


def cache_one(detector: Detector, folder: Path, out: Path) -> None:
    images = ev.list_labeled_images(folder)
    rows = {v: {"img": [], "xyxy": [], "conf": [], "cls": [], "feat": [], "mfeat": [], "scores": []}
            for v in ("orig",) + ev.TRANSFORMS}
    gt_img, gt_xyxy, gt_cls, names = [], [], [], []
    t0 = time.time()
    for i, path in enumerate(images):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        g, c = ev.read_yolo_labels(ev.label_path_for(path), w, h)
        gt_img.append(np.full(len(g), i)); gt_xyxy.append(g); gt_cls.append(c); names.append(path.name)
        d = detector.detect_batch([image], conf=CACHE_CONF, mirror=True)[0]
        r = rows["orig"]
        r["img"].append(np.full(len(d), i)); r["xyxy"].append(d.xyxy); r["conf"].append(d.confidence)
        r["cls"].append(d.class_id); r["feat"].append(d.features); r["mfeat"].append(d.data["mirror_features"])
        r["scores"].append(d.data["class_scores"])
        for t in ev.TRANSFORMS:
            distorted, back = ev.apply_transform(image, t)
            d = detector(distorted, conf=CACHE_CONF)
            r = rows[t]
            r["img"].append(np.full(len(d), i)); r["xyxy"].append(back(d.xyxy).astype(np.float32))
            r["conf"].append(d.confidence); r["cls"].append(d.class_id); r["feat"].append(d.features)
            r["scores"].append(d.data["class_scores"])
        if i % 20 == 0:
            print(f"{out.name}: {i}/{len(images)} {time.time() - t0:.0f}s", flush=True)
    arrays = {"gt_img": np.concatenate(gt_img), "gt_xyxy": np.concatenate(gt_xyxy).reshape(-1, 4),
              "gt_cls": np.concatenate(gt_cls), "names": np.array(names)}
    for v, r in rows.items():
        for key, parts in r.items():
            if parts:
                arrays[f"{v}_{key}"] = np.concatenate(parts)
    sl = block_slices(detector)
    arrays["slices"] = np.array([sl[n] for n in FEATURE_BLOCKS])
    arrays["neck_levels"] = np.array(sl["neck_levels"])
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.rename(out)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    cache = Path(sys.argv[1])
    cache.mkdir(parents=True, exist_ok=True)
    chosen = sys.argv[2].split(",") if len(sys.argv) > 2 else list(WEIGHTS)
    recipe = {name: 1.0 for name in FEATURE_BLOCKS}
    for wname, wpath in ((w, WEIGHTS[w]) for w in chosen):
        detector = Detector(wpath, recipe=recipe, conf=CACHE_CONF)
        for dname, folder in DATASETS.items():
            out = cache / f"{wname}_{dname}.npz"
            if not out.exists():
                cache_one(detector, folder, out)


if __name__ == "__main__":
    main()
