"""Analysis on Ray Data: the only module that imports ray (``pip install objsearch[ray]``).

``analyze(folder, output, cfg, engine="ray")`` (``objsearch analyze DIR -o INDEX.h5 --engine ray [--ray-address
ADDR]``) runs the same analysis as ``objsearch.analysis.analyze`` as a Ray Data pipeline:

1. the image paths (sorted; their position in that order is the row's ``index``) become a dataset;
2. ``map`` reads and decodes each file (Ray tasks; a file that cannot be read becomes a skipped-file row);
3. ``map_batches`` with ``_DetectStage`` detects, makes features and thumbnails: a callable class in an actor pool,
   the detector loaded once per actor, one actor per GPU where the cluster has GPUs (one actor on a CPU machine),
   ``cfg["batch"]`` images per forward pass (only images of one letterbox shape go together, as locally);
4. a ``ray.data.Datasink`` writes each block it receives as one immutable shard,
   ``INDEX.h5.shards/shard-<first index>-<last index>-<uuid>.npz`` (written to a temporary name, then renamed), holding
   the records serialised as the analysis journal serialises them;
5. when every image is in a shard, the shards are merged into the index in sorted path order through the same
   journal and ``CatalogWriter.add`` / ``commit`` path that ``add`` uses, so media and object ids equal those of a
   local run; then the projections are fitted (PCA) and the shards are deleted.

Killed at any point, a re-run with the same command keeps the finished shards (and what was merged already) and does
only the rest. Shards made with other settings (weights, recipe, thresholds) are refused with the name of the folder
to delete.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from objsearch.analysis.jobs import create_index, finish_analysis, resume_analysis
from objsearch.analysis.journal import record_from_bytes, record_key, record_to_bytes
from objsearch.analysis.runner import (JobRun, JobSummary, ProgressFn, detect_for_index, in_folder, job_settings,
                                       media_keys, relative_path)
from objsearch.errors import EmptyFolderError, ImageReadError, IndexFileError, ObjsearchError
from objsearch.media import list_media, make_thumbnail, read_image
from objsearch.provenance import job_detector
from objsearch.types import MediaRecord, MediaRef, SkippedFile

LOGGER = logging.getLogger(__name__)

SHARD_FORMAT = "objsearch-shard/1"


def shard_dir(output: Path) -> Path:
    """Where the shards of an analysis of ``output`` live: ``OUTPUT.shards``."""
    return Path(f"{output}.shards")


def _init_ray(address: str | None):
    """Connect to a Ray cluster (``address``) or start a local one; reuse one already initialised here."""
    try:
        import ray
    except ImportError:
        raise ObjsearchError("--engine ray needs Ray Data (pip install 'objsearch[ray]')") from None
    import ray.data

    context = ray.data.DataContext.get_current()
    if not LOGGER.isEnabledFor(logging.INFO):  # Ray Data's progress lines only with --verbose
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"include_dashboard": False}
        # the workers import this objsearch (a cluster's nodes need not have it installed)
        package = str(Path(__file__).resolve().parent)
        kwargs["runtime_env"] = {"py_modules": [package], "excludes": ["__pycache__", "*.pyc"]}
        try:
            ray.init(**kwargs, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ObjsearchError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                 f"{' '.join(str(exc).split())[:300]}") from None
    return ray


# ----------------------------------------------------------------------------------------------------- stages
def _read_row(row: dict) -> dict:
    """Ray ``map`` stage: read and decode one image; a failure becomes an ``error`` row (skipped file)."""
    try:
        image = read_image(row["path"], max_pixels=int(row["max_pixels"]))
        size, mtime = _identity(row["path"])
        return {**row, "image": image, "error": "", "file_size": size, "file_mtime_ns": mtime}
    except ImageReadError as exc:
        return {**row, "image": np.zeros((1, 1, 3), np.uint8), "error": str(exc), "file_size": -1,
                "file_mtime_ns": -1}


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


class _DetectStage:
    """Ray ``map_batches`` callable class: one detector per actor; a batch of decoded images in, serialised
    records out (columns ``index`` int64 and ``payload`` bytes)."""

    def __init__(self, cfg: dict, weights: str | None) -> None:
        from objsearch.provenance import load_detector

        self.cfg = cfg
        self.detector = load_detector(cfg, weights)

    def __call__(self, batch: dict) -> dict:
        cfg, detector = self.cfg, self.detector
        n = len(batch["index"])
        out: list[bytes | None] = [None] * n
        ok = [i for i in range(n) if not batch["error"][i]]
        for i in range(n):
            if batch["error"][i]:
                out[i] = record_to_bytes(int(batch["index"][i]), SkippedFile(str(batch["rel"][i]),
                                                                             str(batch["error"][i])))
        # images of one letterbox shape go together, at most cfg["batch"] per forward pass (as the local run)
        size = max(1, int(cfg.get("batch", 1)))
        groups: list[list[int]] = []
        shape = None
        for i in ok:
            s = detector.letterbox_shape(batch["image"][i].shape) if size > 1 else None
            if not groups or s != shape or len(groups[-1]) >= size:
                groups.append([])
            groups[-1].append(i)
            shape = s
        for group in groups:
            images = [np.asarray(batch["image"][i]) for i in group]
            found = detect_for_index(detector, images, cfg)
            for i, image, dets in zip(group, images, found):
                thumbs = [make_thumbnail(image, b, cfg["thumb_size"], cfg["thumb_quality"]) for b in dets.xyxy]
                media = MediaRef(path=str(batch["rel"][i]), width=image.shape[1], height=image.shape[0],
                                 file_size=int(batch["file_size"][i]), file_mtime_ns=int(batch["file_mtime_ns"][i]))
                out[i] = record_to_bytes(int(batch["index"][i]), MediaRecord(media, dets, thumbs))
        return {"index": np.asarray(batch["index"], np.int64), "payload": np.asarray(out, dtype=object)}


def _shard_sink(directory: Path, settings: dict):
    """A ``ray.data.Datasink`` writing each block as one immutable shard file in ``directory``."""
    from ray.data import Datasink

    class ShardSink(Datasink):
        def write(self, blocks, ctx) -> int:
            from ray.data.block import BlockAccessor

            index, payloads = [], []
            for block in blocks:
                for row in BlockAccessor.for_block(block).iter_rows(public_row_format=False):
                    index.append(int(row["index"]))
                    payloads.append(bytes(row["payload"]))
            if index:
                write_shard(directory, index, payloads, settings)
            return len(index)

    return ShardSink()


# ----------------------------------------------------------------------------------------------------- shards
def write_shard(directory: Path, index: list[int], payloads: list[bytes], settings: dict) -> Path:
    """Write one shard (records of images ``index``, sorted by it) atomically; returns its path."""
    order = np.argsort(np.asarray(index, np.int64), kind="stable")
    index = np.asarray(index, np.int64)[order]
    payloads = [payloads[i] for i in order]
    meta = json.dumps({"format": SHARD_FORMAT, "settings": settings}, sort_keys=True).encode()
    offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shard-{index[0]:09d}-{index[-1]:09d}-{uuid.uuid4().hex[:8]}.npz"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, meta=np.frombuffer(meta, np.uint8), index=index, offsets=offsets,
                 blob=np.frombuffer(b"".join(payloads), np.uint8))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("shard-*.npz")) if directory.is_dir() else []


def _open_shard(path: Path, settings: dict):
    """(index (n,) int64, offsets, blob) of a shard; IndexFileError when it was made with other settings."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        if meta.get("format") != SHARD_FORMAT or meta.get("settings") != json.loads(json.dumps(settings,
                                                                                               sort_keys=True)):
            raise IndexFileError(f"the shard {path} was made with other settings; run the same command to finish "
                                 f"that analysis, or delete {path.parent} to drop its finished images")
        return z["index"], z["offsets"], z["blob"]


