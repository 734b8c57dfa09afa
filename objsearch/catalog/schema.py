"""The index file's layout, format version 2: a living HDF5 file with stable ids, in-place appends and tombstones.

What is stored where (the constants below), the in-memory form of the small arrays (``Tables``) and the helpers every
module of ``objsearch.catalog`` shares. The package ``objsearch.catalog`` is the only one of objsearch that imports
h5py; its modules, in the order a file goes through them: ``attrs`` (the root attributes' codec), ``load`` (open,
validate and load formats 1 and 2), ``locking`` (the shared lock of a reader, ``repair``), ``view`` (the read surface
that the reader and the writer share), ``reader`` (``Catalog``), ``storage`` (the HDF5 writes of this layout),
``writer`` (``CatalogWriter``), ``maintenance`` (``compact``, ``convert``) and ``txn`` (locks, rollback journal).

Layout of ``INDEX.h5`` (``format_version`` 2)::

    /  attrs    every string is fixed-length bytes (UTF-8; JSON for structures) so that no attribute lives in HDF5's
                global heap, which has no checksum; integers are int64, floats float64:
                format="objsearch-index", format_version=2, uuid (32 hex digits), created, generation (+1 per
                commit), state ("ready" | "analyzing"), weights_sha256, weights_name, feature_recipe (JSON),
                config (JSON), class_names (JSON list), base_dir, n_features (D), next_media_id, next_object_id,
                roots (JSON list: every root folder, roots[0] == base_dir; absent: [base_dir]), root_macs (JSON
                list, one per root: HMAC-SHA256 hex with which this machine's user recorded that root, "" when
                none; see ``objsearch.roots``), vector_backend (JSON {"name", "options"}, optional: the vector
                backend chosen for this index and its options, see ``objsearch.vectors.registry``; absent: none
                chosen), any extra attribute of the caller, json_attrs (JSON list of the
                attributes stored as JSON), attrs_sha256 (digest of every other attribute, checked on open)
    /media/id             (M,) int64, stable id, strictly increasing with the row, never reused
    /media/path_offset    (M,) int64 and /media/path_length (M,) int32: a slice of /media/path_bytes
    /media/path_bytes     (P,) uint8, paths relative to their root as os.fsencode bytes, back to back
    /media/root           (M,) int32, the root (an index into ``roots``) of each path; optional: absent, every
                          path is relative to roots[0] (files made before several roots; written from the first
                          commit that adds a media item under another root)
    /media/width, height  (M,) int32 pixels
    /media/frame_index    (M,) int64, -1 for an image
    /media/timestamp_s    (M,) float64, -1.0 for an image
    /media/file_size, file_mtime_ns   (M,) int64, -1 when unknown
    /media/alive          (M,) uint8, 0 for a removed item (a tombstone)
    /objects/id           (N,) int64, stable id, strictly increasing with the row, never reused
    /objects/media_id     (N,) int64, an id of /media/id
    /objects/xyxy         (N, 4) float32 pixels [x1, y1, x2, y2] in the media item
    /objects/confidence   (N,) float32
    /objects/class_id     (N,) int16, index into class_names
    /objects/alive        (N,) uint8
    /objects/features     (N, D) float32, chunks (1024, D)
    /objects/thumb_offset (N,) int64 and /objects/thumb_length (N,) int32: a slice of /thumbnails
    /thumbnails           (T,) uint8, JPEG bytes back to back
    /skipped              (S,) uint8, UTF-8 JSON [[path, reason], ...]
    /projections/<d>/     components (D, d) float32, mean (D,) float32, vectors (N, d) float32 aligned with the
                          rows of /objects; attrs method ("random" | "pca"), n_components (= d), random_state
    /image/features       (M, F) float32, one whole-image feature per row of /media (tombstoned with it; see
                          ``objsearch.pooling.image_blocks``); F = image_recipe["n_features"]
    /image/projections/<d>/   as /projections/<d>, over F, with vectors (M, d) aligned with the rows of /media

The /image group is optional (files written before whole-image search lack it, and object search reads them as
before): when present, every media row has its image feature and vectors (no half state); root attribute
image_recipe (JSON) says how they were made. ``objsearch sync`` adds or remakes it.

Every dataset is chunked, extensible on axis 0 and carries a Fletcher-32 checksum per chunk (verified by HDF5 on
every read); the file is written with ``libver=("v110", "latest")`` so that the superblock, object headers and chunk
indexes carry checksums too; attributes stay in the (checksummed) object header. Nothing is variable-length.

Removing marks rows dead (alive=0) and never moves rows; ``compact`` rewrites the live rows into a new file. Updates
are transactions made crash-safe by a rollback journal (see ``objsearch.catalog.txn``). Format 1 files (objsearch
0.1's write-once layout: /images/path, /objects/image_id = row, variable-length thumbnails) are read through the same
``Catalog`` API (ids = rows) and converted with ``convert`` (``objsearch.catalog.maintenance``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from objsearch.errors import IndexFileError
from objsearch.projection import Projection
from objsearch.types import SkippedFile

FORMAT_NAME = "objsearch-index"
FORMAT_VERSION = 2
LIBVER = ("v110", "latest")
MAX_THUMBNAIL_BYTES = 4 << 20
MAX_PATH_BYTES = 1 << 16
MAX_SIDE = 1 << 24  # pixels of a media item's side (a 100 MP image is 10k x 10k; a width of 2**31-1 is a forgery)
MAX_ABS_VALUE = 1e9  # of a feature, vector, component or mean: features are O(1..100); squared distances of values
#                      this size stay far below float32's maximum (3.4e38), so no distance overflows to inf
BOX_SLACK = 1.0  # pixels a box may reach past its media item's edge (boxes are clipped to the image)
FEATURE_CHUNK_ROWS = 1024
IMAGE_FEATURE_CHUNK_ROWS = 256  # media rows are fewer than object rows: a smaller first chunk (~0.5 MB at F=528)
STREAM_ROWS = 65536
STATES = ("ready", "analyzing")  # of the root attribute ``state``
MAX_ROOTS = 1 << 16

# name -> (dtype, trailing shape, chunk rows)
MEDIA_COLUMNS = {
    "id": ("<i8", (), 4096), "path_offset": ("<i8", (), 4096), "path_length": ("<i4", (), 4096),
    "width": ("<i4", (), 4096), "height": ("<i4", (), 4096), "frame_index": ("<i8", (), 4096),
    "timestamp_s": ("<f8", (), 4096), "file_size": ("<i8", (), 4096), "file_mtime_ns": ("<i8", (), 4096),
    "alive": ("u1", (), 4096),
}
OBJECT_COLUMNS = {
    "id": ("<i8", (), 8192), "media_id": ("<i8", (), 8192), "xyxy": ("<f4", (4,), 4096),
    "confidence": ("<f4", (), 8192), "class_id": ("<i2", (), 8192), "alive": ("u1", (), 8192),
    "thumb_offset": ("<i8", (), 8192), "thumb_length": ("<i4", (), 8192),
}
BLOBS = {"media/path_bytes": 1 << 16, "thumbnails": 1 << 18, "skipped": 1 << 12}


@dataclass
class Tables:
    """Every row (live or dead) of the small arrays of an index, as loaded in memory."""

    media: dict[str, np.ndarray]
    path_bytes: bytes
    objects: dict[str, np.ndarray] | None  # None: not loaded (a writer's open reads the media rows only)
    n_thumb_bytes: int
    projections: dict[int, Projection] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    image_projections: dict[int, Projection] | None = None  # None: the file has no /image group
    n_image_features: int = 0
    media_root: np.ndarray | None = None  # (M,) int32, every media row's root; None: all 0 (no /media/root)
    n_object_rows: int = 0  # rows of /objects (live and dead)

    def roots_of(self, rows: np.ndarray) -> np.ndarray:
        """The root of each media row in ``rows``: (n,) int32."""
        if self.media_root is None:
            return np.zeros(len(rows), np.int32)
        return self.media_root[rows]

    @property
    def has_image(self) -> bool:
        return self.image_projections is not None

    def media_paths(self, rows: np.ndarray) -> list[str]:
        off, length, blob = self.media["path_offset"], self.media["path_length"], self.path_bytes
        return [os.fsdecode(blob[off[r]:off[r] + length[r]]) for r in rows]

    def _rows_starting_with(self, rows: np.ndarray, prefix: bytes, chunk: int = 1 << 18) -> np.ndarray:
        """The rows of ``rows`` (each path at least ``len(prefix)`` bytes) whose path starts with ``prefix``:
        compared as an (n, len(prefix)) byte matrix, ``chunk`` rows at a time (numpy, no Python loop per row)."""
        if not len(prefix) or not len(rows):
            return rows
        blob = np.frombuffer(self.path_bytes, np.uint8)
        want, cols = np.frombuffer(prefix, np.uint8), np.arange(len(prefix))
        keep = [part[(blob[self.media["path_offset"][part][:, None] + cols] == want).all(1)]
                for part in (rows[i:i + chunk] for i in range(0, len(rows), chunk))]
        return np.concatenate(keep)

    def find_paths(self, keys: list[tuple[int, bytes]]) -> dict[tuple[int, bytes], int]:
        """{(root, path bytes): row} of the live media rows among ``keys`` (numpy over the rows whose path has the
        length of some key, one pass per length; O(M) comparisons and no Python work per indexed item)."""
        m = self.media
        live = m["alive"] == 1
        roots = self.roots_of(np.arange(len(m["id"])))
        found: dict[tuple[int, bytes], int] = {}
        by_length: dict[int, set[tuple[int, bytes]]] = {}
        for root, rel in keys:
            by_length.setdefault(len(rel), set()).add((int(root), bytes(rel)))
        blob = np.frombuffer(self.path_bytes, np.uint8)
        for length, group in by_length.items():
            rows = np.flatnonzero(live & (m["path_length"] == length))
            if not len(rows):
                continue
            if length == 0:
                names = np.zeros(len(rows), "S1")
            else:
                matrix = blob[m["path_offset"][rows][:, None] + np.arange(length)]
                names = np.ascontiguousarray(matrix).view(f"S{length}").ravel()
            wanted = np.array(sorted({rel for _, rel in group}), dtype=f"S{max(length, 1)}")
            for row in rows[np.isin(names, wanted)]:
                key = (int(roots[row]), self.path_bytes[m["path_offset"][row]:m["path_offset"][row] + length])
                if key in group:
                    found[key] = int(row)
        return found

    def rows_under(self, root: int, folder: bytes) -> np.ndarray:
        """Live media rows of ``root`` whose path is ``folder`` or lies under it (``b""``: every one of the root)."""
        m = self.media
        rows = np.flatnonzero((m["alive"] == 1) & (self.roots_of(np.arange(len(m["id"]))) == int(root)))
        folder = folder.rstrip(b"/")
        if folder in (b"", b"."):
            return rows
        exact = rows[m["path_length"][rows] == len(folder)]
        exact = self._rows_starting_with(exact, folder)
        inner = rows[m["path_length"][rows] > len(folder)]
        inner = self._rows_starting_with(inner, folder + b"/")
        return np.union1d(exact, inner)


def skipped_from_json(item) -> SkippedFile:
    """[path, reason] or [path, reason, root] -> SkippedFile (TypeError/ValueError for anything else)."""
    if not isinstance(item, list) or len(item) not in (2, 3) or not all(isinstance(x, str) for x in item[:2]) \
            or (len(item) == 3 and (not isinstance(item[2], int) or isinstance(item[2], bool) or item[2] < 0)):
        raise ValueError("not [path, reason] or [path, reason, root]")
    return SkippedFile(item[0], item[1], int(item[2]) if len(item) == 3 else 0)


def skipped_to_json(skipped: list[SkippedFile]) -> bytes:
    return json.dumps([[s.path, s.reason] + ([int(s.root)] if s.root else []) for s in skipped]).encode(
        "utf-8", "surrogateescape")



def damaged(path: Path, why: str) -> IndexFileError:
    """The one-line error of a file that fails a check: ``"<path> is damaged: <why>"``."""
    return IndexFileError(f"{path} is damaged: {why}")


def sane(values: np.ndarray) -> bool:
    """Every value finite and at most ``MAX_ABS_VALUE`` in magnitude."""
    return bool(values.size == 0 or (np.all(np.isfinite(values)) and np.abs(values).max() <= MAX_ABS_VALUE))



def search_dims(projections: dict) -> list[int]:
    """Dimensions of the search vectors: every stored projection but the rerank one (``objsearch.rerank``)."""
    return sorted(d for d, proj in projections.items() if proj.method != "mirror_whitened")


def rerank_dims(projections: dict) -> int | None:
    """Dimension of the rerank projection (method ``mirror_whitened``), None when the index has none."""
    return next((d for d, proj in sorted(projections.items()) if proj.method == "mirror_whitened"), None)
