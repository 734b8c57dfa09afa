"""Hostile files and options through the real command line: odd image files, bad flags, outputs over inputs,
truncated videos, odd folder entries, non-UTF-8 names, a full disk. Each ends in its exact exit code with one
`error:` line (or the right result), no traceback, within seconds, and no input changed."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import cases
from support import assert_one_line_error, outcome_of, record, sha256

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"
VIDEO = ROOT.parent / "shared" / "data" / "video" / "walking.mp4"  # 341 frames


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return cases.odd_image_files(tmp_path_factory.mktemp("odd"))


ODD = ["empty.jpg", "text.jpg", "png_bomb_header.png", "truncated_header.png", "jpeg_garbage.jpg", "gif_as_jpg.jpg",
       "folder.jpg", "fifo.jpg", "dangling.jpg", "missing.jpg"]


@pytest.mark.parametrize("name", ODD)
def test_query_on_an_odd_image_file(name, odd_files, cli, tiny_index):
    """Refused before the detector loads, at once (a FIFO would block, a bomb would take a minute and gigabytes)."""
    result = cli("query", odd_files[name], "-i", tiny_index)
    assert_one_line_error(result, 2, "cannot read image")
    record(outcome_of(2))


def test_png_bomb_is_refused_from_its_header(odd_files):
    from objsearch.errors import ImageReadError
    from objsearch.media import read_image

    with pytest.raises(ImageReadError, match="declares 4225 MP, more than the limit of 100 MP"):
        read_image(odd_files["png_bomb_header.png"])


def test_query_decodes_its_image_once(cli, tiny_index, tmp_path, monkeypatch):
    import objsearch.media as media

    calls = []
    original = media.decode_image

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(media, "decode_image", counting)
    result = cli("query", BUS, "-i", tiny_index, "-k", 2, "--out", tmp_path / "r.jpg")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("value", ["2", "-1", "nan", "inf"])
@pytest.mark.parametrize("command", ["query", "video", "analyze"])
def test_conf_out_of_range_is_refused_before_work(command, value, cli, tiny_index, tiny_folder, tmp_path):
    args = {"query": ("query", BUS, "-i", tiny_index), "video": ("video", VIDEO, "-i", tiny_index),
            "analyze": ("analyze", tiny_folder, "-o", tmp_path / "new.h5")}[command]
    result = cli(*args, "--conf", value)
    assert_one_line_error(result, 1, f"--conf {value}: must be")  # the usage exit code, one line
    assert not (tmp_path / "new.h5").exists()
    record(outcome_of(1))


def test_base_dir_that_does_not_exist_is_refused(cli, tiny_index, tmp_path):
    result = cli("query", BUS, "-i", tiny_index, "--base-dir", tmp_path / "nowhere")
    assert_one_line_error(result, 1, "nowhere")
    record(outcome_of(1))


@pytest.mark.parametrize("kind", ["txt", "no_suffix", "under_a_file", "query_image", "index", "missing_folder",
                                  "folder_of_the_query"])
def test_query_picture_output_checked_first(kind, cli, tiny_index, tmp_path):
    image = tmp_path / "photo.jpg"
    shutil.copy(BUS, image)
    index = tmp_path / "index.h5"
    shutil.copy(tiny_index, index)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder.jpg").mkdir()
    # an existing folder (even one named like a picture) takes one picture per query image, named after it: the
    # query's own folder would put it over the query
    out = {"txt": tmp_path / "pic.txt", "no_suffix": tmp_path / "pic", "missing_folder": tmp_path / "no" / "p.jpg",
           "under_a_file": tmp_path / "a_file" / "pic.jpg", "query_image": image, "index": index,
           "folder_of_the_query": tmp_path}[kind]
    before = (sha256(image), sha256(index))
    result = cli("query", image, "-i", index, "--out", out)
    assert_one_line_error(result, 1, "")
    assert (sha256(image), sha256(index)) == before
    assert not (tmp_path / "pic.txt").exists() and not (tmp_path / "pic").exists()
    record(outcome_of(1))


# ----------------------------------------------------------------------------------------------- outputs over inputs
def test_no_output_over_an_input(cli, tiny_index, tiny_folder, tmp_path):
    video = tmp_path / "clip.mp4"
    shutil.copy(VIDEO, video)
    index = tmp_path / "X.h5"
    shutil.copy(tiny_index, index)
    inputs = [video, index]
    before = [sha256(p) for p in inputs]
    image = next(tiny_folder.glob("*.jpg"))
    image_before = sha256(image)
    runs = [
        ("video", video, "-i", index, "--jsonl", index),
        ("video", video, "-i", index, "--jsonl", video),
        ("video", video, "-i", index, "--out", video),
        ("video", video, "-i", index, "--out", index),
        ("video", video, "-i", index, "--jsonl", f"{index}.lock"),
        ("video", video, "-i", index, "--jsonl", f"{index}.undo"),
        ("convert", index, "-o", index),
        ("analyze", tiny_folder, "-o", tiny_folder, "--overwrite"),
        ("analyze", tiny_folder, "-o", image, "--overwrite"),
    ]
    for args in runs:
        result = cli(*args)
        assert_one_line_error(result, 1 if args[0] != "convert" else result.exit_code, "")
        assert result.exit_code in (1, 3)
        record(outcome_of(result.exit_code))
    assert [sha256(p) for p in inputs] == before and sha256(image) == image_before


def test_analyze_output_that_is_a_folder_is_refused_first(cli, tiny_folder, tmp_path):
    out = tmp_path / "out.h5"
    out.mkdir()
    result = cli("analyze", tiny_folder, "-o", out)
    assert_one_line_error(result, 1, "folder")
    record(outcome_of(1))


# ----------------------------------------------------------------------------------------------- video
@pytest.mark.parametrize("kind", ["folder", "fifo", "missing", "text"])
def test_video_on_something_that_is_not_a_video(kind, cli, tiny_index, tmp_path):
    path = tmp_path / "clip.mp4"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "text":
        path.write_text("not a video\n")
    expected = {"folder": "is a folder", "fifo": "not a regular file", "missing": "no such file",
                "text": "cannot decode"}[kind]
    result = cli("video", path, "-i", tiny_index)
    assert_one_line_error(result, 2, expected)
    record(outcome_of(2))


@pytest.fixture(scope="module")
def damaged_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    data = VIDEO.read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    zeroed = folder / "zeroed.mp4"
    third = len(data) // 3
    zeroed.write_bytes(data[:third] + bytes(third) + data[2 * third:])
    return {"truncated": truncated, "zeroed": zeroed}


@pytest.mark.parametrize("stride", [25, 60])
@pytest.mark.parametrize("kind", ["truncated", "zeroed"])
def test_video_that_ends_early_says_how_far_it_got(kind, stride, damaged_videos, cli, tiny_index, tmp_path):
    """Truncated or damaged in the middle: exit 2 naming the frame it stopped at (frames skipped by --stride are
    checked too), and the frames before are written."""
    jsonl = tmp_path / "frames.jsonl"
    result = cli("video", damaged_videos[kind], "-i", tiny_index, "--stride", stride, "--jsonl", jsonl)
    line = assert_one_line_error(result, 2, "of 341", "truncated or damaged")
    stopped = int(line.split("stops at frame ")[1].split()[0])
    assert 0 < stopped < 340
    frames = [json.loads(x)["frame"] for x in jsonl.read_text().splitlines()]
    assert frames == list(range(0, stopped, stride))
    record(outcome_of(2))


# ----------------------------------------------------------------------------------------------- analyze
def test_analyze_lists_unusable_entries_and_keeps_odd_names(cli, tmp_path, tiny_folder):
    folder = tmp_path / "photos"
    folder.mkdir()
    images = sorted(tiny_folder.glob("*.jpg"))
    shutil.copy(images[0], folder / "plain.jpg")
    odd = os.fsencode(folder) + b"/caf\xe9-\x1b[31mred.jpg"  # not UTF-8, with a terminal escape
    shutil.copy(images[1], os.fsdecode(odd))
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    os.mkfifo(folder / "pipe.jpg")
    index = tmp_path / "odd.h5"
    result = cli("analyze", folder, "-o", index)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "analyzed 2 images" in result.stdout and "2 skipped" in result.stdout
    assert "dangling.jpg: dangling link" in result.stdout and "pipe.jpg: a FIFO" in result.stdout
    assert "\x1b" not in result.output
    info = cli("info", index)
    assert info.exit_code == 0 and "\x1b" not in info.output
    from objsearch.catalog import Catalog

    with Catalog(index) as c:
        assert sorted(c.media_path) == sorted(["plain.jpg", os.fsdecode(b"caf\xe9-\x1b[31mred.jpg")])
    query = cli("query", os.fsdecode(odd), "-i", index, "--json", "--include-self", "-k", 1)
    assert query.exit_code == 0, query.output
    json.loads(query.stdout)
    text = cli("query", os.fsdecode(odd), "-i", index, "--include-self", "-k", 1)
    assert text.exit_code == 0 and "\x1b" not in text.output
    record("ok")


def test_disk_full_during_analysis_is_one_line_and_resumable(cli, tiny_folder, tmp_path, monkeypatch):
    from objsearch.catalog import CatalogWriter

    original = CatalogWriter.commit
    state = {"n": 0}

    def full(self, *args, **kwargs):
        state["n"] += 1
        if state["n"] == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CatalogWriter, "commit", full)
    index = tmp_path / "full.h5"
    result = cli("analyze", tiny_folder, "-o", index)
    assert_one_line_error(result, 6, "No space left on device")  # cannot write (docs/commands.md)
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(CatalogWriter, "commit", original)
    again = cli("analyze", tiny_folder, "-o", index)
    assert again.exit_code == 0, again.output
    assert "analyzed" in again.stdout and "(4 images" in again.stdout
    record(outcome_of(6))


def test_read_only_output_folder_is_one_line(cli, tiny_folder, tmp_path, monkeypatch):
    """A folder the index cannot be created in (simulated: root ignores chmod)."""
    import objsearch.catalog.txn as txn

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "ro"))

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(txn.os, "open", refuse)
    result = cli("analyze", tiny_folder, "-o", tmp_path / "ro" / "x.h5")
    assert_one_line_error(result, 3, "Permission denied")
    record(outcome_of(3))
