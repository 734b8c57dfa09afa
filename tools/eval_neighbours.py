"""The studies of issue 21 (docs/neighbours.md) on the detector outputs cached by tools/levers_cache.py and
tools/peer_cache.py: no detector runs here, so every row takes seconds.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python tools/eval_neighbours.py CACHE_DIR --study defaults

Protocols (all realistic: every detection the index hygiene keeps is indexed, a neighbour is right only when it matches
a labeled object of the query's class): ``bigger`` (coco128 + every other coco_extra_dev image indexed, the other half
queries; ``objsearch.evaluate.bigger_protocol``), ``cross`` (coco_extra_dev queries a coco128 index) and ``loo``
(coco128, leave-one-image-out); plus the matched protocol on coco128.

Studies:
  defaults     before (recipe cls_logits:1.5, no rerank) and after (the defaults now) on every protocol, per weights
  rerank       the rerank's levers: class weight of the search vectors, rerank dims, ratio, depth, mirror sample,
               and the plain reranks first tried (by the stored features, by a longer PCA): measured, not adopted
  same_class   same-class modes that use the class scores or the neighbours' classes (measured, not adopted)
  breakdown    per-class precision@5 and the kinds of misses on the bigger protocol, before and after
  peer         crop + YOLO.embed() (tools/peer_cache.py) against ours on the bigger and cross protocols
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from objsearch import evaluate as ev
from objsearch.detections import Detections
from objsearch.pooling import FEATURE_BLOCKS
from objsearch.rerank import column_scale
from objsearch.types import Hits

QUERY_CONF = 0.25
HYGIENE = ev.Hygiene(0.6, 0.5)
BEFORE = {"cls_logits": 1.5, "neck_roi": 1.0}
AFTER = {"cls_logits": 2.5, "neck_roi": 1.0}
RERANK_RECIPE = {"cls_logits": 0.5, "neck_roi": 1.0}
NAMES = [line.strip() for line in (Path(__file__).resolve().parents[2] / "shared" / "data" /
                                   "coco_ultralytics.names").read_text().splitlines()]


def load(cache: Path, weights: str, dataset: str, recipe: dict[str, float]) -> ev.LabeledSet:
    """A LabeledSet from the cache, its features made with ``recipe`` (mirror features too; class scores and the
    cache row in ``data``)."""
    z = np.load(cache / f"{weights}_{dataset}.npz")
    slices = {name: tuple(z["slices"][i]) for i, name in enumerate(FEATURE_BLOCKS)}

    def feats(f):
        return np.concatenate([f[:, slices[b][0]:slices[b][1]] * w for b, w in recipe.items()], 1).astype(np.float32)

    dets = Detections(z["orig_xyxy"], z["orig_conf"], z["orig_cls"], feats(z["orig_feat"]),
                      {"image_id": z["orig_img"].astype(np.int64), "mirror_features": feats(z["orig_mfeat"]),
                       "class_scores": z["orig_scores"], "cache_row": np.arange(len(z["orig_conf"]))})
    dets.data["true_class"] = ev.label_detections(dets.xyxy, dets.confidence, dets.data["image_id"], z["gt_xyxy"],
                                                  z["gt_cls"], z["gt_img"])
    views = {t: Detections(z[f"{t}_xyxy"], z[f"{t}_conf"], z[f"{t}_cls"], feats(z[f"{t}_feat"]),
                           {"image_id": z[f"{t}_img"].astype(np.int64), "cache_row": np.arange(len(z[f"{t}_conf"]))})
             for t in ev.TRANSFORMS}
    return ev.LabeledSet(dets, views, z["gt_xyxy"], z["gt_cls"], z["gt_img"], [str(n) for n in z["names"]])


def protocols(cache: Path, weights: str, recipe: dict[str, float], hygiene: ev.Hygiene = HYGIENE) \
        -> dict[str, ev.RealisticData]:
    c128, extra = load(cache, weights, "coco128", recipe), load(cache, weights, "extra", recipe)
    big_index, big_queries = ev.bigger_protocol(c128, extra)
    return {"bigger": ev.realistic(big_index, big_queries, QUERY_CONF, hygiene),
            "cross": ev.realistic(c128, extra, QUERY_CONF, hygiene),
            "loo": ev.realistic(c128, None, QUERY_CONF, hygiene),
            "matched": ev.matched_data(c128, QUERY_CONF)}


def rerank_for(recipe: dict[str, float], dims: int = 64, **kw) -> ev.Rerank:
    sizes = {"cls_logits": 80, "neck_roi": 448}
    return ev.Rerank(dims, column_scale({b: sizes[b] for b in recipe}, recipe, RERANK_RECIPE), **kw)


def run(data, rerank=None, dims=32) -> dict:
    if isinstance(data, ev.EvalData):
        return ev.score(data, dims, "pca", 0, rerank)
    return ev.score_realistic(data, dims, "pca", 0, rerank=rerank)


SEARCHER = ev.Searcher  # the library's (score_with swaps ev.Searcher for a while)
HEADER = "P@1   P@5   P@16  sP@5  false R@1   flip  0.75x jpeg60"


def fmt(r: dict) -> str:
    p, q, i = r["precision_at_k"], r["precision_at_k_same_class"], r["instance_recall_at_1"]
    false = r.get("false_neighbours_same_class", float("nan"))
    return (f"{p[1]:.3f} {p[5]:.3f} {p[16]:.3f} {q[5]:.3f} {false:.3f} {i['mean']:.3f} {i['hflip']:.3f} "
            f"{i['resize0.75']:.3f} {i['jpeg60']:.3f}")


def study_defaults(cache: Path, weights: list[str]) -> None:
    for w in weights:
        before, after = protocols(cache, w, BEFORE), protocols(cache, w, AFTER)
        mirrored = {"before": protocols(cache, w, BEFORE, ev.Hygiene(0.6, 0.5, True)),
                    "after": protocols(cache, w, AFTER, ev.Hygiene(0.6, 0.5, True))}
        print(f"{w}: {'protocol':8s} {'configuration':34s} {HEADER}")
        for name in before:
            print(f"{w}: {name:8s} {'before (cls 1.5, no rerank)':34s} {fmt(run(before[name]))}", flush=True)
            print(f"{w}: {name:8s} {'after (cls 2.5 + rerank 64)':34s} {fmt(run(after[name], rerank_for(AFTER)))}",
                  flush=True)
            if name != "matched":  # the matched protocol does not index mirrored features
                print(f"{w}: {name:8s} {'index_mirror before':34s} {fmt(run(mirrored['before'][name]))}", flush=True)
                print(f"{w}: {name:8s} {'index_mirror after (+ rerank 64)':34s} "
                      f"{fmt(run(mirrored['after'][name], rerank_for(AFTER)))}", flush=True)


class PlainRerank:
    """Measured, not adopted: candidates from the search vectors reordered by the distance in another space
    (the stored features themselves, or a longer PCA of them)."""

    def __init__(self, index: Detections, long: str, depth: int = 64):
        from objsearch.projection import make_projection

        self.base = SEARCHER(index, 32, "pca")
        self.long = (lambda x: x - index.features.mean(0)) if long == "features" else \
            make_projection("pca", int(long), 0).fit(index.features).transform
        self.vectors, self.depth = self.long(index.features), depth

    def search(self, features, k, *, query_class, class_id=None, exclude_image_id=None) -> Hits:
        hits = self.base.search(features, self.depth, query_class=query_class, class_id=class_id,
                                exclude_image_id=exclude_image_id)
        d = ((self.vectors[np.clip(hits.ids, 0, None)] - self.long(features)[:, None]) ** 2).sum(-1)
        order = np.argsort(np.where(hits.ids >= 0, d, np.inf), 1, kind="stable")[:, :k]
        return Hits(np.take_along_axis(hits.distances, order, 1), np.take_along_axis(hits.ids, order, 1))


def score_with(data: ev.RealisticData, make) -> dict:
    """score_realistic's numbers with a searcher made by ``make(index)``."""
    saved = ev.Searcher
    ev.Searcher = lambda index, *a, **kw: make(index)
    try:
        return ev.score_realistic(data, 32, "pca")
    finally:
        ev.Searcher = saved


