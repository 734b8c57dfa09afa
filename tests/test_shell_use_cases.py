"""The use cases the shells (command line, desktop app, web server) share, tested without a shell: the one suffix
table, the query inputs, the frame source a spec names, the copy of a live index, an index's summary and the lines
a job prints. The shells' own tests (test_command_line.py, test_gui.py, test_web.py) check them from outside."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from testdata import BUS, DATA
from objsearch.catalog.txn import WriterLock
from objsearch.errors import CannotWriteError, ImageReadError, IndexLockedError, UsageError
from objsearch.inputs import QueryImages, expand_query_inputs, path_kind
from objsearch.outputs import check_index_output, check_not_input, picture_paths
from objsearch.sources import ImageFileSource, ScreenSource, SourceError, VideoFileSource, WebcamSource, open_source
from objsearch.types import IMAGE_SUFFIXES, MEDIA_SUFFIXES, VIDEO_SUFFIXES

VIDEO = DATA / "video" / "one-by-one-person-detection.mp4"


# ------------------------------------------------------------------------------------------- suffixes, inputs
def test_one_suffix_table_keeps_every_suffix_accepted_before():
    assert {".mp4", ".mov", ".avi", ".mkv", ".webm"} <= VIDEO_SUFFIXES  # what analysis read
    assert {".m4v", ".mpg", ".mpeg", ".wmv"} <= VIDEO_SUFFIXES  # what the app's video dialog also offered
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".pbm", ".pgm", ".ppm"} == IMAGE_SUFFIXES
    assert MEDIA_SUFFIXES == IMAGE_SUFFIXES | VIDEO_SUFFIXES and not IMAGE_SUFFIXES & VIDEO_SUFFIXES


@pytest.mark.parametrize("name, kind", [("a.H5", "index"), ("a.hdf5", "index"), ("clip.WMV", "video"),
                                        ("clip.mp4", "video"), ("b.JPG", "image"), ("b.ppm", "image"),
                                        ("notes.txt", None), ("noext", None)])
def test_path_kind_by_suffix(name, kind):
    assert path_kind(name) == kind


def test_query_inputs_expand_folders_and_patterns_in_order(tmp_path):
    for name in ("b.jpg", "a.png", "c.txt", "d.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.jpg").write_bytes(b"x")
    url = "https://example.com/x.jpg"
    items = expand_query_inputs([url, str(tmp_path / "*.jpg"), str(tmp_path / "sub")])
    assert items == [url, tmp_path / "b.jpg", tmp_path / "sub" / "e.jpg"]
    with pytest.raises(ImageReadError, match="no image file matches the pattern"):
        expand_query_inputs([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="a folder with no images"):
        expand_query_inputs([str(tmp_path / "empty")])


def test_query_images_decode_the_first_at_once_and_report_bad_ones(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError):
        QueryImages([bad])  # the only image: refused before any detector loads
    got = list(QueryImages([BUS, bad]))
    assert got[0][0] == BUS and got[0][1].shape == (1080, 810, 3) and got[0][1].dtype == np.uint8
    assert got[1][0] == bad and isinstance(got[1][1], ImageReadError)


# ------------------------------------------------------------------------------------------------- outputs
def test_outputs_are_checked_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        check_index_output(tmp_path / "missing" / "x.h5")
    with pytest.raises(Exception, match="image or video name"):
        check_index_output(tmp_path / "x.jpg")
    with pytest.raises(Exception, match="is an input of this command"):
        check_not_input(tmp_path / "a.jpg", [tmp_path])
    check_not_input(tmp_path / "a.h5", [tmp_path])  # an index inside the analyzed folder is no image
    items = [tmp_path / "x" / "bus.jpg", tmp_path / "y" / "bus.jpg", "https://example.com/p/q%20r.png"]
    names = picture_paths(items, tmp_path, save=False)
    assert [p.name for p in names.values()] == ["bus.jpg", "bus-2.jpg", "q_20r.jpg"]
    with pytest.raises(UsageError, match="3 query images"):
        picture_paths(items, tmp_path / "one.jpg", save=False)


# ------------------------------------------------------------------------------------------------- sources
def test_open_source_names_each_kind():
    bus = cv2.imread(str(BUS))

    class Camera:
        def isOpened(self):
            return True

        def read(self):
            return True, bus

        def release(self):
            pass

    with open_source("webcam:2", camera_opener=lambda device: Camera()) as cam:
        assert isinstance(cam, WebcamSource) and cam.name == "webcam 2"
        np.testing.assert_array_equal(cam.read().image, bus)
    screen = open_source("screen:10,20,810,1080", screen_grabber=lambda: bus)
    assert isinstance(screen, ScreenSource) and screen.region == (10, 20, 810, 1080)
    image = open_source(str(BUS))
    assert isinstance(image, ImageFileSource) and image.image_id == -1
    with open_source(str(VIDEO)) as video:
        assert isinstance(video, VideoFileSource) and video.read().image.shape == (432, 768, 3)
    with pytest.raises(SourceError, match="needs an open index"):
        open_source("random")
    with pytest.raises(SourceError, match="screen region"):
        open_source("screen:1,2,3")


def test_random_source_draws_the_indexed_images(small_index):
    from objsearch.engine import Engine
    from objsearch.sources import random_source

    with Engine(small_index[0]) as engine:
        source = random_source(engine, seed=0)
        frame = source.read()
        assert frame.image_id in {int(m) for m in engine.catalog.media_id}
        assert engine.media_path(frame.image_id) == source.paths[source.media_ids.index(frame.image_id)]
        assert isinstance(open_source("random", engine=engine), type(source))


# ------------------------------------------------------------------------------------------- a live index copy
def test_copy_index_waits_for_no_writer_and_appears_whole(tmp_path):
    from objsearch.catalog.snapshot import copy_index

    source = tmp_path / "index.h5"
    source.write_bytes(bytes(range(256)) * 100)
    target = tmp_path / "copy.h5"
    lock = WriterLock(source, "test writer")
    try:
        with pytest.raises(IndexLockedError, match="test writer"):
            copy_index(source, target)
    finally:
        lock.release()
    assert not target.exists() and not (tmp_path / "copy.h5.part").exists()
    assert copy_index(source, target) == target and target.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError, match="the index itself"):
        copy_index(source, source)
    with pytest.raises(OSError):
        copy_index(source, tmp_path / "missing" / "copy.h5")


# --------------------------------------------------------------------------------------------- summaries
def test_index_summary_matches_the_catalog(small_index):
    from objsearch.catalog import Catalog
    from objsearch.summary import summarize

    with Catalog(small_index[0]) as catalog:
        summary = summarize(catalog)
        assert summary.n_objects == len(catalog.object_id) and summary.n_images == len(catalog.media_id)
        assert sum(summary.classes.values()) == summary.n_objects
        assert list(summary.classes.values()) == sorted(summary.classes.values(), reverse=True)
        assert summary.size_bytes == small_index[0].stat().st_size
    data = summary.to_dict()
    assert list(data) == ["index", "format", "format_version", "created", "generation", "state", "images", "skipped",
                          "base_dir", "objects", "classes", "feature_recipe", "projection", "seed", "dims", "model",
                          "weights_sha256", "size_bytes"]
    lines = summary.lines()
    assert lines[0].startswith("index      ") and lines[-1].startswith("size       ")
    assert f"objects    {summary.n_objects} in {len(summary.classes)} classes" in "\n".join(lines)
    assert summary.headline() == f"{small_index[0].name}: {summary.n_objects:,} objects in {summary.n_images:,} images"


def test_job_lines_count_in_words(tmp_path):
    from objsearch.analysis import JobSummary
    from objsearch.summary import job_lines
    from objsearch.types import SkippedFile

    summary = JobSummary(index=tmp_path / "i.h5", n_added=1, n_added_objects=2, n_images=1, n_objects=2,
                         skipped=[SkippedFile("bad\x1b.jpg", "not an image")], seconds=0.25)
    lines = job_lines("added", summary)
    assert lines[0] == (f"added 1 image (2 objects), 0 with no objects, 1 skipped, in 0.2 s -> {tmp_path / 'i.h5'} "
                        f"(1 image, 2 objects)")
    assert lines[1].startswith("  skipped bad") and "\x1b" not in lines[1] and lines[1].endswith(": not an image")


def test_cannot_write_is_a_user_error():
    import errno

    from objsearch.errors import storage_error

    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/x/i.h5"), resumable=True)
    assert isinstance(full, CannotWriteError) and str(full) == (
        "No space left on device (/x/i.h5); an analysis resumes where it stopped when run again")
    assert str(storage_error(OSError(errno.EROFS, "Read-only file system"), resumable=True)) == "Read-only file system"
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None
