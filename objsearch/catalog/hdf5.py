"""The index file, format version 2: a living HDF5 file with stable ids, in-place appends and tombstones.

The only module of objsearch that imports h5py.

Layout of ``INDEX.h5`` (``format_version`` 2)::

    /  attrs    every string is fixed-length bytes (UTF-8; JSON for structures) so that no attribute lives in HDF5's
                global heap, which has no checksum; integers are int64, floats float64:
                format="objsearch-index", format_version=2, uuid (32 hex digits), created, generation (+1 per
                commit), state ("ready" | "analyzing"), weights_sha256, weights_name, feature_recipe (JSON),
                config (JSON), class_names (JSON list), base_dir, n_features (D), next_media_id, next_object_id,
                roots (JSON list: every root folder, roots[0] == base_dir; absent: [base_dir]), root_macs (JSON
                list, one per root: HMAC-SHA256 hex with which this machine's user recorded that root, "" when
                none; see ``objsearch.roots``), any extra attribute of the caller, json_attrs (JSON list of the
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
                          ``objsearch.detector.image_blocks``); F = image_recipe["n_features"]
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
``Catalog`` API (ids = rows) and converted with ``convert``.
"""

from __future__ import annotations

import contextlib
import bisect
import hashlib
import json
import logging
import os
import time
import uuid as uuid_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from objsearch.catalog import txn
from objsearch.errors import IndexFileError
from objsearch.projection import STORED_PROJECTION_METHODS, Projection
from objsearch.types import VIDEO_SUFFIXES, Detections, MediaRecord, MediaRef, SkippedFile

LOGGER = logging.getLogger(__name__)

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
_STATES = ("ready", "analyzing")
_JSON_ATTRS = ("feature_recipe", "config", "class_names", "image_recipe", "roots", "root_macs")
MAX_ROOTS = 1 << 16
_META_ATTRS = ("json_attrs", "attrs_sha256")

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


# ------------------------------------------------------------------------------------------------- attributes
def _encode_attrs(attrs: dict) -> dict:
    """Python values -> HDF5 attribute values (fixed-length bytes, int64, float64), with ``json_attrs`` and the
    ``attrs_sha256`` digest added."""
    out, json_keys = {}, []
    for key, value in attrs.items():
        if key in _META_ATTRS:
            continue
        if isinstance(value, (bool, np.bool_)) or value is None or key in _JSON_ATTRS \
                or not isinstance(value, (str, int, float, np.integer, np.floating)) \
                or (isinstance(value, str) and "\x00" in value):
            out[key] = np.bytes_(json.dumps(value).encode())
            json_keys.append(key)
        elif isinstance(value, str):
            out[key] = np.bytes_(value.encode("utf-8", "surrogateescape"))
        elif isinstance(value, (int, np.integer)):
            out[key] = np.int64(value)
        else:
            out[key] = np.float64(value)
    out["json_attrs"] = np.bytes_(json.dumps(sorted(json_keys)).encode())
    out["attrs_sha256"] = np.bytes_(_attrs_digest(out).encode())
    return out


def _attrs_digest(raw: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in raw if k != "attrs_sha256"):
        value = raw[key]
        if isinstance(value, (bytes, np.bytes_)):
            tag, data = b"b", bytes(value)
        elif isinstance(value, np.integer):
            tag, data = b"i", str(int(value)).encode()
        else:
            tag, data = b"f", float(value).hex().encode()
        h.update(key.encode() + b"\0" + tag + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _decode_attrs(raw: dict, path: Path) -> dict:
    """HDF5 attribute values of a format 2 file -> Python values. Raises IndexFileError on a wrong type or digest."""
    for key, value in raw.items():
        ok = isinstance(value, (bytes, np.bytes_)) or (
            isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_))
        if not ok:
            raise IndexFileError(f"{path} is damaged: root attribute {key!r} has type {type(value).__name__}, "
                                 f"expected fixed-length bytes, int64 or float64")
    if "attrs_sha256" not in raw or bytes(raw["attrs_sha256"]).decode("ascii", "replace") != _attrs_digest(raw):
        raise IndexFileError(f"{path} is damaged: its root attributes do not match their sha256 digest")
    try:
        json_keys = set(json.loads(bytes(raw["json_attrs"]).decode()))
        out = {}
        for key, value in raw.items():
            if key in _META_ATTRS:
                continue
            if isinstance(value, (bytes, np.bytes_)):
                text = bytes(value).decode("utf-8", "surrogateescape")
                out[key] = json.loads(text) if key in json_keys else text
            elif isinstance(value, np.integer):
                out[key] = int(value)
            else:
                out[key] = float(value)
    except (KeyError, ValueError, TypeError) as exc:
        raise IndexFileError(f"{path} is damaged: unreadable root attribute ({exc})") from None
    return out


# ------------------------------------------------------------------------------------------------ the tables
@dataclass
class _Tables:
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


def _skipped_from_json(item) -> SkippedFile:
    """[path, reason] or [path, reason, root] -> SkippedFile (TypeError/ValueError for anything else)."""
    if not isinstance(item, list) or len(item) not in (2, 3) or not all(isinstance(x, str) for x in item[:2]) \
            or (len(item) == 3 and (not isinstance(item[2], int) or isinstance(item[2], bool) or item[2] < 0)):
        raise ValueError("not [path, reason] or [path, reason, root]")
    return SkippedFile(item[0], item[1], int(item[2]) if len(item) == 3 else 0)


def _skipped_to_json(skipped: list[SkippedFile]) -> bytes:
    return json.dumps([[s.path, s.reason] + ([int(s.root)] if s.root else []) for s in skipped]).encode(
        "utf-8", "surrogateescape")


def _damaged(path: Path, why: str) -> IndexFileError:
    return IndexFileError(f"{path} is damaged: {why}")


def _sane(values: np.ndarray) -> bool:
    """Every value finite and at most ``MAX_ABS_VALUE`` in magnitude."""
    return bool(values.size == 0 or (np.all(np.isfinite(values)) and np.abs(values).max() <= MAX_ABS_VALUE))


def _check_links(f: h5py.File, path: Path) -> None:
    """Refuse soft and external links, external storage and virtual datasets anywhere in the file."""
    stack = [f]
    while stack:
        group = stack.pop()
        for name in group.keys():
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise IndexFileError(f"{path} is refused: {group.name}/{name} is an external link to another file")
            if isinstance(link, h5py.SoftLink):
                raise IndexFileError(f"{path} is refused: {group.name}/{name} is a soft link")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                stack.append(obj)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise IndexFileError(f"{path} is refused: {obj.name} is a virtual dataset")
                if obj.external:
                    raise IndexFileError(f"{path} is refused: {obj.name} uses external storage")


