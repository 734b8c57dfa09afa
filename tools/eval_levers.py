"""The lever table of issue 11: realistic-protocol quality per detector, recipe, index hygiene and projection, from
the detector outputs cached by tools/levers_cache.py (no detector runs here).

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python tools/eval_levers.py CACHE_DIR [--dims 32]

Each row: coco_extra_dev queried against a coco128 index, and coco128 leave-one-image-out; class-agnostic P@1/5/16,
same-class P@5, the fraction of same-class neighbours that match no labeled object, instance R@1 (mean, flip,
0.75x, jpeg60), and the matched protocol's P@5 / same-class P@5 / R@1 on coco128 for comparison.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from objsearch import evaluate as ev
from objsearch.detections import Detections
from objsearch.pooling import FEATURE_BLOCKS

QUERY_CONF = 0.25


def load(cache: Path, weights: str, dataset: str, recipe: dict[str, float]) -> ev.LabeledSet:
    z = np.load(cache / f"{weights}_{dataset}.npz")
    slices = {name: tuple(z["slices"][i]) for i, name in enumerate(FEATURE_BLOCKS)}

    def feats(f):
        return np.concatenate([f[:, slices[b][0]:slices[b][1]] * w for b, w in recipe.items()], 1).astype(np.float32)

    dets = Detections(z["orig_xyxy"], z["orig_conf"], z["orig_cls"], feats(z["orig_feat"]),
                      {"image_id": z["orig_img"].astype(np.int64), "mirror_features": feats(z["orig_mfeat"])})
    dets.data["true_class"] = ev.label_detections(dets.xyxy, dets.confidence, dets.data["image_id"], z["gt_xyxy"],
                                                  z["gt_cls"], z["gt_img"])
    views = {t: Detections(z[f"{t}_xyxy"], z[f"{t}_conf"], z[f"{t}_cls"], feats(z[f"{t}_feat"]),
                           {"image_id": z[f"{t}_img"].astype(np.int64)}) for t in ev.TRANSFORMS}
    return ev.LabeledSet(dets, views, z["gt_xyxy"], z["gt_cls"], z["gt_img"], [str(n) for n in z["names"]])


def row(cache: Path, weights: str, recipe: dict, hygiene: ev.Hygiene, method: str, dims: int) -> dict:
    c128 = load(cache, weights, "coco128", recipe)
    extra = load(cache, weights, "extra", recipe)
    cross = ev.score_realistic(ev.realistic(c128, extra, QUERY_CONF, hygiene), dims, method)
    loo = ev.score_realistic(ev.realistic(c128, None, QUERY_CONF, hygiene), dims, method)
    matched = ev.score(ev.matched_data(c128, QUERY_CONF), dims, method)
    return {"cross": cross, "loo": loo, "matched": matched}


def fmt(r: dict) -> str:
    def part(s):
        p, q, i = s["precision_at_k"], s["precision_at_k_same_class"], s["instance_recall_at_1"]
        return (f"{p[1]:.3f} {p[5]:.3f} {p[16]:.3f} {q[5]:.3f} {s['false_neighbours_same_class']:.3f} "
                f"{i['mean']:.3f} {i['hflip']:.3f} {i['resize0.75']:.3f} {i['jpeg60']:.3f}")
    m = r["matched"]
    return (f"{part(r['cross'])} | {part(r['loo'])} | {m['precision_at_k'][5]:.3f} "
            f"{m['precision_at_k_same_class'][5]:.3f} {m['instance_recall_at_1']['mean']:.3f} "
            f"{m['instance_recall_at_1']['hflip']:.3f}")


HEADER = ("P@1   P@5   P@16  sP@5  false R@1   flip  0.75x jpeg  (extra vs coco128) | same for coco128 LOO | "
          "matched: P@5 sP@5 R@1 flip")


def ladder() -> list[tuple]:
    """The lever table of docs/quality.md: one lever at a time from today's default to the chosen configuration."""
    base, light = {"cls_logits": 2.5, "neck_roi": 1.0}, {"cls_logits": 1.5, "neck_roi": 1.0}
    H = ev.Hygiene
    return [
        ("v8n default, random (before)", "v8n", base, H(), "random"),
        ("v8n default, pca", "v8n", base, H(), "pca"),
        ("v8n + index_conf 0.5", "v8n", base, H(0.5), "random"),
        ("v8n + index_conf 0.5 + dedup 0.5", "v8n", base, H(0.5, 0.5), "random"),
        ("v8n + index_conf 0.5 + dedup + mirror", "v8n", base, H(0.5, 0.5, True), "random"),
        ("11n default, random", "11n", base, H(), "random"),
        ("11n default, pca", "11n", base, H(), "pca"),
        ("11n + index_conf 0.5 + dedup + mirror", "11n", base, H(0.5, 0.5, True), "random"),
        ("11n + index_conf 0.6 + dedup", "11n", base, H(0.6, 0.5), "random"),
        ("11n + index_conf 0.6 + dedup + mirror", "11n", base, H(0.6, 0.5, True), "random"),
        ("  same, pca", "11n", base, H(0.6, 0.5, True), "pca"),
        ("  same, logits 1.5, random", "11n", light, H(0.6, 0.5, True), "random"),
        ("  same, logits 1.5, pca (chosen)", "11n", light, H(0.6, 0.5, True), "pca"),
        ("  chosen without mirror", "11n", light, H(0.6, 0.5), "pca"),
        ("  chosen with index_conf 0.5", "11n", light, H(0.5, 0.5, True), "pca"),
        ("  chosen with logits 2", "11n", {"cls_logits": 2.0, "neck_roi": 1.0}, H(0.6, 0.5, True), "pca"),
        ("  chosen with logits 1, random", "11n", {"cls_logits": 1.0, "neck_roi": 1.0}, H(0.6, 0.5, True), "random"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache", type=Path)
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--study", default="ladder", choices=("ladder", "grid", "rerank"))
    args = parser.parse_args()
    if args.study == "rerank":  # a stored box-quality score (the confidence) used to rank near-ties
        light = {"cls_logits": 1.5, "neck_roi": 1.0}
        c128, extra = load(args.cache, "11n", "coco128", light), load(args.cache, "11n", "extra", light)
        data = ev.realistic(c128, extra, QUERY_CONF, ev.Hygiene(0.6, 0.5, True))
        print("quality_weight  P@1   P@5   P@16  sP@5  false  (extra vs coco128, chosen configuration)")
        for w in (0.0, 0.25, 0.5, 1.0, 2.0):
            r = ev.score_realistic(data, args.dims, "pca", 0, w)
            p, q = r["precision_at_k"], r["precision_at_k_same_class"]
            print(f"{w:14.2f}  {p[1]:.3f} {p[5]:.3f} {p[16]:.3f} {q[5]:.3f} {r['false_neighbours_same_class']:.3f}",
                  flush=True)
        return
    variants = ladder()
    if args.study == "grid":
        variants = [(f"{w} ic={ic} dedup={dd} mirror={mir} {m}", w, {"cls_logits": 2.5, "neck_roi": 1.0},
                     ev.Hygiene(ic, dd, mir), m)
                    for w, m, ic, dd, mir in itertools.product(("v8n", "11n"), ("random", "pca"), (None, 0.35, 0.45),
                                                               (None, 0.5), (False, True))]
    print(f"{'variant':44s} {HEADER}")
    for label, w, rec, hyg, m in variants:
        print(f"{label:44s} {fmt(row(args.cache, w, rec, hyg, m, args.dims))}", flush=True)


if __name__ == "__main__":
    main()
