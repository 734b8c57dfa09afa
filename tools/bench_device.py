"""The whole table of issue 23 in one run on a GPU machine (<= 5 minutes on an H200), for the code as it is.

Usage::

    python tools/bench_device.py [--data DIR] [--device 0] [--out table.md] [--images 1024] [--budget-s 280]
    python tools/bench_device.py --quick          # the same on the CPU with small sizes: checks that it runs

Rows (each measured in this process unless said otherwise; img/s = images / wall seconds):

- ``YOLO.predict(folder, stream=True)`` of the folder (coco128 copied round-robin to ``--images`` files) at batch 1,
  batch 32 and batch 32 fp16: the bare ultralytics baseline (needs ultralytics);
- objsearch analysis of the same folder (``objsearch.analysis.analyze``, thumbnails and index file included) at batch
  1 / 8 / 32 / 64, and its ratio to the bare batch-32 predict (target >= 4);
- the network's own ceiling: the fused detector alone on blank 640 x 640 batches, fp32 batch 1 and 64, fp16 batch 64,
  synchronised;
- the decode ceiling: ``cv2.imread`` of the folder's files on 1 and on ``os.cpu_count()`` threads;
- query of bus.jpg against a coco128 index: warm (in process, median), a bare ``YOLO.predict`` of the same file
  (warm, median), and a one-off query process (``objsearch query --device D --json``, or the same through the
  engine API when the CLI cannot run there: it needs typer >= 0.29 and pydantic) with its ratio to the warm query
  (target <= 2);
- live: a 768 x 432 frame (no decode) searched against the coco128 index, median ms (target <= 6 ms);
- search: 16 queries, top-64, over random 376,459 x 32 and 10,000,000 x 32 vectors: ``--backend torch`` on the
  device and faiss ``IndexFlatL2`` on the CPU cores, median ms.

The script checks what it needs first and says what is missing (ultralytics, faiss); a row that cannot run says why
and the others go on. The short stages run first and the analysis last. It imports no Qt. ``--budget-s`` bounds the run: a stage that would start after it is skipped
(said in its row). The data: ``--data`` holds ``coco128/`` (its images), ``weights/yolo11n-reconstructed.pt`` and
``samples/bus.jpg`` (default: ``.devdata`` when present, else ``../shared/data``; ``tools/device_prepare.sh`` makes
``.devdata``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's objsearch, wherever the script is started from

ROWS: list[tuple[str, str, str]] = []  # (what, value, note)


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"| {what} | {value} | {note} |", flush=True)


def median_ms(fn, repeats: int, warm: int = 3, sync=None) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeats`` calls after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Stages:
    """Runs each stage unless the time budget is spent; a stage that fails leaves one row saying why."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def run(self, name: str, fn, *args) -> None:
        if self.elapsed() > self.budget_s:
            row(name, "skipped", f"over the time budget ({self.budget_s:.0f} s)")
            return
        t0 = time.perf_counter()
        try:
            fn(*args)
        except Exception as exc:  # a benchmark row that breaks must not lose the others
            row(name, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        print(f"   ({name}: {time.perf_counter() - t0:.1f} s, {self.elapsed():.0f} s in all)", flush=True)


def check_environment(device: str) -> dict:
    """What is installed; prints what is missing. Returns {name: version or None}."""
    found = {}
    for name in ("torch", "cv2", "numpy", "h5py", "scipy", "yaml", "onnxruntime", "ultralytics", "faiss", "typer"):
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # ImportError, or a dependency of it missing
            found[name] = None
            print(f"missing: {name} ({type(exc).__name__}: {exc})", flush=True)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"python {sys.version.split()[0]}; " + ", ".join(f"{k} {v}" for k, v in found.items() if v)
          + f"; CUDA device: {gpu}; cudnn {torch.backends.cudnn.version() if torch.cuda.is_available() else '-'}; "
          f"{os.cpu_count()} CPU cores; device asked: {device}", flush=True)
    for name, needed_for in (("ultralytics", "the bare YOLO.predict rows (and objsearch's detector)"),
                             ("faiss", "the faiss search rows")):
        if found[name] is None:
            print(f"note: without {name}, {needed_for} cannot run: carry its wheel (tools/device_wheels.sh)")
    for module in ("objsearch.engine", "objsearch.analysis", "objsearch.vectors.torch_knn"):
        importlib.import_module(module)
    assert "PyQt6" not in sys.modules and "pyqtgraph" not in sys.modules, "objsearch pulled in Qt"
    return found


