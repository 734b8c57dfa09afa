"""Near-duplicates in an index: groups of near-identical images (resized, re-encoded, flipped, cropped a little; the
consecutive frames of a video) by their whole-image vectors, and of the same object seen in several images or frames
by their object vectors.

Two items are near-duplicates when the Euclidean distance of their vectors is at most ``threshold``: the raw
whole-image features for images (their 32-d random projection separated copies from other images less well: recall
0.89 against 0.92 at precision 0.95 on the made folder), the projected object vectors for objects, which must also
be of the same detected class and come from different media items. Groups are the connected
components of that graph (single linkage, as FiftyOne Brain's ``find_duplicates`` and imagededup's hash/CNN methods
group), so a run of frames that each look like the next forms one group. Each group has a representative: the largest
picture (images; ties: the earliest id) or the most confident detection (objects).

The pairs come from an exact range search (``scipy.spatial.cKDTree.query_pairs``) up to ``EXACT_MAX`` items. Beyond,
``auto`` runs faiss range searches per class (exact up to ``IVF_MIN`` items of a class, an inverted file above: 376k
SYNTHETIC objects in about a tenth of a brute-force pass, docs/watch-duplicates-map.md), and a named backend uses that
vector store's k-nearest-neighbour search (``objsearch.vectors``, with the same filters searches use: class and
excluded image), keeping the neighbours within ``threshold``: a member with more than ``k`` near-duplicates still
joins its group through the others.

The default thresholds were chosen on a folder made from coco128 with known duplicates (``tools/eval_duplicates.py``;
see docs/watch-duplicates-map.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from objsearch.errors import ObjsearchError
from objsearch.types import printable

LOGGER = logging.getLogger(__name__)

KINDS = ("images", "objects")
EXACT_MAX = 50_000  # items: exact range search up to here; beyond, faiss range searches (auto) or the store's kNN
DEFAULT_K = 16  # neighbours looked at per item through a store's kNN
IVF_MIN = 20_000  # items of one class: exact faiss range search up to here, an inverted file beyond
DEFAULT_NPROBE = 16
QUERY_BATCH = 8192
# Euclidean distances: between raw whole-image features (images), between 32-d projected object vectors (objects);
# chosen on the made folder of tools/eval_duplicates.py with the default configuration (docs/watch-duplicates-map.md)
DEFAULT_THRESHOLD = {"images": 0.22, "objects": 0.37}


@dataclass
class DuplicateGroup:
    """One group of near-duplicates.

    ids : ndarray of shape (n,), int64, n >= 2: media ids (images) or object ids (objects), the representative first,
        then by increasing distance to it.
    distances : ndarray of shape (n,), float32: each member's distance to the representative (0 for itself).
    """

    ids: np.ndarray
    distances: np.ndarray

    @property
    def representative(self) -> int:
        return int(self.ids[0])


@dataclass
class DuplicateReport:
    """What ``find_duplicates`` found: ``groups`` largest first, and how (``method`` ``exact`` or the store's
    backend name with ``k``), in ``seconds``."""

    kind: str
    threshold: float
    dims: int
    method: str
    n_items: int
    n_pairs: int
    seconds: float
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def n_duplicates(self) -> int:
        """Items that are not their group's representative (what deduplicating would remove)."""
        return sum(len(g.ids) - 1 for g in self.groups)


def default_threshold(kind: str) -> float:
    return DEFAULT_THRESHOLD[kind]


def _exact_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) within ``threshold``: (pairs (P, 2) int64 rows, distances (P,) float32)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(vectors).query_pairs(float(threshold), output_type="ndarray").astype(np.int64).reshape(-1, 2)
    d = np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1).astype(np.float32)
    return pairs, d


