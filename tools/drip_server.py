"""A hostile HTTP server that answers slowly on purpose: one header line, or one body byte, per interval.

It is what issue 18 found holding ``objsearch serve``'s URL fetcher for 60 s and more: a per-read socket timeout
never trips when a byte arrives every second. Used by the fetcher's tests (``tests/test_web_fetch.py``), the serve
pool's test (``tests/test_web.py``) and ``tools/bench_fetch_flood.py``; runnable on its own for a manual try::

    python tools/drip_server.py --port 8765     # then: objsearch query http://127.0.0.1:8765/headers.jpg ...

Paths: ``/headers*`` sends ``HTTP/1.1 200 OK`` and then one ``X-Drip`` header line per interval, for ever (never
ending the headers); ``/body*`` sends complete ``image/jpeg`` headers declaring a large body and then one byte per
interval; ``/image*`` answers ``--image`` at once. Binds 127.0.0.1 only; each connection is a daemon thread that
ends when the client goes away. Standard library only.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading
import time
from pathlib import Path

DEFAULT_INTERVAL_S = 1.0


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: DripServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else "/"
            with server.lock:
                server.requests.append(path)
            if path.startswith("/image"):
                body = server.image
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                return
            if path.startswith("/body"):
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n")
                drip = b"\xff"
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\n")
                drip = b"X-Drip: 1\r\n"
            while not server.stopping.is_set():
                time.sleep(server.interval_s)
                sock.sendall(drip)
        except OSError:  # the client gave up (what a deadline does): end quietly
            return


class DripServer(socketserver.ThreadingTCPServer):
    """The dripping server on ``127.0.0.1:port`` (0: a free port), serving in a daemon thread once ``start()`` is
    called; ``requests`` lists the paths asked for; ``stop()`` ends it and its connections.

    Parameters
    ----------
    interval_s : seconds between two dripped header lines or body bytes.
    image : bytes answered at once on ``/image*`` (a real JPEG, for a normal request among the slow ones).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, *, interval_s: float = DEFAULT_INTERVAL_S, image: bytes = b"",
                 host: str = "127.0.0.1"):
        super().__init__((host, port), _Handler)
        self.interval_s = float(interval_s)
        self.image = image
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DripServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="drip-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def __enter__(self) -> DripServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds per dripped line/byte")
    parser.add_argument("--image", type=Path, default=None, help="JPEG answered at once on /image.jpg")
    args = parser.parse_args()
    server = DripServer(args.port, interval_s=args.interval,
                        image=args.image.read_bytes() if args.image else b"")
    print(f"dripping on {server.url}/headers.jpg and {server.url}/body.jpg (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


if __name__ == "__main__":
    main()
