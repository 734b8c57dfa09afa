"""The ``objsearch`` command line: a thin shell over ``objsearch.engine``.

Every error a user can cause ends in one line on stderr and a non-zero exit code (see ``objsearch.errors``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from objsearch.config import PROJECT_ROOT, load_config, parse_dims
from objsearch.errors import ObjsearchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Object-level reverse image search: YOLO detections, their own features, a KD-tree.")

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help="Detector checkpoint (.pt).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config (default: cfg/default.yaml).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:0, mps.")]


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def handle_errors(func):
    """Turn user errors into one line and an exit code; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ObjsearchError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("interrupted (an analysis resumes when run again with the same command)")
            raise typer.Exit(130) from None

    return wrapper


NO_TORCH_COMMANDS = {"info"}  # these do not pay for importing torch (about 2.5 s) just to set its threads


@app.callback()
def _setup(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, envvar="OBJSEARCH_THREADS", show_default=False,
        help="CPU threads for the detector, OpenCV and faiss (default: CPU cores - 1, at least 1).")] = None,
) -> None:
    from objsearch.threads import set_threads

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    set_threads(threads, load=ctx.invoked_subcommand not in NO_TORCH_COMMANDS)  # before any work


@app.command("threads", hidden=True)
def show_threads() -> None:
    """Print the thread counts in use as JSON (a diagnostic for --threads)."""
    from objsearch.threads import thread_counts

    typer.echo(json.dumps(thread_counts()))


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total_: int, objects: int) -> None:
        bar.n = done
        bar.set_postfix(objects=objects, refresh=False)
        bar.refresh()

    return bar, update


