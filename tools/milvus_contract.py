"""Run the vector-store contract suite (tests/vector_store_contract.py) against a real Milvus server: one started
from the PyPI ``milvus`` package inside a private network namespace (this command re-executes itself under
``unshare -n``), or ``--uri``. Prints one line per check and ``N passed, N failed``; exits 1 when a check fails.

Usage::

    python tools/milvus_contract.py [--uri http://host:19530] [--consistency Strong]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from milvus_server import ENV_FLAG, in_private_network, milvus_server, reexec_in_private_network, server_available  # noqa: E402,E501


def run_checks(uri: str, consistency: str) -> int:
    import vector_store_contract as contract
    from objsearch.vectors.milvus import milvus_store

    counter = itertools.count()

    def make_store(ids, vectors, class_id, image_id):
        return milvus_store(uri, f"contract_{os.getpid()}_{next(counter)}", ids, vectors, class_id, image_id,
                            consistency=consistency)

    failed = 0
    for check in contract.CHECKS:
        t0 = time.perf_counter()
        try:
            check(make_store)
            print(f"PASSED {check.__name__} ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAILED {check.__name__}\n{traceback.format_exc()}", flush=True)
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    for name in client.list_collections():
        if name.startswith(f"contract_{os.getpid()}_"):
            client.drop_collection(name)
    client.close()
    print(f"{len(contract.CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri")
    parser.add_argument("--consistency", default="Strong")
    args = parser.parse_args()
    if args.uri:
        sys.exit(run_checks(args.uri, args.consistency))
    why = server_available()
    if why:
        sys.exit(f"error: {why}")
    if not in_private_network():
        if os.environ.get(ENV_FLAG):
            sys.exit("error: unshare -n did not give a private network namespace")
        reexec_in_private_network()
    with tempfile.TemporaryDirectory(prefix="milvus-contract-") as data, milvus_server(data) as (uri, _, start_s):
        print(f"Milvus server started in {start_s:.1f} s at {uri} (private network namespace)", flush=True)
        sys.exit(run_checks(uri, args.consistency))


if __name__ == "__main__":
    main()
