"""engine.Engine on real indexes: neighbours of the right class, self-exclusion, a moved image folder, two threads
searching at once, and an index that changes while it is open."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from testdata import BUS, coco_images, copy_images
from objsearch.analysis import analyze
from objsearch.engine import Engine
from objsearch.errors import ImageReadError, IndexFileError


@pytest.fixture(scope="module")
def searcher(small_index, detector):
    with Engine(small_index[0], detector=detector) as s:
        yield s


def classes_of(engine, ids):
    rows = engine.catalog.object_rows(ids)
    assert np.all(rows >= 0)
    return engine.catalog.class_id[rows]


def media_of(engine, ids):
    return engine.catalog.object_media_id[engine.catalog.object_rows(ids)]


@pytest.mark.slow
def test_bus_and_persons_get_neighbours_of_their_own_class(coco_index, detector):
    """Over all of coco128 (6 buses, 250+ persons): the majority of each object's 8 neighbours shares its class."""
    with Engine(coco_index, detector=detector) as searcher:
        result = searcher.search_file(BUS, k=8)
        names = searcher.class_names
        checked = []
        for cid, ids in zip(result.detections.class_id, result.hits.ids):
            if names[cid] not in ("bus", "person"):
                continue
            assert np.all(ids >= 0)
            found = classes_of(searcher, ids)
            majority, _ = Counter(found.tolist()).most_common(1)[0]
            assert names[majority] == names[cid], (names[cid], [names[c] for c in found])
            checked.append(names[cid])
        assert checked.count("bus") == 1 and checked.count("person") >= 4


def test_result_shapes_and_order(searcher):
    result = searcher.search_file(BUS, k=5)
    n = len(result.detections)
    assert n >= 5 and result.hits.ids.shape == result.hits.distances.shape == (n, 5)
    assert np.all(result.hits.ids >= 0) and np.all(np.diff(result.hits.distances, axis=1) >= 0)
    assert (result.query.width, result.query.height) == (810, 1080)
    assert {"decode", "detect", "features", "search", "assemble"} <= set(result.timings_ms)
    assert [[nb.object_id for nb in row] for row in result.neighbors] == result.hits.ids.tolist()


def test_distances_are_those_of_the_stored_vectors(searcher):
    result = searcher.search_file(BUS, k=3)
    query = searcher.catalog.projection(searcher.dims).transform(result.detections.features)
    rows = searcher.catalog.object_rows(result.hits.ids.reshape(-1)).reshape(result.hits.ids.shape)
    stored = searcher.catalog.vectors(searcher.dims)[rows]
    np.testing.assert_allclose(np.linalg.norm(stored - query[:, None], axis=2), result.hits.distances, rtol=1e-4,
                               atol=1e-4)


def test_same_class_search_returns_only_that_class(searcher):
    result = searcher.search_file(BUS, k=4, same_class=True)
    for cid, ids in zip(result.detections.class_id, result.hits.ids):
        assert np.all(classes_of(searcher, ids[ids >= 0]) == cid)


def test_an_indexed_image_does_not_find_itself(searcher, small_folder):
    image = small_folder / "sub" / coco_images(4)[3].name
    own = searcher.media_id_of(image)
    assert own >= 0 and searcher.media(own).path == f"sub/{image.name}"
    result = searcher.search_file(image, k=5)
    assert len(result.detections) > 0
    ids = result.hits.ids
    assert not np.any(media_of(searcher, ids[ids >= 0]) == own)
    kept = searcher.search_file(image, k=1, exclude_self=False)
    assert np.all(media_of(searcher, kept.hits.ids[:, 0]) == own)  # each object's nearest is itself
    np.testing.assert_allclose(kept.hits.distances[:, 0], 0, atol=1e-3)


def test_image_id_of_unknown_files(searcher, small_folder):
    assert searcher.media_id_of(BUS) == -1
    assert searcher.media_id_of(small_folder / "corrupt.jpg") == -1


def test_unreadable_query_image(searcher, small_folder):
    with pytest.raises(ImageReadError, match="not a decodable image"):
        searcher.search_file(small_folder / "corrupt.jpg")


def test_dims_not_in_the_index_are_refused(small_index, detector):
    from objsearch.config import ConfigError

    with pytest.raises(ConfigError, match="not 64"):  # a bad value of --dims (a usage error), not a bad index
        Engine(small_index[0], detector=detector, dims=64)
    with Engine(small_index[0], detector=detector, dims=16) as s:
        assert s.search_file(BUS, k=2).hits.ids.shape[1] == 2


def test_a_detector_with_other_weights_is_refused(small_index, detector, monkeypatch):
    from objsearch.errors import WeightsMismatchError

    from testdata import WEIGHTS_11

    with pytest.raises(WeightsMismatchError, match="pass the matching --weights"):
        Engine(small_index[0], weights=str(WEIGHTS_11))


