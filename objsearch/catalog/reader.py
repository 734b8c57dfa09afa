"""The reader of an index file: ``Catalog``, a read-only view that follows the writers' commits.

It loads and validates the file once (``objsearch.catalog.load``) under the shared lock (``objsearch.catalog.locking``),
keeps the live rows' small arrays in memory, reads features, vectors and thumbnails on demand, and reopens the file
(rows remapped by id) when another process committed since.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from objsearch.catalog import txn
from objsearch.catalog.load import close_file, load, one_line, open_read
from objsearch.catalog.locking import shared_lock, stat_signature
from objsearch.catalog.schema import MAX_ABS_VALUE, MAX_THUMBNAIL_BYTES, damaged, sane
from objsearch.catalog.view import CatalogView
from objsearch.errors import IndexFileError
from objsearch.projection import Projection
from objsearch.types import MediaRef

_MEDIA_VIEW = ("id", "width", "height", "frame_index", "timestamp_s", "file_size", "file_mtime_ns")
_OBJECT_VIEW = ("id", "media_id", "xyxy", "confidence", "class_id")


class Catalog(CatalogView):
    """A read-only view of an index file (format 2, or format 1 through the same API).

    The attributes and the small arrays of the live rows are loaded when opened and validated; projected vectors
    are loaded on first use; raw features and thumbnails are read on demand. Ids are stable (format 1: rows).

    Attributes
    ----------
    The read surface of ``CatalogView`` (path, attrs, uuid, generation, class_names, roots, dims, the ``media_*`` and
    object columns, ...), loaded once, and:

    format_version : int, 1 or 2
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
            return shared_lock(self.path, "objsearch (a reader rolling back)", time.monotonic() + self._wait_s)
        except FileNotFoundError:
            raise IndexFileError(f"index file {self.path} does not exist") from None

    def _open_and_load(self) -> None:
        """Open and load the file (the caller holds the shared lock)."""
        signature = stat_signature(self.path)
        f = open_read(self.path)
        try:
            version, attrs, tables = load(f, self.path)
        except BaseException:
            close_file(f)
            raise
        if self._file is not None:
            close_file(self._file)
        self._file, self._signature = f, signature
        self._file_generation, self._file_uuid = int(attrs.get("generation", 0)), str(attrs.get("uuid", ""))
        self.format_version = version
        self.attrs = attrs
        self._projections = tables.projections
        self.skipped = tables.skipped
        m, o = tables.media, tables.objects
        media_rows = np.flatnonzero(m["alive"])
        self._media_file_rows = media_rows  # file rows of the live media items
        self.has_image_vectors = tables.has_image
        self._image_projections = tables.image_projections or {}
        self.image_dims = sorted(self._image_projections)
        self.image_recipe = dict(attrs.get("image_recipe") or {}) if tables.has_image else {}
        self._image_vectors: dict[int, np.ndarray] = {}
        self._media = {name: m[name][media_rows] for name in _MEDIA_VIEW}
        self._media["path"], self._media["root"] = tables.media_paths(media_rows), tables.roots_of(media_rows)
        rows = np.flatnonzero(o["alive"])
        self._rows = rows  # file rows of the live objects
        self._objects = {name: o[name][rows] for name in _OBJECT_VIEW}
        self._thumb_offset, self._thumb_length = o["thumb_offset"][rows], o["thumb_length"][rows]
        self._vectors: dict[int, np.ndarray] = {}

    def _stored_projections(self) -> dict:
        return self._projections

    def _live_media_column(self, name: str):
        return self._media[name]

    def _live_object_column(self, name: str) -> np.ndarray:
        return self._objects[name]

    # -- the file, reopened when a writer changed it (ids are stable; rows change only by compaction)
    def _current_file(self) -> h5py.File:
        """The open file, reopened (rows remapped by id) when another process committed since; the caller holds the
        shared lock."""
        if self._file is None:
            raise IndexFileError(f"{self.path} is closed")
        if stat_signature(self.path) == self._signature:
            return self._file
        signature = stat_signature(self.path)
        f = open_read(self.path)
        try:
            _, tables_attrs, tables = load(f, self.path)
        except BaseException:
            close_file(f)
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
        close_file(self._file)
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
                raise damaged(self.path, f"{type(exc).__name__}: {one_line(exc)}") from None

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
                if not sane(vectors):
                    raise damaged(self.path, f"/image/projections/{dims}/vectors holds non-finite values (or "
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
            if not sane(out):
                raise damaged(self.path, f"/image/features holds non-finite values (or beyond {MAX_ABS_VALUE:g})")
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
                if not sane(vectors):
                    raise damaged(self.path, f"/projections/{dims}/vectors holds non-finite values (or beyond "
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
            if not sane(out):
                raise damaged(self.path, f"/objects/features holds non-finite values (or beyond {MAX_ABS_VALUE:g})")
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
                    raise damaged(self.path, f"thumbnail of object {object_id} is larger than 4 MiB")
                return data
            off, length = int(self._thumb_offset[pos]), int(self._thumb_length[pos])
            return f["thumbnails"][off:off + length].tobytes()

        return self._read(load)

    def close(self) -> None:
        """Close the file (calling it twice is harmless)."""
        if self._file is not None:
            close_file(self._file)
            self._file = None
