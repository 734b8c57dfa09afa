"""Open an index file read-only, validate it and load its small arrays: format 2 and format 1 (objsearch 0.1).

``load`` is the one entry: every failure is an ``IndexFileError`` with one line ("... is damaged: why", "... is
refused: why"). What is checked: dtypes, shapes and Fletcher-32 checksums of every dataset, no links, external storage
or virtual datasets, the root attributes' types and digest, ids strictly increasing, every value in range (boxes inside
their media item, paths and thumbnails inside their blobs, features finite). The layout is in
``objsearch.catalog.schema``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from objsearch.catalog.attrs import decode_attrs, roots_of
from objsearch.catalog.schema import (
    BOX_SLACK,
    FORMAT_NAME,
    MAX_ABS_VALUE,
    MAX_PATH_BYTES,
    MAX_ROOTS,
    MAX_SIDE,
    MAX_THUMBNAIL_BYTES,
    MEDIA_COLUMNS,
    OBJECT_COLUMNS,
    STATES,
    Tables,
    damaged,
    sane,
    skipped_from_json,
)
from objsearch.errors import IndexFileError
from objsearch.projection import STORED_PROJECTION_METHODS, Projection
from objsearch.types import VIDEO_SUFFIXES, SkippedFile


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
        raise damaged(path, f"dataset /{name} is missing")
    if ds.dtype != np.dtype(dtype):
        raise damaged(path, f"/{name} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
    if ds.ndim != 1 + len(shape) or tuple(ds.shape[1:]) != tuple(shape):
        raise damaged(path, f"/{name} has shape {ds.shape}, expected (n, {', '.join(map(str, shape))})"
                       if shape else f"/{name} has shape {ds.shape}, expected (n,)")
    if checksum and not ds.fletcher32:
        raise damaged(path, f"/{name} has no Fletcher-32 checksum")
    if ds.size and ds.chunks is not None and ds.id.get_storage_size() < ds.size * ds.dtype.itemsize:
        raise damaged(path, f"/{name} declares {ds.shape[0]} rows but stores fewer")
    return ds


def _check_ids(ids: np.ndarray, next_id: int, what: str, path: Path) -> None:
    if len(ids) and (ids[0] < 0 or np.any(np.diff(ids) <= 0) or ids[-1] >= next_id):
        raise damaged(path, f"{what} ids are not strictly increasing in [0, next_{what}_id={next_id})")


def check_roots(attrs: dict, path: Path) -> None:
    """``roots`` a non-empty JSON list of folder strings (no NUL) whose first is ``base_dir``; ``root_macs`` as long,
    each "" or 64 hex digits."""
    if "roots" not in attrs and "root_macs" not in attrs:
        return
    roots, macs = attrs.get("roots"), attrs.get("root_macs", [])
    if not isinstance(roots, list) or not roots or len(roots) > MAX_ROOTS \
            or not all(isinstance(r, str) and "\x00" not in r and len(r.encode("utf-8", "surrogateescape"))
                       <= MAX_PATH_BYTES for r in roots):
        raise damaged(path, f"root attribute roots is not a JSON list of 1 to {MAX_ROOTS} folder names")
    if roots[0] != str(attrs.get("base_dir", "")):
        raise damaged(path, "root attribute roots does not start with base_dir")
    if not isinstance(macs, list) or len(macs) != len(roots) or not all(
            isinstance(m, str) and (m == "" or (len(m) == 64 and all(c in "0123456789abcdef" for c in m)))
            for m in macs):
        raise damaged(path, "root attribute root_macs is not one MAC (64 hex digits, or empty) per root")


def _load_media_root(f: h5py.File, n_media: int, n_roots: int, path: Path) -> np.ndarray | None:
    """/media/root (optional) checked: int32, one per media row, each an index into the roots."""
    if "media/root" not in f:
        return None
    roots = _dataset(f, "media/root", "<i4", (), path)[()]
    if len(roots) != n_media:
        raise damaged(path, f"/media/root has {len(roots)} rows, expected {n_media} (one per media row)")
    if len(roots) and (roots.min() < 0 or roots.max() >= n_roots):
        raise damaged(path, f"a media root is outside [0, {n_roots}) (the roots)")
    return roots


def _check_structures(attrs: dict, path: Path) -> None:
    """The JSON attributes every reader relies on are mappings: ``config`` and ``feature_recipe`` (their contents
    are checked by whoever uses them: ``objsearch.analysis.index_config``), and ``vector_backend`` when present."""
    config = attrs.get("config", {})
    if not isinstance(config, dict):
        raise damaged(path, f"root attribute config is not a JSON mapping (got {type(config).__name__})")
    check_roots(attrs, path)
    recipe = attrs.get("feature_recipe", {})
    if not isinstance(recipe, dict):
        raise damaged(path, f"root attribute feature_recipe is not a JSON mapping (got {type(recipe).__name__})")
    check_vector_backend(attrs.get("vector_backend"), path)


def check_vector_backend(value, path: Path) -> None:
    """``vector_backend`` (optional) is a mapping of a backend ``name`` (str) and its ``options`` (a mapping); which
    names and options are valid is ``objsearch.vectors.registry``'s to say."""
    if value is None:
        return
    if not isinstance(value, dict) or set(value) != {"name", "options"} or not isinstance(value["name"], str) \
            or not isinstance(value["options"], dict):
        raise damaged(path, "root attribute vector_backend is not a JSON mapping of a name and its options")


