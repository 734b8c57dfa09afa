"""Milvus on a real server against the in-memory faiss ``IndexFlatL2`` store, on the same vectors in one run.

Starts a Milvus standalone server from the PyPI ``milvus`` package (inside a private network namespace: the command
re-executes itself under ``unshare -n``) unless ``--uri`` names a running one, loads an index's vectors (the
SYNTHETIC 376,459-object index of ``tools/make_large_index.py``) through ``objsearch.vectors.milvus`` (the path the
engine uses), and prints: load time, server memory, search latency for 1 and 10 queries with and without the class
filter (median and p95 over ``--repeats``), recall@k against exact, the cost of each consistency level and whether
a write is visible to the next search, and the same for HNSW / IVF_FLAT collections.

Usage::

    python tools/bench_milvus.py -i /tmp/large.h5 [--uri http://host:19530] [--dims 32] [--index-types FLAT,HNSW]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from milvus_server import (ENV_FLAG, in_private_network, milvus_server, reexec_in_private_network,  # noqa: E402
                           rss_mb, server_available)


def _latency(fn, repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def bench(args, uri: str, server_pid: int | None, start_s: float | None) -> None:
    from objsearch.catalog import Catalog
    from objsearch.vectors import memory_store
    from objsearch.vectors.exact import faiss_available
    from objsearch.vectors.milvus import MilvusVectorStore, open_for_catalog, recall_at_k

    import faiss

    faiss.omp_set_num_threads(1)
    assert faiss_available()
    k, repeats = args.k, args.repeats
    with Catalog(args.index) as catalog:
        n = len(catalog.object_id)
        print(f"index {args.index}: {n:,} objects, {args.dims} dims, synthetic={catalog.attrs.get('synthetic')}")
        if start_s is not None:
            print(f"server: milvus 2.3.5 standalone (PyPI), started in {start_s:.1f} s, RSS {rss_mb(server_pid):.0f} MB")
        vectors = catalog.vectors(args.dims)
        ids, class_id, image_id = catalog.object_id, catalog.class_id, catalog.object_media_id
        rng = np.random.default_rng(0)
        src = rng.integers(0, n, 10 * repeats)
        queries = (vectors[src] + rng.normal(scale=0.05, size=(len(src), args.dims))).astype(np.float32)
        q_class, q_image = class_id[src], image_id[src]

        t0 = time.perf_counter()
        faiss_store = memory_store("faiss", ids, vectors, class_id, image_id)
        faiss_store.search(queries[:1], k, class_id=q_class[:1])  # builds the per-class indexes
        faiss_load = time.perf_counter() - t0
        results = {}
        for index_type in args.index_types:
            name = f"bench_{index_type.lower()}_d{args.dims}"
            t0 = time.perf_counter()
            store = open_for_catalog(catalog, args.dims, uri, collection=name, index_type=index_type,
                                     consistency=args.consistency)
            load_s = time.perf_counter() - t0
            rss = rss_mb(server_pid) if server_pid else float("nan")
            results[index_type] = (store, load_s, rss)

        print(f"\nsearch latency, ms (median / p95 over {repeats} calls), k={k}; load = inserting {n:,} rows "
              f"through objsearch (FLAT) or building the index")
        print(f"{'store':22s} {'load s':>7s} {'RSS MB':>7s} {'1 q':>13s} {'10 q':>13s} {'1 q class':>13s} "
              f"{'10 q class':>13s} {'recall@k':>8s} {'recall class':>12s}")

        def row(label, store, load_s, rss):
            cells = []
            for q, filtered in ((1, False), (10, False), (1, True), (10, True)):
                def one(i, q=q, filtered=filtered):
                    sl = slice(i * q, i * q + q)
                    store.search(queries[sl], k, class_id=q_class[sl] if filtered else None,
                                 exclude_image_id=q_image[sl] if filtered else None)
                store.search(queries[:q], k)  # warm
                med, p95 = _latency(one, repeats)
                cells.append(f"{med:6.2f}/{p95:6.2f}")
            m = min(10 * repeats, 200)
            exact = faiss_store.search(queries[:m], k).ids
            got = store.search(queries[:m], k).ids
            exact_c = faiss_store.search(queries[:m], k, class_id=q_class[:m], exclude_image_id=q_image[:m]).ids
            got_c = store.search(queries[:m], k, class_id=q_class[:m], exclude_image_id=q_image[:m]).ids
            print(f"{label:22s} {load_s:7.1f} {rss:7.0f} {' '.join(f'{c:>13s}' for c in cells)} "
                  f"{recall_at_k(got, exact):8.3f} {recall_at_k(got_c, exact_c):12.3f}")

        row("faiss IndexFlatL2 (mem)", faiss_store, faiss_load, float("nan"))
        for index_type, (store, load_s, rss) in results.items():
            row(f"milvus {index_type} ({args.consistency})", store, load_s, rss)

        flat = results.get("FLAT", (None,))[0]
        if flat is not None:
            print("\nconsistency levels on the FLAT collection: 1-query search latency, and whether an object "
                  "added (then removed) just before is seen by the next search")
            for level in ("Strong", "Session", "Bounded", "Eventually"):
                probe = MilvusVectorStore(uri, flat.collection, args.dims, consistency=level)
                med, p95 = _latency(lambda i: probe.search(queries[i:i + 1], k), repeats)
                seen_add = seen_remove = 0
                trials = 5
                for t in range(trials):
                    new_id = np.array([10**12 + t])
                    v = queries[t:t + 1] + 1e-3
                    probe.add(new_id, v, q_class[t:t + 1], q_image[t:t + 1])
                    seen_add += int(probe.search(v, 1).ids[0, 0] == new_id[0])
                    probe.remove(new_id)
                    seen_remove += int(probe.search(v, 1).ids[0, 0] != new_id[0])
                probe.close()
                print(f"  {level:10s} {med:7.2f} / {p95:7.2f} ms; add seen {seen_add}/{trials}, "
                      f"remove seen {seen_remove}/{trials}")
        if server_pid:
            print(f"\nserver RSS after everything: {rss_mb(server_pid):.0f} MB")
        for store, _, _ in results.values():
            if not args.keep:
                store.drop()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--index", type=Path, required=True, help="index file (the synthetic 376k one)")
    parser.add_argument("--uri", help="a running Milvus server; default: start one from the milvus package")
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--index-types", type=lambda s: s.split(","), default=["FLAT", "HNSW", "IVF_FLAT"])
    parser.add_argument("--consistency", default="Strong")
    parser.add_argument("--keep", action="store_true", help="keep the collections")
    args = parser.parse_args()
    if args.uri:
        bench(args, args.uri, None, None)
        return
    why = server_available()
    if why:
        sys.exit(f"error: {why}")
    if not in_private_network():
        if os.environ.get(ENV_FLAG):
            sys.exit("error: unshare -n did not give a private network namespace")
        reexec_in_private_network()
    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as data, milvus_server(data) as (uri, pid, start_s):
        bench(args, uri, pid, start_s)


if __name__ == "__main__":
    main()
