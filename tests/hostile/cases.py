"""A generator of hostile inputs: crafted and damaged index files, odd image files, a pickle that runs code.

Everything is made by the tests from one small real index (never committed as binaries). Each index case is a
function ``craft(f, ctx)`` run on a copy of the real index opened with h5py in ``r+`` mode; unless the case says
``resign=False``, the root attributes' digest is recomputed afterwards, as someone crafting a file on purpose would
do (HDF5 recomputes the Fletcher-32 checksums of what it writes), so the case tests the value checks behind the
checksums, not the checksums alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from objsearch.catalog.attrs import attrs_digest


@dataclass
class Ctx:
    """Where a case may put its side files (a secret to leak, an evil checkpoint)."""

    folder: Path
    secret: Path  # a file outside the base directory that no command may read


@dataclass
class IndexCase:
    """A crafted index and the outcome every command that opens it must have.

    name : the case's id.
    craft : ``craft(f, ctx)`` changes the h5py file in place.
    exit_code : what ``info`` and ``query`` exit with (3: refused as damaged or hostile; 0: served correctly).
    fragment : a piece of the one-line error (empty for exit 0).
    resign : recompute the root attributes' digest afterwards (a deliberate forgery).
    commands : which commands to run it through.
    """

    name: str
    craft: Callable
    exit_code: int = 3
    fragment: str = ""
    resign: bool = True
    commands: tuple = ("info", "query")


def resign(f: h5py.File) -> None:
    """Recompute ``attrs_sha256`` over the root attributes (what a forger does)."""
    f.attrs["attrs_sha256"] = np.bytes_(attrs_digest(dict(f.attrs.items())).encode())


def set_json_attr(f: h5py.File, key: str, value) -> None:
    f.attrs[key] = np.bytes_(json.dumps(value).encode())


def get_json_attr(f: h5py.File, key: str):
    return json.loads(bytes(f.attrs[key]).decode())


def replace_dataset(f: h5py.File, name: str, data, **kwargs) -> None:
    """Replace dataset ``name`` by ``data`` with the format's own storage (chunked, Fletcher-32, extensible)."""
    del f[name]
    data = np.asarray(data)
    opts = dict(chunks=True, fletcher32=True, maxshape=(None, *data.shape[1:]))
    opts.update(kwargs)
    f.create_dataset(name, data=data, **opts)


def overwrite(name: str, fn):
    """A craft that sets dataset ``name`` to ``fn(current values)`` in place."""

    def craft(f, ctx):
        ds = f[name]
        ds[...] = fn(ds[()])

    return craft


def _set_row(name: str, index, value):
    def fn(a):
        a = a.copy()
        a[index] = value
        return a

    return overwrite(name, fn)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of about 70 bytes whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


MARKER_ENV = "OBJSEARCH_HOSTILE_MARKER"


