"""The page in a real browser: Debian's chromium, headless, driven by Playwright, against a real `objsearch serve`
subprocess on the coco128 index (one server and one browser for the module).

Skipped, with the reason, only where Playwright or /usr/bin/chromium is missing (`.ci/run` installs chromium with
apt when it can). With ``OBJSEARCH_WEB_SCREENSHOT=PATH`` the upload test also writes docs/web.md's picture to PATH.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from testdata import BUS, ROOT

CHROMIUM = Path(os.environ.get("OBJSEARCH_CHROMIUM", "/usr/bin/chromium"))
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'objsearch[web]')")
if not CHROMIUM.is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it where apt works)",
                allow_module_level=True)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
        "--metrics-recording-only", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def _serving(index: Path, log: Path, extra=()):
    """`objsearch serve` on ``index`` at a free 127.0.0.1 port (private URLs allowed for the local image server;
    ``extra``: more arguments); yields its base URL; stopped by its pid."""
    port = _free_port()
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(ROOT))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "objsearch", "serve", "-i", str(index), "--port",
                                 str(port), "--allow-private-urls", *extra], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"objsearch serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                _get_json(f"{base}/api/info")
                break
            if time.monotonic() > deadline:
                pytest.fail(f"objsearch serve did not answer in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
        assert proc.poll() is None, f"the server died: {log.read_text()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(coco_index, tmp_path_factory):
    """The server on the coco128 index."""
    with _serving(coco_index, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def _open_page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["camera"], origin=server)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server + "/")
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_function("() => document.querySelectorAll('#dims option').length > 0")
    return context, pg, errors


@pytest.fixture
def page(browser, server):
    context, pg, errors = _open_page(browser, server)
    yield pg
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def _wait_for_query(pg, name: str):
    """Wait until the status line reports a finished search of a query whose name starts with ``name``; returns the
    status text."""
    pg.wait_for_function("(name) => { const s = document.getElementById('status').textContent;"
                         " return s.startsWith(name)"
                         " && /: \\d+ (objects?|similar images) in \\d+ ms/.test(s); }", arg=name)
    return pg.text_content("#status")


def _rows(pg) -> list[dict]:
    return pg.eval_on_selector_all(
        "#results .row", "rows => rows.map(r => ({label: r.dataset.label,"
        " hits: [...r.querySelectorAll('.hit')].map(h => h.dataset.label)}))")


def test_upload_bus_shows_a_labeled_row_per_object(page, server):
    page.set_input_files("#file", str(BUS))
    status = _wait_for_query(page, "bus.jpg")
    api = _get_json_post(f"{server}/api/search?k=8", BUS.read_bytes())
    rows = _rows(page)
    assert len(rows) == len(api["objects"]) >= 4, status
    assert [r["label"] for r in rows] == [o["label"] for o in api["objects"]]
    bus_rows = [r for r in rows if r["label"] == "bus"]
    assert bus_rows and all(r["hits"][:3] == ["bus"] * 3 for r in bus_rows), rows
    page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")
    page.hover("#results .row .hit")
    details = page.text_content("#details")
    first = api["objects"][0]["neighbors"][0]
    assert f"path {first['path']}" in details and "distance" in details and "confidence" in details
    # a neighbour's caption writes its distance as everywhere else (bus d=0.50); "bus 0.93" is a confidence
    captions = page.eval_on_selector_all("#results .row .hit > span:not(.time)", "s => s.map(x => x.textContent)")
    want = [f"{nb['label']} d={nb['distance']:.2f}" for o in api["objects"] for nb in o["neighbors"]]
    assert captions == want, (captions[:4], want[:4])
    shot = os.environ.get("OBJSEARCH_WEB_SCREENSHOT")
    if shot:  # docs/web.md's picture: this page, this query; a 128-colour PNG keeps it small
        import io

        from PIL import Image

        page.mouse.move(0, 0)
        with Image.open(io.BytesIO(page.screenshot(full_page=False))) as im:
            im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(shot, optimize=True)


def _get_json_post(url: str, data: bytes) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def test_click_a_result_crop_and_a_corrupt_upload(page, server, tmp_path):
    page.set_input_files("#file", str(BUS))
    _wait_for_query(page, "bus.jpg")
    hit = page.locator("#results .row .hit").first
    image_id = hit.get_attribute("data-image-id")
    path = hit.get_attribute("title").split("\n")[0].removeprefix("path: ")
    hit.click()
    _wait_for_query(page, path)
    clicked = _get_json_post_id(server, image_id)
    assert [r["label"] for r in _rows(page)] == [o["label"] for o in clicked["objects"]]
    size = page.eval_on_selector("#query", "c => [c.width, c.height]")
    assert size == [clicked["width"], clicked["height"]]
    # crop: drag over the left half of the image, then search the region
    box = page.locator("#query").bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 5, steps=5)
    page.mouse.up()
    page.click("#crop-search")
    status = _wait_for_query(page, "region")
    cropped = page.eval_on_selector("#query", "c => [c.width, c.height]")
    assert cropped[0] < size[0] and cropped[0] >= size[0] // 2 - 20, status
    # a corrupt upload: a message, and the page goes on working
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "cannot read image broken.jpg" in page.text_content("#error")
    page.set_input_files("#file", str(BUS))
    _wait_for_query(page, "bus.jpg")
    assert page.is_hidden("#error") and _rows(page)


def _get_json_post_id(server: str, image_id: str) -> dict:
    req = urllib.request.Request(f"{server}/api/search?k=8&media_id={image_id}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def test_webcam_capture_with_the_fake_device(page):
    page.click("#webcam")
    page.wait_for_function("() => document.getElementById('video').videoWidth > 0")
    page.click("#capture")
    status = _wait_for_query(page, "webcam")
    assert "objects" in status or "object " in status
    assert page.eval_on_selector("#query", "c => c.width") == page.eval_on_selector("#video", "v => v.videoWidth")


@pytest.fixture
def image_url(tmp_path):
    (tmp_path / "bus.jpg").write_bytes(BUS.read_bytes())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/bus.jpg"
    httpd.shutdown()
    httpd.server_close()


def test_a_pasted_url_on_a_phone_width_screen(browser, server, image_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(server + "/")
        pg.wait_for_selector("body[data-ready='1']")
        pg.fill("#url", image_url)
        pg.click("#url-form button")
        _wait_for_query(pg, image_url)
        rows = _rows(pg)
        assert len(rows) >= 4 and any(r["label"] == "bus" for r in rows)
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert pg.is_visible(".phone-only")
    finally:
        context.close()


def test_drop_an_image_file_on_the_page(page):
    import base64

    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
        document.getElementById("results").dispatchEvent(
            new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""", base64.b64encode(BUS.read_bytes()).decode())
    _wait_for_query(page, "dropped.jpg")
    assert any(r["label"] == "bus" for r in _rows(page))


