"""How fast a watched folder makes a new image searchable, and whether a watcher's memory stays flat.

**Latency** (default): a temporary folder of 8 coco128 images and its index; ``objsearch serve --watch`` on it (a real
subprocess, loopback only). Each round copies one more coco128 image into the folder under a new name, then polls
``GET /api/status`` until the index holds it (*indexed*) and searches its bytes with ``POST /api/search`` until a
neighbour is the new file (*searchable*); both are measured from the end of the copy (the file's last write and
close). The baseline, measured in the same run, is one search of the same image (the work a searcher waits for
anyway): the ratio says what watching adds. Target: searchable <= 3 s after the last write.

**Soak** (``--soak-minutes M``): ``objsearch watch`` (a real subprocess) while one file a second arrives for M
minutes; its resident memory (``/proc/PID/status`` VmRSS) every 10 s; the slope over the second half (MB per hour)
and every file indexed exactly once at the end. The issue asks for an hour; ``--soak-minutes 60``.

Usage::

    python tools/bench_watch.py [--rounds 8] [--settle 0.5]
    python tools/bench_watch.py --soak-minutes 60 [--rate 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import DATA, ROOT, free_port, stop_process

COCO = sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _search(base: str, data: bytes) -> dict:
    request = urllib.request.Request(f"{base}/api/search?k=4", data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def _env() -> dict:
    return dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT))


@contextlib.contextmanager
def _process(args: list[str], log: Path):
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "objsearch", *args], cwd=ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)


def _make_index(root: Path, n: int) -> tuple[Path, Path]:
    from objsearch.analysis import analyze
    from objsearch.config import load_config

    folder = root / "photos"
    folder.mkdir()
    for p in COCO[:n]:
        shutil.copy(p, folder / p.name)
    index = root / "photos.h5"
    analyze(folder, index, load_config(None))
    return folder, index


def latency(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, index = _make_index(root, 8)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = root / "serve.log"
        with _process(["serve", "-i", str(index), "--port", str(port), "--watch", "--settle", str(args.settle)],
                      log) as proc:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                with contextlib.suppress(OSError):
                    _get(f"{base}/api/status")
                    break
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
            rows = []
            for r, source in enumerate(COCO[8:8 + args.rounds]):
                data = source.read_bytes()
                t0 = time.perf_counter()
                _search(base, data)  # the baseline: one search of this image (not in the index yet)
                search_s = time.perf_counter() - t0
                before = _get(f"{base}/api/status")["images"]
                name = f"new-{r:03d}.jpg"
                with open(folder / name, "wb") as out:
                    out.write(data)
                written = time.perf_counter()  # the last write and the close
                while _get(f"{base}/api/status")["images"] <= before:
                    time.sleep(0.02)
                indexed = time.perf_counter() - written
                while True:
                    found = _search(base, data)
                    paths = {nb["path"] for obj in found["objects"] for nb in obj["neighbors"]}
                    if name in paths or not found["objects"]:
                        break
                searchable = time.perf_counter() - written
                rows.append((name, indexed, searchable, search_s, bool(found["objects"])))
                print(f"{name}: indexed {indexed:.2f} s, searchable {searchable:.2f} s after the last write "
                      f"(one search {search_s:.2f} s){'' if found['objects'] else ' (no objects: indexed only)'}")
        ok = [r for r in rows if r[4]]
        med_i = statistics.median(r[1] for r in rows)
        med_s = statistics.median(r[2] for r in ok)
        med_q = statistics.median(r[3] for r in ok)
        print(f"median over {len(rows)} images: indexed {med_i:.2f} s, searchable {med_s:.2f} s after the last "
              f"write (target <= 3 s); one search {med_q:.2f} s; searchable / one search = {med_s / med_q:.1f}; "
              f"worst searchable {max(r[2] for r in ok):.2f} s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(args) -> None:
    from objsearch.catalog import Catalog

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, index = _make_index(root, 4)
        log = root / "watch.log"
        samples = []
        n_files = 0
        with _process(["watch", "-i", str(index), "--settle", "0.5"], log) as proc:
            deadline = time.monotonic() + 180
            while "watching" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
            t0 = time.monotonic()
            end = t0 + 60 * args.soak_minutes
            next_sample = t0
            while time.monotonic() < end:
                source = COCO[n_files % len(COCO)]
                shutil.copy(source, folder / f"soak-{n_files:05d}.jpg")
                n_files += 1
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - t0, _rss_mb(proc.pid)))
                    print(f"{(now - t0) / 60:5.1f} min: {n_files} files, RSS {samples[-1][1]:.0f} MB", flush=True)
                    next_sample += 10
                time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - now)))
            time.sleep(5)  # the last files settle
            samples.append((time.monotonic() - t0, _rss_mb(proc.pid)))
        with Catalog(index) as c:
            paths = [p for p in c.media_path if p.startswith("soak-")]
        half = [s for s in samples if s[0] >= samples[-1][0] / 2]
        import numpy as np

        slope = np.polyfit([s[0] / 3600 for s in half], [s[1] for s in half], 1)[0] if len(half) > 2 else float("nan")
        print(f"soak {args.soak_minutes} min at {args.rate} file/s: {n_files} files written, {len(paths)} indexed "
              f"({len(set(paths))} distinct paths); RSS first {samples[0][1]:.0f} MB, after 1 min "
              f"{next((s[1] for s in samples if s[0] >= 60), samples[-1][1]):.0f} MB, last {samples[-1][1]:.0f} MB; "
              f"slope over the second half {slope:+.1f} MB/hour")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=1.0, help="files per second during the soak")
    args = parser.parse_args()
    soak(args) if args.soak_minutes else latency(args)


if __name__ == "__main__":
    main()
