"""What an index holds and what a job did, said once for every shell.

``IndexSummary`` is an index's own summary (counts, classes, recipe, projection, model, size on disk): ``objsearch
info`` prints its ``lines()``, the web server's ``GET /api/info`` answers its ``to_dict()``, and the desktop app shows
its ``headline()``. ``job_lines`` is the one line (and the skipped files) that ``analyze``, ``add``, ``sync`` and
``watch`` print after a job (``objsearch.analysis.JobSummary``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from objsearch.types import printable


def count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``0 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass
class IndexSummary:
    """An index file's summary, read from an open ``objsearch.catalog.Catalog`` (``summarize``).

    ``classes`` maps each detected class name to its number of live objects, most first (ties in class order);
    ``roots`` holds one line per root folder (``objsearch.roots.Roots.describe``); ``size_bytes`` is the file's size
    on disk (None when it cannot be read); ``config`` is the resolved configuration stored in the index.
    """

    path: Path
    format: str | None
    format_version: int
    created: str | None
    generation: int
    state: str
    n_images: int
    n_frames: int
    n_videos: int
    n_skipped: int
    base_dir: str
    n_objects: int
    classes: dict[str, int]
    feature_recipe: object
    config: dict
    dims: list[int]
    rerank_dims: int | None
    has_image_vectors: bool
    image_recipe: dict
    image_dims: object
    model: str | None
    weights_sha256: str
    size_bytes: int | None
    roots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The fields ``objsearch info`` prints, as a JSON-ready dict (``GET /api/info``)."""
        return {
            "index": printable(str(self.path)), "format": self.format, "format_version": self.format_version,
            "created": self.created, "generation": self.generation, "state": self.state, "images": self.n_images,
            "skipped": self.n_skipped, "base_dir": printable(self.base_dir), "objects": self.n_objects,
            "classes": dict(self.classes), "feature_recipe": self.feature_recipe,
            "projection": self.config.get("projection"), "seed": self.config.get("seed"), "dims": list(self.dims),
            "model": self.model, "weights_sha256": self.weights_sha256, "size_bytes": self.size_bytes,
        }

    def headline(self) -> str:
        """``name: 1,234 objects in 128 images``: the index in one short line (the desktop app)."""
        return f"{self.path.name}: {self.n_objects:,} objects in {self.n_images:,} images"

    def lines(self) -> list[str]:
        """What ``objsearch info`` prints, one aligned line per topic."""
        cfg = self.config
        top = ", ".join(f"{name} {n}" for name, n in list(self.classes.items())[:10])
        in_videos = f", {self.n_frames} of them frames of {self.n_videos} videos" if self.n_videos else ""
        size = self.size_bytes or 0
        return [
            f"index      {printable(str(self.path))}",
            f"format     {self.format} v{self.format_version}, created "
            f"{'?' if self.created is None else self.created}, generation {self.generation}, state {self.state}",
            f"images     {self.n_images}{in_videos} (skipped {self.n_skipped}), base dir {printable(self.base_dir)}",
            *(f"folders    {line}" for line in self.roots),
            f"objects    {self.n_objects} in {len(self.classes)} classes: {top}",
            f"features   {self.feature_recipe}",
            f"projection {cfg.get('projection', '?')} to dims {self.dims} (seed {cfg.get('seed', '?')}), "
            + (f"rerank vectors {self.rerank_dims}-d" if self.rerank_dims is not None else
               "no rerank vectors (made before reranking: `objsearch sync` adds them)"),
            f"images     whole-image vectors {self.image_recipe.get('blocks')}, random to dims {self.image_dims}"
            if self.has_image_vectors else
            "images     no whole-image vectors (made before image search): `objsearch sync` adds them",
            f"model      {self.model} sha256 {self.weights_sha256}",
            f"size       {size / 1e6:.2f} MB on disk ({size / max(self.n_objects, 1) / 1e3:.2f} kB per object)",
        ]


