"""Benchmark the living index: adding 5 images to the coco128 index and to the SYNTHETIC 376k index.

Usage::

    python tools/make_large_index.py -o /tmp/large.h5      # once
    python tools/bench_update.py --large /tmp/large.h5 [--repeats 3]

The cost of an update must follow what changed, not the size of the index (issue 8: ratio <= 1.5). Both indexes are
copied into a temporary folder first (the given ones are never written), their base directory set to a folder there,
and each round adds 5 new real COCO images (``../shared/data/coco_extra_dev``) to each, interleaved, with the
detector loaded once (its load time is the same for both and not counted). Also printed: how much the file grew,
how long a ``remove`` of the same 5 images takes, and the add without the detector's own time (what the index costs:
opening the writer, finding what is indexed, writing, committing), the part that must not grow with the index.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import DATA


class _TimedDetector:
    """The detector, with the seconds spent in its passes summed in ``seconds``."""

    def __init__(self, detector):
        self._detector, self.seconds = detector, 0.0

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def detect_batch(self, *args, **kwargs):
        return self._timed(self._detector.detect_batch, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._timed(self._detector, *args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=Path, required=True, help="the SYNTHETIC 376k index (make_large_index.py)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the copies (default: the system's)")
    args = parser.parse_args()

    from objsearch.analysis import add, analyze, remove
    from objsearch.catalog import Catalog, CatalogWriter
    from objsearch.config import load_config
    from objsearch.provenance import detector_for_index
    from objsearch.media import list_images
    try:
        from objsearch.roots import sign_root
    except ImportError:  # an objsearch from before roots (to measure it): base_dir alone
        sign_root = None

    new_images = list_images(DATA / "coco_extra_dev" / "images")[: 5 * args.repeats]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        small_dir, large_dir = tmp / "small", tmp / "large"
        shutil.copytree(DATA / "coco128" / "images" / "train2017", small_dir)
        large_dir.mkdir()
        cfg = load_config(None)
        t0 = time.perf_counter()
        summary = analyze(small_dir, tmp / "small.h5", cfg)
        print(f"coco128 index: {summary.n_images} images, {summary.n_objects} objects ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        shutil.copyfile(args.large, tmp / "large.h5")
        writer = CatalogWriter.open(tmp / "large.h5")
        try:  # its folder is the empty one here, recorded as this user's root (so add makes no second root)
            roots = {} if sign_root is None else {
                "roots": [str(large_dir)], "root_macs": [sign_root(writer.attrs["uuid"], str(large_dir))]}
            writer.set_attrs(base_dir=str(large_dir), **roots)
            writer.commit()
        finally:
            writer.close()
        indexes = {"coco128": (tmp / "small.h5", small_dir), "376k": (tmp / "large.h5", large_dir)}
        for name, (path, _) in indexes.items():
            with Catalog(path) as c:
                print(f"{name}: {len(c.object_id):,} objects, {len(c.media_id):,} images, "
                      f"{path.stat().st_size / 1e6:,.1f} MB{' (SYNTHETIC)' if c.attrs.get('synthetic') else ''}")
        with Catalog(tmp / "small.h5") as c:
            detector = _TimedDetector(detector_for_index(c, cfg))
        times = {name: [] for name in indexes}
        index_times = {name: [] for name in indexes}
        removes = {name: [] for name in indexes}
        growth = {name: [] for name in indexes}
        for r in range(args.repeats):
            batch = new_images[5 * r: 5 * r + 5]
            for name, (path, base) in indexes.items():
                copies = []
                for p in batch:
                    shutil.copy2(p, base / p.name)
                    copies.append(base / p.name)
                size = path.stat().st_size
                t0, detector.seconds = time.perf_counter(), 0.0
                done = add(path, copies, detector=detector)
                times[name].append(time.perf_counter() - t0)
                index_times[name].append(times[name][-1] - detector.seconds)
                growth[name].append(path.stat().st_size - size)
                assert done.n_added == 5, done
                t0 = time.perf_counter()
                remove(path, copies)
                removes[name].append(time.perf_counter() - t0)
        med = statistics.median
        print(f"add 5 images (detector loaded; {args.repeats} rounds, interleaved, medians):")
        for name in indexes:
            print(f"  {name:<8} add {med(times[name]) * 1e3:8.1f} ms (without the detector "
                  f"{med(index_times[name]) * 1e3:6.1f} ms)   file grew {med(growth[name]) / 1e6:6.2f} MB   "
                  f"remove {med(removes[name]) * 1e3:7.1f} ms")
        print(f"ratio add 376k / coco128: {med(times['376k']) / med(times['coco128']):.3f}  (target <= 1.5); "
              f"without the detector {med(index_times['376k']) / med(index_times['coco128']):.3f}; remove "
              f"{med(removes['376k']) / med(removes['coco128']):.3f}")


if __name__ == "__main__":
    main()
