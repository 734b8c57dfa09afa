"""Locks and the rollback journal that make in-place updates of an index file crash-safe.

The technique is SQLite's rollback journal (https://www.sqlite.org/atomiccommit.html): before a transaction first
overwrites bytes that existed when it began, their original content is appended to ``INDEX.h5.undo`` as CRC-framed
records and written to the operating system. Bytes appended past the original end need no copy: rolling back
truncates the file to its original size. The transaction commits when the undo file is deleted (after the data file
was flushed and fsynced). Whoever next takes the writer lock and finds an undo file restores the saved ranges,
truncates, fsyncs and deletes it, which puts the file back exactly as it was before the killed transaction.

Undo file layout: a header frame ``<4s q I`` (magic ``OSU1``, original size, crc32 of the first 12 bytes), then
records ``<q I I`` (offset, length, crc32 of the packed offset+length and the data) followed by ``length`` bytes.
A torn or corrupt record ends the journal: its data write cannot have happened, since every record reaches the
operating system before the write it protects.

Locks (``fcntl.flock``, released by the kernel when a process dies, even by ``kill -9``):

- ``INDEX.h5.lock``, exclusive, held by a writer for its whole life; it holds the holder's pid and a description.
- ``INDEX.h5`` itself: shared by readers while they load or read, exclusive by a writer only while it applies a
  commit or rolls one back.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from pathlib import Path

from objsearch.errors import IndexFileError, IndexLockedError

LOGGER = logging.getLogger(__name__)

_UNDO_MAGIC = b"OSU1"
_UNDO_HEADER = struct.Struct("<4sqI")
_UNDO_RECORD = struct.Struct("<qII")
PAGE = 4096
LOCK_WAIT_S = 30.0


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def undo_path(path: Path) -> Path:
    return path.with_name(path.name + ".undo")


def _flock(fd: int, mode: int, timeout_s: float, what: str) -> None:
    """``flock(fd, mode)``, polling for up to ``timeout_s`` seconds; IndexLockedError after that."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise IndexLockedError(f"{what} stayed locked by a writer for {timeout_s:.0f} s; try again later")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class FileLock:
    """A ``flock`` on an already open descriptor of the index file (shared for readers, exclusive for a commit)."""

    def __init__(self, path: Path, *, exclusive: bool, timeout_s: float = LOCK_WAIT_S, fd: int | None = None):
        self.path = Path(path)
        self._own_fd = fd is None
        self.fd = os.open(self.path, os.O_RDONLY) if fd is None else fd
        try:
            _flock(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, timeout_s, str(self.path))
        except BaseException:
            if self._own_fd:
                os.close(self.fd)
            raise

    def release(self) -> None:
        if self.fd < 0:
            return
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        if self._own_fd:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class WriterLock:
    """The exclusive writer lock ``INDEX.h5.lock``, taken at once or refused.

    Raises
    ------
    IndexLockedError
        When another process (or another writer in this one) holds it; the message names the holder's pid.
    IndexFileError
        When the lock file cannot be created (a read-only folder).
    """

    def __init__(self, path: Path, description: str = "objsearch") -> None:
        self.path = lock_path(Path(path))
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise IndexFileError(f"cannot create the writer lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                name = Path(path).name
                raise IndexLockedError(
                    f"{name} is being written by {holder}; try again when it finishes") from None
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {description}\n".encode(), 0)

    def _holder(self) -> str:
        try:
            text = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        pid, _, desc = text.partition(" ")
        if not pid.isdigit():
            return "another process"
        return f"process {pid} ({desc})" if desc else f"process {pid}"

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def try_writer_lock(path: Path, description: str) -> WriterLock | None:
    """The writer lock if it is free now, else None."""
    try:
        return WriterLock(path, description)
    except IndexLockedError:
        return None


# ------------------------------------------------------------------------------------------------------ undo log
class UndoLog:
    """The undo file of one transaction (created at its start, deleted at its commit point)."""

    def __init__(self, path: Path, original_size: int, *, fsync: bool) -> None:
        self.path = Path(path)
        self.original_size = int(original_size)
        self.fsync = fsync
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        head = struct.pack("<4sq", _UNDO_MAGIC, self.original_size)
        self._write_all(head + struct.pack("<I", zlib.crc32(head)))
        if fsync:
            os.fsync(self.fd)
            fsync_dir(self.path.parent)
        self._dirty = False

    def _write_all(self, data: bytes) -> None:
        """Write all of ``data`` or raise: on a full disk ``write`` first writes part of it and returns (a torn
        record, which ``read_undo`` stops at), then raises ENOSPC; the bytes it protects are never overwritten."""
        view = memoryview(data)
        while len(view):
            view = view[os.write(self.fd, view):]

    def append(self, offset: int, data: bytes) -> None:
        head = struct.pack("<qI", offset, len(data))
        crc = zlib.crc32(data, zlib.crc32(head))
        self._write_all(_UNDO_RECORD.pack(offset, len(data), crc) + data)
        self._dirty = True

    def sync(self) -> None:
        """fsync pending records (before the data write they protect) when durability against power loss is on."""
        if self.fsync and self._dirty:
            os.fsync(self.fd)
        self._dirty = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """The commit point: the transaction is durable once the undo file is gone."""
        self.close()
        os.unlink(self.path)
        if self.fsync:
            fsync_dir(self.path.parent)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename or unlink in it survives a power cut (nothing where folders cannot be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def apply_undo(fd: int, parsed: tuple[int, list[tuple[int, bytes]]]) -> None:
    """Put back what an undo file saved (``read_undo``: the original size in bytes and the (offset, bytes) ranges)
    into the file open as ``fd`` (its exclusive lock held), truncate it to that size and fsync it. Later records never
    overlap earlier ones (each byte is saved once), so the order does not matter. Raises OSError from the writes."""
    size, ranges = parsed
    for offset, payload in ranges:
        os.pwrite(fd, payload, offset)
    os.ftruncate(fd, size)
    os.fsync(fd)


def read_undo(path: Path) -> tuple[int, list[tuple[int, bytes]]] | None:
    """The original size and the saved ranges of an undo file; None when even its header is torn (the transaction
    had not written anything yet)."""
    data = Path(path).read_bytes()
    if len(data) < _UNDO_HEADER.size:
        return None
    magic, size, crc = _UNDO_HEADER.unpack_from(data, 0)
    if magic != _UNDO_MAGIC or zlib.crc32(data[:12]) != crc or size < 0:
        return None
    ranges = []
    pos = _UNDO_HEADER.size
    while pos + _UNDO_RECORD.size <= len(data):
        offset, length, crc = _UNDO_RECORD.unpack_from(data, pos)
        payload = data[pos + _UNDO_RECORD.size: pos + _UNDO_RECORD.size + length]
        if len(payload) != length or offset < 0 or zlib.crc32(payload, zlib.crc32(struct.pack("<qI", offset, length))) != crc:
            break
        ranges.append((offset, payload))
        pos += _UNDO_RECORD.size + length
    return size, ranges


def rollback(path: Path) -> bool:
    """Undo an unfinished transaction of ``path`` if its undo file exists; the caller holds the writer lock.

    Returns True when something was rolled back. Takes the exclusive lock on the data file while restoring.
    """
    upath = undo_path(path)
    if not upath.exists():
        return False
    parsed = read_undo(upath)
    fd = os.open(path, os.O_RDWR)
    try:
        lock = FileLock(path, exclusive=True, fd=fd)
        try:
            if parsed is not None:
                apply_undo(fd, parsed)
                LOGGER.warning("rolled back an unfinished transaction of %s (%d saved ranges)", path, len(parsed[1]))
            os.unlink(upath)
            fsync_dir(upath.parent)
        finally:
            lock.release()
    finally:
        os.close(fd)
    return True


class JournaledFile:
    """A file object for h5py's ``fileobj`` driver that saves original bytes to an ``UndoLog`` before overwriting.

    Parameters
    ----------
    fd : an open read-write descriptor of the data file (not closed here).
    undo : the transaction's undo log; ``undo.original_size`` is the data file's size when the transaction began.
    """

    def __init__(self, fd: int, undo: UndoLog) -> None:
        self.fd = fd
        self.undo = undo
        self.failed: OSError | None = None  # the first failed write: the transaction must be rolled back
        self.pos = 0
        self._saved: set[int] = set()  # pages (PAGE bytes) of the original extent already in the undo log
        self.n_writes = 0
        self.bytes_written = 0

    def _protect(self, start: int, stop: int) -> None:
        """Save the original content of [start, stop) ∩ [0, original size) not saved yet."""
        size = self.undo.original_size
        stop = min(stop, size)
        if start >= stop:
            return
        for page in range(start // PAGE, (stop - 1) // PAGE + 1):
            if page in self._saved:
                continue
            lo, hi = page * PAGE, min((page + 1) * PAGE, size)
            data = os.pread(self.fd, hi - lo, lo)
            if len(data) != hi - lo:
                raise OSError(f"short read while saving bytes {lo}-{hi} for the undo log")
            self.undo.append(lo, data)
            self._saved.add(page)
        self.undo.sync()

    # the file-object protocol h5py's fileobj driver uses
    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = os.preadv(self.fd, [view], self.pos)
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def write(self, data) -> int:
        """Save the original bytes, then write. A failed write (a full disk, an I/O error) is kept in ``failed``
        and not raised: HDF5 calls this from object deallocation too, where h5py can only print a traceback, and
        the transaction is doomed anyway; from then on nothing is written, and the committer, which checks
        ``failed``, rolls the transaction back and raises it."""
        view = memoryview(data).cast("B")
        if self.failed is None:
            try:
                self._protect(self.pos, self.pos + len(view))
                self.n_writes += 1
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
                self.bytes_written += done
            except OSError as exc:
                self.failed = exc
        self.pos += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else int(size)
        if self.failed is not None:
            return size
        try:
            current = os.fstat(self.fd).st_size
            if size < current:
                self._protect(size, current)
            if size != current:
                os.ftruncate(self.fd, size)
        except OSError as exc:  # as write: kept, raised by the committer after the rollback
            self.failed = exc
        return size

    def flush(self) -> None:
        pass  # os-level writes: nothing buffered here
