"""The evaluation protocol: its pieces on hand-made inputs, and the measured quality on coco128 with a margin."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from testdata import COCO128, COCO128_IMAGES, WEIGHTS
from objsearch import evaluate as ev
from objsearch.cli import app
from objsearch.detections import Detections
from objsearch.hygiene import IndexPolicy


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [1, 1, 3, 3]], np.float32)
    expected = [[1.0, 50 / 150, 0.0, 4 / 100],
                [4 / 100, 0.0, 0.0, 1 / 7]]
    iou = ev.box_iou(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_box_iou_of_empty_and_degenerate_boxes():
    assert ev.box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    np.testing.assert_array_equal(ev.box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]]), [[0.0]])  # zero area, no NaN


def test_match_boxes_most_confident_detection_first():
    targets = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    dets = np.array([[0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    # the more confident detection takes the target although the other one overlaps it more
    np.testing.assert_array_equal(ev.match_boxes(dets, [0.9, 0.5, 0.8], targets), [0, -1, -1])
    np.testing.assert_array_equal(ev.match_boxes(dets, [0.1, 0.5, 0.8], targets), [-1, 0, -1])


def test_match_boxes_is_one_to_one_and_takes_the_best_free_target():
    targets = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    dets = np.array([[1, 0, 11, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    match = ev.match_boxes(dets, [0.9, 0.8, 0.7], targets)
    np.testing.assert_array_equal(match, [1, 0, -1])  # every target used once; the third detection is left over


def test_match_boxes_threshold_and_empty_inputs():
    targets = np.array([[0, 0, 10, 10]], np.float32)
    half = np.array([[5, 0, 15, 10]], np.float32)  # IoU 1/3
    assert ev.match_boxes(half, [1.0], targets).tolist() == [-1]
    assert ev.match_boxes(half, [1.0], targets, iou_threshold=0.3).tolist() == [0]
    assert ev.match_boxes(np.zeros((0, 4)), [], targets).shape == (0,)
    assert ev.match_boxes(half, [1.0], np.zeros((0, 4))).tolist() == [-1]


def test_read_yolo_labels(tmp_path):
    label = tmp_path / "a.txt"
    label.write_text("3 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n")
    xyxy, class_id = ev.read_yolo_labels(label, 100, 50)
    np.testing.assert_allclose(xyxy, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    assert class_id.tolist() == [3, 0] and class_id.dtype == np.int64
    (tmp_path / "empty.txt").write_text("")
    for path in (tmp_path / "empty.txt", tmp_path / "missing.txt"):
        xyxy, class_id = ev.read_yolo_labels(path, 10, 10)
        assert xyxy.shape == (0, 4) and class_id.shape == (0,)


def test_read_yolo_labels_of_a_real_coco128_file():
    image = COCO128_IMAGES / "000000000009.jpg"
    label = ev.label_path_for(image)
    assert label == COCO128 / "labels" / "train2017" / "000000000009.txt"
    xyxy, class_id = ev.read_yolo_labels(label, 640, 480)
    assert len(xyxy) == len(label.read_text().split()) // 5 == len(class_id) > 0
    assert np.all(xyxy[:, 2] > xyxy[:, 0]) and np.all(xyxy >= -1) and np.all(xyxy[:, 2] <= 641)


def test_precision_at_k_with_padding():
    neighbours = np.array([[1, 1, 2, -1],      # 3 returned: 1/1 at k=1, 2/3 at k=4
                           [2, 2, 2, 2],       # none right
                           [-1, -1, -1, -1]])  # nothing returned: left out
    query = np.array([1, 1, 0])
    assert ev.precision_at_k(neighbours, query, 1) == pytest.approx((1 + 0) / 2)
    assert ev.precision_at_k(neighbours, query, 2) == pytest.approx((1 + 0) / 2)
    assert ev.precision_at_k(neighbours, query, 4) == pytest.approx((2 / 3 + 0) / 2)
    assert np.isnan(ev.precision_at_k(neighbours[2:], query[2:], 4))


def test_transforms_map_boxes_back():
    image = np.zeros((40, 80, 3), np.uint8)
    flipped, back = ev.apply_transform(image, "hflip")
    assert flipped.shape == image.shape
    np.testing.assert_allclose(back(np.array([[10.0, 5, 30, 25]])), [[50, 5, 70, 25]])
    small, back = ev.apply_transform(image, "resize0.75")
    assert small.shape[:2] == (30, 60)
    np.testing.assert_allclose(back(np.array([[6.0, 3, 12, 6]])), [[8, 4, 16, 8]])
    jpeg, back = ev.apply_transform(image, "jpeg60")
    assert jpeg.shape == image.shape
    with pytest.raises(ValueError, match="unknown transform"):
        ev.apply_transform(image, "rotate")


def test_collect_and_score_on_a_synthetic_set(tmp_path):
    """Four one-object images of two well separated classes, with a fake detector whose feature is the class centre
    plus a per-image offset: the protocol must give perfect class precision and instance recall."""
    import cv2

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 20
    offsets = rng.normal(size=(4, 16))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.full((64, 64, 3), 40 * i + 20, np.uint8))
        (tmp_path / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.25 0.25 0.25 0.25\n")  # box [8, 8, 24, 24]

    def detect(image):
        i = int(image[0, 0, 0]) // 40
        box = np.array([[8, 8, 24, 24]], np.float32) * (image.shape[1] / 64)  # follows the 0.75x resize
        feature = centres[i % 2] + offsets[i] + rng.normal(size=16) * 0.01
        return Detections(box, [0.9], [i % 2], feature[None])

    data = ev.collect(detect, ev.list_labeled_images(tmp_path))
    assert data.n_images == data.n_ground_truth == data.n_detections == len(data.objects) == 4
    assert data.objects.data["true_class"].tolist() == [0, 1, 0, 1]
    assert data.objects.data["image_id"].tolist() == [0, 1, 2, 3]
    assert data.coverage == {"hflip": 0.0, "resize0.75": 1.0, "jpeg60": 1.0}  # the flipped box lands elsewhere
    result = ev.score(data, 16, "random")
    assert result["precision_at_k"][1] == 1.0 and result["precision_at_k_same_class"][1] == 1.0
    assert result["precision_at_k"][5] == pytest.approx(1 / 3)  # 3 other objects returned, 1 of the same class
    assert result["instance_recall_at_1"]["resize0.75"] == result["instance_recall_at_1"]["jpeg60"] == 1.0
    assert np.isnan(result["instance_recall_at_1"]["hflip"]) and result["instance_recall_at_1"]["mean"] == 1.0


@pytest.mark.slow
def test_eval_on_coco128_meets_the_measured_quality():
    result = CliRunner().invoke(app, ["eval", str(COCO128), "--dims", "32", "--json", "--weights", str(WEIGHTS)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 128 and report["n_ground_truth"] == 929
    (at32,) = report["results"]
    precision, same_class = at32["precision_at_k"]["5"], at32["precision_at_k_same_class"]["5"]
    recall = at32["instance_recall_at_1"]["mean"]
    print(f"coco128 at 32 dims: P@5 {precision:.3f}, same-class P@5 {same_class:.3f}, instance R@1 {recall:.3f}")
    # measured with yolov8n-reconstructed and the default configuration (rerank vectors at 64 dims): 0.699, 0.929,
    # 0.983 (flip 0.954); without the rerank (and cls_logits 1.5, issue 11) 0.664, 0.931, 0.924 (flip 0.831)
    assert precision >= 0.66
    assert same_class >= 0.88
    assert recall >= 0.95 and at32["instance_recall_at_1"]["hflip"] >= 0.92
    assert at32["rerank"] and at32["without_rerank"]["instance_recall_at_1"]["hflip"] < 0.90
    # the realistic protocol (leave-one-image-out): every detection the default hygiene keeps indexed (index_conf 0.6,
    # dedup 0.5: 295 of 645, 17 matching no labeled object); measured 0.599, 0.923 (0.037 of the same-class
    # neighbours false), 0.989 -- issue 11's defaults 0.576, 0.924, 0.953; before the hygiene 0.541, 0.727, 0.892
    (loo,) = report["realistic"]["leave-one-image-out on coco128"]
    assert loo["n_index"] == 295 and loo["n_index_unmatched"] == 17 and loo["n_queries"] == 475
    assert loo["precision_at_k"]["5"] >= 0.57 and loo["precision_at_k_same_class"]["5"] >= 0.88
    assert loo["false_neighbours_same_class"] <= 0.08 and loo["instance_recall_at_1"]["mean"] >= 0.96
    assert sum(loo["miss_breakdown"]["same_class"][k] for k in ev.MISS_KINDS) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ the realistic protocol
def _hand_set(rows, gts, n_images, dims=32):
    """A LabeledSet from hand-written detections ``(image, box, confidence, class_id, feature)`` and labels
    ``(image, box, class)``; every view re-detects each object exactly (same box and feature)."""
    xyxy = np.array([r[1] for r in rows], np.float32)
    dets = Detections(xyxy, [r[2] for r in rows], [r[3] for r in rows], np.array([r[4] for r in rows], np.float32),
                      {"image_id": np.array([r[0] for r in rows], np.int64)})
    dets.data["mirror_features"] = dets.features.copy()
    gt_xyxy = np.array([g[1] for g in gts], np.float32)
    gt_class = np.array([g[2] for g in gts], np.int64)
    gt_image = np.array([g[0] for g in gts], np.int64)
    dets.data["true_class"] = ev.label_detections(dets.xyxy, dets.confidence, dets.data["image_id"], gt_xyxy, gt_class,
                                                  gt_image)
    views = {t: Detections(dets.xyxy, dets.confidence, dets.class_id, dets.features,
                           {"image_id": dets.data["image_id"]}) for t in ev.TRANSFORMS}
    return ev.LabeledSet(dets, views, gt_xyxy, gt_class, gt_image, [f"{i}.jpg" for i in range(n_images)])


def test_realistic_protocol_counts_a_false_positive_neighbour_wrong():
    """Index: image 0 holds a labeled car and a false-positive 'car' on background (confidence 0.3); image 1 a dog.
    The query car (another image) is nearest the false positive, then the real car: P@1 = 0 and P@5 = 1/3 (three
    returned), same-class P@5 = 1/2 (the dog is filtered out), and one same-class neighbour in two is false. With
    index_conf 0.5 the false positive is not indexed and the real car comes first."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=32) * 10
    car, fp, dog = q + rng.normal(size=32) * 1.0, q + rng.normal(size=32) * 0.01, -q
    box, other = [10, 10, 50, 50], [60, 60, 90, 90]
    index = _hand_set([(0, box, 0.9, 2, car), (0, other, 0.3, 2, fp), (1, box, 0.8, 16, dog)],
                      [(0, box, 2), (1, box, 16)], 2)
    assert index.detections.data["true_class"].tolist() == [2, -1, 16]
    queries = _hand_set([(0, box, 0.7, 2, q)], [(0, box, 2)], 1)
    data = ev.realistic(index, queries, conf=0.25)
    assert len(data.index) == 3 and len(data.queries) == 1
    r = ev.score_realistic(data, 32, "pca")
    assert r["precision_at_k"][1] == 0.0 and r["precision_at_k"][5] == pytest.approx(1 / 3)
    assert r["precision_at_k_same_class"][1] == 0.0 and r["precision_at_k_same_class"][5] == pytest.approx(1 / 2)
    assert r["false_neighbours_same_class"] == pytest.approx(1 / 2)
    assert r["n_index_unmatched"] == 1
    clean = ev.score_realistic(ev.realistic(index, queries, 0.25, IndexPolicy(index_conf=0.5)), 32, "pca")
    assert clean["n_index"] == 2 and clean["precision_at_k"][1] == 1.0 and clean["precision_at_k"][5] == 0.5
    assert clean["precision_at_k_same_class"][5] == 1.0 and clean["false_neighbours_same_class"] == 0.0
    # the instance index holds the query images too: every re-detected object finds itself
    assert all(clean["instance_recall_at_1"][t] == 1.0 for t in ev.TRANSFORMS)


