"""The URL fetcher of the web server (objsearch.fetch): only http(s), only public addresses unless allowed, every
redirect checked again, time, size and content-type limits. Served by a real local http.server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from objsearch.fetch import UrlFetchError, address_allowed, embedded_ipv4, fetch_image_url
from testdata import BUS


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
    "239.255.255.250", "100.64.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1",
    "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2001:db8::1",
    "not an address",
    # IPv6 addresses that embed a non-global IPv4 address (Python's ipaddress calls most of these global)
    "2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe::", "2002:c0a8:101::1",  # 6to4 of 127/8, 10/8, 169.254, 192.168
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1",  # NAT64 (RFC 6052)
    "64:ff9b:1::808:808",  # a site's own NAT64 prefix (RFC 8215)
    "::127.0.0.1", "::10.0.0.1", "::169.254.169.254",  # IPv4-compatible
    "::ffff:0:127.0.0.1", "::ffff:0:a00:1",  # IPv4-translated (SIIT)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1 (obfuscated as 80ff:fffe)
    "2001:0:7f00:1:8000:63bf:f7f7:f7f7",  # Teredo whose server is 127.0.0.1
    "2606:4700::5efe:7f00:1", "2606:4700::200:5efe:a00:1",  # ISATAP interface ids of 127.0.0.1, 10.0.0.1
])
def test_non_public_addresses_are_refused(address):
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "2002:808:808::1"])
def test_public_addresses_are_allowed(address):
    """Public addresses, and IPv6 forms of public IPv4 addresses (IPv4-mapped, 6to4 of 8.8.8.8)."""
    assert address_allowed(address)


def test_embedded_ipv4_addresses_are_found():
    import ipaddress

    def found(text):
        return [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(text))]

    assert found("2002:7f00:1::") == ["127.0.0.1"]
    assert found("64:ff9b::7f00:1") == ["127.0.0.1"]
    assert found("::ffff:0:a00:1") == ["10.0.0.1"]
    assert found("2001:0:4136:e378:8000:63bf:80ff:fffe") == ["65.54.227.120", "127.0.0.1"]
    assert found("2606:4700:4700::1111") == []


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, status, ctype, body, headers=None, length=True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        type(self).requests.append(self.path)
        bus = BUS.read_bytes()
        port = self.server.server_address[1]
        if self.path == "/bus.jpg":
            self._send(200, "image/jpeg", bus)
        elif self.path == "/nolength.jpg":
            self._send(200, "image/jpeg", bus, length=False)
        elif self.path == "/notes.txt":
            self._send(200, "text/plain", b"not an image\n")
        elif self.path == "/gzip.jpg":
            self._send(200, "image/jpeg", bus, {"Content-Encoding": "gzip"})
        elif self.path == "/slow.jpg":
            time.sleep(3)
            self._send(200, "image/jpeg", bus)
        elif self.path == "/to-bus":
            self._send(302, "text/plain", b"", {"Location": "/bus.jpg"})
        elif self.path == "/to-blocked":
            self._send(302, "text/plain", b"", {"Location": f"http://blocked.test:{port}/bus.jpg"})
        elif self.path == "/to-file":
            self._send(302, "text/plain", b"", {"Location": "file:///etc/passwd"})
        elif self.path == "/loop":
            self._send(302, "text/plain", b"", {"Location": "/loop"})
        else:
            self._send(404, "text/plain", b"no\n")


@pytest.fixture(scope="module")
def server():
    """A threaded http.server on 127.0.0.1 (a free port); yields its port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_fetches_an_image_from_an_allowed_local_server(server):
    body, final = fetch_image_url(f"http://127.0.0.1:{server}/bus.jpg", allow_private=True)
    assert body == BUS.read_bytes()
    assert final.endswith("/bus.jpg")
    body, _ = fetch_image_url(f"http://127.0.0.1:{server}/nolength.jpg", allow_private=True)
    assert body == BUS.read_bytes()


