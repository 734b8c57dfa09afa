"""The jobs on an index: ``analyze`` a folder into a new index, ``add`` files to it, ``remove`` them, ``sync`` it with
its folders, ``trust`` its roots, ``compact`` it; and the steps of making a new index that the Ray analysis shares
(``resume_analysis``, ``create_index``, ``finish_analysis``). Each job opens the index with the detector and settings
it was built with (``objsearch.provenance``) and runs its files through a ``JobRun`` (``objsearch.analysis.runner``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from objsearch.analysis.backfill import (add_image_vectors, add_rerank_vectors, fit_pending_projections,
                                         image_projections)
from objsearch.analysis.runner import (JobRun, JobSummary, ProgressFn, file_identity, files_to_do, in_folder,
                                       media_files, media_keys)
from objsearch.errors import EmptyFolderError, IndexFileError, ObjsearchError
from objsearch.media import VIDEO_SUFFIXES, list_media
from objsearch.projection import make_projection
from objsearch.provenance import detector_for_index, image_vectors_stale, index_config, job_detector
from objsearch.roots import Roots, is_under, sign_root

LOGGER = logging.getLogger(__name__)


def analyze(folder: str | Path, output: str | Path, cfg: dict, *, weights: str | None = None,
            overwrite: bool = False, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            detector=None) -> JobSummary:
    """Detect every object in the images under ``folder`` and write a new index ``output``.

    Images are committed to ``output`` as they are analysed (state ``analyzing`` until the end); an interrupted run
    (Ctrl-C, ``cancel``, ``kill -9``) resumes where it stopped when run again with the same settings.

    Raises
    ------
    EmptyFolderError
        When ``folder`` holds no image files.
    IndexFileError
        When ``output`` is a finished index (use ``sync``, or ``overwrite``), or an unfinished one of other settings.
    WeightsNotFoundError
        When no checkpoint can be found.
    JobCancelled
        When ``cancel`` was set.
    """
    t0 = time.perf_counter()
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder} is not a folder")
    if output.is_dir() or (output.exists() and not output.is_file()):
        raise ObjsearchError(f"cannot write the index {output}: it is a folder or not a regular file")
    listing = list_media(folder, videos=True)
    if not listing.images and not listing.videos:
        raise EmptyFolderError(f"{folder} holds no image files ({', '.join(sorted({'.jpg', '.png', '.webp', '.bmp', '.tif'}))} "
                               f"...) and no video files (.mp4, .mov, .avi, .mkv, .webm)")
    writer = None
    if output.exists() and not overwrite:
        from objsearch.catalog import Catalog

        with Catalog(output) as existing:
            state = existing.state
            same = os.path.abspath(existing.base_dir) == os.path.abspath(folder)
        if state == "ready":
            hint = (f"run `objsearch sync {folder} -i {output}` to add new, changed and removed images" if same
                    else f"it indexes {existing.base_dir}")
            raise IndexFileError(f"{output} already exists ({hint}); pass --overwrite to analyze everything again")
        writer = resume_analysis(output, folder)
    try:
        detector = job_detector(cfg, weights, detector)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    if writer is not None and (writer.weights_sha256 != detector.weights_sha256
                               or writer.attrs.get("feature_recipe") != detector.feature_recipe()):
        writer.close()
        raise IndexFileError(f"{output} is an unfinished analysis made with other weights or another feature recipe; "
                             f"run it with the same settings to finish it, or pass --overwrite to start over")
    if writer is None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for suffix in (".journal",):
                Path(str(output) + suffix).unlink(missing_ok=True)
        writer = create_index(output, detector, cfg, folder, overwrite)
    summary = JobSummary(index=output, n_other_files=listing.n_other, skipped=list(listing.skipped))
    run = None
    try:
        run = JobRun(writer, detector, cfg, in_folder(folder), summary, progress=progress, cancel=cancel)
        covered = run.replay() | media_keys(writer) | {(s.root, s.path) for s in writer.skipped}
        todo, starts = files_to_do(media_files(listing), in_folder(folder), covered, run.video_in_progress())
        summary.n_resumed = len(writer.media_id) + len(writer.skipped)
        run.n_done = summary.n_resumed
        run.run(todo, starts)
        finish_analysis(run, summary)
    finally:
        if run is not None:
            run.abandon()
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def resume_analysis(output: Path, folder: Path):
    """The writer of the unfinished analysis ``output`` of ``folder``, its folder recorded as this user's root 0
    (the user names it again).

    Raises
    ------
    IndexFileError
        When the unfinished analysis is of another folder.
    """
    from objsearch.catalog import CatalogWriter

    writer = CatalogWriter.open(output)
    try:
        if os.path.abspath(writer.base_dir) != os.path.abspath(folder):
            raise IndexFileError(f"{output} is an unfinished analysis of {writer.base_dir}; run analyze on that "
                                 f"folder to finish it, or pass --overwrite to start over")
        mac = sign_root(writer.attrs["uuid"], writer.base_dir)
        roots, macs = writer.roots, writer.root_macs
        if mac and macs[0] != mac:
            writer.set_attrs(roots=roots, root_macs=[mac] + macs[1:])
    except BaseException:
        writer.close()
        raise
    return writer


def create_index(output: Path, detector, cfg: dict, folder: Path, overwrite: bool):
    """A new index file ``output`` (state ``analyzing``) for ``detector``'s features: its random projections made
    now, its PCA ones pending until every object is in (``finish_analysis``); returns the ``CatalogWriter``."""
    from objsearch.catalog import CatalogWriter

    projections, pending = [], []
    for d in cfg["dims"]:
        if cfg["projection"] == "pca":
            pending.append(int(d))
        else:
            projections.append(make_projection(cfg["projection"], d, cfg["seed"]).fit(
                np.zeros((1, detector.n_features), np.float32)))
    if cfg.get("rerank_dims") is not None:
        pending.append(int(cfg["rerank_dims"]))  # objsearch.rerank: fitted at the end, with a mirror sample
    return CatalogWriter.create(output, attrs=index_attrs(detector, cfg, folder, pending),
                                n_features=detector.n_features, projections=projections, overwrite=overwrite,
                                image_projections=image_projections(detector, cfg))


def finish_analysis(run: JobRun, summary: JobSummary) -> None:
    """End an analysis whose objects are all in ``run``: fit the pending projections, mark the index ready, commit,
    remove the journal, and fill in ``summary``'s totals."""
    writer = run.writer
    fit_pending_projections(run, run.detector.n_features)
    writer.set_attrs(state="ready")
    run.finish()
    summary.n_images = len(writer.media_id)
    summary.n_objects = writer.n_objects
    summary.n_added = summary.n_images