def test_realistic_leave_one_image_out_and_duplicates():
    """Leave-one-image-out on one set: a query never finds its own image; a duplicate box of a labeled object is
    a detection that matches nothing (one-to-one matching) and is removed by class-aware dedup."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=32) * 10, rng.normal(size=32) * 10
    box, dup = [10, 10, 50, 50], [12, 10, 52, 50]
    labeled = _hand_set([(0, box, 0.9, 0, a), (0, dup, 0.6, 0, a + 0.01), (1, box, 0.9, 0, a + 0.5),
                         (2, box, 0.9, 5, b)], [(0, box, 0), (1, box, 0), (2, box, 5)], 3)
    assert labeled.detections.data["true_class"].tolist() == [0, -1, 0, 5]
    data = ev.realistic(labeled, None, 0.25)
    assert data.exclude_same_image and len(data.queries) == 3
    r = ev.score_realistic(data, 32, "pca")
    # query 0 (image 0): neighbours image 1's person (right) then image 2's; query 2 (image 1): the person and its
    # duplicate in image 0, the duplicate wrong
    assert r["precision_at_k_same_class"][5] == pytest.approx((1 + 1 / 2 + 0) / 2)  # the class-5 query gets none
    deduped = ev.realistic(labeled, None, 0.25, IndexPolicy(dedup_iou=0.5))
    assert len(deduped.index) == 3
    r = ev.score_realistic(deduped, 32, "pca")
    assert r["precision_at_k_same_class"][5] == 1.0 and r["n_index_unmatched"] == 0


def test_matched_protocol_from_a_labeled_set_keeps_only_matched_detections():
    rng = np.random.default_rng(3)
    box, other = [10, 10, 50, 50], [60, 60, 90, 90]
    labeled = _hand_set([(0, box, 0.9, 2, rng.normal(size=32)), (0, other, 0.3, 2, rng.normal(size=32)),
                         (1, box, 0.2, 2, rng.normal(size=32))], [(0, box, 2), (1, box, 2)], 2)
    data = ev.matched_data(labeled, 0.25)
    assert len(data.objects) == 1 and data.n_detections == 2 and data.n_ground_truth == 2
    assert data.coverage == {t: 1.0 for t in ev.TRANSFORMS}


def test_index_keep_by_hand():
    from objsearch.hygiene import index_keep

    xyxy = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [51, 50, 61, 60]], np.float32)
    conf = np.array([0.9, 0.8, 0.7, 0.3, 0.6])
    cls = np.array([1, 1, 2, 1, 1])
    assert index_keep(xyxy, conf, cls).tolist() == [True] * 5
    assert index_keep(xyxy, conf, cls, min_confidence=0.5).tolist() == [True, True, True, False, True]
    # row 1 overlaps the more confident row 0 of its class (IoU 9/11); row 2 is another class; row 3 loses to row 4
    assert index_keep(xyxy, conf, cls, dedup_iou=0.5).tolist() == [True, False, True, False, True]
    assert index_keep(xyxy, conf, cls, dedup_iou=0.85).tolist() == [True, True, True, True, True]
    assert index_keep(np.zeros((0, 4)), [], []).shape == (0,)


def test_index_policy_by_hand():
    """The one rule analysis, evaluation and the CLI apply: confidence >= max(conf, index_conf), then class-aware
    duplicates; with mirror the stored vector is the mean of the object's and its mirror's features."""
    dets = Detections(xyxy=[[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], confidence=[0.9, 0.8, 0.5],
                      class_id=[1, 1, 1], features=np.ones((3, 2)), data={"mirror_features": np.full((3, 2), 3.0)})
    assert IndexPolicy().min_confidence(0.25) == 0.25
    assert IndexPolicy(index_conf=0.6).min_confidence(0.25) == 0.6
    assert IndexPolicy(index_conf=0.1).min_confidence(0.25) == 0.25  # never below the query's
    assert IndexPolicy(index_conf=0.6).keep(dets, 0.25).tolist() == [True, True, False]
    assert IndexPolicy(dedup_iou=0.5).keep(dets, 0.25).tolist() == [True, False, True]
    assert IndexPolicy(index_conf=0.6, dedup_iou=0.5).keep(dets, 0.25).tolist() == [True, False, False]
    np.testing.assert_array_equal(IndexPolicy().features(dets), 1.0)
    np.testing.assert_array_equal(IndexPolicy(mirror=True).features(dets), 2.0)
    policy = IndexPolicy.from_config({"conf": 0.25, "index_conf": "0.5", "dedup_iou": None, "index_mirror": True})
    assert policy == IndexPolicy(index_conf=0.5, dedup_iou=None, mirror=True)
    assert IndexPolicy.from_config({"conf": 0.25}) == IndexPolicy()  # an index made before these settings existed


def test_eval_refuses_a_query_folder_without_labels(tmp_path):
    from testdata import coco_images, copy_images, run_cli

    folder = copy_images(coco_images(2), tmp_path / "q" / "images")
    result = run_cli("eval", str(COCO128), "--queries", str(folder.parent))
    assert result.returncode == 5
    assert result.stderr.strip().splitlines() == [f"error: {folder.parent} has no YOLO labels (expected labels/ next "
                                                  "to images/, one .txt per image)"]


def test_miss_breakdown_by_hand():
    """Index rows: 0 a labeled dog detected dog, 1 a labeled cat detected dog, 2 a labeled cat detected cat, 3 a
    loose dog box (IoU 0.3), 4 a duplicate (IoU 0.8, label taken), 5 a false detection. Query A (labeled dog, detected
    dog) gets rows 0..5; query B (labeled dog, detected cat) gets row 0 and row 2."""
    index_true = np.array([16, 15, 15, -1, -1, -1])
    index_class = np.array([16, 16, 15, 16, 16, 16])
    label_iou = np.array([0.9, 0.9, 0.9, 0.3, 0.8, 0.05], np.float32)
    ids = np.array([[0, 1, 2, 3, 4, 5], [0, 2, -1, -1, -1, -1]])
    b = ev.miss_breakdown(ids, np.array([16, 16]), np.array([16, 15]), index_true, index_class, label_iou, k=6)
    assert b["n_missed"] == 6 and b["miss_rate"] == pytest.approx(6 / 8)
    assert b["query_class_mistake"] == pytest.approx(1 / 6)  # B's row 2 (its row 0 is right)
    assert b["neighbour_class_mistake"] == b["other_class"] == b["loose_box"] == b["duplicate"] == \
        b["false_detection"] == pytest.approx(1 / 6)
    right = (ids >= 0) & (index_true[np.clip(ids, 0, None)] == 16)
    by_class = ev.precision_by_class(right, ids >= 0, np.array([16, 16]), k=6)
    assert by_class == {16: (2, pytest.approx((1 / 6 + 1 / 2) / 2))}


def test_bigger_protocol_indexes_every_other_query_image():
    """Index set: 2 images; query set: 5 images named out of order. The index gets the query images at sorted
    positions 0, 2, 4 (renumbered after the index set's), the queries the ones at 1, 3; labels and views follow."""
    def labeled(names, first_class):
        n = len(names)
        box = np.array([[0, 0, 10, 10]], np.float32).repeat(n, 0)
        dets = Detections(box, np.full(n, 0.9), np.arange(n) + first_class, np.eye(n, 8, dtype=np.float32),
                          {"image_id": np.arange(n), "true_class": np.arange(n) + first_class})
        views = {t: Detections(box, np.full(n, 0.9), np.arange(n), np.eye(n, 8, dtype=np.float32),
                               {"image_id": np.arange(n)}) for t in ev.TRANSFORMS}
        return ev.LabeledSet(dets, views, box, np.arange(n) + first_class, np.arange(n), names)

    index_set = labeled(["a.jpg", "b.jpg"], 0)
    query_set = labeled(["q4.jpg", "q0.jpg", "q3.jpg", "q1.jpg", "q2.jpg"], 10)
    index, queries = ev.bigger_protocol(index_set, query_set)
    assert index.names == ["a.jpg", "b.jpg", "q0.jpg", "q2.jpg", "q4.jpg"]
    assert queries.names == ["q1.jpg", "q3.jpg"]
    order = np.argsort(index.detections.data["image_id"])
    assert index.detections.data["image_id"][order].tolist() == [0, 1, 2, 3, 4]
    # q0 was row 1 (class 11), q2 row 4, q4 row 0: each detection follows its image
    assert index.detections.class_id[order].tolist() == [0, 1, 11, 14, 10]
    gt = np.argsort(index.gt_image_id)
    assert index.gt_image_id[gt].tolist() == [0, 1, 2, 3, 4] and index.gt_class[gt].tolist() == [0, 1, 11, 14, 10]
    q = np.argsort(queries.detections.data["image_id"])
    assert queries.detections.class_id[q].tolist() == [13, 12] and sorted(queries.gt_image_id.tolist()) == [0, 1]
    assert all(sorted(v.data["image_id"].tolist()) == [0, 1] for v in queries.views.values())


def test_eval_with_queries_leads_with_the_bigger_protocol(tmp_path):
    """coco8's 4 train images index, its 4 val images query: the bigger protocol indexes 2 of the val images too
    (sorted positions 0 and 2) and queries with the other 2; each result carries the same search without the rerank,
    the first protocol its misses and per-class precision (text and JSON)."""
    import shutil

    from testdata import DATA

    for split, folder in (("train", tmp_path / "index"), ("val", tmp_path / "queries")):
        for kind, suffix in (("images", ".jpg"), ("labels", ".txt")):
            (folder / kind).mkdir(parents=True)
            for p in sorted((DATA / "coco8" / kind / split).glob("*" + suffix)):
                shutil.copy(p, folder / kind / p.name)
    args = ["eval", str(tmp_path / "index"), "--queries", str(tmp_path / "queries"), "--dims", "16",
            "--protocol", "realistic", "--weights", str(WEIGHTS)]
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    names = list(report["realistic"])
    assert names[0].startswith("bigger: index + every other image of queries") and len(names) == 3
    (bigger,), (cross,) = report["realistic"][names[0]], report["realistic"][names[1]]
    assert bigger["n_queries"] < cross["n_queries"] and bigger["n_index"] > cross["n_index"]
    assert bigger["rerank"] and report["rerank_dims"] == 64 and "without_rerank" in bigger
    assert set(bigger["miss_breakdown"]) == {"class_agnostic", "same_class"} and bigger["precision_at_5_by_class"]
    text = CliRunner().invoke(app, args).stdout
    assert "bigger: index + every other image" in text and " 16 plain |" in text
    assert text.count("class-agnostic misses at 5") == 1 and "same-class P@5, most queried: person" in text
