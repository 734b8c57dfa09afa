"""The ``objsearch`` command line: each command a typed function whose docstring is its help, declaring its
arguments and printing what the library returns. Every error a user can cause ends in one line on stderr and a
non-zero exit code (``objsearch.errors``); how errors and progress are shown lives in ``objsearch.cli_support``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from objsearch.cli_support import (Commands, echo_lines, err, handle_errors, job_progress, print_summary, run_job,
                                   show_one_time_work, stage_progress)
from objsearch.config import find_demo_index, load_config, parse_dims
from objsearch.errors import ExitCode, ObjsearchError
from objsearch.inputs import QueryImages, expand_query_inputs, search_queries
from objsearch.outputs import check_index_output, check_not_input, index_files, open_for_writing, picture_paths
from objsearch.projection import PROJECTION_METHODS
from objsearch.runtimes import RUNTIMES
from objsearch.summary import result_lines
from objsearch.vectors import BACKENDS


# rich_markup_mode=None: plain help text, wrapped to the terminal (rich markup ate "[fast]" and "[milvus]")
app = typer.Typer(name="objsearch", cls=Commands, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None, help="Object-level reverse image search: YOLO detections, their own features, a KD-tree.")


# a flag with a fixed set of values is a Literal (case-insensitive): a value outside it is a usage error naming them
ModeOpt = Annotated[Literal["objects", "image"], typer.Option(
    "--mode", case_sensitive=False, help="objects (each object's neighbours) or image (whole images).")]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help="Detector checkpoint (.pt).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML config (default: cfg/default.yaml).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, 0 (a GPU index: cuda:0), cuda, cuda:1, mps.")]
RuntimeOpt = Annotated[Optional[Literal[(*RUNTIMES, "auto")]], typer.Option(
    "--runtime", case_sensitive=False,
    help="What runs the detector: auto (onnx on the CPU once its exported graph matched torch, else torch); torch; "
         "onnx or openvino (CPU only; the same boxes and features; openvino: pip install 'objsearch[fast]'). "
         "Default: the config's runtime key (auto).")]


def _index_file(value: Path | None) -> Path | None:
    """An index path as given, refused at once when it names something other than a file (a folder, a device, a
    FIFO): a usage error naming the flag. A missing file is left to the catalog (exit 3, "does not exist")."""
    if value is not None and value.exists() and not value.is_file():
        kind = "a folder" if value.is_dir() else "not a regular file"
        raise typer.BadParameter(f"{value} is {kind}; an index is a file (.h5)")
    return value


IndexOpt = Annotated[Path, typer.Option("--index", "-i", callback=_index_file, help="Index file (.h5).")]
IndexArg = Annotated[Path, typer.Argument(callback=_index_file, help="Index file (.h5).")]


NO_TORCH_COMMANDS = {"info", "trust"}  # these do not pay for importing torch (about 2.5 s) just to set its threads


def _print_version(value: bool) -> None:
    if value:
        from objsearch import __version__

        typer.echo(f"objsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    ctx: typer.Context,
    _version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                           help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, envvar="OBJSEARCH_THREADS", show_default=False,
        help="CPU threads for the detector, OpenCV and faiss (default: CPU cores - 1, at least 1).")] = None,
) -> None:
    from objsearch.threads import set_threads

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    show_one_time_work()
    set_threads(threads, load=ctx.invoked_subcommand not in NO_TORCH_COMMANDS)  # before any work


@app.command("threads", hidden=True)
def show_threads() -> None:
    """Print the thread counts in use as JSON (a diagnostic for --threads)."""
    from objsearch.threads import thread_counts

    typer.echo(json.dumps(thread_counts()))


GroupWindowOpt = Annotated[float, typer.Option("--group-window", min=0.0, help="Seconds: hits from one video, of one "
                                              "class, this close in time are one moment, shown by its best frame.")]
NoGroupOpt = Annotated[bool, typer.Option("--no-group", help="Show every video frame on its own (no moments).")]
BaseDirOpt = Annotated[Optional[list[str]], typer.Option(
    "--base-dir", show_default=False, help="Where the indexed images live now: FOLDER moves the first root (the "
                                           "folder analyzed), OLD=NEW or N=NEW another; repeatable.")]
BackendOpt = Annotated[Literal[BACKENDS], typer.Option("--backend", "--search", case_sensitive=False, help="Vector search: auto (the fastest exact "
                                          "method for this index; torch on a GPU for 50,000 objects or more), "
                                          "kdtree, faiss, numpy (exact), hnsw (approximate, hnswlib; its graph is "
                                          "kept beside the index), torch (exact, the vectors on --device: a GPU's "
                                          "memory with --device 0), or milvus (a Milvus collection: see "
                                          "--milvus-uri; pip install 'objsearch[milvus]').")]
MilvusUriOpt = Annotated[Optional[str], typer.Option("--milvus-uri", help="Milvus Lite database (a path ending in "
                                                     ".db) or server URI (http://host:19530); default with --backend "
                                                     "milvus: INDEX.h5.milvus.db.")]
MilvusCollectionOpt = Annotated[Optional[str], typer.Option("--milvus-collection", help="Milvus collection (default: "
                                                            "objsearch_<index uuid>_d<dims>).")]
MilvusIndexOpt = Annotated[str, typer.Option("--milvus-index", help="Milvus index of a new collection: FLAT (exact), "
                                             "HNSW, IVF_FLAT or IVF_SQ8 (approximate).")]


def _milvus_follow(index: Path, uri: str | None, collection: str | None, previous) -> None:
    """After a job: bring the index's Milvus collections (every stored dims) in step on ``uri``, when given."""
    if uri is None:
        return
    from objsearch.vectors import follow_index

    for dims, added, removed in follow_index(index, uri, collection=collection, previous=previous):
        typer.echo(f"milvus {uri}: {dims} dims: {added} objects added, {removed} removed")