def test_whole_image_mode_shows_one_row_of_similar_images(page, server):
    """Mode "whole image": one row of the API's similar images (pictures of the whole indexed images); a click makes
    one the query; back to objects, one row per object again."""
    page.set_input_files("#file", str(BUS))
    _wait_for_query(page, "bus.jpg")
    page.select_option("#mode", "image")
    page.wait_for_function("() => document.querySelector('#results .row')?.dataset.label === 'similar images'")
    api = _get_json_post(f"{server}/api/search?k=8&mode=image", BUS.read_bytes())
    ids = page.eval_on_selector_all("#results .row .hit", "hits => hits.map(h => Number(h.dataset.imageId))")
    assert ids == [n["image_id"] for n in api["neighbors"]] and len(ids) == 8
    page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")
    path = api["neighbors"][0]["path"]
    page.locator("#results .row .hit").first.click()
    _wait_for_query(page, path)
    page.select_option("#mode", "objects")
    page.wait_for_function("() => document.querySelector('#results .row')?.dataset.label !== 'similar images'")
    assert len(_rows(page)) >= 1


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    """The server on an index of walking.mp4 (a frame every 2 s) and one coco128 image, at 320 px."""
    from testdata import DATA, WEIGHTS, coco_images, run_cli

    folder = tmp_path_factory.mktemp("clips") / "media"
    folder.mkdir()
    (folder / "walking.mp4").write_bytes((DATA / "video" / "walking.mp4").read_bytes())
    first = coco_images(1)[0]
    (folder / first.name).write_bytes(first.read_bytes())
    index = folder.parent / "clips.h5"
    done = run_cli("analyze", folder, "-o", index, "--weights", WEIGHTS, "--imgsz", "320", "--video-fps", "0.5")
    assert done.returncode == 0, done.stderr
    with _serving(index, folder.parent / "serve.log") as base:
        yield base


def test_video_neighbours_show_their_time_and_moment_and_a_click_searches_that_frame(browser, video_server):
    """A person's row holds frames of the walking clip: each tile shows its time, its tooltip the time and the
    moment; a click makes that frame (decoded from the video) the query."""
    from testdata import COCO128_IMAGES

    context, pg, errors = _open_page(browser, video_server)
    try:
        pg.set_input_files("#file", str(COCO128_IMAGES / "000000000036.jpg"))  # a person
        _wait_for_query(pg, "000000000036.jpg")
        frame = pg.locator("#results .hit:has(span.time)").first
        assert frame.locator("span.time").text_content().startswith("@ 00:00:")
        title = frame.get_attribute("title")
        assert "path: walking.mp4" in title and "time: 00:00:" in title and "moment: 00:00:" in title
        image_id = frame.get_attribute("data-image-id")
        frame.click()
        _wait_for_query(pg, "walking.mp4 @ 00:00:")
        size = pg.eval_on_selector("#query", "c => [c.width, c.height]")
        clicked = _get_json_post_id(video_server, image_id)
        assert size == [clicked["width"], clicked["height"]] and "frame" in clicked
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"
