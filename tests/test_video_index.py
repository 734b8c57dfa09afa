"""Videos in the index: analyze, add, sync and remove take video files beside images; each sampled frame is a media
item with its frame number and time; a broken or truncated video keeps what it could read and is reported; a job
stopped in the middle of a video resumes there and ends with the same index as an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import threading

import cv2
import numpy as np
import pytest

from testdata import DATA, WEIGHTS, coco_images, run_cli
from objsearch.analysis import JobCancelled, add, analyze, remove, sync
from objsearch.catalog import Catalog
from objsearch.config import load_config
from objsearch.errors import VideoReadError
from objsearch.media import decode_thumbnail, frame_sampled, read_video_frame, read_video_frames, video_info

VIDEOS = DATA / "video"
WALKING = VIDEOS / "walking.mp4"  # 341 frames at 25 fps, 1280 x 720


def cv2_frame_count(path) -> int:
    """Oracle: the frames OpenCV decodes from the file, one by one."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def sampled_oracle(n_frames: int, fps: float, sample_fps: float) -> list[int]:
    """Oracle: the first frame of each 1/sample_fps-second period (by time, not by the formula)."""
    out, period = [], -1
    for i in range(n_frames):
        p = int(np.floor(i / fps * sample_fps + 1e-9))
        if p > period:
            out.append(i)
            period = p
    return out


@pytest.mark.parametrize("fps,sample_fps", [(25.0, 1.0), (29.97, 1.0), (12.5, 2.0), (10.0, 0.25), (24.0, 30.0),
                                            (30000 / 1001, 0.5)])
def test_frame_sampled_takes_the_first_frame_of_each_period(fps, sample_fps):
    got = [i for i in range(2000) if frame_sampled(i, fps, sample_fps=sample_fps)]
    assert got == sampled_oracle(2000, fps, sample_fps)


def test_frame_sampled_with_a_stride():
    assert [i for i in range(20) if frame_sampled(i, 25.0, sample_fps=1.0, stride=6)] == [0, 6, 12, 18]


def test_read_video_frames_gives_the_sampled_frames_with_their_times():
    info = video_info(WALKING)
    n = cv2_frame_count(WALKING)
    frames = list(read_video_frames(WALKING, sample_fps=1.0))
    assert [f.index for f in frames] == sampled_oracle(n, info.fps, 1.0)
    assert [f.timestamp_s for f in frames] == pytest.approx([f.index / info.fps for f in frames])
    assert frames[0].image.shape == (info.height, info.width, 3) and frames[0].image.dtype == np.uint8
    # the frame decoded on its own (the app's click-to-query) is the very frame analysis decoded
    np.testing.assert_array_equal(read_video_frame(WALKING, frames[3].index), frames[3].image)
    later = list(read_video_frames(WALKING, sample_fps=1.0, start_frame=frames[3].index + 1))
    assert [f.index for f in later] == [f.index for f in frames[4:]]


def truncated_copy(src, dst, keep=0.4):
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def test_a_truncated_video_keeps_its_frames_and_says_so(tmp_path):
    cut = truncated_copy(WALKING, tmp_path / "cut.mp4")
    frames = []
    with pytest.raises(VideoReadError, match="stops at frame") as caught:
        for f in read_video_frames(cut, sample_fps=1.0):
            frames.append(f.index)
    assert 0 < len(frames) < 14 and caught.value.frames_read == len(frames)
    with pytest.raises(VideoReadError, match="no such frame"):
        read_video_frame(cut, 300)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoReadError, match="cannot read video"):
        list(read_video_frames(tmp_path / "junk.mp4"))


@pytest.fixture(scope="module")
def video_cfg():
    return load_config(None, weights=str(WEIGHTS), dims="16,32", video_fps=1.0, imgsz=320)


@pytest.fixture(scope="module")
def detector(video_cfg):
    """A detector at 320 px (these tests are about frames and jobs, not about retrieval quality)."""
    from objsearch.provenance import load_detector

    return load_detector(video_cfg)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """Two coco images, walking.mp4 (14 frames at 1 fps), a truncated copy of it and a file that is no video."""
    folder = tmp_path_factory.mktemp("videos") / "media"
    folder.mkdir()
    for p in coco_images(2):
        shutil.copy(p, folder / p.name)
    shutil.copy(WALKING, folder / "walking.mp4")
    truncated_copy(WALKING, folder / "zcut.mp4")
    (folder / "junk.webm").write_bytes(b"\x1aE\xdf\xa3 not really matroska" * 50)
    return folder


