"""Precision and recall of ``objsearch duplicates`` on folders with known near-duplicates, and its time at scale.

1. **Made folder** (in a temporary directory, never in the repository): coco128's 128 images; for the first
   ``--n-sources`` of them four copies each: re-encoded (JPEG quality 40), resized (0.5x), flipped (horizontally),
   cropped 10% (5% off each side). An image's group is its source. Objects: an object of a copy is the duplicate of
   the original's object of the same class whose box, mapped back through the copy's transform, overlaps it at
   IoU >= 0.5 (and of that object's other copies).
2. **Real video frames**: the three clips of ``../shared/data/video`` sampled at ``--video-fps``, with coco128 as
   distractors; two frames of one clip are near-duplicates (recall counts consecutive frames, precision counts
   pairs from one clip).
3. **Scale** (``--large INDEX``, e.g. ``tools/make_large_index.py``'s SYNTHETIC 376k-object index): the time of
   ``find_duplicates --objects`` (``auto``: faiss range searches, an inverted file for large classes), against the
   exact answer (a brute-force faiss range search per class) in the same run: the time ratio, and the recall of
   the pairs against exact.

Pairwise precision and recall (every pair inside a predicted group against every pair inside a true group), for a
sweep of thresholds; the defaults of ``objsearch.duplicates.DEFAULT_THRESHOLD`` are marked.

Usage::

    python tools/eval_duplicates.py [--n-sources 64] [--video-fps 1] [--large /tmp/large.h5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _common import DATA

VARIANTS = ("reencoded", "resized", "flipped", "cropped")


def make_variant(image: np.ndarray, kind: str) -> tuple[np.ndarray, dict]:
    """(copy, how to map its boxes back to the original: scale, flip width, crop offset)."""
    h, w = image.shape[:2]
    if kind == "reencoded":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR), {"scale": 1.0, "flip_w": 0, "dx": 0, "dy": 0}
    if kind == "resized":
        return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA), \
            {"scale": w / (w // 2), "flip_w": 0, "dx": 0, "dy": 0}
    if kind == "flipped":
        return image[:, ::-1].copy(), {"scale": 1.0, "flip_w": w, "dx": 0, "dy": 0}
    dx, dy = round(0.05 * w), round(0.05 * h)
    return image[dy:h - dy, dx:w - dx].copy(), {"scale": 1.0, "flip_w": 0, "dx": dx, "dy": dy}


def back_to_original(xyxy: np.ndarray, how: dict) -> np.ndarray:
    out = xyxy.astype(np.float64) * how["scale"]
    if how["flip_w"]:
        out = np.stack([how["flip_w"] - out[:, 2], out[:, 1], how["flip_w"] - out[:, 0], out[:, 3]], 1)
    out[:, [0, 2]] += how["dx"]
    out[:, [1, 3]] += how["dy"]
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def pairs_of(groups) -> set[tuple[int, int]]:
    out = set()
    for g in groups:
        out.update(itertools.combinations(sorted(int(i) for i in g), 2))
    return out


def score(predicted: set, true: set) -> tuple[float, float]:
    hit = len(predicted & true)
    return (hit / len(predicted) if predicted else 1.0), (hit / len(true) if true else 1.0)


def build_folder(folder: Path, n_sources: int) -> dict[str, tuple[str, dict | None]]:
    """Write the made folder; returns {file name: (source name, transform or None for an original)}."""
    folder.mkdir(parents=True)
    truth = {}
    for i, p in enumerate(sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))):
        shutil.copy(p, folder / p.name)
        truth[p.name] = (p.name, None)
        if i >= n_sources:
            continue
        image = cv2.imread(str(p))
        for kind in VARIANTS:
            copy, how = make_variant(image, kind)
            name = f"{p.stem}-{kind}.jpg"
            cv2.imwrite(str(folder / name), copy, [cv2.IMWRITE_JPEG_QUALITY, 95])
            truth[name] = (p.name, how)
    return truth


def truth_groups(catalog, truth) -> tuple[list, list]:
    """(image groups as media-id lists, object groups as object-id lists) of the made folder."""
    by_source: dict[str, list[int]] = {}
    media_of = dict(zip(catalog.media_path, catalog.media_id.tolist()))
    for name, (source, _) in truth.items():
        by_source.setdefault(source, []).append(media_of[name])
    image_groups = [g for g in by_source.values() if len(g) > 1]
    object_groups = []
    for source, members in by_source.items():
        if len(members) < 2:
            continue
        orig = np.flatnonzero(catalog.object_media_id == media_of[source])
        keys = {int(catalog.object_id[r]): [int(catalog.object_id[r])] for r in orig}
        for name, (src, how) in truth.items():
            if src != source or how is None:
                continue
            rows = np.flatnonzero(catalog.object_media_id == media_of[name])
            if not len(rows) or not len(orig):
                continue
            overlap = iou(back_to_original(catalog.xyxy[rows], how), catalog.xyxy[orig].astype(np.float64))
            overlap[catalog.class_id[rows][:, None] != catalog.class_id[orig][None, :]] = 0
            used = set()
            for r in np.argsort(-overlap.max(1)):  # one-to-one, best overlaps first
                j = int(np.argmax(np.where([k in used for k in range(len(orig))], -1, overlap[r])))
                if overlap[r, j] >= 0.5 and j not in used:
                    used.add(j)
                    keys[int(catalog.object_id[orig[j]])].append(int(catalog.object_id[rows[r]]))
        object_groups += [g for g in keys.values() if len(g) > 1]
    return image_groups, object_groups


def sweep(catalog, kind: str, true_pairs: set, thresholds, default: float, pair_filter=None) -> None:
    from objsearch.duplicates import find_duplicates

    print(f"  {'threshold':>9} {'groups':>6} {'pairs':>6} {'precision':>9} {'recall':>6}")
    for t in sorted(set(thresholds) | {default}):
        report = find_duplicates(catalog, kind=kind, threshold=t)
        predicted = pairs_of(g.ids for g in report.groups)
        if pair_filter is not None:
            p, r = pair_filter(predicted)
        else:
            p, r = score(predicted, true_pairs)
        mark = "  <- default" if t == default else ""
        print(f"  {t:9.3f} {len(report.groups):6d} {len(predicted):6d} {p:9.3f} {r:6.3f}{mark}")


def _ready(index: Path) -> bool:
    from objsearch.catalog import Catalog

    if not index.exists():
        return False
    with Catalog(index) as catalog:
        return catalog.state == "ready"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sources", type=int, default=64)
    parser.add_argument("--video-fps", type=float, default=1.0)
    parser.add_argument("--large", type=Path, help="a large index for the timing at scale")
    parser.add_argument("--keep", type=Path, help="build the folders and indexes here (reused when present)")
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args()

    from objsearch.analysis import analyze
    from objsearch.catalog import Catalog
    from objsearch.config import load_config
    from objsearch.duplicates import DEFAULT_THRESHOLD

    tmp = tempfile.TemporaryDirectory()
    root = args.keep or Path(tmp.name)
    folder, index = root / "made", root / "made.h5"
    truth_file = root / "made-truth.json"
    if not truth_file.exists():
        truth = build_folder(folder, args.n_sources)
        truth_file.write_text(json.dumps(truth))
    if not _ready(index):  # analysed now, or an interrupted analysis resumed
        t0 = time.perf_counter()
        summary = analyze(folder, index, load_config(None))
        print(f"made folder: {summary.n_images} images, {summary.n_objects} objects, analyzed in "
              f"{time.perf_counter() - t0:.0f} s")
    truth = {name: tuple(v) for name, v in json.loads(truth_file.read_text()).items()}
    with Catalog(index) as catalog:
        image_groups, object_groups = truth_groups(catalog, truth)
        print(f"\nmade folder ({len(catalog.media_id)} images, {len(image_groups)} true groups of "
              f"{1 + len(VARIANTS)}; {len(catalog.object_id)} objects, {len(object_groups)} true object groups)")
        print(" images (raw whole-image features):")
        sweep(catalog, "images", pairs_of(image_groups), [0.14, 0.18, 0.2, 0.24, 0.26, 0.3],
              DEFAULT_THRESHOLD["images"])
        print(" objects (object vectors, 32 dims, same class, other image):")
        sweep(catalog, "objects", pairs_of(object_groups), [0.2, 0.25, 0.3, 0.35, 0.36, 0.37, 0.38, 0.39, 0.4, 0.5],
              DEFAULT_THRESHOLD["objects"])
        for variant in VARIANTS:  # recall per kind of copy at the default thresholds
            from objsearch.duplicates import find_duplicates

            media_of = dict(zip(catalog.media_path, catalog.media_id.tolist()))
            pairs = {tuple(sorted((media_of[src], media_of[name]))) for name, (src, how) in truth.items()
                     if how is not None and name.endswith(f"-{variant}.jpg")}
            got = pairs_of(g.ids for g in find_duplicates(catalog, kind="images").groups)
            print(f"  images, {variant}: recall {len(got & pairs) / len(pairs):.3f} (original-copy pairs)")
        objects_found = pairs_of(g.ids for g in find_duplicates(catalog, kind="objects").groups)
        media_of_object = dict(zip(catalog.object_id.tolist(), catalog.object_media_id.tolist()))
        path_of = dict(zip(catalog.media_id.tolist(), catalog.media_path))
        for variant in VARIANTS:  # objects: pairs of an original's object and its copy in this kind of copy
            pairs = {p for p in pairs_of(object_groups)
                     if {path_of[media_of_object[i]].endswith(f"-{variant}.jpg") for i in p} == {False, True}
                     and any(truth[path_of[media_of_object[i]]][1] is None for i in p)}
            print(f"  objects, {variant}: recall {len(objects_found & pairs) / max(len(pairs), 1):.3f} "
                  f"({len(pairs)} original-copy pairs)")

    if not args.skip_video:
        vfolder, vindex = root / "video", root / "video.h5"
        if not vfolder.exists():
            vfolder.mkdir(parents=True)
            for p in sorted((DATA / "video").glob("*.mp4")):
                shutil.copy(p, vfolder / p.name)
            shutil.copytree(DATA / "coco128" / "images" / "train2017", vfolder / "coco128")
        if not _ready(vindex):
            t0 = time.perf_counter()
            summary = analyze(vfolder, vindex, load_config(None, video_fps=args.video_fps))
            print(f"\nvideo folder: {summary.n_images} media items analyzed in {time.perf_counter() - t0:.0f} s")
        with Catalog(vindex) as catalog:
            clip = np.array([p if p.endswith(".mp4") else "" for p in catalog.media_path])
            frame = catalog.media_frame_index
            ids = catalog.media_id
            consecutive = set()
            for name in sorted(set(clip) - {""}):
                rows = np.flatnonzero(clip == name)
                rows = rows[np.argsort(frame[rows])]
                consecutive.update(tuple(sorted((int(ids[a]), int(ids[b])))) for a, b in zip(rows[:-1], rows[1:]))
            clip_of = dict(zip(ids.tolist(), clip.tolist()))

            def video_score(predicted):
                same = {p for p in predicted if clip_of[p[0]] and clip_of[p[0]] == clip_of[p[1]]}
                return (len(same) / len(predicted) if predicted else 1.0), \
                    len(predicted & consecutive) / len(consecutive)

            print(f"\nreal video frames ({int((clip != '').sum())} frames of 3 clips at {args.video_fps} fps, "
                  f"{int((clip == '').sum())} coco128 images as distractors; precision: pairs from one clip, "
                  f"recall: consecutive frames)")
            sweep(catalog, "images", set(), [0.1, 0.14, 0.18, 0.2, 0.24, 0.26, 0.3],
                  DEFAULT_THRESHOLD["images"], pair_filter=video_score)

    if args.large:
        import faiss

        from objsearch.duplicates import _ivf_pairs, find_duplicates

        with Catalog(args.large) as catalog:
            t0 = time.perf_counter()
            report = find_duplicates(catalog, kind="objects")
            t1 = time.perf_counter()
            vectors, cls, img = catalog.vectors(32), catalog.class_id, catalog.object_media_id
            found = {tuple(p) for p in _ivf_pairs(vectors, cls, img, report.threshold, 16, None)[0].tolist()}
            exact = set()  # the exact answer: brute-force range search per class
            t2 = time.perf_counter()
            for c in np.unique(cls):
                rows = np.flatnonzero(cls == c)
                flat = faiss.IndexFlatL2(vectors.shape[1])
                flat.add(np.ascontiguousarray(vectors[rows]))
                lims, _, j = flat.range_search(np.ascontiguousarray(vectors[rows]), report.threshold ** 2)
                q = np.repeat(np.arange(len(rows)), np.diff(lims.astype(np.int64)))
                a, b = rows[q], rows[j.astype(np.int64)]
                keep = (a < b) & (img[a] != img[b])
                exact.update(zip(a[keep].tolist(), b[keep].tolist()))
            t3 = time.perf_counter()
        recall = len(found & exact) / len(exact) if exact else 1.0
        print(f"\nscale: {report.n_items} objects ({args.large.name}), threshold {report.threshold}: "
              f"find_duplicates --objects {t1 - t0:.1f} s ({report.method}; {len(report.groups)} groups, "
              f"{report.n_pairs} pairs); the exact per-class brute-force range search {t3 - t2:.1f} s "
              f"({len(exact)} pairs); ratio {(t1 - t0) / (t3 - t2):.2f}; pair recall against exact {recall:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
