"""The real detector on bus.jpg: the same boxes as ultralytics' own predict, plus a feature vector per object."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from testdata import BUS, WEIGHTS
from objsearch.detections import Detections


@pytest.fixture(scope="module")
def bus():
    return cv2.imread(str(BUS))


@pytest.fixture(scope="module")
def bus_detections(detector, bus):
    return detector(bus)


@pytest.fixture(scope="module")
def reference(bus):
    """ultralytics' YOLO(weights).predict on the same image, default settings."""
    from ultralytics import YOLO

    boxes = YOLO(str(WEIGHTS)).predict(bus, verbose=False)[0].boxes
    return boxes.xyxy.numpy(), boxes.cls.numpy().astype(np.int64), boxes.conf.numpy()


def test_boxes_and_classes_equal_ultralytics_predict(bus_detections, reference):
    xyxy, class_id, confidence = reference
    assert len(bus_detections) == len(xyxy) > 0
    np.testing.assert_allclose(bus_detections.xyxy, xyxy, atol=1e-3)
    np.testing.assert_array_equal(bus_detections.class_id, class_id)
    np.testing.assert_allclose(bus_detections.confidence, confidence, atol=1e-5)


def test_features_have_one_finite_row_per_object(detector, bus_detections):
    feats = bus_detections.features
    assert isinstance(bus_detections, Detections)
    assert feats.shape == (len(bus_detections), detector.n_features) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert len(np.unique(feats.round(4), axis=0)) == len(feats)  # every object gets its own vector


def test_feature_blocks_have_the_recipe_norms(detector, bus_detections):
    """Default recipe cls_logits:2.5 (80-d, norm 2.5) then neck_roi:1 (3 levels, each norm 1)."""
    assert detector.recipe == {"cls_logits": 2.5, "neck_roi": 1.0}
    assert detector.block_sizes() == {"cls_logits": 80, "neck_roi": detector.n_features - 80}
    n_classes = len(detector.names)
    logits, neck = bus_detections.features[:, :n_classes], bus_detections.features[:, n_classes:]
    np.testing.assert_allclose(np.linalg.norm(logits, axis=1), 2.5, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(neck, axis=1), np.sqrt(3), rtol=1e-4)


def test_class_scores_come_with_every_detection(detector, bus_detections):
    """Every class's score at the detection's anchor: the largest is the confidence, at the detected class; an image
    without detections gives (0, 80)."""
    scores = bus_detections.data["class_scores"]
    assert scores.shape == (len(bus_detections), len(detector.names)) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.max(1), bus_detections.confidence, rtol=1e-5)
    np.testing.assert_array_equal(scores.argmax(1), bus_detections.class_id)
    assert np.all((scores >= 0) & (scores <= 1))
    empty = detector(np.zeros((320, 320, 3), np.uint8))
    assert len(empty) == 0 and empty.data["class_scores"].shape == (0, len(detector.names))


def test_bus_and_persons_are_found(detector, bus_detections):
    names = [detector.names[c] for c in bus_detections.class_id]
    assert detector.names[0] == "person" and detector.names[5] == "bus"
    assert names.count("bus") == 1 and names.count("person") >= 4
    bus_box = bus_detections.xyxy[names.index("bus")]
    assert (bus_box[2] - bus_box[0]) > 600  # the bus spans most of the 810 px wide picture


def test_boxes_lie_within_the_image(bus_detections, bus):
    h, w = bus.shape[:2]
    xyxy = bus_detections.xyxy
    assert np.all(xyxy[:, :2] >= 0) and np.all(xyxy[:, 2] <= w) and np.all(xyxy[:, 3] <= h)
    assert np.all(xyxy[:, 2:] > xyxy[:, :2])


def test_detection_is_deterministic_and_leaves_the_image_alone(detector, bus, bus_detections):
    before = bus.copy()
    again = detector(bus)
    np.testing.assert_array_equal(bus, before)
    np.testing.assert_allclose(again.features, bus_detections.features, atol=1e-6)


def test_a_blank_image_has_no_objects(detector):
    dets = detector(np.full((240, 320, 3), 127, np.uint8))
    assert len(dets) == 0 and dets.features.shape == (0, detector.n_features)


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                   np.zeros((10, 10, 4), np.uint8), "bus.jpg"])
def test_non_images_are_refused(detector, image):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        detector(image)


