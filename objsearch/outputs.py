"""Where the command line writes, checked before any work: an index path, a result picture, a numbered run folder,
a JSON Lines file. One rule for every output: its folder must exist (objsearch makes only the ``runs/...`` folders
it names itself), it is never one of the command's inputs, and a failed write is a one-line ``CannotWriteError``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from objsearch.errors import CannotWriteError, ObjsearchError, UsageError
from objsearch.types import MEDIA_SUFFIXES

PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}  # what a result picture may be
INDEX_SIDE_FILES = (".journal", ".undo", ".lock", ".tmp")  # what objsearch keeps next to an index file


def index_files(index: Path | None) -> list[Path]:
    """An index and the files objsearch keeps beside it (journal, rollback journal, writer lock, hnsw graphs)."""
    import glob

    if index is None:
        return []
    return [index, *(index.with_name(index.name + s) for s in INDEX_SIDE_FILES),
            *index.parent.glob(glob.escape(index.name) + ".hnsw*")]


def check_not_input(output: Path, inputs) -> None:
    """Refuse an output path that is one of the inputs, or an index's journal, undo, lock or graph file (never
    write over an input); a folder given as an input also covers every media file under it.

    Raises
    ------
    ObjsearchError
        Naming the output.
    """
    out = os.path.realpath(output)
    for item in inputs:
        if item is None:
            continue
        real = os.path.realpath(item)
        if real == out or (os.path.isdir(real) and out.startswith(real.rstrip(os.sep) + os.sep)
                           and Path(out).suffix.lower() in MEDIA_SUFFIXES):
            raise ObjsearchError(f"{output} is an input of this command; choose another output file")


def check_output_folder(path: Path, what: str) -> None:
    """Refuse before any work an output whose folder does not exist or is a file (``--out``, ``--jsonl``, ``-o``).

    Raises
    ------
    UsageError
        Naming ``what`` (``the index``, ``picture``) and the folder.
    """
    parent = path.parent
    if parent.is_dir():
        return
    if parent.exists():
        raise UsageError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    raise UsageError(f"cannot write {what} {path}: the folder {parent} does not exist (objsearch makes no folder "
                     f"for an output)")


def check_index_output(output: Path) -> None:
    """Refuse before any work an index path that is a folder or something other than a file, or a media file.

    Raises
    ------
    ObjsearchError, UsageError
        Saying what is wrong with the path.
    """
    if output.is_dir():
        raise ObjsearchError(f"cannot write the index {output}: it is a folder")
    if output.exists() and not output.is_file():
        raise ObjsearchError(f"cannot write the index {output}: not a regular file")
    if output.suffix.lower() in MEDIA_SUFFIXES:
        raise ObjsearchError(f"cannot write the index {output}: that is an image or video name; use a .h5 name")
    check_output_folder(output, "the index")


def check_picture_path(out: Path) -> None:
    """Refuse before any work a picture path OpenCV cannot write: no image suffix, a folder, a missing folder or
    one that is a file (``ObjsearchError``, ``UsageError``)."""
    if out.is_dir():
        raise ObjsearchError(f"cannot write picture {out}: it is a folder")
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        raise ObjsearchError(f"cannot write picture {out}: use a name ending in .jpg or .png")
    check_output_folder(out, "picture")


def picture_paths(items: list, out: Path | None, save: bool) -> dict[int, Path]:
    """Where ``query`` writes each query image's picture, by its position in ``items``: ``out`` itself for one
    image; for a folder ``out`` (which must exist) one file per image named after it; with ``save`` and no ``out``
    a new numbered folder ``runs/query/N`` (as ``yolo predict`` numbers its runs).

    Raises
    ------
    UsageError, ObjsearchError
        Before any work: a missing folder, several images and a file name, a name OpenCV cannot write.
    """
    if out is None and not save:
        return {}
    if out is not None and not out.is_dir():
        if len(items) != 1:
            raise UsageError(f"--out {out}: {len(items)} query images write one picture each into a folder, and "
                             f"{out} is not one (name an existing folder)")
        check_picture_path(out)
        return {0: out}
    folder = out if out is not None else next_run_folder(Path("runs") / "query")
    names: dict[int, Path] = {}
    taken: set[str] = set()
    for n, item in enumerate(items):
        stem = picture_stem(item, n)
        name, i = f"{stem}.jpg", 1
        while name.lower() in taken:  # the same file name from two folders
            i += 1
            name = f"{stem}-{i}.jpg"
        taken.add(name.lower())
        names[n] = folder / name
    return names


def picture_stem(item, n: int) -> str:
    """A file-name stem for the picture of query ``item`` (the ``n``-th): the image's own stem, or the URL's last
    path part; characters other than letters, digits, ``.-_`` become ``_``; at most 100 characters."""
    from urllib.parse import urlsplit

    raw = Path(urlsplit(item).path).stem if isinstance(item, str) else Path(item).stem
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", raw).strip("._") or f"query{n + 1}"
    return stem[:100]


def next_run_folder(parent: Path) -> Path:
    """``parent/N`` for the next free N (1, 2, ...), made now (so that two runs never share one).

    Raises
    ------
    CannotWriteError
        When the folder cannot be made.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotWriteError(f"cannot make {parent}: {exc.strerror}") from None
    numbers = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
    n = max(numbers, default=0) + 1
    while True:
        try:
            (parent / str(n)).mkdir()
            return parent / str(n)
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise CannotWriteError(f"cannot make {parent / str(n)}: {exc.strerror}") from None


def write_picture(engine, image, result, out: Path) -> None:
    """Render ``result`` over the query ``image`` (H, W, 3) uint8 BGR with its neighbours' pictures (object
    thumbnails, or whole indexed images for an ``ImageSearchResult``) into the picture file ``out``.

    Raises
    ------
    CannotWriteError
        When OpenCV cannot write the file (a full disk, a folder this user cannot write).
    """
    import cv2

    from objsearch.render import render_image_result, render_result
    from objsearch.types import ImageSearchResult

    if isinstance(result, ImageSearchResult):
        picture = render_image_result(image, result, {nb.media.media_id: engine.media_picture(nb.media.media_id)
                                                      for nb in result.neighbors})
    else:
        picture = render_result(image, result, {i: engine.thumbnail(i) for i in result.object_ids()})
    try:
        ok = cv2.imwrite(str(out), picture)
    except (OSError, cv2.error) as exc:
        raise CannotWriteError(f"cannot write picture {out}: {exc}") from None
    if not ok:
        raise CannotWriteError(f"cannot write picture {out} (a full disk, or a folder this user cannot write)")


@contextlib.contextmanager
def open_for_writing(path: Path):
    """``path`` opened for writing text (UTF-8); ``CannotWriteError`` when it cannot be."""
    try:
        handle = open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise CannotWriteError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        yield handle