@app.command()
@handle_errors
def analyze(
    folder: Annotated[Path, typer.Argument(help="Folder of images, walked recursively.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index file to write (.h5).")],
    weights: WeightsOpt = None,
    dims: Annotated[Optional[str], typer.Option(help="Projection dims, e.g. 32 or 16,32,64,128,256.")] = None,
    projection: Annotated[Optional[str], typer.Option(help="random or pca.")] = None,
    conf: Annotated[Optional[float], typer.Option(help="Minimum detection confidence.")] = None,
    imgsz: Annotated[Optional[int], typer.Option(help="Inference size, pixels.")] = None,
    device: DeviceOpt = None,
    recipe: Annotated[Optional[str], typer.Option(help="Feature blocks, e.g. cls_logits:2.5,neck_roi:1.")] = None,
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index file.")] = False,
    batch: Annotated[Optional[int], typer.Option(help="Images per detector forward pass (same input shape only).")] = None,
) -> None:
    """Analyze every image under FOLDER into an index file. An interrupted run resumes when run again."""
    from objsearch.engine import analyze as run_analyze

    cfg = load_config(config, dims=dims, projection=projection, conf=conf, imgsz=imgsz, device=device,
                      feature_recipe=recipe, weights=weights, batch=batch)
    bar = None
    update = None

    def progress(done, total, objects):
        nonlocal bar, update
        if bar is None:
            bar, update = _progress_bar(total, "analyze")
        update(done, total, objects)

    try:
        summary = run_analyze(folder, output, cfg, overwrite=overwrite, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    typer.echo(
        f"analyzed {summary.n_images} images ({summary.n_resumed} resumed), {summary.n_objects} objects, "
        f"{summary.n_no_objects} images with no objects, {len(summary.skipped)} skipped (unreadable), "
        f"{summary.n_not_images} non-image files ignored, in {summary.seconds:.1f} s -> {summary.output}"
    )
    for path, reason in summary.skipped:
        typer.echo(f"  skipped {path}: {reason}")


@app.command()
@handle_errors
def query(
    image: Annotated[Path, typer.Argument(help="Query image.")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Index file.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per object.")] = 16,
    same_class: Annotated[bool, typer.Option(help="Only neighbours of the object's detected class.")] = False,
    include_self: Annotated[bool, typer.Option(help="Keep objects of the query image itself when it is indexed.")] = False,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension to search (stored in the index).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write a result picture (JPEG/PNG).")] = None,
    weights: WeightsOpt = None,
    base_dir: Annotated[Optional[Path], typer.Option(help="Where the indexed images live now.")] = None,
    device: DeviceOpt = None,
    conf: Annotated[Optional[float], typer.Option(help="Minimum detection confidence.")] = None,
    search: Annotated[str, typer.Option(help="Search method: auto (the fastest exact one for this index), kdtree, "
                                              "faiss, numpy (exact), or hnsw (approximate, hnswlib; builds its graph "
                                              "when the index opens).")] = "auto",
) -> None:
    """Find the nearest indexed objects of every object in IMAGE."""
    from objsearch.engine import Searcher, read_image

    read_image(image)  # a bad query image fails before the detector loads
    with Searcher(index, weights=weights, base_dir=base_dir, dims=dims, device=device, conf=conf,
                  method=search) as searcher:
        result = searcher.search_file(image, k, same_class=same_class, exclude_self=not include_self)
        payload = searcher.to_json(result)
        if out is not None:
            _write_picture(searcher, image, payload, out)
    if as_json:
        typer.echo(json.dumps(payload))
        return
    t = payload["timings_ms"]
    typer.echo(f"{image}: {len(payload['objects'])} objects, {t['total']:.0f} ms "
               f"(detect {t['detect']:.0f}, features {t['features']:.1f}, search {t['search']:.1f})")
    for obj in payload["objects"]:
        nbs = ", ".join(f"{n['label']} {n['distance']:.2f} ({n['path']})" for n in obj["neighbors"][:5])
        typer.echo(f"  {obj['label']} {obj['confidence']:.2f} {[round(v) for v in obj['box']]}: {nbs}")
    if out is not None:
        typer.echo(f"wrote {out}")


def _write_picture(searcher, image_path: Path, payload: dict, out: Path) -> None:
    import cv2

    from objsearch.engine import read_image
    from objsearch.errors import ObjsearchError
    from objsearch.render import render_result

    ids = {n["object_id"] for o in payload["objects"] for n in o["neighbors"]}
    picture = render_result(read_image(image_path), payload, {i: searcher.index.thumbnail(i) for i in ids})
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise ObjsearchError(f"cannot write picture {out} (use a .jpg or .png name in a writable folder)")


@app.command()
@handle_errors
def info(index: Annotated[Path, typer.Argument(help="Index file.")]) -> None:
    """Counts, dims, model, classes and size on disk of an index file."""
    import numpy as np

    from objsearch.store import IndexFile

    with IndexFile(index) as f:
        counts = np.bincount(f.class_id, minlength=len(f.class_names))
        top = ", ".join(f"{f.class_names[c]} {counts[c]}" for c in np.argsort(-counts)[:10] if counts[c])
        size = index.stat().st_size
        cfg = f.attrs.get("config", {})
        typer.echo(f"index      {index}")
        typer.echo(f"format     {f.attrs['format']} v{f.attrs['format_version']}, created {f.attrs.get('created', '?')}")
        typer.echo(f"images     {len(f.image_path)} (skipped {len(f.attrs.get('skipped', []))}), base dir {f.attrs.get('base_dir')}")
        typer.echo(f"objects    {len(f)} in {int((counts > 0).sum())} classes: {top}")
        typer.echo(f"features   {f.attrs['feature_recipe']}")
        typer.echo(f"projection {cfg.get('projection', '?')} to dims {f.dims} (seed {cfg.get('seed', '?')})")
        typer.echo(f"model      {f.attrs.get('weights_name')} sha256 {f.weights_sha256}")
        typer.echo(f"size       {size / 1e6:.2f} MB on disk ({size / max(len(f), 1) / 1e3:.2f} kB per object)")


@app.command("eval")
@handle_errors
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder with images/ and YOLO-format labels/.")],
    dims: Annotated[str, typer.Option(help="Comma-separated projection dims.")] = "16,32,64,128,256",
    projection: Annotated[Optional[str], typer.Option(help="random or pca.")] = None,
    weights: WeightsOpt = None,
    recipe: Annotated[Optional[str], typer.Option(help="Feature blocks, e.g. cls_logits:2.5,neck_roi:1.")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Retrieval quality on labeled images: class precision@1/5/16 and instance recall@1 per dimension."""
    from objsearch import evaluate as ev
    from objsearch.engine import load_detector
    from objsearch.errors import EmptyFolderError

    cfg = load_config(config, projection=projection, device=device, feature_recipe=recipe, weights=weights)
    dim_list = parse_dims(dims)
    images = ev.list_labeled_images(data_dir) if data_dir.is_dir() else []
    if not images:
        raise EmptyFolderError(f"{data_dir} holds no images (expected images/ and labels/ as ultralytics lays them out)")
    detector = load_detector(cfg)
    bar, update = _progress_bar(len(images), "eval")
    state = {"done": 0, "objects": 0}

    def progress(n_objects):
        state["done"] += 1
        state["objects"] += n_objects
        update(state["done"], len(images), state["objects"])

    try:
        data = ev.collect(detector, images, progress=progress)
    finally:
        bar.close()
    results = [ev.score(data, d, cfg["projection"], cfg["seed"]) for d in dim_list]
    report = {
        "data_dir": str(data_dir), "weights": Path(str(detector.weights_path)).name,
        "feature_recipe": detector.feature_recipe(), "projection": cfg["projection"],
        "n_images": data.n_images, "n_ground_truth": data.n_ground_truth, "n_detections": data.n_detections,
        "n_matched": int(len(data.features)), "coverage": data.coverage, "results": results,
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{data.n_images} images, {data.n_ground_truth} ground-truth objects, {data.n_detections} detections, "
               f"{len(data.features)} matched at IoU>=0.5; {Path(str(detector.weights_path)).name}, "
               f"features {detector.feature_recipe()['blocks']} ({detector.n_features}-d), {cfg['projection']} projection")
    typer.echo("re-detected after distortion: " + ", ".join(f"{t} {v:.3f}" for t, v in data.coverage.items()))
    typer.echo(f"{'dims':>5} | {'P@1':>6} {'P@5':>6} {'P@16':>6} | {'same P@1':>8} {'P@5':>6} {'P@16':>6} | "
               f"{'inst R@1':>8} {'flip':>6} {'0.75x':>6} {'jpeg60':>6} | {'ms/obj':>7}")
    for r in results:
        p, s, i = r["precision_at_k"], r["precision_at_k_same_class"], r["instance_recall_at_1"]
        typer.echo(f"{r['dims']:>5} | {p[1]:6.3f} {p[5]:6.3f} {p[16]:6.3f} | {s[1]:8.3f} {s[5]:6.3f} {s[16]:6.3f} | "
                   f"{i['mean']:8.3f} {i['hflip']:6.3f} {i['resize0.75']:6.3f} {i['jpeg60']:6.3f} | "
                   f"{r['query_ms_per_object']:7.4f}")


@app.command()
@handle_errors
def video(
    file: Annotated[Path, typer.Argument(help="Video file.")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Index file.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write an annotated video (.mp4).")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write one JSON line per analyzed frame ('-': stdout).")] = None,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Analyze every N-th frame.")] = 1,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per object.")] = 8,
    same_class: Annotated[bool, typer.Option(help="Only neighbours of the object's detected class.")] = False,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension to search (stored in the index).")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many analyzed frames.")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    conf: Annotated[Optional[float], typer.Option(help="Minimum detection confidence.")] = None,
) -> None:
    """Search the objects of a video's frames without a display. Each analyzed frame is one JSON line: the
    ``query --json`` object plus ``frame`` (number in the file) and ``timestamp_s``."""
    import contextlib

    from objsearch.engine import Searcher
    from objsearch.live import QuerySettings, ThumbnailCache, search_frame
    from objsearch.render import annotate_frame
    from objsearch.sources import VideoFileSource

    if out is None and jsonl is None:
        jsonl = Path("-")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(VideoFileSource(file))
        searcher = stack.enter_context(Searcher(index, weights=weights, dims=dims, device=device, conf=conf))
        settings = QuerySettings(k=k, same_class=same_class)
        cache = ThumbnailCache(searcher.index) if out is not None else None
        lines = sys.stdout if jsonl == Path("-") else (stack.enter_context(_open_for_writing(jsonl)) if jsonl else None)
        writer = None
        total = -(-source.n_frames // stride) if source.n_frames else None
        if max_frames:
            total = min(total or max_frames, max_frames)
        bar, update = _progress_bar(total, "frames")
        stack.callback(bar.close)
        n_analyzed = n_objects = 0
        t0 = time.perf_counter()
        while max_frames is None or n_analyzed < max_frames:
            if source.position % stride:
                if not source.skip():
                    break
                continue
            frame = source.read()
            if frame is None:
                break
            result = search_frame(searcher, frame, settings, cache)
            n_analyzed += 1
            n_objects += len(result.payload["objects"])
            if lines is not None:
                lines.write(json.dumps(result.payload) + "\n")
            if out is not None:
                if writer is None:
                    writer = stack.enter_context(_video_writer(out, source.fps / stride, frame.image.shape))
                writer.write(annotate_frame(frame.image, result.payload["objects"], result.thumbnails))
            update(n_analyzed, total, n_objects)
        seconds = time.perf_counter() - t0
    typer.echo(f"analyzed {n_analyzed} frames of {file} (stride {stride}), {n_objects} objects, "
               f"{n_analyzed / max(seconds, 1e-9):.1f} frames/s" + (f" -> {out}" if out else ""), err=True)


@contextlib.contextmanager
def _open_for_writing(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise ObjsearchError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _video_writer(path: Path, fps: float, shape: tuple[int, ...]):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), max(fps, 1.0), (shape[1], shape[0]))
    if not writer.isOpened():
        raise ObjsearchError(f"cannot write video {path} (use an .mp4 name in a writable folder)")
    try:
        yield writer
    finally:
        writer.release()


@app.command("app")
@handle_errors
def desktop_app(
    index: Annotated[Optional[Path], typer.Option("--index", "-i", help="Index file (default: runs/demo/coco128.h5 "
                                                  "when the demo made one).")] = None,
    source: Annotated[Optional[str], typer.Option(help="Start with: random, webcam[:N], screen, or an image or "
                                                  "video file.")] = None,
    base_dir: Annotated[Optional[Path], typer.Option(help="Where the indexed images live now.")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Open the desktop app: live object search from a random image, an image file, a webcam, a video or the
    screen."""
    import os

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        raise ObjsearchError("no display to open a window on (DISPLAY is not set); run it in a desktop session, "
                             "or under xvfb-run")
    if index is not None and not index.is_file():
        from objsearch.errors import IndexFileError

        raise IndexFileError(f"index file {index} does not exist")
    if index is None and Path("runs/demo/coco128.h5").is_file():
        index = Path("runs/demo/coco128.h5")
    try:
        from objsearch.gui.display import drop_opencv_plugin_path, probe_display
        from objsearch.gui.window import run_app
    except ImportError as exc:
        raise ObjsearchError(f"the desktop app needs PyQt6 and pyqtgraph: {exc}") from None
    drop_opencv_plugin_path()  # importing cv2 pointed Qt at OpenCV's own Qt 5 plugins
    probe_display()  # Qt aborts the process when it cannot open a display: ask a child first
    raise typer.Exit(run_app(index, base_dir=base_dir, weights=weights, device=device, source=source))


def default_demo_folder() -> Path:
    """``../shared/data/coco128`` next to the project, else ultralytics' coco128 (downloaded with a network)."""
    local = SHARED_DATA / "coco128"
    if local.is_dir():
        return local
    from objsearch.errors import EmptyFolderError

    try:
        from ultralytics.data.utils import check_det_dataset

        data = check_det_dataset("coco128.yaml")
        return Path(data["path"])
    except Exception as exc:  # no network, or ultralytics' download failed
        raise EmptyFolderError(f"no sample folder: {local} is missing and coco128 could not be downloaded ({exc})") from None


@app.command()
@handle_errors
def demo(
    folder: Annotated[Optional[Path], typer.Argument(help="Image folder (default: coco128).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the index and picture go.")] = Path("runs/demo"),
    weights: WeightsOpt = None,
) -> None:
    """Analyze a sample folder, query bus.jpg (or its first image) and write the result picture."""
    from objsearch.engine import analyze as run_analyze
    from objsearch.engine import list_images

    folder = folder or default_demo_folder()
    index = out_dir / f"{folder.name}.h5"
    if index.exists():
        typer.echo(f"using the existing index {index} (delete it to analyze again)")
    else:
        cfg = load_config(None, weights=weights)
        bar, update = _progress_bar(len(list_images(folder)), "analyze")
        try:
            summary = run_analyze(folder, index, cfg, progress=update)
        finally:
            bar.close()
        typer.echo(f"analyzed {summary.n_images} images, {summary.n_objects} objects in {summary.seconds:.1f} s -> {index}")
    bus = SHARED_DATA / "samples" / "bus.jpg"
    query_image = bus if bus.is_file() else list_images(folder)[0]
    picture = out_dir / f"query_{query_image.stem}.jpg"
    query(query_image, index, k=8, same_class=False, include_self=False, dims=None, as_json=False, out=picture,
          weights=weights, base_dir=None, device=None, conf=None, search="auto")
    typer.echo(f"result picture: {picture.resolve()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
