"""What a query names: http(s) URLs, image files, folders of images and glob patterns, listed once for every shell;
and what kind of file a path is (an index, a video, an image), by the one suffix table in ``objsearch.types``."""

from __future__ import annotations

from pathlib import Path

from objsearch.errors import ImageReadError, ObjsearchError
from objsearch.types import IMAGE_SUFFIXES, VIDEO_SUFFIXES, printable

URL_MAX_BYTES = 20 << 20  # a query image fetched from a URL: at most 20 MB ...
URL_TIMEOUT_S = 15.0  # ... within 15 s
INDEX_SUFFIXES = {".h5", ".hdf5"}


def is_url(text: str) -> bool:
    """Whether ``text`` is an http(s) URL (a query image to fetch)."""
    return text.lower().startswith(("http://", "https://"))


def path_kind(path: str | Path) -> str | None:
    """``"index"``, ``"video"`` or ``"image"`` by the file name's suffix (case-insensitive); None for another."""
    suffix = Path(path).suffix.lower()
    if suffix in INDEX_SUFFIXES:
        return "index"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "image" if suffix in IMAGE_SUFFIXES else None


def expand_query_inputs(inputs: list[str]) -> list[str | Path]:
    """The query images named by ``inputs``, in order: http(s) URLs as they are, a folder's images (recursively,
    sorted), a glob pattern's image files (sorted; ``**`` recurses) and plain paths.

    Raises
    ------
    ImageReadError
        When a folder or a pattern names no image (a query image that cannot be read, exit 2).
    """
    import glob

    out: list[str | Path] = []
    for text in inputs:
        path = Path(text)
        if is_url(text):
            out.append(text)
        elif path.is_dir():
            from objsearch.media import list_images

            found = list_images(path)
            if not found:
                raise ImageReadError(f"cannot read image {text}: it is a folder with no images in it")
            out += found
        elif not path.exists() and glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True)
                           if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
            if not found:
                raise ImageReadError(f"cannot read image {text}: no image file matches the pattern")
            out += found
        else:
            out.append(path)
    return out


def read_query(item: str | Path):
    """(H, W, 3) uint8 BGR of a query path or URL (fetched within ``URL_MAX_BYTES`` and ``URL_TIMEOUT_S``).

    Raises
    ------
    ImageReadError
        When the file or URL is not a readable image (the URL shortened to 200 characters in the message).
    """
    from objsearch.media import decode_image, fetch_image, read_image

    if isinstance(item, str):
        try:
            data = fetch_image(item, max_bytes=URL_MAX_BYTES, timeout_s=URL_TIMEOUT_S)
        except ObjsearchError as exc:  # the URL named, as a query image that cannot be read (exit 2)
            shown = printable(item if len(item) <= 200 else item[:200] + "...")
            raise ImageReadError(f"cannot read image {shown}: {exc}") from None
        return decode_image(data, item)
    return read_image(item)


class QueryImages:
    """The query images of ``items`` (``expand_query_inputs``), each decoded once, in order. The first is decoded
    at once, so that a bad only image fails before the detector loads.

    Iterating yields ``(item, image)``: ``image`` (H, W, 3) uint8 BGR, or the ``ImageReadError`` of an item that
    cannot be read when there are several (the others go on).

    Raises
    ------
    ImageReadError
        From the constructor or the iteration, when the only item cannot be read.
    """

    def __init__(self, items: list[str | Path]):
        self.items = list(items)
        try:
            self._first = read_query(self.items[0])
        except ImageReadError as exc:
            if len(self.items) == 1:
                raise
            self._first = exc

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for n, item in enumerate(self.items):
            try:
                image = self._first if n == 0 else read_query(item)
            except ImageReadError as exc:
                image = exc
            if isinstance(image, ImageReadError) and len(self.items) == 1:
                raise image
            yield item, image


def search_queries(engine, queries: QueryImages, *, mode: str = "objects", k: int = 16, same_class: bool = False,
                   include_self: bool = False, group_s: float | None = None, pictures: dict | None = None):
    """Search each query image with ``engine`` (an ``objsearch.engine.Engine``), warming the detector up once per
    input shape; an indexed query file leaves its own objects out unless ``include_self``.

    Parameters
    ----------
    mode : ``objects`` (each object's neighbours, grouped into moments within ``group_s`` seconds) or ``image``.
    pictures : where to write each query's result picture, by its position (``objsearch.outputs.picture_paths``).

    Yields
    ------
    (item, result) : ``result`` a ``SearchResult`` or ``ImageSearchResult``, or the ``ImageReadError`` of a query
        that cannot be read (see ``QueryImages``).
    """
    from objsearch.outputs import write_picture

    for n, (item, image) in enumerate(queries):
        if isinstance(image, ImageReadError):
            yield item, image
            continue
        exclude_self = not include_self and isinstance(item, Path)
        if mode == "image":
            result = engine.search_image_file(item, k=k, exclude_self=exclude_self, warmup=True, image=image)
        else:
            result = engine.search_file(item, k=k, same_class=same_class, exclude_self=exclude_self, warmup=True,
                                        image=image, group_s=group_s)
        if pictures and n in pictures:
            write_picture(engine, image, result, pictures[n])
        yield item, result