def index_attrs(detector, cfg: dict, folder: Path, pending_projections: list[int]) -> dict:
    """Root attributes of a new index (its uuid made here, so that ``folder`` is recorded as this user's root 0)."""
    weights = Path(str(detector.weights_path))
    uid = uuid.uuid4().hex
    folder = os.path.abspath(folder)
    return {
        "uuid": uid,
        "roots": [folder],
        "root_macs": [sign_root(uid, folder)],
        "state": "analyzing",
        "weights_sha256": detector.weights_sha256,
        "weights_name": weights.name,
        "feature_recipe": detector.feature_recipe(),
        "config": {**cfg, "weights": weights.name},
        "class_names": detector.names,
        "base_dir": folder,
        "pending_projections": list(pending_projections),
        "image_recipe": detector.image_feature_recipe(),
    }


def _open_for_job(index: Path, cfg_overrides: dict, weights, detector):
    """(writer, detector, cfg) for a job on an existing index: its own weights (checked by sha256), recipe and
    thresholds."""
    from objsearch.catalog import CatalogWriter

    writer = CatalogWriter.open(index)
    try:
        if writer.attrs.get("state") != "ready":
            raise IndexFileError(f"{index} is an unfinished analysis; run `objsearch analyze` again to finish it")
        cfg = index_config(writer)
        cfg.update({k: v for k, v in cfg_overrides.items() if v is not None})
        detector = detector_for_index(writer, cfg, weights=weights, detector=detector)
    except BaseException:
        writer.close()
        raise
    return writer, detector, cfg


def _abs_keys(roots: Roots, keys) -> set[str]:
    """Absolute paths of (root, path) pairs under the roots' folders (strings only: nothing is read)."""
    return {os.path.abspath(os.path.join(roots.folders[r], rel)) for r, rel in keys}


def _keys_of(roots: Roots, path: Path) -> list[tuple[int, str]]:
    """(root, path relative to it) of ``path`` under every root folder that holds it, the deepest readable one
    (where ``add`` puts it) first."""
    first = roots.locate(path)
    keys = [first] if first is not None else []
    for i, folder in enumerate(roots.folders):
        if is_under(path, folder):
            key = (i, Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix())
            if key not in keys:
                keys.append(key)
    return keys