def study_rerank(cache: Path, weights: str, protocol_names: list[str]) -> None:
    rows = []
    for cls in (1.5, 2.0, 2.5, 4.0):
        recipe = {"cls_logits": cls, "neck_roi": 1.0}
        rows.append((f"cls {cls}, no rerank", recipe, None))
        rows.append((f"cls {cls}, rerank 64", recipe, rerank_for(recipe)))
    for dims in (32, 128):
        rows.append((f"cls 2.5, rerank {dims}", AFTER, rerank_for(AFTER, dims)))
    for ratio in (0.8, 0.9, 1.0):
        rows.append((f"cls 2.5, rerank 64, ratio {ratio}", AFTER, rerank_for(AFTER, ratio=ratio)))
    for depth in (16, 32, 128):
        rows.append((f"cls 2.5, rerank 64, depth {depth}", AFTER, rerank_for(AFTER, depth=depth)))
    for sample in (8, 16, 64, 128, 10_000):
        rows.append((f"cls 2.5, rerank 64, mirror sample {sample}", AFTER, rerank_for(AFTER, sample_images=sample)))
    cached = {}
    for name in protocol_names:
        print(f"{name}: {'configuration':44s} {HEADER}")
        for label, recipe, rerank in rows:
            key = tuple(recipe.items())
            if key not in cached:
                cached[key] = protocols(cache, weights, recipe)
            print(f"{name}: {label:44s} {fmt(run(cached[key][name], rerank))}", flush=True)
        data = cached[tuple(BEFORE.items())][name]
        if isinstance(data, ev.RealisticData):
            for long in ("features", "128", "256"):
                r = score_with(data, lambda index, long=long: PlainRerank(index, long))
                print(f"{name}: {'cls 1.5, reorder 64 by ' + long:44s} {fmt(r)}", flush=True)


