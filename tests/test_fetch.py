"""objsearch.media.fetch_image (the query command's URL fetcher, which is objsearch serve's
``objsearch.fetch.fetch_image_url``) against a local http.server on 127.0.0.1: the bytes arrive with
allow_private; private addresses, other schemes, bodies over the limit, slow servers and redirects to other schemes
are refused. The fetcher's own suite (pinned addresses, every redirect re-checked) is tests/test_web_fetch.py."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from testdata import BUS
from objsearch.errors import ObjsearchError
from objsearch.media import decode_image, fetch_image

BUS_BYTES = BUS.read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path == "/bus.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(BUS_BYTES)))
            self.end_headers()
            self.wfile.write(BUS_BYTES)
        elif self.path == "/stream":  # no Content-Length: the limit must hold while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            time.sleep(3)
        elif self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # a client that stops reading early is what we test
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetches_the_bytes_from_an_allowed_address(server):
    data = fetch_image(f"{server}/bus.jpg", max_bytes=10 << 20, timeout_s=5, allow_private=True)
    assert data == BUS_BYTES
    assert decode_image(data, "bus.jpg").shape == (1080, 810, 3)


def test_refuses_loopback_without_allow_private(server):
    with pytest.raises(ObjsearchError, match="127.0.0.1"):
        fetch_image(f"{server}/bus.jpg", max_bytes=10 << 20, timeout_s=5)
    for url in ("http://localhost/", "http://10.1.2.3/", "http://169.254.169.254/latest/meta-data/",
                "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/"):
        with pytest.raises(ObjsearchError, match="loopback, private, link-local or reserved"):
            fetch_image(url, max_bytes=100, timeout_s=5)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "/tmp/a.jpg"])
def test_refuses_other_schemes(url):
    with pytest.raises(ObjsearchError) as info:
        fetch_image(url, max_bytes=100, timeout_s=5, allow_private=True)
    assert info.value.exit_code == 2 and "http" in str(info.value)


def test_size_limit_with_and_without_content_length(server):
    with pytest.raises(ObjsearchError, match="more than the limit"):
        fetch_image(f"{server}/bus.jpg", max_bytes=1000, timeout_s=5, allow_private=True)
    with pytest.raises(ObjsearchError, match="more than the limit"):
        fetch_image(f"{server}/stream", max_bytes=100_000, timeout_s=5, allow_private=True)


def test_time_limit_holds_for_a_slow_server(server):
    t0 = time.monotonic()
    with pytest.raises(ObjsearchError, match="longer than 0.5 s"):
        fetch_image(f"{server}/slow", max_bytes=10_000, timeout_s=0.5, allow_private=True)
    assert time.monotonic() - t0 < 2


def test_redirects_are_followed_and_checked(server):
    assert fetch_image(f"{server}/redirect?/bus.jpg", max_bytes=10 << 20, timeout_s=5,
                       allow_private=True) == BUS_BYTES
    with pytest.raises(ObjsearchError, match="http"):
        fetch_image(f"{server}/redirect?file:///etc/passwd", max_bytes=100, timeout_s=5, allow_private=True)
    with pytest.raises(ObjsearchError, match="redirects"):
        fetch_image(f"{server}/loop", max_bytes=100, timeout_s=5, allow_private=True)


def test_http_errors_are_one_line_errors(server):
    with pytest.raises(ObjsearchError, match="HTTP 404"):
        fetch_image(f"{server}/missing.jpg", max_bytes=100, timeout_s=5, allow_private=True)
