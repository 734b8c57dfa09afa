"""Fetching a query image from a URL a user pasted, without letting the URL reach into the server's own network.

A URL is data from outside. ``fetch_image_url`` takes only ``http``/``https``; resolves the host itself and refuses
it when any of its addresses is loopback, private, link-local, multicast, reserved, unspecified or otherwise not
globally routable, or an IPv6 address that embeds such an IPv4 address (6to4, Teredo, NAT64, IPv4-mapped,
-compatible and -translated forms), unless ``allow_private``; connects to the address it checked (so a second DNS
answer cannot swap it: no DNS rebinding); follows at most a few redirects, each checked again the same way; stops at
a byte limit; and accepts only an ``image/*`` answer. Its deadline is wall-clock, from the first connect to the last
byte, headers and TLS handshake included: every read waits at most for what is left of it, so a server that drips a
header line or a body byte a second is cut at the deadline. Decoding (and its pixel limit) is the caller's:
``objsearch.media``.

Standard library only (``http.client``, ``socket``, ``ssl``, ``ipaddress``), so it is testable without a web server.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from objsearch.errors import ObjsearchError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 20 << 20
MAX_REDIRECTS = 3
USER_AGENT = "objsearch-url-fetch/1"


class UrlFetchError(ObjsearchError):
    """A URL query was refused (scheme, address, size, type) or could not be fetched (timeout, HTTP error)."""

    exit_code = 2


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                      or ip.is_link_local or ip.is_private))


NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a site's own translator, never public
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291 (deprecated): ::a.b.c.d
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT): ::ffff:0:a.b.c.d


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and reaches: IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible
    (``::a.b.c.d``), IPv4-translated (``::ffff:0:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``), Teredo (``2001:0::/32``: its server and its client) and ISATAP (``…:0:5efe:a.b.c.d``).
    Python's ``ipaddress`` calls several of these global whatever they embed (``2002:7f00:1::`` carries
    127.0.0.1), so they are judged by what they embed. Sources: RFC 4291 §2.5.5, RFC 2765, RFC 6052, RFC 3056,
    RFC 4380, RFC 5214."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in IPV4_COMPATIBLE or ip in IPV4_TRANSLATED or ip in NAT64_WELL_KNOWN:
        out.append(low32)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if (int(ip) >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP interface id 0000:5efe or 0200:5efe
        out.append(low32)
    return out


def address_allowed(address: str) -> bool:
    """Whether a resolved IP address may be fetched from without ``allow_private``: globally routable unicast only
    (an IPv4-mapped IPv6 address is judged by its IPv4 address); any other IPv6 address that embeds an IPv4 address
    (``embedded_ipv4``) must also embed only such addresses, and one of a site's own NAT64 prefix
    (``64:ff9b:1::/48``) is refused."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _public(ip.ipv4_mapped)
        if ip in NAT64_LOCAL_USE:
            return False
        return _public(ip) and all(_public(v4) for v4 in embedded_ipv4(ip))
    return _public(ip)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _Deadline:
    """A wall-clock deadline (``time.monotonic``); ``left()`` is the seconds that remain, TimeoutError when none."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining


class _DeadlineIO:
    """Every receive and send of a socket waits at most until the fetch's deadline (a socket timeout alone is per
    call: a server sending one byte a second would never trip it). Mixed into a socket class before it."""

    deadline: _Deadline

    def recv(self, *args):
        self.settimeout(self.deadline.left())
        return super().recv(*args)

    def recv_into(self, *args):
        self.settimeout(self.deadline.left())
        return super().recv_into(*args)

    def sendall(self, *args):
        self.settimeout(self.deadline.left())
        return super().sendall(*args)


class _DeadlineSocket(_DeadlineIO, socket.socket):
    """A TCP socket held to the fetch's deadline."""


class _DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
    """A TLS socket held to the fetch's deadline (``SSLContext.sslsocket_class``)."""

    def read(self, *args):
        self.settimeout(self.deadline.left())
        return super().read(*args)


