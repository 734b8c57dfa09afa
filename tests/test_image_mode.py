"""Whole-image search: one vector per media item from the detector pass, stored and tombstoned with the media row,
searched through the vector stores, added to older indexes by sync, scored by ``eval --mode image``."""

from __future__ import annotations

import json
import shutil

import cv2
import h5py
import numpy as np
import pytest
from testdata import BUS, DATA, DIMS, coco_images, copy_images, run_cli

from objsearch.catalog import Catalog
from objsearch.errors import IndexFileError

COCO8 = DATA / "coco8"


def strip_image_vectors(path) -> None:
    """Make ``path`` look like an index written before whole-image search: no /image, no image_recipe."""
    from objsearch.catalog.attrs import decode_attrs, encode_attrs

    with h5py.File(path, "r+") as f:
        attrs = decode_attrs(dict(f.attrs.items()), path)
        attrs.pop("image_recipe")
        del f["image"]
        for key in list(f.attrs.keys()):
            del f.attrs[key]
        for key, value in encode_attrs(attrs).items():
            f.attrs[key] = value


@pytest.fixture
def index_copy(small_index, tmp_path):
    path, _ = small_index
    dst = tmp_path / "index.h5"
    shutil.copy(path, dst)
    return dst


def test_every_media_item_has_its_image_vector(small_index, detector):
    path, summary = small_index
    with Catalog(path) as cat:
        assert cat.has_image_vectors and cat.image_dims == DIMS
        assert len(cat.media_id) == summary.n_images > 0
        feats = cat.image_features(cat.media_id)
        assert feats.shape == (len(cat.media_id), detector.n_image_features) and np.all(np.isfinite(feats))
        assert np.all(np.linalg.norm(feats, axis=1) > 0)
        for d in DIMS:  # oracle: the stored vectors are the stored projection of the stored features
            np.testing.assert_allclose(cat.image_vectors(d), cat.image_projection(d).transform(feats), atol=1e-5)
        assert cat.image_recipe == detector.image_feature_recipe()
        # the same vector as the detector gives for the file now
        first = cv2.imread(str(cat.base_dir + "/" + cat.media_path[0]))
        np.testing.assert_allclose(detector(first).image_feature, feats[0], atol=1e-4)


