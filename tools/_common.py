"""What the benchmark tools share: where the data is, and a coco128 index to run on when none is given."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@contextlib.contextmanager
def coco128_index(index: Path | None, device: str = "cpu"):
    """Yield ``index``; when it is None, a temporary index of ``../shared/data/coco128`` analysed now with the
    default configuration (and deleted afterwards)."""
    if index is not None:
        yield Path(index)
        return
    from objsearch.analysis import analyze
    from objsearch.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coco128.h5"
        summary = analyze(DATA / "coco128", path, load_config(None, device=device))
        print(f"built {path}: {summary.n_images} images, {summary.n_objects} objects in {summary.seconds:.1f} s")
        yield path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a tool starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout_s: float = 20.0) -> None:
    """Stop a subprocess the tool started, by its pid: SIGTERM, then SIGKILL after ``timeout_s``."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