def _catalog_state(index: Path, uri: str | None):
    """(uuid, generation, object ids) of an index before a job, for ``_milvus_follow``; None without --milvus-uri."""
    if uri is None:
        return None
    from objsearch.catalog import Catalog

    with Catalog(index) as catalog:
        return catalog.uuid, catalog.generation, catalog.object_id.copy()


@app.command()
@handle_errors
def analyze(
    folder: Annotated[Path, typer.Argument(help="Folder of images, walked recursively.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index file to write (.h5).")],
    weights: WeightsOpt = None,
    dims: Annotated[Optional[str], typer.Option(help="Projection dims, e.g. 32 or 16,32,64,128,256.")] = None,
    projection: Annotated[Optional[Literal[PROJECTION_METHODS]], typer.Option(
        case_sensitive=False, help="random or pca (default: the config's).")] = None,
    conf: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Minimum detection confidence.")] = None,
    imgsz: Annotated[Optional[int], typer.Option(min=32, help="Inference size, pixels.")] = None,
    device: DeviceOpt = None,
    recipe: Annotated[Optional[str], typer.Option(help="Feature blocks, e.g. cls_logits:1.5,neck_roi:1.")] = None,
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index file.")] = False,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Images per detector forward pass (same input shape "
                                                 "only).")] = None,
    engine: Annotated[Literal["local", "ray"], typer.Option("--engine", case_sensitive=False, help="local (this process), or ray (Ray Data: reading, "
                                        "decoding and detection as stages, one detector actor per GPU; pip install "
                                        "'objsearch[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to run on (host:6379 or "
                                                       "auto); default: a local Ray for this run.")] = None,
    runtime: RuntimeOpt = None,
    video_fps: Annotated[Optional[float], typer.Option("--video-fps", help="Frames per second sampled from each "
                                                       "video (default 1); the index keeps it for add and sync.")] = None,
    video_stride: Annotated[Optional[int], typer.Option("--video-stride", min=1, help="Sample every N-th frame of "
                                                        "each video instead of --video-fps.")] = None,
) -> None:
    """Analyze every image and video (.mp4 .mov .avi .mkv .webm .m4v .mpg .mpeg .wmv) under FOLDER into a new
    index file; each sampled video frame is one media item. An interrupted run resumes when run again (in the middle
    of a video too); a finished index is brought up to date with 'objsearch sync'."""
    if engine not in ("local", "ray"):
        raise ObjsearchError(f"--engine must be local or ray, got {engine!r}")
    if ray_address is not None and engine != "ray":
        raise ObjsearchError("--ray-address goes with --engine ray")
    if engine == "ray":
        from objsearch.distributed import analyze as ray_analyze

        run_analyze = functools.partial(ray_analyze, ray_address=ray_address)
    else:
        from objsearch.analysis import analyze as run_analyze

    if video_fps is not None and video_stride is not None:
        raise ObjsearchError("--video-fps and --video-stride are two ways to sample videos; give one")
    cfg = load_config(config, dims=dims, projection=projection, conf=conf, imgsz=imgsz, device=device,
                      feature_recipe=recipe, weights=weights, batch=batch, runtime=runtime, video_fps=video_fps,
                      video_stride=video_stride)
    check_not_input(output, [folder])
    check_index_output(output)
    run_job("analyze", "analyzed", run_analyze, folder, output, cfg, overwrite=overwrite)


