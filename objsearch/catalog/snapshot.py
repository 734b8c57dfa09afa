"""A copy of an index file that another process may be writing: taken under the writer lock, so no transaction
commits half into it, and written beside the target first so that the copy appears complete or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from objsearch.catalog.txn import WriterLock
from objsearch.errors import IndexFileError, IndexLockedError


def copy_index(source: str | Path, target: str | Path) -> Path:
    """Copy the index file ``source`` to ``target`` (replacing it), holding ``source``'s writer lock meanwhile.

    Returns
    -------
    Path
        ``target``.

    Raises
    ------
    IndexLockedError
        When a writer (``add``, ``sync``, ``watch``) holds the index now: try again when it finishes.
    ValueError
        When ``target`` is ``source`` itself.
    OSError
        When the copy cannot be written (a full disk, a folder this user cannot write); nothing is left at
        ``target``.
    """
    source, target = Path(source), Path(target)
    if target.resolve() == source.resolve():
        raise ValueError(f"{target} is the index itself")
    try:
        lock = WriterLock(source, "copy")
    except IndexLockedError:
        raise
    except IndexFileError:  # no lock file can be made beside it: no writer can hold one either
        lock = None
    try:
        part = target.with_name(target.name + ".part")
        try:
            shutil.copyfile(source, part)
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()
    return target
