"""Where the detector checkpoint comes from."""

from __future__ import annotations

import os
from pathlib import Path

from objsearch.config import PROJECT_ROOT
from objsearch.errors import WeightsNotFoundError

DEFAULT_NAME = "yolov8n.pt"
SHARED_WEIGHTS = PROJECT_ROOT.parent / "shared" / "data" / "weights" / "yolov8n-reconstructed.pt"


def resolve_weights(explicit: str | Path | None = None) -> tuple[str, list[str]]:
    """Pick the detector checkpoint.

    Order: ``explicit`` (``--weights``); the first ``*.pt`` in the project's ``weights/`` folder (``yolov8n*.pt``
    preferred); ``$OBJSEARCH_WEIGHTS``; ``../shared/data/weights/yolov8n-reconstructed.pt`` next to the project;
    else the name ``yolov8n.pt``, which ultralytics downloads for users with a network.

    Returns
    -------
    (weights, looked) : the chosen path or name, and the places looked at (for error messages).

    Raises
    ------
    WeightsNotFoundError
        When an explicit path or ``$OBJSEARCH_WEIGHTS`` names a file that does not exist.
    """
    looked: list[str] = []
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return str(p), [str(p)]
        if p.suffix == ".pt" and p.parent == Path(".") and not p.exists():
            return str(explicit), [f"{explicit} (ultralytics download name)"]
        raise WeightsNotFoundError(f"weights file {p} does not exist")
    folder = PROJECT_ROOT / "weights"
    looked.append(f"{folder}/*.pt")
    found = sorted(folder.glob("*.pt"), key=lambda q: (not q.name.startswith("yolov8n"), q.name))
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
    looked.append(f"{DEFAULT_NAME} (ultralytics download)")
    return DEFAULT_NAME, looked


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
