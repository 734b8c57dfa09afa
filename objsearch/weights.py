"""Where the detector checkpoint comes from."""

from __future__ import annotations

import os
from pathlib import Path

from objsearch.config import PROJECT_ROOT
from objsearch.errors import WeightsNotFoundError

DEFAULT_NAME = "yolo11n.pt"  # gives better neighbours than yolov8n (docs/quality.md: Retrieval quality as a user sees it)
SHARED_WEIGHTS = PROJECT_ROOT.parent / "shared" / "data" / "weights" / "yolo11n-reconstructed.pt"

# The detection checkpoints among ultralytics' release assets (``ultralytics.utils.downloads.GITHUB_ASSETS_NAMES``,
# a test checks they are there): only these names are handed to its downloader. Spelled out here because importing
# that module already resolves hosts on the network, and a local path must not touch the network at all.
RELEASE_NAMES = frozenset(
    [f"yolov8{k}.pt" for k in "nsmlx"]
    + [f"yolo11{k}.pt" for k in "nsmlx"]
    + [f"yolo12{k}.pt" for k in "nsmlx"]
    + [f"yolov5{k}{r}u.pt" for k in "nsmlx" for r in ("", "6")]
    + [f"yolov3{k}u.pt" for k in ("", "-spp", "-tiny")]
    + [f"yolov9{k}.pt" for k in "tsmce"]
)


def is_offline() -> bool:
    """True when ``$YOLO_OFFLINE`` is set (as ultralytics reads it) or github.com does not resolve within 2 s."""
    if os.environ.get("YOLO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    import socket
    import threading

    answer: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo("github.com", 443)
            answer.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(2.0)
    return not answer


def _download_name(name: str, looked: list[str]) -> tuple[str, list[str]]:
    """``name`` for ultralytics to download, when it is one of its release assets and we are online."""
    if name not in RELEASE_NAMES:
        raise WeightsNotFoundError(f"weights file {name} does not exist (looked in: {'; '.join(looked)}; it is not "
                                   f"one of ultralytics' release names such as {DEFAULT_NAME})")
    if is_offline():
        raise WeightsNotFoundError(f"weights file {name} does not exist (looked in: {'; '.join(looked)}) and cannot "
                                   f"be downloaded offline")
    return name, [*looked, f"{name} (ultralytics download)"]


def resolve_weights(explicit: str | Path | None = None) -> tuple[str, list[str]]:
    """Pick the detector checkpoint.

    Order: ``explicit`` (``--weights``); the first ``*.pt`` in the project's ``weights/`` folder (``yolo11n*.pt``,
    then ``yolov8n*.pt`` preferred); ``$OBJSEARCH_WEIGHTS``; ``../shared/data/weights/yolo11n-reconstructed.pt`` next to
    the project; else the name ``yolo11n.pt``, which ultralytics downloads for users with a network.

    Nothing touches the network unless a name that is not an existing file is one of ultralytics' release names
    (``RELEASE_NAMES``, such as ``yolo11n.pt``) and we are online (``is_offline``): only then is it handed to
    ultralytics' downloader.

    Returns
    -------
    (weights, looked) : the chosen path or name, and the places looked at (for error messages).

    Raises
    ------
    WeightsNotFoundError
        When an explicit path or ``$OBJSEARCH_WEIGHTS`` names a file that does not exist (and, for a bare name,
        is not a release name that can be downloaded now), or when nothing was found offline; the message lists
        where it looked.
    """
    looked: list[str] = []
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return str(p), [str(p)]
        if p.parent == Path(".") and not p.exists():
            return _download_name(p.name, [str(p.absolute())])
        raise WeightsNotFoundError(f"weights file {p} does not exist")
    folder = PROJECT_ROOT / "weights"
    looked.append(f"{folder}/*.pt")
    found = sorted(folder.glob("*.pt"), key=lambda q: (not q.name.startswith("yolo11n"),
                                                       not q.name.startswith("yolov8n"), q.name))
    if found:
        return str(found[0]), looked
    env = os.environ.get("OBJSEARCH_WEIGHTS")
    looked.append("$OBJSEARCH_WEIGHTS")
    if env:
        if not Path(env).expanduser().is_file():
            raise WeightsNotFoundError(f"$OBJSEARCH_WEIGHTS names {env}, which does not exist")
        return str(Path(env).expanduser()), looked
    looked.append(str(SHARED_WEIGHTS))
    if SHARED_WEIGHTS.is_file():
        return str(SHARED_WEIGHTS), looked
    return _download_name(DEFAULT_NAME, looked)


def trusted_weights(configured: str | Path | None = None) -> list[Path]:
    """Checkpoints objsearch may load for an index without being told (the index's sha256 picks among them; an index
    never names a file to load): the configured weights, ``$OBJSEARCH_WEIGHTS``, the project's ``weights/*.pt`` and
    the ``*.pt`` files of ``../shared/data/weights``. Only existing files, each once, in that order."""
    found: list[Path] = []
    if configured:
        found.append(Path(configured).expanduser())
    env = os.environ.get("OBJSEARCH_WEIGHTS")
    if env:
        found.append(Path(env).expanduser())
    found += sorted((PROJECT_ROOT / "weights").glob("*.pt"))
    found += sorted(SHARED_WEIGHTS.parent.glob("*.pt"))
    out: list[Path] = []
    for p in found:
        if p.is_file() and p.resolve() not in {q.resolve() for q in out}:
            out.append(p)
    return out
