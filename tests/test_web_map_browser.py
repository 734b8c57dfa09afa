"""The map of the index and the watched folder in a real browser (Debian's chromium through Playwright, as
tests/test_web_browser.py): the map is laid out in the background with its progress, painted on a canvas, a hover
shows the point's thumbnail, a click searches that object, a lasso lists what it holds; ``objsearch serve --watch``
shows new images on the open page without a reload. Skipped, with the reason, where chromium or Playwright is
missing."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest

from test_web_browser import _open_page, _serving, _wait_for_query, browser  # noqa: F401 (browser: a fixture)
from testdata import coco_images, copy_images


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def watched_server(tmp_path_factory, cfg, detector):
    """`objsearch serve --watch` on an index of 3 coco128 images; yields (base URL, folder)."""
    from objsearch.analysis import analyze

    root = tmp_path_factory.mktemp("watched")
    folder = copy_images(coco_images(3), root / "photos")
    index = root / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    with _serving(index, root / "serve.log", extra=["--watch", "--settle", "0.3"]) as base:
        yield base, folder


def test_the_map_paints_hovers_searches_and_lassos(browser, watched_server):
    base, folder = watched_server
    context, pg, errors = _open_page(browser, base)
    try:
        pg.click("#map-open")
        pg.wait_for_selector("body[data-map-points]", timeout=300_000)  # laid out in the background
        n = int(pg.get_attribute("body", "data-map-points"))
        api = _get_json(f"{base}/api/map?kind=objects")
        assert n == api["n_points"] == len(api["points"]["id"]) > 0
        # the canvas holds coloured pixels where the points are
        coloured = pg.evaluate("""() => { const c = document.getElementById('map');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let k = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] !== 251 || d[i + 1] !== 251 || d[i + 2] !== 253) k++;
            return k; }""")
        assert coloured >= n
        # hover: the point's thumbnail
        x, y = pg.evaluate("() => objsearchMap.pagePoint(0)")
        pg.mouse.move(x, y)
        pg.wait_for_selector("#map-tip:not([hidden])")
        src = pg.get_attribute("#map-tip-img", "src")
        assert src.startswith("/api/thumbnail/")
        pg.wait_for_function("() => { const i = document.getElementById('map-tip-img');"
                             " return i.complete && i.naturalWidth > 0; }")
        hovered = int(src.rsplit("/", 1)[1])
        assert hovered in api["points"]["id"]
        # click: that object's image is the query, the object's row stands out
        pg.mouse.click(x, y)
        item = _get_json(f"{base}/api/map/item/{hovered}?kind=objects")
        _wait_for_query(pg, item["path"])
        assert pg.locator("#results .row.focus").count() == 1
        # lasso: a polygon around the whole canvas lists every point
        box = pg.locator("#map").bounding_box()
        pg.mouse.move(box["x"] + 2, box["y"] + 2)
        pg.mouse.down()
        for px, py in [(box["width"] - 2, 2), (box["width"] - 2, box["height"] - 2), (2, box["height"] - 2),
                       (2, 4)]:
            pg.mouse.move(box["x"] + px, box["y"] + py, steps=4)
        pg.mouse.up()
        pg.wait_for_selector("#lasso:not([hidden])")
        assert int(pg.get_attribute("#lasso", "data-count")) == n
        assert pg.locator("#lasso-items .hit").count() == min(n, 60)
        assert f"{n} objects in the lasso" in pg.text_content("#lasso-summary")
        # the images map
        pg.select_option("#map-kind", "images")
        pg.wait_for_function("() => document.body.dataset.mapPoints === '3' || document.body.dataset.mapPoints > 3",
                             timeout=300_000)
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"


def test_serve_watch_shows_new_images_without_a_reload(browser, watched_server):
    base, folder = watched_server
    context, pg, errors = _open_page(browser, base)
    try:
        before = _get_json(f"{base}/api/status")
        assert before["watch"] is not None
        pg.wait_for_selector(f"body[data-images='{before['images']}']")
        n_examples = pg.locator("#examples button").count()
        added = coco_images(8)[3 + before["images"] - 3:][:2]
        t0 = time.monotonic()
        for p in added:
            shutil.copy(p, folder / p.name)
        want = before["images"] + len(added)
        pg.wait_for_selector(f"body[data-images='{want}']", timeout=120_000)
        assert f"{want} images" in pg.text_content("#info") and "watching" in pg.text_content("#info")
        pg.wait_for_function(f"() => document.querySelectorAll('#examples button').length === {n_examples + 2}")
        status = _get_json(f"{base}/api/status")
        assert status["watch"]["n_added"] >= 2 and status["generation"] > before["generation"]
        print(f"new images on the page {time.monotonic() - t0:.1f} s after the copy")
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"
