"""First paint of the index's map in a real browser, once its coordinates exist (issue 22: <= 3 s at 376k points).

Lays out the index's object map first when its sidecar is missing (``python -m objsearch.layout_map``, timed and
printed), starts ``objsearch serve`` on the index (loopback), opens the page in Debian's chromium (Playwright,
headless), clicks *Map* and measures, in the page: from the click to the first frame with every point painted
(``body[data-map-paint-ms]`` is the page's own measure, from the request of the points to that frame). The baseline
in the same run: the same page fetching the same points without drawing them (``fetch`` + ``arrayBuffer``), so the
ratio is what parsing, laying out on screen and painting cost. Three rounds (a reload each).

With ``--searches N`` it first times N searches of bus.jpg with no layout running and N while a new layout of the
map runs (the sidecar moved aside and laid out again): the layout must not hold searches up.

Usage::

    python tools/bench_map_paint.py -i /tmp/large.h5 [--searches 10]   # make_large_index.py's 376k-object index
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import ROOT, free_port, stop_process

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps"]


def _search_s(base: str, data: bytes) -> float:
    request = urllib.request.Request(f"{base}/api/search?k=8", data=data, headers={"Content-Type": "image/jpeg"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as r:
        r.read()
    return time.perf_counter() - t0


def searches_during_layout(base: str, index: Path, n: int) -> None:
    """Search bus.jpg ``n`` times with no layout running, then ``n`` times while a new layout of the objects runs
    (its sidecar moved aside, then the new one kept); prints both medians and their ratio."""
    from _common import DATA
    from objsearch.layout_map import sidecar_path

    data = (DATA / "samples" / "bus.jpg").read_bytes()
    _search_s(base, data)  # warm
    idle = [_search_s(base, data) for _ in range(n)]
    sidecar = sidecar_path(index, "objects", 32)
    aside = sidecar.with_name(sidecar.name + ".aside")
    sidecar.rename(aside)
    try:
        urllib.request.urlopen(f"{base}/api/map?points=false&kind=objects", timeout=60).read()  # starts it
        busy = []
        while len(busy) < n:
            with urllib.request.urlopen(f"{base}/api/map?points=false&kind=objects", timeout=60) as r:
                status = json.loads(r.read())
            if status["state"] != "computing":
                break
            busy.append(_search_s(base, data))
        while status["state"] == "computing":
            time.sleep(2)
            with urllib.request.urlopen(f"{base}/api/map?points=false&kind=objects", timeout=60) as r:
                status = json.loads(r.read())
    finally:
        if not sidecar.exists():
            aside.rename(sidecar)
        else:
            aside.unlink(missing_ok=True)
    m_idle, m_busy = statistics.median(idle), statistics.median(busy) if busy else float("nan")
    print(f"search of bus.jpg: {m_idle * 1000:.0f} ms with no layout running, {m_busy * 1000:.0f} ms while the "
          f"layout runs in its child process ({len(busy)} searches); ratio {m_busy / m_idle:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--searches", type=int, default=0, help="also time this many searches with and without "
                                                                "a layout running (lays the map out again)")
    args = parser.parse_args()

    from objsearch.catalog import Catalog
    from objsearch.layout_map import sidecar_path

    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT))
    with Catalog(args.index) as c:
        n_objects = len(c.object_id)
    if not sidecar_path(args.index, "objects", 32).is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "objsearch.layout_map", str(args.index), "--nice", "0"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        print(f"layout of {n_objects} objects (openTSNE on landmarks, the rest placed): "
              f"{time.perf_counter() - t0:.0f} s")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", "serve", "-i", str(args.index), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"objsearch serve exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/api/map?points=false", timeout=60) as r:
                    status = json.loads(r.read())
                if status["state"] == "ready":
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer in 600 s")
            time.sleep(1)
        if args.searches:
            searches_during_layout(base, args.index, args.searches)
        from playwright.sync_api import sync_playwright

        paint, click, fetch_only = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(600_000)
            for _ in range(args.rounds):
                page.goto(base + "/")
                page.wait_for_selector("body[data-ready='1']")
                fetch_ms = page.evaluate("""async () => { const t0 = performance.now();
                    const r = await fetch('/api/map/points?kind=objects'); await r.arrayBuffer();
                    return performance.now() - t0; }""")
                t0 = page.evaluate("() => performance.now()")
                page.click("#map-open")
                page.wait_for_selector("body[data-map-paint-ms]")
                t1 = page.evaluate("() => performance.now()")
                n = int(page.get_attribute("body", "data-map-points"))
                paint.append(float(page.get_attribute("body", "data-map-paint-ms")))
                click.append(t1 - t0)
                fetch_only.append(fetch_ms)
                print(f"{n} points: click -> painted {click[-1]:.0f} ms (the page's own measure, request -> "
                      f"painted frame: {paint[-1]:.0f} ms); fetching the points alone {fetch_ms:.0f} ms")
            browser.close()
        m_click, m_paint, m_fetch = (statistics.median(v) for v in (click, paint, fetch_only))
        print(f"median of {args.rounds}: first paint {m_click / 1000:.2f} s after the click (target <= 3 s); "
              f"request -> painted {m_paint / 1000:.2f} s; the fetch alone {m_fetch / 1000:.2f} s; "
              f"paint / fetch = {m_paint / m_fetch:.2f}")
    finally:
        stop_process(proc, 30)


if __name__ == "__main__":
    main()