def _dataset(f: h5py.File, name: str, dtype: str, shape: tuple, path: Path, *, checksum: bool = True):
    """The dataset ``name`` checked for dtype, rank, trailing shape, Fletcher-32 and allocated storage."""
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise _damaged(path, f"dataset /{name} is missing")
    if ds.dtype != np.dtype(dtype):
        raise _damaged(path, f"/{name} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
    if ds.ndim != 1 + len(shape) or tuple(ds.shape[1:]) != tuple(shape):
        raise _damaged(path, f"/{name} has shape {ds.shape}, expected (n, {', '.join(map(str, shape))})"
                       if shape else f"/{name} has shape {ds.shape}, expected (n,)")
    if checksum and not ds.fletcher32:
        raise _damaged(path, f"/{name} has no Fletcher-32 checksum")
    if ds.size and ds.chunks is not None and ds.id.get_storage_size() < ds.size * ds.dtype.itemsize:
        raise _damaged(path, f"/{name} declares {ds.shape[0]} rows but stores fewer")
    return ds


def _check_ids(ids: np.ndarray, next_id: int, what: str, path: Path) -> None:
    if len(ids) and (ids[0] < 0 or np.any(np.diff(ids) <= 0) or ids[-1] >= next_id):
        raise _damaged(path, f"{what} ids are not strictly increasing in [0, next_{what}_id={next_id})")


def roots_of(attrs: dict) -> tuple[list[str], list[str]]:
    """(root folders, their MACs) as an index's attributes record them: ``roots`` and ``root_macs``, or for a file
    made before several roots, ``[base_dir]`` with no MAC."""
    roots = attrs.get("roots")
    if roots is None:
        return [str(attrs.get("base_dir", ""))], [""]
    macs = attrs.get("root_macs")
    return list(roots), list(macs) if isinstance(macs, list) else [""] * len(roots)


def _check_roots(attrs: dict, path: Path) -> None:
    """``roots`` a non-empty JSON list of folder strings (no NUL) whose first is ``base_dir``; ``root_macs`` as long,
    each "" or 64 hex digits."""
    if "roots" not in attrs and "root_macs" not in attrs:
        return
    roots, macs = attrs.get("roots"), attrs.get("root_macs", [])
    if not isinstance(roots, list) or not roots or len(roots) > MAX_ROOTS \
            or not all(isinstance(r, str) and "\x00" not in r and len(r.encode("utf-8", "surrogateescape"))
                       <= MAX_PATH_BYTES for r in roots):
        raise _damaged(path, f"root attribute roots is not a JSON list of 1 to {MAX_ROOTS} folder names")
    if roots[0] != str(attrs.get("base_dir", "")):
        raise _damaged(path, "root attribute roots does not start with base_dir")
    if not isinstance(macs, list) or len(macs) != len(roots) or not all(
            isinstance(m, str) and (m == "" or (len(m) == 64 and all(c in "0123456789abcdef" for c in m)))
            for m in macs):
        raise _damaged(path, "root attribute root_macs is not one MAC (64 hex digits, or empty) per root")


def _load_media_root(f: h5py.File, n_media: int, n_roots: int, path: Path) -> np.ndarray | None:
    """/media/root (optional) checked: int32, one per media row, each an index into the roots."""
    if "media/root" not in f:
        return None
    roots = _dataset(f, "media/root", "<i4", (), path)[()]
    if len(roots) != n_media:
        raise _damaged(path, f"/media/root has {len(roots)} rows, expected {n_media} (one per media row)")
    if len(roots) and (roots.min() < 0 or roots.max() >= n_roots):
        raise _damaged(path, f"a media root is outside [0, {n_roots}) (the roots)")
    return roots


def _check_structures(attrs: dict, path: Path) -> None:
    """The JSON attributes every reader relies on are mappings: ``config`` and ``feature_recipe`` (their contents
    are checked by whoever uses them: ``objsearch.provenance.index_config``)."""
    config = attrs.get("config", {})
    if not isinstance(config, dict):
        raise _damaged(path, f"root attribute config is not a JSON mapping (got {type(config).__name__})")
    _check_roots(attrs, path)
    recipe = attrs.get("feature_recipe", {})
    if not isinstance(recipe, dict):
        raise _damaged(path, f"root attribute feature_recipe is not a JSON mapping (got {type(recipe).__name__})")


def _check_values(t: _Tables, n_classes: int, path: Path) -> None:
    """The value checks common to both formats (the object ones when the objects are loaded)."""
    _check_media_values(t, path)
    if t.objects is not None:
        _check_object_values(t, n_classes, path)


def _check_media_values(t: _Tables, path: Path) -> None:
    m = t.media
    if np.any(m["alive"] > 1):
        raise _damaged(path, "an alive flag is neither 0 nor 1")
    if np.any(m["width"] < 0) or np.any(m["height"] < 0) or np.any(m["width"] > MAX_SIDE) \
            or np.any(m["height"] > MAX_SIDE):
        raise _damaged(path, f"a media width or height is outside [0, {MAX_SIDE}] pixels")
    frame, ts = m["frame_index"], m["timestamp_s"]
    if not np.all(np.isfinite(ts)) or np.any(frame < -1) or np.any((frame == -1) != (ts == -1.0)) \
            or np.any((frame >= 0) & (ts < 0)):
        raise _damaged(path, "a media timestamp or frame index is invalid (an image has frame -1 and time -1, a "
                       "video frame both >= 0)")
    end = m["path_offset"] + m["path_length"]
    if np.any(m["path_offset"] < 0) or np.any(m["path_length"] < 0) or np.any(m["path_length"] > MAX_PATH_BYTES) \
            or (len(end) and end.max() > len(t.path_bytes)):
        raise _damaged(path, "a media path lies outside /media/path_bytes")
    if np.any(frame >= 0):
        video = {s.lower() for s in VIDEO_SUFFIXES}
        names = t.media_paths(np.flatnonzero(frame >= 0))
        if any(os.path.splitext(name)[1].lower() not in video for name in names):
            raise _damaged(path, "a media item of an image file has a video frame index")


def _check_object_values(t: _Tables, n_classes: int, path: Path) -> None:
    m, o = t.media, t.objects
    if np.any(o["alive"] > 1):
        raise _damaged(path, "an alive flag is neither 0 nor 1")
    if not np.all(np.isfinite(o["xyxy"])) or not np.all(np.isfinite(o["confidence"])):
        raise _damaged(path, "an object box or confidence is not finite")
    if np.any(o["confidence"] < 0) or np.any(o["confidence"] > 1):
        raise _damaged(path, "an object confidence is outside [0, 1]")
    if len(o["class_id"]) and (o["class_id"].min() < 0 or o["class_id"].max() >= n_classes):
        raise _damaged(path, f"an object class id is outside [0, {n_classes}) (the class names)")
    rows = np.searchsorted(m["id"], o["media_id"])
    rows = np.minimum(rows, max(len(m["id"]) - 1, 0))
    if len(o["media_id"]) and (len(m["id"]) == 0 or np.any(m["id"][rows] != o["media_id"])):
        raise _damaged(path, "an object's media id is not among the media ids")
    if len(o["xyxy"]):
        x1, y1, x2, y2 = o["xyxy"].T
        width, height = m["width"][rows].astype(np.float64), m["height"][rows].astype(np.float64)
        known = (width > 0) & (height > 0)  # 0: not recorded
        if np.any(x2 < x1) or np.any(y2 < y1) or np.any(known & ((x1 < -BOX_SLACK) | (y1 < -BOX_SLACK)
                                                                  | (x2 > width + BOX_SLACK)
                                                                  | (y2 > height + BOX_SLACK))):
            raise _damaged(path, "an object box is inverted or lies outside its media item")
    if len(o["alive"]) and np.any((o["alive"] == 1) & (m["alive"][rows] == 0)):
        raise _damaged(path, "a live object belongs to a removed media item")
    end = o["thumb_offset"] + o["thumb_length"]
    if np.any(o["thumb_offset"] < 0) or np.any(o["thumb_length"] < 0) \
            or np.any(o["thumb_length"] > MAX_THUMBNAIL_BYTES) or (len(end) and end.max() > t.n_thumb_bytes):
        raise _damaged(path, "an object thumbnail lies outside /thumbnails (or is larger than 4 MiB)")


def _load_projections(f: h5py.File, n_features: int, n_objects: int, path: Path, checksum: bool,
                      prefix: str = "projections") -> dict:
    group = f.get(prefix)
    if group is None:
        return {}
    if not isinstance(group, h5py.Group):
        raise _damaged(path, f"/{prefix} is not a group")
    out = {}
    for name in group.keys():
        g = group[name]
        if not isinstance(g, h5py.Group) or not name.isdigit() or name != str(int(name)):
            raise _damaged(path, f"/{prefix}/{name} is not a projection")
        d = int(name)
        try:
            method = g.attrs["method"]
            method = method.decode() if isinstance(method, bytes) else str(method)
            n_components, random_state = g.attrs["n_components"], g.attrs["random_state"]
        except (KeyError, UnicodeDecodeError):
            raise _damaged(path, f"/{prefix}/{name} lacks its method, n_components or random_state") from None
        if method not in STORED_PROJECTION_METHODS or not isinstance(n_components, np.integer) \
                or not isinstance(random_state, np.integer) or int(n_components) != d or d < 1:
            raise _damaged(path, f"/{prefix}/{name} has invalid attributes (method {method!r}, "
                           f"n_components {n_components!r})")
        comps = _dataset(f, f"{prefix}/{name}/components", "<f4", (d,), path, checksum=checksum)
        mean = _dataset(f, f"{prefix}/{name}/mean", "<f4", (), path, checksum=checksum)
        vectors = _dataset(f, f"{prefix}/{name}/vectors", "<f4", (d,), path, checksum=checksum)
        if comps.shape[0] != n_features or mean.shape[0] != n_features or vectors.shape[0] != n_objects:
            raise _damaged(path, f"/{prefix}/{name} has components {comps.shape}, mean {mean.shape} and "
                           f"vectors {vectors.shape}; expected ({n_features}, {d}), ({n_features},), ({n_objects}, {d})")
        components, mean = comps[()], mean[()]
        if not (_sane(components) and _sane(mean)):
            raise _damaged(path, f"/{prefix}/{name} has non-finite components or mean (or beyond "
                           f"{MAX_ABS_VALUE:g})")
        out[d] = Projection.from_state({"method": method, "n_components": d, "random_state": int(random_state),
                                         "components": components, "mean": mean})
    return out


def _search_dims(projections: dict) -> list[int]:
    """Dimensions of the search vectors: every stored projection but the rerank one (``objsearch.rerank``)."""
    return sorted(d for d, proj in projections.items() if proj.method != "mirror_whitened")


def _rerank_dims(projections: dict) -> int | None:
    """Dimension of the rerank projection (method ``mirror_whitened``), None when the index has none."""
    return next((d for d, proj in sorted(projections.items()) if proj.method == "mirror_whitened"), None)


def _load_v2(f: h5py.File, path: Path, *, objects: bool = True) -> tuple[dict, _Tables]:
    """Validate and load a format 2 file; with ``objects`` False the object rows are not read (their datasets'
    types, shapes and checksums are checked; a writer reads the rows it changes)."""
    attrs = _decode_attrs(dict(f.attrs.items()), path)
    ints = {}
    for key in ("n_features", "next_media_id", "next_object_id", "generation"):
        value = attrs.get(key)
        if not isinstance(value, int) or value < 0:
            raise _damaged(path, f"root attribute {key} must be a non-negative integer, got {value!r}")
        ints[key] = value
    if attrs.get("state") not in _STATES:
        raise _damaged(path, f"root attribute state must be one of {_STATES}, got {attrs.get('state')!r}")
    names = attrs.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _damaged(path, "root attribute class_names is not a JSON list of strings")
    uid = attrs.get("uuid")
    if not isinstance(uid, str) or len(uid) != 32 or any(c not in "0123456789abcdef" for c in uid):
        raise _damaged(path, "root attribute uuid is not 32 hex digits")
    if ints["n_features"] < 1:
        raise _damaged(path, "root attribute n_features must be >= 1")
    _check_structures(attrs, path)
    media = {k: _dataset(f, f"media/{k}", dt, shp, path)[()] for k, (dt, shp, _) in MEDIA_COLUMNS.items()}
    object_sets = {k: _dataset(f, f"objects/{k}", dt, shp, path) for k, (dt, shp, _) in OBJECT_COLUMNS.items()}
    columns = {k: ds[()] for k, ds in object_sets.items()} if objects else None
    for group, lengths in (("media", {len(v) for v in media.values()}),
                           ("objects", {ds.shape[0] for ds in object_sets.values()})):
        if len(lengths) > 1:
            raise _damaged(path, f"the /{group} arrays have different lengths {sorted(lengths)}")
    n_objects = object_sets["id"].shape[0]
    feats = _dataset(f, "objects/features", "<f4", (ints["n_features"],), path)
    if feats.shape[0] != n_objects:
        raise _damaged(path, f"/objects/features has {feats.shape[0]} rows, expected {n_objects}")
    path_bytes = _dataset(f, "media/path_bytes", "u1", (), path)[()].tobytes()
    n_thumb = _dataset(f, "thumbnails", "u1", (), path).shape[0]
    skipped_raw = _dataset(f, "skipped", "u1", (), path)[()].tobytes()
    try:
        skipped_list = json.loads(skipped_raw.decode("utf-8", "surrogateescape")) if skipped_raw else []
        skipped = [_skipped_from_json(item) for item in skipped_list]
    except (ValueError, TypeError):
        raise _damaged(path, "/skipped is not a JSON list of [path, reason] or [path, reason, root]") from None
    _check_ids(media["id"], ints["next_media_id"], "media", path)
    if columns is not None:
        _check_ids(columns["id"], ints["next_object_id"], "object", path)
        columns["class_id"] = columns["class_id"].astype(np.int64)
    tables = _Tables(media, path_bytes, columns, n_thumb, skipped=skipped,
                     media_root=_load_media_root(f, len(media["id"]), len(roots_of(attrs)[0]), path),
                     n_object_rows=n_objects)
    _check_values(tables, len(names), path)
    n_roots = len(roots_of(attrs)[0])
    if any(s.root >= n_roots for s in skipped):
        raise _damaged(path, f"a skipped file's root is outside [0, {n_roots}) (the roots)")
    tables.projections = _load_projections(f, ints["n_features"], n_objects, path, checksum=True)
    _load_image(f, attrs, tables, path)
    return attrs, tables


def _load_image(f: h5py.File, attrs: dict, tables: _Tables, path: Path) -> None:
    """Validate the optional /image group (whole-image features and vectors, one row per /media row)."""
    if "image" not in f:
        if "image_recipe" in attrs:
            raise _damaged(path, "root attribute image_recipe is set but /image is missing")
        return
    if not isinstance(f["image"], h5py.Group):
        raise _damaged(path, "/image is not a group")
    recipe = attrs.get("image_recipe")
    n = recipe.get("n_features") if isinstance(recipe, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(recipe.get("blocks"), dict) \
            or not isinstance(recipe.get("version"), int):
        raise _damaged(path, "root attribute image_recipe is not a mapping with blocks, an integer n_features >= 1 "
                       "and an integer version")
    n_media = len(tables.media["id"])
    feats = _dataset(f, "image/features", "<f4", (n,), path)
    if feats.shape[0] != n_media:
        raise _damaged(path, f"/image/features has {feats.shape[0]} rows, expected {n_media} (one per media row)")
    tables.image_projections = _load_projections(f, n, n_media, path, checksum=True, prefix="image/projections")
    tables.n_image_features = n


def _load_v1(f: h5py.File, path: Path) -> tuple[dict, _Tables]:
    attrs = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if isinstance(value, str) and key in ("feature_recipe", "config", "class_names", "skipped"):
            try:
                value = json.loads(value)
            except ValueError:
                raise _damaged(path, f"root attribute {key} is not JSON") from None
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        attrs[key] = value
    names = attrs.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _damaged(path, "root attribute class_names is not a JSON list of strings")
    ds = f.get("images/path")
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
        raise _damaged(path, "dataset /images/path is missing")
    paths = [p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogateescape") for p in ds[()]]
    n_media = len(paths)
    lengths = np.array([len(p) for p in paths], np.int32)
    media = {
        "id": np.arange(n_media, dtype=np.int64),
        "path_offset": np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)[:n_media],
        "path_length": lengths,
        "width": _dataset(f, "images/width", "<i4", (), path, checksum=False)[()],
        "height": _dataset(f, "images/height", "<i4", (), path, checksum=False)[()],
        "frame_index": np.full(n_media, -1, np.int64), "timestamp_s": np.full(n_media, -1.0),
        "file_size": np.full(n_media, -1, np.int64), "file_mtime_ns": np.full(n_media, -1, np.int64),
        "alive": np.ones(n_media, np.uint8),
    }
    image_id = _dataset(f, "objects/image_id", "<i4", (), path, checksum=False)[()]
    n = len(image_id)
    objects = {
        "id": np.arange(n, dtype=np.int64), "media_id": image_id.astype(np.int64),
        "xyxy": _dataset(f, "objects/xyxy", "<f4", (4,), path, checksum=False)[()],
        "confidence": _dataset(f, "objects/confidence", "<f4", (), path, checksum=False)[()],
        "class_id": _dataset(f, "objects/class_id", "<i2", (), path, checksum=False)[()].astype(np.int64),
        "alive": np.ones(n, np.uint8), "thumb_offset": np.zeros(n, np.int64), "thumb_length": np.zeros(n, np.int32),
    }
    for key, value in list(media.items()) + list(objects.items()):
        if len(value) != (n_media if key in media and value is media.get(key) else n):
            raise _damaged(path, f"array {key} has {len(value)} rows, expected {n_media if key in media else n}")
    feats = f.get("objects/features")
    if not isinstance(feats, h5py.Dataset) or feats.ndim != 2 or feats.shape[0] != n or feats.dtype != np.float32:
        raise _damaged(path, "/objects/features is missing or has the wrong shape")
    thumbs = f.get("objects/thumbnail")
    if not isinstance(thumbs, h5py.Dataset) or thumbs.shape != (n,):
        raise _damaged(path, "/objects/thumbnail is missing or has the wrong shape")
    skipped = attrs.pop("skipped", [])
    try:
        skipped = [SkippedFile(str(p), str(r)) for p, r in skipped]
    except (ValueError, TypeError):
        raise _damaged(path, "attribute skipped is not a list of [path, reason]") from None
    attrs.setdefault("n_features", int(feats.shape[1]))
    _check_structures(attrs, path)
    tables = _Tables(media, b"".join(paths), objects, 0, skipped=skipped, n_object_rows=n)
    _check_values(tables, len(names), path)
    tables.projections = _load_projections(f, int(feats.shape[1]), n, path, checksum=False)
    return attrs, tables


def _format_version(f: h5py.File, path: Path) -> int:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT_NAME:
        raise IndexFileError(f"{path} is an HDF5 file but not an objsearch index (no format={FORMAT_NAME!r})")
    version = f.attrs.get("format_version")
    if not isinstance(version, np.integer) or isinstance(version, np.bool_) or int(version) not in (1, 2):
        shown = int(version) if isinstance(version, np.integer) else repr(
            version.item() if isinstance(version, np.generic) else version)
        raise IndexFileError(f"{path} has index format version {shown}; this objsearch reads the integers 1 and 2")
    return int(version)


def _load(f: h5py.File, path: Path, *, objects: bool = True) -> tuple[int, dict, _Tables]:
    """Validate and load an open file (``objects``: also the object rows, see ``_load_v2``); every failure is an
    IndexFileError with one line."""
    try:
        version = _format_version(f, path)
        _check_links(f, path)
        attrs, tables = _load_v1(f, path) if version == 1 else _load_v2(f, path, objects=objects)
        return version, attrs, tables
    except IndexFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _damaged(path, f"{type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _open_read(path: Path) -> h5py.File:
    """Open read-only through h5py's file-object driver: HDF5 shares one cached file between all opens of the same
    path in a process (so a second open would see the first one's stale metadata after another process committed);
    opens through distinct Python file objects are never shared. Close with ``_close``."""
    fh = open(path, "rb", buffering=0)
    try:
        f = h5py.File(fh, "r", locking=False)
    except (OSError, ValueError) as exc:
        fh.close()
        raise IndexFileError(f"{path} is not a readable HDF5 file (truncated, damaged or not HDF5): "
                             f"{_one_line(exc)}") from None
    f._objsearch_fh = fh
    return f


def _close(f: h5py.File) -> None:
    f.close()
    fh = getattr(f, "_objsearch_fh", None)
    if fh is not None:
        fh.close()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    f = _open_read(path)
    try:
        yield f
    finally:
        _close(f)


def _stat_signature(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _with_rollback(path: Path, description: str, deadline: float) -> txn.FileLock:
    """The shared lock on ``path`` with no unfinished transaction left behind (rolled back here when possible)."""
    while True:
        lock = txn.FileLock(path, exclusive=False, timeout_s=max(0.0, deadline - time.monotonic()))
        if not txn.undo_path(path).exists():
            return lock
        lock.release()  # an undo file while no commit runs: a killed writer's, or a live writer about to commit
        undo = txn.undo_path(path)
        hint = (f"a killed writer left an unfinished transaction in {undo.name}; run `objsearch repair {path}` "
                f"as a user who can write that folder")
        try:
            wl = txn.try_writer_lock(path, description)
        except IndexFileError:
            raise IndexFileError(f"{path} cannot be read: {hint}") from None
        if wl is None:
            if time.monotonic() > deadline:
                raise IndexFileError(f"{path} cannot be read: a writer is still applying a transaction")
            time.sleep(0.05)
            continue
        try:
            txn.rollback(path)
        except OSError as exc:
            raise IndexFileError(f"{path} cannot be read ({exc.strerror}): {hint}") from None
        finally:
            wl.release()


def repair(path: str | Path) -> bool:
    """Roll back a transaction a killed writer left (``INDEX.h5.undo``); True when there was one.

    Raises
    ------
    IndexLockedError
        When a live writer holds the index (it rolls back by itself).
    """
    path = Path(path)
    wl = txn.WriterLock(path, "objsearch repair")
    try:
        return txn.rollback(path)
    finally:
        wl.release()


# ----------------------------------------------------------------------------------------------------- reading
class Catalog:
    """A read-only view of an index file (format 2, or format 1 through the same API).

    The attributes and the small arrays of the live rows are loaded when opened and validated; projected vectors
    are loaded on first use; raw features and thumbnails are read on demand. Ids are stable (format 1: rows).

    Attributes
    ----------
    path : Path
    format_version : int, 1 or 2
    uuid : str (32 hex digits; "" for format 1)
    generation : int, +1 per committed transaction
    state : str, "ready" or "analyzing"
    attrs : dict, the root attributes decoded (JSON ones as Python values)
    class_names : list of str
    n_features : int, D
    weights_sha256, base_dir : str
    roots : list of str, the root folders media paths are relative to (roots[0] == base_dir; see
        ``objsearch.roots`` for which of them may be read)
    root_macs : list of str, one per root: how this machine's user recorded it ("" when not)
    dims : list of int, the stored search projections' dimensions
    rerank_dims : int or None, the rerank projection's (``objsearch.rerank``), None for an index made without
    media_id : ndarray of shape (M,), int64, live media items in increasing id order
    media_path : list of M str, relative to their root (non-UTF-8 bytes as surrogate escapes)
    media_root : ndarray of shape (M,), int32, which root each path is relative to
    media_width, media_height : ndarray of shape (M,), int32 pixels
    media_frame_index : ndarray of shape (M,), int64 (-1 for an image)
    media_timestamp_s : ndarray of shape (M,), float64 seconds (-1.0 for an image)
    media_file_size, media_file_mtime_ns : ndarray of shape (M,), int64 (-1 unknown)
    object_id : ndarray of shape (N,), int64, live objects in increasing id order
    object_media_id : ndarray of shape (N,), int64
    xyxy : ndarray of shape (N, 4), float32 pixels in the media item
    confidence : ndarray of shape (N,), float32
    class_id : ndarray of shape (N,), int64
    skipped : list of SkippedFile
    has_image_vectors : bool, whether every media item has a whole-image feature and vectors (/image; files made
        before whole-image search have none: ``require_image_vectors`` says to run ``objsearch sync``)
    image_dims : list of int, the stored whole-image projection dimensions ([] without image vectors)
    image_recipe : dict, how the whole-image features were made ({} without)

    Raises
    ------
    IndexFileError
        When the file is missing, not HDF5, truncated, damaged (a failed checksum, an inconsistent or out-of-range
        value), hostile (links, external storage, virtual datasets), of another format, or left by a killed writer in
        a folder this process cannot write. ``IndexLockedError`` when a writer's commit takes longer than
        ``wait_s``.
    """

    def __init__(self, path: str | Path, *, wait_s: float = txn.LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self._wait_s = wait_s
        self._file: h5py.File | None = None
        if not self.path.is_file():
            journal = self.path.with_name(self.path.name + ".journal")
            hint = f" (an unfinished analysis is in {journal.name}; run analyze again to finish it)" \
                if journal.exists() else ""
            raise IndexFileError(f"index file {self.path} does not exist{hint}")
        with self._shared_lock():
            self._open_and_load()

    def _shared_lock(self) -> txn.FileLock:
        try:
            return _with_rollback(self.path, "objsearch (a reader rolling back)", time.monotonic() + self._wait_s)
        except FileNotFoundError:
            raise IndexFileError(f"index file {self.path} does not exist") from None

    def _open_and_load(self) -> None:
        """Open and load the file (the caller holds the shared lock)."""
        signature = _stat_signature(self.path)
        f = _open_read(self.path)
        try:
            version, attrs, tables = _load(f, self.path)
        except BaseException:
            _close(f)
            raise
        if self._file is not None:
            _close(self._file)
        self._file, self._signature = f, signature
        self._file_generation, self._file_uuid = int(attrs.get("generation", 0)), str(attrs.get("uuid", ""))
        self.format_version = version
        self.attrs = attrs
        self.uuid = str(attrs.get("uuid", ""))
        self.generation = int(attrs.get("generation", 0))
        self.state = str(attrs.get("state", "ready"))
        self.class_names = list(attrs.get("class_names", []))
        self.n_features = int(attrs["n_features"])
        self.weights_sha256 = str(attrs.get("weights_sha256", ""))
        self.base_dir = str(attrs.get("base_dir", ""))
        self.roots, self.root_macs = roots_of(attrs)
        self._projections = tables.projections
        self.dims = _search_dims(tables.projections)
        self.rerank_dims = _rerank_dims(tables.projections)
        self.skipped = tables.skipped
        m, o = tables.media, tables.objects
        media_rows = np.flatnonzero(m["alive"])
        self._media_file_rows = media_rows  # file rows of the live media items
        self.has_image_vectors = tables.has_image
        self._image_projections = tables.image_projections or {}
        self.image_dims = sorted(self._image_projections)
        self.image_recipe = dict(attrs.get("image_recipe") or {}) if tables.has_image else {}
        self._image_vectors: dict[int, np.ndarray] = {}
        self.media_id = m["id"][media_rows]
        self.media_path = tables.media_paths(media_rows)
        self.media_root = tables.roots_of(media_rows)
        self.media_width, self.media_height = m["width"][media_rows], m["height"][media_rows]
        self.media_frame_index, self.media_timestamp_s = m["frame_index"][media_rows], m["timestamp_s"][media_rows]
        self.media_file_size, self.media_file_mtime_ns = m["file_size"][media_rows], m["file_mtime_ns"][media_rows]
        rows = np.flatnonzero(o["alive"])
        self._rows = rows  # file rows of the live objects
        self.object_id = o["id"][rows]
        self.object_media_id = o["media_id"][rows]
        self.xyxy, self.confidence, self.class_id = o["xyxy"][rows], o["confidence"][rows], o["class_id"][rows]
        self._thumb_offset, self._thumb_length = o["thumb_offset"][rows], o["thumb_length"][rows]
        self._vectors: dict[int, np.ndarray] = {}

    # -- the file, reopened when a writer changed it (ids are stable; rows change only by compaction)
    def _current_file(self) -> h5py.File:
        """The open file, reopened (rows remapped by id) when another process committed since; the caller holds the
        shared lock."""
        if self._file is None:
            raise IndexFileError(f"{self.path} is closed")
        if _stat_signature(self.path) == self._signature:
            return self._file
        signature = _stat_signature(self.path)
        f = _open_read(self.path)
        try:
            _, tables_attrs, tables = _load(f, self.path)
        except BaseException:
            _close(f)
            raise
        ids = tables.objects["id"]
        pos = np.minimum(np.searchsorted(ids, self.object_id), max(len(ids) - 1, 0))
        found = (len(ids) > 0) & (ids[pos] == self.object_id) if len(ids) else np.zeros(len(self.object_id), bool)
        self._rows = np.where(found, pos, -1)
        self._thumb_offset = np.where(found, tables.objects["thumb_offset"][pos] if len(ids) else 0, -1)
        self._thumb_length = np.where(found, tables.objects["thumb_length"][pos] if len(ids) else 0, -1)
        mids = tables.media["id"]
        mpos = np.minimum(np.searchsorted(mids, self.media_id), max(len(mids) - 1, 0))
        mfound = (mids[mpos] == self.media_id) if len(mids) else np.zeros(len(self.media_id), bool)
        self._media_file_rows = np.where(mfound, mpos, -1)
        if not tables.has_image:
            self._media_file_rows = np.full(len(self.media_id), -1, np.int64)  # the image vectors are gone
        _close(self._file)
        self._file, self._signature = f, signature
        self._file_generation, self._file_uuid = int(tables_attrs.get("generation", 0)), tables_attrs.get("uuid", "")
        return f

    def _read(self, fn):
        with self._shared_lock():
            try:
                return fn(self._current_file())
            except IndexFileError:
                raise
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise _damaged(self.path, f"{type(exc).__name__}: {_one_line(exc)}") from None

    def changed(self) -> bool:
        """True when another process committed to the index since this view was loaded (reopen to see it)."""
        with self._shared_lock():
            self._current_file()  # reopened (and validated) when the file changed
        return (self._file_generation, self._file_uuid) != (self.generation, self.uuid)

    # -- media and objects
    def media(self, media_id: int) -> MediaRef:
        """The live media item ``media_id``. Raises KeyError for an unknown or removed id."""
        row = int(self.media_rows([media_id])[0])
        if row < 0:
            raise KeyError(f"media id {media_id} is not in {self.path.name}")
        return MediaRef(
            path=self.media_path[row], width=int(self.media_width[row]), height=int(self.media_height[row]),
            media_id=int(self.media_id[row]), frame_index=int(self.media_frame_index[row]),
            timestamp_s=float(self.media_timestamp_s[row]), file_size=int(self.media_file_size[row]),
            file_mtime_ns=int(self.media_file_mtime_ns[row]), root=int(self.media_root[row]),
        )

    @staticmethod
    def _positions(sorted_ids: np.ndarray, ids) -> np.ndarray:
        try:
            ids = np.asarray(ids, np.int64).reshape(-1)
        except OverflowError:  # an id beyond int64 (from a request) is no id of the index
            ids = np.array([i if -(1 << 63) <= i < (1 << 63) else -1 for i in map(int, np.ravel(ids))], np.int64)
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)

    def media_rows(self, media_ids) -> np.ndarray:
        """Positions (n,) int64 of ``media_ids`` in the ``media_*`` arrays; -1 for unknown or removed ids."""
        return self._positions(self.media_id, media_ids)

    def object_rows(self, object_ids) -> np.ndarray:
        """Positions (n,) int64 of ``object_ids`` in the object arrays; -1 for unknown or removed ids."""
        return self._positions(self.object_id, object_ids)

    def __len__(self) -> int:
        return len(self.object_id)

    def projection(self, dims: int) -> Projection:
        """The stored projection to ``dims`` dimensions (one of ``dims``, or ``rerank_dims``). Raises IndexFileError
        when the index has none."""
        if dims not in self._projections:
            raise IndexFileError(f"{self.path} holds projections to {self.dims} dims, not {dims}")
        return self._projections[dims]

    def require_image_vectors(self) -> None:
        """Raise IndexFileError (one line, saying to run ``objsearch sync``) when the index has no whole-image
        vectors."""
        if not self.has_image_vectors:
            raise IndexFileError(f"{self.path} has no whole-image vectors (it was made before image search); run "
                                 f"`objsearch sync -i {self.path}` to add them")

    def image_projection(self, dims: int) -> Projection:
        """The stored whole-image projection to ``dims`` dimensions. Raises IndexFileError when there is none."""
        self.require_image_vectors()
        if dims not in self._image_projections:
            raise IndexFileError(f"{self.path} holds whole-image projections to {self.image_dims} dims, not {dims}")
        return self._image_projections[dims]

    def image_vectors(self, dims: int) -> np.ndarray:
        """Projected whole-image vectors (M, dims) float32 aligned with ``media_id``, loaded once, checked finite."""
        if dims not in self._image_vectors:
            self.image_projection(dims)

            def load(f):
                rows = self._media_file_rows
                if np.any(rows < 0):
                    raise IndexFileError(f"{self.path} was compacted or changed since it was opened; open it again")
                vectors = f[f"image/projections/{dims}/vectors"][()][rows]
                if not _sane(vectors):
                    raise _damaged(self.path, f"/image/projections/{dims}/vectors holds non-finite values (or "
                                   f"beyond {MAX_ABS_VALUE:g})")
                return vectors

            self._image_vectors[dims] = self._read(load)
        return self._image_vectors[dims]

    def image_features(self, media_ids) -> np.ndarray:
        """Raw whole-image features (n, F) float32 of live ``media_ids``, read from disk. Raises KeyError for
        unknown ids, IndexFileError without image vectors."""
        self.require_image_vectors()
        pos = self.media_rows(media_ids)
        if np.any(pos < 0):
            bad = np.asarray(media_ids, np.int64).reshape(-1)[pos < 0][:5].tolist()
            raise KeyError(f"media ids {bad} are not in {self.path.name}")

        def load(f):
            rows = self._media_file_rows[pos]
            if np.any(rows < 0):
                raise IndexFileError(f"{self.path} was compacted or changed since it was opened; open it again")
            unique, inverse = np.unique(rows, return_inverse=True)
            out = f["image/features"][unique][inverse] if len(unique) else \
                np.zeros((0, int(self.image_recipe["n_features"])), np.float32)
            if not _sane(out):
                raise _damaged(self.path, f"/image/features holds non-finite values (or beyond {MAX_ABS_VALUE:g})")
            return out

        return self._read(load)

    def vectors(self, dims: int) -> np.ndarray:
        """Projected vectors (N, dims) float32 aligned with ``object_id``, loaded once and checked to be finite."""
        if dims not in self._vectors:
            self.projection(dims)

            def load(f):
                rows = self._rows
                if np.any(rows < 0):
                    raise IndexFileError(f"{self.path} was compacted since it was opened; open it again")
                vectors = f[f"projections/{dims}/vectors"][()][rows]
                if not _sane(vectors):
                    raise _damaged(self.path, f"/projections/{dims}/vectors holds non-finite values (or beyond "
                                   f"{MAX_ABS_VALUE:g})")
                return vectors

            self._vectors[dims] = self._read(load)
        return self._vectors[dims]

    def _file_rows(self, object_ids) -> np.ndarray:
        pos = self.object_rows(object_ids)
        if np.any(pos < 0):
            bad = np.asarray(object_ids, np.int64).reshape(-1)[pos < 0][:5].tolist()
            raise KeyError(f"object ids {bad} are not in {self.path.name}")
        return pos

    def features(self, object_ids) -> np.ndarray:
        """Raw features (n, D) float32 of live ``object_ids``, read from disk. Raises KeyError for unknown ids."""
        pos = self._file_rows(object_ids)
        if len(pos) == 0:
            return np.zeros((0, self.n_features), np.float32)

        def load(f):
            rows = self._rows[pos]
            if np.any(rows < 0):
                raise IndexFileError(f"{self.path} was compacted since it was opened; open it again")
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing unique indices
            out = f["objects/features"][unique][inverse]
            if not _sane(out):
                raise _damaged(self.path, f"/objects/features holds non-finite values (or beyond {MAX_ABS_VALUE:g})")
            return out

        return self._read(load)

    def thumbnail(self, object_id: int) -> bytes:
        """JPEG bytes of one live object's crop, read from disk. Raises KeyError for an unknown id."""
        pos = int(self._file_rows([object_id])[0])

        def load(f):
            row = int(self._rows[pos])
            if row < 0:
                raise IndexFileError(f"{self.path} was compacted since it was opened; open it again")
            if self.format_version == 1:
                data = f["objects/thumbnail"][row].tobytes()
                if len(data) > MAX_THUMBNAIL_BYTES:
                    raise _damaged(self.path, f"thumbnail of object {object_id} is larger than 4 MiB")
                return data
            off, length = int(self._thumb_offset[pos]), int(self._thumb_length[pos])
            return f["thumbnails"][off:off + length].tobytes()

        return self._read(load)

    def close(self) -> None:
        if self._file is not None:
            _close(self._file)
            self._file = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------- writing
def _create_dataset(f, name: str, dtype: str, shape: tuple, chunk_rows: int):
    return f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=np.dtype(dtype),
                            chunks=(chunk_rows,) + shape, fletcher32=True)


def _vector_chunk_rows(d: int) -> int:
    return max(1024, (1 << 16) // d)


def _create_projection(f, proj: Projection, n_rows: int, prefix: str = "projections"):
    state = proj.to_state()
    d = int(state["n_components"])
    name = f"{prefix}/{d}"
    if name in f:
        del f[name]
    g = f.require_group(prefix).create_group(str(d))
    g.attrs["method"] = np.bytes_(state["method"].encode())
    g.attrs["n_components"] = np.int64(d)
    g.attrs["random_state"] = np.int64(state["random_state"])
    for key, value in (("components", state["components"]), ("mean", state["mean"])):
        value = np.asarray(value, np.float32)
        ds = _create_dataset(f, f"{name}/{key}", "<f4", value.shape[1:], max(1, value.shape[0]))
        _extend(ds, value)
    ds = _create_dataset(f, f"{name}/vectors", "<f4", (d,), _vector_chunk_rows(d))
    ds.resize(n_rows, axis=0)
    return ds


def _create_image_group(f, n_image_features: int, projections, n_rows: int) -> None:
    """(Re)create /image with ``n_rows`` rows of features (zeros) and one vector dataset per projection."""
    if "image" in f:
        del f["image"]
    _create_dataset(f, "image/features", "<f4", (int(n_image_features),), IMAGE_FEATURE_CHUNK_ROWS).resize(n_rows,
                                                                                                         axis=0)
    f.require_group("image/projections")
    for proj in projections:
        _create_projection(f, proj, n_rows, prefix="image/projections")


def _new_file(path: Path, attrs: dict, n_features: int, projections: list[Projection],
              image_projections: list[Projection] | None = None) -> None:
    """Write an empty format 2 file at ``path`` (replaced if it exists); with ``image_projections`` (a list, maybe
    empty) also an empty /image group of ``attrs["image_recipe"]["n_features"]`` features."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_attr_phase_change(4096, 4096)  # keep the attributes in the checksummed object header
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
    with h5py.File(fid) as f:
        for name, (dtype, shape, rows) in MEDIA_COLUMNS.items():
            _create_dataset(f, f"media/{name}", dtype, shape, rows)
        for name, (dtype, shape, rows) in OBJECT_COLUMNS.items():
            _create_dataset(f, f"objects/{name}", dtype, shape, rows)
        _create_dataset(f, "objects/features", "<f4", (n_features,), FEATURE_CHUNK_ROWS)
        for name, rows in BLOBS.items():
            _create_dataset(f, name, "u1", (), rows)
        f.create_group("projections")
        for proj in projections:
            _create_projection(f, proj, 0)
        if image_projections is not None:
            _create_image_group(f, int(attrs["image_recipe"]["n_features"]), image_projections, 0)
        for key, value in _encode_attrs(attrs).items():
            f.attrs[key] = value


def _extend(ds, data) -> int:
    """Append ``data`` along axis 0; returns the old length."""
    n0 = ds.shape[0]
    data = np.asarray(data)
    if len(data):
        ds.resize(n0 + len(data), axis=0)
        ds[n0:n0 + len(data)] = data
    return n0


def _append(f, media: dict, paths: list[bytes], objects: dict, features: np.ndarray, thumbs: list[bytes],
            vectors: dict[int, np.ndarray], image_features: np.ndarray | None = None,
            image_vectors: dict[int, np.ndarray] | None = None) -> None:
    """Append rows to every dataset: media columns (without path_* and with ``paths`` bytes; ``root`` optional, 0
    when not given: /media/root is made when a row has another), object columns
    (without thumb_*, with ``thumbs`` JPEG bytes), features (n, D) and vectors {d: (n, d)}; when the file has
    /image, ``image_features`` (n_media, F) and ``image_vectors`` {d: (n_media, d)}."""
    n_media, n_obj = len(paths), len(thumbs)
    if n_media and "image" in f:
        if image_features is None or len(image_features) != n_media:
            raise ValueError("every media row of an index with image vectors needs its image feature")
        _extend(f["image/features"], np.asarray(image_features, np.float32))
        for d, vec in (image_vectors or {}).items():
            _extend(f[f"image/projections/{d}/vectors"], np.asarray(vec, np.float32))
    if n_media:
        roots = np.asarray(media.get("root", np.zeros(n_media)), np.int32)
        if "media/root" not in f and np.any(roots != 0):  # the first item under another root than the first
            _create_dataset(f, "media/root", "<i4", (), MEDIA_COLUMNS["id"][2]).resize(f["media/id"].shape[0],
                                                                                       axis=0)
        if "media/root" in f:
            _extend(f["media/root"], roots)
        lengths = np.array([len(p) for p in paths], np.int64)
        base = _extend(f["media/path_bytes"], np.frombuffer(b"".join(paths), np.uint8))
        media = {**media, "path_length": lengths.astype(np.int32),
                 "path_offset": base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)}
        for name, (dtype, _, _) in MEDIA_COLUMNS.items():
            _extend(f[f"media/{name}"], np.asarray(media[name], np.dtype(dtype)))
    if n_obj:
        lengths = np.array([len(t) for t in thumbs], np.int64)
        base = _extend(f["thumbnails"], np.frombuffer(b"".join(thumbs), np.uint8))
        objects = {**objects, "thumb_length": lengths.astype(np.int32),
                   "thumb_offset": base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)}
        for name, (dtype, _, _) in OBJECT_COLUMNS.items():
            _extend(f[f"objects/{name}"], np.asarray(objects[name], np.dtype(dtype)))
        _extend(f["objects/features"], np.asarray(features, np.float32))
        for d, vec in vectors.items():
            _extend(f[f"projections/{d}/vectors"], np.asarray(vec, np.float32))


def _write_alive(ds, rows: np.ndarray) -> None:
    """Set alive=0 at ``rows`` (sorted unique), one slice write per run of consecutive rows."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) > 1) + 1
    for run in np.split(rows, breaks):
        ds[int(run[0]):int(run[-1]) + 1] = 0


def _fill_vectors(f, d: int, proj: Projection, chunk: int = STREAM_ROWS, prefix: str = "projections",
                  source: str = "objects/features") -> None:
    """Compute /<prefix>/<d>/vectors for every row from the stored features, ``chunk`` rows at a time."""
    feats, out = f[source], f[f"{prefix}/{d}/vectors"]
    for start in range(0, feats.shape[0], chunk):
        stop = min(start + chunk, feats.shape[0])
        rows = feats[start:stop]
        if not _sane(rows):  # the transaction is rolled back
            raise IndexFileError(f"/{source} holds non-finite values (or beyond {MAX_ABS_VALUE:g}): the index is "
                                 f"damaged")
        out[start:stop] = proj.transform(rows)


@dataclass
class _Pending:
    media: list[MediaRecord] = field(default_factory=list)
    media_ids: list[int] = field(default_factory=list)
    object_ids: list[np.ndarray] = field(default_factory=list)
    remove_media: set[int] = field(default_factory=set)
    remove_objects: set[int] = field(default_factory=set)  # ids of live objects (committed or pending) to remove
    remove_object_rows: set[int] = field(default_factory=set)  # file rows of the committed ones among them
    skipped: list[SkippedFile] | None = None
    attrs: dict = field(default_factory=dict)
    projections: dict[int, Projection] = field(default_factory=dict)
    # set_image_vectors: (recipe, media ids (n,), features (n, F), projections)
    image: tuple | None = None

    def __bool__(self) -> bool:
        return bool(self.media or self.remove_media or self.remove_objects or self.skipped is not None
                    or self.attrs or self.projections or self.image is not None)


class CatalogWriter:
    """The one writer of a format 2 index: buffered adds and removals applied in crash-safe transactions.

    Obtain one with ``CatalogWriter.create`` or ``CatalogWriter.open``; it holds ``INDEX.h5.lock`` until
    ``close()``. Ids are assigned when ``add`` is called, in call order, and never reused. ``commit`` applies
    everything buffered in one transaction: a process killed at any point leaves the file as it was before the
    commit (rolled back by the next opener) or after it. The ``media_*``/``object_*`` accessors show the committed
    state (live rows).

    Parameters (of ``open``)
    ----------
    path : the index file.
    description : who writes (shown to a second writer that is refused), e.g. ``"objsearch add"``.
    fsync : fsync the undo log before each overwrite and the data file at commit (durability against power loss;
        without it a commit survives ``kill -9`` but not a power cut).

    Raises
    ------
    IndexLockedError
        When another writer holds the index.
    IndexFileError
        When the file is not a valid format 2 index (format 1: run ``objsearch convert``).
    """

    def __init__(self, path: Path, lock: txn.WriterLock, *, fsync: bool) -> None:
        self.path = Path(path)
        self._lock = lock
        self._fsync = fsync
        self._pending = _Pending()
        self.last_commit_stats: dict = {}
        try:
            self._reload()
        except BaseException:
            lock.release()
            raise

    # -- opening
    @classmethod
    def create(cls, path: str | Path, *, attrs: dict, n_features: int, projections: list[Projection] = (),
               overwrite: bool = False, description: str = "objsearch", fsync: bool = True,
               image_projections: list[Projection] | None = None) -> CatalogWriter:
        """Write a new, empty index (``path.tmp``, then renamed) and open it for writing.

        Parameters
        ----------
        attrs : root attributes (weights_sha256, weights_name, feature_recipe, config, class_names, base_dir, roots,
            root_macs, ...; ``image_recipe`` with an integer ``n_features`` F when ``image_projections`` is given;
            ``uuid`` (32 hex digits) when the caller made it, e.g. to record its roots; otherwise one is made).
        n_features : D, the raw feature length (>= 1).
        projections : fitted projections with ``n_features_in_ == D``, one per stored dimension.
        image_projections : fitted projections with ``n_features_in_ == F`` of the whole-image features: every
            media item added must then carry ``detections.image_feature`` (F,). None: no image vectors.

        Raises
        ------
        IndexFileError
            When ``path`` exists and ``overwrite`` is False. ValueError for a bad ``n_features`` or projection.
        """
        path = Path(path)
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        uid = str(attrs.get("uuid") or uuid_module.uuid4().hex)
        if len(uid) != 32 or any(c not in "0123456789abcdef" for c in uid):
            raise ValueError(f"uuid must be 32 hex digits, got {uid!r}")
        for proj in projections:
            _check_projection(proj, int(n_features))
        if image_projections is not None:
            n_image = (attrs.get("image_recipe") or {}).get("n_features")
            if not isinstance(n_image, int) or n_image < 1:
                raise ValueError("image_projections need attrs['image_recipe'] with an integer n_features >= 1")
            for proj in image_projections:
                _check_projection(proj, n_image)
        lock = txn.WriterLock(path, description)
        try:
            if path.exists() and not overwrite:
                raise IndexFileError(f"{path} already exists; pass overwrite=True to replace it")
            undo = txn.undo_path(path)
            if undo.exists():
                undo.unlink()  # a killed writer's transaction on the file being replaced
            full = {"state": "ready", "weights_sha256": "", "weights_name": "", "feature_recipe": {}, "config": {},
                    "class_names": [], "base_dir": "", **attrs,
                    "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "uuid": uid,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "generation": 0,
                    "n_features": int(n_features), "next_media_id": 0, "next_object_id": 0}
            tmp = path.with_name(path.name + ".tmp")
            with _removed_on_failure(tmp):
                _new_file(tmp, full, int(n_features), list(projections),
                          None if image_projections is None else list(image_projections))
                _fsync_path(tmp)
                os.replace(tmp, path)
            txn.fsync_dir(path.parent)
        except BaseException:
            lock.release()
            raise
        return cls(path, lock, fsync=fsync)

    @classmethod
    def open(cls, path: str | Path, *, description: str = "objsearch", fsync: bool = True) -> CatalogWriter:
        """Open an existing format 2 index for writing (rolling back a killed writer's transaction first)."""
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"index file {path} does not exist")
        lock = txn.WriterLock(path, description)
        try:
            txn.rollback(path)
        except BaseException:
            lock.release()
            raise
        return cls(path, lock, fsync=fsync)

    def _reload(self) -> None:
        """Load the attributes, the media rows and the object datasets' shapes; object rows are read when a change
        needs them (``_object_rows``), so opening costs O(media), not O(objects)."""
        with txn.FileLock(self.path, exclusive=False):
            f = _open_read(self.path)
            try:
                version, attrs, tables = _load(f, self.path, objects=False)
            finally:
                _close(f)
        if version != FORMAT_VERSION:
            raise IndexFileError(f"{self.path} has index format version {version}; run `objsearch convert "
                                 f"{self.path} NEW.h5` to get a format {FORMAT_VERSION} index that can be updated")
        self.attrs, self._t = attrs, tables
        self._size = os.path.getsize(self.path)
        self._n_live_objects: int | None = None  # counted from /objects/alive when first asked

    # -- object rows, read from the file on demand
    def _object_column(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """/objects/<name> of the committed rows (all, or a slice)."""
        with txn.FileLock(self.path, exclusive=False), _reading(self.path) as f:
            ds = f[f"objects/{name}"]
            return ds[()] if rows is None else ds[rows]

    def _object_rows(self, column: str, values) -> np.ndarray:
        """File rows (sorted) of the committed objects whose ``column`` (``id``: strictly increasing with the row;
        ``media_id``: non-decreasing, as objects are appended with their media item) is in ``values``: a binary
        search on the file per value (a few chunk reads), or one read of the column when there are more values than
        the column has chunks."""
        values = np.unique(np.asarray(values, np.int64).reshape(-1))
        n = self._t.n_object_rows
        if not len(values) or not n:
            return np.zeros(0, np.int64)
        with txn.FileLock(self.path, exclusive=False), _reading(self.path) as f:
            ds = f[f"objects/{column}"]
            if len(values) > -(-n // ds.chunks[0]):
                col = ds[()]
                lo, hi = np.searchsorted(col, values, "left"), np.searchsorted(col, values, "right")
            else:
                class _Column:  # what bisect needs: len and one element at a time (HDF5 caches the chunk)
                    def __len__(self):
                        return n

                    def __getitem__(self, i):
                        return int(ds[i])

                column_view = _Column()
                lo = np.array([bisect.bisect_left(column_view, int(v)) for v in values], np.int64)
                hi = np.array([bisect.bisect_right(column_view, int(v)) for v in values], np.int64)
            rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(lo) else np.zeros(0, np.int64)
            if len(rows):  # the range found is checked: a file out of order gives no wrong row
                lo_r, hi_r = int(rows.min()), int(rows.max()) + 1
                got = ds[lo_r:hi_r][rows - lo_r]
                rows = rows[np.isin(got, values)]
        return rows.astype(np.int64)

    @property
    def n_objects(self) -> int:
        """Live objects, committed (counted from /objects/alive once, 1 byte per object row, then kept)."""
        if self._n_live_objects is None:
            self._n_live_objects = int(np.count_nonzero(self._object_column("alive")))
        return self._n_live_objects

    # -- committed state
    @property
    def generation(self) -> int:
        return int(self.attrs["generation"])

    @property
    def next_media_id(self) -> int:
        return int(self.attrs["next_media_id"]) + len(self._pending.media_ids)

    @property
    def next_object_id(self) -> int:
        return int(self.attrs["next_object_id"]) + sum(len(ids) for ids in self._pending.object_ids)

    @property
    def n_features(self) -> int:
        return int(self.attrs["n_features"])

    @property
    def base_dir(self) -> str:
        return str(self.attrs.get("base_dir", ""))

    @property
    def weights_sha256(self) -> str:
        return str(self.attrs.get("weights_sha256", ""))

    @property
    def roots(self) -> list[str]:
        """The root folders (committed, or set since with ``set_attrs(roots=...)``)."""
        return roots_of({**self.attrs, **self._pending.attrs})[0]

    @property
    def root_macs(self) -> list[str]:
        """One MAC per root ("" when none; committed, or set since)."""
        return roots_of({**self.attrs, **self._pending.attrs})[1]

    @property
    def skipped(self) -> list[SkippedFile]:
        """The skipped files, committed ones or those set since."""
        return list(self._pending.skipped if self._pending.skipped is not None else self._t.skipped)

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names", []))

    @property
    def dims(self) -> list[int]:
        """The search vectors' dimensions (the rerank projection's is ``rerank_dims``)."""
        return _search_dims(self._t.projections)

    @property
    def rerank_dims(self) -> int | None:
        return _rerank_dims(self._t.projections)

    @property
    def has_image_vectors(self) -> bool:
        """Whether every media item has a whole-image feature and vectors (committed, or set since)."""
        return self._t.has_image or self._pending.image is not None

    @property
    def n_image_features(self) -> int:
        """F of the whole-image features (committed, or set since); 0 without."""
        if self._pending.image is not None:
            return int(self._pending.image[0]["n_features"])
        return int(self._t.n_image_features) if self._t.has_image else 0

    @property
    def image_recipe(self) -> dict:
        """How the whole-image features were made ({} without)."""
        if self._pending.image is not None:
            return dict(self._pending.image[0])
        return dict(self.attrs.get("image_recipe") or {}) if self._t.has_image else {}

    def projection(self, dims: int) -> Projection:
        if dims not in self._t.projections:
            raise IndexFileError(f"{self.path} holds projections to {self.dims} dims, not {dims}")
        return self._t.projections[dims]

    def _live_media(self) -> np.ndarray:
        return np.flatnonzero(self._t.media["alive"])

    def _live_objects(self) -> np.ndarray:
        return np.flatnonzero(self._object_column("alive"))

    @property
    def media_id(self) -> np.ndarray:
        return self._t.media["id"][self._live_media()]

    @property
    def media_path(self) -> list[str]:
        return self._t.media_paths(self._live_media())

    @property
    def media_root(self) -> np.ndarray:
        return self._t.roots_of(self._live_media())

    @property
    def media_file_size(self) -> np.ndarray:
        return self._t.media["file_size"][self._live_media()]

    @property
    def media_file_mtime_ns(self) -> np.ndarray:
        return self._t.media["file_mtime_ns"][self._live_media()]

    @property
    def media_frame_index(self) -> np.ndarray:
        return self._t.media["frame_index"][self._live_media()]

    @property
    def object_id(self) -> np.ndarray:
        """Live object ids (read from the file: O(objects); ``n_objects`` counts them)."""
        return self._object_column("id")[self._live_objects()]

    @property
    def object_media_id(self) -> np.ndarray:
        return self._object_column("media_id")[self._live_objects()]

    def find_media(self, keys) -> dict[tuple[int, str], int]:
        """{(root, path): media id} of the live committed media items among ``keys`` ((root, path relative to it)
        pairs), found without a Python object per indexed item (``_Tables.find_paths``)."""
        encoded = {(int(r), os.fsencode(rel)): (int(r), rel) for r, rel in keys}
        found = self._t.find_paths(list(encoded))
        return {encoded[key]: int(self._t.media["id"][row]) for key, row in found.items()}

    def media_under(self, root: int, folder: str) -> np.ndarray:
        """Ids of the live committed media items of ``root`` whose path is ``folder`` or lies under it ("" or
        ".": all of the root)."""
        return self._t.media["id"][self._t.rows_under(root, os.fsencode(folder))]

    def iter_features(self, chunk: int = STREAM_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(object_ids (n,) int64, features (n, D) float32)`` of the committed live objects, ``chunk`` rows
        of the file at a time (memory O(chunk)), e.g. for a streaming PCA fit."""
        with txn.FileLock(self.path, exclusive=False), _reading(self.path) as f:
            feats, alive, ids = f["objects/features"], f["objects/alive"], f["objects/id"]
            for start in range(0, feats.shape[0], chunk):
                stop = min(start + chunk, feats.shape[0])
                keep = alive[start:stop] == 1
                if keep.any():
                    rows = feats[start:stop][keep]
                    if not _sane(rows):
                        raise _damaged(self.path, f"/objects/features holds non-finite values (or beyond "
                                       f"{MAX_ABS_VALUE:g})")
                    yield ids[start:stop][keep], rows

    # -- buffering
    def add(self, record: MediaRecord) -> tuple[int, np.ndarray]:
        """Buffer one analysed media item; its ids are assigned now.

        Parameters
        ----------
        record : ``record.detections`` with features (n, D) float32, finite boxes and confidences and class ids
            in [0, len(class_names)); ``record.media.path`` relative to its root ``record.media.root`` (an index
            into ``roots``).

        Returns
        -------
        media_id : int
        object_ids : ndarray of shape (n,), int64

        Raises
        ------
        ValueError
            When the record does not fit this index (feature length, values, thumbnail size).
        """
        det, ref = record.detections, record.media
        n = len(det)
        feats = det.features if det.features is not None else (np.zeros((0, self.n_features), np.float32)
                                                                if n == 0 else None)
        if feats is None or feats.shape != (n, self.n_features):
            raise ValueError(f"features must have shape ({n}, {self.n_features}), got "
                             f"{None if det.features is None else det.features.shape}")
        if not (np.all(np.isfinite(det.xyxy)) and np.all(np.isfinite(det.confidence)) and np.all(np.isfinite(feats))):
            raise ValueError("boxes, confidences and features must be finite")
        if n and (det.class_id.min() < 0 or det.class_id.max() >= len(self.class_names)):
            raise ValueError(f"class ids must be in [0, {len(self.class_names)}), got {det.class_id.min()}.."
                             f"{det.class_id.max()}")
        if any(len(t) > MAX_THUMBNAIL_BYTES for t in record.thumbnails):
            raise ValueError("a thumbnail is larger than 4 MiB")
        if self.has_image_vectors:
            img = det.image_feature
            if img is None or img.shape != (self.n_image_features,) or not np.all(np.isfinite(img)):
                raise ValueError(f"this index stores whole-image vectors: detections.image_feature must be finite "
                                 f"with shape ({self.n_image_features},), got "
                                 f"{None if img is None else img.shape}")
        if len(os.fsencode(ref.path)) > MAX_PATH_BYTES:
            raise ValueError(f"a media path is longer than {MAX_PATH_BYTES} bytes")
        if not np.isfinite(ref.timestamp_s) or ref.frame_index < -1 or ref.width < 0 or ref.height < 0:
            raise ValueError(f"invalid media fields: {ref}")
        if not 0 <= int(ref.root) < len(self.roots):
            raise ValueError(f"media root must be in [0, {len(self.roots)}) (the roots), got {ref.root}")
        media_id = self.next_media_id
        object_ids = np.arange(self.next_object_id, self.next_object_id + n, dtype=np.int64)
        self._pending.media.append(record)
        self._pending.media_ids.append(media_id)
        self._pending.object_ids.append(object_ids)
        return media_id, object_ids.copy()

    def remove_media(self, media_ids) -> int:
        """Buffer the removal of media items and all their objects; returns the number of objects removed.
        Unknown or already removed ids are ignored."""
        ids = {int(i) for i in np.asarray(media_ids, np.int64).reshape(-1)}
        p = self._pending
        pending = set(p.media_ids)
        committed = np.asarray(sorted(ids - pending), np.int64)
        committed = committed[np.isin(committed, self.media_id)]  # live ones only
        ids = (set(committed.tolist()) | (ids & pending)) - p.remove_media
        p.remove_media |= ids
        rows, found = self._live_object_rows(self._object_rows("media_id", sorted(ids - pending)))
        hit = set(found.tolist())
        for mid, oid in zip(p.media_ids, p.object_ids):
            if mid in ids:
                hit |= set(oid.tolist())
        hit -= p.remove_objects
        p.remove_objects |= hit
        p.remove_object_rows |= set(rows.tolist())
        return len(hit)

    def _live_object_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ids), aligned, of the live objects among committed file ``rows`` (sorted)."""
        if not len(rows):
            return rows, rows
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        with txn.FileLock(self.path, exclusive=False), _reading(self.path) as f:
            alive = f["objects/alive"][lo:hi][rows - lo]
            ids = f["objects/id"][lo:hi][rows - lo]
        keep = alive == 1
        return rows[keep], ids[keep]

    def remove_objects(self, object_ids) -> int:
        """Buffer the removal of objects; returns how many were live. Unknown or removed ids are ignored."""
        ids = {int(i) for i in np.asarray(object_ids, np.int64).reshape(-1)}
        p = self._pending
        pending = {int(i) for oid in p.object_ids for i in oid}
        rows, live = self._live_object_rows(self._object_rows("id", sorted(ids - pending)))
        hit = (set(live.tolist()) | (ids & pending)) - p.remove_objects
        p.remove_objects |= hit
        p.remove_object_rows |= set(rows[np.isin(live, list(hit))].tolist())
        return len(hit)

    def set_skipped(self, skipped: list[SkippedFile]) -> None:
        """Replace the list of skipped files at the next commit."""
        self._pending.skipped = [SkippedFile(str(s.path), str(s.reason), int(s.root)) for s in skipped]

    def set_attrs(self, **attrs) -> None:
        """Set root attributes at the next commit (the format's own bookkeeping attributes cannot be set)."""
        reserved = {"format", "format_version", "uuid", "created", "generation", "n_features", "next_media_id",
                    "next_object_id", *_META_ATTRS}
        bad = sorted(set(attrs) & reserved)
        if bad:
            raise ValueError(f"attributes {bad} are managed by the catalog and cannot be set")
        if "state" in attrs and attrs["state"] not in _STATES:
            raise ValueError(f"state must be one of {_STATES}, got {attrs['state']!r}")
        if "class_names" in attrs and not all(isinstance(n, str) for n in attrs["class_names"]):
            raise ValueError("class_names must be a list of str")
        if "roots" in attrs or "root_macs" in attrs or "base_dir" in attrs:
            merged = {**self.attrs, **self._pending.attrs, **attrs}
            try:
                _check_roots(merged, self.path)
            except IndexFileError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
            if len(roots_of(merged)[0]) < len(self.roots):
                raise ValueError("roots cannot be taken away (media items are relative to them)")
        self._pending.attrs.update(attrs)

    def set_projection(self, proj: Projection) -> None:
        """Add or replace the projection to ``proj.n_components`` dims at the next commit; its vectors are computed
        then for every row from the stored features, 65536 rows at a time."""
        _check_projection(proj, self.n_features)
        self._pending.projections[int(proj.n_components)] = proj

    def set_image_vectors(self, recipe: dict, media_ids, features, projections: list[Projection]) -> None:
        """(Re)make the whole-image features and vectors of every live media item at the next commit, in the same
        transaction (``sync`` on an index made before image search).

        Parameters
        ----------
        recipe : how the features were made, with an integer ``n_features`` F (stored as ``image_recipe``).
        media_ids : ndarray of shape (n,), int64: every committed live media item, each once.
        features : ndarray of shape (n, F), float32, finite.
        projections : fitted projections over F, one per stored dimension.

        Raises
        ------
        ValueError
            When the ids are not exactly the live media items, or a shape or value is wrong. Nothing is buffered.
        """
        n_image = recipe.get("n_features") if isinstance(recipe, dict) else None
        if not isinstance(n_image, int) or n_image < 1:
            raise ValueError("recipe must be a mapping with an integer n_features >= 1")
        ids = np.asarray(media_ids, np.int64).reshape(-1)
        features = np.asarray(features, np.float32)
        if features.shape != (len(ids), n_image) or not np.all(np.isfinite(features)):
            raise ValueError(f"features must be finite with shape ({len(ids)}, {n_image}), got {features.shape}")
        if self._pending.media or self._pending.remove_media:
            raise ValueError("commit the buffered media changes before setting the image vectors")
        if len(np.unique(ids)) != len(ids) or set(ids.tolist()) != set(self.media_id.tolist()):
            raise ValueError("media_ids must be every live media item, each once")
        for proj in projections:
            _check_projection(proj, n_image)
        self._pending.image = (dict(recipe), ids, features, list(projections))

    def rollback(self) -> None:
        """Drop everything buffered since the last commit (ids handed out are not reused... by anyone: they are
        simply never stored)."""
        self._pending = _Pending()

    # -- the transaction
    def commit(self, **attrs) -> int:
        """Apply everything buffered (and ``attrs``) in one transaction; returns the new generation.

        Raises
        ------
        ValueError
            For attributes that cannot be set (nothing is applied).
        IndexFileError
            When the file changed under the lock or an I/O error occurred (the transaction is rolled back).
        """
        if attrs:
            self.set_attrs(**attrs)
        p = self._pending
        if not p:
            return self.generation
        t = self._t
        started = time.perf_counter()
        fd = os.open(self.path, os.O_RDWR)
        try:
            lock = txn.FileLock(self.path, exclusive=True, fd=fd)
            try:
                if os.fstat(fd).st_size != self._size or txn.undo_path(self.path).exists():
                    raise IndexFileError(f"{self.path} changed while this writer held it; open it again")
                undo = txn.UndoLog(txn.undo_path(self.path), self._size, fsync=self._fsync)
                jfile = txn.JournaledFile(fd, undo)
                try:
                    new_attrs, new_tables = self._apply(jfile)
                    if jfile.failed is not None:  # a write failed (a full disk): never past the commit point
                        raise jfile.failed
                    if self._fsync:
                        os.fsync(fd)
                except BaseException as exc:
                    undo.close()
                    self._restore(fd, undo)
                    if jfile.failed is not None and exc is not jfile.failed:
                        raise jfile.failed from None  # the cause, not what HDF5 made of the unwritten bytes
                    raise
                undo.remove()  # the commit point
            finally:
                lock.release()
        finally:
            os.close(fd)
        self.attrs, self._t = new_attrs, new_tables
        self._size = os.path.getsize(self.path)
        if self._n_live_objects is not None:
            self._n_live_objects += sum(len(ids) for ids in p.object_ids) - len(p.remove_objects)
        self._pending = _Pending()
        self.last_commit_stats = {"seconds": time.perf_counter() - started, "writes": jfile.n_writes,
                                  "bytes_written": jfile.bytes_written, "undo_bytes": len(jfile._saved) * txn.PAGE}
        LOGGER.debug("committed generation %d of %s: %s", self.generation, self.path, self.last_commit_stats)
        return self.generation

    def _restore(self, fd: int, undo: txn.UndoLog) -> None:
        """Roll back the failed transaction in place (the exclusive lock on ``fd`` is held)."""
        parsed = txn.read_undo(undo.path)
        if parsed is not None:
            size, ranges = parsed
            for offset, payload in ranges:
                os.pwrite(fd, payload, offset)
            os.ftruncate(fd, size)
            os.fsync(fd)
        os.unlink(undo.path)

    def _apply(self, jfile: txn.JournaledFile) -> tuple[dict, _Tables]:
        """Write the pending changes through ``jfile``; returns the new attrs and tables (nothing in self changes)."""
        p, t = self._pending, self._t
        D = self.n_features
        recs = p.media
        m_new = {
            "id": np.array(p.media_ids, np.int64),
            "width": np.array([r.media.width for r in recs], np.int32),
            "height": np.array([r.media.height for r in recs], np.int32),
            "frame_index": np.array([r.media.frame_index for r in recs], np.int64),
            "timestamp_s": np.array([r.media.timestamp_s for r in recs], np.float64),
            "file_size": np.array([r.media.file_size for r in recs], np.int64),
            "file_mtime_ns": np.array([r.media.file_mtime_ns for r in recs], np.int64),
            "alive": np.ones(len(recs), np.uint8),
            "root": np.array([r.media.root for r in recs], np.int32),
        }
        paths = [os.fsencode(r.media.path) for r in recs]
        det = Detections.concat([r.detections for r in recs]) if recs else Detections.empty(D)
        feats = det.features if det.features is not None and len(det) else np.zeros((0, D), np.float32)
        o_new = {
            "id": np.concatenate(p.object_ids) if recs else np.zeros(0, np.int64),
            "media_id": np.concatenate([np.full(len(r.detections), mid, np.int64)
                                        for mid, r in zip(p.media_ids, recs)]) if recs else np.zeros(0, np.int64),
            "xyxy": det.xyxy, "confidence": det.confidence, "class_id": det.class_id,
            "alive": np.ones(len(det), np.uint8),
        }
        thumbs = [bytes(b) for r in recs for b in r.thumbnails]
        kept = {d: proj for d, proj in t.projections.items() if d not in p.projections}
        vectors = {d: proj.transform(feats) for d, proj in kept.items()}
        image_projections = (p.image[3] if p.image is not None else
                             list(t.image_projections.values()) if t.has_image else None)
        image_feats = image_vectors = None
        if image_projections is not None:
            n_image = int(p.image[0]["n_features"]) if p.image is not None else t.n_image_features
            image_feats = np.stack([r.detections.image_feature for r in recs]).astype(np.float32) if recs else \
                np.zeros((0, n_image), np.float32)
            image_vectors = {int(proj.n_components): proj.transform(image_feats) for proj in image_projections}
        with h5py.File(jfile, "r+", libver=LIBVER, locking=False) as f:
            n_media0, n_obj0 = f["media/id"].shape[0], f["objects/id"].shape[0]
            if n_media0 != len(t.media["id"]) or n_obj0 != t.n_object_rows:
                raise IndexFileError(f"{self.path} changed while this writer held it; open it again")
            path_base = f["media/path_bytes"].shape[0]
            thumb_base = f["thumbnails"].shape[0]
            if p.image is not None:  # every committed row gets its image feature (dead rows: zeros, never read)
                recipe, ids, image_rows, projs = p.image
                _create_image_group(f, int(recipe["n_features"]), projs, n_media0)
                rows = np.searchsorted(t.media["id"], ids)
                full = np.zeros((n_media0, int(recipe["n_features"])), np.float32)
                full[rows] = image_rows
                if n_media0:
                    f["image/features"][:] = full
                for proj in projs:
                    _fill_vectors(f, int(proj.n_components), proj, prefix="image/projections",
                                  source="image/features")
            _append(f, m_new, paths, o_new, feats, thumbs, vectors, image_feats, image_vectors)
            n_rows = n_obj0 + len(thumbs)
            for d, proj in p.projections.items():
                _create_projection(f, proj, n_rows)
                _fill_vectors(f, d, proj)
            # tombstones (rows of committed and just appended items)
            all_media_ids = np.concatenate([t.media["id"], m_new["id"]])
            media_rows = np.flatnonzero(np.isin(all_media_ids, list(p.remove_media)))
            new_rows = n_obj0 + np.flatnonzero(np.isin(o_new["id"], list(p.remove_objects)))
            obj_rows = np.union1d(np.asarray(sorted(p.remove_object_rows), np.int64), new_rows).astype(np.int64)
            _write_alive(f["media/alive"], media_rows)
            _write_alive(f["objects/alive"], obj_rows)
            if p.skipped is not None:
                blob = _skipped_to_json(p.skipped)
                ds = f["skipped"]
                ds.resize(len(blob), axis=0)
                if blob:
                    ds[:] = np.frombuffer(blob, np.uint8)
            attrs = {**self.attrs, **p.attrs, "generation": self.generation + 1,
                     "next_media_id": self.next_media_id, "next_object_id": self.next_object_id}
            if p.image is not None:
                attrs["image_recipe"] = p.image[0]
            encoded = _encode_attrs(attrs)
            for key in set(f.attrs.keys()) - set(encoded):
                del f.attrs[key]
            for key, value in encoded.items():
                old = f.attrs.get(key)
                if old is None or type(old) is not type(value) or old != value:
                    f.attrs[key] = value
        # the new in-memory tables
        lengths = np.array([len(x) for x in paths], np.int64)
        m_new["path_length"] = lengths.astype(np.int32)
        m_new["path_offset"] = path_base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)[:len(paths)]
        tl = np.array([len(x) for x in thumbs], np.int64)
        o_new["thumb_length"] = tl.astype(np.int32)
        o_new["thumb_offset"] = thumb_base + np.concatenate([[0], np.cumsum(tl)[:-1]]).astype(np.int64)[:len(thumbs)]
        o_new["class_id"] = o_new["class_id"].astype(np.int64)
        media = {k: np.concatenate([t.media[k], np.asarray(m_new[k], t.media[k].dtype)]) for k in t.media}
        media_root = None if t.media_root is None and not np.any(m_new["root"]) else np.concatenate(
            [t.roots_of(np.arange(len(t.media["id"]))), m_new["root"]])
        media["alive"][media_rows] = 0
        tables = _Tables(media, t.path_bytes + b"".join(paths), None, thumb_base + int(tl.sum()),
                         projections={**kept, **p.projections},
                         skipped=list(t.skipped) if p.skipped is None else list(p.skipped),
                         image_projections=None if image_projections is None else
                         {int(proj.n_components): proj for proj in image_projections},
                         n_image_features=int(p.image[0]["n_features"]) if p.image is not None
                         else t.n_image_features, media_root=media_root,
                         n_object_rows=n_obj0 + len(o_new["id"]))
        return _decode_attrs(encoded, self.path), tables

    # -- compaction
    def compact(self) -> tuple[int, int]:
        """Rewrite the live rows into ``path.tmp`` (ids, uuid kept; generation + 1) and rename it over the index.

        Returns ``(rows before, rows after)`` of /objects. Raises ValueError when changes are buffered.
        """
        if self._pending:
            raise ValueError("commit or drop the buffered changes before compacting")
        before = self._t.n_object_rows
        tmp = self.path.with_name(self.path.name + ".tmp")
        attrs = {**self.attrs, "generation": self.generation + 1}
        with _removed_on_failure(tmp):
            with txn.FileLock(self.path, exclusive=False), _reading(self.path) as src:
                _, _, full = _load(src, self.path)  # every row: compaction is O(objects) anyway
                _copy_live(src, tmp, attrs, full, 2)
            _fsync_path(tmp)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                with txn.FileLock(self.path, exclusive=True, fd=fd):
                    os.replace(tmp, self.path)
                    txn.fsync_dir(self.path.parent)
            finally:
                os.close(fd)
        self._reload()
        return before, self._t.n_object_rows

    def close(self) -> None:
        """Drop anything uncommitted and release the writer lock."""
        self._pending = _Pending()
        self._lock.release()

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_projection(proj: Projection, n_features: int) -> None:
    if not hasattr(proj, "components_") or getattr(proj, "n_features_in_", None) != n_features:
        raise ValueError(f"projections must be fitted on {n_features} features, got "
                         f"{getattr(proj, 'n_features_in_', 'an unfitted one')}")


@contextlib.contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """Remove the half-written ``tmp`` when the block fails (a full disk leaves no stray file behind)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_live(src: h5py.File, dst: Path, attrs: dict, t: _Tables, version: int) -> None:
    """Write the live rows of ``src`` (loaded as ``t``) into a new format 2 file ``dst``; vectors are copied."""
    n_features = int(attrs["n_features"])
    image_projs = list(t.image_projections.values()) if t.has_image else None
    if not t.has_image:
        attrs = {k: v for k, v in attrs.items() if k != "image_recipe"}
    _new_file(dst, attrs, n_features, [], image_projs)
    m, o = t.media, t.objects
    media_rows = np.flatnonzero(m["alive"])
    obj_rows = np.flatnonzero(o["alive"])
    fapl_kw = {"libver": LIBVER, "locking": False}
    with h5py.File(dst, "r+", **fapl_kw) as f:
        for proj in t.projections.values():
            _create_projection(f, proj, 0)
        image_feats = image_vectors = None
        if t.has_image:
            image_feats = src["image/features"][()][media_rows]
            image_vectors = {d: src[f"image/projections/{d}/vectors"][()][media_rows] for d in t.image_projections}
        _append(f, {**{k: v[media_rows] for k, v in m.items()}, "root": t.roots_of(media_rows)},
                [os.fsencode(p) for p in t.media_paths(media_rows)],
                {}, np.zeros((0, n_features), np.float32), [], {}, image_feats, image_vectors)
        feats = src["objects/features"]
        for start in range(0, len(obj_rows), STREAM_ROWS):
            rows = obj_rows[start:start + STREAM_ROWS]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            block = feats[lo:hi][rows - lo]
            vectors = {d: src[f"projections/{d}/vectors"][lo:hi][rows - lo] for d in t.projections}
            if version == 1:
                thumbs = [x.tobytes() for x in src["objects/thumbnail"][lo:hi][rows - lo]]
            else:
                t_lo = int(o["thumb_offset"][rows].min())
                t_hi = int((o["thumb_offset"][rows] + o["thumb_length"][rows]).max())
                blob = src["thumbnails"][t_lo:t_hi].tobytes()
                thumbs = [blob[int(a) - t_lo:int(a) - t_lo + int(n)]
                          for a, n in zip(o["thumb_offset"][rows], o["thumb_length"][rows])]
            _append(f, {}, [], {k: o[k][rows] for k in ("id", "media_id", "xyxy", "confidence", "class_id", "alive")},
                    block, thumbs, vectors)
        if t.skipped:
            _extend(f["skipped"], np.frombuffer(_skipped_to_json(t.skipped), np.uint8))


def compact(path: str | Path, *, description: str = "objsearch compact") -> tuple[int, int]:
    """Reclaim removed rows of a format 2 index under the writer lock; returns ``(rows before, rows after)``.

    Raises
    ------
    IndexLockedError
        When another writer holds the index.
    """
    with CatalogWriter.open(path, description=description) as writer:
        return writer.compact()


def convert(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> int:
    """Write a format 2 index ``dst`` from a format 1 (or 2) index ``src`` (ids = the old rows); returns the number
    of objects.

    Raises
    ------
    IndexFileError
        When ``dst`` is ``src``, or exists and ``overwrite`` is False, or ``src`` is not a readable index.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise IndexFileError(f"convert writes a new file; {dst} is the source itself")
    if dst.exists() and not overwrite:
        raise IndexFileError(f"{dst} already exists; pass overwrite to replace it")
    with Catalog(src) as cat, txn.FileLock(cat.path, exclusive=False):
        f = cat._file
        version, attrs, t = _load(f, cat.path)
        if not attrs.get("class_names") and len(t.objects["id"]):
            raise IndexFileError(f"{src} has objects but no class names")
        full = {"state": "ready", "weights_sha256": "", "weights_name": "", "feature_recipe": {}, "config": {},
                "class_names": [], "base_dir": "", **attrs,
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "uuid": attrs.get("uuid") or uuid_module.uuid4().hex,
                "created": str(attrs.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))),
                "generation": int(attrs.get("generation", 0)),
                "n_features": int(attrs["n_features"]),
                "next_media_id": int(t.media["id"][-1]) + 1 if len(t.media["id"]) else 0,
                "next_object_id": int(t.objects["id"][-1]) + 1 if len(t.objects["id"]) else 0}
        if version == 2:
            full["next_media_id"], full["next_object_id"] = attrs["next_media_id"], attrs["next_object_id"]
        lock = txn.WriterLock(dst, "objsearch convert")
        try:
            tmp = dst.with_name(dst.name + ".tmp")
            with _removed_on_failure(tmp):
                _copy_live(f, tmp, full, t, version)
                _fsync_path(tmp)
                os.replace(tmp, dst)
            txn.fsync_dir(dst.parent)
        finally:
            lock.release()
    return int(t.objects["alive"].sum())
