"""Hostile conditions of the machine rather than of a file (issue 18 item 9): DNS rebinding against a resolver the test
controls, a real full disk and a real read-only mount (inside a private mount namespace: ``unshare -m``, a small
tmpfs, ``mount -o remount,ro``), ``kill -9`` of ``serve`` in the middle of a request, ``app`` on a damaged index,
and ``objsearch repair`` after a writer killed at each kind of point. Each ends in the right answer or one line, and
nothing is lost."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import assert_one_line_error, record, sha256

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"


def _namespaces_work() -> str:
    """'' when this process may make private mount and network namespaces; otherwise why not."""
    if os.geteuid() != 0:
        return "needs root (unshare --mount, mount -t tmpfs)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt && ip link set lo up"], capture_output=True)
    return "" if probe.returncode == 0 else f"unshare is refused here: {probe.stderr.decode().strip()[:200]}"


NO_NAMESPACES = _namespaces_work()
needs_namespaces = pytest.mark.skipif(bool(NO_NAMESPACES), reason=NO_NAMESPACES)


def _in_namespace(scenario: str, tmp_path: Path, *, net: bool = False, timeout: float = 600) -> dict:
    command = ["unshare", "--mount", "--propagation", "private", *(["--net"] if net else []),
               sys.executable, str(HERE / "in_namespace.py"), scenario, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), YOLO_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _one_error_line(result: list, code: int, *fragments: str) -> str:
    exit_code, _, stderr = result
    assert exit_code == code, result
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@needs_namespaces
def test_dns_rebinding_is_defeated_by_connecting_to_the_checked_address(tmp_path):
    """A DNS server in the test answers rebind.test with 127.0.0.1 (allowed by the test's policy), then 127.0.0.2 (the
    'internal' address). The fetcher resolves once and connects to what it checked; a plain client resolving again
    reaches the internal server (so the resolver really rebinds), and a second fetch is refused by name."""
    out = _in_namespace("dns_rebinding", tmp_path, net=True, timeout=120)
    assert out["fetched"] is True and out["a_queries_by_fetch"] == 1
    assert out["hits_after_fetch"] == {"127.0.0.1": ["/bus.jpg"], "127.0.0.2": []}
    assert "127.0.0.2" in out["second"] and "refused" in out["second"]
    assert out["plain_client_body"].startswith("INTERNAL-SERVICE-SECRET")  # the rebinding is real
    record("refused (rebinding)", "DNS rebinding")


@needs_namespaces
@pytest.mark.slow
def test_a_real_full_disk(tmp_path):
    """An analysis into a 2 MB tmpfs: one line, exit 6 (cannot write); the space grown, the same command resumes and ends where an
    analysis with room ends; an add that does not fit leaves the index as it was (no undo file, same bytes)."""
    out = _in_namespace("full_disk", tmp_path)
    line = _one_error_line(out["first"], 6, "No space left on device")
    assert "resumes" in line  # a journaled job says that it resumes
    assert out["again"][0] == 0 and "resumed" in out["again"][1], out["again"]
    strip = lambda info: [line for line in info.splitlines()  # noqa: E731
                          if line.startswith(("images", "objects", "projection", "features"))]
    assert strip(out["info"]) == strip(out["reference_info"])
    _one_error_line(out["add_full"], 6, "No space left on device")
    assert out["unchanged_after_full"] and not out["undo_left"]
    assert out["add"][0] == 0 and "(8 images" in out["add"][1], out["add"]
    record("cannot write (exit 6)", "full disk (real)")


@needs_namespaces
@pytest.mark.slow
def test_a_real_read_only_mount(tmp_path):
    """An index and its images on a filesystem remounted read-only: info, query and a picture work; every writer
    refuses in one line (exit 3, or 6 for a file it cannot make); the index is not changed."""
    out = _in_namespace("read_only", tmp_path)
    commands = out["commands"]
    for name in ("info", "query", "query_image_out"):
        assert commands[name][0] == 0, (name, commands[name])
    assert out["picture"] and out["unchanged"]
    for name in ("add", "remove", "remove_missing", "sync", "compact", "repair", "trust", "analyze_into"):
        _one_error_line(commands[name], 3, "Read-only file system")
    line = _one_error_line(commands["analyze_over"], 6, "Read-only file system")
    assert "resumes" not in line  # another place is needed, not a second try
    assert "index.h5.undo" not in out["files"] and "index.h5.journal" not in out["files"]
    for _ in commands:
        record("refused (read-only)", "read-only mount (real)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(index: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "objsearch", "serve", "-i", str(index), "--port", str(port)],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), YOLO_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/info")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("serve did not start")


def _search(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/api/search?k=3", body=BUS.read_bytes(), headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    assert response.status == 200
    out = json.loads(response.read())
    out.pop("timings_ms")
    return out


@pytest.mark.slow
def test_kill_9_of_serve_during_a_request(tiny_index, tmp_path):
    """serve killed (SIGKILL) while it answers a search: the index is untouched and leaves no side file, the port
    is free again at once, and a new server answers the same search."""
    index = tmp_path / "served.h5"
    shutil.copy(tiny_index, index)
    before = sha256(index)
    port = _free_port()
    proc = _start_serve(index, port)
    try:
        want = _search(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/search?k=3", body=BUS.read_bytes(), headers={"Content-Type": "image/jpeg"})
        time.sleep(0.02)  # the request is being searched
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.getresponse().read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert sha256(index) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("served.h5")) == ["served.h5"]
    proc = _start_serve(index, port)
    try:
        assert _search(port) == want
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    record("ok", "kill -9 serve")


@pytest.mark.parametrize("kind", ["truncated", "text", "bit_flipped_attrs"])
def test_app_on_a_damaged_index_is_one_line_before_any_window(kind, tiny_index, cli, tmp_path, monkeypatch):
    """`app -i damaged.h5` opened its window and only logged a warning; now it refuses in one line, exit 3, before
    Qt starts (a display is claimed, so only the index can stop it)."""
    pytest.importorskip("PyQt6", reason="the desktop app needs PyQt6")
    import objsearch.gui.window as window

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setattr(window, "run_app", lambda *a, **k: pytest.fail("the window was opened"))
    index = tmp_path / "damaged.h5"
    data = tiny_index.read_bytes()
    if kind == "truncated":
        index.write_bytes(data[: len(data) // 3])
    elif kind == "text":
        index.write_text("not an index\n")
    else:
        import h5py
        import numpy as np

        shutil.copy(tiny_index, index)
        with h5py.File(index, "r+") as f:
            f.attrs["base_dir"] = np.bytes_(b"/")  # not re-signed: the attributes' digest fails
    assert_one_line_error(cli("app", "-i", index), 3, str(index))
    record("refused (exit 3)", "app on a damaged index")


def test_repair_after_each_kill_point(tmp_path, monkeypatch, cli):
    """A writer killed at points spread over every kind of transaction (add, remove, attributes, projection,
    compaction); `objsearch repair` then says whether it rolled something back, exits 0, and leaves a committed
    state that readers open without rolling back anything more."""
    from test_catalog import _kill_and_resume

    from objsearch.catalog import txn

    outcomes = []

    def repair(path: Path) -> None:
        had_undo = txn.undo_path(path).exists()
        result = cli("repair", path)
        assert result.exit_code == 0, result.output
        assert ("rolled back an unfinished transaction" in result.stdout) == had_undo, result.stdout
        assert not txn.undo_path(path).exists()
        outcomes.append(had_undo)

    _kill_and_resume(tmp_path, monkeypatch, points_per_step=3, recover=repair)
    assert any(outcomes) and not all(outcomes)  # both kinds of kill point were met
    for had_undo in outcomes:
        record("repaired" if had_undo else "nothing to repair", "repair after kill")