def _new_roots(roots: Roots, paths: list[Path]) -> list[str]:
    """The folders ``add`` makes new roots for: each path the user named that no readable root holds gives one (a
    folder itself, a file its folder), unless another new one holds it; a missing path gives none (it is reported
    as skipped)."""
    candidates = list(dict.fromkeys(os.path.abspath(p if p.is_dir() else p.parent) for p in paths
                                    if (p.exists() or p.is_symlink()) and roots.locate(p) is None))
    return [c for c in candidates if not any(o != c and is_under(c, o) for o in candidates)]  # in the order given


def add(index: str | Path, paths: Iterable[str | Path], *, weights: str | None = None, device: str | None = None,
        runtime: str | None = None, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
        detector=None) -> JobSummary:
    """Analyze image files (or the images under folders) and add them to ``index`` with its own weights, recipe and
    projection. Files already indexed are left as they are (``n_already``; ``sync`` re-analyzes changed ones).

    A path under none of the index's roots (that the user chose: see ``objsearch.roots``) makes its folder a new
    root, recorded as this user's, so an index can grow from several places; paths are stored relative to the
    deepest root that holds them. The new roots are committed before any image is, so a killed job resumes.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing (missing, damaged, locked by another writer, unfinished).
    """
    t0 = time.perf_counter()
    index = Path(index)
    paths = [Path(p) for p in paths]
    writer, detector, cfg = _open_for_job(index, {"device": device, "runtime": runtime}, weights, detector)
    if writer.has_image_vectors and image_vectors_stale(writer, detector):  # never mix two image recipes
        writer.close()
        raise IndexFileError(f"{index} holds whole-image vectors of another image recipe; run `objsearch sync -i "
                             f"{index}` first (it makes them all again)")
    summary = JobSummary(index=index)
    with contextlib.ExitStack() as stack:
        stack.callback(writer.close)
        roots = Roots.of(writer)
        fresh = _new_roots(roots, paths)
        if fresh:
            uid = writer.attrs["uuid"]
            writer.set_attrs(roots=writer.roots + fresh, root_macs=writer.root_macs + [sign_root(uid, f)
                                                                                       for f in fresh])
            writer.commit()  # before any image under them is journaled
            for folder in fresh:
                LOGGER.info("%s: new root %s", index, folder)
            roots = Roots.of(writer)
            for i, folder in enumerate(roots.recorded):
                if folder in fresh:
                    roots.move(i, folder)  # named now, even when no key could record it
        listing = list_media(paths, videos=True)
        summary.skipped += listing.skipped
        summary.n_other_files = listing.n_other
        files = media_files(listing)

        def locate(path: Path) -> tuple[int, str]:
            found = roots.locate(path)
            if found is None:  # every listed file lies under a path the user named, so under a root
                raise ObjsearchError(f"{path} is under none of the index's folders")
            return found

        run = JobRun(writer, detector, cfg, locate, summary, progress=progress, cancel=cancel)
        stack.callback(run.abandon)
        # a file is known under every root whose folder holds it (an older root may hold it too): looked up for
        # the files named only, never by going through every indexed item
        keys = {p: _keys_of(roots, p) for p in files}
        found = writer.find_media([k for ks in keys.values() for k in ks])
        covered, resume = run.replay(), run.video_in_progress()

        def key_of(path: Path):
            ks = keys[path]
            if resume is not None and resume[0] in ks:
                return resume[0]
            return next((k for k in ks if k in covered or k in found), ks[0])

        indexed = {key_of(p) for p in files if any(k in found for k in keys[p])}
        summary.n_already = sum(1 for p in files if key_of(p) in indexed and key_of(p) not in covered
                                and not (resume and key_of(p) == resume[0]))
        todo, starts = files_to_do(files, key_of, indexed | covered, resume)
        run.run(todo, starts)
        run.finish()
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    summary.seconds = time.perf_counter() - t0
    return summary


