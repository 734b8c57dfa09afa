"""``objsearch eval`` as a use case: check the labeled folders, run the detector over them, score every protocol and
dimension, and return a report that the command line only prints (``to_dict()`` for ``--json``, ``lines()`` for
people).

The metrics themselves live in ``objsearch.evaluate`` (object protocols) and ``objsearch.image_eval`` (``--mode
image``); this module orders them, as the command runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from objsearch.errors import EmptyFolderError, ObjsearchError

PROTOCOLS = ("realistic", "matched", "both")

#: ``progress(stage, done, total, n_objects)``: ``stage`` names what is being read (``eval coco128``), so that a
#: shell can show one bar per stage.
Progress = Optional[Callable[[str, int, int, int], None]]


@dataclass
class ObjectEvalReport:
    """What ``objsearch eval`` (``--mode objects``) measured.

    ``realistic`` holds (protocol name, one result per dims) in the order they ran; ``matched`` the matched
    protocol's data (``objsearch.evaluate.EvalData``) and ``results`` its scores per dims, None when not run. Each
    result is the dict of ``objsearch.evaluate.score_realistic`` or ``score``, with ``without_rerank`` beside it when
    a rerank is configured. The remaining fields describe the run (weights, feature recipe, hygiene, rerank).
    """

    data_dir: Path
    queries: Path | None
    weights: str
    feature_recipe: dict
    n_features: int
    class_names: list[str]
    projection: str
    conf: float
    collect_conf: float
    index_conf: float | None
    dedup_iou: float | None
    index_mirror: bool
    rerank_dims: int | None
    rerank_recipe: str | None
    realistic: list[tuple[str, list[dict]]] = field(default_factory=list)
    matched: object | None = None
    results: list[dict] | None = None
    protocol: str = "both"

    def to_dict(self) -> dict:
        """The ``eval --json`` object."""
        out = {
            "data_dir": str(self.data_dir), "queries": None if self.queries is None else str(self.queries),
            "weights": self.weights, "feature_recipe": self.feature_recipe, "projection": self.projection,
            "conf": self.conf, "index_conf": self.index_conf, "dedup_iou": self.dedup_iou,
            "index_mirror": self.index_mirror, "rerank_dims": self.rerank_dims, "rerank_recipe": self.rerank_recipe,
        }
        if self.protocol in ("realistic", "both"):
            out["realistic"] = {name: results for name, results in self.realistic}
        if self.matched is not None:
            m = self.matched
            out.update({"n_images": m.n_images, "n_ground_truth": m.n_ground_truth, "n_detections": m.n_detections,
                        "n_matched": len(m.objects), "coverage": m.coverage, "results": self.results})
        return out

    def lines(self) -> list[str]:
        """The report as the tables ``objsearch eval`` prints."""
        from objsearch.evaluate import format_misses

        index_conf = self.conf if self.index_conf is None else max(self.conf, self.index_conf)  # IndexPolicy's
        out = [f"{self.weights}, features {self.feature_recipe['blocks']} ({self.n_features}-d)"
               f"{' + mirrored in the index' if self.index_mirror else ''}, {self.projection} projection; "
               f"query conf {self.conf:g}, index conf {index_conf:g}, duplicate suppression "
               f"{'IoU ' + format(self.dedup_iou, 'g') if self.dedup_iou else 'off'}"
               + (f"; rerank vectors {self.rerank_dims}-d {self.rerank_recipe}" if self.rerank_dims is not None
                  else "")]
        for name, results in self.realistic:
            r0 = results[0]
            out.append(f"realistic protocol, {r0['n_index']} objects indexed ({r0['n_index_unmatched']} matching no "
                       f"labeled object), {r0['n_queries']} query objects, {name}:")
            out.append(f"{'dims':>9} | {'P@1':>6} {'P@5':>6} {'P@16':>6} | {'same P@1':>8} {'P@5':>6} {'P@16':>6} "
                       f"{'false':>6} | {'inst R@1':>8} {'flip':>6} {'0.75x':>6} {'jpeg60':>6}")
            for label, row in _rows(results):
                p, s, i = row["precision_at_k"], row["precision_at_k_same_class"], row["instance_recall_at_1"]
                out.append(f"{label:>9} | {p[1]:6.3f} {p[5]:6.3f} {p[16]:6.3f} | {s[1]:8.3f} {s[5]:6.3f} "
                           f"{s[16]:6.3f} {row['false_neighbours_same_class']:6.3f} | {i['mean']:8.3f} "
                           f"{i['hflip']:6.3f} {i['resize0.75']:6.3f} {i['jpeg60']:6.3f}")
            if name == self.realistic[0][0]:  # the first (with --queries: the bigger) protocol's misses and classes
                out += ["  " + line for line in format_misses(r0, self.class_names)]
        if self.rerank_dims is not None:
            out.append("('plain': the same search vectors without the rerank)")
        if self.matched is not None:
            data = self.matched
            out.append(f"matched protocol on {self.data_dir.name}: {data.n_images} images, {data.n_ground_truth} "
                       f"ground-truth objects, {data.n_detections} detections, {len(data.objects)} matched at "
                       f"IoU>=0.5 (the index)")
            out.append("re-detected after distortion: " + ", ".join(f"{t} {v:.3f}" for t, v in data.coverage.items()))
            out.append(f"{'dims':>9} | {'P@1':>6} {'P@5':>6} {'P@16':>6} | {'same P@1':>8} {'P@5':>6} {'P@16':>6} | "
                       f"{'inst R@1':>8} {'flip':>6} {'0.75x':>6} {'jpeg60':>6} | {'ms/obj':>7}")
            for label, row in _rows(self.results):
                p, s, i = row["precision_at_k"], row["precision_at_k_same_class"], row["instance_recall_at_1"]
                out.append(f"{label:>9} | {p[1]:6.3f} {p[5]:6.3f} {p[16]:6.3f} | {s[1]:8.3f} {s[5]:6.3f} "
                           f"{s[16]:6.3f} | {i['mean']:8.3f} {i['hflip']:6.3f} {i['resize0.75']:6.3f} "
                           f"{i['jpeg60']:6.3f} | {row['query_ms_per_object']:7.4f}")
        return out


def _rows(results: list[dict]):
    """(label, result) of each dimension's result, followed by the same search without the rerank when measured."""
    for r in results:
        yield str(r["dims"]), r
        if r.get("without_rerank") is not None:
            yield f"{r['dims']} plain", r["without_rerank"]