def test_moved_folder_with_base_dir(tmp_path, cfg, detector):
    folder = copy_images(coco_images(8), tmp_path / "before" / "photos")
    index = tmp_path / "moved.h5"
    analyze(folder, index, cfg, detector=detector)
    moved = tmp_path / "after"
    shutil.move(str(tmp_path / "before"), moved)
    new_folder = moved / "photos"
    image = new_folder / coco_images(8)[2].name
    with Engine(index, base_dir=new_folder, detector=detector) as searcher:
        for media_id in searcher.catalog.media_id:
            assert searcher.media_path(media_id).is_file()
            assert searcher.media_path(media_id).parent == new_folder
        own = searcher.media_id_of(image)
        assert own == searcher.catalog.media_id[2]
        result = searcher.search_file(image, k=4)
        neighbours = result.hits.ids[result.hits.ids >= 0]
        assert len(neighbours) > 0 and not np.any(media_of(searcher, neighbours) == own)
    with Engine(index, detector=detector) as stale:  # the recorded folder is gone: the image is not recognised
        assert not stale.media_path(stale.catalog.media_id[0]).exists()
        assert stale.media_id_of(image) == -1


def test_two_threads_searching_at_once_get_what_they_get_alone(searcher, small_folder):
    """The engine is re-entrant: confidence, k and timings are per call (different images, thresholds and k in two
    threads at once give the results each gets alone)."""
    import threading

    jobs = [(BUS, 0.25, 5), (small_folder / coco_images(1)[0].name, 0.5, 3)] * 3
    alone = [searcher.search_file(p, k=k, conf=c).to_dict() for p, c, k in jobs]
    together: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(i):
        p, c, k = jobs[i]
        start.wait()
        together[i] = searcher.search_file(p, k=k, conf=c).to_dict()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    strip = lambda d: {**d, "timings_ms": None}  # noqa: E731
    assert [strip(d) for d in together] == [strip(d) for d in alone]
    assert alone[0] != alone[1]


def test_stored_paths_that_leave_the_base_dir_are_refused():
    from objsearch.roots import safe_path

    assert safe_path("/data/photos", "a/b.jpg") == __import__("pathlib").Path("/data/photos/a/b.jpg")
    for bad in ("/etc/passwd", "../secret.jpg", "a/../../x.jpg"):
        assert safe_path("/data/photos", bad) is None


def test_an_open_engine_sees_what_another_writer_added_and_removed(tmp_path, cfg, detector):
    """The index lives: after `add` and `remove` by another writer, ``refresh`` updates the open engine."""
    from objsearch.analysis import add, remove

    folder = copy_images(coco_images(6), tmp_path / "live")
    hidden = coco_images(8)[6:]
    index = tmp_path / "live.h5"
    analyze(folder, index, cfg, detector=detector)
    with Engine(index, detector=detector) as engine:
        before = set(engine.catalog.object_id.tolist())
        assert engine.refresh() is False
        copy_images(hidden, folder)
        add(index, [folder / p.name for p in hidden], detector=detector)
        assert engine.refresh() is True
        after = set(engine.catalog.object_id.tolist())
        assert before < after
        result = engine.search_file(folder / hidden[0].name, k=1, exclude_self=False)
        assert set(result.hits.ids[:, 0].tolist()) <= after - before  # found among the new objects
        remove(index, [folder / hidden[0].name])
        assert engine.refresh() is True
        result = engine.search_file(folder / hidden[0].name, k=len(after), exclude_self=False)
        gone = after - set(engine.catalog.object_id.tolist())
        assert gone and not gone & set(result.hits.ids.reshape(-1).tolist())


def test_the_backend_stored_with_the_index_is_opened_by_default(small_index, detector, tmp_path):
    """An index that records its vector backend (``objsearch.vectors.registry``) opens with it when the caller names
    none; a name given wins; an index without one opens ``auto`` as before; an unknown name is a ConfigError."""
    from objsearch.catalog import CatalogWriter
    from objsearch.config import ConfigError
    from objsearch.vectors.hnsw import HnswParams
    from objsearch.vectors.registry import choose, record_choice

    index = tmp_path / "INDEX.h5"
    shutil.copy(small_index[0], index)
    with Engine(index, detector=detector) as engine:
        assert engine.backend == "auto" and engine.backend_choice == choose("auto")
    with CatalogWriter.open(index, fsync=False) as writer:
        record_choice(writer, choose("hnsw", HnswParams(M=8, build_threads=1)))
        writer.commit()
    with Engine(index, detector=detector) as engine:
        assert engine.backend_choice == choose("hnsw", HnswParams(M=8, build_threads=1))
        assert engine.method == "hnsw" and (tmp_path / f"INDEX.h5.hnsw{engine.dims}").is_file()
    with Engine(index, detector=detector, backend="numpy") as engine:
        assert engine.method == "numpy"
    with pytest.raises(ConfigError, match="backend must be one of auto, kdtree, faiss, numpy, hnsw, torch, milvus, "
                                          "got 'qdrant'"):
        Engine(index, detector=detector, backend="qdrant")