def remove(index: str | Path, paths: Iterable[str | Path] = (), *, missing: bool = False,
           base_dir: str | Path | None = None) -> JobSummary:
    """Remove indexed images (given as files or folders, present on disk or not) from ``index`` in one transaction;
    with ``missing``, also every indexed image whose file is gone. Ids are never reused. A path that names no
    indexed media item is listed in the summary's ``not_indexed`` (the others are removed all the same).

    ``base_dir`` moves roots as ``--base-dir`` does (``objsearch.roots.parse_base_dirs``). Naming paths reads no
    file; ``missing`` looks for each indexed file, so it needs every root to be one the user chose.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing; ``UntrustedRootError`` for ``missing`` with an item under a
        root the user did not choose (nothing is removed).
    """
    from objsearch.catalog import CatalogWriter

    t0 = time.perf_counter()
    index = Path(index)
    summary = JobSummary(index=index)
    writer = CatalogWriter.open(index)
    try:
        roots = Roots.of(writer, base_dir)
        gone, exact, hit = [], [], []  # hit[j]: did the j-th path name anything indexed
        paths = [Path(p) for p in paths]
        for j, path in enumerate(paths):  # matched as strings: no indexed file is read
            target = os.path.abspath(path)
            n_before = len(gone)
            for r, folder in enumerate(roots.folders):
                if is_under(target, folder):  # the target is in this root (or is it)
                    rel = Path(target).relative_to(os.path.abspath(folder)).as_posix()
                    exact.append((r, rel, j))
                    if not path.is_file() or path.suffix.lower() in VIDEO_SUFFIXES:
                        # a folder, a name no longer on disk, or a video (one item per sampled frame, one path)
                        gone.extend(writer.media_under(r, rel).tolist())
                elif is_under(folder, target):  # the whole root is in the target
                    gone.extend(writer.media_under(r, "").tolist())
            hit.append(len(gone) > n_before)
        found = writer.find_media([(r, rel) for r, rel, _ in exact])  # every file named, in one pass
        for r, rel, j in exact:
            if (r, rel) in found:
                gone.append(found[(r, rel)])
                hit[j] = True
        summary.not_indexed = [str(p) for p, h in zip(paths, hit) if not h]
        if missing:
            media_roots = writer.media_root.tolist()
            for r in sorted(set(media_roots)):
                roots.folder(r)  # refused before anything is looked at or removed
            for i, (r, rel) in enumerate(zip(media_roots, writer.media_path)):
                if not ((found_path := roots.resolve(r, rel)) is not None and found_path.is_file()):
                    gone.append(int(writer.media_id[i]))
        if gone:
            summary.n_removed_objects = writer.remove_media(np.asarray(sorted(set(gone)), np.int64))
            summary.n_removed = len(set(gone))
            writer.commit()
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def sync(index: str | Path, folder: str | Path | None = None, *, paths: Iterable[str | Path] | None = None,
         weights: str | None = None, device: str | None = None, runtime: str | None = None,
         progress: ProgressFn | None = None, cancel: threading.Event | None = None, detector=None,
         defer: Callable[[Path], bool] | None = None) -> JobSummary:
    """Bring ``index`` in step with its folders (default: every root; or ``folder``, under one of them): remove
    indexed images whose file is gone, re-analyze changed ones (size or modification time differ), add new ones.

    ``paths`` narrows the job to some files and folders under the index's roots, present or gone (what a watcher
    saw change; ``objsearch.watch``): only indexed items at or under them are compared, and only media files under
    those that exist are listed. ``sync(index, folder)`` is ``sync(index, paths=[folder])``. ``defer(path)``, when
    given, is asked about every media file found; a file it answers True for (one still being written) is left as
    it is this time: neither analyzed nor removed.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing; ``UntrustedRootError`` when a folder to read is under a root
        the user did not choose (``objsearch trust`` records it).
    ObjsearchError
        When ``folder`` or one of ``paths`` is under none of the index's roots (``objsearch add`` makes it one).
    """
    t0 = time.perf_counter()
    index = Path(index)
    writer, detector, cfg = _open_for_job(index, {"device": device, "runtime": runtime}, weights, detector)
    summary = JobSummary(index=index)
    with contextlib.ExitStack() as stack:
        stack.callback(writer.close)
        roots = Roots.of(writer)
        scope = [] if paths is None else [Path(p) for p in paths]
        if folder is not None:
            scope.append(Path(folder))
        if paths is None and folder is None:
            folders = [roots.folder(r) for r in range(len(roots.recorded))]  # refused when one is not the user's
        else:
            for path in scope:
                if roots.locate(path) is None:
                    holder = next((r for r, f in enumerate(roots.folders) if is_under(path, f)), None)
                    if holder is not None:
                        raise roots.refusal(holder)
                    raise ObjsearchError(f"{path} is not under the index's folders "
                                         f"({', '.join(map(str, roots.folders))}); `objsearch add` it to make it one")
            folders = scope
        listing = list_media([f for f in folders if f.exists() or f.is_symlink()], videos=True)
        summary.skipped += listing.skipped
        summary.n_other_files = listing.n_other

        def locate(path: Path) -> tuple[int, str]:
            found = roots.locate(path)
            if found is None:
                raise ObjsearchError(f"{path} is under none of the index's folders")
            return found

        run = JobRun(writer, detector, cfg, locate, summary, progress=progress, cancel=cancel)
        stack.callback(run.abandon)
        covered = _abs_keys(roots, run.replay())
        on_disk = {os.path.abspath(p): p for p in media_files(listing)}
        deferred = {where for where, p in on_disk.items() if defer(p)} if defer is not None else set()
        for where in deferred:
            del on_disk[where]
        stale = []
        for i, (r, rel) in enumerate(zip(writer.media_root.tolist(), writer.media_path)):
            where = os.path.abspath(os.path.join(roots.folders[r], rel))
            if where in deferred or not any(is_under(where, f) for f in folders):
                continue
            path = on_disk.get(where)
            if path is None:
                stale.append(i)
                summary.n_removed += 1
            elif where not in covered and file_identity(path) != (int(writer.media_file_size[i]),
                                                                  int(writer.media_file_mtime_ns[i])):
                stale.append(i)
                summary.n_changed += 1
        if stale:
            summary.n_removed_objects = writer.remove_media(writer.media_id[np.asarray(stale)])
            writer.commit()
        if image_vectors_stale(writer, detector):
            summary.n_image_vectors = add_image_vectors(writer, detector, max_pixels=int(cfg.get("max_pixels", 100_000_000)),
                                                        progress=progress, cancel=cancel)
        indexed = _abs_keys(roots, media_keys(writer))
        resume = run.video_in_progress()
        resume = None if resume is None else (next(iter(_abs_keys(roots, [resume[0]]))), resume[1])
        todo, starts = files_to_do([p for _, p in sorted(on_disk.items())], os.path.abspath, indexed | covered, resume)
        summary.n_unchanged = sum(1 for a in on_disk if a in indexed and not (resume and a == resume[0]))
        run.run(todo, starts)
        run.finish()
        summary.rerank_dims = add_rerank_vectors(writer, detector, cfg, roots=roots)
        summary.n_added -= summary.n_changed
        summary.n_images, summary.n_objects = len(writer.media_id), writer.n_objects
    summary.seconds = time.perf_counter() - t0
    return summary


