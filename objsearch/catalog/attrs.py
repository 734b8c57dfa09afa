"""The root attributes of an index file: Python values <-> HDF5 attribute values, with their digest.

Every string is stored as fixed-length bytes (UTF-8, or JSON for a structure) so that no attribute lives in HDF5's
global heap, which has no checksum; integers as int64 and floats as float64. ``json_attrs`` lists the attributes
stored as JSON and ``attrs_sha256`` is the digest of all the others, checked on every open.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from objsearch.errors import IndexFileError

JSON_ATTRS = ("feature_recipe", "config", "class_names", "image_recipe", "roots", "root_macs",
              "vector_backend")  # always JSON
META_ATTRS = ("json_attrs", "attrs_sha256")  # the codec's own


def encode_attrs(attrs: dict) -> dict:
    """Python values -> HDF5 attribute values (fixed-length bytes, int64, float64), with ``json_attrs`` and the
    ``attrs_sha256`` digest added."""
    out, json_keys = {}, []
    for key, value in attrs.items():
        if key in META_ATTRS:
            continue
        if isinstance(value, (bool, np.bool_)) or value is None or key in JSON_ATTRS \
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
    out["attrs_sha256"] = np.bytes_(attrs_digest(out).encode())
    return out


def attrs_digest(raw: dict) -> str:
    """The sha256 hex digest of every encoded attribute but ``attrs_sha256`` (key, type tag and value), as stored in
    ``attrs_sha256``."""
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


def decode_attrs(raw: dict, path: Path) -> dict:
    """HDF5 attribute values of a format 2 file -> Python values. Raises IndexFileError on a wrong type or digest."""
    for key, value in raw.items():
        ok = isinstance(value, (bytes, np.bytes_)) or (
            isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_))
        if not ok:
            raise IndexFileError(f"{path} is damaged: root attribute {key!r} has type {type(value).__name__}, "
                                 f"expected fixed-length bytes, int64 or float64")
    if "attrs_sha256" not in raw or bytes(raw["attrs_sha256"]).decode("ascii", "replace") != attrs_digest(raw):
        raise IndexFileError(f"{path} is damaged: its root attributes do not match their sha256 digest")
    try:
        json_keys = set(json.loads(bytes(raw["json_attrs"]).decode()))
        out = {}
        for key, value in raw.items():
            if key in META_ATTRS:
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


def roots_of(attrs: dict) -> tuple[list[str], list[str]]:
    """(root folders, their MACs) as an index's attributes record them: ``roots`` and ``root_macs``, or for a file
    made before several roots, ``[base_dir]`` with no MAC."""
    roots = attrs.get("roots")
    if roots is None:
        return [str(attrs.get("base_dir", ""))], [""]
    macs = attrs.get("root_macs")
    return list(roots), list(macs) if isinstance(macs, list) else [""] * len(roots)