def summarize(catalog, path: str | Path | None = None) -> IndexSummary:
    """The summary of an open ``objsearch.catalog.Catalog`` (``path``: the name to show, default its own path)."""
    from objsearch.roots import Roots

    path = Path(catalog.path if path is None else path)
    names = catalog.class_names
    counts = np.bincount(np.asarray(catalog.class_id, np.int64), minlength=len(names))
    frames = np.asarray(catalog.media_frame_index) >= 0
    try:
        size = int(Path(catalog.path).stat().st_size)
    except OSError:
        size = None
    attrs = catalog.attrs
    return IndexSummary(
        path=path, format=attrs.get("format"), format_version=int(catalog.format_version),
        created=attrs.get("created"), generation=int(catalog.generation), state=catalog.state,
        n_images=int(len(catalog.media_id)), n_frames=int(frames.sum()),
        n_videos=len({p for p, is_frame in zip(catalog.media_path, frames) if is_frame}),
        n_skipped=len(catalog.skipped), base_dir=str(catalog.base_dir), n_objects=int(len(catalog.object_id)),
        classes={names[c]: int(counts[c]) for c in np.argsort(-counts, kind="stable") if counts[c]},
        feature_recipe=attrs.get("feature_recipe"), config=dict(attrs.get("config", {}) or {}),
        dims=[int(d) for d in catalog.dims], rerank_dims=catalog.rerank_dims,
        has_image_vectors=bool(catalog.has_image_vectors), image_recipe=catalog.image_recipe,
        image_dims=catalog.image_dims if catalog.has_image_vectors else None, model=attrs.get("weights_name"),
        weights_sha256=catalog.weights_sha256, size_bytes=size, roots=Roots.of(catalog).describe())


def job_lines(verb: str, summary, output=None) -> list[str]:
    """What a job (``objsearch.analysis.JobSummary``) did, in one line, then one line per skipped file:
    ``analyzed 128 images (929 objects), ..., in 12.3 s -> index.h5 (128 images, 929 objects)``."""
    frames = getattr(summary, "n_added_frames", 0)
    what = (f"{count(summary.n_added - frames, 'image')} and {count(frames, 'frame')} of "
            f"{count(summary.n_videos, 'video')}" if frames else count(summary.n_added, "image"))
    parts = [f"{verb} {what} ({count(summary.n_added_objects, 'object')})"]
    if summary.n_resumed:
        parts.append(f"{summary.n_resumed} resumed from an interrupted run")
    if summary.n_changed:
        parts.append(f"{summary.n_changed} changed and analyzed again")
    if summary.n_removed:
        parts.append(f"removed {count(summary.n_removed, 'image')} ({count(summary.n_removed_objects, 'object')})")
    if summary.n_already:
        parts.append(f"{summary.n_already} already indexed")
    if summary.n_unchanged:
        parts.append(f"{summary.n_unchanged} unchanged")
    if getattr(summary, "n_image_vectors", 0):
        parts.append(f"whole-image vectors made for {summary.n_image_vectors} images")
    if getattr(summary, "rerank_dims", None):
        parts.append(f"rerank vectors ({summary.rerank_dims}-d) made for an index made before reranking")
    parts.append(f"{summary.n_no_objects} with no objects")
    parts.append(f"{len(summary.skipped)} skipped")
    if summary.n_other_files:
        parts.append(f"{summary.n_other_files} other files ignored")
    return [", ".join(parts) + f", in {summary.seconds:.1f} s -> {output or summary.index} "
                               f"({count(summary.n_images, 'image')}, {count(summary.n_objects, 'object')})",
            *(f"  skipped {printable(item.path)}: {item.reason}" for item in summary.skipped)]


def neighbor_place(nb) -> str:
    """``clip.mp4 @ 00:01:23.4`` (with the moment it stands for: ``, moment 00:01:22.0-00:01:25.0 of 4 frames``)."""
    from objsearch.types import format_timestamp

    text = nb.media.display_name()
    if nb.moment is not None and nb.moment.frames > 1:
        text += (f", moment {format_timestamp(nb.moment.start_s)}-{format_timestamp(nb.moment.end_s)} of "
                 f"{nb.moment.frames} frames")
    return text


