"""Start a real Milvus standalone server from the PyPI ``milvus`` package (``pip install milvus==2.3.5``) for
benchmarks and the slow server test, and stop it by PID.

The server binds about nine ports on all interfaces, so it must run in a private network namespace with only a
loopback device: ``in_private_network()`` tells whether this process is in one, and ``reexec_in_private_network()``
re-runs the current command under ``unshare -n`` (root, or user namespaces) with loopback up. The client must run
in the same namespace (the command that re-executes itself is the client).

Usage::

    with milvus_server(data_dir) as (uri, pid):
        ...  # MilvusClient(uri)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ENV_FLAG = "OBJSEARCH_PRIVATE_NETNS"


def server_available() -> str:
    """'' when the ``milvus`` server package and ``unshare`` are there; else why not."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return "the Milvus server package is not installed (pip install milvus==2.3.5)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing: the server needs a private network namespace"
    return ""


def in_private_network() -> bool:
    """Whether this process runs in a network namespace whose only device is loopback."""
    try:
        names = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    except OSError:
        return False
    return names == ["lo"]


def reexec_in_private_network() -> None:
    """Run ``sys.argv`` again under ``unshare -n`` with loopback up, and exit with its status (never returns)."""
    inner = f"ip link set lo up && exec {' '.join(map(_quote, [sys.executable, *sys.argv]))}"
    env = {**os.environ, ENV_FLAG: "1"}
    sys.exit(subprocess.call(["unshare", "-n", "sh", "-c", inner], env=env))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def milvus_server(data_dir: str | Path, timeout_s: float = 120.0):
    """A Milvus standalone server on 127.0.0.1 in this (private) network namespace; yields (uri, pid, seconds to
    start). Stopped (terminate, then kill) by PID on exit.

    Raises
    ------
    RuntimeError
        When not in a private network namespace, or the server does not answer within ``timeout_s``.
    """
    if not in_private_network():
        raise RuntimeError("refusing to start Milvus outside a private network namespace (it binds all "
                           "interfaces): run under `unshare -n` (reexec_in_private_network)")
    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(str(data_dir))
    server.listen_port = 19530
    t0 = time.perf_counter()
    server.start()
    pid = server.server_proc.pid
    try:
        while not _port_open(19530):
            if server.server_proc.poll() is not None:
                raise RuntimeError(f"Milvus exited with {server.server_proc.returncode}; see {data_dir}/logs")
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"Milvus did not answer on port 19530 within {timeout_s:.0f} s")
            time.sleep(0.5)
        yield "http://127.0.0.1:19530", pid, time.perf_counter() - t0
    finally:
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        with contextlib.suppress(Exception):
            for fd in server.proc_fds.values():
                fd.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (and its children), MB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024