@app.command()
@handle_errors
def add(
    paths: Annotated[list[Path], typer.Argument(help="Image and video files or folders (under the index's base directory).")],
    index: IndexOpt,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Analyze images and add them to an index, with the index's own weights, recipe and projection. Only the new
    images are analyzed; the file is extended, not rewritten. With --milvus-uri the index's Milvus collections are
    updated too (otherwise the next search with --backend milvus updates them)."""
    from objsearch.analysis import add as run_add

    previous = _catalog_state(index, milvus_uri)
    run_job("add", "added", run_add, index, paths, weights=weights, device=device, runtime=runtime)
    _milvus_follow(index, milvus_uri, milvus_collection, previous)


@app.command()
@handle_errors
def remove(
    index: IndexOpt,
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Indexed images or folders to remove.")] = None,
    missing: Annotated[bool, typer.Option(help="Also remove every indexed image whose file is gone.")] = False,
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
) -> None:
    """Remove images and videos (and their objects) from an index; their ids are never reused. A path the index
    does not hold is named (exit code 2 at the end). 'objsearch compact' reclaims the space."""
    from objsearch.analysis import remove as run_remove

    if not paths and not missing:
        raise ObjsearchError("name images or folders to remove, or pass --missing")
    from objsearch.summary import count
    from objsearch.types import printable

    previous = _catalog_state(index, milvus_uri)
    summary = run_remove(index, paths or [], missing=missing)
    for path in summary.not_indexed:
        err(f"{printable(path)} is not in {printable(str(index))} (no indexed image or video is that file or under "
             f"that folder)")
    typer.echo(f"removed {count(summary.n_removed, 'image')} ({count(summary.n_removed_objects, 'object')}) from "
               f"{index} ({count(summary.n_images, 'image')}, {count(summary.n_objects, 'object')} left) in "
               f"{summary.seconds:.1f} s")
    _milvus_follow(index, milvus_uri, milvus_collection, previous)
    if summary.not_indexed:
        raise typer.Exit(ExitCode.UNREADABLE_INPUT)


@app.command()
@handle_errors
def sync(
    index: IndexOpt,
    folder: Annotated[Optional[Path], typer.Argument(help="Folder to bring the index in step with (default: its "
                                                     "base directory).")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Bring an index in step with its folder: add new images, analyze changed ones again, remove deleted ones."""
    from objsearch.analysis import sync as run_sync

    previous = _catalog_state(index, milvus_uri)
    run_job("sync", "synced: added", run_sync, index, folder, weights=weights, device=device, runtime=runtime)
    _milvus_follow(index, milvus_uri, milvus_collection, previous)


@app.command()
@handle_errors
def trust(
    index: IndexArg,
    base_dir: BaseDirOpt = None,
) -> None:
    """Record an index's image folders as yours, so that its images are read from them without --base-dir: for an
    index made on another machine or by an older objsearch. Only the folders it names are read (docs/security.md)."""
    from objsearch.analysis import trust as run_trust
    from objsearch.types import printable

    folders = run_trust(index, base_dir)
    typer.echo(f"{index}: recorded as yours: " + ", ".join(f"root {i} {printable(f)}" for i, f in enumerate(folders)))


@app.command()
@handle_errors
def watch(
    index: IndexOpt,
    folders: Annotated[Optional[list[Path]], typer.Argument(help="Folders to watch, recursively (default: every "
                                                            "folder of the index).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Catch up once and exit (the same as sync).")] = False,
    settle: Annotated[float, typer.Option("--settle", min=0.0, help="Seconds a file must be quiet (and closed) "
                                                                    "before it is analyzed.")] = 0.5,
    polling: Annotated[bool, typer.Option("--polling", help="Poll the folders instead of listening to the "
                                                            "system's file events (network file systems).")] = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Keep an index in step with its folders: analyze new and changed images and videos as they arrive, remove
    deleted ones (Ctrl-C stops; the next start catches up)."""
    from objsearch.types import printable
    from objsearch.watch import Watcher, WatchSettings

    watcher = Watcher(index, folders, weights=weights, device=device, runtime=runtime,
                      settings=WatchSettings(settle_s=settle, polling=polling))
    if once:
        run_job("sync", "synced: added", watcher.catch_up)
        return

    def caught_up(summary) -> None:
        print_summary("synced: added", summary)
        typer.echo(f"watching {', '.join(printable(str(f)) for f in watcher.folders)} -> {index} (Ctrl-C stops)",
                   err=True)

    watcher.watch_until_interrupted(on_caught_up=caught_up, on_job=lambda summary: print_summary(
        time.strftime("%H:%M:%S") + " added", summary))
    typer.echo("stopped watching", err=True)


@app.command()
@handle_errors
def duplicates(
    index: IndexOpt,
    objects: Annotated[bool, typer.Option("--objects", help="Groups of the same object seen in several images or "
                                                            "frames.")] = False,
    images: Annotated[bool, typer.Option("--images", help="Groups of near-identical images and frames (the "
                                                          "default).")] = False,
    threshold: Annotated[Optional[float], typer.Option("--threshold", min=0.0, help="Largest distance between two "
                                                       "near-duplicates (default: 0.12 images, 0.25 objects).")] = None,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension compared (default 32).")] = None,
    backend: BackendOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print every group as one JSON object.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write one picture per group into.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Groups printed (--json and --out: all).")] = 20,
    base_dir: BaseDirOpt = None,
) -> None:
    """Find near-duplicate images (resized, re-encoded, cropped a little; consecutive video frames) or objects in
    an index, in groups with a representative each."""
    from objsearch.catalog import Catalog
    from objsearch.duplicates import find_duplicates, report_to_dict, write_group_pictures
    from objsearch.summary import duplicates_lines

    if objects and images:
        raise ObjsearchError("pass --objects or --images, not both")
    kind = "objects" if objects else "images"
    with Catalog(index) as catalog:
        try:
            report = find_duplicates(catalog, kind=kind, threshold=threshold, dims=dims, backend=backend)
        except ValueError as exc:
            raise ObjsearchError(str(exc)) from None
        if out is not None:
            written = write_group_pictures(report, catalog, out, base_dir=base_dir)
            typer.echo(f"wrote {len(written)} pictures to {out}", err=True)
        if as_json:
            typer.echo(json.dumps(report_to_dict(report, catalog)))
            return
        lines = duplicates_lines(report_to_dict(report, catalog, limit=limit), report)
    echo_lines(lines)


@app.command()
@handle_errors
def compact(index: IndexArg) -> None:
    """Rewrite an index without its removed rows (ids stay the same)."""
    from objsearch.analysis import compact as run_compact

    t0 = time.perf_counter()
    before, after = run_compact(index)
    typer.echo(f"compacted {index}: {before} object rows -> {after} in {time.perf_counter() - t0:.1f} s")


@app.command()
@handle_errors
def repair(index: IndexArg) -> None:
    """Roll back a transaction that a killed writer left unfinished (any command that writes does it too)."""
    from objsearch.catalog import repair as run_repair

    rolled = run_repair(index)
    typer.echo(f"{index}: {'rolled back an unfinished transaction' if rolled else 'nothing to repair'}")


@app.command()
@handle_errors
def convert(
    source: Annotated[Path, typer.Argument(help="Index file of format 1.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New index file (format 2).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Convert an index of format 1 to format 2 (stable ids; add, remove and sync). Nothing is analyzed again."""
    from objsearch.catalog import convert as run_convert

    check_not_input(output, index_files(source))
    check_index_output(output)
    t0 = time.perf_counter()
    run_convert(source, output, overwrite=overwrite)
    typer.echo(f"converted {source} -> {output} in {time.perf_counter() - t0:.1f} s")


@app.command()
@handle_errors
def query(
    images: Annotated[list[str], typer.Argument(help="Query images: files, folders, glob patterns ('*.jpg') or "
                                                     "http(s) URLs.")],
    index: IndexOpt,
    k: Annotated[int, typer.Option("-k", "--k", "--top-k", min=1, help="Neighbours per object.")] = 16,
    same_class: Annotated[bool, typer.Option(help="Only neighbours of the object's detected class.")] = False,
    include_self: Annotated[bool, typer.Option(help="Keep objects of the query image itself when it is indexed.")] = False,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension to search (stored in the index).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per query image (JSON Lines).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result picture (.jpg or .png); an "
                                                 "existing folder: one picture per query image, named after "
                                                 "it.")] = None,
    save: Annotated[bool, typer.Option("--save", help="Without --out: write one picture per query image into "
                                       "runs/query/N, a new numbered folder.")] = False,
    weights: WeightsOpt = None,
    base_dir: BaseDirOpt = None,
    device: DeviceOpt = None,
    conf: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Minimum detection confidence.")] = None,
    backend: BackendOpt = "auto",
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
    milvus_index: MilvusIndexOpt = "FLAT",
    runtime: RuntimeOpt = None,
    group_window: GroupWindowOpt = 2.0,
    no_group: NoGroupOpt = False,
    mode: ModeOpt = "objects",
) -> None:
    """Find the nearest indexed objects of every object in each query image (--mode image: the most similar
    whole images, one row). Prints each object with its k neighbours; --json prints JSON Lines; --out writes a
    picture (a folder: one picture per query image), --save one per image into runs/query/N. With several images,
    one that cannot be read prints an error line and the others go on (exit code 2 at the end)."""
    from objsearch.engine import Engine
    from objsearch.errors import ImageReadError

    if mode == "image" and same_class:
        raise ObjsearchError("--same-class applies to --mode objects (whole images have no one class)")
    items = expand_query_inputs(list(images))
    pictures = picture_paths(items, out, save)
    for target in pictures.values():
        check_not_input(target, [*(i for i in items if isinstance(i, Path)), *index_files(index)])
    queries = QueryImages(items)  # the first decoded now: a bad only image fails before the detector loads
    n_failed = 0
    with Engine(index, weights=weights, base_dir=base_dir, dims=dims, device=device, conf=conf,
                backend=_backend(backend, milvus_uri, milvus_collection, milvus_index), runtime=runtime) as engine:
        for item, result in search_queries(engine, queries, mode=mode, k=k, same_class=same_class,
                                           include_self=include_self, group_s=None if no_group else group_window,
                                           pictures=pictures):
            if isinstance(result, ImageReadError):
                err(str(result))
                n_failed += 1
                continue
            echo_lines([json.dumps(result.to_dict())] if as_json else result_lines(item, result))
    if pictures and not as_json:
        written = sorted({p.parent for p in pictures.values()})
        typer.echo(f"wrote {pictures[0]}" if len(items) == 1 and 0 in pictures else
                   f"wrote {len(pictures) - n_failed} pictures to {', '.join(map(str, written))}")
    if n_failed:
        raise typer.Exit(ExitCode.UNREADABLE_INPUT)


