"""analysis.analyze end to end on real coco128 images, and the HDF5 index file it writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from testdata import BUS, DIMS, N_SMALL, coco_images, copy_images
from objsearch.analysis import analyze
from objsearch.catalog import Catalog
from objsearch.errors import EmptyFolderError, ImageReadError, IndexFileError
from objsearch.media import make_thumbnail, read_image


@pytest.fixture(scope="module")
def index(small_index):
    with Catalog(small_index[0]) as f:
        yield f


def rows_of_media(index, i):
    """Object rows of the i-th image."""
    return np.flatnonzero(index.object_media_id == index.media_id[i])


def test_summary_counts(small_index):
    _, summary = small_index
    assert summary.n_images == summary.n_added == N_SMALL
    assert summary.n_other_files == 1  # notes.txt
    assert summary.n_resumed == 0
    assert summary.n_objects > 2 * N_SMALL
    assert 0 <= summary.n_no_objects < N_SMALL


def test_unreadable_images_are_skipped_with_reasons(small_index):
    skipped = {s.path: s.reason for s in small_index[1].skipped}
    assert sorted(skipped) == ["corrupt.jpg", "empty.jpg"]
    assert "the file is empty" in skipped["empty.jpg"]
    assert "not a decodable image" in skipped["corrupt.jpg"]


def test_no_journal_or_temporary_file_is_left(small_index):
    path = small_index[0]
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_index_file_counts(index, small_index):
    _, summary = small_index
    assert len(index.media_path) == N_SMALL == len(index.media_width) == len(index.media_height)
    assert len(index.object_id) == summary.n_objects == len(index.xyxy) == len(index.confidence) == len(index.class_id)
    assert index.dims == DIMS
    assert [s.path for s in index.skipped] == ["corrupt.jpg", "empty.jpg"]
    assert set(index.object_media_id.tolist()) <= set(index.media_id.tolist())
    assert np.all(np.diff(index.object_media_id) >= 0)  # objects are stored image by image
    assert np.all(np.diff(index.object_id) > 0) and np.all(np.diff(index.media_id) > 0)  # stable, increasing ids


def test_image_paths_are_relative_posix_and_exist(index, small_folder):
    names = sorted(p.name for p in coco_images(N_SMALL))
    assert sorted(p.rsplit("/", 1)[-1] for p in index.media_path) == names
    assert sum(p.startswith("sub/") for p in index.media_path) == N_SMALL // 2
    for p in index.media_path:
        assert not p.startswith("/") and "\\" not in p
        assert (small_folder / p).is_file()
    assert index.base_dir == str(small_folder.resolve())


def test_image_sizes_are_the_real_ones(index, small_folder):
    for i in (0, N_SMALL - 1):
        h, w = cv2.imread(str(small_folder / index.media_path[i])).shape[:2]
        assert (index.media_width[i], index.media_height[i]) == (w, h)


def test_boxes_lie_within_their_image(index):
    rows = index.media_rows(index.object_media_id)
    w = index.media_width[rows]
    h = index.media_height[rows]
    xyxy = index.xyxy
    assert np.all(xyxy[:, 0] >= 0) and np.all(xyxy[:, 1] >= 0)
    assert np.all(xyxy[:, 2] <= w) and np.all(xyxy[:, 3] <= h)
    assert np.all(xyxy[:, 2] > xyxy[:, 0]) and np.all(xyxy[:, 3] > xyxy[:, 1])
    assert np.all((index.confidence >= 0.6) & (index.confidence <= 1))  # the default index_conf
    assert np.all((index.class_id >= 0) & (index.class_id < len(index.class_names)))


def test_stored_boxes_equal_a_fresh_detection(index, small_folder, detector, cfg):
    """What is stored is a fresh detection kept by the index's hygiene: confidence >= index_conf, class-aware
    duplicates suppressed (objsearch.hygiene.index_keep)."""
    from objsearch.hygiene import index_keep

    i = 3
    dets = detector(cv2.imread(str(small_folder / index.media_path[i])))
    dets = dets[dets.confidence >= cfg["index_conf"]]
    dets = dets[index_keep(dets.xyxy, dets.confidence, dets.class_id, dedup_iou=cfg["dedup_iou"])]
    assert len(dets) >= 2
    rows = rows_of_media(index, i)
    np.testing.assert_allclose(index.xyxy[rows], dets.xyxy, atol=1e-3)
    np.testing.assert_array_equal(index.class_id[rows], dets.class_id)
    np.testing.assert_allclose(index.features(index.object_id[rows]), dets.features, atol=1e-5)


def test_thumbnails_decode_to_at_most_128_px(index):
    for row in range(0, len(index.object_id), max(1, len(index.object_id) // 25)):
        thumb = cv2.imdecode(np.frombuffer(index.thumbnail(index.object_id[row]), np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.ndim == 3
        x1, y1, x2, y2 = index.xyxy[row]
        assert max(thumb.shape[:2]) <= 128
        if max(x2 - x1, y2 - y1) > 140:  # large crops are scaled down to exactly 128 on the longest side
            assert max(thumb.shape[:2]) == 128


@pytest.mark.parametrize("dims", DIMS)
def test_stored_projection_reproduces_the_stored_vectors(index, dims):
    proj = index.projection(dims)
    features = index.features(index.object_id)
    vectors = index.vectors(dims)
    assert features.shape == (len(index.object_id), 528) and vectors.shape == (len(index.object_id), dims)
    assert proj.method == "pca" and proj.random_state == 0 and proj.n_components == dims
    np.testing.assert_allclose(proj.transform(features), vectors, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", DIMS)
def test_pca_is_fitted_to_every_analysed_object(index, dims):
    """The stored PCA is the one of all the index's features (oracle: a batch SVD fit), including the objects of
    the last, not yet committed, images when the fit ran (it once saw only committed rows: all-zero vectors)."""
    from objsearch.projection import PCAProjection

    features, vectors = index.features(index.object_id), index.vectors(dims)
    oracle = PCAProjection(dims).fit(features).transform(features)
    top = 8  # well-separated leading components: equal up to rounding (signs are fixed by both fits)
    np.testing.assert_allclose(vectors[:, :top], oracle[:, :top], atol=1e-3)
    assert np.all(vectors[:, :top].std(0) > 0.01)


def test_missing_projection_is_an_index_file_error(index):
    with pytest.raises(IndexFileError, match="128"):
        index.projection(128)
    # the rerank vectors' projection is stored beside the search ones, not among dims (objsearch.rerank)
    assert index.rerank_dims == 64 and 64 not in index.dims and index.projection(64).method == "mirror_whitened"


def test_features_read_in_any_order(index):
    all_features = index.features(index.object_id)
    ids = index.object_id[[5, 1, 5]]
    np.testing.assert_array_equal(index.features(ids), all_features[[5, 1, 5]])
    assert index.features([]).shape == (0, 528)


def test_metadata_records_the_configuration_and_model(index, cfg, detector):
    attrs = index.attrs
    assert attrs["format"] == "objsearch-index" and index.format_version == 2 and index.state == "ready"
    assert attrs["config"]["dims"] == DIMS and attrs["config"]["seed"] == cfg["seed"]
    assert attrs["weights_name"] == "yolov8n-reconstructed.pt"
    assert index.weights_sha256 == detector.weights_sha256
    assert attrs["feature_recipe"] == detector.feature_recipe()
    assert index.class_names == detector.names and len(index.class_names) == 80


def test_existing_output_is_refused_then_overwritten(tmp_path, cfg, detector):
    folder = copy_images(coco_images(2), tmp_path / "two")
    out = tmp_path / "two.h5"
    out.write_text("old")
    with pytest.raises(IndexFileError):  # not an index: refused, left as it is
        analyze(folder, out, cfg, detector=detector)
    assert out.read_text() == "old"
    summary = analyze(folder, out, cfg, detector=detector, overwrite=True)
    assert summary.n_images == 2
    with Catalog(out) as f:
        assert len(f.media_path) == 2


def test_analyzing_a_finished_index_again_points_at_sync(tmp_path, cfg, detector):
    folder = copy_images(coco_images(2), tmp_path / "two")
    out = tmp_path / "two.h5"
    analyze(folder, out, cfg, detector=detector)
    with pytest.raises(IndexFileError, match="objsearch sync"):
        analyze(folder, out, cfg, detector=detector)


def test_progress_is_reported_per_image(tmp_path, cfg, detector):
    folder = copy_images(coco_images(3), tmp_path / "three")
    calls = []
    summary = analyze(folder, tmp_path / "three.h5", cfg, detector=detector, progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert calls[-1][2] == summary.n_objects


def test_an_output_inside_the_folder_is_not_analysed(tmp_path, cfg, detector):
    folder = copy_images(coco_images(2), tmp_path / "inside")
    analyze(folder, folder / "index.h5", cfg, detector=detector)
    with Catalog(folder / "index.h5") as f:
        assert len(f.media_path) == 2


@pytest.mark.parametrize("make", ["missing", "no_images"])
def test_a_folder_without_images_is_refused(tmp_path, cfg, detector, make):
    folder = tmp_path / "folder"
    if make == "no_images":
        folder.mkdir()
        (folder / "readme.txt").write_text("x")
    with pytest.raises(EmptyFolderError, match="holds no image files|is not a folder"):
        analyze(folder, tmp_path / "x.h5", cfg, detector=detector)
    assert not (tmp_path / "x.h5").exists()


def test_a_folder_whose_images_have_no_objects_gives_an_empty_index(tmp_path, cfg, detector):
    folder = tmp_path / "blank"
    folder.mkdir()
    cv2.imwrite(str(folder / "gray.png"), np.full((64, 64, 3), 128, np.uint8))
    summary = analyze(folder, tmp_path / "blank.h5", cfg, detector=detector)
    assert summary.n_images == 1 and summary.n_objects == 0 and summary.n_no_objects == 1
    with Catalog(tmp_path / "blank.h5") as f:
        assert len(f.object_id) == 0 and f.media_path == ["gray.png"]


def test_read_image_errors(tmp_path):
    assert read_image(BUS).shape == (1080, 810, 3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for path, match in [(tmp_path / "empty.jpg", "the file is empty"), (tmp_path / "text.jpg", "not a decodable"),
                        (tmp_path / "missing.jpg", "cannot read image"), (tmp_path, "cannot read image")]:
        with pytest.raises(ImageReadError, match=match):
            read_image(path)


def test_make_thumbnail_crops_and_clips():
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:200, 50:350] = 255
    thumb = cv2.imdecode(np.frombuffer(make_thumbnail(image, np.array([50, 100, 350, 200])), np.uint8), 1)
    assert thumb.shape == (43, 128, 3) and thumb.mean() > 200  # 300x100 crop scaled to 128 wide
    small = cv2.imdecode(np.frombuffer(make_thumbnail(image, np.array([-20, -5, 30, 20])), np.uint8), 1)
    assert small.shape == (20, 30, 3)  # clipped to the image, small crops are not enlarged


def test_batched_analysis_equals_one_image_at_a_time(small_folder, small_index, cfg, detector, tmp_path):
    """``batch`` 4 over mixed shapes and unreadable files: same images in the same order, same objects and features
    (to float32 noise), and one progress call per image."""
    calls = []
    out = tmp_path / "batched.h5"
    summary = analyze(small_folder, out, {**cfg, "batch": 4}, detector=detector, progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(i, N_SMALL + 2) for i in range(1, N_SMALL + 3)]
    assert calls[-1][2] == summary.n_objects == small_index[1].n_objects
    assert summary.skipped == small_index[1].skipped
    with Catalog(small_index[0]) as alone, Catalog(out) as batched:
        assert batched.media_path == alone.media_path
        np.testing.assert_array_equal(batched.object_id, alone.object_id)
        np.testing.assert_array_equal(batched.object_media_id, alone.object_media_id)
        np.testing.assert_array_equal(batched.class_id, alone.class_id)
        np.testing.assert_allclose(batched.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(batched.features(batched.object_id), alone.features(alone.object_id), atol=1e-5)
        assert batched.attrs["config"]["batch"] == 4


def test_a_raising_progress_callback_mid_batch_leaves_a_journal_that_resumes(tmp_path, cfg, detector):
    folder = copy_images(coco_images(7), tmp_path / "seven")
    out = tmp_path / "seven.h5"
    batched = {**cfg, "batch": 4}

    def stop_at_three(done, total, objects):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze(folder, out, batched, detector=detector, progress=stop_at_three)
    with Catalog(out) as unfinished:  # it opens, and says it is unfinished
        assert unfinished.state == "analyzing"
    summary = analyze(folder, out, batched, detector=detector)
    assert summary.n_resumed == 3 and summary.n_images == 7
    whole = analyze(folder, tmp_path / "whole.h5", cfg, detector=detector)
    with Catalog(out) as resumed, Catalog(tmp_path / "whole.h5") as f:
        assert resumed.media_path == f.media_path and len(resumed.object_id) == len(f.object_id) == whole.n_objects
        np.testing.assert_array_equal(resumed.object_id, f.object_id)
        np.testing.assert_allclose(resumed.features(f.object_id), f.features(f.object_id), atol=1e-5)
        np.testing.assert_allclose(resumed.vectors(32), f.vectors(32), atol=1e-5)


def test_index_hygiene_keeps_confident_distinct_objects_with_mirrored_features(tmp_path, cfg, detector):
    """index_conf, dedup_iou and index_mirror (cfg/quality.yaml): what is stored is exactly the confident detections
    less same-class duplicates, each with the mean of its own and its mirrored features; the settings are stored and
    come back for add/sync; an index made before these keys existed keeps none."""
    from objsearch.provenance import index_config
    from objsearch.hygiene import box_iou, index_keep

    folder = copy_images(coco_images(4), tmp_path / "imgs")
    hygiene = {"index_conf": 0.5, "dedup_iou": 0.5, "index_mirror": True}
    analyze(folder, tmp_path / "h.h5", {**cfg, **hygiene}, detector=detector)
    with Catalog(tmp_path / "h.h5") as f:
        assert len(f.object_id) > 0 and np.all(f.confidence >= 0.5)
        for i, rel in enumerate(f.media_path):
            dets = detector.detect_batch([cv2.imread(str(folder / rel))], conf=0.5, mirror=True)[0]
            keep = index_keep(dets.xyxy, dets.confidence, dets.class_id, dedup_iou=0.5)
            rows = rows_of_media(f, i)
            np.testing.assert_allclose(f.xyxy[rows], dets.xyxy[keep], atol=1e-3)
            mean = 0.5 * (dets.features + dets.data["mirror_features"])[keep]
            np.testing.assert_allclose(f.features(f.object_id[rows]), mean, atol=1e-5)
            same = f.class_id[rows][:, None] == f.class_id[rows][None, :]
            iou = box_iou(f.xyxy[rows], f.xyxy[rows]) * same
            assert np.all(iou[~np.eye(len(rows), dtype=bool)] < 0.5)
        assert {k: f.attrs["config"][k] for k in hygiene} == hygiene
        assert {k: index_config(f)[k] for k in hygiene} == hygiene
    with Catalog(tmp_path / "h.h5") as f:
        class Old:  # the attributes of an index made before the hygiene keys existed
            path = f.path
            attrs = {**f.attrs, "config": {k: v for k, v in f.attrs["config"].items() if k not in hygiene}}
        assert {k: index_config(Old)[k] for k in hygiene} == {"index_conf": None, "dedup_iou": None,
                                                              "index_mirror": False}
