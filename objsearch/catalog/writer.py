"""The writer of an index file: ``CatalogWriter``, buffered adds and removals applied in crash-safe transactions.

One writer at a time holds ``INDEX.h5.lock`` (``objsearch.catalog.txn``); ``commit`` writes through a rollback journal
so that a killed writer leaves the file as it was before the commit or after it. The HDF5 writes themselves are in
``objsearch.catalog.storage``.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
import uuid as uuid_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from objsearch.catalog import storage, txn
from objsearch.catalog.attrs import META_ATTRS, decode_attrs, encode_attrs, roots_of
from objsearch.catalog.load import check_roots, check_vector_backend, close_file, load, open_read, reading
from objsearch.catalog.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LIBVER,
    MAX_ABS_VALUE,
    MAX_PATH_BYTES,
    MAX_THUMBNAIL_BYTES,
    STATES,
    STREAM_ROWS,
    Tables,
    damaged,
    sane,
    skipped_to_json,
)
from objsearch.catalog.storage import (
    append_rows,
    copy_live,
    create_image_group,
    create_projection,
    fill_vectors,
    new_file,
    removed_on_failure,
    write_alive,
)
from objsearch.catalog.view import CatalogView
from objsearch.errors import IndexFileError
from objsearch.projection import Projection
from objsearch.types import Detections, MediaRecord, SkippedFile

LOGGER = logging.getLogger(__name__)


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


class CatalogWriter(CatalogView):
    """The one writer of a format 2 index: buffered adds and removals applied in crash-safe transactions.

    Obtain one with ``CatalogWriter.create`` or ``CatalogWriter.open``; it holds ``INDEX.h5.lock`` until
    ``close()``. Ids are assigned when ``add`` is called, in call order, and never reused. ``commit`` applies
    everything buffered in one transaction: a process killed at any point leaves the file as it was before the
    commit (rolled back by the next opener) or after it. The read surface of ``CatalogView`` shows the committed
    state (live rows; the object columns are read from the file each time, O(objects): ``n_objects`` counts them),
    and the roots set since.

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
            check_projection(proj, int(n_features))
        if image_projections is not None:
            n_image = (attrs.get("image_recipe") or {}).get("n_features")
            if not isinstance(n_image, int) or n_image < 1:
                raise ValueError("image_projections need attrs['image_recipe'] with an integer n_features >= 1")
            for proj in image_projections:
                check_projection(proj, n_image)
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
            with removed_on_failure(tmp):
                new_file(tmp, full, int(n_features), list(projections),
                          None if image_projections is None else list(image_projections))
                storage.fsync_path(tmp)
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
            f = open_read(self.path)
            try:
                version, attrs, tables = load(f, self.path, objects=False)
            finally:
                close_file(f)
        if version != FORMAT_VERSION:
            raise IndexFileError(f"{self.path} has index format version {version}; run `objsearch convert "
                                 f"{self.path} NEW.h5` to get a format {FORMAT_VERSION} index that can be updated")
        self.attrs, self._t = attrs, tables
        self._size = os.path.getsize(self.path)
        self._n_live_objects: int | None = None  # counted from /objects/alive when first asked

    # -- object rows, read from the file on demand
    def _object_column(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """/objects/<name> of the committed rows (all, or a slice)."""
        with txn.FileLock(self.path, exclusive=False), reading(self.path) as f:
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
        with txn.FileLock(self.path, exclusive=False), reading(self.path) as f:
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

    # -- the read surface (``CatalogView``): the committed state, and the roots set since
    def _attrs_now(self) -> dict:
        return {**self.attrs, **self._pending.attrs}

    def _stored_projections(self) -> dict:
        return self._t.projections

    def _live_media(self) -> np.ndarray:
        return np.flatnonzero(self._t.media["alive"])

    def _live_media_column(self, name: str):
        rows = self._live_media()
        if name == "path":
            return self._t.media_paths(rows)
        if name == "root":
            return self._t.roots_of(rows)
        return self._t.media[name][rows]

    def _live_object_column(self, name: str) -> np.ndarray:
        values = self._object_column(name)[np.flatnonzero(self._object_column("alive"))]
        return values.astype(np.int64) if name == "class_id" else values

    @property
    def next_media_id(self) -> int:
        return int(self.attrs["next_media_id"]) + len(self._pending.media_ids)

    @property
    def next_object_id(self) -> int:
        return int(self.attrs["next_object_id"]) + sum(len(ids) for ids in self._pending.object_ids)

    @property
    def skipped(self) -> list[SkippedFile]:
        """The skipped files, committed ones or those set since."""
        return list(self._pending.skipped if self._pending.skipped is not None else self._t.skipped)

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

    def find_media(self, keys) -> dict[tuple[int, str], int]:
        """{(root, path): media id} of the live committed media items among ``keys`` ((root, path relative to it)
        pairs), found without a Python object per indexed item (``Tables.find_paths``)."""
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
        with txn.FileLock(self.path, exclusive=False), reading(self.path) as f:
            feats, alive, ids = f["objects/features"], f["objects/alive"], f["objects/id"]
            for start in range(0, feats.shape[0], chunk):
                stop = min(start + chunk, feats.shape[0])
                keep = alive[start:stop] == 1
                if keep.any():
                    rows = feats[start:stop][keep]
                    if not sane(rows):
                        raise damaged(self.path, f"/objects/features holds non-finite values (or beyond "
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
        with txn.FileLock(self.path, exclusive=False), reading(self.path) as f:
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
                    "next_object_id", *META_ATTRS}
        bad = sorted(set(attrs) & reserved)
        if bad:
            raise ValueError(f"attributes {bad} are managed by the catalog and cannot be set")
        if "state" in attrs and attrs["state"] not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {attrs['state']!r}")
        if "class_names" in attrs and not all(isinstance(n, str) for n in attrs["class_names"]):
            raise ValueError("class_names must be a list of str")
        if "vector_backend" in attrs:
            try:
                check_vector_backend(attrs["vector_backend"], self.path)
            except IndexFileError:
                raise ValueError("vector_backend must be a mapping of a backend name and its options") from None
        if "roots" in attrs or "root_macs" in attrs or "base_dir" in attrs:
            merged = {**self.attrs, **self._pending.attrs, **attrs}
            try:
                check_roots(merged, self.path)
            except IndexFileError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
            if len(roots_of(merged)[0]) < len(self.roots):
                raise ValueError("roots cannot be taken away (media items are relative to them)")
        self._pending.attrs.update(attrs)

    def set_projection(self, proj: Projection) -> None:
        """Add or replace the projection to ``proj.n_components`` dims at the next commit; its vectors are computed
        then for every row from the stored features, 65536 rows at a time."""
        check_projection(proj, self.n_features)
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
            check_projection(proj, n_image)
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
            txn.apply_undo(fd, parsed)
        os.unlink(undo.path)

    def _apply(self, jfile: txn.JournaledFile) -> tuple[dict, Tables]:
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
                create_image_group(f, int(recipe["n_features"]), projs, n_media0)
                rows = np.searchsorted(t.media["id"], ids)
                full = np.zeros((n_media0, int(recipe["n_features"])), np.float32)
                full[rows] = image_rows
                if n_media0:
                    f["image/features"][:] = full
                for proj in projs:
                    fill_vectors(f, int(proj.n_components), proj, prefix="image/projections",
                                  source="image/features")
            append_rows(f, m_new, paths, o_new, feats, thumbs, vectors, image_feats, image_vectors)
            n_rows = n_obj0 + len(thumbs)
            for d, proj in p.projections.items():
                create_projection(f, proj, n_rows)
                fill_vectors(f, d, proj)
            # tombstones (rows of committed and just appended items)
            all_media_ids = np.concatenate([t.media["id"], m_new["id"]])
            media_rows = np.flatnonzero(np.isin(all_media_ids, list(p.remove_media)))
            new_rows = n_obj0 + np.flatnonzero(np.isin(o_new["id"], list(p.remove_objects)))
            obj_rows = np.union1d(np.asarray(sorted(p.remove_object_rows), np.int64), new_rows).astype(np.int64)
            write_alive(f["media/alive"], media_rows)
            write_alive(f["objects/alive"], obj_rows)
            if p.skipped is not None:
                blob = skipped_to_json(p.skipped)
                ds = f["skipped"]
                ds.resize(len(blob), axis=0)
                if blob:
                    ds[:] = np.frombuffer(blob, np.uint8)
            attrs = {**self.attrs, **p.attrs, "generation": self.generation + 1,
                     "next_media_id": self.next_media_id, "next_object_id": self.next_object_id}
            if p.image is not None:
                attrs["image_recipe"] = p.image[0]
            encoded = encode_attrs(attrs)
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
        tables = Tables(media, t.path_bytes + b"".join(paths), None, thumb_base + int(tl.sum()),
                         projections={**kept, **p.projections},
                         skipped=list(t.skipped) if p.skipped is None else list(p.skipped),
                         image_projections=None if image_projections is None else
                         {int(proj.n_components): proj for proj in image_projections},
                         n_image_features=int(p.image[0]["n_features"]) if p.image is not None
                         else t.n_image_features, media_root=media_root,
                         n_object_rows=n_obj0 + len(o_new["id"]))
        return decode_attrs(encoded, self.path), tables

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
        with removed_on_failure(tmp):
            with txn.FileLock(self.path, exclusive=False), reading(self.path) as src:
                _, _, full = load(src, self.path)  # every row: compaction is O(objects) anyway
                copy_live(src, tmp, attrs, full, 2)
            storage.fsync_path(tmp)
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


def check_projection(proj: Projection, n_features: int) -> None:
    """Raise ValueError unless ``proj`` is fitted on ``n_features`` features."""
    if not hasattr(proj, "components_") or getattr(proj, "n_features_in_", None) != n_features:
        raise ValueError(f"projections must be fitted on {n_features} features, got "
                         f"{getattr(proj, 'n_features_in_', 'an unfitted one')}")