def study_same_class(cache: Path, weights: str) -> None:
    """Soft same-class modes against the hard filter (bigger and cross protocols, the defaults' vectors)."""
    for name, data in list(protocols(cache, weights, AFTER).items())[:2]:
        index, queries = data.index, data.queries
        searcher = ev.Searcher(index, 32, "pca", 0, rerank_for(AFTER), data.n_index_images)
        exclude = queries.data["image_id"] if data.exclude_same_image else None
        scores = queries.data["class_scores"]

        def precision(ids):
            returned = ids >= 0
            right = returned & (index.data["true_class"][np.clip(ids, 0, None)] == queries.data["true_class"][:, None])
            return ev.precision_right(right, returned, 5)

        def search(cls):
            return searcher.search(queries.features, 16, query_class=queries.class_id, class_id=cls,
                                   exclude_image_id=exclude)

        hard = search(queries.class_id)
        print(f"{name}: hard filter (today)                         same-class P@5 {precision(hard.ids):.3f}")
        wrong = queries.class_id != queries.data["true_class"]
        s = scores[wrong]
        t = queries.data["true_class"][wrong]
        rank = (s > s[np.arange(len(t)), t][:, None]).sum(1)
        ratio = s[np.arange(len(t)), t] / s.max(1)
        print(f"{name}: {int(wrong.sum())} of {len(queries)} query objects detected as another class; their labeled "
              f"class ranks {np.bincount(rank, minlength=4)[:4].tolist()} (1st..4th), score / top median "
              f"{np.median(ratio):.3f}")
        order = np.argsort(-scores, 1)
        for min_ratio in (0.2, 0.5):
            second = order[:, 1]
            ok = scores[np.arange(len(scores)), second] >= min_ratio * scores.max(1)
            h2 = search(np.where(ok, second, -1))
            ids = np.concatenate([hard.ids, np.where(ok[:, None], h2.ids, -1)], 1)
            dist = np.concatenate([hard.distances, np.where(ok[:, None], h2.distances, np.inf)], 1)
            merged = np.take_along_axis(ids, np.argsort(dist, 1, kind="stable")[:, :16], 1)
            print(f"{name}: top-2 classes when the 2nd scores >= {min_ratio} x the 1st   same-class P@5 "
                  f"{precision(merged):.3f} ({ok.mean():.3f} of the queries take a 2nd class)")
        agnostic = searcher.search(queries.features, 10, query_class=queries.class_id, exclude_image_id=exclude).ids
        votes = np.where(agnostic >= 0, index.class_id[np.clip(agnostic, 0, None)], -1)
        for below in (0.4, 0.6):
            counts = np.array([np.bincount(v[v >= 0], minlength=len(NAMES)) for v in votes])
            share = counts.max(1) / np.maximum((votes >= 0).sum(1), 1)
            cls = np.where((queries.confidence < below) & (share >= 0.6), counts.argmax(1), queries.class_id)
            print(f"{name}: the class of the 10 neighbours' majority when confidence < {below}     same-class P@5 "
                  f"{precision(search(cls).ids):.3f} (class right {np.mean(cls == queries.data['true_class']):.3f}, "
                  f"detected {np.mean(queries.class_id == queries.data['true_class']):.3f})")