def test_recipe_and_weights_identity(detector):
    recipe = detector.feature_recipe()
    assert recipe["n_features"] == detector.n_features == 80 + 448
    assert recipe["imgsz"] == 640 and recipe["blocks"] == detector.recipe
    assert len(detector.weights_sha256) == 64


def test_unknown_recipe_block_is_refused():
    from objsearch.pooling import parse_recipe

    assert parse_recipe("cls_cell:1,cls_logits:0.5") == {"cls_cell": 1.0, "cls_logits": 0.5}
    with pytest.raises(ValueError, match="unknown feature block 'bogus'"):
        parse_recipe("bogus:1")
    with pytest.raises(ValueError, match="positive"):
        parse_recipe("cls_cell:0")


def test_letterbox_shape_is_the_shape_the_network_sees(detector):
    """Oracle: ultralytics' LetterBox applied to real arrays of each shape."""
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(new_shape=(detector.imgsz, detector.imgsz), auto=True, stride=detector.stride)
    for shape in [(480, 640), (427, 640), (640, 425), (1080, 810), (100, 2000), (37, 41), (640, 640), (3, 700)]:
        expected = letterbox(image=np.zeros((*shape, 3), np.uint8)).shape[:2]
        assert detector.letterbox_shape(shape) == expected
        assert detector.letterbox_shape((*shape, 3)) == expected


def test_a_batch_of_one_letterbox_shape_gives_each_image_its_own_features(detector):
    """detect_batch on coco128 images sharing a letterbox shape equals one detector call per image."""
    from testdata import coco_images

    images = [cv2.imread(str(p)) for p in coco_images(40)]
    same = [im for im in images if detector.letterbox_shape(im.shape) == (448, 640)][:5]
    assert len(same) >= 3 and len({im.shape for im in same}) >= 2  # e.g. 425x640 and 427x640 share 448x640
    for alone, batched in zip([detector(im) for im in same], detector.detect_batch(same, auto=True)):
        assert len(alone) == len(batched)
        np.testing.assert_array_equal(alone.class_id, batched.class_id)
        np.testing.assert_allclose(batched.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(batched.confidence, alone.confidence, atol=1e-5)
        np.testing.assert_allclose(batched.features, alone.features, atol=1e-5)


def test_mirror_features_are_those_of_the_mirrored_image(detector, bus):
    """``mirror=True`` pools each object from the flipped input: its box-pooled block (``neck_roi``) must be nearly
    the one the same object gets when the mirrored image itself is queried, and much nearer to it than the plain
    feature is (flip robustness). The anchor-cell block (``cls_logits``) only gets nearer: the mirrored image's NMS
    may keep another cell of the same object."""
    from objsearch.evaluate import match_boxes

    dets = detector.detect_batch([bus], mirror=True)[0]
    assert dets.data["mirror_features"].shape == dets.features.shape
    flipped = detector(np.ascontiguousarray(bus[:, ::-1]))
    w = bus.shape[1]
    back = np.stack([w - flipped.xyxy[:, 2], flipped.xyxy[:, 1], w - flipped.xyxy[:, 0], flipped.xyxy[:, 3]], 1)
    match = match_boxes(back, flipped.confidence, dets.xyxy)
    assert (match >= 0).sum() >= 4
    ours = dets.data["mirror_features"][match[match >= 0]]
    plain = dets.features[match[match >= 0]]
    theirs = flipped.features[match >= 0]
    assert list(detector.recipe) == ["cls_logits", "neck_roi"]
    neck = slice(len(detector.names), None)
    to_mirror = np.linalg.norm(ours[:, neck] - theirs[:, neck], axis=1)
    to_plain = np.linalg.norm(plain[:, neck] - theirs[:, neck], axis=1)
    assert np.all(to_mirror < 0.35 * to_plain), (to_mirror, to_plain)  # measured: 0.04-0.25 against 0.65-1.1
    whole_mirror, whole_plain = np.linalg.norm(ours - theirs, axis=1), np.linalg.norm(plain - theirs, axis=1)
    assert whole_mirror.mean() < 0.8 * whole_plain.mean(), (whole_mirror, whole_plain)
    np.testing.assert_array_equal(detector.detect_batch([bus])[0].features, dets.features)  # plain ones unchanged
