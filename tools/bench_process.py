"""Whole processes, as a user runs them: ``objsearch query`` and ``objsearch analyze`` against a bare ultralytics
``YOLO.predict`` process doing the same detector work, as ratios (issue 23: both <= 0.8 on a 2-core CPU).

Usage::

    python tools/bench_process.py [--what query,analyze] [--repeats 7] [-i INDEX.h5] [--runtime auto,torch]

Each variant is one fresh Python process (imports, model load, the work, exit); the variants run interleaved, round
after round, and medians are compared, because the machine is shared: the load average is printed with every round.
Wall time is what the user waits; CPU time (user + system of the process) is printed beside it, the less noisy
figure when other processes compete for the cores.

- query: ``objsearch query bus.jpg -i coco128.h5 --json`` (the runtimes listed) against
  ``YOLO(weights).predict(bus.jpg)``.
- analyze: ``objsearch analyze coco128 -o tmp.h5`` against ``for r in YOLO(weights).predict(folder, stream=True)``
  over the same 128 files.

Both sides use the same checkpoint (the default: yolo11n-reconstructed) and their own default thread setting (both
``cpu_count - 1``). One untimed round first: file caches warm, and the ``auto`` runtime's one-time export done.
Without ``-i`` the coco128 index is analysed first into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, ROOT

WEIGHTS = DATA / "weights" / "yolo11n-reconstructed.pt"
BUS = DATA / "samples" / "bus.jpg"
COCO128 = DATA / "coco128"


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one process; raises CalledProcessError when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        err = proc.stderr.read().decode(errors="replace")
        raise SystemExit(f"{' '.join(cmd)[:300]} failed (exit {proc.returncode}):\n{err[-2000:]}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def variants(what: str, index: Path, runtimes: list[str], out: Path) -> dict[str, list[str]]:
    py = sys.executable
    if what == "query":
        out = {"bare predict": [py, "-c", f"from ultralytics import YOLO; YOLO({str(WEIGHTS)!r}).predict("
                                           f"{str(BUS)!r}, verbose=False)"]}
        for rt in runtimes:
            out[f"objsearch {rt}"] = [py, "-m", "objsearch", "query", str(BUS), "-i", str(index), "--json",
                                      "--runtime", rt]
        return out
    images = COCO128 / "images" / "train2017"  # the 128 files analyze finds under coco128 (it skips the labels)
    bare = (f"from ultralytics import YOLO\nfor r in YOLO({str(WEIGHTS)!r}).predict({str(images)!r}, stream=True, "
            f"verbose=False): pass")
    result = {"bare predict": [py, "-c", bare]}
    for rt in runtimes:
        result[f"objsearch {rt}"] = [py, "-m", "objsearch", "analyze", str(COCO128), "-o", str(out / f"{rt}.h5"),
                                     "--overwrite", "--weights", str(WEIGHTS), "--runtime", rt]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="query,analyze")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("-i", "--index", type=Path)
    parser.add_argument("--runtime", default="auto,torch", help="comma-separated runtimes of the objsearch side")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", "TQDM_DISABLE": "1"}
    runtimes = args.runtime.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = args.index
        if index is None and "query" in args.what:
            index = tmp / "coco128.h5"
            subprocess.run([sys.executable, "-m", "objsearch", "analyze", str(COCO128), "-o", str(index),
                            "--weights", str(WEIGHTS)], cwd=ROOT, env=env, check=True, capture_output=True)
        print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}; weights {WEIGHTS.name}; "
              f"{args.repeats} interleaved rounds after one untimed round; medians")
        for what in args.what.split(","):
            cmds = variants(what, index, runtimes, tmp)
            for cmd in cmds.values():  # untimed: caches, the one-time export
                timed(cmd, env)
            walls = {name: [] for name in cmds}
            cpus = {name: [] for name in cmds}
            loads = []
            for r in range(args.repeats):
                loads.append(os.getloadavg()[0])
                order = list(cmds) if r % 2 == 0 else list(reversed(cmds))  # neither side always first
                for name in order:
                    wall, cpu = timed(cmds[name], env)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
                print(f"  {what} round {r + 1}: load {loads[-1]:.1f}; "
                      + ", ".join(f"{n} {walls[n][-1]:.2f} s" for n in cmds), flush=True)
            med = statistics.median
            base_wall, base_cpu = med(walls["bare predict"]), med(cpus["bare predict"])
            print(f"{what}: load average (1 min) {min(loads):.1f}-{max(loads):.1f} during the rounds")
            print(f"  {'process':<20}{'wall s':>9}{'ratio':>8}{'CPU s':>9}{'ratio':>8}")
            for name in cmds:
                print(f"  {name:<20}{med(walls[name]):9.2f}{med(walls[name]) / base_wall:8.3f}"
                      f"{med(cpus[name]):9.2f}{med(cpus[name]) / base_cpu:8.3f}")


if __name__ == "__main__":
    main()