@dataclass
class ImageEvalReport:
    """What ``objsearch eval --mode image`` measured: ``rows`` pairs each method's data
    (``objsearch.image_eval.ImageEvalData``, ours first, then ``YOLO.embed()`` when compared) with its scores at one
    dims (``score_images``; ``dims`` None: the raw features)."""

    data_dir: Path
    weights: str
    image_recipe: dict
    n_image_features: int
    n_images: int
    n_queries: int
    methods: list
    rows: list[tuple[object, dict]]

    def to_dict(self) -> dict:
        """The ``eval --mode image --json`` object."""
        return {
            "data_dir": str(self.data_dir), "weights": self.weights, "mode": "image",
            "image_recipe": self.image_recipe, "n_images": self.n_images, "n_queries": self.n_queries,
            "methods": [{"name": m.name, "n_features": int(m.features.shape[1]), "ms_per_image": m.ms_per_image,
                         "pass_ms_per_image": m.pass_ms_per_image if math.isfinite(m.pass_ms_per_image) else None}
                        for m in self.methods],
            "results": [{"method": m.name, **r} for m, r in self.rows],
        }

    def lines(self) -> list[str]:
        """The summary and table ``objsearch eval --mode image`` prints."""
        from objsearch.image_eval import format_table

        ours, peer = self.methods[0], self.methods[1] if len(self.methods) > 1 else None
        return [f"{self.n_images} images ({self.n_queries} with labels), {self.weights}, image recipe "
                f"{self.image_recipe['blocks']} ({self.n_image_features}-d)",
                f"ours: {ours.ms_per_image:.2f} ms/image added to a {ours.pass_ms_per_image:.0f} ms detector pass "
                f"(no extra pass)" + (f"; YOLO.embed(): {peer.ms_per_image:.0f} ms/image (a second pass, "
                                      f"{peer.features.shape[1]}-d)" if peer is not None else ""),
                *format_table(self.rows)]


def check_labeled_folders(folders: list[Path]) -> list[list[Path]]:
    """The images of each labeled folder (ultralytics' layout: ``images/`` and ``labels/``).

    Raises
    ------
    EmptyFolderError
        (exit 2) For a folder with no images, or with images but no YOLO label files.
    """
    from objsearch.evaluate import label_path_for, list_labeled_images

    listed = []
    for folder in folders:
        images = list_labeled_images(folder) if folder.is_dir() else []
        if not images:
            raise EmptyFolderError(f"{folder} holds no images (expected images/ and labels/ as ultralytics lays them "
                                   "out)")
        if not any(label_path_for(p).is_file() for p in images):
            raise EmptyFolderError(f"{folder} has no YOLO labels (expected labels/ next to images/, one .txt per "
                                   "image)")
        listed.append(images)
    return listed


def run_eval(data_dir: Path, cfg: dict, dims: list[int], *, queries: Path | None = None, protocol: str = "both",
             mode: str = "objects", limit: int | None = None, peer: bool = True,
             progress: Progress = None) -> ObjectEvalReport | ImageEvalReport:
    """Evaluate retrieval on the labeled folder ``data_dir`` with the configuration ``cfg`` at each of ``dims``.

    Parameters
    ----------
    queries : a second labeled folder whose objects query the index (object protocols only).
    protocol : ``realistic``, ``matched`` or ``both`` (object protocols).
    mode : ``objects`` (``ObjectEvalReport``) or ``image`` (whole images, ``ImageEvalReport``).
    limit, peer : ``--mode image``: the first ``limit`` images only; also score ultralytics' ``YOLO.embed()``.
    progress : see ``Progress``.

    Raises
    ------
    ObjsearchError
        For an unknown protocol, ``queries`` with ``mode="image"``, or a folder with no readable image.
    EmptyFolderError
        For a folder without images or labels (``check_labeled_folders``).
    """
    if protocol not in PROTOCOLS:
        raise ObjsearchError(f"--protocol must be realistic, matched or both, got {protocol!r}")
    folders = [data_dir] + ([queries] if queries is not None else [])
    listed = check_labeled_folders(folders)
    if mode == "image":
        if queries is not None:
            raise ObjsearchError("--queries goes with the object protocols, not --mode image")
        return _run_image_eval(data_dir, cfg, dims, limit=limit, peer=peer, progress=progress)
    return _run_object_eval(folders, listed, cfg, dims, protocol=protocol, progress=progress)


