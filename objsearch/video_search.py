"""``objsearch video`` as a use case: search the objects of a video file's frames without a display, writing one JSON
line per analysed frame and/or an annotated H.264 video, and keep the results for the reverse video search's summary
(``objsearch.moments.summarize_video_matches``)."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from objsearch.errors import ObjsearchError
from objsearch.outputs import check_not_input, check_output_folder, index_files


@dataclass
class VideoRun:
    """What ``search_video_file`` did: ``n_frames`` frames analysed holding ``n_objects`` objects in ``seconds``;
    ``results`` their ``SearchResult`` objects when asked to keep them (else empty)."""

    n_frames: int = 0
    n_objects: int = 0
    seconds: float = 0.0
    results: list = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / max(self.seconds, 1e-9)


def check_video_outputs(file: Path, index: Path, out: Path | None, jsonl: Path | None) -> None:
    """Refuse before any work an annotated video that is not ``.mp4``, and an output (``out``, ``jsonl``; ``-`` is
    stdout) that is an input or lies in a missing folder (``objsearch.outputs``).

    Raises
    ------
    ObjsearchError, UsageError
        Naming the output.
    """
    if out is not None and out.suffix.lower() != ".mp4":
        raise ObjsearchError(f"cannot write video {out}: use a name ending in .mp4 (H.264)")
    for target, what in ((out, "video"), (jsonl if jsonl != Path("-") else None, "JSON lines")):
        if target is not None:
            check_not_input(target, [file, *index_files(index)])
            check_output_folder(target, what)


def search_video_file(engine, source, settings, *, stride: int = 1, max_frames: int | None = None,
                      out: Path | None = None, lines: TextIO | None = None, keep_results: bool = False,
                      progress: Callable[[int, int | None, int], None] | None = None) -> VideoRun:
    """Search every ``stride``-th frame of ``source`` (an ``objsearch.sources.VideoFileSource``) with ``engine``.

    Parameters
    ----------
    settings : ``objsearch.live.QuerySettings`` (k, same class, moment window).
    max_frames : stop after this many analysed frames (None: the whole file).
    out : write the frames with their boxes and neighbour rows as an H.264 ``.mp4`` at ``source.fps / stride``.
    lines : write one ``objsearch query --json`` object per analysed frame (plus ``frame`` and ``timestamp_s``).
    keep_results : keep every frame's ``SearchResult`` in ``VideoRun.results`` (for the summary).
    progress : ``progress(n_frames, total or None, n_objects)`` after each analysed frame.

    Raises
    ------
    SourceError
        When a frame cannot be decoded before the end of the file.
    CannotWriteError
        When ``out`` cannot be written.
    """
    from objsearch.live import ThumbnailCache, search_video
    from objsearch.media import VideoWriter
    from objsearch.render import annotate_frame

    total = -(-source.n_frames // stride) if source.n_frames else None
    if max_frames:
        total = min(total or max_frames, max_frames)
    run = VideoRun()
    cache = ThumbnailCache(engine) if out is not None else None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        writer = None
        for live in search_video(engine, source, settings, stride=stride, max_frames=max_frames, cache=cache):
            if keep_results:
                run.results.append(live.result)
            run.n_frames += 1
            run.n_objects += len(live.result.detections)
            if lines is not None:
                lines.write(json.dumps(live.result.to_dict()) + "\n")
            if out is not None:
                if writer is None:
                    writer = stack.enter_context(VideoWriter(out, source.fps / stride))
                writer.write(annotate_frame(live.frame.image, live.result, live.thumbnails))
            if progress is not None:
                progress(run.n_frames, total, run.n_objects)
    run.seconds = time.perf_counter() - t0
    return run
