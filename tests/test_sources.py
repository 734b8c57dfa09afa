"""Frame sources (video file, webcam, screen, random indexed image, image file), the newest-frame slot and the capture
thread, on real video frames and images from ../shared/data. Stand-ins replace only the devices a test machine lacks
(a camera, a display); what they deliver are real frames."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest

from testdata import BUS, DATA, coco_images
from objsearch.errors import ImageReadError
from objsearch.sources import (CaptureThread, Frame, FrameSlot, FrameSource, ImageFileSource, RandomImageSource,
                               ScreenSource, SourceError, VideoFileSource, WebcamSource)

VIDEO = DATA / "video" / "one-by-one-person-detection.mp4"  # 768x432, 10 fps, 1394 frames
CLIP_FRAMES, CLIP_FPS = 15, 30.0


def video_frames(n: int, path=VIDEO) -> list[np.ndarray]:
    """The first ``n`` frames of ``path``, read sequentially with a fresh capture (the reference for seeking)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        for _ in range(n):
            ok, image = cap.read()
            assert ok
            frames.append(image)
    finally:
        cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 15-frame 30 fps mp4v clip made of frames 0, 90, 180, ... of the real video (so consecutive frames differ)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = clip_sources()
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (w, h))
    assert writer.isOpened()
    for image in frames:
        writer.write(image)
    writer.release()
    return path


def clip_sources() -> list[np.ndarray]:
    """Frames 0, 90, 180, ... of the real video: the clip's frames before encoding."""
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    for i in range(0, CLIP_FRAMES * 90, 90):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, image = cap.read()
        assert ok
        frames.append(image)
    cap.release()
    return frames


def real_video_opener(device: int):
    """A stand-in for ``open_camera``: the real video as if it were the camera."""
    return cv2.VideoCapture(str(VIDEO))


# ------------------------------------------------------------------------------------------------ video file
def test_video_frames_are_images_with_advancing_index_and_time():
    with VideoFileSource(VIDEO) as source:
        assert source.fps == pytest.approx(10.0) and source.n_frames == 1394
        reference = video_frames(5)
        for i in range(5):
            frame = source.read()
            assert frame.image.shape == (432, 768, 3) and frame.image.dtype == np.uint8
            assert frame.index == i and frame.media.timestamp_s == pytest.approx(i / 10.0)
            assert frame.name == str(VIDEO) and frame.image_id == -1
            np.testing.assert_array_equal(frame.image, reference[i])


def test_video_seek_gives_that_frame():
    reference = video_frames(61)
    with VideoFileSource(VIDEO) as source:
        source.read()
        for n in (40, 12, 60):
            source.seek(n)
            frame = source.read()
            assert frame.index == n and frame.media.timestamp_s == pytest.approx(n / 10.0)
            diff = np.abs(frame.image.astype(np.int16) - reference[n]).mean()
            assert diff < 1.0, (n, diff)
            nxt = source.read()
            assert nxt.index == n + 1
        # frame 40 differs from frame 37 visibly: the comparison above can tell frames apart
        assert np.abs(reference[40].astype(np.int16) - reference[37]).mean() > 1.0


def test_video_seek_is_clipped_to_the_file():
    with VideoFileSource(VIDEO) as source:
        source.seek(10 ** 6)
        last = source.read()
        assert last.index == 1393 and last.image.shape == (432, 768, 3)
        assert source.read() is None
        source.seek(-5)
        assert source.read().index == 0


def test_short_clip_reads_to_the_end(clip):
    reference = clip_sources()
    with VideoFileSource(clip) as source:
        assert source.fps == pytest.approx(CLIP_FPS) and source.n_frames == CLIP_FRAMES
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
            assert len(frames) <= CLIP_FRAMES
        assert source.read() is None  # stays at the end
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    assert [f.media.timestamp_s for f in frames] == pytest.approx([i / CLIP_FPS for i in range(CLIP_FRAMES)])
    # mp4v is lossy, but every frame is still its source frame and not another one (the empty scene recurs, so
    # another source frame may be as close, never closer)
    for i, frame in enumerate(frames):
        errors = [np.abs(frame.image.astype(np.int16) - r).mean() for r in reference]
        assert errors[i] < 6 and errors[i] <= min(errors) + 0.5, (i, errors)
        assert max(errors) > 12  # the clip's frames differ: the check above can fail


def test_closed_video_returns_none(clip):
    source = VideoFileSource(clip)
    source.close()
    source.close()  # idempotent
    assert source.read() is None