def make_folder(data: Path, n: int, tmp: Path) -> list[Path]:
    """``n`` files copied round-robin from coco128's images (names kept unique)."""
    sources = sorted((data / "coco128").rglob("*.jpg"))
    if not sources:
        raise FileNotFoundError(f"no coco128 images under {data / 'coco128'}")
    folder = tmp / "images"
    folder.mkdir()
    files = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:05d}_{src.name}"
        shutil.copyfile(src, dst)
        files.append(dst)
    return files


def bench_bare_predict(ctx) -> None:
    from ultralytics import YOLO

    yolo = YOLO(str(ctx.weights))
    yolo.predict(str(ctx.files[0]), verbose=False, device=ctx.device)  # model load, ultralytics' thread setting
    half_ok = ctx.cuda
    for batch, half in ctx.bare_batches:
        if half and not half_ok:
            row(f"bare YOLO.predict, batch {batch} fp16", "-", "fp16 on a GPU only")
            continue
        precision = {"half": True} if half else {}  # (ultralytics 8.4 warns that ``half`` is deprecated, even False)
        for _ in yolo.predict(str(ctx.files[0]), verbose=False, device=ctx.device, batch=batch, **precision):
            pass  # this batch size's and precision's first pass
        t0 = time.perf_counter()
        n = 0
        for _ in yolo.predict(str(ctx.folder), stream=True, verbose=False, device=ctx.device, batch=batch,
                              **precision):
            n += 1
        rate = n / (time.perf_counter() - t0)
        ctx.bare[(batch, half)] = rate
        row(f"bare YOLO.predict(folder, stream=True), batch {batch}{' fp16' if half else ''}", f"{rate:.1f} img/s",
            f"{n} images")


def bench_analysis(ctx) -> None:
    from objsearch.analysis import analyze

    base = ctx.bare.get((ctx.ref_batch, False))
    for batch in ctx.batches:
        if ctx.stages.elapsed() > ctx.stages.budget_s:
            row(f"objsearch analysis, batch {batch}", "skipped", "over the time budget")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = analyze(ctx.folder, Path(tmp) / "bench.h5", {**ctx.cfg, "batch": batch}, detector=ctx.detector)
            seconds = time.perf_counter() - t0
        rate = summary.n_images / seconds
        note = f"{summary.n_images} images, {summary.n_objects} objects"
        if base:
            note += f"; {rate / base:.2f}x bare predict batch {ctx.ref_batch} (target >= 4)"
        row(f"objsearch analysis, batch {batch}", f"{rate:.1f} img/s", note)


def bench_ceiling(ctx) -> None:
    import copy

    import torch

    model = ctx.detector.model
    sync = torch.cuda.synchronize if ctx.cuda else None
    for half, batch in ctx.ceiling:
        if half and not ctx.cuda:
            row(f"network alone, fp16 batch {batch}", "-", "fp16 on a GPU only")
            continue
        net = copy.deepcopy(model).half() if half else model
        x = torch.zeros((batch, 3, ctx.imgsz, ctx.imgsz), device=ctx.detector.device,
                        dtype=torch.float16 if half else torch.float32)
        with torch.inference_mode():
            ms = median_ms(lambda: net(x), ctx.ceiling_repeats, warm=3, sync=sync)
        row(f"network alone {ctx.imgsz}x{ctx.imgsz}, {'fp16' if half else 'fp32'} batch {batch}",
            f"{batch / ms * 1e3:.0f} img/s", f"{ms:.2f} ms a batch (the network's ceiling)")


def bench_decode(ctx) -> None:
    import cv2

    for threads in sorted({1, os.cpu_count() or 1}):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(cv2.imread, map(str, ctx.files[: min(64, len(ctx.files))])))  # file cache warm
            t0 = time.perf_counter()
            list(pool.map(cv2.imread, map(str, ctx.files)))
            rate = len(ctx.files) / (time.perf_counter() - t0)
        row(f"cv2.imread on {threads} thread{'s' if threads > 1 else ''}", f"{rate:.0f} img/s", "decode ceiling")


