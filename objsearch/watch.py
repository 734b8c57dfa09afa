"""A watched folder: keep an index in step with its folders as files arrive, change, move and go.

``Watcher`` listens to the operating system's file events through watchdog (inotify on Linux, FSEvents on macOS,
ReadDirectoryChangesW on Windows; https://github.com/gorakhargosh/watchdog) and hands what changed to
``objsearch.analysis.sync`` narrowed to those paths (``sync(index, paths=...)``), so the same job, journal and
transactions do the work: a watcher killed at any moment (even ``kill -9``) leaves an index that opens, and the next
start catches up with one full ``sync`` before it listens again. ``Watcher.catch_up`` alone is ``objsearch sync``.

Debouncing: a path is handed over once it has been quiet for ``settle_s`` seconds and, where the platform reports
closes (inotify's ``IN_CLOSE_WRITE``), once the writer closed it; a file written and never closed counts as complete
after ``open_timeout_s`` quiet seconds. A folder that appeared (moved in, or copied) is handed over when nothing under
it is still pending; any file found under it whose modification time is less than ``settle_s`` old is deferred to
the next round (``sync(defer=...)``). So a file still being copied is analyzed once, when it is complete.

Only media files (``objsearch.media``'s image and video suffixes) and folders count: the index's own files (the
``.h5``, its journal, lock and undo files, sidecars) never trigger a job, even inside a watched folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from objsearch.analysis import JobSummary, sync
from objsearch.errors import ExitCode, IndexLockedError, ObjsearchError
from objsearch.types import MEDIA_SUFFIXES
from objsearch.roots import Roots, is_under

LOGGER = logging.getLogger(__name__)


class WatchError(ObjsearchError):
    """A watched folder that cannot be watched (missing, not a folder, under none of the index's roots, or the
    operating system refused more watches): an input named on the command line that cannot be used (exit 2)."""

    exit_code = ExitCode.UNREADABLE_INPUT


@dataclass(frozen=True)
class WatchSettings:
    """How a ``Watcher`` debounces.

    settle_s : seconds a path must be quiet (no event) before it is analyzed.
    open_timeout_s : seconds after which a file modified and never closed counts as complete (platforms without close
        events use ``settle_s`` alone).
    poll_s : how often the pending paths are looked at, seconds.
    retry_s : how long to wait before trying again when another writer holds the index, seconds.
    polling : use watchdog's polling observer (stat every ``polling_interval_s``) instead of the operating system's
        events, for network file systems that deliver none.
    polling_interval_s : the polling observer's interval, seconds.
    """

    settle_s: float = 0.5
    open_timeout_s: float = 30.0
    poll_s: float = 0.1
    retry_s: float = 1.0
    polling: bool = False
    polling_interval_s: float = 1.0


@dataclass
class _Change:
    """One pending path: when it last changed (``time.monotonic()`` seconds), whether a writer still has it open
    (modified and not closed since), and whether it was a folder."""

    last: float
    writing: bool = False
    is_dir: bool = False


@dataclass
class WatchStats:
    """What a watcher did so far (read by ``serve --watch``'s ``/api/info``)."""

    folders: list[str] = field(default_factory=list)
    n_jobs: int = 0
    n_added: int = 0
    n_changed: int = 0
    n_removed: int = 0
    n_skipped: int = 0
    pending: int = 0
    last_job_s: float = 0.0
    last_error: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Collector:
    """watchdog event handler: records media files and folders that changed into the watcher's pending map."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event) -> None:  # watchdog calls this for every event (FileSystemEventHandler's entry point)
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):  # reads, ours included, change nothing
            return
        paths = [event.src_path, getattr(event, "dest_path", "")] if kind == "moved" else [event.src_path]
        for i, raw in enumerate(paths):
            if not raw:
                continue
            path = Path(os.fsdecode(raw))
            if not event.is_directory and path.suffix.lower() not in MEDIA_SUFFIXES:
                continue
            if kind == "closed":
                self.watcher._record(path, writing=False, is_dir=False)
            elif kind in ("created", "modified") and not event.is_directory:
                self.watcher._record(path, writing=True, is_dir=False)
            elif kind == "modified":  # a folder's own metadata: its entries report themselves
                continue
            else:  # deleted, moved (both ends), a folder created
                self.watcher._record(path, writing=False, is_dir=event.is_directory)


class Watcher:
    """Keep ``index`` in step with ``folders`` (default: every folder (root) of the index) as files change.

    Parameters
    ----------
    index : path of a finished index (format 2).
    folders : folders under the index's roots to watch (recursively); None: every root.
    detector : an already loaded ``Detector`` of the index's weights (one is loaded on the first job otherwise, and
        kept); shared safely with searches (its forward pass is locked).
    weights, device, runtime : as for ``objsearch.analysis.sync``.
    settings : debouncing (``WatchSettings``).
    on_job : called with each job's ``JobSummary`` after it committed (from the watcher's thread).

    Raises
    ------
    WatchError
        When a folder is missing, not a folder, or under none of the index's roots.
    UntrustedRootError
        When a root is not one this user chose (``objsearch trust``).
    IndexFileError
        When the index cannot be opened.
    """

    def __init__(self, index: str | Path, folders=None, *, detector=None, weights: str | None = None,
                 device: str | None = None, runtime: str | None = None, settings: WatchSettings | None = None,
                 on_job: Callable[[JobSummary], None] | None = None) -> None:
        from objsearch.catalog import Catalog

        self.index = Path(index)
        self.settings = settings or WatchSettings()
        with Catalog(self.index) as catalog:
            roots = Roots.of(catalog)
        # every root is one the user chose (else refused here, in one line): a watcher reads what lands under them
        self.root_folders = [Path(os.path.abspath(roots.folder(r))) for r in range(len(roots.recorded))]
        folders = list(self.root_folders) if not folders else [Path(os.path.abspath(f)) for f in folders]
        for f in folders:
            if not f.is_dir():
                raise WatchError(f"cannot watch {f}: not a folder")
            if not any(is_under(f, root) for root in self.root_folders):
                raise WatchError(f"cannot watch {f}: it is under none of the index's folders "
                                 f"({', '.join(map(str, self.root_folders))}); `objsearch add` it to make it one")
        self.folders = folders
        self.detector = detector
        self._job_args = {"weights": weights, "device": device, "runtime": runtime}
        self.on_job = on_job
        self.stats = WatchStats(folders=[str(f) for f in folders])
        self._pending: dict[Path, _Change] = {}
        self._lock = threading.Lock()
        self._observer = None
        self._close_events = False
        self._retry_at = 0.0

    # ---------------------------------------------------------------------------------------------- events
    def _record(self, path: Path, *, writing: bool, is_dir: bool) -> None:
        now = time.monotonic()
        with self._lock:
            old = self._pending.get(path)
            if old is not None:
                old.last = now
                old.writing = writing
                old.is_dir = old.is_dir or is_dir
            else:
                self._pending[path] = _Change(now, writing, is_dir)

    def start(self) -> None:
        """Start listening (events are collected from now on; ``step`` or ``run`` hands them to jobs).

        Raises
        ------
        WatchError
            When the operating system refuses the watches (e.g. inotify's ``max_user_watches``).
        """
        if self._observer is not None:
            return
        if self.settings.polling:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self.settings.polling_interval_s)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        handler = _Collector(self)
        try:
            for folder in self.folders:
                observer.schedule(handler, str(folder), recursive=True)
            observer.start()
        except OSError as exc:
            observer.stop()
            raise WatchError(f"cannot watch {', '.join(map(str, self.folders))}: {exc.strerror or exc} (for inotify's "
                             f"limit raise fs.inotify.max_user_watches, or pass --polling)") from None
        self._close_events = type(observer).__name__ == "InotifyObserver"
        self._observer = observer

    def stop(self) -> None:
        """Stop listening (what was pending is dropped; the next start's catch-up finds it)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None

    # ---------------------------------------------------------------------------------------------- jobs
    def _ensure_detector(self) -> None:
        """Load the index's detector once (every job reuses it)."""
        if self.detector is not None:
            return
        from objsearch.catalog import Catalog
        from objsearch.provenance import detector_for_index, index_config

        with Catalog(self.index) as catalog:
            cfg = index_config(catalog)
            cfg.update({k: v for k, v in self._job_args.items() if v is not None and k != "weights"})
            self.detector = detector_for_index(catalog, cfg, weights=self._job_args["weights"])

    def _sync(self, paths, defer=None, progress=None) -> JobSummary:
        self._ensure_detector()
        summary = sync(self.index, paths=paths, detector=self.detector, defer=defer, progress=progress,
                       **self._job_args)
        s = self.stats
        s.n_jobs += 1
        s.n_added += summary.n_added
        s.n_changed += summary.n_changed
        s.n_removed += summary.n_removed
        s.n_skipped += len(summary.skipped)
        s.last_job_s = summary.seconds
        s.last_error = ""
        if self.on_job is not None:
            self.on_job(summary)
        return summary

    def catch_up(self, progress=None) -> JobSummary:
        """One full ``sync`` of the watched folders (what changed while nobody watched; ``watch --once``);
        ``progress`` as for ``sync``."""
        return self._sync(self.folders, progress=progress)

    def watch_until_interrupted(self, *, on_caught_up: Callable[[JobSummary], None] | None = None,
                                on_job: Callable[[JobSummary], None] | None = None) -> None:
        """``objsearch watch``: start listening, catch up once (``on_caught_up`` with its summary), then hand changes
        to jobs (``on_job`` with each summary that added, changed, removed or skipped something) until Ctrl-C, which
        stops listening and returns.

        Raises
        ------
        WatchError, ObjsearchError
            As ``start`` and ``run``.
        """
        def changed(summary: JobSummary) -> None:
            if on_job is not None and (summary.n_added or summary.n_removed or summary.n_changed or summary.skipped):
                on_job(summary)

        try:
            self.start()
            summary = self.catch_up()
            if on_caught_up is not None:
                on_caught_up(summary)
            self.on_job = changed
            self.run(threading.Event(), catch_up=False)
        except KeyboardInterrupt:
            self.stop()

    def _ready(self, change: _Change, now: float) -> bool:
        quiet = now - change.last
        if quiet < self.settings.settle_s:
            return False
        return not (change.writing and self._close_events) or quiet >= self.settings.open_timeout_s

    def _take_ready(self, now: float) -> list[Path]:
        """Remove and return the pending paths that are ready: quiet, closed, and (a folder) with nothing under it
        still pending."""
        with self._lock:
            waiting = [p for p, c in self._pending.items() if not self._ready(c, now)]
            ready = []
            for p, c in self._pending.items():
                if not self._ready(c, now):
                    continue
                if c.is_dir and any(w != p and p in w.parents for w in waiting):
                    continue
                ready.append(p)
            for p in ready:
                del self._pending[p]
            self.stats.pending = len(self._pending)
        return ready

    def _defer(self, path: Path) -> bool:
        """Whether a media file found by a job is still being written: pending and not ready, or modified less than
        ``settle_s`` ago (its events not seen yet); such a file is recorded to be looked at again."""
        now = time.monotonic()
        with self._lock:
            change = self._pending.get(path)
            if change is not None and not self._ready(change, now):
                return True
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        if age < self.settings.settle_s:
            self._record(path, writing=False, is_dir=False)
            return True
        return False

    def step(self) -> JobSummary | None:
        """Hand the ready pending paths to one job; returns its summary, or None when nothing was ready (or another
        writer holds the index: the paths wait ``retry_s`` and are tried again)."""
        now = time.monotonic()
        if now < self._retry_at:
            return None
        ready = self._take_ready(now)
        if not ready:
            return None
        inside = [p for p in ready if any(is_under(p, root) for root in self.root_folders)]
        try:
            return self._sync(inside, defer=self._defer)
        except IndexLockedError as exc:
            LOGGER.info("index busy (%s); trying again in %.1f s", exc, self.settings.retry_s)
            self._retry_at = time.monotonic() + self.settings.retry_s
            with self._lock:
                for p in ready:
                    self._pending.setdefault(p, _Change(0.0, False, p.is_dir()))
            self.stats.last_error = str(exc)
            return None

    def run(self, stop: threading.Event, *, catch_up: bool = True) -> None:
        """Listen, catch up (one full ``sync``: what changed while nobody watched), then hand changes to jobs until
        ``stop`` is set. Events that arrive during the catch-up are kept and handled after it.

        Raises
        ------
        ObjsearchError
            From a job (a damaged index, weights that do not match); the caller decides whether to go on.
        """
        self.start()
        try:
            if catch_up:
                self.catch_up()
            while not stop.wait(self.settings.poll_s):
                self.step()
        finally:
            self.stop()

    def drain(self, timeout_s: float = 30.0) -> int:
        """Run jobs until nothing is pending (or ``timeout_s`` passed); returns the number of jobs run. For tests
        and tools that write files and then want them indexed."""
        deadline = time.monotonic() + timeout_s
        jobs = 0
        while time.monotonic() < deadline:
            if self.step() is not None:
                jobs += 1
            with self._lock:
                if not self._pending:
                    return jobs
            time.sleep(self.settings.poll_s)
        return jobs

    @property
    def n_pending(self) -> int:
        with self._lock:
            return len(self._pending)


def watch_in_background(watcher: Watcher) -> tuple[threading.Thread, threading.Event]:
    """Run ``watcher`` (catch-up included) in a daemon thread; returns (thread, stop event). A job's error is
    logged and the watcher goes on (its paths are not retried: the next start's catch-up finds them)."""
    stop = threading.Event()

    def work() -> None:
        watcher.start()
        try:
            try:
                watcher.catch_up()
            except ObjsearchError as exc:
                LOGGER.error("watch: catching up failed: %s", exc)
                watcher.stats.last_error = str(exc)
            while not stop.wait(watcher.settings.poll_s):
                try:
                    watcher.step()
                except ObjsearchError as exc:
                    LOGGER.error("watch: %s", exc)
                    watcher.stats.last_error = str(exc)
        finally:
            watcher.stop()

    thread = threading.Thread(target=work, daemon=True, name="objsearch-watch")
    thread.start()
    return thread, stop
