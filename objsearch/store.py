"""The index file (HDF5) and the analysis journal. The only module that imports h5py.

Layout of ``INDEX.h5`` (format version 1)::

    /                      attrs: format="objsearch-index", format_version, weights_sha256, weights_name,
                                  feature_recipe (JSON), config (JSON), class_names (JSON), created,
                                  skipped (JSON list of [path, reason])
    /images/path           (I,) str, relative to the base directory (POSIX separators)
    /images/width, height  (I,) int32, pixels
    /objects/image_id      (N,) int32, row in /images
    /objects/xyxy          (N, 4) float32, pixels in the original image
    /objects/confidence    (N,) float32
    /objects/class_id      (N,) int16
    /objects/features      (N, D) float32, raw features (see objsearch.detector)
    /objects/thumbnail     (N,) variable-length uint8, JPEG bytes of the crop (longest side ``thumb_size`` px)
    /projections/<d>/      components (D, d) float32, mean (D,) float32, vectors (N, d) float32;
                           attrs method, n_components, random_state

Crash safety: analysis never writes the HDF5 file in place. Each finished image is appended to a journal
(``INDEX.h5.journal``) as one framed, CRC-checked record and flushed; a run killed at any point (even ``kill -9``)
leaves at worst a torn last record, which the next run drops before resuming. When every image is done, the
HDF5 file is written to ``INDEX.h5.tmp`` and renamed over ``INDEX.h5`` (atomic on POSIX), then the journal is removed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from objsearch.errors import IndexFileError
from objsearch.projection import _Projection

LOGGER = logging.getLogger(__name__)

FORMAT_NAME = "objsearch-index"
FORMAT_VERSION = 1
_JOURNAL_MAGIC = b"OSJ1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32


# ----------------------------------------------------------------------------------------------------- journal
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

    def to_bytes(self) -> bytes:
        thumbs = np.frombuffer(b"".join(self.thumbnails), np.uint8)
        offsets = np.cumsum([0] + [len(t) for t in self.thumbnails]).astype(np.int64)
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.frombuffer(json.dumps({"path": self.path, "width": self.width, "height": self.height,
                                           "skipped": self.skipped}).encode(), np.uint8),
            xyxy=self.xyxy, confidence=self.confidence, class_id=self.class_id,
            features=self.features if self.features is not None else np.zeros((0, 0), np.float32),
            thumbs=thumbs, offsets=offsets,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> ImageRecord:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            thumbs, offsets = z["thumbs"].tobytes(), z["offsets"]
            return cls(
                path=meta["path"], width=meta["width"], height=meta["height"], skipped=meta["skipped"],
                xyxy=z["xyxy"], confidence=z["confidence"], class_id=z["class_id"], features=z["features"],
                thumbnails=[thumbs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)],
            )


class Journal:
    """Append-only, CRC-framed log of an analysis in progress (``<index>.journal``).

    The first record is a JSON header with the settings that must not change on resume; each later record is an
    ``ImageRecord``. Opening an existing journal drops a torn or corrupt tail (what a killed run leaves) and keeps
    everything before it.

    Raises
    ------
    IndexFileError
        When an existing journal was written with other settings (weights, recipe, size...) than ``header``.
    """

    def __init__(self, path: Path, header: dict) -> None:
        self.path = Path(path)
        self.header = header
        self.records: list[ImageRecord] = []
        if self.path.exists():
            self._recover()
        else:
            self._handle = open(self.path, "wb")
            self._write(json.dumps(header, sort_keys=True).encode())

    def _recover(self) -> None:
        good_end = 0
        stored_header = None
        with open(self.path, "rb") as handle:
            data = handle.read()
        pos = 0
        while pos + _FRAME.size <= len(data):
            magic, length, crc = _FRAME.unpack_from(data, pos)
            payload = data[pos + _FRAME.size: pos + _FRAME.size + length]
            if magic != _JOURNAL_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                if stored_header is None:
                    stored_header = json.loads(payload.decode())
                else:
                    self.records.append(ImageRecord.from_bytes(payload))
            except Exception:  # a record that frames correctly but does not parse ends the good part
                break
            pos += _FRAME.size + length
            good_end = pos
        if stored_header is None:
            LOGGER.warning("journal %s has no readable header; starting over", self.path)
            self.records = []
            self._handle = open(self.path, "wb")
            self._write(json.dumps(self.header, sort_keys=True).encode())
            return
        if stored_header != json.loads(json.dumps(self.header, sort_keys=True)):
            diff = sorted(k for k in set(stored_header) | set(self.header)
                          if stored_header.get(k) != json.loads(json.dumps(self.header)).get(k))
            raise IndexFileError(
                f"an unfinished analysis in {self.path} used other settings ({', '.join(diff)}); "
                f"run with the same settings to resume, or delete {self.path} to start over"
            )
        if good_end < len(data):
            LOGGER.warning("journal %s: dropped a torn record of %d bytes at its end", self.path, len(data) - good_end)
        self._handle = open(self.path, "r+b")
        self._handle.truncate(good_end)
        self._handle.seek(good_end)

    def _write(self, payload: bytes) -> None:
        self._handle.write(_FRAME.pack(_JOURNAL_MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._handle.flush()

    def append(self, record: ImageRecord) -> None:
        """Write one image's record and flush it to the operating system (it survives the process being killed)."""
        self._write(record.to_bytes())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()


