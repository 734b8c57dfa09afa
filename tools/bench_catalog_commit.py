"""Benchmark: the cost of a small commit (5 media, 30 objects) into a small and a large format 2 catalog.

Usage::

    python tools/bench_catalog_commit.py [--objects 200000] [--dim 256] [--repeats 7] [--fsync]

Builds, in a temporary folder, a catalog of 20 media items and one of ``--objects`` objects (SYNTHETIC: random
features, 2 KB random "thumbnails", two random projections to 16 and 32 dims, written through ``CatalogWriter`` in
commits of 20,000 objects), then times ``--repeats`` commits of 5 media / 30 objects into each and prints the
median times, their ratio (large / small; an in-place update should be near 1), the bytes each commit wrote and the
bytes it saved to the undo log. Nothing is kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from objsearch.catalog import CatalogWriter  # noqa: E402
from objsearch.projection import make_projection  # noqa: E402
from objsearch.types import Detections, MediaRecord, MediaRef  # noqa: E402

CLASS_NAMES = [f"class{i}" for i in range(80)]


def records(rng, n_media: int, per_media: int, dim: int, start: int) -> list[MediaRecord]:
    out = []
    for i in range(n_media):
        xy = rng.uniform(0, 500, (per_media, 2)).astype(np.float32)
        det = Detections(xyxy=np.concatenate([xy, xy + 20], 1), confidence=rng.uniform(0.2, 1, per_media),
                         class_id=rng.integers(0, 80, per_media),
                         features=rng.normal(size=(per_media, dim)).astype(np.float32))
        thumbs = [rng.integers(0, 256, 2048, dtype=np.uint8).tobytes() for _ in range(per_media)]
        out.append(MediaRecord(MediaRef(f"images/{start + i:07d}.jpg", 640, 480), det, thumbs))
    return out


def build(path: Path, n_objects: int, dim: int, fsync: bool, rng) -> CatalogWriter:
    x = rng.normal(size=(64, dim)).astype(np.float32)
    projs = [make_projection("random", d, random_state=d).fit(x) for d in (16, 32)]
    writer = CatalogWriter.create(path, attrs={"class_names": CLASS_NAMES}, n_features=dim, projections=projs,
                                  fsync=fsync, description="bench_catalog_commit")
    per_media = 20
    n_media = max(20, n_objects // per_media)
    batch = 1000
    for start in range(0, n_media, batch):
        for rec in records(rng, min(batch, n_media - start), per_media if n_objects >= 20 * per_media else 1,
                           dim, start):
            writer.add(rec)
        writer.commit()
    return writer


def time_commits(writer: CatalogWriter, repeats: int, dim: int, rng) -> tuple[float, dict]:
    times, stats = [], []
    for r in range(repeats):
        recs = records(rng, 5, 6, dim, 10_000_000 + 5 * r)
        for rec in recs:
            writer.add(rec)
        t0 = time.perf_counter()
        writer.commit()
        times.append(time.perf_counter() - t0)
        stats.append(writer.last_commit_stats)
    return statistics.median(times), stats[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256, help="raw feature length D")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fsync", action="store_true", help="fsync the undo log and the data file (power-loss safe)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, n in (("small", 20), ("large", args.objects)):
            path = Path(tmp) / f"{name}.h5"
            t0 = time.perf_counter()
            writer = build(path, n, args.dim, args.fsync, rng)
            built = time.perf_counter() - t0
            seconds, stats = time_commits(writer, args.repeats, args.dim, rng)
            results[name] = seconds
            print(f"{name}: {len(writer.object_id):,} objects, {path.stat().st_size / 2**20:.1f} MiB "
                  f"(built in {built:.1f} s); commit of 5 media / 30 objects: median {seconds * 1e3:.1f} ms over "
                  f"{args.repeats}, {stats['bytes_written'] / 1024:.0f} KiB written in {stats['writes']} writes, "
                  f"{stats['undo_bytes'] / 1024:.0f} KiB saved to the undo log")
            writer.close()
        print(f"ratio large / small: {results['large'] / results['small']:.2f} (fsync {'on' if args.fsync else 'off'})")


if __name__ == "__main__":
    main()