def _check_values(t: Tables, n_classes: int, path: Path) -> None:
    """The value checks common to both formats (the object ones when the objects are loaded)."""
    _check_media_values(t, path)
    if t.objects is not None:
        _check_object_values(t, n_classes, path)


def _check_media_values(t: Tables, path: Path) -> None:
    m = t.media
    if np.any(m["alive"] > 1):
        raise damaged(path, "an alive flag is neither 0 nor 1")
    if np.any(m["width"] < 0) or np.any(m["height"] < 0) or np.any(m["width"] > MAX_SIDE) \
            or np.any(m["height"] > MAX_SIDE):
        raise damaged(path, f"a media width or height is outside [0, {MAX_SIDE}] pixels")
    frame, ts = m["frame_index"], m["timestamp_s"]
    if not np.all(np.isfinite(ts)) or np.any(frame < -1) or np.any((frame == -1) != (ts == -1.0)) \
            or np.any((frame >= 0) & (ts < 0)):
        raise damaged(path, "a media timestamp or frame index is invalid (an image has frame -1 and time -1, a "
                       "video frame both >= 0)")
    end = m["path_offset"] + m["path_length"]
    if np.any(m["path_offset"] < 0) or np.any(m["path_length"] < 0) or np.any(m["path_length"] > MAX_PATH_BYTES) \
            or (len(end) and end.max() > len(t.path_bytes)):
        raise damaged(path, "a media path lies outside /media/path_bytes")
    if np.any(frame >= 0):
        video = {s.lower() for s in VIDEO_SUFFIXES}
        names = t.media_paths(np.flatnonzero(frame >= 0))
        if any(os.path.splitext(name)[1].lower() not in video for name in names):
            raise damaged(path, "a media item of an image file has a video frame index")