@app.command()
@handle_errors
def info(index: IndexArg) -> None:
    """Counts, dims, model, classes and size on disk of an index file."""
    from objsearch.catalog import Catalog
    from objsearch.summary import summarize

    with Catalog(index) as catalog:
        lines = summarize(catalog, index).lines()
    echo_lines(lines)


@app.command("eval")
@handle_errors
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder with images/ and YOLO-format labels/: the index.")],
    queries: Annotated[Optional[Path], typer.Option(
        help="A second labeled folder whose objects query the index (realistic protocol); without it the index's "
             "own objects query it, leaving their own image out.")] = None,
    protocol: Annotated[Literal["realistic", "matched", "both"], typer.Option(
        case_sensitive=False, help="realistic, matched or both.")] = "both",
    dims: Annotated[str, typer.Option(help="Comma-separated projection dims.")] = "16,32,64,128,256",
    projection: Annotated[Optional[Literal[PROJECTION_METHODS]], typer.Option(
        case_sensitive=False, help="random or pca (default: the config's).")] = None,
    weights: WeightsOpt = None,
    recipe: Annotated[Optional[str], typer.Option(help="Feature blocks, e.g. cls_logits:1.5,neck_roi:1.")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runtime: RuntimeOpt = None,
    mode: ModeOpt = "objects",
    limit: Annotated[Optional[int], typer.Option(min=1, help="--mode image: use the first N images only.")] = None,
    peer: Annotated[bool, typer.Option(help="--mode image: also score ultralytics' YOLO.embed() (a second pass).")] = True,
) -> None:
    """Retrieval quality on labeled images: class precision@1/5/16 and instance recall@1 per dimension.

    The realistic protocol indexes every detection analyze would keep and counts a neighbour right only when it
    matches a labeled object of the query's class; the matched protocol indexes only detections that match a
    labeled object (see objsearch/evaluate.py). --mode image: whole-image precision@1/5/10 and instance
    recall@1, against ultralytics' YOLO.embed()."""
    from objsearch.eval_report import run_eval

    cfg = load_config(config, projection=projection, device=device, feature_recipe=recipe, weights=weights,
                      runtime=runtime)
    progress, close = stage_progress()
    try:
        report = run_eval(data_dir, cfg, parse_dims(dims), queries=queries, protocol=protocol, mode=mode, limit=limit,
                          peer=peer, progress=progress)
    finally:
        close()
    echo_lines([json.dumps(report.to_dict())] if as_json else report.lines())


