"""Hostile requests to ``objsearch serve`` (issue 18 items 1, 3, 4 and 9): ids, seeds and JSON that raised 500s, a
server that drips its headers or body (the fetch deadline holds from connect to the last byte), 45 such URLs at
once (uploads never wait behind them), IPv6 addresses that embed a loopback or private IPv4 address, and a token on
every API route when serving beyond loopback. Each is a 4xx with one JSON line (or the right answer), no traceback
in the log."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from support import record

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

from drip_server import DripServer  # noqa: E402
from testdata import run_cli  # noqa: E402

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'objsearch[web]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from objsearch.fetch import UrlFetchError, fetch_image_url  # noqa: E402
from test_web import _client, _one_line_error  # noqa: E402  (the web suite's helpers)


@pytest.fixture(scope="module")
def engine(tiny_index, shared_detector):
    from objsearch.engine import Engine

    with Engine(tiny_index, detector=shared_detector) as e:
        yield e


@pytest.fixture(scope="module")
def client(engine):
    return _client(engine)


@pytest.mark.parametrize("method, url, body", [
    ("GET", "/api/thumbnail/9223372036854775808", None),
    ("GET", "/api/thumbnail/99999999999999999999999", None),
    ("GET", "/api/media/9223372036854775808", None),
    ("GET", "/api/media/99999999999999999999999", None),
    ("POST", "/api/search?media_id=9223372036854775808", None),
    ("POST", "/api/search?media_id=99999999999999999999999", None),
    ("GET", "/api/examples?seed=-1", None),
    ("GET", "/api/examples?seed=99999999999999999999999", None),
    ("POST", "/api/search", b"[" * 100_000 + b"]" * 100_000),
    ("POST", "/api/fetch", b'{"url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("POST", "/api/search?conf=nan", None),
    ("POST", "/api/search?group_s=inf", None),
])
def test_ids_seeds_and_bodies_out_of_range_are_400_not_500(client, method, url, body, caplog):
    """Issue 18's eight 500s (an OverflowError on a 64-bit id, a ValueError on a negative seed, a RecursionError on
    deeply nested JSON) and their kin: each is a 400 with the one-line JSON error, and nothing in the log."""
    headers = {"content-type": "application/json"} if body is not None else {}
    response = client.request(method, url, content=body, headers=headers)
    _one_line_error(response, 400)
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    record("refused (400)", "web ids, seeds and JSON")


def test_every_api_route_asks_for_the_token(engine):
    """With a token, each /api/ route answers 401 without it (the routes are listed from the app, so a new one is
    covered), and 2xx/4xx other than 401 with it, by header or by the cookie the page gets from /?token=."""
    token = "t0ken-of-sixteen-chars"
    client = _client(engine, token=token)
    routes = [(r.path, sorted(r.methods)[0]) for r in client.app.routes
              if getattr(r, "path", "").startswith("/api/")]
    assert {p for p, _ in routes} >= {"/api/search", "/api/thumbnail/{object_id}", "/api/media/{media_id}",
                                      "/api/fetch", "/api/examples", "/api/random", "/api/info"}
    oid, mid = int(engine.catalog.object_id[0]), int(engine.catalog.media_id[0])
    for path, method in routes:
        url = path.replace("{object_id}", str(oid)).replace("{media_id}", str(mid))
        assert "token" in _one_line_error(client.request(method, url), 401), url
        wrong = client.request(method, url, headers={"Authorization": "Bearer " + "x" * len(token)})
        assert wrong.status_code == 401, url
        right = client.request(method, url, headers={"Authorization": f"Bearer {token}"})
        assert right.status_code != 401, url
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    bad = client.get("/?token=guess-guess-guess", follow_redirects=False)
    assert bad.status_code == 303 and "set-cookie" not in bad.headers
    assert client.get("/api/info").status_code == 401
    good = client.get(f"/?token={token}", follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/info").status_code == 200  # the page's own requests carry the cookie
    assert client.get(f"/api/thumbnail/{oid}").status_code == 200
    assert _client(engine).get("/api/info").status_code == 200  # no token: none asked (loopback)
    record("refused (401)", "web token")


@pytest.mark.parametrize("args, fragment", [
    (("--host", "0.0.0.0"), "--token"),
    (("--host", "::"), "--token"),
    (("--host", "192.168.1.10"), "--token"),
    (("--host", "0.0.0.0", "--token", "short"), "at least 16 characters"),
])
def test_serve_beyond_loopback_requires_a_token(tiny_index, args, fragment):
    """Refused in one line before the index and the detector load (no port is bound either)."""
    result = run_cli("serve", "-i", tiny_index, *args, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    record(f"user error (exit {result.returncode})", "web token")


@contextlib.contextmanager
def _live_server(app):
    """``app`` served by uvicorn on a free 127.0.0.1 port in a thread (stopped on exit); yields the port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          limit_concurrency=256))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def _request(port: int, method: str, url: str, body: bytes | None, ctype: str, timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, url, body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_slow_urls_never_hold_uploads_and_a_full_url_pool_answers_at_once(engine):
    """45 URL searches of a server that drips one header line a second (issue 18 held serve's threads with 42 of
    them): uploads are answered while every slow fetch is still in flight; a fast URL asked meanwhile gets its
    answer or a 503 at once, never a wait behind the slow ones; each slow one ends at the deadline (400)."""
    from objsearch.web import WebSettings, create_app

    settings = WebSettings(allow_private_urls=True, url_timeout_s=3, url_workers=8, url_queue=8)
    with DripServer(interval_s=1.0, image=BUS.read_bytes()) as drip, \
            _live_server(create_app(engine, settings)) as port:
        slow = []

        def post_slow(i):
            t0 = time.monotonic()
            status, _ = _request(port, "POST", "/api/search?k=2", json.dumps({"url": f"{drip.url}/headers-{i}.jpg"})
                                 .encode(), "application/json")
            slow.append((status, time.monotonic() - t0))

        threads = [threading.Thread(target=post_slow, args=(i,), daemon=True) for i in range(45)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        while len(drip.requests) < settings.url_workers:  # the URL pool is full of dripping fetches
            assert time.monotonic() - t_start < 5, drip.requests
            time.sleep(0.05)
        status, body = _request(port, "POST", "/api/search?k=2", BUS.read_bytes(), "image/jpeg")
        upload_done = time.monotonic() - t_start
        assert status == 200 and json.loads(body)["objects"], body[:200]
        status, body = _request(port, "POST", "/api/search?k=2",
                                json.dumps({"url": f"{drip.url}/image.jpg"}).encode(), "application/json")
        fast_done = time.monotonic() - t_start
        assert status in (200, 503), body[:200]
        for t in threads:
            t.join(60)
    assert upload_done < settings.url_timeout_s and fast_done < settings.url_timeout_s  # none waited for the drip
    statuses = sorted({s for s, _ in slow})
    assert statuses == [400, 503] and len(slow) == 45
    cut = [seconds for status, seconds in slow if status == 400]
    assert len(cut) == settings.url_workers + settings.url_queue  # the running ones and the waiting ones
    assert max(cut) <= 2 * settings.url_timeout_s + 1.5  # at most one round of waiting, then its own deadline
    assert all(seconds < 2 for status, seconds in slow if status == 503)
    for status, _ in slow:
        record(f"refused ({status})", "URL flood")


# ------------------------------------------------------------------------------------ the deadline is wall-clock
@pytest.fixture(scope="module")
def drip():
    """A server that drips one header line (``/headers.jpg``) or one body byte (``/body.jpg``) every 0.2 s, for
    ever."""
    with DripServer(interval_s=0.2, image=BUS.read_bytes()) as server:
        yield server


@pytest.mark.parametrize("what", ["headers", "body"])
def test_a_dripping_server_is_cut_at_the_deadline(drip, what):
    """One header line or one body byte every 0.2 s kept the old fetcher busy for as long as the server liked (each
    read had its own timeout): the deadline holds from connect to the last byte, within 1 s."""
    t0 = time.monotonic()
    with pytest.raises(UrlFetchError, match="longer than 2 s"):
        fetch_image_url(f"{drip.url}/{what}.jpg", allow_private=True, timeout_s=2)
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed <= 3.0, elapsed
    record("refused (deadline)", "fetch deadline")


def test_the_deadline_leaves_a_fast_answer_alone(drip):
    body, _ = fetch_image_url(f"{drip.url}/image.jpg", allow_private=True, timeout_s=2)
    assert body == BUS.read_bytes()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_accepts_and_never_answers_is_cut_at_the_deadline(scheme):
    """Over https the deadline holds the TLS handshake too (the server never sends its hello)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections complete in the kernel's backlog; nothing is ever sent
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UrlFetchError, match="longer than 1 s"):
            fetch_image_url(f"{scheme}://127.0.0.1:{port}/x.jpg", allow_private=True, timeout_s=1)
        assert 1.0 <= time.monotonic() - t0 <= 2.0
    record("refused (deadline)", "fetch deadline")


# ---------------------------------------------------------------------------- SSRF through an embedded IPv4 address
@pytest.mark.parametrize("host", [
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1 (issue 18: Python calls it global)
    "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254 (cloud metadata)
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[::ffff:0:7f00:1]",  # IPv4-translated 127.0.0.1
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
    "[::ffff:127.0.0.1]",  # IPv4-mapped
])
def test_urls_of_ipv6_forms_of_private_addresses_are_refused_by_the_api(client, host):
    """Through the real API and the real resolver (a literal address resolves to itself): refused before any
    connection, one JSON line."""
    for path in ("/api/search", "/api/fetch"):
        response = client.post(path, json={"url": f"http://{host}/x.jpg"})
        assert "loopback, private" in _one_line_error(response, 400), host
    record("refused (400)", "SSRF embedded IPv4")