def _check_object_values(t: Tables, n_classes: int, path: Path) -> None:
    m, o = t.media, t.objects
    if np.any(o["alive"] > 1):
        raise damaged(path, "an alive flag is neither 0 nor 1")
    if not np.all(np.isfinite(o["xyxy"])) or not np.all(np.isfinite(o["confidence"])):
        raise damaged(path, "an object box or confidence is not finite")
    if np.any(o["confidence"] < 0) or np.any(o["confidence"] > 1):
        raise damaged(path, "an object confidence is outside [0, 1]")
    if len(o["class_id"]) and (o["class_id"].min() < 0 or o["class_id"].max() >= n_classes):
        raise damaged(path, f"an object class id is outside [0, {n_classes}) (the class names)")
    rows = np.searchsorted(m["id"], o["media_id"])
    rows = np.minimum(rows, max(len(m["id"]) - 1, 0))
    if len(o["media_id"]) and (len(m["id"]) == 0 or np.any(m["id"][rows] != o["media_id"])):
        raise damaged(path, "an object's media id is not among the media ids")
    if len(o["xyxy"]):
        x1, y1, x2, y2 = o["xyxy"].T
        width, height = m["width"][rows].astype(np.float64), m["height"][rows].astype(np.float64)
        known = (width > 0) & (height > 0)  # 0: not recorded
        if np.any(x2 < x1) or np.any(y2 < y1) or np.any(known & ((x1 < -BOX_SLACK) | (y1 < -BOX_SLACK)
                                                                  | (x2 > width + BOX_SLACK)
                                                                  | (y2 > height + BOX_SLACK))):
            raise damaged(path, "an object box is inverted or lies outside its media item")
    if len(o["alive"]) and np.any((o["alive"] == 1) & (m["alive"][rows] == 0)):
        raise damaged(path, "a live object belongs to a removed media item")
    end = o["thumb_offset"] + o["thumb_length"]
    if np.any(o["thumb_offset"] < 0) or np.any(o["thumb_length"] < 0) \
            or np.any(o["thumb_length"] > MAX_THUMBNAIL_BYTES) or (len(end) and end.max() > t.n_thumb_bytes):
        raise damaged(path, "an object thumbnail lies outside /thumbnails (or is larger than 4 MiB)")


def _load_projections(f: h5py.File, n_features: int, n_objects: int, path: Path, checksum: bool,
                      prefix: str = "projections") -> dict:
    group = f.get(prefix)
    if group is None:
        return {}
    if not isinstance(group, h5py.Group):
        raise damaged(path, f"/{prefix} is not a group")
    out = {}
    for name in group.keys():
        g = group[name]
        if not isinstance(g, h5py.Group) or not name.isdigit() or name != str(int(name)):
            raise damaged(path, f"/{prefix}/{name} is not a projection")
        d = int(name)
        try:
            method = g.attrs["method"]
            method = method.decode() if isinstance(method, bytes) else str(method)
            n_components, random_state = g.attrs["n_components"], g.attrs["random_state"]
        except (KeyError, UnicodeDecodeError):
            raise damaged(path, f"/{prefix}/{name} lacks its method, n_components or random_state") from None
        if method not in STORED_PROJECTION_METHODS or not isinstance(n_components, np.integer) \
                or not isinstance(random_state, np.integer) or int(n_components) != d or d < 1:
            raise damaged(path, f"/{prefix}/{name} has invalid attributes (method {method!r}, "
                           f"n_components {n_components!r})")
        comps = _dataset(f, f"{prefix}/{name}/components", "<f4", (d,), path, checksum=checksum)
        mean = _dataset(f, f"{prefix}/{name}/mean", "<f4", (), path, checksum=checksum)
        vectors = _dataset(f, f"{prefix}/{name}/vectors", "<f4", (d,), path, checksum=checksum)
        if comps.shape[0] != n_features or mean.shape[0] != n_features or vectors.shape[0] != n_objects:
            raise damaged(path, f"/{prefix}/{name} has components {comps.shape}, mean {mean.shape} and "
                           f"vectors {vectors.shape}; expected ({n_features}, {d}), ({n_features},), ({n_objects}, {d})")
        components, mean = comps[()], mean[()]
        if not (sane(components) and sane(mean)):
            raise damaged(path, f"/{prefix}/{name} has non-finite components or mean (or beyond "
                           f"{MAX_ABS_VALUE:g})")
        out[d] = Projection.from_state({"method": method, "n_components": d, "random_state": int(random_state),
                                         "components": components, "mean": mean})
    return out