def _knn_pairs(store, ids: np.ndarray, vectors: np.ndarray, class_id: np.ndarray | None, image_id: np.ndarray,
               threshold: float, k: int, progress: Callable[[int, int], None] | None) \
        -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows within ``threshold`` among each item's ``k`` nearest (same class, other image) from ``store``."""
    n = len(ids)
    order = np.argsort(ids)
    found_rows, found_d = [], []
    for start in range(0, n, QUERY_BATCH):
        rows = np.arange(start, min(n, start + QUERY_BATCH))
        hits = store.search(vectors[rows], k, class_id=None if class_id is None else class_id[rows],
                            exclude_image_id=image_id[rows])
        keep = (hits.ids >= 0) & (hits.distances <= threshold)
        q, j = np.nonzero(keep)
        other = order[np.searchsorted(ids, hits.ids[q, j], sorter=order)]
        found_rows.append(np.stack([rows[q], other], 1))
        found_d.append(hits.distances[q, j])
        if progress:
            progress(int(rows[-1]) + 1, n)
    pairs = np.concatenate(found_rows) if found_rows else np.zeros((0, 2), np.int64)
    d = np.concatenate(found_d).astype(np.float32) if found_d else np.zeros(0, np.float32)
    pairs = np.sort(pairs, axis=1)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs, d[first]