class _WritesMarker:
    """Unpickling this calls ``open(marker, 'w').write('pwned')``: code run from a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))


def evil_checkpoint(path: Path, marker: Path) -> str:
    """Write a ``.pt`` file whose loading (torch.load / pickle) creates ``marker``; returns its sha256."""
    path.write_bytes(pickle.dumps({"model": _WritesMarker(str(marker))}, protocol=2))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ the crafts
def _attr(key, value):
    def craft(f, ctx):
        f.attrs[key] = value

    return craft


def _json_attr(key, fn):
    def craft(f, ctx):
        set_json_attr(f, key, fn(get_json_attr(f, key)))

    return craft


def _del_attr(key):
    def craft(f, ctx):
        del f.attrs[key]
        if key in get_json_attr(f, "json_attrs"):
            set_json_attr(f, "json_attrs", [k for k in get_json_attr(f, "json_attrs") if k != key])

    return craft


def _external_storage(name: str):
    """Dataset ``name`` re-declared with its bytes in ``ctx.secret`` (HDF5 external storage)."""

    def craft(f, ctx):
        old = f[name]
        dtype, shape = old.dtype, old.shape
        del f[name]
        n = os.path.getsize(ctx.secret) // dtype.itemsize
        shape = (n, *shape[1:]) if len(shape) == 1 else shape
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(ctx.secret), 0, h5py.h5f.UNLIMITED)])

    return craft


def _external_link(name: str):
    def craft(f, ctx):
        other = ctx.folder / "other.h5"
        with h5py.File(other, "w") as g:
            g.create_dataset("path_bytes", data=np.frombuffer(ctx.secret.read_bytes(), np.uint8))
        del f[name]
        f[name] = h5py.ExternalLink(str(other), "/path_bytes")

    return craft


def _soft_link(name: str, target: str):
    def craft(f, ctx):
        del f[name]
        f[name] = h5py.SoftLink(target)

    return craft


def _virtual(name: str):
    def craft(f, ctx):
        other = ctx.folder / "virtual_source.h5"
        data = np.frombuffer(ctx.secret.read_bytes(), np.uint8)
        with h5py.File(other, "w") as g:
            g.create_dataset("data", data=data)
        layout = h5py.VirtualLayout(shape=data.shape, dtype=np.uint8, maxshape=(None,))
        layout[:] = h5py.VirtualSource(str(other), "data", shape=data.shape)
        del f[name]
        f.create_virtual_dataset(name, layout)

    return craft


def _no_checksum(name: str):
    def craft(f, ctx):
        data = f[name][()]
        replace_dataset(f, name, data, fletcher32=False)

    return craft


def _remove(name: str):
    def craft(f, ctx):
        del f[name]

    return craft


def _first_dims(f) -> str:
    return sorted(f["projections"].keys(), key=int)[0]


def _projection(fn):
    """A craft applied to every stored projection group."""

    def craft(f, ctx):
        for d in list(f["projections"].keys()):
            fn(f, d)

    return craft


def _image_projection(fn):
    """A craft applied to every stored whole-image projection group (``fn(f, d, prefix)``)."""

    def craft(f, ctx):
        for d in list(f["image/projections"].keys()):
            fn(f, d, "image/projections")

    return craft


def _proj_vectors_nan(f, d, prefix="projections"):
    _set_row(f"{prefix}/{d}/vectors", (0, 0), np.nan)(f, None)


def _proj_vectors_huge(f, d, prefix="projections"):
    _set_row(f"{prefix}/{d}/vectors", (0, 0), 3e38)(f, None)


def _frame_on_image(f, ctx):
    """The first media item (an image file) claims to be frame 5 of a video, at 0.2 s."""
    _set_row("media/frame_index", 0, 5)(f, ctx)
    _set_row("media/timestamp_s", 0, 0.2)(f, ctx)


def _proj_vectors_missing(f, d, prefix="projections"):
    del f[f"{prefix}/{d}/vectors"]


def _proj_mean_short(f, d):
    replace_dataset(f, f"projections/{d}/mean", f[f"projections/{d}/mean"][()][:-1])


def _proj_components_wrong_d(f, d):
    comps = f[f"projections/{d}/components"][()]
    replace_dataset(f, f"projections/{d}/components", comps[:, :-1])


def _proj_method_none(f, d):
    del f[f"projections/{d}"].attrs["method"]


def _proj_method_unknown(f, d, prefix="projections"):
    f[f"{prefix}/{d}"].attrs["method"] = np.bytes_(b"pickle")


def _proj_components_nan(f, d):
    _set_row(f"projections/{d}/components", (0, 0), np.inf)(f, None)


def _paths_set(raw: bytes):
    """Every stored media path replaced by ``raw`` (a forged path: absolute, ``..``, escapes)."""

    def craft(f, ctx):
        n = f["media/id"].shape[0]
        replace_dataset(f, "media/path_bytes", np.frombuffer(raw * n, np.uint8))
        f["media/path_offset"][...] = np.arange(n, dtype=np.int64) * len(raw)
        f["media/path_length"][...] = np.full(n, len(raw), np.int32)

    return craft


def _thumbnail_bomb(f, ctx):
    bomb = np.frombuffer(png_header_only(65000, 65000), np.uint8)
    n = f["objects/id"].shape[0]
    replace_dataset(f, "thumbnails", np.tile(bomb, n))
    f["objects/thumb_offset"][...] = np.arange(n, dtype=np.int64) * len(bomb)
    f["objects/thumb_length"][...] = np.full(n, len(bomb), np.int32)


def _rows_declared_not_stored(f, ctx):
    ds = f["objects/confidence"]
    ds.resize((ds.shape[0] + 10_000_000,))


def _config_str(f, ctx):
    set_json_attr(f, "config", "not a mapping")


def _recipe_str(f, ctx):
    set_json_attr(f, "feature_recipe", "cls_logits")


def _weights_path_evil(f, ctx):
    """The old hole: the index names a checkpoint of its own (with its matching sha256) next to itself."""
    evil = ctx.folder / "evil.pt"
    sha = evil_checkpoint(evil, ctx.folder / "MARKER")
    f.attrs["weights_path"] = np.bytes_(str(evil).encode())
    f.attrs["weights_sha256"] = np.bytes_(sha.encode())
    f.attrs["weights_name"] = np.bytes_(b"evil.pt")


INDEX_CASES: list[IndexCase] = [
    # format and attributes
    IndexCase("format_missing", _del_attr("format"), 3, "not an objsearch index"),
    IndexCase("format_version_1.9", _attr("format_version", 1.9), 3, "format version 1.9"),
    IndexCase("format_version_3", _attr("format_version", np.int64(3)), 3, "format version 3"),
    IndexCase("format_version_str", _attr("format_version", np.bytes_(b"2")), 3, "format version"),
    IndexCase("attrs_tampered_unsigned", _attr("base_dir", np.bytes_(b"/etc")), 3, "digest", resign=False),
    IndexCase("state_analyzing", _attr("state", np.bytes_(b"analyzing")), 3, "unfinished analysis",
              commands=("query",)),
    IndexCase("state_unknown", _attr("state", np.bytes_(b"pwned")), 3, "state"),
    IndexCase("n_features_negative", _attr("n_features", np.int64(-5)), 3, "n_features"),
    IndexCase("next_object_id_small", _attr("next_object_id", np.int64(1)), 3, "object ids"),
    IndexCase("uuid_bad", _attr("uuid", np.bytes_(b"../../x")), 3, "uuid"),
    IndexCase("attr_bool_type", _attr("generation", np.bool_(True)), 3, "generation"),
    IndexCase("class_names_short", _json_attr("class_names", lambda names: names[:3]), 3, "class id"),
    IndexCase("class_names_not_list", _json_attr("class_names", lambda names: "person"), 3, "class_names"),
    IndexCase("config_str", _config_str, 3, "config", commands=("query",)),
    IndexCase("recipe_missing", _del_attr("feature_recipe"), 3, "feature_recipe", commands=("query",)),
    IndexCase("recipe_str", _recipe_str, 3, "feature_recipe", commands=("query",)),
    IndexCase("weights_sha_unknown", _attr("weights_sha256", np.bytes_(b"0" * 64)), 3, "weights",
              commands=("query",)),
    IndexCase("weights_path_evil", _weights_path_evil, 3, "weights", commands=("query", "video")),
    # hostile storage
    IndexCase("external_storage_paths", _external_storage("media/path_bytes"), 3, "external storage"),
    IndexCase("external_storage_thumbs", _external_storage("thumbnails"), 3, "external storage"),
    IndexCase("external_link", _external_link("media/path_bytes"), 3, "external link"),
    IndexCase("soft_link", _soft_link("media/path_bytes", "/thumbnails"), 3, "soft link"),
    IndexCase("virtual_dataset", _virtual("media/path_bytes"), 3, "virtual dataset"),
    IndexCase("no_checksum", _no_checksum("objects/xyxy"), 3, "Fletcher-32"),
    IndexCase("declared_rows_not_stored", _rows_declared_not_stored, 3, "damaged"),
    # values
    IndexCase("xyxy_nan", _set_row("objects/xyxy", (0, 0), np.nan), 3, "not finite"),
    IndexCase("confidence_inf", _set_row("objects/confidence", 0, np.inf), 3, "not finite"),
    IndexCase("classid_negative", _set_row("objects/class_id", 0, -7), 3, "class id"),
    IndexCase("classid_oob", _set_row("objects/class_id", 0, 30000), 3, "class id"),
    IndexCase("imageid_oob", _set_row("objects/media_id", -1, 10**9), 3, "media id"),
    IndexCase("object_ids_unsorted", overwrite("objects/id", lambda a: a[::-1].copy()), 3, "ids"),
    IndexCase("alive_flag_2", _set_row("objects/alive", 0, 2), 3, "alive"),
    IndexCase("width_negative", _set_row("media/width", 0, -1), 3, "width"),
    IndexCase("width_2_31", _set_row("media/width", 0, 2**31 - 1), 3, "width"),
    IndexCase("box_huge", _set_row("objects/xyxy", 0, [-1e9, -1e9, 1e9, 1e9]), 3, "box"),
    IndexCase("box_inverted", _set_row("objects/xyxy", 0, [120.0, 90.0, 20.0, 10.0]), 3, "box"),
    IndexCase("confidence_above_1", _set_row("objects/confidence", 0, 1.5), 3, "confidence"),
    IndexCase("frame_index_on_image", _frame_on_image, 3, "video frame index"),
    IndexCase("vectors_3e38", _projection(_proj_vectors_huge), 3, "beyond", commands=("query",)),
    IndexCase("image_vectors_3e38", _image_projection(_proj_vectors_huge), 3, "beyond", commands=("query_image",)),
    IndexCase("timestamp_nan", _set_row("media/timestamp_s", 0, np.nan), 3, "timestamp"),
    IndexCase("paths_short", _set_row("media/path_length", -1, 10**6), 3, "path"),
    IndexCase("path_offset_negative", _set_row("media/path_offset", 0, -5), 3, "path"),
    IndexCase("thumb_oob", _set_row("objects/thumb_offset", 0, 10**12), 3, "thumbnail"),
    IndexCase("thumb_huge", _set_row("objects/thumb_length", 0, 1 << 30), 3, "thumbnail"),
    IndexCase("features_missing", _remove("objects/features"), 3, "features"),
    IndexCase("vectors_missing", _projection(_proj_vectors_missing), 3, "vectors"),
    IndexCase("vectors_nan", _projection(_proj_vectors_nan), 3, "non-finite", commands=("query",)),
    IndexCase("mean_short", _projection(_proj_mean_short), 3, "mean"),
    IndexCase("comp_wrongd", _projection(_proj_components_wrong_d), 3, "components"),
    IndexCase("comp_inf", _projection(_proj_components_nan), 3, "non-finite"),
    IndexCase("proj_none", _projection(_proj_method_none), 3, "method"),
    IndexCase("proj_method_unknown", _projection(_proj_method_unknown), 3, "method"),
    IndexCase("media_columns_unequal", lambda f, ctx: f["media/width"].resize((1,)), 3, "lengths"),
    # the whole-image group (optional; when present, complete)
    IndexCase("image_features_short", lambda f, ctx: f["image/features"].resize(1, axis=0), 3, "image/features",
              commands=("info", "query_image")),
    IndexCase("image_features_no_checksum", _no_checksum("image/features"), 3, "Fletcher-32",
              commands=("query_image",)),
    IndexCase("image_group_missing", _remove("image"), 3, "image", commands=("info", "query_image")),
    IndexCase("image_recipe_str", lambda f, ctx: set_json_attr(f, "image_recipe", "neck_gap"), 3, "image_recipe",
              commands=("query", "query_image")),
    IndexCase("image_vectors_nan", _image_projection(_proj_vectors_nan), 3, "non-finite",
              commands=("query_image",)),
    IndexCase("image_vectors_missing", _image_projection(_proj_vectors_missing), 3, "vectors",
              commands=("query_image",)),
    IndexCase("image_proj_method_unknown", _image_projection(_proj_method_unknown), 3, "method",
              commands=("query_image",)),
    # stored data that is served, but as data (exit 0): never read outside the base directory, never hang
    IndexCase("paths_absolute", _paths_set(b"/etc/passwd"), 0, commands=("info", "query", "query_image")),
    IndexCase("paths_dotdot", _paths_set(b"../../../../etc/passwd"), 0, commands=("info", "query", "query_image")),
    IndexCase("paths_terminal_escape", _paths_set(b"\x1b]0;pwned\x07\x1b[2Jx.jpg"), 0),
    IndexCase("paths_not_utf8", _paths_set(b"caf\xe9\xff.jpg"), 0),
    IndexCase("thumbnail_bomb", _thumbnail_bomb, 0),
]


def craft_index(src: Path, dst: Path, case: IndexCase, ctx: Ctx) -> Path:
    """Copy ``src`` to ``dst`` and apply ``case``."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        case.craft(f, ctx)
        if case.resign and "attrs_sha256" in f.attrs:
            resign(f)
    return dst


# ------------------------------------------------------------------------------------------------ odd files
def odd_image_files(folder: Path) -> dict[str, Path]:
    """Image files that are not images, or hostile ones: name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    def put(name, data):
        p = folder / name
        p.write_bytes(data)
        out[name] = p

    put("empty.jpg", b"")
    put("text.jpg", b"hello, not an image\n")
    put("png_bomb_header.png", png_header_only(65000, 65000))
    put("truncated_header.png", png_header_only(64, 64)[:20])
    put("jpeg_garbage.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    put("gif_as_jpg.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    folder_as_image = folder / "folder.jpg"
    folder_as_image.mkdir(exist_ok=True)
    out["folder.jpg"] = folder_as_image
    fifo = folder / "fifo.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    out["fifo.jpg"] = fifo
    dangling = folder / "dangling.jpg"
    if not dangling.is_symlink():
        dangling.symlink_to(folder / "does-not-exist.jpg")
    out["dangling.jpg"] = dangling
    out["missing.jpg"] = folder / "missing.jpg"
    return out
