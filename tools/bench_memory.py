"""Peak memory of an analysis: O(commit interval), not O(dataset) (issue 8: the 1,000- and 20,000-image peaks within
1.3x of each other).

Usage::

    python tools/bench_memory.py [--sizes 1000,20000] [--imgsz 320] [--side 320] [--tmp /tmp]

Makes a folder of the largest size from coco128's images, repeated and resized (longest side ``--side`` px, each copy
scaled a little differently so no two files are the same), then runs ``objsearch analyze`` on the first N images of
it for each size, each in a fresh process, and prints the peak resident memory (the process's ``ru_maxrss``) and the
time. ``--imgsz`` (the detector's input size) only makes it faster; memory per image is what is measured. The folder
is deleted afterwards; never commit it.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, ROOT


def make_folder(folder: Path, n: int, side: int) -> list[Path]:
    import cv2

    sources = sorted((DATA / "coco128" / "images" / "train2017").glob("*.jpg"))
    images = [cv2.imread(str(p)) for p in sources]
    out = []
    for i in range(n):
        image = images[i % len(images)]
        scale = side / max(image.shape[:2]) * (1.0 - 0.2 * ((i // len(images)) % 10) / 10)
        small = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), small, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = make_folder(tmp / "all", sizes[-1], args.side)
        print(f"made {len(files)} images (longest side <= {args.side} px) in {time.perf_counter() - t0:.0f} s")
        results = {}
        for n in sizes:
            folder = tmp / f"first{n}"
            for p in files[:n]:
                target = folder / p.relative_to(tmp / "all")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.hardlink_to(p)
            out = tmp / f"index{n}.h5"
            code = ("import resource, sys, time; from objsearch.cli import main; sys.argv = ['objsearch', 'analyze', "
                    f"{str(folder)!r}, '-o', {str(out)!r}, '--imgsz', '{args.imgsz}']\n"
                    "t0 = time.perf_counter()\n"
                    "try:\n    main()\nexcept SystemExit:\n    pass\n"
                    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t0)")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK")), None)
            if proc.returncode or line is None:
                sys.exit(f"analysis of {n} images failed:\n{proc.stdout}\n{proc.stderr}")
            _, kb, seconds = line.split()
            results[n] = (int(kb) / 1024, float(seconds))
            summary = next((ln for ln in proc.stdout.splitlines() if ln.startswith("analyzed")), "")
            print(f"{n:>7} images: peak RSS {results[n][0]:7.1f} MB, {results[n][1]:7.1f} s "
                  f"({n / results[n][1]:.1f} images/s); {summary[:120]}")
            shutil.rmtree(folder)
            out.unlink()
        lo, hi = sizes[0], sizes[-1]
        print(f"ratio peak RSS {hi} / {lo} images: {results[hi][0] / results[lo][0]:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
