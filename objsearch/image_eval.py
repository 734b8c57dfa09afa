"""Whole-image retrieval quality on a folder of images with YOLO-format labels (``objsearch eval --mode image``).

Protocol
--------
* Every image is analysed once by the detector; its whole-image feature (``Detections.image_feature``, made by the
  same pass) is the evaluation index, one vector per image.
* **Image precision@k** (k = 1, 5, 10): for each image with at least one labeled object, the fraction of its k
  nearest *other* images that contain a labeled object of the query's *largest* labeled class (by box area).
* **Instance recall@1**: each image is analysed again after a horizontal flip, a 0.75x resize and JPEG quality 60;
  the query succeeds when its nearest image in the index is the original.
* Both metrics per projection dimension (a random projection fitted like the index's, seed 0) and on the raw
  features (``dims`` = ``"raw"``). Distances are Euclidean, as in search; exact brute force.
* **The peer**: ultralytics' ``YOLO.embed()`` on the same weights (a second network pass per image; vectors
  L2-normalised, then projected the same way), scored by the same code.
* **Cost**: ours is the marginal milliseconds the image vector adds to the detector pass that runs anyway
  (``StageTimes.image_feature``), next to the whole pass; the peer's is its whole ``embed`` call. The numbers are
  taken in the same run, one image after the other, so their ratio is what to compare.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from objsearch.evaluate import TRANSFORMS, apply_transform, label_path_for, list_labeled_images, read_yolo_labels
from objsearch.projection import make_projection
from objsearch.types import StageTimes

LOGGER = logging.getLogger(__name__)

IMAGE_PRECISION_KS = (1, 5, 10)


@dataclass
class ImageEvalData:
    """Whole-image vectors of an evaluation set, for one method (``name``).

    ``features`` (M, F) float32, one per image; ``queries[t]`` (M, F) float32, the same images after transform t;
    ``largest_class`` (M,) int64, the class of each image's largest labeled box (-1: no labels); ``classes`` a list
    of M sets of labeled class ids; ``ms_per_image`` the method's cost (see the module docstring) and
    ``pass_ms_per_image`` the whole detector pass it rides on (ours; NaN for the peer).
    """

    name: str
    features: np.ndarray
    queries: dict[str, np.ndarray]
    largest_class: np.ndarray
    classes: list[set]
    ms_per_image: float
    pass_ms_per_image: float = float("nan")
    paths: list[Path] = field(default_factory=list)


def largest_labeled_class(xyxy: np.ndarray, class_id: np.ndarray) -> int:
    """Class of the largest box by area (the first on ties); -1 when there are none."""
    if len(class_id) == 0:
        return -1
    area = (xyxy[:, 2] - xyxy[:, 0]).clip(0) * (xyxy[:, 3] - xyxy[:, 1]).clip(0)
    return int(class_id[int(np.argmax(area))])


def _labels(paths: list[Path], images: list[np.ndarray]) -> tuple[np.ndarray, list[set]]:
    largest, classes = [], []
    for path, image in zip(paths, images):
        xyxy, cls = read_yolo_labels(label_path_for(path), image.shape[1], image.shape[0])
        largest.append(largest_labeled_class(xyxy, cls))
        classes.append(set(int(c) for c in cls))
    return np.asarray(largest, np.int64), classes


def load_images(data_dir: Path, limit: int | None = None) -> tuple[list[Path], list[np.ndarray]]:
    """The readable images of a YOLO-format folder (sorted; unreadable ones logged and left out)."""
    paths, images = [], []
    for path in list_labeled_images(Path(data_dir))[:limit]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            LOGGER.warning("skipping unreadable image %s", path)
            continue
        paths.append(path)
        images.append(image)
    return paths, images


def collect_ours(detector, paths: list[Path], images: list[np.ndarray], progress=None) -> ImageEvalData:
    """Our whole-image vectors: ``detector(image).image_feature`` of every image and of its distortions."""
    feats, ms, pass_ms = [], [], []
    queries = {t: [] for t in TRANSFORMS}
    for image in images:
        detector.warmup(image.shape)
        timings = StageTimes()
        t0 = time.perf_counter()
        feats.append(detector(image, timings=timings).image_feature)
        pass_ms.append((time.perf_counter() - t0) * 1e3)
        ms.append(timings.image_feature)
        for t in TRANSFORMS:
            distorted, _ = apply_transform(image, t)
            detector.warmup(distorted.shape)
            queries[t].append(detector(distorted).image_feature)
        if progress:
            progress(1)
    largest, classes = _labels(paths, images)
    return ImageEvalData("objsearch (same pass)", np.stack(feats), {t: np.stack(q) for t, q in queries.items()},
                         largest, classes, float(np.mean(ms)), float(np.mean(pass_ms)), list(paths))


def collect_embed(weights: str, paths: list[Path], images: list[np.ndarray], *, imgsz: int = 640,
                  device: str = "cpu", progress=None) -> ImageEvalData:
    """The peer: ultralytics' ``YOLO(weights).embed(image)`` (its default layer), L2-normalised."""
    from objsearch.detector import yolo_embedder  # ultralytics is imported only in detector.py

    embed = yolo_embedder(weights, imgsz=imgsz, device=device)
    feats, ms = [], []
    queries = {t: [] for t in TRANSFORMS}
    warm: set = set()
    for image in images:
        if image.shape not in warm:  # a warm-up pass per input shape, as ours gets
            embed(image)
            warm.add(image.shape)
        t0 = time.perf_counter()
        feats.append(embed(image))
        ms.append((time.perf_counter() - t0) * 1e3)
        for t in TRANSFORMS:
            distorted, _ = apply_transform(image, t)
            queries[t].append(embed(distorted))
        if progress:
            progress(1)
    largest, classes = _labels(paths, images)

    def unit(x):
        x = np.stack(x).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return ImageEvalData("YOLO.embed()", unit(feats), {t: unit(q) for t, q in queries.items()}, largest, classes,
                         float(np.mean(ms)), paths=list(paths))


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T