def test_missing_video_is_a_source_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="no such file") as info:
        VideoFileSource(missing)
    assert str(missing) in str(info.value)
    assert info.value.exit_code == 2


def test_text_file_named_mp4_is_a_source_error(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video, only some text\n" * 50)
    with pytest.raises(SourceError, match="cannot decode") as info:
        VideoFileSource(fake)
    assert str(fake) in str(info.value)


# ---------------------------------------------------------------------------------------------------- webcam
def test_webcam_with_a_stand_in_camera_yields_real_frames():
    reference = video_frames(3)
    with WebcamSource(3, opener=real_video_opener) as source:
        assert source.name == "webcam 3"
        frames = [source.read() for _ in range(3)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.name == "webcam 3" for f in frames)
    assert frames[0].captured_at <= frames[2].captured_at and abs(frames[0].captured_at - time.time()) < 60
    for f, r in zip(frames, reference):
        np.testing.assert_array_equal(f.image, r)
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_webcam_that_does_not_open_names_the_device():
    released = []

    class Closed:
        def isOpened(self):
            return False

        def release(self):
            released.append(True)

    with pytest.raises(SourceError, match="device index 4"):
        WebcamSource(4, opener=lambda device: Closed())
    assert released == [True]
    with pytest.raises(SourceError, match="device index 5"):
        WebcamSource(5, opener=lambda device: None)


def test_webcam_that_stops_delivering_is_a_source_error():
    cap = real_video_opener(0)

    class Failing:
        """The real video for two frames, then nothing (an unplugged camera)."""

        n = 0

        def isOpened(self):
            return cap.isOpened()

        def read(self):
            self.n += 1
            return cap.read() if self.n <= 2 else (False, None)

        def release(self):
            cap.release()

    source = WebcamSource(0, opener=lambda device: Failing())
    assert source.read().image.shape == (432, 768, 3) and source.read().index == 1
    with pytest.raises(SourceError, match="webcam 0 stopped delivering"):
        source.read()
    source.close()


def test_webcam_default_opener_without_a_camera():
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="device index 57"):
        WebcamSource(57)
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------------------------------------------- screen
def test_screen_with_a_stand_in_grabber():
    bus = cv2.imread(str(BUS))
    source = ScreenSource((10, 20, 810, 1080), grabber=lambda: bus)
    assert source.name == "screen 810x1080+10+20"
    frames = [source.read(), source.read()]
    assert [f.index for f in frames] == [0, 1]
    assert frames[0].image.shape == (1080, 810, 3) and frames[0].name == "screen 810x1080+10+20"
    np.testing.assert_array_equal(frames[1].image, bus)


def test_screen_grab_failures_are_source_errors():
    def broken():
        raise OSError("XGetImage() failed")

    with pytest.raises(SourceError, match="screen grab failed: XGetImage"):
        ScreenSource(grabber=broken).read()
    with pytest.raises(SourceError, match="screen grab failed"):
        ScreenSource(grabber=lambda: None).read()
    with pytest.raises(SourceError, match="no pixels"):
        ScreenSource(grabber=lambda: np.zeros((0, 0, 3), np.uint8)).read()


@pytest.mark.parametrize("region", [(0, 0, 0, 100), (0, 0, 100, -1), (0, 0, 100)])
def test_invalid_screen_region(region):
    with pytest.raises(SourceError, match="positive size"):
        ScreenSource(region, grabber=lambda: None)


@pytest.mark.skipif(bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
                    reason="a display is available")
def test_real_screen_grab_without_a_display():
    source = ScreenSource()  # constructing does not touch the display
    with pytest.raises(SourceError, match="screen grab failed"):
        source.read()


# ---------------------------------------------------------------------------------------------- random image
def test_random_image_frames_match_their_paths():
    paths = coco_images(12)
    source = RandomImageSource(paths, seed=3)
    frames = [source.read() for _ in range(6)]
    assert len({f.image_id for f in frames}) > 1
    for f in frames:
        assert 0 <= f.image_id < len(paths) and f.index == f.image_id
        assert f.name == str(paths[f.image_id])
        np.testing.assert_array_equal(f.image, cv2.imread(str(paths[f.image_id])))
    again = RandomImageSource(paths, seed=3)
    assert [again.read().image_id for _ in range(6)] == [f.image_id for f in frames]


def test_random_image_skips_missing_files(tmp_path):
    real = coco_images(1)[0]
    paths = [tmp_path / f"gone{i}.jpg" for i in range(3)] + [real]
    frames = [RandomImageSource(paths, seed=s).read() for s in range(4)]
    assert all(f.image_id == 3 and f.name == str(real) for f in frames)


