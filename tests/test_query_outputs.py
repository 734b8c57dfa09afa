"""What `query` gives back (issue 19 items 11 and 16): its text prints the k neighbours asked for, and pictures are
saved per query image, into a folder given with --out or a numbered runs/query/N with --save (as `yolo predict`
saves its runs)."""

from __future__ import annotations

import re

import cv2
from typer.testing import CliRunner

from testdata import BUS, DATA
from objsearch.cli import app

runner = CliRunner()
ZIDANE = DATA / "samples" / "zidane.jpg"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_text_prints_the_k_neighbours_asked_for(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "-k", 7)
    assert result.exit_code == 0, result.output
    objects = result.stdout.strip().splitlines()[1:]
    assert objects and all(len(re.findall(r" d=\d", line)) == 7 for line in objects), objects  # was 5 for any k
    three = invoke("query", BUS, "-i", small_index[0], "-k", 3)
    assert all(len(re.findall(r" d=\d", line)) == 3 for line in three.stdout.strip().splitlines()[1:])


def test_out_folder_gets_one_picture_per_query_image(small_index, tmp_path):
    out = tmp_path / "pictures"
    out.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "bus.jpg").write_bytes(BUS.read_bytes())  # a second bus.jpg: its picture must not overwrite the first
    result = invoke("query", BUS, ZIDANE, other / "bus.jpg", "-i", small_index[0], "-k", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["bus-2.jpg", "bus.jpg", "zidane.jpg"]
    assert all(cv2.imread(str(p)) is not None for p in out.iterdir())
    assert f"wrote 3 pictures to {out}" in result.stdout


def test_save_numbers_its_runs(small_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for n in (1, 2):
        result = invoke("query", BUS, ZIDANE, "-i", small_index[0], "-k", 1, "--save")
        assert result.exit_code == 0, result.output
        folder = tmp_path / "runs" / "query" / str(n)
        assert sorted(p.name for p in folder.iterdir()) == ["bus.jpg", "zidane.jpg"]
        assert f"to runs/query/{n}" in result.stdout
    json_only = invoke("query", BUS, "-i", small_index[0], "-k", 1, "--save", "--json")
    assert json_only.exit_code == 0 and (tmp_path / "runs" / "query" / "3" / "bus.jpg").is_file()
