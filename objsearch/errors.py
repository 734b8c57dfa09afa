"""Exceptions a user can cause. The command line turns each into one line and a non-zero exit code."""

from __future__ import annotations


class ObjsearchError(Exception):
    """Base class for errors caused by input (files, options), never by a bug.

    ``exit_code`` is what the command line exits with.
    """

    exit_code = 1


class ImageReadError(ObjsearchError):
    """An image file is missing, unreadable, corrupt, empty or not an image."""

    exit_code = 2


class VideoReadError(ImageReadError):
    """A video file cannot be opened or decoded, or ends before the frame count it declares (truncated or damaged).

    ``frames_read`` counts the sampled frames delivered before the error (0 when the file could not be opened).
    """

    def __init__(self, message: str, frames_read: int = 0):
        super().__init__(message)
        self.frames_read = int(frames_read)


class IndexFileError(ObjsearchError):
    """An index file is missing, not an objsearch index, truncated, of another format version or incomplete."""

    exit_code = 3


class WeightsMismatchError(IndexFileError):
    """The index was built with other detector weights than the ones given."""


class WeightsNotFoundError(ObjsearchError):
    """No detector checkpoint could be found or loaded."""

    exit_code = 4


class DeviceError(ObjsearchError):
    """The requested compute device does not exist or is not available on this machine."""

    exit_code = 2


class EmptyFolderError(ObjsearchError):
    """A folder to analyze holds no image files."""

    exit_code = 5


class IndexLockedError(IndexFileError):
    """Another process is writing the index (it holds ``INDEX.h5.lock``); the message names its pid."""


class VectorStoreError(ObjsearchError):
    """An external vector store (Milvus) cannot be used: not installed, unreachable, locked by another process, or
    its collection belongs to another index or dimension."""

    exit_code = 3