# ------------------------------------------------------------------------------------------------ index file
def write_index(
    path: Path,
    records: list[ImageRecord],
    *,
    projections: list[_Projection],
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
    projections: list[_Projection],
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


class IndexFile:
    """A read-only, opened index file.

    Small per-object arrays and the projected vectors of every stored dimension are loaded; raw features and
    thumbnails are read on demand. Use as a context manager, or call ``close()``.

    Attributes
    ----------
    image_path : list of str, relative to the base directory
    image_width, image_height : ndarray of shape (I,), int32
    image_id : ndarray of shape (N,), int64
    xyxy : ndarray of shape (N, 4), float32 pixels
    confidence : ndarray of shape (N,), float32
    class_id : ndarray of shape (N,), int64
    class_names : list of str
    attrs : dict of the root attributes (JSON ones decoded)
    dims : list of int, stored projection dimensions

    Raises
    ------
    IndexFileError
        When the file is missing, not HDF5 or truncated, not an objsearch index, or of another format version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            journal = self.path.with_name(self.path.name + ".journal")
            hint = f" (an unfinished analysis is in {journal.name}; run analyze again to finish it)" if journal.exists() else ""
            raise IndexFileError(f"index file {self.path} does not exist{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise IndexFileError(f"{self.path} is not a readable HDF5 file (truncated or not HDF5): {exc}") from None
        try:
            self._load()
        except IndexFileError:
            self._file.close()
            raise
        except (KeyError, OSError, ValueError) as exc:
            self._file.close()
            raise IndexFileError(f"{self.path} is a damaged objsearch index: {exc}") from None

    def _load(self) -> None:
        f = self._file
        if f.attrs.get("format") != FORMAT_NAME:
            raise IndexFileError(f"{self.path} is an HDF5 file but not an objsearch index (no format={FORMAT_NAME!r})")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise IndexFileError(
                f"{self.path} has index format version {version}; this objsearch reads version {FORMAT_VERSION}"
            )
        self.attrs = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key in ("feature_recipe", "config", "class_names", "skipped"):
                value = json.loads(value)
            self.attrs[key] = value
        self.class_names: list[str] = list(self.attrs.get("class_names", []))
        self.image_path = [p.decode() if isinstance(p, bytes) else str(p) for p in f["images/path"][()]]
        self.image_width = f["images/width"][()]
        self.image_height = f["images/height"][()]
        self.image_id = f["objects/image_id"][()].astype(np.int64)
        self.xyxy = f["objects/xyxy"][()]
        self.confidence = f["objects/confidence"][()]
        self.class_id = f["objects/class_id"][()].astype(np.int64)
        n = len(self.image_id)
        for name in ("xyxy", "confidence", "class_id"):
            if len(getattr(self, name)) != n:
                raise IndexFileError(f"{self.path} is damaged: objects/{name} has {len(getattr(self, name))} rows, expected {n}")
        self.dims = sorted(int(k) for k in f["projections"].keys())
        self._vectors: dict[int, np.ndarray] = {}

    @property
    def weights_sha256(self) -> str:
        return str(self.attrs.get("weights_sha256", ""))

    def __len__(self) -> int:
        return len(self.image_id)

    def projection(self, dims: int) -> _Projection:
        """The stored projection to ``dims`` dimensions.

        Raises
        ------
        IndexFileError
            When the index holds no projection of that size.
        """
        if dims not in self.dims:
            raise IndexFileError(f"{self.path} holds projections to {self.dims} dims, not {dims}")
        g = self._file[f"projections/{dims}"]
        return _Projection.from_state({
            "method": g.attrs["method"], "n_components": int(g.attrs["n_components"]),
            "random_state": int(g.attrs["random_state"]), "components": g["components"][()], "mean": g["mean"][()],
        })

    def vectors(self, dims: int) -> np.ndarray:
        """Projected vectors (N, dims) float32, loaded once."""
        if dims not in self._vectors:
            self.projection(dims)  # validates
            self._vectors[dims] = self._file[f"projections/{dims}/vectors"][()]
        return self._vectors[dims]

    def features(self, ids) -> np.ndarray:
        """Raw features (len(ids), D) float32 of the given object ids, read from disk."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        dataset = self._file["objects/features"]
        if len(ids) == 0:
            return np.zeros((0, dataset.shape[1]), np.float32)
        unique, inverse = np.unique(ids, return_inverse=True)  # h5py needs increasing, unique indices
        return dataset[unique][inverse]

    def thumbnail(self, object_id: int) -> bytes:
        """JPEG bytes of one object's crop, read from disk."""
        return self._file["objects/thumbnail"][int(object_id)].tobytes()

    def iter_records(self) -> Iterator[ImageRecord]:
        """The index's images as ``ImageRecord`` (used to rebuild or extend an index)."""
        feats = self._file["objects/features"]
        for i, path in enumerate(self.image_path):
            rows = np.flatnonzero(self.image_id == i)
            yield ImageRecord(
                path=path, width=int(self.image_width[i]), height=int(self.image_height[i]),
                xyxy=self.xyxy[rows], confidence=self.confidence[rows], class_id=self.class_id[rows],
                features=feats[rows] if len(rows) else np.zeros((0, feats.shape[1]), np.float32),
                thumbnails=[self.thumbnail(r) for r in rows],
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> IndexFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
