"""Exceptions a user can cause. The command line turns each into one line and a non-zero exit code.

Every command exits with one of the codes of ``ExitCode`` (the table in docs/commands.md, tested row by row in
tests/test_exit_codes.py); each exception class below carries its code.
"""

from __future__ import annotations

import enum
import errno


class ExitCode(enum.IntEnum):
    """What every ``objsearch`` command exits with."""

    OK = 0
    USAGE = 1  # the command line asks for something that cannot be done (a flag, value or combination; a path of
    #            the wrong kind; no display or GPU for what was asked); nothing was done
    UNREADABLE_INPUT = 2  # an input named on the command line cannot be read (an image, video or URL; a path that
    #                       ``remove`` was given and the index does not hold)
    INDEX_REFUSED = 3  # the index is missing, not ours, damaged, of another version, unfinished, of other weights
    #                    or locked; a Milvus collection of another index
    WEIGHTS = 4  # no detector checkpoint could be found or loaded
    EMPTY_INPUT = 5  # nothing to work on: a folder without images or videos, or without labels for eval
    CANNOT_WRITE = 6  # the disk or the system refused a write (full, read-only, forbidden); what was committed stays
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)


class ObjsearchError(Exception):
    """Base class for errors caused by input (files, options), never by a bug.

    ``exit_code`` is what the command line exits with: ``ExitCode.USAGE`` unless a subclass says otherwise.
    """

    exit_code = ExitCode.USAGE


class UsageError(ObjsearchError):
    """A flag, a value or a combination of them that cannot be done (named with the flag, the value and what is
    allowed)."""

    exit_code = ExitCode.USAGE


class CannotWriteError(ObjsearchError):
    """An output could not be written: a full disk, a read-only or forbidden folder, a write the system refused."""

    exit_code = ExitCode.CANNOT_WRITE


class ImageReadError(ObjsearchError):
    """An image file is missing, unreadable, corrupt, empty or not an image."""

    exit_code = ExitCode.UNREADABLE_INPUT


class VideoReadError(ImageReadError):
    """A video file cannot be opened or decoded, or ends before the frame count it declares (truncated or damaged).

    ``frames_read`` counts the sampled frames delivered before the error (0 when the file could not be opened).
    """

    def __init__(self, message: str, frames_read: int = 0):
        super().__init__(message)
        self.frames_read = int(frames_read)


class IndexFileError(ObjsearchError):
    """An index file is missing, not an objsearch index, truncated, of another format version or incomplete."""

    exit_code = ExitCode.INDEX_REFUSED


class WeightsMismatchError(IndexFileError):
    """The index was built with other detector weights than the ones given."""


class WeightsNotFoundError(ObjsearchError):
    """No detector checkpoint could be found or loaded."""

    exit_code = ExitCode.WEIGHTS


class DeviceError(ObjsearchError):
    """The requested compute device does not exist or is not available on this machine (a usage error: ``--device``
    asks for what this machine cannot do)."""

    exit_code = ExitCode.USAGE


class EmptyFolderError(ObjsearchError):
    """A folder to analyze holds no image files."""

    exit_code = ExitCode.EMPTY_INPUT


class IndexLockedError(IndexFileError):
    """Another process is writing the index (it holds ``INDEX.h5.lock``); the message names its pid."""


class VectorStoreError(ObjsearchError):
    """An external vector store (Milvus) cannot be used: not installed, unreachable, locked by another process, or
    its collection belongs to another index or dimension."""

    exit_code = ExitCode.INDEX_REFUSED


# a full disk, a read-only or forbidden folder, a file too large: one line, not a traceback (what was committed stays)
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
STORAGE_ERRNOS = SPACE_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(exc: OSError, *, resumable: bool = False) -> CannotWriteError | None:
    """The user error an ``OSError`` of storage stands for (``STORAGE_ERRNOS``: a full disk, a read-only or forbidden
    place), None for another. ``resumable``: the job journals its work, so it resumes once there is room again
    (said only for lack of space: a read-only or forbidden place needs another place, not a second try)."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    resumes = resumable and exc.errno in SPACE_ERRNOS
    return CannotWriteError(f"{exc.strerror}{where}"
                            + ("; an analysis resumes where it stopped when run again" if resumes else ""))