def bench_query(ctx) -> None:
    import cv2

    from objsearch.analysis import analyze
    from objsearch.engine import Engine

    index = ctx.tmp / "coco128.h5"
    analyze(ctx.data / "coco128", index, {**ctx.cfg, "batch": 1}, detector=ctx.detector)
    ctx.index = index
    with Engine(index, weights=str(ctx.weights), device=ctx.device, detector=ctx.detector) as engine:
        engine.search_file(ctx.bus, k=16, warmup=True)
        warm = median_ms(lambda: engine.search_file(ctx.bus, k=16), ctx.query_repeats)
        ctx.warm_query_ms = warm
        bare_note = ""
        if ctx.found.get("ultralytics"):
            from ultralytics import YOLO

            yolo = YOLO(str(ctx.weights))
            bare = median_ms(lambda: yolo.predict(str(ctx.bus), verbose=False, device=ctx.device), ctx.query_repeats)
            row("bare YOLO.predict of bus.jpg, warm", f"{bare:.1f} ms", "decode included")
            bare_note = f"; {warm / bare:.2f}x the bare predict (target <= 0.8)"
        row("objsearch query of bus.jpg, warm", f"{warm:.1f} ms",
            f"coco128 index ({len(engine.catalog.object_id)} objects), {engine.method}, runtime "
            f"{engine.detector.runtime}{bare_note}")
        frame = cv2.resize(cv2.imread(str(ctx.bus)), (768, 432))
        engine.warmup([frame.shape])
        live = median_ms(lambda: engine.search(frame, k=16), ctx.query_repeats)
        row("live: a 768x432 frame searched (no decode)", f"{live:.1f} ms", "target <= 6 ms on an H100/H200")


ONE_OFF = """import json, sys, time
t0 = time.perf_counter()
from objsearch.engine import Engine
with Engine(sys.argv[1], weights=sys.argv[2], device=sys.argv[3]) as engine:
    t1 = time.perf_counter()
    result = engine.search_file(sys.argv[4], k=16, warmup=True)
print(json.dumps({"timings_ms": result.to_dict()["timings_ms"], "open_s": t1 - t0}))
"""


def bench_one_off(ctx) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "objsearch", "query", str(ctx.bus), "-i", str(ctx.index), "--json",
           "--weights", str(ctx.weights), "--device", ctx.device]
    how = "objsearch query --json"
    t0 = time.perf_counter()
    proc = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if proc.returncode != 0:
        print(f"   the CLI could not run here ({proc.stderr.strip().splitlines()[-1:]}): the engine API instead")
        how = "engine API in a fresh process (the CLI needs typer >= 0.29)"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", ONE_OFF, str(ctx.index), str(ctx.weights), ctx.device,
                               str(ctx.bus)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    timings = json.loads(proc.stdout.strip().splitlines()[-1])["timings_ms"]
    total, warmup = timings["total"], timings.get("warmup", 0.0)
    ratio = f"; {total / ctx.warm_query_ms:.2f}x the warm query (target <= 2)" if ctx.warm_query_ms else ""
    row("one-off query process: the query itself", f"{total:.1f} ms",
        f"{how}; warm-up {warmup:.0f} ms before it, whole process {wall:.1f} s{ratio}")