def study_breakdown(cache: Path, weights: str) -> None:
    for label, recipe, rerank in (("before", BEFORE, None), ("after", AFTER, rerank_for(AFTER))):
        data = protocols(cache, weights, recipe)["bigger"]
        r = run(data, rerank)
        for mode in ("class_agnostic", "same_class"):
            b = r["miss_breakdown"][mode]
            print(f"{label}: {mode:14s} missed {b['miss_rate']:.3f} of the first 5: " +
                  ", ".join(f"{k} {b[k]:.2f}" for k in ev.MISS_KINDS))
            by = r["precision_at_5_by_class"][mode]
            common = sorted(by, key=lambda c: -by[c][0])[:10]
            worst = sorted((c for c in by if by[c][0] >= 5), key=lambda c: by[c][1])[:10]
            print(f"{label}: {mode:14s} most common: " + ", ".join(f"{NAMES[c]} {by[c][1]:.2f} ({by[c][0]})"
                                                                   for c in common))
            print(f"{label}: {mode:14s} worst (>= 5 queries): " + ", ".join(f"{NAMES[c]} {by[c][1]:.2f} ({by[c][0]})"
                                                                            for c in worst))


def load_peer(cache: Path, dataset: str) -> tuple[ev.LabeledSet, np.lib.npyio.NpzFile]:
    """The cached detections with the peer's crop embeddings as features (NaN where none was made)."""
    labeled = load(cache, "11n", dataset, AFTER)
    z = np.load(cache / f"peer_11n_{dataset}.npz")
    width = z["orig_embed"].shape[1]

    def swap(dets: Detections, view: str) -> Detections:
        out = np.full((len(dets), width), np.nan, np.float32)
        if f"{view}_rows" in z.files:
            rows = z[f"{view}_rows"]
            pos = np.clip(np.searchsorted(rows, dets.data["cache_row"]), 0, max(len(rows) - 1, 0))
            hit = (len(rows) > 0) & (rows[pos] == dets.data["cache_row"])
            out[hit] = z[f"{view}_embed"][pos[hit]]
        data = {k: v for k, v in dets.data.items() if k != "mirror_features"}
        return Detections(dets.xyxy, dets.confidence, dets.class_id, out, data)

    return ev.LabeledSet(swap(labeled.detections, "orig"), {t: swap(v, t) for t, v in labeled.views.items()},
                         labeled.gt_xyxy, labeled.gt_class, labeled.gt_image_id, labeled.names), z


def study_peer(cache: Path) -> None:
    (c128, z1), (extra, z2) = load_peer(cache, "coco128"), load_peer(cache, "extra")
    big = ev.bigger_protocol(c128, extra)
    ours = protocols(cache, "11n", AFTER)
    for name, (index_set, query_set) in (("bigger", big), ("cross", (c128, extra))):
        data = ev.realistic(index_set, query_set, QUERY_CONF, HYGIENE)
        for d in (32, 64):
            print(f"{name}: crop + YOLO.embed(), PCA {d:3d}        {fmt(run(data, None, d))}", flush=True)
        print(f"{name}: ours (defaults)                     {fmt(run(ours[name], rerank_for(AFTER)))}", flush=True)
    embed = np.concatenate([z1["embed_ms"], z2["embed_ms"]])
    own = np.concatenate([z1["ours_ms"], z2["ours_ms"]])
    passes = np.concatenate([z1["pass_ms"], z2["pass_ms"]])
    print(f"ms per object (medians, same run, 1 thread): YOLO.embed() of the crop {np.median(embed):.1f}, ours "
          f"{np.median(own):.3f} (pooling, on a {np.median(passes):.0f} ms detector pass shared by all objects); "
          f"ratio {np.median(own) / np.median(embed):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--study", default="defaults", choices=("defaults", "rerank", "same_class", "breakdown",
                                                                 "peer"))
    parser.add_argument("--weights", default="11n", help="comma-separated cache weights (11n, v8n)")
    parser.add_argument("--protocols", default="bigger,cross,loo,matched")
    args = parser.parse_args()
    weights = args.weights.split(",")
    if args.study == "defaults":
        study_defaults(args.cache, weights)
    elif args.study == "rerank":
        study_rerank(args.cache, weights[0], args.protocols.split(","))
    elif args.study == "same_class":
        study_same_class(args.cache, weights[0])
    elif args.study == "breakdown":
        study_breakdown(args.cache, weights[0])
    else:
        study_peer(args.cache)


if __name__ == "__main__":
    main()
