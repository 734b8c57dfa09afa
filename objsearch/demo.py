"""``objsearch demo``'s inputs: the sample folder (coco128 beside the project, else ultralytics' download), its query
image (bus.jpg), and whether an index made earlier is finished and can be reused."""

from __future__ import annotations

import contextlib
from pathlib import Path

from objsearch.config import PROJECT_ROOT
from objsearch.errors import EmptyFolderError, ObjsearchError

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def demo_folder() -> Path:
    """``../shared/data/coco128`` next to the project, else ultralytics' coco128 (downloaded with a network).

    Raises
    ------
    EmptyFolderError
        When neither is there (no network, or the download failed).
    """
    local = SHARED_DATA / "coco128"
    if local.is_dir():
        return local
    try:
        from ultralytics.data.utils import check_det_dataset

        data = check_det_dataset("coco128.yaml")
        return Path(data["path"])
    except Exception as exc:  # no network, or ultralytics' download failed
        raise EmptyFolderError(f"no sample folder: {local} is missing and coco128 could not be downloaded ({exc})") from None


def demo_query_image(folder: Path) -> Path:
    """The demo's query: ``../shared/data/samples/bus.jpg``, else the first image of ``folder``."""
    from objsearch.media import list_images

    bus = SHARED_DATA / "samples" / "bus.jpg"
    return bus if bus.is_file() else list_images(folder)[0]


def is_finished_index(index: Path) -> bool:
    """Whether ``index`` is an index whose analysis finished (a damaged or unfinished one is made again)."""
    from objsearch.catalog import Catalog

    if not index.exists():
        return False
    with contextlib.suppress(ObjsearchError), Catalog(index) as existing:
        return existing.state == "ready"
    return False
