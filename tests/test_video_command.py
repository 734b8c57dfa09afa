"""Live search (``objsearch.live``: search_frame, the thumbnail cache, the pipeline thread) and the ``video`` command,
on frames of a real video against the small session index."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from testdata import DATA, WEIGHTS, run_cli
from objsearch.errors import ObjsearchError
from objsearch.live import LivePipeline, LiveResult, QuerySettings, ThumbnailCache, search_frame
from objsearch.sources import FrameSlot, VideoFileSource

VIDEO = DATA / "video" / "one-by-one-person-detection.mp4"  # 768x432, 10 fps; a person in frames 100 and 150
OBJECT_KEYS = {"box", "class_id", "label", "confidence", "neighbors"}
NEIGHBOR_KEYS = {"object_id", "image_id", "path", "box", "class_id", "label", "confidence", "distance"}


def read_frames(*numbers):
    with VideoFileSource(VIDEO) as source:
        out = []
        for n in numbers:
            source.seek(n)
            out.append(source.read())
    return out


@pytest.fixture(scope="module")
def searcher(small_index, detector):
    from objsearch.engine import Engine

    with Engine(small_index[0], weights=str(WEIGHTS), detector=detector) as s:
        yield s


@pytest.fixture(scope="module")
def person_frame():
    return read_frames(100)[0]


def check_objects(objects, n_index_objects, k):
    for obj in objects:
        assert OBJECT_KEYS <= set(obj) <= OBJECT_KEYS | {"note"}
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 432
        assert 0 < obj["confidence"] <= 1 and isinstance(obj["class_id"], int)
        assert len(obj["neighbors"]) == k
        distances = [nb["distance"] for nb in obj["neighbors"]]
        assert distances[1:] == sorted(distances[1:])  # a promoted instance may lead (docs/neighbours.md)
        for nb in obj["neighbors"]:
            assert set(nb) == NEIGHBOR_KEYS
            assert nb["object_id"] >= 0 and nb["image_id"] >= 0
            assert nb["path"].endswith(".jpg") and len(nb["box"]) == 4


# ------------------------------------------------------------------------------------------- search_frame
def test_search_frame_payload(searcher, person_frame, small_index):
    result = search_frame(searcher, person_frame, QuerySettings(k=3))
    assert isinstance(result, LiveResult) and result.frame is person_frame and result.thumbnails == {}
    payload = result.result.to_dict()
    assert payload["frame"] == 100 and payload["timestamp_s"] == pytest.approx(10.0)
    assert set(payload) == {"frame", "timestamp_s", "image", "width", "height", "timings_ms", "objects"}
    assert (payload["width"], payload["height"]) == (768, 432) and payload["image"] == str(VIDEO)
    assert "person" in [obj["label"] for obj in payload["objects"]]
    check_objects(payload["objects"], small_index[1].n_objects, 3)
    assert {"detect", "features", "search", "assemble"} <= set(result.timings_ms)
    assert "thumbnails" not in result.timings_ms
    json.dumps(payload)  # serialisable as a JSON line


def test_search_frame_thumbnails_come_from_the_cache(searcher, person_frame):
    cache = ThumbnailCache(searcher)
    first = search_frame(searcher, person_frame, QuerySettings(k=4), cache)
    ids = set(first.result.object_ids())
    assert ids and set(first.thumbnails) == ids
    for oid, thumb in first.thumbnails.items():
        assert thumb.ndim == 3 and thumb.shape[2] == 3 and thumb.dtype == np.uint8
        expected = cv2.imdecode(np.frombuffer(searcher.thumbnail(oid), np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(thumb, expected)
    assert cache.misses == len(ids) and cache.hits == 0
    assert "thumbnails" in first.timings_ms

    second = search_frame(searcher, person_frame, QuerySettings(k=4), cache)
    assert set(second.thumbnails) == ids  # the same frame finds the same neighbours
    assert cache.hits == len(ids) and cache.misses == len(ids)


def test_thumbnail_cache_drops_the_least_recently_used(searcher):
    cache = ThumbnailCache(searcher, capacity=2)
    a, b, c = searcher.catalog.object_id[:3]
    cache.get(a), cache.get(b), cache.get(a), cache.get(c)  # b is the least recently used when c arrives
    assert list(cache._items) == [a, c]
    cache.get(b)
    assert (cache.hits, cache.misses) == (1, 4)


def test_search_frame_same_class(searcher, person_frame):
    result = search_frame(searcher, person_frame, QuerySettings(k=5, same_class=True))
    for obj in result.result.to_dict()["objects"]:
        assert obj["neighbors"] and all(nb["class_id"] == obj["class_id"] for nb in obj["neighbors"])


def test_search_frame_unknown_dims_is_an_objsearch_error(searcher, person_frame):
    with pytest.raises(ObjsearchError, match="not 7"):
        search_frame(searcher, person_frame, QuerySettings(dims=7))


def test_search_frame_conf_applies_to_the_frame(searcher, person_frame):
    strict = search_frame(searcher, person_frame, QuerySettings(k=1, conf=0.95))
    assert len(strict.result.detections) == 0  # the person is detected at about 0.91


def test_search_frame_conf_none_goes_back_to_the_index_threshold(searcher, person_frame):
    search_frame(searcher, person_frame, QuerySettings(k=1, conf=0.95))
    again = search_frame(searcher, person_frame, QuerySettings(k=1, conf=None))
    assert "person" in [obj["label"] for obj in again.result.to_dict()["objects"]]
    assert searcher.detector.conf == searcher.conf == 0.25  # nothing is left behind on shared objects


# -------------------------------------------------------------------------------------------------- pipeline
def test_live_pipeline_processes_frames_and_survives_errors(searcher):
    frames = read_frames(0, 100, 150)
    slot, results, errors = FrameSlot(), [], []
    got = threading.Semaphore(0)

    def on_result(result):
        results.append(result)
        got.release()

    def on_error(message):
        errors.append(message)
        got.release()

    settings = QuerySettings(k=2)
    pipeline = LivePipeline(searcher, slot, on_result, on_error=on_error, settings=settings,
                            compose=lambda r: len(r.result.detections))
    pipeline.start()
    try:
        for frame in frames:
            assert slot.put(frame, wait=True, timeout=30)
        for _ in frames:
            assert got.acquire(timeout=30)
        assert [r.result.query.frame_index for r in results] == [0, 100, 150] and errors == []
        assert slot.dropped == 0 and all(r.dropped == 0 for r in results)
        for r in results:
            assert r.extra == len(r.result.detections) and "compose" in r.timings_ms
            assert set(r.thumbnails) == set(r.result.object_ids())
        assert "person" in [obj["label"] for obj in results[1].result.to_dict()["objects"]]

        settings.dims = 7  # read at the next frame: the index holds no 7-d projection
        assert slot.put(frames[1], wait=True, timeout=30)
        assert got.acquire(timeout=30)
        assert len(errors) == 1 and "not 7" in errors[0] and len(results) == 3
        assert pipeline.is_alive()

        settings.dims = None
        assert slot.put(frames[2], wait=True, timeout=30)
        assert got.acquire(timeout=30)
        assert len(results) == 4 and results[3].result.query.frame_index == 150 and len(errors) == 1
        assert pipeline.n_frames == 4
    finally:
        t0 = time.perf_counter()
        pipeline.stop()
    assert not pipeline.is_alive() and time.perf_counter() - t0 < 2.0


def test_live_pipeline_reports_a_bug_in_compose_and_keeps_running(searcher):
    frame = read_frames(0)[0]
    slot, results, errors = FrameSlot(), [], []
    calls = []

    def compose(result):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("boom")
        return "ok"

    done = threading.Semaphore(0)
    pipeline = LivePipeline(searcher, slot, lambda r: (results.append(r), done.release()),
                            on_error=lambda m: (errors.append(m), done.release()), compose=compose)
    pipeline.start()
    try:
        for _ in range(2):
            assert slot.put(frame, wait=True, timeout=30)
            assert done.acquire(timeout=30)
    finally:
        pipeline.stop()
    assert len(errors) == 1 and "KeyError" in errors[0] and str(VIDEO) in errors[0]
    assert len(results) == 1 and results[0].extra == "ok"
    assert not pipeline.is_alive()


# ------------------------------------------------------------------------------------------------ command
@pytest.fixture(scope="module")
def video_run(small_index, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("video")
    jsonl, mp4 = out_dir / "out.jsonl", out_dir / "out.mp4"
    result = run_cli("video", VIDEO, "-i", small_index[0], "-w", WEIGHTS, "--stride", 50, "--max-frames", 6,
                     "-k", 3, "--jsonl", jsonl, "--out", mp4)
    return result, jsonl, mp4


def test_video_command_writes_json_lines(video_run, small_index):
    result, jsonl, _ = video_run
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the lines went to the file
    assert "analyzed 6 frames" in result.stderr and "stride 50" in result.stderr
    payloads = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [p["frame"] for p in payloads] == [0, 50, 100, 150, 200, 250]
    assert [p["timestamp_s"] for p in payloads] == pytest.approx([f / 10.0 for f in range(0, 300, 50)])
    for p in payloads:
        assert (p["width"], p["height"]) == (768, 432)
        check_objects(p["objects"], small_index[1].n_objects, 3)
    labels = {p["frame"]: [obj["label"] for obj in p["objects"]] for p in payloads}
    assert "person" in labels[100] and "person" in labels[150] and "person" in labels[250], labels
    assert labels[0] == [] and labels[50] == []  # the empty room before anyone walks in


def test_video_command_writes_an_annotated_video(video_run):
    import av

    result, jsonl, mp4 = video_run
    assert result.returncode == 0, result.stderr
    with av.open(str(mp4)) as container:  # browsers play H.264, not OpenCV's default mp4v
        assert container.streams.video[0].codec_context.name == "h264"
    cap = cv2.VideoCapture(str(mp4))
    try:
        assert cap.isOpened()
        frames = []
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    assert len(frames) == 6 and all(f.shape == (432, 768, 3) for f in frames)
    assert fps == pytest.approx(1.0)  # 10 fps / stride 50 = 0.2, raised to the writer's floor of 1 fps
    # frame 0 has no objects: the written frame is the video frame; frame 100 carries a drawn box
    originals = read_frames(0, 100)
    assert np.abs(frames[0].astype(np.int16) - originals[0].image).mean() < 6
    assert np.abs(frames[2].astype(np.int16) - originals[1].image).mean() > \
        np.abs(frames[0].astype(np.int16) - originals[0].image).mean() + 0.3


def test_video_command_prints_json_lines_without_outputs(small_index):
    result = run_cli("video", VIDEO, "-i", small_index[0], "-w", WEIGHTS, "--stride", 100, "--max-frames", 2,
                     "-k", 1)
    assert result.returncode == 0, result.stderr
    payloads = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["frame"] for p in payloads] == [0, 100]
    assert "person" in [obj["label"] for obj in payloads[1]["objects"]]
    assert all(len(obj["neighbors"]) == 1 for obj in payloads[1]["objects"])


def assert_one_line_error(result, code, *fragments):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_video_command_missing_video(small_index, tmp_path):
    missing = tmp_path / "missing.mp4"
    assert_one_line_error(run_cli("video", missing, "-i", small_index[0]), 2, str(missing))


def test_video_command_broken_index(tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an index\n" * 20)
    assert_one_line_error(run_cli("video", VIDEO, "-i", broken), 3, str(broken))


def test_video_command_stride_zero_is_a_usage_error(small_index):
    result = run_cli("video", VIDEO, "-i", small_index[0], "--stride", 0)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # the usage exit code (docs/commands.md)
    assert result.stderr.strip().splitlines() == ["error: --stride 0: must be greater than or equal to 1 (see "
                                                  "objsearch video --help)"] and result.stdout == ""