def _ivf_pairs(vectors: np.ndarray, class_id: np.ndarray | None, image_id: np.ndarray, threshold: float,
               nprobe: int, progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows within ``threshold`` (same class, other image) by faiss range searches, one per class: exact
    (``IndexFlatL2``) for a class of at most ``IVF_MIN`` items, an inverted file (``IndexIVFFlat``, 4 sqrt(n) lists
    trained on a sample, ``nprobe`` of them searched) above: near-duplicates lie in the same or a neighbouring cell,
    so their recall stays near 1 (measured against exact by tools/eval_duplicates.py) at a small part of the cost."""
    import faiss

    n = len(vectors)
    groups = np.zeros(n, np.int64) if class_id is None else class_id
    found_rows, found_d = [], []
    done = 0
    for c in np.unique(groups):
        rows = np.flatnonzero(groups == c)
        x = np.ascontiguousarray(vectors[rows], np.float32)
        if len(rows) <= IVF_MIN:
            index = faiss.IndexFlatL2(x.shape[1])
        else:
            nlist = int(4 * np.sqrt(len(rows)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
            sample = np.random.default_rng(0).choice(len(rows), min(len(rows), 40 * nlist), replace=False)
            index.train(x[np.sort(sample)])
            index.nprobe = int(nprobe)
        index.add(x)
        for start in range(0, len(rows), QUERY_BATCH):
            lims, d2, j = index.range_search(x[start:start + QUERY_BATCH], float(threshold) ** 2)
            lims = lims.astype(np.int64)
            q = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
            a, b = rows[q], rows[j.astype(np.int64)]
            keep = (a < b) & (image_id[a] != image_id[b])
            found_rows.append(np.stack([a[keep], b[keep]], 1))
            found_d.append(np.sqrt(np.maximum(d2[keep], 0)).astype(np.float32))
            done += len(lims) - 1
            if progress:
                progress(done, n)
    pairs = np.concatenate(found_rows) if found_rows else np.zeros((0, 2), np.int64)
    d = np.concatenate(found_d) if found_d else np.zeros(0, np.float32)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs, d[first]


def find_duplicates(catalog, *, kind: str = "images", threshold: float | None = None, dims: int | None = None,
                    backend: str = "auto", k: int = DEFAULT_K, exact_max: int = EXACT_MAX,
                    progress: Callable[[int, int], None] | None = None, **store_options) -> DuplicateReport:
    """Groups of near-duplicate images or objects of an index.

    Parameters
    ----------
    catalog : objsearch.catalog.Catalog, open.
    kind : ``images`` (whole-image vectors; every media item, video frames included) or ``objects``.
    threshold : largest Euclidean distance between two near-duplicates: of their raw whole-image features
        (images), of their object vectors in the ``dims`` projection (objects); None: ``DEFAULT_THRESHOLD[kind]``.
    dims : stored projection dimension of the object vectors; None: 32 when stored, else the smallest (images use
        the raw whole-image features, whose length the report's ``dims`` says).
    backend : for more than ``exact_max`` items: ``auto`` (faiss range searches, exact per class up to ``IVF_MIN``
        items, an inverted file beyond: ``_ivf_pairs``), or a vector store whose kNN search is used
        (``objsearch.vectors.BACKENDS``: ``kdtree``, ``faiss``, ``numpy``, ``hnsw``; ``milvus`` takes
        ``store_options`` as ``open_store`` does, objects only).
    k : neighbours looked at per item through the store.
    exact_max : up to this many items the pairs come from an exact range search.
    progress : called with (items searched, items) during the store's search.

    Returns
    -------
    DuplicateReport

    Raises
    ------
    ValueError
        For an unknown kind, a threshold that is not a finite number >= 0, or k < 1.
    IndexFileError
        For ``images`` on an index without whole-image vectors (run ``objsearch sync``), or dims it does not hold.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    threshold = default_threshold(kind) if threshold is None else float(threshold)
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a distance >= 0, got {threshold}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t0 = time.perf_counter()
    if kind == "images":
        catalog.require_image_vectors()
        stored = catalog.image_dims
    else:
        stored = catalog.dims
    dims = int(dims) if dims is not None else (32 if 32 in stored else stored[0])
    if kind == "images":  # the raw whole-image features: their 32-d projection loses duplicates (see the docs)
        ids = np.asarray(catalog.media_id, np.int64)
        vectors = np.ascontiguousarray(catalog.image_features(ids), np.float32)
        dims = int(vectors.shape[1])
        class_id, image_id = None, ids
        score = catalog.media_width.astype(np.float64) * catalog.media_height
    else:
        ids = np.asarray(catalog.object_id, np.int64)
        vectors = catalog.vectors(dims)
        class_id, image_id = np.asarray(catalog.class_id, np.int64), np.asarray(catalog.object_media_id, np.int64)
        score = catalog.confidence.astype(np.float64)
    n = len(ids)
    if n <= exact_max:
        method = "exact"
        pairs, dist = _exact_pairs(vectors, threshold)
        keep = image_id[pairs[:, 0]] != image_id[pairs[:, 1]]
        if class_id is not None:
            keep &= class_id[pairs[:, 0]] == class_id[pairs[:, 1]]
        pairs, dist = pairs[keep], dist[keep]
    elif backend in ("auto", "faiss-ivf"):
        method = f"faiss range, IVF above {IVF_MIN} per class (nprobe {DEFAULT_NPROBE})"
        pairs, dist = _ivf_pairs(vectors, class_id, image_id, threshold, DEFAULT_NPROBE, progress)
    else:
        from objsearch.vectors import memory_store, open_store

        if backend == "milvus":
            if kind != "objects":
                raise ValueError("the milvus backend holds object vectors only: use --objects, or another backend")
            store = open_store("milvus", catalog, dims, **store_options)
        else:
            store = memory_store(backend, ids, vectors, np.zeros(n, np.int64) if class_id is None else class_id,
                                 image_id)
        try:
            method = f"{store.backend} k={int(k)}"
            pairs, dist = _knn_pairs(store, ids, vectors, class_id, image_id, threshold, int(k), progress)
        finally:
            store.close()
    report = DuplicateReport(kind=kind, threshold=threshold, dims=dims, method=method, n_items=n,
                             n_pairs=len(pairs), seconds=0.0)
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        sizes = np.bincount(label)
        members = np.flatnonzero(sizes[label] >= 2)
        members = members[np.lexsort((ids[members], label[members]))]
        bounds = np.flatnonzero(np.diff(label[members])) + 1
        for rows in np.split(members, bounds):
            best = rows[np.lexsort((ids[rows], -score[rows]))[0]]
            d = np.linalg.norm(vectors[rows] - vectors[best], axis=1).astype(np.float32)
            order = np.lexsort((ids[rows], d))
            report.groups.append(DuplicateGroup(ids[rows][order], d[order]))
        report.groups.sort(key=lambda g: (-len(g.ids), int(g.ids[0])))
    report.seconds = time.perf_counter() - t0
    return report


def report_to_dict(report: DuplicateReport, catalog, *, limit: int | None = None) -> dict:
    """The JSON-ready form of ``report`` (``objsearch duplicates --json``): each group's representative and members
    with their paths (relative to the base directory), frames, and for objects boxes (pixels xyxy), classes and
    confidences; ``limit`` keeps the first groups only."""
    names = catalog.class_names

    def media(mid: int) -> dict:
        ref = catalog.media(mid)
        out = {"media_id": int(mid), "path": printable(ref.path), "width": int(ref.width), "height": int(ref.height)}
        if ref.frame_index >= 0:
            out.update(frame_index=int(ref.frame_index), timestamp_s=round(float(ref.timestamp_s), 3))
        return out

    def item(i: int, d: float) -> dict:
        if report.kind == "images":
            return {**media(i), "distance": round(float(d), 5)}
        row = int(catalog.object_rows([i])[0])
        cid = int(catalog.class_id[row])
        return {"object_id": int(i), **media(int(catalog.object_media_id[row])),
                "box": [round(float(v), 1) for v in catalog.xyxy[row]], "class_id": cid,
                "label": names[cid] if 0 <= cid < len(names) else str(cid),
                "confidence": round(float(catalog.confidence[row]), 4), "distance": round(float(d), 5)}

    groups = report.groups if limit is None else report.groups[:limit]
    return {
        "kind": report.kind, "threshold": report.threshold, "dims": report.dims, "method": report.method,
        "n_items": report.n_items, "n_pairs": report.n_pairs, "n_groups": len(report.groups),
        "n_duplicates": report.n_duplicates, "seconds": round(report.seconds, 3),
        "groups": [{"representative": item(g.representative, 0.0),
                    "members": [item(int(i), float(d)) for i, d in zip(g.ids[1:], g.distances[1:])]}
                   for g in groups],
    }


def write_group_pictures(report: DuplicateReport, catalog, out_dir: str | Path, *, base_dir=None,
                         limit: int = 1000, max_members: int = 48, size: int = 128) -> list[Path]:
    """One JPEG per group in ``out_dir`` (``group-0001.jpg``, largest group first, at most ``limit``): the
    representative first (caption ``rep``), then up to ``max_members`` members with their distances; objects from
    their stored thumbnails, images made from their files under the index's roots (``base_dir``: ``--base-dir``
    values moving roots, ``objsearch.roots.parse_base_dirs``; a path that leaves its root is never opened: an empty
    tile). Returns the files written.

    Raises
    ------
    ObjsearchError
        When ``out_dir`` cannot be created or written.
    UntrustedRootError
        For whole images under a root this user did not choose (``objsearch trust``), before anything is written.
    """
    from objsearch.roots import Roots
    from objsearch.errors import ImageReadError
    from objsearch.media import make_thumbnail, read_media
    from objsearch.render import compose_grid

    roots = Roots.of(catalog, base_dir)
    if report.kind == "images":
        for group in report.groups[:limit]:  # refused in one line before any picture is written
            for i in group.ids[:max_members + 1]:
                roots.folder(catalog.media(int(i)).root)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(exist_ok=True)  # its parent must exist, as for every output
    except OSError as exc:
        raise ObjsearchError(f"cannot create {out_dir}: {exc.strerror or exc}") from None

    def picture(i: int):
        if report.kind == "objects":
            try:
                return catalog.thumbnail(i)
            except (KeyError, ObjsearchError):
                return None
        ref = catalog.media(i)
        path = roots.resolve(ref.root, ref.path)
        if path is None:
            return None
        try:
            image = read_media(path, ref.frame_index, 100_000_000)
        except (ImageReadError, OSError):
            return None
        return make_thumbnail(image, np.array([0, 0, image.shape[1], image.shape[0]], np.float32), size)

    written = []
    for n, group in enumerate(report.groups[:limit], 1):
        cells = []
        for j, (i, d) in enumerate(zip(group.ids[:max_members + 1], group.distances)):
            cells.append((picture(int(i)), "rep" if j == 0 else f"d={d:.3f}",
                          (120, 200, 255) if j == 0 else (170, 210, 170)))
        path = out_dir / f"group-{n:04d}.jpg"
        try:
            grid = compose_grid(cells, size=size, columns=8)
            h, w = grid.shape[:2]
            path.write_bytes(make_thumbnail(grid, np.array([0, 0, w, h], np.float32), max(h, w), quality=90))
        except OSError as exc:
            raise ObjsearchError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