def _run_object_eval(folders: list[Path], listed: list[list[Path]], cfg: dict, dims: list[int], *, protocol: str,
                     progress: Progress) -> ObjectEvalReport:
    from objsearch import evaluate as ev
    from objsearch.hygiene import IndexPolicy
    from objsearch.provenance import load_detector

    detector = load_detector(cfg)
    hygiene = IndexPolicy.from_config(cfg)
    rerank = ev.rerank_settings(detector, cfg)
    conf = float(cfg["conf"])
    collect_conf = min(conf, conf if hygiene.index_conf is None else float(hygiene.index_conf))

    def detect(image, conf, mirror=False):
        return detector.detect_batch([image], conf=conf, mirror=mirror)[0]

    sets = []
    for folder, images in zip(folders, listed):
        state = {"done": 0, "objects": 0}
        stage = f"eval {folder.name}"

        def step(n_objects, images=images, state=state, stage=stage):
            state["done"] += 1
            state["objects"] += n_objects
            if progress is not None:
                progress(stage, state["done"], len(images), state["objects"])

        sets.append(ev.collect_labeled(detect, images, conf=collect_conf, mirror=hygiene.mirror or rerank is not None,
                                       progress=step))
    method, seed = cfg["projection"], cfg["seed"]
    data_dir, queries = folders[0], folders[1] if len(folders) > 1 else None
    report = ObjectEvalReport(
        data_dir=data_dir, queries=queries, weights=Path(str(detector.weights_path)).name,
        feature_recipe=detector.feature_recipe(), n_features=detector.n_features, class_names=detector.names,
        projection=method, conf=conf, collect_conf=collect_conf, index_conf=hygiene.index_conf,
        dedup_iou=hygiene.dedup_iou, index_mirror=hygiene.mirror, rerank_dims=None if rerank is None else rerank.dims,
        rerank_recipe=None if rerank is None else cfg["rerank_recipe"], protocol=protocol)

    def both(score, data, d):
        """The configuration's numbers, with those of the same search without the rerank beside them."""
        result = score(data, d, method, seed, rerank=rerank)
        if rerank is not None:
            result["without_rerank"] = score(data, d, method, seed)
        return result

    if protocol in ("realistic", "both"):
        if queries is not None:
            big_index, big_queries = ev.bigger_protocol(sets[0], sets[1])
            data = ev.realistic(big_index, big_queries, conf, hygiene)
            report.realistic.append((f"bigger: {data_dir.name} + every other image of {queries.name} indexed, the "
                                     "others query", [both(ev.score_realistic, data, d) for d in dims]))
            data = ev.realistic(sets[0], sets[1], conf, hygiene)
            report.realistic.append(("queries from " + queries.name,
                                     [both(ev.score_realistic, data, d) for d in dims]))
        data = ev.realistic(sets[0], None, conf, hygiene)
        report.realistic.append((f"leave-one-image-out on {data_dir.name}",
                                 [both(ev.score_realistic, data, d) for d in dims]))
    if protocol in ("matched", "both"):
        report.matched = ev.matched_data(sets[0], conf)
        report.results = [both(ev.score, report.matched, d) for d in dims]
    return report


def _run_image_eval(data_dir: Path, cfg: dict, dims: list[int], *, limit: int | None, peer: bool,
                    progress: Progress) -> ImageEvalReport:
    """Ours (the image vector of the detector pass) and, with ``peer``, ``YOLO.embed()``."""
    from objsearch import image_eval as ie
    from objsearch.provenance import load_detector

    detector = load_detector(cfg)
    paths, pictures = ie.load_images(data_dir, limit)
    if not paths:
        raise ObjsearchError(f"{data_dir} holds no readable images")
    total = len(paths) * (2 if peer else 1)
    state = {"done": 0}

    def step(n):
        state["done"] += n
        if progress is not None:
            progress("eval", state["done"], total, 0)

    methods = [ie.collect_ours(detector, paths, pictures, progress=step)]
    if peer:
        methods.append(ie.collect_embed(detector.weights_path, paths, pictures, imgsz=detector.imgsz,
                                        device=cfg["device"], progress=step))
    rows = [(m, ie.score_images(m, d, cfg["seed"])) for m in methods for d in [*dims, None]]
    return ImageEvalReport(data_dir=data_dir, weights=Path(str(detector.weights_path)).name,
                           image_recipe=detector.image_feature_recipe(), n_image_features=detector.n_image_features,
                           n_images=len(paths), n_queries=int((methods[0].largest_class >= 0).sum()),
                           methods=methods, rows=rows)