def score_images(data: ImageEvalData, dims: int | None, random_state: int = 0) -> dict:
    """Image precision@k and instance recall@1 of ``data`` at ``dims`` (None: the raw features).

    Returns a dict: ``dims``, ``precision_at_k`` {k: value}, ``instance_recall_at_1`` {transform: value, "mean"}.
    """
    X = data.features
    if dims is None:
        project = lambda v: v  # noqa: E731
    else:
        proj = make_projection("random", int(dims), random_state).fit(X)
        project = proj.transform
    base = project(X)
    n = len(base)
    d = _sq_dist(base, base)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    out = {"dims": "raw" if dims is None else int(dims), "precision_at_k": {}, "instance_recall_at_1": {}}
    queries = np.flatnonzero(data.largest_class >= 0)
    for k in IMAGE_PRECISION_KS:
        kk = min(k, n - 1)
        if len(queries) == 0 or kk < 1:
            out["precision_at_k"][k] = float("nan")
            continue
        hits = [sum(data.largest_class[q] in data.classes[j] for j in order[q, :kk]) / kk for q in queries]
        out["precision_at_k"][k] = float(np.mean(hits))
    recalls = []
    for t, q in data.queries.items():
        nearest = np.argmin(_sq_dist(project(q), base), axis=1)
        out["instance_recall_at_1"][t] = float((nearest == np.arange(n)).mean()) if n else float("nan")
        recalls.append(out["instance_recall_at_1"][t])
    out["instance_recall_at_1"]["mean"] = float(np.mean(recalls)) if recalls else float("nan")
    return out


def format_table(rows: list[tuple[ImageEvalData, dict]]) -> list[str]:
    """Markdown table lines: one row per (method, dims)."""
    ks = IMAGE_PRECISION_KS
    head = (["method", "dims"] + [f"P@{k}" for k in ks] + [f"R@1 {t}" for t in TRANSFORMS]
            + ["R@1 mean", "ms/image"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for data, r in rows:
        cells = [data.name, str(r["dims"])] + [f"{r['precision_at_k'][k]:.3f}" for k in ks] \
            + [f"{r['instance_recall_at_1'][t]:.3f}" for t in TRANSFORMS] \
            + [f"{r['instance_recall_at_1']['mean']:.3f}", f"{data.ms_per_image:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