def test_image_feature_ignores_letterbox_padding(detector):
    """An image gets (nearly) the same vector alone or square-padded in a batch beside another shape: pooling
    reads only the cells inside the image."""
    a, b = (cv2.imread(str(p)) for p in coco_images(2))
    b = np.ascontiguousarray(b[: b.shape[0] // 2])  # a very different aspect ratio: lots of padding in a batch
    alone = detector(b).image_feature
    batched = detector.detect_batch([a, b], auto=False)[1].image_feature
    cos = float(alone @ batched / np.linalg.norm(alone) / np.linalg.norm(batched))
    assert cos > 0.95, cos
    assert detector(a).image_feature.shape == (detector.n_image_features,)


def test_removed_with_its_media_item_and_kept_by_compact(index_copy, small_folder):
    from objsearch import analysis

    with Catalog(index_copy) as cat:
        before = dict(zip(cat.media_id.tolist(), cat.image_vectors(32)))
        victim_path, victim = cat.media_path[3], int(cat.media_id[3])
    analysis.remove(index_copy, [small_folder / victim_path])
    for step in ("removed", "compacted"):
        with Catalog(index_copy) as cat:
            assert victim not in cat.media_id
            vectors = cat.image_vectors(32)
            assert vectors.shape == (len(cat.media_id), 32) == (len(before) - 1, 32)
            for mid, v in zip(cat.media_id.tolist(), vectors):
                np.testing.assert_array_equal(v, before[mid])
        if step == "removed":
            analysis.compact(index_copy)


def test_search_finds_the_query_image_itself_first(small_index, index_copy, small_folder, detector):
    from objsearch.engine import Engine

    path, _ = small_index
    with Engine(path, detector=detector) as engine:
        cat = engine.catalog
        rel = cat.media_path[5]
        me = int(cat.media_id[5])
        result = engine.search_image_file(small_folder / rel, k=5, exclude_self=False)
        assert result.neighbors[0].media.media_id == me and result.neighbors[0].distance < 1e-3
        # oracle: brute force over the stored vectors
        q = cat.image_projection(32).transform(detector(cv2.imread(str(small_folder / rel))).image_feature[None])
        dist = np.linalg.norm(cat.image_vectors(32) - q, axis=1)
        order = np.argsort(dist, kind="stable")[:5]
        assert [n.media.media_id for n in result.neighbors] == cat.media_id[order].tolist()
        np.testing.assert_allclose([n.distance for n in result.neighbors], dist[order], rtol=1e-4, atol=1e-4)
        excluded = engine.search_image_file(small_folder / rel, k=5, exclude_self=True)
        assert me not in [n.media.media_id for n in excluded.neighbors] and len(excluded.neighbors) == 5
        for backend in ("numpy", "kdtree", "hnsw"):  # on a copy: hnsw keeps its graph beside the index
            with Engine(index_copy, detector=detector, backend=backend) as other:
                got = other.search_image_file(small_folder / rel, k=3, exclude_self=False)
                assert got.neighbors[0].media.media_id == me


def test_flipped_and_resized_images_find_their_original(small_index, small_folder, detector):
    from objsearch.engine import Engine

    path, _ = small_index
    with Engine(path, detector=detector) as engine:
        cat = engine.catalog
        found = 0
        for i in range(0, len(cat.media_id), 4):
            image = cv2.imread(str(small_folder / cat.media_path[i]))
            h, w = image.shape[:2]
            for distorted in (image[:, ::-1].copy(), cv2.resize(image, (w * 3 // 4, h * 3 // 4))):
                found += engine.search_image(distorted, k=1).neighbors[0].media.media_id == cat.media_id[i]
        n = 2 * len(range(0, len(cat.media_id), 4))
        assert found >= n - 1, f"{found}/{n}"


@pytest.mark.slow
def test_query_mode_image_json_and_picture(small_index, small_folder, tmp_path):
    path, _ = small_index
    with Catalog(path) as cat:
        rel = cat.media_path[0]
    out = tmp_path / "row.png"
    proc = run_cli("query", "--mode", "image", small_folder / rel, BUS, "-i", path, "--json", "-k", "4",
                   "--include-self")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 2
    for obj in lines:
        assert set(obj) == {"image", "width", "height", "timings_ms", "neighbors"}
        assert len(obj["neighbors"]) == 4
        for nb in obj["neighbors"]:
            assert set(nb) == {"image_id", "path", "distance"}
        dists = [nb["distance"] for nb in obj["neighbors"]]
        assert dists == sorted(dists)
        assert obj["timings_ms"]["image_feature"] < obj["timings_ms"]["detect"]
    assert lines[0]["neighbors"][0]["path"] == rel and lines[0]["neighbors"][0]["distance"] < 1e-3
    proc = run_cli("query", "--mode", "image", small_folder / rel, "-i", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "similar images" in proc.stdout and rel not in proc.stdout.splitlines()[1]  # itself left out by default
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 480
    proc = run_cli("query", "--mode", "sideways", BUS, "-i", path)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_old_index_is_told_to_sync_and_sync_fills_it_in(index_copy, small_folder, detector):
    from objsearch import analysis
    from objsearch.engine import Engine

    with Catalog(index_copy) as cat:
        want = cat.image_vectors(32)
    strip_image_vectors(index_copy)
    with Catalog(index_copy) as cat:
        assert not cat.has_image_vectors and cat.image_dims == []
        with pytest.raises(IndexFileError, match="objsearch sync"):
            cat.image_vectors(32)
    with Engine(index_copy, detector=detector) as engine:  # object search reads the old file as before
        assert len(engine.search(cv2.imread(str(BUS))).detections) > 0
        with pytest.raises(IndexFileError, match="objsearch sync"):
            engine.search_image(cv2.imread(str(BUS)))
    proc = run_cli("query", "--mode", "image", BUS, "-i", index_copy)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error:") and "objsearch sync" in proc.stderr
    summary = analysis.sync(index_copy, detector=detector)
    assert summary.n_image_vectors == summary.n_images > 0
    with Catalog(index_copy) as cat:
        assert cat.has_image_vectors
        np.testing.assert_allclose(cat.image_vectors(32), want, atol=1e-4)
    assert analysis.sync(index_copy, detector=detector).n_image_vectors == 0  # nothing left to do


def test_add_to_an_old_index_keeps_it_without_image_vectors(tmp_path, cfg, detector):
    from objsearch import analysis

    folder = copy_images(coco_images(3), tmp_path / "imgs")
    analysis.analyze(folder, tmp_path / "i.h5", cfg, detector=detector)
    strip_image_vectors(tmp_path / "i.h5")
    copy_images(coco_images(4)[-1:], folder)
    analysis.add(tmp_path / "i.h5", [folder], detector=detector)
    with Catalog(tmp_path / "i.h5") as cat:
        assert len(cat.media_id) == 4 and not cat.has_image_vectors and "image_recipe" not in cat.attrs
    summary = analysis.sync(tmp_path / "i.h5", detector=detector)
    assert summary.n_image_vectors == 4
    with Catalog(tmp_path / "i.h5") as cat:
        assert cat.image_vectors(16).shape == (4, 16)


def test_journal_keeps_the_image_feature():
    from objsearch.analysis.journal import record_from_bytes, record_to_bytes
    from objsearch.types import Detections, MediaRecord, MediaRef

    dets = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 5), np.float32),
                      image_feature=np.arange(7, dtype=np.float32))
    _, back = record_from_bytes(record_to_bytes(3, MediaRecord(MediaRef("a.jpg", 4, 3), dets, [])))
    np.testing.assert_array_equal(back.detections.image_feature, dets.image_feature)


def test_damaged_image_group_is_refused(index_copy):
    with h5py.File(index_copy, "r+") as f:
        f["image/features"].resize(f["image/features"].shape[0] - 1, axis=0)
    with pytest.raises(IndexFileError, match="image/features"):
        Catalog(index_copy)


@pytest.mark.slow
def test_eval_mode_image_on_coco8(tmp_path):
    proc = run_cli("eval", "--mode", "image", COCO8, "--dims", "16", "--json", "--weights",
                   DATA / "weights" / "yolov8n-reconstructed.pt")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n_images"] == 8 and [m["name"] for m in report["methods"]] == ["objsearch (same pass)",
                                                                                    "YOLO.embed()"]
    ours, peer = report["methods"]
    assert ours["ms_per_image"] < ours["pass_ms_per_image"]  # the marginal cost, inside one detector pass
    assert len(report["results"]) == 4  # 2 methods x (16, raw)
    for r in report["results"]:
        assert 0 <= r["precision_at_k"]["1"] <= 1 and 0 <= r["instance_recall_at_1"]["mean"] <= 1
    raw = [r for r in report["results"] if r["method"] == ours["name"] and r["dims"] == "raw"][0]
    assert raw["instance_recall_at_1"]["mean"] >= 0.75
    unlabeled = copy_images(coco_images(2), tmp_path / "plain" / "images")
    proc = run_cli("eval", "--mode", "image", unlabeled.parent)
    assert proc.returncode != 0 and proc.stderr.startswith("error:") and "labels" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_engine_refresh_picks_up_added_images_in_image_mode(index_copy, small_folder, detector, tmp_path):
    from objsearch import analysis
    from objsearch.engine import Engine

    new = coco_images(40)[-1]
    shutil.copy(new, small_folder / "added_for_refresh.jpg")
    try:
        with Engine(index_copy, detector=detector) as engine:
            before = engine.search_image_file(new, k=1)
            assert before.neighbors[0].media.path != "added_for_refresh.jpg"
            analysis.add(index_copy, [small_folder / "added_for_refresh.jpg"], detector=detector)
            assert engine.refresh()
            after = engine.search_image_file(new, k=1)
            assert after.neighbors[0].media.path == "added_for_refresh.jpg" and after.neighbors[0].distance < 1e-3
    finally:
        (small_folder / "added_for_refresh.jpg").unlink()


def test_an_index_of_another_image_recipe_is_remade_by_sync_not_mixed(tmp_path, cfg, detector):
    from objsearch import analysis
    from objsearch.provenance import load_detector

    folder = copy_images(coco_images(3), tmp_path / "imgs")
    analysis.analyze(folder, tmp_path / "i.h5", cfg, detector=detector)
    other = load_detector(cfg)
    other.image_recipe = {"neck_gap": 1.0, "cls_max": 0.5}  # same F (528), other blocks
    assert other.n_image_features == detector.n_image_features
    copy_images(coco_images(4)[-1:], folder)
    with pytest.raises(IndexFileError, match="objsearch sync"):
        analysis.add(tmp_path / "i.h5", [folder], detector=other)
    assert analysis.sync(tmp_path / "i.h5", detector=other).n_image_vectors == 3  # remade, then the new one added
    with Catalog(tmp_path / "i.h5") as cat:
        assert cat.image_recipe["blocks"] == other.image_recipe and len(cat.media_id) == 4
        feats = cat.image_features(cat.media_id)
        image = cv2.imread(str(folder / cat.media_path[0]))
        np.testing.assert_allclose(feats[0], other(image).image_feature, atol=1e-4)