@app.command()
@handle_errors
def video(
    file: Annotated[Path, typer.Argument(help="Video file.")],
    index: IndexOpt,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write an annotated H.264 video (.mp4).")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write one JSON line per analyzed frame ('-': stdout).")] = None,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Analyze every N-th frame.")] = 1,
    k: Annotated[int, typer.Option("-k", "--k", "--top-k", min=1, help="Neighbours per object.")] = 8,
    same_class: Annotated[bool, typer.Option(help="Only neighbours of the object's detected class.")] = False,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension to search (stored in the index).")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many analyzed frames.")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    conf: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Minimum detection confidence.")] = None,
    backend: BackendOpt = "auto",
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
    milvus_index: MilvusIndexOpt = "FLAT",
    runtime: RuntimeOpt = None,
    group_window: GroupWindowOpt = 2.0,
    no_group: NoGroupOpt = False,
    summary: Annotated[bool, typer.Option("--summary", help="Reverse video search: aggregate over the frames and "
                                          "print, per indexed video, the moments the query video's objects found "
                                          "(how many objects, best distance), ranked.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --summary: print the summary as one JSON object.")] = False,
) -> None:
    """Search the objects of a video's frames without a display. Each analyzed frame is one JSON line: the
    'query --json' object plus "frame" (its number in the file) and "timestamp_s". With --summary, the indexed
    videos the query video matches, ranked, with their moments (reverse video search)."""
    from objsearch.engine import Engine
    from objsearch.live import QuerySettings
    from objsearch.sources import VideoFileSource
    from objsearch.video_search import check_video_outputs, search_video_file

    if as_json and not summary:
        raise ObjsearchError("--json goes with --summary (the frames' JSON lines are --jsonl)")
    if out is None and jsonl is None and not summary:
        jsonl = Path("-")
    check_video_outputs(file, index, out, jsonl)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(VideoFileSource(file))
        engine = stack.enter_context(Engine(index, weights=weights, dims=dims, device=device, conf=conf,
                                            backend=_backend(backend, milvus_uri, milvus_collection,
                                                             milvus_index), runtime=runtime))
        lines = sys.stdout if jsonl == Path("-") else (stack.enter_context(open_for_writing(jsonl)) if jsonl else None)
        progress, close = job_progress("frames")
        stack.callback(close)
        run = search_video_file(engine, source, QuerySettings(k=k, same_class=same_class, group_s=None if no_group
                                                              else group_window),
                                stride=stride, max_frames=max_frames, out=out, lines=lines, keep_results=summary,
                                progress=progress)
    typer.echo(f"analyzed {run.n_frames} frames of {file} (stride {stride}), {run.n_objects} objects, "
               f"{run.frames_per_s:.1f} frames/s" + (f" -> {out}" if out else ""), err=True)
    if summary:  # the reverse video search's ranked videos and moments
        from objsearch.moments import summarize_video_matches
        from objsearch.summary import video_summary, video_summary_lines

        found = summarize_video_matches(run.results, group_window)
        n = {"n_frames": run.n_frames, "n_objects": run.n_objects}
        echo_lines([json.dumps(video_summary(file, found, window_s=group_window, **n))] if as_json
                   else video_summary_lines(file, found, **n))


