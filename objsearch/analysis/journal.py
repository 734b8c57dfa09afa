"""The analysis journal (``INDEX.h5.journal``): an append-only, CRC-framed log of the images a job finished and has
not committed to the index yet, and the record format it shares with the Ray shards (``objsearch.distributed``).

Each record is framed as ``FRAME`` (magic ``JOURNAL_MAGIC``, payload length, crc32) followed by the payload: the
first a JSON header (the journal's id and the job's settings), each later one an ``np.savez`` archive of one
finished image (``record_to_bytes``): a ``MediaRecord``, a ``SkippedFile`` or the ``VideoEnd`` of a video.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from objsearch.errors import IndexFileError
from objsearch.types import Detections, MediaRecord, MediaRef, SkippedFile

LOGGER = logging.getLogger(__name__)

JOURNAL_MAGIC = b"OSJ2"
FRAME = struct.Struct("<4sII")  # magic, payload length, crc32


@dataclass(frozen=True)
class VideoEnd:
    """The end of one video's frames in a job: ``path`` (relative to its root ``root``), ``n_frames`` sampled
    frames analysed, and ``reason`` when the video was broken or truncated (its frames read before are kept)."""

    path: str
    n_frames: int
    reason: str = ""
    root: int = 0


def record_key(record) -> tuple[int, str]:
    """(root, path) of a journal record (a MediaRecord, SkippedFile or VideoEnd): what identifies its file."""
    if isinstance(record, MediaRecord):
        return int(record.media.root), record.media.path
    return int(record.root), record.path


def record_to_bytes(seq: int, record: MediaRecord | SkippedFile | VideoEnd) -> bytes:
    """One journal record's payload (unframed): an ``np.savez`` archive of ``record`` with sequence number ``seq``.

    A ``MediaRecord`` keeps its media fields (JSON ``meta``), its detections (``xyxy`` (N, 4) float32 pixels,
    ``confidence`` (N,), ``class_id`` (N,), ``features`` (N, D) float32, ``image_feature`` (D_img,) when made) and its
    thumbnails (concatenated JPEG bytes with their ``offsets`` (N + 1,) int64); a ``SkippedFile`` or ``VideoEnd`` its
    fields in ``meta`` only. ``record_from_bytes`` reads it back.
    """
    buf = io.BytesIO()
    if isinstance(record, (SkippedFile, VideoEnd)):
        meta = ({"seq": seq, "kind": "skipped", "path": record.path, "reason": record.reason, "root": record.root}
                if isinstance(record, SkippedFile) else
                {"seq": seq, "kind": "video_end", "path": record.path, "n_frames": record.n_frames,
                 "reason": record.reason, "root": record.root})
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        return buf.getvalue()
    m, d = record.media, record.detections
    meta = {"seq": seq, "kind": "media", "path": m.path, "width": m.width, "height": m.height,
            "frame_index": m.frame_index, "timestamp_s": m.timestamp_s, "file_size": m.file_size,
            "file_mtime_ns": m.file_mtime_ns, "root": m.root}
    thumbs = np.frombuffer(b"".join(record.thumbnails), np.uint8)
    offsets = np.cumsum([0] + [len(t) for t in record.thumbnails]).astype(np.int64)
    extra = {} if d.image_feature is None else {"image_feature": d.image_feature}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta, ensure_ascii=True).encode(), np.uint8), xyxy=d.xyxy,
             confidence=d.confidence, class_id=d.class_id, features=d.features, thumbs=thumbs, offsets=offsets,
             **extra)
    return buf.getvalue()


def record_from_bytes(payload: bytes) -> tuple[int, MediaRecord | SkippedFile | VideoEnd]:
    """``(seq, record)`` from a payload ``record_to_bytes`` wrote.

    Raises
    ------
    ValueError, KeyError, OSError
        When the payload is not such an archive (the journal then ends its good part there).
    """
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        root = int(meta.get("root", 0))
        if meta["kind"] == "skipped":
            return meta["seq"], SkippedFile(meta["path"], meta["reason"], root)
        if meta["kind"] == "video_end":
            return meta["seq"], VideoEnd(meta["path"], int(meta["n_frames"]), meta["reason"], root)
        thumbs, offsets = z["thumbs"].tobytes(), z["offsets"]
        media = MediaRef(path=meta["path"], width=meta["width"], height=meta["height"],
                         frame_index=meta["frame_index"], timestamp_s=meta["timestamp_s"],
                         file_size=meta["file_size"], file_mtime_ns=meta["file_mtime_ns"], root=root)
        dets = Detections(z["xyxy"], z["confidence"], z["class_id"], z["features"],
                          image_feature=z["image_feature"] if "image_feature" in z.files else None)
        return meta["seq"], MediaRecord(media, dets, [thumbs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)])


class Journal:
    """Append-only, CRC-framed log of the images a job finished and has not committed yet (``INDEX.h5.journal``).

    The first record is a JSON header (the journal's id and the settings that must not change: weights, recipe,
    thresholds, thumbnail size); each later record is one finished image (or a skipped file) with a sequence number.
    Opening an existing journal drops a torn or corrupt tail (what a killed job leaves) and keeps everything before.

    Raises
    ------
    IndexFileError
        When an existing journal was written with other settings than ``settings``.
    """

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.pending: list[tuple[int, MediaRecord | SkippedFile]] = []
        self.journal_id = uuid.uuid4().hex
        self.next_seq = 1
        if self.path.exists():
            self._recover()
        else:
            self._start()

    def _start(self) -> None:
        self._handle = open(self.path, "wb")
        self._write(json.dumps({"journal_id": self.journal_id, "settings": self.settings}, sort_keys=True).encode())
        self._header_end = self._handle.tell()

    def _recover(self) -> None:
        with open(self.path, "rb") as handle:
            data = handle.read()
        pos = good_end = header_end = 0
        header = None
        while pos + FRAME.size <= len(data):
            magic, length, crc = FRAME.unpack_from(data, pos)
            payload = data[pos + FRAME.size: pos + FRAME.size + length]
            if magic != JOURNAL_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                if header is None:
                    header = json.loads(payload.decode())
                    header_end = pos + FRAME.size + length
                else:
                    self.pending.append(record_from_bytes(payload))
            except Exception:  # a record that frames correctly but does not parse ends the good part
                break
            pos += FRAME.size + length
            good_end = pos
        if header is None or "settings" not in header:
            LOGGER.warning("journal %s has no readable header; starting a new one", self.path)
            self.pending = []
            self._start()
            return
        if header["settings"] != self.settings:
            diff = sorted(k for k in set(header["settings"]) | set(self.settings)
                          if header["settings"].get(k) != self.settings.get(k))
            raise IndexFileError(
                f"an unfinished job in {self.path} used other settings ({', '.join(diff)}); run it with the same "
                f"settings to finish it, or delete {self.path} to drop its {len(self.pending)} finished images")
        if good_end < len(data):
            LOGGER.warning("journal %s: dropped a torn record of %d bytes at its end", self.path, len(data) - good_end)
        self.journal_id = header["journal_id"]
        self.next_seq = max([seq for seq, _ in self.pending], default=0) + 1
        self._handle = open(self.path, "r+b")
        self._handle.truncate(good_end)
        self._handle.seek(good_end)
        self._header_end = header_end

    def _write(self, payload: bytes) -> None:
        self._handle.write(FRAME.pack(JOURNAL_MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._handle.flush()

    def append(self, record: MediaRecord | SkippedFile) -> int:
        """Write one finished image (or skipped file) and flush it to the operating system (it survives the process
        being killed). Returns its sequence number."""
        seq = self.next_seq
        self._write(record_to_bytes(seq, record))
        self.next_seq += 1
        return seq

    def committed(self) -> None:
        """Everything appended so far is in the index: keep only the header."""
        self.pending = []
        self._handle.truncate(self._header_end)
        self._handle.seek(self._header_end)
        self._handle.flush()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._handle.closed

    def close(self, remove: bool = False) -> None:
        """Close the file; with ``remove``, delete it too (its images are all committed)."""
        self._handle.close()
        if remove:
            self.path.unlink(missing_ok=True)
