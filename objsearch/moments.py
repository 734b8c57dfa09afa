"""Moments, not frame floods: hits from the same video, of the same class and close in time, become one neighbour
shown by its best frame; and the reverse video search's summary, which ranks indexed videos and their moments by
how many objects of a query video found them.

Pure functions over ``Neighbor`` rows and ``SearchResult`` objects: the engine groups every search with them (so
``query``, ``video``, the web API and the app show the same moments), and ``objsearch video --summary`` aggregates
with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable

from objsearch.types import Moment, Neighbor, SearchResult

DEFAULT_GROUP_S = 2.0  # seconds: hits closer than this (same video and class) are one moment


@dataclass
class _Group:
    best: Neighbor
    start_s: float
    end_s: float
    frames: set[int]


def group_neighbors(row: list[Neighbor], window_s: float) -> list[Neighbor]:
    """Group one query object's neighbours (ascending distance) into moments.

    Neighbours from the same video and of the same class whose times lie within ``window_s`` seconds of each other
    (a chain: a hit within ``window_s`` of any frame of a moment joins it, and joins moments it bridges) become one
    neighbour: the closest of them, with ``moment`` (start and end time, number of distinct frames). Images pass
    through unchanged. The order stays ascending by distance.

    Parameters
    ----------
    row : list of Neighbor, ascending ``distance``.
    window_s : float, >= 0 seconds.

    Returns
    -------
    list of Neighbor, at most ``len(row)``.

    Raises
    ------
    ValueError
        For a negative or non-finite ``window_s``.
    """
    window_s = float(window_s)
    if not math.isfinite(window_s) or window_s < 0:
        raise ValueError(f"window_s must be a finite number of seconds >= 0, got {window_s}")
    out: list[_Group | Neighbor] = []
    by_key: dict[tuple[str, int], list[_Group]] = {}
    for nb in row:
        if not nb.media.is_video_frame:
            out.append(nb)
            continue
        t = float(nb.media.timestamp_s)
        groups = by_key.setdefault((nb.media.path, int(nb.class_id)), [])
        near = [g for g in groups if g.start_s - window_s <= t <= g.end_s + window_s]
        if not near:
            group = _Group(nb, t, t, {int(nb.media.frame_index)})
            groups.append(group)
            out.append(group)
            continue
        base = near[0]  # made first: the closest best frame (rows come in ascending distance)
        base.start_s, base.end_s = min(base.start_s, t), max(base.end_s, t)
        base.frames.add(int(nb.media.frame_index))
        for other in near[1:]:  # this hit bridges moments: they become one
            base.start_s, base.end_s = min(base.start_s, other.start_s), max(base.end_s, other.end_s)
            base.frames |= other.frames
            groups.remove(other)
            out.remove(other)
    return [item if isinstance(item, Neighbor) else
            replace(item.best, moment=Moment(item.start_s, item.end_s, len(item.frames))) for item in out]


# ------------------------------------------------------------------------------------------ reverse video search
@dataclass
class VideoMoment:
    """One stretch of an indexed video that objects of the query video found.

    start_s, end_s : seconds in the indexed video (first and last matched frame).
    query_start_s, query_end_s : seconds in the query video of the objects that found it.
    n_query_objects : query objects (an object in one query frame) that have a neighbour in this moment.
    best_distance : the smallest distance of those neighbours.
    score : sum over those query objects of 1 / rank of their best neighbour here (1 for a nearest neighbour).
    best : the neighbour with ``best_distance`` (its frame shows the moment).
    """

    start_s: float
    end_s: float
    query_start_s: float
    query_end_s: float
    n_query_objects: int
    best_distance: float
    score: float
    best: Neighbor
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "query_start_s": round(self.query_start_s, 3), "query_end_s": round(self.query_end_s, 3),
                "n_query_objects": self.n_query_objects, "best_distance": round(self.best_distance, 5),
                "score": round(self.score, 4), "best_frame_index": int(self.best.media.frame_index),
                "best_media_id": int(self.best.media.media_id), "best_object_id": int(self.best.object_id),
                "labels": dict(sorted(self.labels.items(), key=lambda kv: -kv[1]))}


@dataclass
class VideoMatch:
    """One indexed video and what the query video found in it, moments ranked by score."""

    path: str
    n_query_objects: int
    best_distance: float
    score: float
    moments: list[VideoMoment]

    def to_dict(self) -> dict:
        return {"path": self.path, "n_query_objects": self.n_query_objects,
                "best_distance": round(self.best_distance, 5), "score": round(self.score, 4),
                "moments": [m.to_dict() for m in self.moments]}


def _peaks(items: list, length_s: float) -> list[list]:
    """Split votes (vote, neighbour, query time, label) into clusters: repeatedly the ``length_s``-second stretch of
    the video holding the largest sum of votes (two pointers over the votes sorted by time)."""
    left = sorted(items, key=lambda v: v[1].media.timestamp_s)
    clusters = []
    while left:
        times = [v[1].media.timestamp_s for v in left]
        best, best_range, j, total = -1.0, (0, 1), 0, 0.0
        for i in range(len(left)):
            while j < len(left) and times[j] <= times[i] + length_s:
                total += left[j][0]
                j += 1
            if total > best + 1e-12:
                best, best_range = total, (i, j)
            total -= left[i][0]
        i, j = best_range
        clusters.append(left[i:j])
        left = left[:i] + left[j:]
    return clusters


def _moment(cluster: list) -> VideoMoment:
    best = min(cluster, key=lambda v: v[1].distance)[1]
    labels: dict[str, int] = {}
    for _, _, _, label in cluster:
        labels[label] = labels.get(label, 0) + 1
    return VideoMoment(
        start_s=min(v[1].media.timestamp_s for v in cluster), end_s=max(v[1].media.timestamp_s for v in cluster),
        query_start_s=min(v[2] for v in cluster), query_end_s=max(v[2] for v in cluster),
        n_query_objects=len(cluster), best_distance=best.distance, score=sum(v[0] for v in cluster),
        best=best, labels=labels)


def summarize_video_matches(results: Iterable[SearchResult], window_s: float = DEFAULT_GROUP_S) -> list[VideoMatch]:
    """Aggregate the searches of a query video's frames into the indexed videos they found, ranked.

    Each query object (an object detected in one query frame) votes once per indexed video, with its best
    neighbour from that video: ``1 / rank`` of that neighbour in its row (1 when it is the nearest of all). A video's
    score is the sum of its votes. Its moments are found greedily: the stretch of the video as long as the query
    (plus ``window_s``) that holds the most votes, then the best of the votes left, and so on; a moment spans the
    frames that got its votes (a person in every frame of a clip does not make the whole clip one moment). Videos
    and moments are ranked by score, then best distance. Images in the index take part in the ranks (a query object
    whose nearest neighbour is an image gives every video at most 1/2) but are not listed.

    Parameters
    ----------
    results : SearchResult per query frame (``result.query.timestamp_s`` its time in the query video), neighbours
        in ascending distance (grouped or not).
    window_s : float, seconds.

    Returns
    -------
    list of VideoMatch, best first.
    """
    votes: dict[str, list[tuple[float, Neighbor, float, str]]] = {}  # path -> (vote, neighbour, query time, label)
    query_times = []
    for result in results:
        t_query = max(0.0, float(result.query.timestamp_s))
        query_times.append(t_query)
        for i, row in enumerate(result.neighbors):
            seen: set[str] = set()
            for rank, nb in enumerate(row, 1):
                if not nb.media.is_video_frame or nb.media.path in seen:
                    continue
                seen.add(nb.media.path)
                label = result.label(int(result.detections.class_id[i])) if i < len(result.detections) else ""
                votes.setdefault(nb.media.path, []).append((1.0 / rank, nb, t_query, label))
    span = (max(query_times) - min(query_times)) if query_times else 0.0
    matches = []
    for path, items in votes.items():
        moments = [_moment(cluster) for cluster in _peaks(items, span + window_s)]
        moments.sort(key=lambda m: (-m.score, m.best_distance))
        matches.append(VideoMatch(path=path, n_query_objects=len(items),
                                  best_distance=min(v[1].distance for v in items),
                                  score=sum(v[0] for v in items), moments=moments))
    matches.sort(key=lambda m: (-m.score, m.best_distance))
    return matches
