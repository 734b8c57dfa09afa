"""Choose the whole-image feature recipe by measurement: every image block alone and in pairs, scored by
``objsearch.image_eval`` (image precision@k, instance recall@1 under flip / 0.75x / JPEG 60) on a YOLO-format folder.
One detector pass per image computes every block; combinations are re-weighted slices of it.

    PYTHONPATH=. python tools/image_recipe.py ../shared/data/coco128 [LIMIT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from objsearch import image_eval as ie
from objsearch.detector import Detector
from objsearch.pooling import IMAGE_BLOCKS

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "weights" / "yolov8n-reconstructed.pt"
RECIPES = [{b: 1.0} for b in IMAGE_BLOCKS] + [
    {"neck_gap": 1, "cls_max": 0.5}, {"neck_gap": 1, "cls_max": 1}, {"neck_gap": 1, "cls_sum": 0.5},
    {"neck_gap": 1, "cls_sum": 1}, {"neck_gap": 1, "cls_sum": 2}, {"neck_gap": 1, "neck_gmp": 1},
    {"neck_gap": 1, "cls_gap": 1}, {"neck_gap": 1, "cls_gap": 1, "cls_max": 0.5}, {"cls_gap": 1, "cls_max": 0.5},
    {"neck_gmp": 1, "cls_max": 0.5}]


def main(data: Path, limit: int | None) -> None:
    det = Detector(WEIGHTS, image_recipe={b: 1.0 for b in IMAGE_BLOCKS})
    paths, images = ie.load_images(data, limit)
    ours = ie.collect_ours(det, paths, images)
    nc, neck = len(det.names), sum(int(det.head.cv2[i][0].conv.in_channels) for i in range(det.head.nl))
    sizes = {"neck_gap": neck, "neck_gmp": neck, "cls_gap": det.head.cv3[0][-1].in_channels * det.head.nl,
             "cls_max": nc, "cls_sum": nc}
    offsets, start = {}, 0
    for b in IMAGE_BLOCKS:
        offsets[b] = (start, start + sizes[b])
        start += sizes[b]

    def sub(x, weights):
        parts = []
        for b, w in weights.items():
            block = x[:, offsets[b][0]:offsets[b][1]]
            parts.append(block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12) * w)
        return np.concatenate(parts, 1)

    for weights in RECIPES:
        data_w = ie.ImageEvalData(str(weights), sub(ours.features, weights),
                                  {t: sub(q, weights) for t, q in ours.queries.items()}, ours.largest_class,
                                  ours.classes, 0.0)
        for dims in (None, 32):
            r = ie.score_images(data_w, dims)
            print(weights, r["dims"], {k: round(v, 3) for k, v in r["precision_at_k"].items()},
                  {k: round(v, 3) for k, v in r["instance_recall_at_1"].items()}, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