def _connect(address: str, port: int, deadline: _Deadline) -> _DeadlineSocket:
    """A TCP connection to the checked ``address`` (never a name: nothing is resolved again), within the deadline."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = _DeadlineSocket(family, socket.SOCK_STREAM)
    sock.deadline = deadline
    try:
        sock.settimeout(deadline.left())
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address; ``Host`` stays the URL's host; every read within ``deadline``."""

    def __init__(self, host, port, address, deadline: _Deadline):
        super().__init__(host, port, timeout=deadline.left())
        self._address, self._deadline = address, deadline

    def connect(self):
        self.sock = _connect(self._address, self.port, self._deadline)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address; the certificate is checked against the URL's host name; the
    handshake and every read within ``deadline``."""

    def __init__(self, host, port, address, deadline: _Deadline, context: ssl.SSLContext):
        super().__init__(host, port, timeout=deadline.left(), context=context)
        self._address, self._deadline, self._ctx = address, deadline, context

    def connect(self):
        sock = _connect(self._address, self.port, self._deadline)
        try:
            tls = self._ctx.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        tls.deadline = self._deadline
        try:
            tls.settimeout(self._deadline.left())  # the handshake is one call: CPython holds it to this timeout
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        self.sock = tls


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.sslsocket_class = _DeadlineSSLSocket
    return ctx


def _check_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an http(s) URL, or UrlFetchError."""
    if not isinstance(url, str) or not url.strip():
        raise UrlFetchError("the URL is empty")
    if len(url) > 4096:
        raise UrlFetchError("the URL is longer than 4096 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UrlFetchError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlFetchError(f"only http and https URLs can be searched, not {scheme or 'a URL without a scheme'}")
    if not parts.hostname:
        raise UrlFetchError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UrlFetchError("URLs with a user name or password are refused")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in target):
        raise UrlFetchError("the URL's path holds spaces or control characters (encode them)")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), target


def fetch_image_url(url: str, *, allow_private: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                    max_bytes: int = DEFAULT_MAX_BYTES, max_redirects: int = MAX_REDIRECTS,
                    resolve: Callable[[str, int], list[str]] = _resolve,
                    allowed: Callable[[str], bool] = address_allowed) -> tuple[bytes, str]:
    """Download an image from an http(s) URL, safely.

    Parameters
    ----------
    url : the URL a user gave.
    allow_private : also fetch from loopback, private and link-local addresses (a server on a lab's own network).
    timeout_s : deadline for the whole fetch, redirects included, seconds.
    max_bytes : largest body accepted.
    max_redirects : redirects followed (each target is checked like the first URL).
    resolve : host, port -> IP address strings (``socket.getaddrinfo`` by default; tests give their own).
    allowed : the address policy when ``allow_private`` is False.

    Returns
    -------
    (bytes, str)
        The body and the final URL.

    Raises
    ------
    UrlFetchError
        With a one-line reason for every refusal and failure.
    """
    deadline = _Deadline(timeout_s)
    too_slow = f"fetching the URL took longer than {timeout_s:g} s"
    for _ in range(int(max_redirects) + 1):
        scheme, host, port, target = _check_url(url)
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UrlFetchError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
        if not addresses:
            raise UrlFetchError(f"cannot resolve {host}")
        if not allow_private:
            refused = [a for a in addresses if not allowed(a)]
            if refused:
                raise UrlFetchError(f"{host} resolves to {refused[0]}, a loopback, private, link-local or reserved "
                                    f"address; such URLs are refused (the server's --allow-private-urls permits them)")
        try:
            if scheme == "https":
                conn = _PinnedHTTPS(host, port, addresses[0], deadline, _tls_context())
            else:
                conn = _PinnedHTTP(host, port, addresses[0], deadline)
        except TimeoutError:
            raise UrlFetchError(too_slow) from None
        try:
            try:
                conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                                                     "Accept-Encoding": "identity"})
                response = conn.getresponse()
            except TimeoutError:
                raise UrlFetchError(too_slow) from None
            except (OSError, http.client.HTTPException) as exc:
                raise UrlFetchError(f"cannot fetch {host}: {getattr(exc, 'strerror', None) or exc}") from None
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise UrlFetchError(f"{host} answered a redirect without a location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise UrlFetchError(f"{host} answered HTTP {response.status} {response.reason}".rstrip())
            ctype = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
            if not ctype.startswith("image/"):
                raise UrlFetchError(f"the URL is not an image (its content type is {ctype or 'not given'})")
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise UrlFetchError(f"the URL's answer is compressed ({encoding}); only plain bodies are accepted")
            length = response.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise UrlFetchError(f"the image is {int(length) / 1e6:.1f} MB, more than the limit of "
                                    f"{max_bytes / 1e6:.0f} MB")
            return _read_limited(response, max_bytes, too_slow), url
        finally:
            conn.close()
    raise UrlFetchError(f"more than {max_redirects} redirects")


def _read_limited(response, max_bytes: int, too_slow: str) -> bytes:
    """The body, at most ``max_bytes``; every read is held to the fetch's deadline by its socket."""
    chunks, size = [], 0
    while True:
        try:
            chunk = response.read1(65536)
        except TimeoutError:
            raise UrlFetchError(too_slow) from None
        except (OSError, http.client.HTTPException) as exc:
            raise UrlFetchError(f"the download broke off: {getattr(exc, 'strerror', None) or exc}") from None
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise UrlFetchError(f"the image is more than the limit of {max_bytes / 1e6:.0f} MB")
        chunks.append(chunk)
    if not size:
        raise UrlFetchError("the URL's answer is empty")
    return b"".join(chunks)
