"""The HDF5 writes of the format 2 layout (``objsearch.catalog.schema``): a new empty file, its datasets and
projections, appending rows, tombstones, vectors computed from the stored features, and a copy of the live rows into a
new file (compaction and conversion). No locking here: ``CatalogWriter`` and ``objsearch.catalog.maintenance`` hold
the locks and the transaction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from objsearch.catalog.attrs import encode_attrs
from objsearch.catalog.schema import (
    BLOBS,
    FEATURE_CHUNK_ROWS,
    IMAGE_FEATURE_CHUNK_ROWS,
    LIBVER,
    MAX_ABS_VALUE,
    MEDIA_COLUMNS,
    OBJECT_COLUMNS,
    STREAM_ROWS,
    Tables,
    sane,
    skipped_to_json,
)
from objsearch.errors import IndexFileError
from objsearch.projection import Projection


def create_dataset(f, name: str, dtype: str, shape: tuple, chunk_rows: int):
    """An empty dataset of rows of ``shape``, chunked by ``chunk_rows``, extensible on axis 0, with Fletcher-32."""
    return f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=np.dtype(dtype),
                            chunks=(chunk_rows,) + shape, fletcher32=True)


def _vector_chunk_rows(d: int) -> int:
    return max(1024, (1 << 16) // d)


def create_projection(f, proj: Projection, n_rows: int, prefix: str = "projections"):
    """(Re)create /<prefix>/<d> of a fitted projection (components, mean, attributes) with ``n_rows`` rows of
    vectors to fill; returns the vectors' dataset."""
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
        ds = create_dataset(f, f"{name}/{key}", "<f4", value.shape[1:], max(1, value.shape[0]))
        extend(ds, value)
    ds = create_dataset(f, f"{name}/vectors", "<f4", (d,), _vector_chunk_rows(d))
    ds.resize(n_rows, axis=0)
    return ds


def create_image_group(f, n_image_features: int, projections, n_rows: int) -> None:
    """(Re)create /image with ``n_rows`` rows of features (zeros) and one vector dataset per projection."""
    if "image" in f:
        del f["image"]
    create_dataset(f, "image/features", "<f4", (int(n_image_features),), IMAGE_FEATURE_CHUNK_ROWS).resize(n_rows,
                                                                                                         axis=0)
    f.require_group("image/projections")
    for proj in projections:
        create_projection(f, proj, n_rows, prefix="image/projections")


def new_file(path: Path, attrs: dict, n_features: int, projections: list[Projection],
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
            create_dataset(f, f"media/{name}", dtype, shape, rows)
        for name, (dtype, shape, rows) in OBJECT_COLUMNS.items():
            create_dataset(f, f"objects/{name}", dtype, shape, rows)
        create_dataset(f, "objects/features", "<f4", (n_features,), FEATURE_CHUNK_ROWS)
        for name, rows in BLOBS.items():
            create_dataset(f, name, "u1", (), rows)
        f.create_group("projections")
        for proj in projections:
            create_projection(f, proj, 0)
        if image_projections is not None:
            create_image_group(f, int(attrs["image_recipe"]["n_features"]), image_projections, 0)
        for key, value in encode_attrs(attrs).items():
            f.attrs[key] = value


def extend(ds, data) -> int:
    """Append ``data`` along axis 0; returns the old length."""
    n0 = ds.shape[0]
    data = np.asarray(data)
    if len(data):
        ds.resize(n0 + len(data), axis=0)
        ds[n0:n0 + len(data)] = data
    return n0


def append_rows(f, media: dict, paths: list[bytes], objects: dict, features: np.ndarray, thumbs: list[bytes],
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
        extend(f["image/features"], np.asarray(image_features, np.float32))
        for d, vec in (image_vectors or {}).items():
            extend(f[f"image/projections/{d}/vectors"], np.asarray(vec, np.float32))
    if n_media:
        roots = np.asarray(media.get("root", np.zeros(n_media)), np.int32)
        if "media/root" not in f and np.any(roots != 0):  # the first item under another root than the first
            create_dataset(f, "media/root", "<i4", (), MEDIA_COLUMNS["id"][2]).resize(f["media/id"].shape[0],
                                                                                       axis=0)
        if "media/root" in f:
            extend(f["media/root"], roots)
        lengths = np.array([len(p) for p in paths], np.int64)
        base = extend(f["media/path_bytes"], np.frombuffer(b"".join(paths), np.uint8))
        media = {**media, "path_length": lengths.astype(np.int32),
                 "path_offset": base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)}
        for name, (dtype, _, _) in MEDIA_COLUMNS.items():
            extend(f[f"media/{name}"], np.asarray(media[name], np.dtype(dtype)))
    if n_obj:
        lengths = np.array([len(t) for t in thumbs], np.int64)
        base = extend(f["thumbnails"], np.frombuffer(b"".join(thumbs), np.uint8))
        objects = {**objects, "thumb_length": lengths.astype(np.int32),
                   "thumb_offset": base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)}
        for name, (dtype, _, _) in OBJECT_COLUMNS.items():
            extend(f[f"objects/{name}"], np.asarray(objects[name], np.dtype(dtype)))
        extend(f["objects/features"], np.asarray(features, np.float32))
        for d, vec in vectors.items():
            extend(f[f"projections/{d}/vectors"], np.asarray(vec, np.float32))