def test_loopback_is_refused_before_any_connection(server):
    _Handler.requests.clear()
    for host in ("127.0.0.1", "localhost", "[::1]"):
        with pytest.raises(UrlFetchError, match="loopback, private"):
            fetch_image_url(f"http://{host}:{server}/bus.jpg")
    assert _Handler.requests == []


def test_one_private_answer_among_public_ones_is_refused(server):
    _Handler.requests.clear()
    with pytest.raises(UrlFetchError, match="127.0.0.1"):
        fetch_image_url(f"http://mixed.test:{server}/bus.jpg", resolve=lambda host, port: ["8.8.8.8", "127.0.0.1"])
    assert _Handler.requests == []


def test_every_redirect_is_checked_again(server):
    """allowed.test and blocked.test are two loopback addresses; the policy lets only the first through, so a redirect
    to the second must be refused although the first hop was allowed."""
    names = {"allowed.test": ["127.0.0.1"], "blocked.test": ["127.0.0.2"]}
    policy = {"allowed": lambda a: a == "127.0.0.1", "resolve": lambda host, port: names[host]}
    body, final = fetch_image_url(f"http://allowed.test:{server}/to-bus", **policy)
    assert body == BUS.read_bytes() and final == f"http://allowed.test:{server}/bus.jpg"
    with pytest.raises(UrlFetchError, match="127.0.0.2"):
        fetch_image_url(f"http://allowed.test:{server}/to-blocked", **policy)
    with pytest.raises(UrlFetchError, match="only http and https"):
        fetch_image_url(f"http://allowed.test:{server}/to-file", **policy)
    with pytest.raises(UrlFetchError, match="more than 3 redirects"):
        fetch_image_url(f"http://allowed.test:{server}/loop", **policy)


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only http and https"),
    ("ftp://example.com/a.jpg", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("/etc/passwd", "only http and https"),
    ("", "empty"),
    ("http://", "names no host"),
    ("http://user:pw@example.com/a.jpg", "user name or password"),
    ("http://example.com:99999/a.jpg", "not a valid URL"),
    ("http://example.com/a b.jpg", "spaces or control"),
])
def test_bad_urls_are_refused_with_one_line(url, message):
    with pytest.raises(UrlFetchError, match=message) as info:
        fetch_image_url(url, resolve=lambda host, port: pytest.fail("must not resolve"))
    assert "\n" not in str(info.value)


def test_type_size_status_and_encoding_limits(server):
    base = f"http://127.0.0.1:{server}"
    with pytest.raises(UrlFetchError, match="not an image .*text/plain"):
        fetch_image_url(f"{base}/notes.txt", allow_private=True)
    with pytest.raises(UrlFetchError, match="more than the limit of"):
        fetch_image_url(f"{base}/bus.jpg", allow_private=True, max_bytes=10_000)
    with pytest.raises(UrlFetchError, match="more than the limit of"):  # no Content-Length: counted while reading
        fetch_image_url(f"{base}/nolength.jpg", allow_private=True, max_bytes=10_000)
    with pytest.raises(UrlFetchError, match="HTTP 404"):
        fetch_image_url(f"{base}/missing.jpg", allow_private=True)
    with pytest.raises(UrlFetchError, match="compressed"):
        fetch_image_url(f"{base}/gzip.jpg", allow_private=True)


def test_a_slow_server_is_cut_at_the_deadline(server):
    t0 = time.perf_counter()
    with pytest.raises(UrlFetchError, match="longer than 0.5 s"):
        fetch_image_url(f"http://127.0.0.1:{server}/slow.jpg", allow_private=True, timeout_s=0.5)
    assert time.perf_counter() - t0 < 2.5


def test_an_unresolvable_host_is_one_line():
    with pytest.raises(UrlFetchError, match="cannot resolve"):
        fetch_image_url("http://no-such-host.invalid/a.jpg")