@pytest.fixture(scope="module")
def straight(video_folder, video_cfg, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "straight.h5"
    summary = analyze(video_folder, out, video_cfg, detector=detector)
    return out, summary


def frames_of(catalog, name):
    rows = [i for i, p in enumerate(catalog.media_path) if p == name]
    return catalog.media_frame_index[rows], catalog.media_timestamp_s[rows], catalog.media_id[rows]


def test_analyze_indexes_each_sampled_frame_as_a_media_item(straight, video_folder):
    out, summary = straight
    info = video_info(WALKING)
    expected = sampled_oracle(cv2_frame_count(WALKING), info.fps, 1.0)
    with Catalog(out) as c:
        index, times, ids = frames_of(c, "walking.mp4")
        assert list(index) == expected and len(expected) == 14
        np.testing.assert_allclose(times, np.asarray(expected) / info.fps)
        assert all(c.media(int(i)).width == 1280 for i in ids)
        images = [i for i, f in enumerate(c.media_frame_index) if f < 0]
        assert len(images) == 2
        cut_index, _, _ = frames_of(c, "zcut.mp4")
        assert 0 < len(cut_index) < 14 and list(cut_index) == expected[:len(cut_index)]
        reasons = {s.path: s.reason for s in c.skipped}
        assert set(reasons) == {"junk.webm", "zcut.mp4"} and "stops at frame" in reasons["zcut.mp4"]
        assert int(c.attrs["video_in_progress"]) == -1
        frame_objects = c.object_id[np.isin(c.object_media_id, ids)]
        assert len(frame_objects) > 14  # people walking
        thumb = decode_thumbnail(c.thumbnail(int(frame_objects[0])))
        assert thumb is not None and thumb.ndim == 3
    assert summary.n_added_frames == 14 + len(cut_index) and summary.n_videos == 3  # junk.webm counted, skipped
    assert {s.path for s in summary.skipped} >= {"junk.webm", "zcut.mp4"}


def assert_same_index(a_path, b_path, same_projection: bool = True):
    """Same media, objects, boxes and vectors; ``same_projection`` False (an index grown by ``add``: its PCA was fitted
    when it was first analysed) compares features, and each index's vectors with its own projection of them."""
    with Catalog(a_path) as a, Catalog(b_path) as b:
        assert a.state == b.state == "ready"
        assert a.media_path == b.media_path
        np.testing.assert_array_equal(a.media_id, b.media_id)
        np.testing.assert_array_equal(a.media_frame_index, b.media_frame_index)
        np.testing.assert_allclose(a.media_timestamp_s, b.media_timestamp_s)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        np.testing.assert_array_equal(a.object_media_id, b.object_media_id)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        if same_projection:
            np.testing.assert_allclose(a.vectors(32), b.vectors(32), atol=1e-4)
        else:
            features = a.features(a.object_id)
            np.testing.assert_allclose(features, b.features(b.object_id), atol=1e-5)
            np.testing.assert_allclose(a.projection(32).transform(features), a.vectors(32), atol=1e-4)
        assert sorted(s.path for s in a.skipped) == sorted(s.path for s in b.skipped)


def cancel_after(n_done):
    cancel = threading.Event()

    def progress(done, total, objects):
        if done >= n_done:
            cancel.set()

    return progress, cancel


@pytest.mark.parametrize("stop_after", [9])
def test_analyze_cancelled_in_the_middle_of_a_video_resumes_there(straight, video_folder, video_cfg, detector,
                                                                  tmp_path, stop_after):
    """Stopped after 2 images, junk.webm and 1 (or 6) frames of walking.mp4: committed, the index says which video
    is half done, and the next run goes on from its next frame."""
    out = tmp_path / "stopped.h5"
    progress, cancel = cancel_after(stop_after)
    with pytest.raises(JobCancelled):
        analyze(video_folder, out, video_cfg, detector=detector, progress=progress, cancel=cancel)
    with Catalog(out) as half:
        assert half.state == "analyzing"
        index, _, ids = frames_of(half, "walking.mp4")
        assert len(index) == stop_after - 3 and int(half.attrs["video_in_progress"]) == int(ids[0])
    summary = analyze(video_folder, out, video_cfg, detector=detector)
    assert summary.n_resumed >= stop_after
    assert_same_index(out, straight[0])


def test_add_cancelled_in_the_middle_of_a_video_then_run_again(straight, video_folder, video_cfg, detector,
                                                               tmp_path):
    base = tmp_path / "media"
    shutil.copytree(video_folder, base, ignore=shutil.ignore_patterns("*.mp4", "*.webm"))
    out = tmp_path / "grown.h5"
    analyze(base, out, video_cfg, detector=detector)
    for name in ("walking.mp4", "zcut.mp4", "junk.webm"):
        shutil.copy2(video_folder / name, base / name)
    progress, cancel = cancel_after(5)
    with pytest.raises(JobCancelled):
        add(out, [base], detector=detector, progress=progress, cancel=cancel)
    summary = add(out, [base], detector=detector)
    assert summary.n_already == 2  # the images; the half-done video is not "already indexed"
    assert_same_index(out, straight[0], same_projection=False)


def test_sync_notices_a_changed_and_a_removed_video_and_remove_takes_every_frame(video_folder, video_cfg, detector,
                                                                                 tmp_path):
    base = tmp_path / "media"
    base.mkdir()
    shutil.copy(coco_images(1)[0], base)
    shutil.copy(WALKING, base / "a.mp4")
    shutil.copy(WALKING, base / "b.mp4")
    out = tmp_path / "sync.h5"
    analyze(base, out, {**video_cfg, "video_fps": 0.5}, detector=detector)
    with Catalog(out) as c:
        b_ids = frames_of(c, "b.mp4")[2]
        assert len(frames_of(c, "a.mp4")[0]) == len(b_ids) == 7
    truncated_copy(WALKING, base / "b.mp4", keep=0.4)  # changed: fewer frames now
    os.utime(base / "b.mp4", ns=(1, 1))
    (base / "a.mp4").unlink()
    summary = sync(out, detector=detector)
    with Catalog(out) as c:
        assert len(frames_of(c, "a.mp4")[0]) == 0
        b_frames, _, new_ids = frames_of(c, "b.mp4")
        assert 0 < len(b_frames) < 7 and not set(new_ids) & set(b_ids)
        assert any(s.path == "b.mp4" for s in c.skipped)
    assert summary.n_removed == 7 and summary.n_changed == 7
    gone = remove(out, [base / "b.mp4"])
    assert gone.n_removed == len(b_frames)
    with Catalog(out) as c:
        assert c.media_path == [coco_images(1)[0].name]


def test_cli_analyze_samples_videos_with_a_stride(tmp_path):
    base = tmp_path / "media"
    base.mkdir()
    shutil.copy(WALKING, base / "walk.mp4")
    out = tmp_path / "stride.h5"
    done = run_cli("analyze", base, "-o", out, "--weights", WEIGHTS, "--video-stride", "100", "--imgsz", "320")
    assert done.returncode == 0, done.stderr
    assert "0 images and 4 frames of 1 video (" in done.stdout, done.stdout
    with Catalog(out) as c:
        assert list(c.media_frame_index) == [0, 100, 200, 300]
        assert c.attrs["config"]["video_stride"] == 100
    both = run_cli("analyze", base, "-o", tmp_path / "x.h5", "--video-stride", "5", "--video-fps", "2")
    assert both.returncode == 1 and both.stderr.startswith("error:") and "Traceback" not in both.stderr


def test_a_fifo_an_empty_file_and_a_folder_named_like_videos_are_reported_not_waited_on(video_cfg, detector,
                                                                                        tmp_path):
    base = tmp_path / "media"
    base.mkdir()
    shutil.copy(coco_images(1)[0], base)
    os.mkfifo(base / "pipe.mp4")
    (base / "empty.mov").write_bytes(b"")
    (base / "folder.mkv").mkdir()
    summary = analyze(base, tmp_path / "x.h5", video_cfg, detector=detector)
    reasons = {os.path.basename(s.path): s.reason for s in summary.skipped}
    assert reasons["pipe.mp4"] == "a FIFO, not a video file"
    assert "the file is empty" in reasons["empty.mov"]
    assert summary.n_added == 1 and summary.n_added_frames == 0