def bench_search(ctx) -> None:
    import numpy as np

    from objsearch.vectors import memory_store
    from objsearch.vectors.torch_knn import TorchVectorStore

    rng = np.random.default_rng(0)
    for n in ctx.search_sizes:
        vectors = rng.standard_normal((n, 32), dtype=np.float32)
        ids = np.arange(n, dtype=np.int64)
        class_id = rng.integers(0, 80, n)
        image_id = ids // 3
        queries = (vectors[rng.integers(0, n, 16)] + rng.standard_normal((16, 32), dtype=np.float32) * 0.5)
        stores = {}
        try:
            stores[f"torch on {ctx.device_name}"] = TorchVectorStore(ids, vectors, class_id, image_id,
                                                                     device=ctx.device)
        except Exception as exc:  # the faiss rows still run
            row(f"search {n:,} x 32: torch on {ctx.device_name}", "failed", f"{type(exc).__name__}: {exc}")
        if ctx.found.get("faiss"):
            stores["faiss IndexFlatL2 (CPU)"] = memory_store("faiss", ids, vectors, class_id, image_id)
        answers = {}
        for name, store in stores.items():
            ms = median_ms(lambda: store.search(queries, 64), ctx.search_repeats, warm=2)
            answers[name] = store.search(queries, 64).ids
            filtered = median_ms(lambda: store.search(queries, 64, class_id=3), ctx.search_repeats, warm=1)
            row(f"search {n:,} x 32, 16 queries, top-64: {name}", f"{ms:.2f} ms", f"class filter: {filtered:.2f} ms")
            store.close()
        if len(answers) == 2:
            a, b = answers.values()
            print(f"   same neighbours from both: {np.mean(a == b):.4f} of the ids", flush=True)
        del vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = ROOT / ".devdata" if (ROOT / ".devdata").is_dir() else ROOT.parent / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--device", default=None, help="torch device (default: 0 when CUDA is there, else cpu)")
    parser.add_argument("--images", type=int, default=None, help="files in the analysed folder (default 1024)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    parser.add_argument("--budget-s", type=float, default=280.0)
    parser.add_argument("--quick", action="store_true", help="small sizes (on the CPU: checks that it runs)")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    device = args.device or ("0" if torch.cuda.is_available() else "cpu")
    found = check_environment(device)
    if found.get("ultralytics") is None:
        print("objsearch's detector needs ultralytics: only the decode and search rows can run")

    from objsearch.config import load_config
    from objsearch.detector import device_name

    class Ctx:
        pass

    ctx = Ctx()
    ctx.found, ctx.device, ctx.data = found, device, args.data
    ctx.device_name = device_name(device)
    ctx.cuda = ctx.device_name.startswith("cuda")
    ctx.weights = args.data / "weights" / "yolo11n-reconstructed.pt"
    ctx.bus = args.data / "samples" / "bus.jpg"
    ctx.imgsz = 640
    quick = args.quick
    n_images = args.images or (16 if quick else 1024)
    ctx.batches = [1, 2, 4] if quick else [1, 8, 32, 64]
    ctx.ref_batch = 4 if quick else 32
    ctx.bare_batches = [(1, False), (ctx.ref_batch, False), (ctx.ref_batch, True)]
    ctx.ceiling = [(False, 1), (False, 2), (True, 2)] if quick else [(False, 1), (False, 64), (True, 64)]
    ctx.ceiling_repeats = 3 if quick else 20
    ctx.query_repeats = 5 if quick else 30
    ctx.search_sizes = [10_000, 50_000] if quick else [376_459, 10_000_000]
    ctx.search_repeats = 5 if quick else 20
    ctx.bare, ctx.warm_query_ms, ctx.index, ctx.detector = {}, None, None, None
    ctx.cfg = load_config(None, device=device, weights=str(ctx.weights))
    print(f"table: {'quick sizes, ' if quick else ''}{n_images} images, device {ctx.device_name}, weights "
          f"{ctx.weights.name}, budget {args.budget_s:.0f} s\n")
    print("| what | value | note |\n|---|---|---|", flush=True)
    stages = Stages(args.budget_s)
    with tempfile.TemporaryDirectory() as tmp:
        ctx.tmp = Path(tmp)
        ctx.files = make_folder(args.data, n_images, ctx.tmp)
        ctx.folder = ctx.files[0].parent
        # the short stages first, the analysis (the longest, ~2 minutes on an H200) last
        stages.run("cv2.imread", bench_decode, ctx)
        stages.run("search", bench_search, ctx)
        if found.get("ultralytics"):
            from objsearch.provenance import load_detector

            ctx.detector = load_detector(ctx.cfg)
            stages.run("network alone", bench_ceiling, ctx)
            stages.run("query and live", bench_query, ctx)
            if ctx.index is not None:
                stages.run("one-off query process", bench_one_off, ctx)
            stages.run("bare YOLO.predict", bench_bare_predict, ctx)
            ctx.stages = stages
            stages.run("objsearch analysis", bench_analysis, ctx)
    print(f"\n{stages.elapsed():.0f} s in all", flush=True)
    if args.out is not None:
        lines = [f"device {ctx.device_name} ({torch.cuda.get_device_name(0) if ctx.cuda else 'CPU'}), "
                 f"{n_images} images, weights {ctx.weights.name}, runtime {ctx.cfg['runtime']}, "
                 f"{stages.elapsed():.0f} s", "", "| what | value | note |", "|---|---|---|"]
        lines += [f"| {w} | {v} | {n} |" for w, v, n in ROWS]
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