@app.command("app")
@handle_errors
def desktop_app(
    index: Annotated[Optional[Path], typer.Option("--index", "-i", callback=_index_file, help="Index file "
                                                  "(default: runs/demo/coco128.h5 in this folder or the project's, "
                                                  "when the demo made one).")] = None,
    source: Annotated[Optional[str], typer.Option(help="Start with: random, webcam[:N], screen, or an image or "
                                                  "video file.")] = None,
    base_dir: BaseDirOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    milvus_uri: MilvusUriOpt = None,
    milvus_collection: MilvusCollectionOpt = None,
    milvus_index: MilvusIndexOpt = "FLAT",
    runtime: RuntimeOpt = None,
) -> None:
    """Open the desktop app: live object search from a random image, an image file, a webcam, a video or the
    screen."""
    from objsearch.gui.display import require_display

    require_display()
    if index is not None:  # a damaged or foreign index named here: one line, before any window opens
        from objsearch.catalog import Catalog

        Catalog(index).close()
    index = index or find_demo_index()
    try:
        from objsearch.gui.display import drop_opencv_plugin_path, probe_display
        from objsearch.gui.window import run_app
    except ImportError as exc:
        raise ObjsearchError(f"the desktop app needs PyQt6 and pyqtgraph: {exc}") from None
    store = {"backend": _backend(backend, milvus_uri, milvus_collection, milvus_index), "runtime": runtime}
    drop_opencv_plugin_path()  # importing cv2 pointed Qt at OpenCV's own Qt 5 plugins
    probe_display()  # Qt aborts the process when it cannot open a display: ask a child first
    raise typer.Exit(run_app(index, base_dir=base_dir, weights=weights, device=device, source=source, **store))