def _load_v2(f: h5py.File, path: Path, *, objects: bool = True) -> tuple[dict, Tables]:
    """Validate and load a format 2 file; with ``objects`` False the object rows are not read (their datasets'
    types, shapes and checksums are checked; a writer reads the rows it changes)."""
    attrs = decode_attrs(dict(f.attrs.items()), path)
    ints = {}
    for key in ("n_features", "next_media_id", "next_object_id", "generation"):
        value = attrs.get(key)
        if not isinstance(value, int) or value < 0:
            raise damaged(path, f"root attribute {key} must be a non-negative integer, got {value!r}")
        ints[key] = value
    if attrs.get("state") not in STATES:
        raise damaged(path, f"root attribute state must be one of {STATES}, got {attrs.get('state')!r}")
    names = attrs.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise damaged(path, "root attribute class_names is not a JSON list of strings")
    uid = attrs.get("uuid")
    if not isinstance(uid, str) or len(uid) != 32 or any(c not in "0123456789abcdef" for c in uid):
        raise damaged(path, "root attribute uuid is not 32 hex digits")
    if ints["n_features"] < 1:
        raise damaged(path, "root attribute n_features must be >= 1")
    _check_structures(attrs, path)
    media = {k: _dataset(f, f"media/{k}", dt, shp, path)[()] for k, (dt, shp, _) in MEDIA_COLUMNS.items()}
    object_sets = {k: _dataset(f, f"objects/{k}", dt, shp, path) for k, (dt, shp, _) in OBJECT_COLUMNS.items()}
    columns = {k: ds[()] for k, ds in object_sets.items()} if objects else None
    for group, lengths in (("media", {len(v) for v in media.values()}),
                           ("objects", {ds.shape[0] for ds in object_sets.values()})):
        if len(lengths) > 1:
            raise damaged(path, f"the /{group} arrays have different lengths {sorted(lengths)}")
    n_objects = object_sets["id"].shape[0]
    feats = _dataset(f, "objects/features", "<f4", (ints["n_features"],), path)
    if feats.shape[0] != n_objects:
        raise damaged(path, f"/objects/features has {feats.shape[0]} rows, expected {n_objects}")
    path_bytes = _dataset(f, "media/path_bytes", "u1", (), path)[()].tobytes()
    n_thumb = _dataset(f, "thumbnails", "u1", (), path).shape[0]
    skipped_raw = _dataset(f, "skipped", "u1", (), path)[()].tobytes()
    try:
        skipped_list = json.loads(skipped_raw.decode("utf-8", "surrogateescape")) if skipped_raw else []
        skipped = [skipped_from_json(item) for item in skipped_list]
    except (ValueError, TypeError):
        raise damaged(path, "/skipped is not a JSON list of [path, reason] or [path, reason, root]") from None
    _check_ids(media["id"], ints["next_media_id"], "media", path)
    if columns is not None:
        _check_ids(columns["id"], ints["next_object_id"], "object", path)
        columns["class_id"] = columns["class_id"].astype(np.int64)
    tables = Tables(media, path_bytes, columns, n_thumb, skipped=skipped,
                     media_root=_load_media_root(f, len(media["id"]), len(roots_of(attrs)[0]), path),
                     n_object_rows=n_objects)
    _check_values(tables, len(names), path)
    n_roots = len(roots_of(attrs)[0])
    if any(s.root >= n_roots for s in skipped):
        raise damaged(path, f"a skipped file's root is outside [0, {n_roots}) (the roots)")
    tables.projections = _load_projections(f, ints["n_features"], n_objects, path, checksum=True)
    _load_image(f, attrs, tables, path)
    return attrs, tables


