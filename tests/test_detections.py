"""The core type: validation, dtypes, mask indexing, empty() and concat()."""

from __future__ import annotations

import numpy as np
import pytest

from objsearch.detections import Detections


@pytest.fixture
def dets():
    return Detections(
        xyxy=[[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]],
        confidence=[0.9, 0.3, 0.6],
        class_id=[0, 5, 2],
        features=np.arange(3 * 4, dtype=np.float64).reshape(3, 4),
    )


def test_arrays_are_converted_to_the_documented_dtypes(dets):
    assert len(dets) == 3
    assert dets.xyxy.dtype == np.float32 and dets.xyxy.shape == (3, 4)
    assert dets.confidence.dtype == np.float32 and dets.class_id.dtype == np.int64
    assert dets.features.dtype == np.float32 and dets.features.shape == (3, 4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"xyxy": np.zeros((2, 4)), "confidence": [0.1], "class_id": [1, 2]}, "same length, got 2, 1 and 2"),
    ({"xyxy": np.zeros((2, 4)), "confidence": [0.1, 0.2], "class_id": [1]}, "same length, got 2, 2 and 1"),
    ({"xyxy": np.zeros((2, 4)), "confidence": [0.1, 0.2], "class_id": [1, 2], "features": np.zeros((3, 4))},
     r"features must have shape \(2, D\), got \(3, 4\)"),
    ({"xyxy": np.zeros((2, 4)), "confidence": [0.1, 0.2], "class_id": [1, 2], "features": np.zeros(8)},
     r"features must have shape \(2, D\), got \(8,\)"),
])
def test_inconsistent_arrays_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Detections(**kwargs)


def test_boolean_mask_selects_every_array(dets):
    strong = dets[dets.confidence > 0.5]
    assert len(strong) == 2
    np.testing.assert_array_equal(strong.class_id, [0, 2])
    np.testing.assert_array_equal(strong.xyxy, [[0, 0, 10, 10], [1, 2, 3, 4]])
    np.testing.assert_array_equal(strong.features, dets.features[[0, 2]])
    assert len(dets[dets.confidence > 2]) == 0 and dets[dets.confidence > 2].features.shape == (0, 4)


def test_integer_and_slice_indexing_return_detections(dets):
    one = dets[1]
    assert isinstance(one, Detections) and len(one) == 1 and one.class_id[0] == 5
    assert dets[np.int64(2)].class_id.tolist() == [2]
    assert dets[1:].class_id.tolist() == [5, 2]
    assert dets[np.array([2, 0])].confidence.tolist() == pytest.approx([0.6, 0.9])


@pytest.mark.parametrize("index", [slice(1, None), slice(None, None, 2), 1, np.int64(0), [2, 0],
                                   np.array([False, True, True])], ids=["slice", "step", "int", "np.int", "list", "mask"])
def test_indexing_copies_nothing_back(dets, index):
    """Basic slices are numpy views, so each array of the part must be copied, not only mask-indexed ones."""
    dets.data["object_id"] = np.array([10, 11, 12], np.int64)
    dets.image_feature = np.ones(3, np.float32)
    before = {name: getattr(dets, name).copy() for name in ("xyxy", "confidence", "class_id", "features")}
    part = dets[index]
    assert len(part) > 0
    for name in before:
        getattr(part, name)[...] = -1
    part.data["object_id"][...] = -1
    part.image_feature[...] = -1
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(dets, name), value, err_msg=name)
    np.testing.assert_array_equal(dets.data["object_id"], [10, 11, 12])
    np.testing.assert_array_equal(dets.image_feature, 1)


def test_constructor_never_keeps_a_callers_array():
    """Arrays already of the documented dtype must be copied too: writing into the detections leaves the caller's."""
    xyxy = np.zeros((2, 4), np.float32)
    confidence = np.full(2, 0.5, np.float32)
    class_id = np.zeros(2, np.int64)
    features = np.zeros((2, 3), np.float32)
    object_id = np.arange(2, dtype=np.int64)
    image_feature = np.zeros(5, np.float32)
    dets = Detections(xyxy, confidence, class_id, features, {"object_id": object_id}, image_feature)
    for array in (dets.xyxy, dets.confidence, dets.class_id, dets.features, dets.data["object_id"],
                  dets.image_feature):
        array[...] = 7
    assert not xyxy.any() and (confidence == 0.5).all() and not class_id.any() and not features.any()
    assert object_id.tolist() == [0, 1] and not image_feature.any()


def test_empty():
    none = Detections.empty()
    assert len(none) == 0 and none.xyxy.shape == (0, 4) and none.features is None
    with_features = Detections.empty(528)
    assert with_features.features.shape == (0, 528) and with_features.features.dtype == np.float32


def test_concat_keeps_order_and_features(dets):
    both = Detections.concat([dets, dets[dets.class_id == 5], Detections.empty(4)])
    assert len(both) == 4
    assert both.class_id.tolist() == [0, 5, 2, 5]
    assert both.features.shape == (4, 4)
    np.testing.assert_array_equal(both.features[3], dets.features[1])


def test_concat_drops_features_unless_every_part_has_them(dets):
    without = Detections(dets.xyxy, dets.confidence, dets.class_id)
    joined = Detections.concat([dets, without])
    assert len(joined) == 6 and joined.features is None
    assert len(Detections.concat([])) == 0


def test_boxes_of_the_wrong_shape_are_refused_not_reshaped():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        Detections(np.zeros((4, 2)), np.zeros(2), np.zeros(2))