def trust(index: str | Path, base_dir=None) -> list[str]:
    """Record every root folder of ``index`` as chosen by this user (``objsearch trust``), after moving roots as
    ``base_dir`` says (``--base-dir`` values: the new folders are recorded); returns the folders recorded.

    For an index made on another machine or before roots were recorded: objsearch then reads its images under those
    folders (and only there) without ``--base-dir``. Nothing else changes.

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing (format 1: convert it first).
    ObjsearchError
        When a root has no folder recorded and none is given, or the user's key cannot be made.
    """
    from objsearch.catalog import CatalogWriter
    from objsearch.roots import user_key

    writer = CatalogWriter.open(Path(index), description="objsearch trust")
    try:
        roots = Roots.of(writer, base_dir)
        for i, recorded in enumerate(roots.recorded):
            if not os.path.isabs(recorded) and i not in roots.moved:
                raise ObjsearchError(f"root {i} of {index} records no folder ({recorded!r}); name it with "
                                     f"--base-dir {i}=FOLDER")
        user_key(create=True)  # say why, rather than record nothing
        uid = writer.attrs["uuid"]
        folders = [os.path.abspath(f) for f in roots.folders]
        writer.set_attrs(base_dir=folders[0], roots=folders, root_macs=[sign_root(uid, f) for f in folders])
        writer.commit()
    finally:
        writer.close()
    return folders


def compact(index: str | Path) -> tuple[int, int]:
    """Rewrite ``index`` without its removed rows (ids kept); returns (object rows before, after).

    Raises
    ------
    IndexFileError
        When the index cannot be opened for writing.
    """
    from objsearch.catalog import compact as compact_catalog

    return compact_catalog(Path(index))
