"""A reader's side of the index file's locks: the shared lock with no unfinished transaction left behind, and
``repair`` (roll back what a killed writer left). The locks and the rollback journal themselves are in
``objsearch.catalog.txn``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from objsearch.catalog import txn
from objsearch.errors import IndexFileError


def stat_signature(path: Path) -> tuple:
    """What changes when another process rewrites ``path``: (device, inode, size, mtime_ns, ctime_ns)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def shared_lock(path: Path, description: str, deadline: float) -> txn.FileLock:
    """The shared lock on ``path`` with no unfinished transaction left behind (rolled back here when possible)."""
    while True:
        lock = txn.FileLock(path, exclusive=False, timeout_s=max(0.0, deadline - time.monotonic()))
        if not txn.undo_path(path).exists():
            return lock
        lock.release()  # an undo file while no commit runs: a killed writer's, or a live writer about to commit
        undo = txn.undo_path(path)
        hint = (f"a killed writer left an unfinished transaction in {undo.name}; run `objsearch repair {path}` "
                f"as a user who can write that folder")
        try:
            wl = txn.try_writer_lock(path, description)
        except IndexFileError:
            raise IndexFileError(f"{path} cannot be read: {hint}") from None
        if wl is None:
            if time.monotonic() > deadline:
                raise IndexFileError(f"{path} cannot be read: a writer is still applying a transaction")
            time.sleep(0.05)
            continue
        try:
            txn.rollback(path)
        except OSError as exc:
            raise IndexFileError(f"{path} cannot be read ({exc.strerror}): {hint}") from None
        finally:
            wl.release()


def repair(path: str | Path) -> bool:
    """Roll back a transaction a killed writer left (``INDEX.h5.undo``); True when there was one.

    Raises
    ------
    IndexLockedError
        When a live writer holds the index (it rolls back by itself).
    """
    path = Path(path)
    wl = txn.WriterLock(path, "objsearch repair")
    try:
        return txn.rollback(path)
    finally:
        wl.release()
