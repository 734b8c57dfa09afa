"""The web server's JSON API (objsearch.web.app) on the real small index, through FastAPI's TestClient: searching by
upload, raw body, URL and indexed id; the limits (upload size, pixels, private URLs); thumbnails, media, info; no
request reads a file outside the base directory; every bad request is a 4xx with one JSON line."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'objsearch[web]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from testdata import BUS, run_cli  # noqa: E402
from test_media import png_bomb  # noqa: E402


@pytest.fixture(scope="module")
def engine(small_index, detector):
    from objsearch.engine import Engine

    with Engine(small_index[0], detector=detector) as e:
        yield e


def _client(engine, **settings):
    from objsearch.web import WebSettings, create_app

    return TestClient(create_app(engine, WebSettings(**settings)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(engine):
    return _client(engine)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """http.server on 127.0.0.1 serving a folder with bus.jpg and a text file; yields its base URL."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "bus.jpg").write_bytes(BUS.read_bytes())
    (folder / "notes.txt").write_text("not an image\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def _without_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("timings_ms", "image")}


def _assert_same_result(got, want, where="result"):
    """Equal JSON, floats to 1e-3: another process may run torch on another number of threads, which moves a
    distance in its fifth decimal."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            _assert_same_result(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_result(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-3), where
    else:
        assert got == want, where


def test_upload_answers_the_query_json_object(client, small_index):
    response = client.post("/api/search?k=5", files={"image": ("bus.jpg", BUS.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    got = response.json()
    cli = run_cli("query", BUS, "-i", small_index[0], "-k", "5", "--json")
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)
    assert list(got) == list(want)  # the same keys in the same order
    assert set(got["timings_ms"]) >= {"decode", "detect", "features", "search", "total"}
    assert got["image"] == "bus.jpg"
    _assert_same_result(_without_timings(got), _without_timings(want))
    assert len(got["objects"]) >= 3 and all(len(o["neighbors"]) == 5 for o in got["objects"])


def test_raw_body_same_class_and_dims(client, engine):
    response = client.post("/api/search?k=3&same_class=true&dims=16", content=BUS.read_bytes(),
                           headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    got = response.json()
    want = engine.search_file(BUS, k=3, same_class=True, dims=16).to_dict()
    assert _without_timings(got) == _without_timings(want)
    for obj in got["objects"]:
        assert all(nb["class_id"] == obj["class_id"] for nb in obj["neighbors"])


def test_search_by_url_from_a_local_server_only_when_private_urls_are_allowed(engine, client, image_server):
    allowed = _client(engine, allow_private_urls=True)
    response = allowed.post("/api/search?k=4", json={"url": f"{image_server}/bus.jpg"})
    assert response.status_code == 200, response.text
    want = engine.search_file(BUS, k=4).to_dict()
    assert response.json()["image"] == f"{image_server}/bus.jpg"
    assert _without_timings(response.json()) == _without_timings(want)
    fetched = allowed.post("/api/fetch", json={"url": f"{image_server}/bus.jpg"})
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    from objsearch.media import decode_image

    assert decode_image(fetched.content).shape == (1080, 810, 3)
    assert "not an image" in _one_line_error(allowed.post("/api/search", json={"url": f"{image_server}/notes.txt"}),
                                             400)
    # the default server refuses the same URL, and cloud metadata addresses, and non-http schemes
    for url in (f"{image_server}/bus.jpg", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.jpg"):
        assert "private" in _one_line_error(client.post("/api/search", json={"url": url}), 400)
        assert "private" in _one_line_error(client.post("/api/fetch", json={"url": url}), 400)
    assert "only http and https" in _one_line_error(client.post("/api/search", json={"url": "file:///etc/passwd"}), 400)
    _one_line_error(client.post("/api/search", json={"url": 7}), 400)
    _one_line_error(client.post("/api/search", json=["x"]), 400)
    _one_line_error(client.post("/api/search", content=b"{not json", headers={"Content-Type": "application/json"}), 400)


def test_limits_refuse_big_uploads_bombs_and_corrupt_images(engine, client):
    small = _client(engine, max_upload_bytes=50_000)
    data = BUS.read_bytes()
    assert len(data) > 50_000
    assert "more than the limit" in _one_line_error(
        small.post("/api/search", files={"image": ("bus.jpg", data, "image/jpeg")}), 413)
    # no Content-Length (chunked): counted while reading
    assert "more than the limit" in _one_line_error(
        small.post("/api/search", content=iter([data[:30_000], data[30_000:]]), headers={"Content-Type": "image/jpeg"}),
        413)
    assert "more than the limit" in _one_line_error(small.post("/api/fetch", content=b"{" + b" " * 60_000 + b"}",
                                                               headers={"Content-Type": "application/json"}), 413)
    for side in (12000, 20000):  # above the 100 MP limit; 20000 x 20000 is also below OpenCV's own limit
        bomb = png_bomb(side, side)
        assert "more than the limit of 100 MP" in _one_line_error(
            client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")}), 422)
    message = _one_line_error(client.post("/api/search", files={"image": ("bad.jpg", b"\xff\xd8\xff" + bytes(500),
                                                                          "image/jpeg")}), 422)
    assert message.startswith("cannot read image bad.jpg")
    assert "empty" in _one_line_error(client.post("/api/search", files={"image": ("e.jpg", b"", "image/jpeg")}), 422)
    assert "no image" in _one_line_error(client.post("/api/search", files={"other": (None, "text")}), 400)
    _one_line_error(client.post("/api/search", content=b"hello", headers={"Content-Type": "text/plain"}), 415)
    # the server still answers a good query after every refusal
    assert client.post("/api/search?k=1", content=data, headers={"Content-Type": "image/jpeg"}).status_code == 200


@pytest.mark.parametrize("query, message", [
    ("k=0", "k"), ("k=100000", "k"), ("k=abc", "k"), ("conf=2", "conf"), ("dims=7", "dims must be one of"),
    ("mode=video", "mode must be one of"), ("media_id=abc", "media_id"), ("same_class=maybe", "same_class"),
])
def test_bad_parameters_are_400_with_one_line(client, query, message):
    response = client.post(f"/api/search?{query}", content=BUS.read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert message in _one_line_error(response, 400)


def test_thumbnails_media_examples_and_info(client, engine):
    c = engine.catalog
    oid = int(c.object_id[0])
    response = client.get(f"/api/thumbnail/{oid}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == engine.thumbnail(oid)
    assert "no indexed object" in _one_line_error(client.get(f"/api/thumbnail/{int(c.object_id.max()) + 1}"), 404)
    _one_line_error(client.get("/api/thumbnail/-1"), 400)
    _one_line_error(client.get("/api/thumbnail/abc"), 400)
    mid = int(c.media_id[0])
    response = client.get(f"/api/media/{mid}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    from objsearch.media import decode_image

    assert decode_image(response.content).shape[:2] == (int(c.media_height[0]), int(c.media_width[0]))
    small = decode_image(client.get(f"/api/media/{mid}?max_side=64").content)
    assert max(small.shape[:2]) == 64
    _one_line_error(client.get(f"/api/media/{int(c.media_id.max()) + 1}"), 404)
    examples = client.get("/api/examples?n=5").json()["images"]
    assert len(examples) == 5 and all(e["media_id"] in set(c.media_id.tolist()) for e in examples)
    assert client.get("/api/random").json()["media_id"] in set(c.media_id.tolist())
    info = client.get("/api/info").json()
    assert info["images"] == len(c.media_id) and info["objects"] == len(c.object_id)
    assert info["dims"] == [16, 32] and info["skipped"] == len(c.skipped) and info["modes"] == ["objects", "image"]
    assert sum(info["classes"].values()) == len(c.object_id)
    assert info["weights_sha256"] == c.weights_sha256


def test_search_by_indexed_id_leaves_the_image_itself_out(client, engine):
    mid = int(engine.catalog.media_id[np.bincount(engine.catalog.object_media_id).argmax()])
    got = client.post(f"/api/search?media_id={mid}&k=4").json()
    assert got["objects"] and all(nb["image_id"] != mid for o in got["objects"] for nb in o["neighbors"])
    assert got["image"] == engine.media(mid).path
    with_self = client.post(f"/api/search?media_id={mid}&k=1&include_self=true").json()
    c = engine.catalog
    stored = c.xyxy[c.object_media_id == mid]
    indexed = [o for o in with_self["objects"]  # the query's objects the index kept (index_conf, dedup)
               if np.abs(stored - np.asarray(o["box"], np.float32)).max(1).min() < 1.0]
    assert indexed and all(o["neighbors"][0]["image_id"] == mid and o["neighbors"][0]["distance"] < 1e-3
                           for o in indexed)
    _one_line_error(client.post(f"/api/search?media_id={int(engine.catalog.media_id.max()) + 1}"), 404)


def test_no_request_reads_outside_the_base_directory(engine, small_index, small_folder, detector, tmp_path):
    """The page's files are a fixed set; indexed images are read only through Engine.media_path, which refuses a
    link that leaves the base directory (here the base directory is a copy whose first image links out)."""
    from objsearch.engine import Engine

    client = _client(engine)
    secret = b"SECRET-outside-the-base-directory"
    for path in ("/static/..%2F..%2Fengine.py", "/static/../app.py", "/static/%2e%2e/%2e%2e/cli.py",
                 "/static/app.py", "/static/", "/api/media/..%2F..%2Fetc%2Fpasswd", "/api/thumbnail/..%2Fx",
                 "/..%2F..%2Fetc%2Fpasswd", "/api/media/%2Fetc%2Fpasswd"):
        response = client.get(path)
        assert 400 <= response.status_code < 500, path
        assert b"root:" not in response.content and b"import" not in response.content
    assert client.get("/static/app.js").status_code == 200
    base = tmp_path / "base"
    base.mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(BUS.read_bytes() + secret)
    c = engine.catalog
    first = c.media_path[0]
    for rel in c.media_path:
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == first:
            os.symlink(outside, target)
        else:
            shutil.copy(small_folder / rel, target)
    with Engine(small_index[0], base_dir=base, detector=detector) as moved:
        client = _client(moved)
        mid = int(c.media_id[0])
        assert "leaves the base directory" in _one_line_error(client.get(f"/api/media/{mid}"), 403)
        assert "leaves the base directory" in _one_line_error(client.post(f"/api/search?media_id={mid}"), 403)
        assert client.get(f"/api/media/{int(c.media_id[1])}").status_code == 200


def test_errors_are_json_lines_and_the_page_is_self_contained(client):
    assert "not found" in _one_line_error(client.get("/nope"), 404).lower()
    _one_line_error(client.get("/api/search"), 405)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    static = Path(__file__).resolve().parents[1] / "objsearch" / "web" / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = client.get("/" if name == "index.html" else f"/static/{name}").text
        assert text == (static / name).read_text()
        assert "://" not in text, f"{name} refers to another host"


def test_serve_command_refuses_a_missing_index_and_a_taken_port(small_index):
    import socket

    result = run_cli("serve", "-i", "no-such-index.h5")
    assert result.returncode == 3 and result.stderr.strip() == "error: index file no-such-index.h5 does not exist"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "-i", small_index[0], "--port", port, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_the_server_follows_other_writers(small_index, small_folder, detector, tmp_path):
    """What ``objsearch remove`` (another writer) commits is searched by the running server: the removed images'
    objects stop coming back and the counts follow."""
    from objsearch.analysis import remove
    from objsearch.engine import Engine

    index = tmp_path / "copy.h5"
    shutil.copy(small_index[0], index)
    with Engine(index, base_dir=small_folder, detector=detector) as engine:
        client = _client(engine, refresh_s=0)
        before = client.get("/api/info").json()
        hits = client.post("/api/search?k=8", content=BUS.read_bytes(), headers={"content-type": "image/jpeg"})
        returned = {n["image_id"] for o in hits.json()["objects"] for n in o["neighbors"]}
        gone = sorted(returned)[:2]
        paths = [small_folder / engine.media(i).path for i in gone]
        remove(index, paths)
        after = client.get("/api/info").json()
        assert after["images"] == before["images"] - 2 and after["objects"] < before["objects"]
        hits = client.post("/api/search?k=8", content=BUS.read_bytes(), headers={"content-type": "image/jpeg"})
        returned = {n["image_id"] for o in hits.json()["objects"] for n in o["neighbors"]}
        assert returned and not returned & set(gone)


def test_whole_image_mode_answers_the_query_mode_image_object(client, engine, small_index):
    """``mode=image``: one row of similar whole images, the object ``query --mode image --json`` prints; by id the
    image leaves itself out; info lists the mode; an image-mode dims that is not stored is a 400."""
    assert engine.catalog.has_image_vectors and client.get("/api/info").json()["modes"] == ["objects", "image"]
    got = client.post("/api/search?mode=image&k=4", content=BUS.read_bytes(),
                      headers={"content-type": "image/jpeg"})
    assert got.status_code == 200, got.text
    got = got.json()
    cli = run_cli("query", BUS, "-i", small_index[0], "--mode", "image", "-k", "4", "--json")
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)
    assert list(got) == list(want) and "objects" not in got
    _assert_same_result(_without_timings(got), _without_timings(want))
    mid = got["neighbors"][0]["image_id"]
    by_id = client.post(f"/api/search?mode=image&k=4&media_id={mid}").json()
    assert len(by_id["neighbors"]) == 4 and all(n["image_id"] != mid for n in by_id["neighbors"])
    _one_line_error(client.post("/api/search?mode=image&dims=128", content=BUS.read_bytes(),
                                headers={"content-type": "image/jpeg"}), 400)


def test_the_page_writes_a_distance_as_d_everywhere():
    """Issue 19 item 10: a neighbour's caption said "bus 0.50", the form a query object's confidence takes
    ("1 bus 0.93"); the CLI, the pictures and the image mode write "d=0.50". Every distance the page prints from
    two decimals is written d=... (the browser test checks the captions themselves where chromium is installed)."""
    import re

    from objsearch.web import app as web_app

    script = (Path(web_app.__file__).parent / "static" / "app.js").read_text(encoding="utf-8")
    shown = re.findall(r"(.{0,40})nb\.distance\.toFixed\(2\)", script)
    assert shown and all("d=${" in before for before in shown), shown