def write_alive(ds, rows: np.ndarray) -> None:
    """Set alive=0 at ``rows`` (sorted unique), one slice write per run of consecutive rows."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) > 1) + 1
    for run in np.split(rows, breaks):
        ds[int(run[0]):int(run[-1]) + 1] = 0


def fill_vectors(f, d: int, proj: Projection, chunk: int = STREAM_ROWS, prefix: str = "projections",
                  source: str = "objects/features") -> None:
    """Compute /<prefix>/<d>/vectors for every row from the stored features, ``chunk`` rows at a time."""
    feats, out = f[source], f[f"{prefix}/{d}/vectors"]
    for start in range(0, feats.shape[0], chunk):
        stop = min(start + chunk, feats.shape[0])
        rows = feats[start:stop]
        if not sane(rows):  # the transaction is rolled back
            raise IndexFileError(f"/{source} holds non-finite values (or beyond {MAX_ABS_VALUE:g}): the index is "
                                 f"damaged")
        out[start:stop] = proj.transform(rows)


@contextlib.contextmanager
def removed_on_failure(tmp: Path) -> Iterator[None]:
    """Remove the half-written ``tmp`` when the block fails (a full disk leaves no stray file behind)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fsync_path(path: Path) -> None:
    """fsync the file at ``path`` (its data reaches the disk before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_live(src: h5py.File, dst: Path, attrs: dict, t: Tables, version: int) -> None:
    """Write the live rows of ``src`` (loaded as ``t``) into a new format 2 file ``dst``; vectors are copied."""
    n_features = int(attrs["n_features"])
    image_projs = list(t.image_projections.values()) if t.has_image else None
    if not t.has_image:
        attrs = {k: v for k, v in attrs.items() if k != "image_recipe"}
    new_file(dst, attrs, n_features, [], image_projs)
    m, o = t.media, t.objects
    media_rows = np.flatnonzero(m["alive"])
    obj_rows = np.flatnonzero(o["alive"])
    fapl_kw = {"libver": LIBVER, "locking": False}
    with h5py.File(dst, "r+", **fapl_kw) as f:
        for proj in t.projections.values():
            create_projection(f, proj, 0)
        image_feats = image_vectors = None
        if t.has_image:
            image_feats = src["image/features"][()][media_rows]
            image_vectors = {d: src[f"image/projections/{d}/vectors"][()][media_rows] for d in t.image_projections}
        append_rows(f, {**{k: v[media_rows] for k, v in m.items()}, "root": t.roots_of(media_rows)},
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
            append_rows(f, {}, [], {k: o[k][rows] for k in ("id", "media_id", "xyxy", "confidence", "class_id", "alive")},
                    block, thumbs, vectors)
        if t.skipped:
            extend(f["skipped"], np.frombuffer(skipped_to_json(t.skipped), np.uint8))
