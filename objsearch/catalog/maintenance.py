"""Whole-file maintenance of an index: ``compact`` (reclaim removed rows) and ``convert`` (format 1 -> 2). Rolling back
what a killed writer left is ``objsearch.catalog.locking.repair``.
"""

from __future__ import annotations

import os
import time
import uuid as uuid_module
from pathlib import Path

from objsearch.catalog import storage, txn
from objsearch.catalog.load import load, reading
from objsearch.catalog.reader import Catalog
from objsearch.catalog.schema import FORMAT_NAME, FORMAT_VERSION
from objsearch.catalog.storage import copy_live, removed_on_failure
from objsearch.catalog.writer import CatalogWriter
from objsearch.errors import IndexFileError


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
    with Catalog(src) as cat, txn.FileLock(cat.path, exclusive=False), reading(cat.path) as f:
        version, attrs, t = load(f, cat.path)
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
            with removed_on_failure(tmp):
                copy_live(f, tmp, full, t, version)
                storage.fsync_path(tmp)
                os.replace(tmp, dst)
            txn.fsync_dir(dst.parent)
        finally:
            lock.release()
    return int(t.objects["alive"].sum())