def _load_image(f: h5py.File, attrs: dict, tables: Tables, path: Path) -> None:
    """Validate the optional /image group (whole-image features and vectors, one row per /media row)."""
    if "image" not in f:
        if "image_recipe" in attrs:
            raise damaged(path, "root attribute image_recipe is set but /image is missing")
        return
    if not isinstance(f["image"], h5py.Group):
        raise damaged(path, "/image is not a group")
    recipe = attrs.get("image_recipe")
    n = recipe.get("n_features") if isinstance(recipe, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(recipe.get("blocks"), dict) \
            or not isinstance(recipe.get("version"), int):
        raise damaged(path, "root attribute image_recipe is not a mapping with blocks, an integer n_features >= 1 "
                       "and an integer version")
    n_media = len(tables.media["id"])
    feats = _dataset(f, "image/features", "<f4", (n,), path)
    if feats.shape[0] != n_media:
        raise damaged(path, f"/image/features has {feats.shape[0]} rows, expected {n_media} (one per media row)")
    tables.image_projections = _load_projections(f, n, n_media, path, checksum=True, prefix="image/projections")
    tables.n_image_features = n


def _load_v1(f: h5py.File, path: Path) -> tuple[dict, Tables]:
    attrs = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if isinstance(value, str) and key in ("feature_recipe", "config", "class_names", "skipped"):
            try:
                value = json.loads(value)
            except ValueError:
                raise damaged(path, f"root attribute {key} is not JSON") from None
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        attrs[key] = value
    names = attrs.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise damaged(path, "root attribute class_names is not a JSON list of strings")
    ds = f.get("images/path")
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
        raise damaged(path, "dataset /images/path is missing")
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
            raise damaged(path, f"array {key} has {len(value)} rows, expected {n_media if key in media else n}")
    feats = f.get("objects/features")
    if not isinstance(feats, h5py.Dataset) or feats.ndim != 2 or feats.shape[0] != n or feats.dtype != np.float32:
        raise damaged(path, "/objects/features is missing or has the wrong shape")
    thumbs = f.get("objects/thumbnail")
    if not isinstance(thumbs, h5py.Dataset) or thumbs.shape != (n,):
        raise damaged(path, "/objects/thumbnail is missing or has the wrong shape")
    skipped = attrs.pop("skipped", [])
    try:
        skipped = [SkippedFile(str(p), str(r)) for p, r in skipped]
    except (ValueError, TypeError):
        raise damaged(path, "attribute skipped is not a list of [path, reason]") from None
    attrs.setdefault("n_features", int(feats.shape[1]))
    _check_structures(attrs, path)
    tables = Tables(media, b"".join(paths), objects, 0, skipped=skipped, n_object_rows=n)
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


def load(f: h5py.File, path: Path, *, objects: bool = True) -> tuple[int, dict, Tables]:
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
        raise damaged(path, f"{type(exc).__name__}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_read(path: Path) -> h5py.File:
    """Open read-only through h5py's file-object driver: HDF5 shares one cached file between all opens of the same
    path in a process (so a second open would see the first one's stale metadata after another process committed);
    opens through distinct Python file objects are never shared. Close with ``close_file``."""
    fh = open(path, "rb", buffering=0)
    try:
        f = h5py.File(fh, "r", locking=False)
    except (OSError, ValueError) as exc:
        fh.close()
        raise IndexFileError(f"{path} is not a readable HDF5 file (truncated, damaged or not HDF5): "
                             f"{one_line(exc)}") from None
    f._objsearch_fh = fh
    return f


def close_file(f: h5py.File) -> None:
    """Close a file opened with ``open_read`` and its Python file object."""
    f.close()
    fh = getattr(f, "_objsearch_fh", None)
    if fh is not None:
        fh.close()


@contextlib.contextmanager
def reading(path: Path) -> Iterator[h5py.File]:
    """``open_read`` as a context manager (closed with ``close_file``)."""
    f = open_read(path)
    try:
        yield f
    finally:
        close_file(f)