def test_random_image_with_every_file_missing(tmp_path):
    paths = [tmp_path / p.name for p in coco_images(5)]  # the images "moved" away from here
    with pytest.raises(SourceError, match="base directory"):
        RandomImageSource(paths, seed=0).read()


def test_random_image_with_no_images():
    with pytest.raises(SourceError, match="no images"):
        RandomImageSource([])


# ------------------------------------------------------------------------------------------------ image file
def test_image_file_source_reads_a_real_image():
    frame = ImageFileSource(BUS, image_id=7).read()
    assert frame.image.shape == (1080, 810, 3) and frame.image_id == 7 and frame.name == str(BUS)


def test_image_file_source_on_a_corrupt_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(BUS.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        ImageFileSource(corrupt).read()
    with pytest.raises(ImageReadError):
        ImageFileSource(tmp_path / "missing.jpg").read()


# -------------------------------------------------------------------------------------------------- slot
@pytest.fixture(scope="module")
def frames3():
    return [Frame.read_now(image, "video", index=i, video_time_s=i / 10.0) for i, image in enumerate(video_frames(3))]


def test_slot_keeps_the_newest_frame(frames3):
    slot = FrameSlot()
    assert slot.put(frames3[0]) and slot.put(frames3[1])
    assert slot.dropped == 1
    assert slot.get(timeout=0.1) is frames3[1]
    assert slot.get(timeout=0.05) is None  # taken: empty again
    assert slot.put(frames3[2]) and slot.dropped == 1


def test_slot_get_times_out_on_empty():
    slot = FrameSlot()
    t0 = time.perf_counter()
    assert slot.get(timeout=0.1) is None
    assert 0.08 <= time.perf_counter() - t0 < 1.0


def test_slot_put_wait_on_a_full_slot_does_not_drop(frames3):
    slot = FrameSlot()
    slot.put(frames3[0])
    t0 = time.perf_counter()
    assert slot.put(frames3[1], wait=True, timeout=0.1) is False
    assert time.perf_counter() - t0 >= 0.08
    assert slot.dropped == 0 and slot.get(timeout=0.1) is frames3[0]


def test_slot_put_wait_returns_once_taken(frames3):
    slot = FrameSlot()
    slot.put(frames3[0])
    taker = threading.Timer(0.05, slot.get)
    taker.start()
    assert slot.put(frames3[1], wait=True, timeout=2.0) is True
    taker.join()
    assert slot.dropped == 0 and slot.get(timeout=0.1) is frames3[1]


def test_slot_close_wakes_a_waiting_get():
    slot = FrameSlot()
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.get()))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()  # waiting: nothing to get
    slot.close()
    waiter.join(1.0)
    assert not waiter.is_alive() and got == [None]
    slot.reopen()
    assert slot.get(timeout=0.05) is None  # reopened: waits again


# ------------------------------------------------------------------------------------------- capture thread
def drain(slot: FrameSlot, ended: threading.Event, delay: float = 0.0, limit: float = 10.0) -> list[Frame]:
    """Take frames until the source ended and the slot is empty; ``delay`` seconds of work per frame."""
    got, t_end = [], time.perf_counter() + limit
    while time.perf_counter() < t_end:
        frame = slot.get(timeout=0.05)
        if frame is None:
            if ended.is_set():
                frame = slot.get(timeout=0.0)
                if frame is None:
                    return got
            else:
                continue
        got.append(frame)
        time.sleep(delay)
    raise AssertionError(f"the source did not end within {limit} s ({len(got)} frames)")


def test_capture_without_realtime_delivers_every_frame(clip):
    slot, ended = FrameSlot(), threading.Event()
    with VideoFileSource(clip) as source:
        thread = CaptureThread(source, slot, realtime=False, on_end=ended.set)
        thread.start()
        got = drain(slot, ended, delay=0.01)
        thread.join(1.0)
    assert [f.index for f in got] == list(range(CLIP_FRAMES))
    assert slot.dropped == 0 and thread.n_read == CLIP_FRAMES and not thread.is_alive()


def test_capture_in_realtime_drops_what_a_slow_consumer_misses(clip):
    slot, ended = FrameSlot(), threading.Event()
    with VideoFileSource(clip) as source:
        thread = CaptureThread(source, slot, realtime=True, on_end=ended.set)
        t0 = time.perf_counter()
        thread.start()
        got = drain(slot, ended, delay=0.1)
        thread.join(1.0)
    indices = [f.index for f in got]
    assert all(a < b for a, b in zip(indices, indices[1:])), indices
    assert slot.dropped > 0 and len(got) < CLIP_FRAMES
    assert len(got) + slot.dropped == CLIP_FRAMES == thread.n_read  # every frame was either taken or dropped
    # played at the file's rate: 15 frames at 30 fps take about half a second, not the consumer's 1.5 s
    assert time.perf_counter() - t0 < 1.3


