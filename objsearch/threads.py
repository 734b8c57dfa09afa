"""How many CPU threads the heavy libraries (torch, OpenCV, faiss and their OpenMP runtime) use.

On a busy 2-core machine, torch's default of one thread per core made ``analyze`` of coco128 take 135 s instead of
25 s at one thread: libgomp's workers spin-wait for each other while another process holds a core. objsearch runs
``cpu_count - 1`` threads (at least 1), as ultralytics does for its own predictions, and asks OpenMP to sleep rather
than spin when idle (``OMP_WAIT_POLICY=PASSIVE``).

Nothing heavy is imported when this module is: ``set_threads`` imports torch itself (after setting the environment
that OpenMP reads when it loads).
"""

from __future__ import annotations

import os
import sys

ENV = "OBJSEARCH_THREADS"


def default_threads() -> int:
    """``cpu_count - 1``, at least 1 (one core left for capture, painting and everything else)."""
    return max(1, (os.cpu_count() or 1) - 1)


def resolve_threads(threads: int | None = None) -> int:
    """``threads`` when given, else ``$OBJSEARCH_THREADS``, else ``default_threads()``.

    Raises
    ------
    ValueError
        When the count (given or from the environment) is not an integer >= 1.
    """
    source = "threads"
    if threads is None:
        value = os.environ.get(ENV, "").strip()
        if not value:
            return default_threads()
        source = f"${ENV}"
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{source} must be an integer >= 1, got {value!r}") from None
    if int(threads) < 1:
        raise ValueError(f"{source} must be an integer >= 1, got {threads}")
    return int(threads)


def set_threads(threads: int | None = None, *, load: bool = True) -> int:
    """Use ``threads`` CPU threads (``resolve_threads``) for torch, OpenCV and faiss; call before any work.

    Sets ``OMP_NUM_THREADS`` and ``OPENCV_FOR_THREADS_NUM`` (read by torch, faiss and OpenCV when they load) and,
    unless already set, ``OMP_WAIT_POLICY=PASSIVE`` (read once, when the OpenMP runtime loads, so this must run
    before torch is imported), then calls ``torch.set_num_threads`` and ``cv2.setNumThreads`` (importing them when
    ``load``; torch caps the environment variable at the number of cores, ``set_num_threads`` does not) and
    ``faiss.omp_set_num_threads`` when faiss is imported. Without ``load`` (a command that needs no torch) only the
    libraries already imported are set. Returns the count.

    Importing ultralytics later sets OpenCV to ``setNumThreads(0)`` (no worker threads) for its own reasons.
    """
    n = resolve_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["OPENCV_FOR_THREADS_NUM"] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if load:
        import cv2
        import torch
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    return n


def thread_counts() -> dict:
    """What the libraries use now (imports torch and cv2): ``{"torch": int, "cv2": int, "omp_wait_policy": str}``."""
    import cv2
    import torch

    return {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
