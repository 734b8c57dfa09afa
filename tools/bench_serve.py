"""Load test of ``objsearch serve``: concurrent clients posting real images, latency, errors and the server's memory.

Usage::

    python tools/bench_serve.py -i coco128.h5 -i /tmp/large.h5 [--clients 8] [--seconds 60]

For each index it starts the real server (a subprocess on a free 127.0.0.1 port), warms it up under the same load
(``--warmup-seconds``), then runs one client
alone (``--solo-seconds``) and ``--clients`` clients at once for ``--seconds``, each posting coco128 images in turn
(``POST /api/search?k=16``, the image as an ``image/jpeg`` body) on its own keep-alive connection. It reports
requests/s, p50/p95 latency, errors (anything but 200), the server's RSS before, at its peak and after, and the ratio
of the p50 latencies to one ``objsearch query`` (its own ``timings_ms.total``, warm, the median over three images)
run in the same session. Without ``-i`` it analyses coco128 into a temporary index first.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import DATA, ROOT, coco128_index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _server(index: Path, port: int, workers: int, extra_args: tuple = ()):
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", "serve", "-i", str(index), "--port", str(port),
                             "--workers", str(workers), *extra_args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"objsearch serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/info")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.5)
        yield proc, time.perf_counter() - t0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _post(conn: http.client.HTTPConnection, body: bytes, k: int) -> int:
    conn.request("POST", f"/api/search?k={k}", body=body, headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    data = response.read()
    if response.status == 200:
        json.loads(data)
    return response.status


def _load(port: int, images: list[bytes], clients: int, seconds: float, k: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        j = i
        while time.perf_counter() < stop:
            body = images[j % len(images)]
            j += clients
            t0 = time.perf_counter()
            try:
                status = _post(conn, body, k)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                status = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = (time.perf_counter() - t0) * 1e3
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    errors.append(str(status))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {"n": len(latencies), "rps": len(latencies) / wall, "p50": statistics.median(latencies) if latencies else
            float("nan"), "p95": q[18], "errors": len(errors), "error_examples": sorted(set(errors))[:3]}


def _single_query_ms(index: Path, paths: list[Path]) -> float:
    totals = []
    for path in paths:
        out = subprocess.run([sys.executable, "-m", "objsearch", "query", str(path), "-i", str(index), "--json"],
                             cwd=ROOT, env=dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT)),
                             capture_output=True, text=True, check=True)
        totals.append(json.loads(out.stdout)["timings_ms"]["total"])
    return statistics.median(totals)


def bench(index: Path, args) -> None:
    paths = sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))
    images = [p.read_bytes() for p in paths]
    port = _free_port()
    with _server(index, port, args.workers) as (proc, ready_s):
        # warm up as loaded (every letterbox shape, the allocator's buffers for concurrent searches), so that "before"
        # is the warm state and before -> after shows growth, not first-use allocations
        _load(port, images, args.clients, args.warmup_seconds, args.k)
        rss_before = _rss_mb(proc.pid)
        series: list[tuple[float, float]] = []  # (seconds since the solo run started, RSS MB)
        sampling = threading.Event()
        t_start = time.perf_counter()

        def sample():
            while not sampling.wait(0.5):
                series.append((time.perf_counter() - t_start, _rss_mb(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        solo = _load(port, images, 1, args.solo_seconds, args.k)
        loaded = _load(port, images, args.clients, args.seconds, args.k)
        sampling.set()
        sampler.join()
        time.sleep(1)
        rss_after = _rss_mb(proc.pid)
    single = _single_query_ms(index, [paths[0], DATA / "samples" / "bus.jpg", paths[len(paths) // 2]])
    peak = max([rss_before] + [r for _, r in series])
    marks = [args.solo_seconds + f * args.seconds for f in (0.25, 0.5, 0.75, 1.0)]
    timeline = ", ".join(f"{min(series, key=lambda x: abs(x[0] - m))[1]:.0f}" for m in marks) if series else "?"
    print(f"{index.name}: server ready in {ready_s:.0f} s; RSS {rss_before:.0f} MB before, {peak:.0f} MB peak, "
          f"{rss_after:.0f} MB after ({rss_after - rss_before:+.0f} MB; at 25/50/75/100% of the {args.clients}-client "
          f"run: {timeline} MB); one `objsearch query` {single:.0f} ms")
    for name, r in (("1 client", solo), (f"{args.clients} clients", loaded)):
        print(f"  {name:>10}: {r['n']} requests, {r['rps']:.2f} req/s, p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, "
              f"errors {r['errors']} {r['error_examples'] or ''}; p50 / one query = {r['p50'] / single:.2f}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path, action="append")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--solo-seconds", type=float, default=15)
    parser.add_argument("--warmup-seconds", type=float, default=15, help="loaded, before RSS 'before' is read")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    parser.add_argument("-k", type=int, default=16)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        indexes = args.index or [stack.enter_context(coco128_index(None))]
        print(f"{os.cpu_count()} CPUs; {args.clients} clients for {args.seconds:.0f} s, 1 client for "
              f"{args.solo_seconds:.0f} s; k={args.k}; server --workers {args.workers}")
        for index in indexes:
            bench(index, args)


if __name__ == "__main__":
    main()