def _backend(backend: str, milvus_uri: str | None, milvus_collection: str | None = None, milvus_index: str = "FLAT"):
    """The vector backend the flags choose (an ``objsearch.vectors.registry.BackendChoice``): ``--milvus-uri`` alone
    means ``--backend milvus``, with another explicit backend it is refused; the ``--milvus-*`` flags are the
    ``milvus`` backend's options."""
    from objsearch.vectors.milvus import MilvusOptions
    from objsearch.vectors.registry import choose

    if milvus_uri is not None and backend not in ("milvus", "auto"):
        raise ObjsearchError(f"--milvus-uri goes with --backend milvus, not --backend {backend}")
    name = "milvus" if milvus_uri is not None else backend
    return choose(name, MilvusOptions(milvus_uri, milvus_collection, milvus_index) if name == "milvus" else None)


@app.command()
@handle_errors
def serve(
    index: IndexOpt,
    host: Annotated[str, typer.Option(help="Address to listen on (other machines reach it only when this is not "
                                           "127.0.0.1).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    backend: BackendOpt = "auto",
    base_dir: BaseDirOpt = None,
    dims: Annotated[Optional[int], typer.Option(help="Projection dimension searched by default.")] = None,
    allow_private_urls: Annotated[bool, typer.Option(help="Let URL queries reach loopback, private and link-local "
                                                          "addresses (refused by default).")] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest upload or request body, MB.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest query image, pixels (header checked before "
                                                      "decoding).")] = 100_000_000,
    workers: Annotated[int, typer.Option(min=1, help="Searches that run at once (more wait).")] = 2,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    token: Annotated[Optional[str], typer.Option(envvar="OBJSEARCH_TOKEN", show_default=False, help="Secret every "
                                                 "API request must carry (required when --host is not loopback); "
                                                 "open the page once as /?token=SECRET.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep the index in step with its folder while serving (as "
                                                        "objsearch watch); the page shows new items.")] = False,
    settle: Annotated[float, typer.Option("--settle", min=0.0, help="With --watch: seconds a file must be quiet "
                                                                    "before it is analyzed.")] = 0.5,
) -> None:
    """Serve a web page and a JSON API (POST /api/search, GET /api/thumbnail/ID, GET /api/info, GET /api/map) over
    an index."""
    try:
        from objsearch.web import WebSettings, serve as run_server
    except ImportError as exc:
        raise ObjsearchError(f"the web server needs fastapi and uvicorn (pip install 'objsearch[web]'): {exc}") from None
    settings = WebSettings(max_upload_bytes=int(max_upload_mb * (1 << 20)), max_pixels=max_pixels,
                           allow_private_urls=allow_private_urls, workers=workers, token=token)
    from objsearch.watch import WatchSettings

    run_server(index, host=host, port=port, backend=backend, base_dir=base_dir, weights=weights, device=device,
               dims=dims, settings=settings, echo=lambda line: typer.echo(line, err=True),
               watch=[] if watch else None, watch_settings=WatchSettings(settle_s=settle))


@app.command()
@handle_errors
def demo(
    folder: Annotated[Optional[Path], typer.Argument(help="Image folder (default: coco128).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the index and picture go.")] = Path("runs/demo"),
    weights: WeightsOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Analyze again even when the index exists.")] = False,
) -> None:
    """Analyze a sample folder, query bus.jpg (or its first image) and write the result picture."""
    from objsearch.analysis import analyze as run_analyze
    from objsearch.demo import demo_folder, demo_query_image, is_finished_index

    folder = folder or demo_folder()
    index = out_dir / f"{folder.name}.h5"
    if not overwrite and is_finished_index(index):
        typer.echo(f"using the existing index {index} (--overwrite analyzes again)")
    else:
        progress, close = job_progress("analyze")
        try:
            summary = run_analyze(folder, index, load_config(None, weights=weights), overwrite=overwrite,
                                  progress=progress)
        finally:
            close()
        typer.echo(f"analyzed {summary.n_images} images, {summary.n_objects} objects in {summary.seconds:.1f} s -> {index}")
    query_image = demo_query_image(folder)
    picture = out_dir / f"query_{query_image.stem}.jpg"
    query([str(query_image)], index, k=8, same_class=False, include_self=False, dims=None, as_json=False, out=picture,
          weights=weights, base_dir=None, device=None, conf=None, backend="auto")
    typer.echo(f"result picture: {picture.resolve()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
