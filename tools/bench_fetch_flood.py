"""Do slow URLs hold up uploads? Upload-search latency of ``objsearch serve`` with 40 dripping URL searches in flight,
against the same server idle.

Usage::

    python tools/bench_fetch_flood.py [-i coco128.h5] [--urls 40] [--uploads 40] [--interval 1.0]

It starts the real server (a subprocess on a free 127.0.0.1 port, ``--allow-private-urls``) and a server that drips
one header line per ``--interval`` seconds (``tools/drip_server.py``: issue 18's hostile server). Then, in one run:
``--uploads`` upload searches one after another (coco128 images as ``image/jpeg`` bodies, k=16) on an idle server;
the same with ``--urls`` clients each keeping one dripping URL search in flight (posted again as soon as the fetch
deadline ends it); and idle again. It prints p50/p95 of each phase, what the URL searches were answered (400 at the
deadline, 503 when the URL pool and its queue were full) and the ratio of the flood's upload p95 to the idle p95s'
mean (issue 18's target: at most 1.5). Without ``-i`` it analyses coco128 into a temporary index first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import statistics
import threading
import time
from pathlib import Path

from _common import DATA, coco128_index
from bench_serve import _free_port, _server
from drip_server import DripServer


def _uploads(port: int, images: list[bytes], n: int) -> list[float]:
    """Milliseconds of ``n`` upload searches, one after another on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/api/search?k=16", body=images[i % len(images)],
                         headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise SystemExit(f"an upload search answered {response.status}: {data[:300]!r}")
            json.loads(data)
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        conn.close()
    return out


def _stats(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), statistics.quantiles(ms, n=20)[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path)
    parser.add_argument("--urls", type=int, default=40, help="dripping URL searches kept in flight")
    parser.add_argument("--uploads", type=int, default=40, help="upload searches per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds per dripped header line")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    args = parser.parse_args()
    paths = sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))
    images = [p.read_bytes() for p in paths]
    with contextlib.ExitStack() as stack:
        index = stack.enter_context(coco128_index(args.index))
        drip = stack.enter_context(DripServer(interval_s=args.interval))
        port = _free_port()
        proc, ready_s = stack.enter_context(_server(index, port, args.workers, ("--allow-private-urls",)))
        print(f"{os.cpu_count()} CPUs; server ready in {ready_s:.0f} s; {args.urls} dripping URLs ({drip.url}, one "
              f"header line per {args.interval:g} s); {args.uploads} uploads per phase, k=16")
        _uploads(port, images, 16)  # warm: every letterbox shape of the first images
        idle1 = _uploads(port, images, args.uploads)
        answers: collections.Counter = collections.Counter()
        stop = threading.Event()

        def keep_one_in_flight(i: int) -> None:
            n = 0
            while not stop.is_set():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                try:
                    conn.request("POST", "/api/search?k=2", body=json.dumps({"url": f"{drip.url}/headers-{i}-{n}.jpg"}),
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    answers[response.status] += 1
                except (OSError, http.client.HTTPException) as exc:
                    answers[type(exc).__name__] += 1
                finally:
                    conn.close()
                n += 1

        threads = [threading.Thread(target=keep_one_in_flight, args=(i,), daemon=True) for i in range(args.urls)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        while len(drip.requests) < min(args.urls, 16) and time.perf_counter() - t0 < 30:
            time.sleep(0.05)
        flood = _uploads(port, images, args.uploads)
        in_flight_fetches = len(drip.requests)
        stop.set()
        for t in threads:
            t.join(120)
        idle2 = _uploads(port, images, args.uploads)
    rows = [("idle", idle1), (f"{args.urls} slow URLs", flood), ("idle again", idle2)]
    for name, ms in rows:
        p50, p95 = _stats(ms)
        print(f"  {name:>16}: upload search p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    print(f"  the URL searches: {dict(answers)} (fetches that reached the dripping server: {in_flight_fetches})")
    idle_p95 = (_stats(idle1)[1] + _stats(idle2)[1]) / 2
    print(f"upload p95 with {args.urls} slow URLs in flight / idle p95 = {_stats(flood)[1] / idle_p95:.2f} "
          f"(target <= 1.5)")


if __name__ == "__main__":
    main()