def result_lines(item, result) -> list[str]:
    """What ``objsearch query`` prints for one query ``item`` (a path or URL): a line of counts and timings, then
    each object with its neighbours (a ``SearchResult``) or one row of similar images (an ``ImageSearchResult``)."""
    from objsearch.types import ImageSearchResult

    t = result.to_dict()["timings_ms"]
    warm = f"; a first pass at this input size took {t['warmup']:.0f} ms before timing" if "warmup" in t else ""
    if isinstance(result, ImageSearchResult):
        return [f"{printable(str(item))}: {len(result.neighbors)} similar images, {t['total']:.0f} ms (detect "
                f"{t['detect']:.0f}, image vector {t['image_feature']:.1f}, search {t['search']:.1f}){warm}",
                "  " + ", ".join(f"{nb.media.display_name()} d={nb.distance:.2f}" for nb in result.neighbors)]
    dets = result.detections
    out = [f"{printable(str(item))}: {len(dets)} objects, {t['total']:.0f} ms "
           f"(detect {t['detect']:.0f}, features {t['features']:.1f}, search {t['search']:.1f}){warm}"]
    for i in range(len(dets)):
        nbs = ", ".join(f"{result.label(n.class_id)} d={n.distance:.2f} ({neighbor_place(n)})"
                        for n in result.neighbors[i])
        box = [round(float(v)) for v in dets.xyxy[i]]
        note = f"  [{result.notes[i]}]" if result.notes[i] else ""
        out.append(f"  {result.label(dets.class_id[i])} {dets.confidence[i]:.2f} {box}: {nbs}{note}")
    return out


def duplicates_lines(data: dict, report) -> list[str]:
    """What ``objsearch duplicates`` prints: ``data`` is ``objsearch.duplicates.report_to_dict(report, ...)`` (with
    its ``limit``), ``report`` the ``DuplicateReport``."""
    unit = "images" if report.kind == "images" else "objects"

    def name(item: dict) -> str:
        where = f" @ {item['timestamp_s']:.1f}s" if "timestamp_s" in item else ""
        what = f" {item['label']} #{item['object_id']}" if "object_id" in item else ""
        return f"{item['path']}{where}{what}"

    out = [f"{data['n_groups']} groups of near-duplicate {unit} ({data['n_duplicates']} duplicates) among "
           f"{data['n_items']} {unit}; threshold {report.threshold:g} at {report.dims} dims, {report.method}, "
           f"in {report.seconds:.1f} s"]
    for n, group in enumerate(data["groups"], 1):
        out.append(f"group {n} ({1 + len(group['members'])}): {name(group['representative'])}")
        out += [f"    {name(item)}  d={item['distance']:.3f}" for item in group["members"]]
    if data["n_groups"] > len(data["groups"]):
        out.append(f"... and {data['n_groups'] - len(data['groups'])} more groups (--json lists them all)")
    return out


def video_summary(file, matches, *, window_s: float, n_frames: int, n_objects: int) -> dict:
    """The ``objsearch video --summary --json`` object: the query video and its ranked ``VideoMatch`` list."""
    return {"query": str(file), "n_frames": n_frames, "n_objects": n_objects, "window_s": window_s,
            "videos": [m.to_dict() for m in matches]}


def video_summary_lines(file, matches, *, n_frames: int, n_objects: int, n_moments: int = 5) -> list[str]:
    """The reverse video search's ranked videos (``objsearch.moments.summarize_video_matches``), each with its
    first ``n_moments`` moments, as ``objsearch video --summary`` prints them."""
    from objsearch.types import format_timestamp

    if not matches:
        return [f"no indexed video matches the {n_objects} objects of {printable(str(file))}"]
    out = [f"indexed videos matching the {n_objects} objects in {n_frames} frames of {printable(str(file))} "
           f"(score: each query object's 1/rank of its best neighbour in the video, summed):"]
    for rank, m in enumerate(matches, 1):
        out.append(f"{rank:>3}. {printable(m.path)}: score {m.score:.1f}, {m.n_query_objects} query objects, "
                   f"best d={m.best_distance:.2f}")
        for moment in m.moments[:n_moments]:
            labels = ", ".join(f"{n} {label}" for label, n in sorted(moment.labels.items(), key=lambda kv: -kv[1]))
            out.append(f"       {format_timestamp(moment.start_s)}-{format_timestamp(moment.end_s)}: score "
                       f"{moment.score:.1f}, {moment.n_query_objects} query objects ({labels}), best "
                       f"d={moment.best_distance:.2f} at {format_timestamp(moment.best.media.timestamp_s)} "
                       f"(query {format_timestamp(moment.query_start_s)}-{format_timestamp(moment.query_end_s)})")
        if len(m.moments) > n_moments:
            out.append(f"       ... {len(m.moments) - n_moments} more moments (--json lists them all)")
    return out
