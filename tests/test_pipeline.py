"""The pipelined analysis (objsearch.analysis.pipeline): records come out in path order whatever the batching, batches of one
letterbox shape fill on mixed-shape folders, a worker's exception reaches the caller, stopping leaves no thread; on
real data, a folder of mixed shapes with a corrupt image and a video analysed at batch 8 gives the index of the serial
path (batch 1) and of an oracle that detects each image alone; cancelled or killed (SIGKILL) mid-pipeline, the next run
ends with the same index."""

from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest

from testdata import DATA, WEIGHTS, coco_images, run_cli
from objsearch.analysis import JobCancelled, analyze
from objsearch.analysis.journal import VideoEnd
from objsearch.analysis.pipeline import analyse_in_order, video_sampling
from objsearch.analysis.runner import detect_for_index
from objsearch.catalog import Catalog
from objsearch.media import read_image, read_video_frames
from objsearch.types import SkippedFile

WALKING = DATA / "video" / "walking.mp4"  # 341 frames at 25 fps, 1280 x 720
N_IMAGES = 24
VIDEO_FPS = 0.5  # 7 sampled frames of walking.mp4


# ------------------------------------------------------------------------------------------ with a fake detector
def fake_folder(tmp_path, shapes, n_per_shape):
    """PNG images of ``shapes`` interleaved in path order (img_000 is shapes[0], img_001 shapes[1], ...), a corrupt
    image among them and a short video after them; returns (folder, sorted files)."""
    folder = tmp_path / "fake"
    folder.mkdir()
    i = 0
    for _ in range(n_per_shape):
        for h, w in shapes:
            cv2.imwrite(str(folder / f"img_{i:03d}.png"), np.full((h, w, 3), i % 251, np.uint8))
            i += 1
    (folder / "img_005_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    shutil.copy(WALKING, folder / "walk.mp4")
    return folder, sorted(folder.iterdir())


class Recorder:
    """Fake stages: ``detect`` notes each batch's shapes and returns one empty Detections per image; ``emit`` notes
    what it is handed, in order, and on which thread."""

    def __init__(self, fail_batch: int | None = None):
        self.batches: list[list[tuple[int, int]]] = []
        self.emitted: list = []
        self.threads: set[str] = set()
        self.fail_batch = fail_batch

    def detect(self, images):
        self.batches.append([im.shape[:2] for im in images])
        if self.fail_batch is not None and len(self.batches) == self.fail_batch:
            raise RuntimeError("a bug in the detector")
        return [None] * len(images)  # the fake make_record does not look at detections

    @staticmethod
    def make_record(path, image, dets, where):
        return ("image", path.name, where, image.shape[:2])

    def emit(self, record):
        self.threads.add(threading.current_thread().name)
        self.emitted.append(record)


def run_fake(tasks, recorder, **kwargs):
    analyse_in_order(tasks, letterbox_shape=lambda shape: tuple(shape[:2]), detect=recorder.detect,
                     make_record=recorder.make_record, emit=recorder.emit, locate=lambda p: (0, p.name),
                     video_end=VideoEnd, sampling={"sample_fps": VIDEO_FPS, "stride": None}, **kwargs)


def expected_order(files):
    """Oracle: what a serial pass hands over, in order (names only, and the frames of the video)."""
    out = []
    for p in files:
        if p.suffix == ".mp4":
            frames = [f.index for f in read_video_frames(p, sample_fps=VIDEO_FPS)]
            out += [("frame", p.name, i) for i in frames] + [("end", p.name, len(frames))]
        elif "corrupt" in p.name:
            out.append(("skipped", p.name))
        else:
            out.append(("image", p.name))
    return out


def handed_over(emitted):
    out = []
    for r in emitted:
        if isinstance(r, SkippedFile):
            out.append(("skipped", r.path))
        elif isinstance(r, VideoEnd):
            out.append(("end", r.path, r.n_frames))
        elif r[2] is not None:
            out.append(("frame", r[1], r[2][0]))
        else:
            out.append(("image", r[1]))
    return out


@pytest.mark.parametrize("batch,window", [(1, None), (4, None), (4, 4), (8, 64)])
def test_records_come_out_in_path_order_and_batches_hold_one_shape(tmp_path, batch, window):
    shapes = [(48, 64), (64, 48), (40, 40)]
    folder, files = fake_folder(tmp_path, shapes, 8)
    before = set(threading.enumerate())
    recorder = Recorder()
    run_fake([(p, 0) for p in files], recorder, batch=batch, window=window, workers=3)
    assert handed_over(recorder.emitted) == expected_order(files)
    assert recorder.threads == {threading.current_thread().name}  # the journal and index stay on the caller
    assert all(len(set(b)) == 1 and len(b) <= batch for b in recorder.batches)
    image_batches = [b for b in recorder.batches if b[0] != (720, 1280)]
    assert sum(map(len, image_batches)) == 3 * 8
    if window is None or window >= len(shapes) * batch:  # the window holds a batch of every shape: all batches fill
        assert all(len(b) == batch for b in image_batches)
    assert set(threading.enumerate()) == before


def test_an_image_of_a_rare_shape_waits_at_most_a_window(tmp_path):
    """One image of its own shape, then 40 of another: it goes through the network once an item ``window`` places
    after it has come, not at the end, so the records behind it are not held for the whole folder."""
    folder = tmp_path / "rare"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_rare.png"), np.zeros((30, 90, 3), np.uint8))
    for i in range(40):
        cv2.imwrite(str(folder / f"b_{i:03d}.png"), np.zeros((48, 64, 3), np.uint8))
    files = sorted(folder.iterdir())
    recorder = Recorder()
    run_fake([(p, 0) for p in files], recorder, batch=4, window=10, workers=2)
    rare = [i for i, b in enumerate(recorder.batches) if b == [(30, 90)]]
    assert rare == [2]  # after the 2 batches of b_000..b_007; the window reached at b_009 (item 10)
    assert sorted(map(len, recorder.batches)) == [1] + [4] * 10
    assert [r[1] for r in recorder.emitted] == [p.name for p in files]


def test_a_videos_frames_resume_at_their_start_frame(tmp_path):
    recorder = Recorder()
    frames = [f.index for f in read_video_frames(WALKING, sample_fps=VIDEO_FPS)]
    run_fake([(WALKING, frames[3])], recorder, batch=4)
    assert handed_over(recorder.emitted) == ([("frame", "walking.mp4", i) for i in frames[3:]]
                                             + [("end", "walking.mp4", len(frames) - 3)])


@pytest.mark.parametrize("where", ["detect", "make_record", "decode"])
def test_an_exception_in_a_worker_reaches_the_caller_and_no_thread_is_left(tmp_path, where, monkeypatch):
    folder, files = fake_folder(tmp_path, [(48, 64), (64, 48)], 6)
    before = set(threading.enumerate())
    recorder = Recorder(fail_batch=2 if where == "detect" else None)
    if where == "make_record":
        def make_record(path, image, dets, where_):
            if path.name == "img_007.png":
                raise RuntimeError("a bug in the thumbnails")
            return ("image", path.name, where_, image.shape[:2])
        recorder.make_record = make_record
    if where == "decode":
        import objsearch.analysis.pipeline as pipeline

        def read_image_failing(path, max_pixels):
            if path.name == "img_003.png":
                raise RuntimeError("a bug in decoding")
            return read_image(path, max_pixels=max_pixels)
        monkeypatch.setattr(pipeline, "read_image", read_image_failing)
    with pytest.raises(RuntimeError, match="a bug in"):
        run_fake([(p, 0) for p in files], recorder, batch=2, workers=2)
    assert set(threading.enumerate()) == before
    names = [r[1] for r in handed_over(recorder.emitted)]
    assert names == [p.name for p in files][:len(names)]  # what came out before the failure came in order


def test_an_exception_from_emit_stops_every_thread(tmp_path):
    folder, files = fake_folder(tmp_path, [(48, 64), (64, 48)], 10)
    before = set(threading.enumerate())
    recorder = Recorder()

    def emit(record):
        recorder.emit(record)
        if len(recorder.emitted) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyse_in_order([(p, 0) for p in files], letterbox_shape=lambda s: tuple(s[:2]), detect=recorder.detect,
                         make_record=recorder.make_record, emit=emit, locate=lambda p: (0, p.name),
                         video_end=VideoEnd, batch=4, window=8, workers=2)
    assert len(recorder.emitted) == 3
    assert set(threading.enumerate()) == before


# ---------------------------------------------------------------------------------------------- on real data
@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """24 coco128 images (many letterbox shapes), a corrupt image among them (after the 8th) and walking.mp4 (7
    frames at 0.5 fps) after the 12th."""
    folder = tmp_path_factory.mktemp("mixed") / "media"
    folder.mkdir()
    images = coco_images(N_IMAGES)
    for p in images:
        shutil.copy(p, folder / p.name)
    (folder / f"{images[7].stem}_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    shutil.copy(WALKING, folder / f"{images[11].stem}_walk.mp4")
    return folder


@pytest.fixture(scope="module")
def mixed_cfg(cfg):
    return {**cfg, "video_fps": VIDEO_FPS}


@pytest.fixture(scope="module")
def serial(mixed_folder, mixed_cfg, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    return out, analyze(mixed_folder, out, {**mixed_cfg, "batch": 1}, detector=detector)


@pytest.fixture(scope="module")
def batched(mixed_folder, mixed_cfg, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("batched") / "batched.h5"
    calls = []
    summary = analyze(mixed_folder, out, {**mixed_cfg, "batch": 8}, detector=detector,
                      progress=lambda *a: calls.append(a))
    return out, summary, calls


def assert_same_index(a_path, b_path, box_px=0.5, feature_tol=1e-3):
    with Catalog(a_path) as a, Catalog(b_path) as b:
        assert a.state == b.state == "ready"
        assert a.media_path == b.media_path
        np.testing.assert_array_equal(a.media_id, b.media_id)
        np.testing.assert_array_equal(a.media_frame_index, b.media_frame_index)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        np.testing.assert_array_equal(a.object_media_id, b.object_media_id)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=box_px)
        np.testing.assert_allclose(a.features(a.object_id), b.features(b.object_id), atol=feature_tol)
        assert [(s.path, s.reason) for s in a.skipped] == [(s.path, s.reason) for s in b.skipped]


def test_batch_8_on_mixed_shapes_equals_the_serial_path(serial, batched, mixed_folder):
    assert_same_index(batched[0], serial[0])
    summary = batched[1]
    assert summary.n_images == N_IMAGES + 7 and summary.n_added_frames == 7 and summary.n_videos == 1
    assert [s.path for s in summary.skipped] == [s.path for s in serial[1].skipped]
    assert any(s.path.endswith("_corrupt.jpg") for s in summary.skipped)
    done = [c[0] for c in batched[2]]  # a progress call per item (the video's end too), in order
    assert done == sorted(done) and sorted(set(done)) == list(range(1, N_IMAGES + 1 + 7 + 1))


def test_batch_8_equals_each_image_detected_alone(batched, mixed_folder, mixed_cfg, detector):
    """Oracle: every file in path order, decoded and detected alone (batch 1, no pipeline)."""
    expected_paths, boxes, features = [], [], []
    for p in sorted(mixed_folder.iterdir()):
        if p.suffix == ".mp4":
            images = [f.image for f in read_video_frames(p, **video_sampling(mixed_cfg))]
        elif "corrupt" in p.name:
            continue
        else:
            images = [read_image(p)]
        for image in images:
            dets = detect_for_index(detector, [image], mixed_cfg)[0]
            expected_paths.append(p.name)
            boxes.append(dets.xyxy)
            features.append(dets.features)
    with Catalog(batched[0]) as c:
        assert c.media_path == expected_paths
        np.testing.assert_allclose(c.xyxy, np.concatenate(boxes), atol=0.5)
        np.testing.assert_allclose(c.features(c.object_id), np.concatenate(features), atol=1e-3)
        skipped = [s.path for s in c.skipped]
        assert len(skipped) == 1 and skipped[0].endswith("_corrupt.jpg")


@pytest.mark.parametrize("stop_after", [5, 17])
def test_cancelled_mid_pipeline_leaves_no_thread_and_resumes_to_the_same_index(batched, mixed_folder, mixed_cfg,
                                                                               detector, tmp_path, stop_after):
    """Stopped after 5 images (inside the first batch) or 17 items (the 4th frame of the video)."""
    out = tmp_path / "stopped.h5"
    cancel = threading.Event()

    def progress(done, total, objects):
        if done >= stop_after:
            cancel.set()

    before = set(threading.enumerate())
    with pytest.raises(JobCancelled):
        analyze(mixed_folder, out, {**mixed_cfg, "batch": 8}, detector=detector, progress=progress, cancel=cancel)
    assert set(threading.enumerate()) == before
    with Catalog(out) as half:
        assert half.state == "analyzing"
        assert len(half.media_path) + len(half.skipped) == stop_after
    summary = analyze(mixed_folder, out, {**mixed_cfg, "batch": 8}, detector=detector)
    assert summary.n_resumed >= stop_after
    assert_same_index(out, batched[0], box_px=1e-3, feature_tol=1e-5)


@pytest.fixture(scope="module")
def kill_folder(tmp_path_factory):
    """24 coco128 images, and their index made by ``objsearch analyze --batch 8`` in one go."""
    folder = tmp_path_factory.mktemp("kill") / "images"
    folder.mkdir()
    for p in coco_images(N_IMAGES):
        shutil.copy(p, folder / p.name)
    straight = folder.parent / "straight.h5"
    done = run_cli("analyze", folder, "-o", straight, "--weights", WEIGHTS, "--batch", "8")
    assert done.returncode == 0, done.stderr
    with Catalog(straight) as c:
        assert c.attrs["config"]["batch"] == 8 and len(c.media_path) == N_IMAGES
    return folder, straight


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_items", [4, 12])
def test_analyze_at_batch_8_killed_mid_pipeline_then_resumed_equals_an_uninterrupted_run(kill_folder, tmp_path,
                                                                                         kill_after_items):
    """SIGKILL once the first (or second) batch is journaled, while the next ones are decoded and detected."""
    from test_resume import assert_same_index as assert_same_resumed, kill_when

    folder, straight = kill_folder
    out = tmp_path / "killed.h5"
    journal = out.with_name(out.name + ".journal")
    kill_when(["analyze", folder, "-o", out, "--weights", WEIGHTS, "--batch", "8"], journal, kill_after_items)
    with Catalog(out) as unfinished:
        assert unfinished.state == "analyzing" and len(unfinished.media_path) < N_IMAGES
    finished = run_cli("analyze", folder, "-o", out, "--weights", WEIGHTS, "--batch", "8")
    assert finished.returncode == 0, finished.stderr
    assert "resumed from an interrupted run" in finished.stdout, finished.stdout
    assert not journal.exists()
    assert_same_resumed(out, straight)
