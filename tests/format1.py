"""The format-1 index writer of objsearch 0.1 (write-once, ids = rows), kept only so tests can make format-1 files:
the library reads them through ``objsearch.catalog.Catalog`` and converts them with ``objsearch convert``.

Layout of a format-1 file::

    /                      attrs: format="objsearch-index", format_version=1, weights_sha256, weights_name,
                                  feature_recipe (JSON), config (JSON), class_names (JSON), created,
                                  skipped (JSON list of [path, reason])
    /images/path           (I,) str, relative to the base directory (POSIX separators)
    /images/width, height  (I,) int32, pixels
    /objects/image_id      (N,) int32, row in /images
    /objects/xyxy          (N, 4) float32, pixels in the original image
    /objects/confidence    (N,) float32
    /objects/class_id      (N,) int16
    /objects/features      (N, D) float32
    /objects/thumbnail     (N,) variable-length uint8, JPEG bytes of the crop
    /projections/<d>/      components (D, d) float32, mean (D,) float32, vectors (N, d) float32
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from objsearch.projection import Projection

FORMAT_NAME = "objsearch-index"
FORMAT_VERSION = 1


@dataclass
class ImageRecord:
    """One analysed (or skipped) image as the journal stores it.

    ``xyxy`` (N, 4) float32 pixels, ``confidence`` (N,) float32, ``class_id`` (N,) int64, ``features`` (N, D)
    float32, ``thumbnails`` list of N JPEG byte strings. ``skipped`` holds a reason when the image could not be read.
    """

    path: str
    width: int = 0
    height: int = 0
    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    features: np.ndarray | None = None
    thumbnails: list[bytes] = field(default_factory=list)
    skipped: str = ""


def write_index(
    path: Path,
    records: list[ImageRecord],
    *,
    projections: list[Projection],
    n_features: int,
    attrs: dict,
) -> None:
    """Write a complete index file atomically from analysed images (see ``write_index_arrays``).

    Parameters
    ----------
    records : analysed images in order; skipped ones are listed in the ``skipped`` attribute, not in ``/images``.
    projections : fitted projections, one per stored dimension.
    n_features : D, the raw feature length (used when there are no objects).
    attrs : root attributes; dict values are stored as JSON.
    """
    kept = [r for r in records if not r.skipped]

    def cat(name, dtype, shape):
        parts = [np.asarray(getattr(r, name)).reshape((-1,) + shape[1:]) for r in kept]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    write_index_arrays(
        path,
        image_path=[r.path for r in kept],
        width=np.array([r.width for r in kept], np.int32),
        height=np.array([r.height for r in kept], np.int32),
        image_id=np.concatenate([np.full(len(r.xyxy), i, np.int32) for i, r in enumerate(kept)] or
                                [np.zeros(0, np.int32)]),
        xyxy=cat("xyxy", np.float32, (0, 4)),
        confidence=cat("confidence", np.float32, (0,)),
        class_id=cat("class_id", np.int16, (0,)),
        features=cat("features", np.float32, (0, n_features)),
        thumbnails=[t for r in kept for t in r.thumbnails],
        projections=projections,
        attrs={**attrs, "skipped": [[r.path, r.skipped] for r in records if r.skipped]},
    )


def write_index_arrays(
    path: Path,
    *,
    image_path: list[str],
    width: np.ndarray,
    height: np.ndarray,
    image_id: np.ndarray,
    xyxy: np.ndarray,
    confidence: np.ndarray,
    class_id: np.ndarray,
    features: np.ndarray,
    thumbnails: list[bytes],
    projections: list[Projection],
    attrs: dict,
) -> None:
    """Write a complete index file atomically (``path.tmp``, then renamed over ``path``).

    Parameters
    ----------
    image_path : I paths relative to the base directory; ``width``, ``height`` (I,) int pixels.
    image_id : (N,) int, row in the images; ``xyxy`` (N, 4) float32 pixels; ``confidence`` (N,) float32;
        ``class_id`` (N,) int; ``features`` (N, D) float32; ``thumbnails`` N JPEG byte strings.
    projections : fitted projections, one per stored dimension; their vectors are computed here.
    attrs : root attributes; dict and list values are stored as JSON.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n_objects, n_features = features.shape
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        attrs = {"skipped": [], **attrs}
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        images = f.create_group("images")
        images.create_dataset("path", data=np.array(image_path, dtype=object), dtype=h5py.string_dtype())
        images.create_dataset("width", data=np.asarray(width, np.int32))
        images.create_dataset("height", data=np.asarray(height, np.int32))
        objects = f.create_group("objects")
        objects.create_dataset("image_id", data=np.asarray(image_id, np.int32))
        objects.create_dataset("xyxy", data=np.asarray(xyxy, np.float32).reshape(-1, 4))
        objects.create_dataset("confidence", data=np.asarray(confidence, np.float32))
        objects.create_dataset("class_id", data=np.asarray(class_id, np.int16))
        chunks = (min(n_objects, 1024), n_features) if n_features and n_objects else None
        objects.create_dataset("features", data=features, chunks=chunks)
        thumbs = objects.create_dataset("thumbnail", (n_objects,), dtype=h5py.vlen_dtype(np.uint8))
        for start in range(0, n_objects, 8192):  # slice writes: one vlen write per object is ~50x slower
            part = thumbnails[start:start + 8192]
            block = np.empty(len(part), dtype=object)
            block[:] = [np.frombuffer(t, np.uint8) for t in part]
            thumbs[start:start + len(part)] = block
        group = f.create_group("projections")
        for proj in projections:
            state = proj.to_state()
            g = group.create_group(str(state["n_components"]))
            g.attrs["method"] = state["method"]
            g.attrs["n_components"] = state["n_components"]
            g.attrs["random_state"] = state["random_state"]
            g.create_dataset("components", data=state["components"])
            g.create_dataset("mean", data=state["mean"])
            g.create_dataset("vectors", data=proj.transform(features) if n_objects else
                             np.zeros((0, state["n_components"]), np.float32))
    os.replace(tmp, path)