def _shard_coverage(directory: Path, settings: dict) -> set[int]:
    """Listing positions held by finished shards (a torn ``.tmp`` is ignored: it is rewritten)."""
    done: set[int] = set()
    for p in _shard_paths(directory):
        index, _, _ = _open_shard(p, settings)
        done.update(int(i) for i in index)
    return done


def _iter_shard(path: Path, settings: dict) -> Iterator[tuple[int, bytes]]:
    index, offsets, blob = _open_shard(path, settings)
    data = blob.tobytes()
    for j, i in enumerate(index):
        yield int(i), data[offsets[j]:offsets[j + 1]]


# ------------------------------------------------------------------------------------------------- the job
def analyze(folder: str | Path, output: str | Path, cfg: dict, *, weights: str | None = None,
            overwrite: bool = False, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            detector=None, ray_address: str | None = None) -> JobSummary:
    """``objsearch.analysis.analyze`` on Ray Data (see the module docstring); the same index, ids included.

    Parameters
    ----------
    folder, output, cfg, weights, overwrite, progress, cancel, detector
        As ``objsearch.analysis.analyze``; ``detector`` (used for the index's attributes and the merge) does not
        travel to the workers, which load ``weights`` themselves (a path they can read).
    ray_address : str, optional
        A Ray cluster (``ray://host:10001`` or ``auto``); None: a local Ray started for this job.

    Raises
    ------
    EmptyFolderError, IndexFileError, WeightsNotFoundError, JobCancelled
        As ``objsearch.analysis.analyze``.
    ObjsearchError
        When Ray is not installed or the cluster cannot be reached.
    """
    t0 = time.perf_counter()
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder} is not a folder")
    listing = list_media(folder)
    if not listing.images:
        raise EmptyFolderError(f"{folder} holds no image files")
    shards = shard_dir(output)
    writer = None
    if output.exists() and not overwrite:
        from objsearch.catalog import Catalog

        with Catalog(output) as existing:
            state = existing.state
        if state == "ready":
            raise IndexFileError(f"{output} already exists; pass --overwrite to analyze everything again (or "
                                 f"`objsearch sync` to bring it up to date)")
        writer = resume_analysis(output, folder)
    detector = job_detector(cfg, weights, detector)
    weights_path = str(detector.weights_path)
    if writer is None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            Path(str(output) + ".journal").unlink(missing_ok=True)
            for p in _shard_paths(shards):
                p.unlink()
        writer = create_index(output, detector, cfg, folder, overwrite)
    settings = job_settings(detector, cfg)
    summary = JobSummary(index=output, n_other_files=listing.n_other, skipped=list(listing.skipped))
    run = None
    try:
        run = JobRun(writer, detector, cfg, in_folder(folder), summary, progress=progress, cancel=cancel)
        rels = [relative_path(p, folder) for p in listing.images]
        covered = {rel for root, rel in run.replay() | media_keys(writer) | {(s.root, s.path) for s in writer.skipped}
                   if root == 0}
        in_shards = _shard_coverage(shards, settings)
        todo = [i for i, rel in enumerate(rels) if rel not in covered and i not in in_shards]
        summary.n_resumed = len(rels) - len(todo)
        if todo:
            _run_pipeline(listing.images, rels, todo, shards, settings, cfg, weights_path, ray_address, cancel)
        run.n_total, run.n_done = len(rels), sum(1 for rel in rels if rel in covered)
        merged = _merge(run, shards, settings, covered)
        LOGGER.info("merged %d images from %s", merged, shards)
        finish_analysis(run, summary)
        for p in _shard_paths(shards):
            p.unlink()
        if shards.is_dir():
            for p in shards.glob("*.tmp"):
                p.unlink()
            shards.rmdir()
    finally:
        if run is not None:
            run.abandon()
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_pipeline(images: list[Path], rels: list[str], todo: list[int], shards: Path, settings: dict, cfg: dict,
                  weights: str, ray_address: str | None, cancel: threading.Event | None) -> None:
    """Run read -> decode -> detect -> shard on Ray Data for the listing positions ``todo``."""
    ray = _init_ray(ray_address)
    import ray.data

    if cancel is not None and cancel.is_set():
        from objsearch.analysis.runner import JobCancelled

        raise JobCancelled("cancelled; the finished shards are kept and the next run does the rest")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    detect_cfg = dict(cfg)
    if gpus:
        detect_cfg["device"] = "cuda"
    batch = max(1, int(cfg.get("batch", 1)))
    per_block = max(batch, 8)  # images per block (and per shard): small enough that a kill loses little
    items = [{"index": i, "path": str(images[i]), "rel": rels[i], "max_pixels": int(cfg.get("max_pixels",
                                                                                             100_000_000))}
             for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_block)))
    ds = ds.map(_read_row, num_cpus=1)
    actors = max(1, gpus) if gpus else 1
    ds = ds.map_batches(_DetectStage, fn_constructor_args=(detect_cfg, weights), batch_size=per_block,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=1 if gpus else 0, num_cpus=1)
    LOGGER.info("Ray Data: %d images, %d per block, %d detector actor(s) (%d GPUs)", len(items), per_block, actors,
                gpus)
    ds.write_datasink(_shard_sink(shards, settings))


def _merge(run: JobRun, shards: Path, settings: dict, covered: set[str]) -> int:
    """Apply every shard's records in listing order (a k-way merge of the sorted shards) through ``run``; records
    already in the index (merged before a kill) are skipped. Returns how many were applied."""
    streams = [_iter_shard(p, settings) for p in _shard_paths(shards)]
    merged = 0
    last = -1
    for position, payload in heapq.merge(*streams, key=lambda item: item[0]):
        if position == last:  # two shards holding one image (a block written again after a kill): keep one
            continue
        last = position
        _, record = record_from_bytes(payload)
        if record_key(record)[1] in covered:  # an analysis has one root
            continue
        run._finish_one(record)  # journaled, applied, committed every few seconds; progress and cancel checked
        merged += 1
    return merged


__all__ = ["analyze", "shard_dir", "write_shard"]
