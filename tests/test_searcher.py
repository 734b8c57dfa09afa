"""engine.Searcher on real indexes: neighbours of the right class, self-exclusion, a moved image folder."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from conftest import BUS, coco_images, copy_images
from objsearch.engine import Searcher, analyze
from objsearch.errors import ImageReadError, IndexFileError


@pytest.fixture(scope="module")
def searcher(small_index, detector):
    with Searcher(small_index[0], detector=detector) as s:
        yield s


@pytest.mark.slow
def test_bus_and_persons_get_neighbours_of_their_own_class(coco_index, detector):
    """Over all of coco128 (6 buses, 250+ persons): the majority of each object's 8 neighbours shares its class."""
    with Searcher(coco_index, detector=detector) as searcher:
        result = searcher.search_file(BUS, k=8)
        names = searcher.class_names
        checked = []
        for cid, ids in zip(result.detections.class_id, result.ids):
            if names[cid] not in ("bus", "person"):
                continue
            assert np.all(ids >= 0)
            majority, _ = Counter(searcher.index.class_id[ids].tolist()).most_common(1)[0]
            assert names[majority] == names[cid], (names[cid], [names[c] for c in searcher.index.class_id[ids]])
            checked.append(names[cid])
        assert checked.count("bus") == 1 and checked.count("person") >= 4


def test_result_shapes_and_order(searcher):
    result = searcher.search_file(BUS, k=5)
    n = len(result.detections)
    assert n >= 5 and result.ids.shape == result.distances.shape == (n, 5)
    assert np.all(result.ids >= 0) and np.all(np.diff(result.distances, axis=1) >= 0)
    assert (result.width, result.height) == (810, 1080)
    assert {"decode", "detect", "features", "search"} <= set(result.timings_ms)


def test_distances_are_those_of_the_stored_vectors(searcher):
    result = searcher.search_file(BUS, k=3)
    query = searcher.index.projection(searcher.dims).transform(result.detections.features)
    stored = searcher.index.vectors(searcher.dims)[result.ids]
    np.testing.assert_allclose(np.linalg.norm(stored - query[:, None], axis=2), result.distances, rtol=1e-4, atol=1e-4)


def test_same_class_search_returns_only_that_class(searcher):
    result = searcher.search_file(BUS, k=4, same_class=True)
    for cid, ids in zip(result.detections.class_id, result.ids):
        assert np.all(searcher.index.class_id[ids[ids >= 0]] == cid)


def test_an_indexed_image_does_not_find_itself(searcher, small_folder):
    image = small_folder / "sub" / coco_images(4)[3].name
    own = searcher.image_id_of(image)
    assert own >= 0 and searcher.index.image_path[own] == f"sub/{image.name}"
    result = searcher.search_file(image, k=5)
    assert len(result.detections) > 0
    assert not np.any(searcher.index.image_id[result.ids[result.ids >= 0]] == own)
    kept = searcher.search_file(image, k=1, exclude_self=False)
    assert np.all(searcher.index.image_id[kept.ids[:, 0]] == own)  # each object's nearest is itself
    np.testing.assert_allclose(kept.distances[:, 0], 0, atol=1e-3)


def test_image_id_of_unknown_files(searcher, small_folder):
    assert searcher.image_id_of(BUS) == -1
    assert searcher.image_id_of(small_folder / "corrupt.jpg") == -1


def test_unreadable_query_image(searcher, small_folder):
    with pytest.raises(ImageReadError, match="not a decodable image"):
        searcher.search_file(small_folder / "corrupt.jpg")


def test_dims_not_in_the_index_are_refused(small_index, detector):
    with pytest.raises(IndexFileError, match="not 64"):
        Searcher(small_index[0], detector=detector, dims=64)
    with Searcher(small_index[0], detector=detector, dims=16) as s:
        assert s.search_file(BUS, k=2).ids.shape[1] == 2


def test_a_detector_with_other_weights_is_refused(small_index, detector, monkeypatch):
    from objsearch.errors import WeightsMismatchError

    monkeypatch.setattr(detector, "weights_sha256", "0" * 64)
    with pytest.raises(WeightsMismatchError, match="pass the matching --weights"):
        Searcher(small_index[0], detector=detector)


def test_moved_folder_with_base_dir(tmp_path, cfg, detector):
    folder = copy_images(coco_images(8), tmp_path / "before" / "photos")
    index = tmp_path / "moved.h5"
    analyze(folder, index, cfg, detector=detector)
    moved = tmp_path / "after"
    shutil.move(str(tmp_path / "before"), moved)
    new_folder = moved / "photos"
    image = new_folder / coco_images(8)[2].name
    with Searcher(index, base_dir=new_folder, detector=detector) as searcher:
        for i in range(len(searcher.index.image_path)):
            assert searcher.image_path(i).is_file()
            assert searcher.image_path(i).parent == new_folder
        own = searcher.image_id_of(image)
        assert own == 2
        result = searcher.search_file(image, k=4)
        neighbours = result.ids[result.ids >= 0]
        assert len(neighbours) > 0 and not np.any(searcher.index.image_id[neighbours] == own)
    with Searcher(index, detector=detector) as stale:  # the recorded folder is gone: the image is not recognised
        assert not stale.image_path(0).exists()
        assert stale.image_id_of(image) == -1
