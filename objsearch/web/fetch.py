"""Fetching a query image from a URL a user pasted, without letting the URL reach into the server's own network.

A URL is data from outside. ``fetch_image_url`` takes only ``http``/``https``; resolves the host itself and refuses
it when any of its addresses is loopback, private, link-local, multicast, reserved, unspecified or otherwise not
globally routable (unless ``allow_private``); connects to the address it checked (so a second DNS answer cannot
swap it); follows at most a few redirects, each checked again the same way; stops at a deadline and a byte limit;
and accepts only an ``image/*`` answer. Decoding (and its pixel limit) is the caller's: ``objsearch.media``.

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


def address_allowed(address: str) -> bool:
    """Whether a resolved IP address may be fetched from without ``allow_private``: globally routable unicast only
    (an IPv4-mapped IPv6 address is judged by its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                      or ip.is_link_local or ip.is_private))


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address; ``Host`` stays the URL's host."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address; the certificate is checked against the URL's host name."""

    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._ctx = context

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


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
    deadline = time.monotonic() + float(timeout_s)
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
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchError(f"fetching the URL took longer than {timeout_s:g} s")
        if scheme == "https":
            conn = _PinnedHTTPS(host, port, addresses[0], remaining, ssl.create_default_context())
        else:
            conn = _PinnedHTTP(host, port, addresses[0], remaining)
        try:
            try:
                conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                                                     "Accept-Encoding": "identity"})
                response = conn.getresponse()
            except TimeoutError:
                raise UrlFetchError(f"fetching the URL took longer than {timeout_s:g} s") from None
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
            return _read_limited(response, conn, max_bytes, deadline, timeout_s), url
        finally:
            conn.close()
    raise UrlFetchError(f"more than {max_redirects} redirects")


def _read_limited(response, conn, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchError(f"fetching the URL took longer than {timeout_s:g} s")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        try:
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        except TimeoutError:
            raise UrlFetchError(f"fetching the URL took longer than {timeout_s:g} s") from None
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
