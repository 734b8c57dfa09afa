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
