"""Hostile scenarios that need a private mount (and network) namespace: run by ``test_hostile_system.py`` as

    unshare --mount --propagation private [--net] python in_namespace.py SCENARIO WORKDIR

Each scenario changes only what its namespace sees (a small tmpfs, a read-only remount, its own /etc/resolv.conf
and loopback), runs objsearch for real in this process, and prints one JSON object of what happened for the test to
assert on. Nothing here outlives the namespace: the mounts vanish with it.

* ``full_disk``: an analysis into a 2 MB tmpfs runs out of space; then, with the space grown, the same command
  finishes; an ``add`` that runs out of space leaves the last committed index.
* ``read_only``: an index (and its images) on a tmpfs remounted read-only: readers work, every writer refuses in one
  line, nothing changes.
* ``dns_rebinding``: a DNS server we control answers a name with one loopback address, then another (TTL 0); the
  URL fetcher resolves once and connects to the address it checked, while a plain client follows the new answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = DATA / "weights" / "yolov8n-reconstructed.pt"
IMAGES = sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))
BUS = DATA / "samples" / "bus.jpg"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli():
    """``run(*args)`` -> (exit code, stdout, stderr) of ``objsearch ARGS`` in this process, the detector loaded once."""
    from typer.testing import CliRunner

    import objsearch.provenance as provenance
    from objsearch.cli import app

    original, cache = provenance.load_detector, {}

    def load(cfg, weights=None):
        key = str(weights or cfg.get("weights"))
        if key not in cache:
            cache[key] = original(cfg, weights)
        return cache[key]

    provenance.load_detector = load
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return run


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def _disk_with_images(work: Path, size: str, n: int) -> tuple[Path, Path, Path]:
    """(tmpfs folder, its images/ with the first ``n`` coco128 images, the index path in it)."""
    disk = work / "disk"
    _mount_tmpfs(disk, size)
    images = disk / "images"
    images.mkdir()
    for p in IMAGES[:n]:
        shutil.copy(p, images / p.name)
    return disk, images, disk / "index.h5"


def full_disk(work: Path) -> dict:
    run = _cli()
    disk, images, index = _disk_with_images(work, "2m", 4)
    out = {"first": run("analyze", images, "-o", index, "-w", WEIGHTS, "--dims", "16")}
    _remount(disk, "size=64m")
    out["again"] = run("analyze", images, "-o", index, "-w", WEIGHTS, "--dims", "16")
    reference = work / "reference.h5"  # the same analysis on a disk with room, for comparison
    out["reference"] = run("analyze", images, "-o", reference, "-w", WEIGHTS, "--dims", "16")
    out["info"] = run("info", index)[1]
    out["reference_info"] = run("info", reference)[1]
    for p in IMAGES[4:8]:
        shutil.copy(p, images / p.name)
    used = sum(f.stat().st_size for f in disk.rglob("*") if f.is_file())
    _remount(disk, f"size={(used // 4096 + 8) * 4096}")  # 32 kB left: the add's transaction cannot fit
    before = _sha(index)
    out["add_full"] = run("add", images, "-i", index, "-w", WEIGHTS)
    out["after_full_info"] = run("info", index)[1]
    out["undo_left"] = (disk / "index.h5.undo").exists()
    out["unchanged_after_full"] = _sha(index) == before
    _remount(disk, "size=64m")
    out["add"] = run("add", images, "-i", index, "-w", WEIGHTS)
    return out


def read_only(work: Path) -> dict:
    run = _cli()
    disk, images, index = _disk_with_images(work, "64m", 3)
    out = {"analyze": run("analyze", images, "-o", index, "-w", WEIGHTS, "--dims", "16")}
    (work / "extra").mkdir()
    shutil.copy(IMAGES[5], work / "extra" / IMAGES[5].name)
    _remount(disk, "ro")
    before = _sha(index)
    picture = work / "row.png"
    commands = {
        "info": ("info", index),
        "query": ("query", BUS, "-i", index, "-k", 2, "--json"),
        "query_image_out": ("query", "--mode", "image", images / IMAGES[0].name, "-i", index, "-k", 2, "--out",
                            picture),
        "add": ("add", work / "extra", "-i", index, "-w", WEIGHTS),
        "remove": ("remove", images / IMAGES[0].name, "-i", index),
        "remove_missing": ("remove", "--missing", "-i", index),
        "sync": ("sync", "-i", index, "-w", WEIGHTS),
        "compact": ("compact", index),
        "repair": ("repair", index),
        "trust": ("trust", index),
        "analyze_over": ("analyze", images, "-o", index, "-w", WEIGHTS, "--overwrite"),
        "analyze_into": ("analyze", images, "-o", disk / "new.h5", "-w", WEIGHTS),
    }
    out["commands"] = {name: run(*args) for name, args in commands.items()}
    out["picture"] = picture.is_file()
    out["unchanged"] = _sha(index) == before
    out["files"] = sorted(p.name for p in disk.iterdir())
    return out


# ------------------------------------------------------------------------------------------------ DNS rebinding
class _RebindingDNS(threading.Thread):
    """A DNS server on 127.0.0.1:53 (UDP) answering A queries for ``name``: ``first`` to the first query, ``then``
    to every later one, TTL 0; AAAA and other names get an empty answer."""

    def __init__(self, name: str, first: str, then: str):
        super().__init__(daemon=True)
        self.name, self.first, self.then = name.lower().rstrip("."), first, then
        self.a_queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.sock.sendto(self._answer(data), peer)

    def _answer(self, query: bytes) -> bytes:
        qid, flags = struct.unpack(">HH", query[:4])
        pos, labels = 12, []
        while query[pos]:
            labels.append(query[pos + 1:pos + 1 + query[pos]].decode("ascii", "replace"))
            pos += 1 + query[pos]
        qtype = struct.unpack(">H", query[pos + 1:pos + 3])[0]
        question = query[12:pos + 5]
        answers = b""
        if ".".join(labels).lower() == self.name and qtype == 1:
            self.a_queries += 1
            address = self.first if self.a_queries == 1 else self.then
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(address)
        header = struct.pack(">HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1 if answers else 0, 0, 0)
        return header + question + answers


def dns_rebinding(work: Path) -> dict:
    from objsearch.fetch import UrlFetchError, fetch_image_url

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    hits = {"127.0.0.1": [], "127.0.0.2": []}

    def handler_for(address):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits[address].append(self.path)
                body = BUS.read_bytes() if address == "127.0.0.1" else b"INTERNAL-SERVICE-SECRET"
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg" if address == "127.0.0.1" else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    port = 8087
    servers = [http.server.ThreadingHTTPServer((address, port), handler_for(address)) for address in hits]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    dns = _RebindingDNS("rebind.test", "127.0.0.1", "127.0.0.2")
    dns.start()
    url = f"http://rebind.test:{port}/bus.jpg"
    out = {}
    # the policy stands in for the public/private split: 127.0.0.1 plays a public address, 127.0.0.2 an internal one
    try:
        body, _ = fetch_image_url(url, allowed=lambda a: a == "127.0.0.1", timeout_s=10)
        out["fetched"] = body == BUS.read_bytes()
    except UrlFetchError as exc:
        out["fetched"] = f"refused: {exc}"
    out["a_queries_by_fetch"] = dns.a_queries
    out["hits_after_fetch"] = {k: list(v) for k, v in hits.items()}
    try:  # the same name fetched again: now it resolves to the internal address, which the policy refuses
        fetch_image_url(url, allowed=lambda a: a == "127.0.0.1", timeout_s=10)
        out["second"] = "fetched"
    except UrlFetchError as exc:
        out["second"] = str(exc)
    import urllib.request  # a client that resolves by itself when it connects: it follows the rebinding

    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=10) as response:
            out["plain_client_body"] = response.read().decode("latin-1")[:40]
    out["hits"] = hits
    for server in servers:
        server.shutdown()
    return out


SCENARIOS = {"full_disk": full_disk, "read_only": read_only, "dns_rebinding": dns_rebinding}

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    print("RESULT " + json.dumps(SCENARIOS[scenario](workdir)))