class RealFrames(FrameSource):
    """A continuous stand-in live source: real video frames, then (optionally) an error."""

    def __init__(self, fail_after: int | None = None, period: float = 0.005):
        self.images = video_frames(4)
        self.fail_after, self.period = fail_after, period
        self.name = "stand-in camera"
        self.count = 0

    def read(self) -> Frame:
        if self.fail_after is not None and self.count >= self.fail_after:
            raise SourceError("stand-in camera unplugged")
        time.sleep(self.period)
        frame = Frame.read_now(self.images[self.count % 4], self.name, index=self.count)
        self.count += 1
        return frame


def test_capture_reports_a_source_error():
    slot, errors, ended = FrameSlot(), [], threading.Event()
    thread = CaptureThread(RealFrames(fail_after=3), slot, on_error=errors.append, on_end=ended.set)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive()
    assert errors == ["stand-in camera unplugged"] and not ended.is_set()
    assert thread.n_read == 3 and slot.get(timeout=0.1).index == 2


def wait_until(predicate, limit: float = 2.0) -> bool:
    t_end = time.perf_counter() + limit
    while time.perf_counter() < t_end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_capture_pause_and_resume():
    slot = FrameSlot()
    thread = CaptureThread(RealFrames(), slot)
    thread.start()
    try:
        assert wait_until(lambda: thread.n_read >= 3)
        thread.pause()
        assert thread.paused
        time.sleep(0.05)  # a read under way when paused may still finish
        n_paused = thread.n_read
        time.sleep(0.25)
        assert thread.n_read == n_paused
        thread.pause(False)
        assert not thread.paused
        assert wait_until(lambda: thread.n_read >= n_paused + 3)
    finally:
        thread.stop()
        thread.join(1.0)
    assert not thread.is_alive()


def test_capture_shows_a_seeked_frame_while_paused(clip):
    slot = FrameSlot()
    with VideoFileSource(clip) as source:
        thread = CaptureThread(source, slot, realtime=True)
        thread.pause()
        thread.start()
        time.sleep(0.15)
        assert thread.n_read == 0 and slot.get(timeout=0.0) is None
        source.seek(9)
        frame = slot.get(timeout=1.0)
        thread.stop()
        thread.join(1.0)
    assert frame is not None and frame.index == 9 and not thread.is_alive()


@pytest.mark.parametrize("state", ["blocked", "paused"])
def test_capture_stop_is_prompt(clip, state):
    slot = FrameSlot()
    with VideoFileSource(clip) as source:
        # blocked: nobody takes frames, so a non-realtime capture waits for the slot to empty
        thread = CaptureThread(source, slot, realtime=False)
        if state == "paused":
            thread.pause()
        thread.start()
        time.sleep(0.15)
        assert thread.n_read == (2 if state == "blocked" else 0)  # frame 0 in the slot, frame 1 waiting
        t0 = time.perf_counter()
        thread.stop()
        thread.join(1.0)
        assert not thread.is_alive() and time.perf_counter() - t0 < 0.6


def test_a_live_screen_is_grabbed_at_most_fps_times_a_second():
    bus = cv2.imread(str(BUS))
    grabs = []

    def grab():
        grabs.append(time.perf_counter())
        return bus

    slot = FrameSlot()
    capture = CaptureThread(ScreenSource(None, grabber=grab, fps=10), slot)
    capture.start()
    time.sleep(1.0)
    capture.stop()
    capture.join(2)
    # unpaced, a stand-in that returns at once would be grabbed thousands of times a second
    assert 5 <= len(grabs) <= 13
    assert slot.get(timeout=0.1) is not None


def test_parse_source_names_every_kind():
    from pathlib import Path

    from objsearch.sources import SourceError, parse_source

    assert parse_source("random") == ("random", None)
    assert parse_source("webcam") == ("webcam", 0) and parse_source("webcam:2") == ("webcam", 2)
    assert parse_source("screen") == ("screen", None)
    assert parse_source("screen:10,20,320,240") == ("screen", (10, 20, 320, 240))
    assert parse_source("clip.mp4") == ("file", Path("clip.mp4"))
    for bad in ("webcam:x", "screen:1,2,3", "screen:0,0,0,10"):
        with pytest.raises(SourceError):
            parse_source(bad)
