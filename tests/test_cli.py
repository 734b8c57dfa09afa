"""The command line from outside: exit codes, one-line errors, the JSON shape, the picture, info, eval."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import BUS, COCO128, ROOT, WEIGHTS, WEIGHTS_11
from objsearch.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code, pattern):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pattern in lines[0], lines[0]


def test_query_json_shape(small_index):
    result = run("query", BUS, "-i", small_index[0], "-k", 4, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"image", "width", "height", "timings_ms", "objects"}
    assert (payload["width"], payload["height"]) == (810, 1080)
    assert {"detect", "features", "search", "total"} <= set(payload["timings_ms"])
    assert len(payload["objects"]) >= 4
    for obj in payload["objects"]:
        assert set(obj) == {"box", "class_id", "label", "confidence", "neighbors"}
        assert len(obj["box"]) == 4 and 0 <= obj["box"][0] < obj["box"][2] <= 810
        assert len(obj["neighbors"]) == 4
        for nb in obj["neighbors"]:
            assert set(nb) == {"object_id", "path", "box", "class_id", "label", "confidence", "distance"}
            assert not nb["path"].startswith("/") and nb["path"].endswith(".jpg")
        distances = [nb["distance"] for nb in obj["neighbors"]]
        assert distances == sorted(distances)


def test_query_same_class_and_picture(small_index, tmp_path):
    out = tmp_path / "pic.jpg"
    result = run("query", BUS, "-i", small_index[0], "-k", 3, "--same-class", "--json", "--out", out)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for obj in payload["objects"]:
        assert all(nb["class_id"] == obj["class_id"] for nb in obj["neighbors"])
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 480 + len(payload["objects"]) * 96


def test_query_text_output_and_info(small_index):
    result = run("query", BUS, "-i", small_index[0], "-k", 2)
    assert result.exit_code == 0 and "bus" in result.stdout and "ms" in result.stdout
    info = run("info", small_index[0])
    assert info.exit_code == 0, info.output
    assert "images     24 (skipped 2)" in info.stdout and "dims [16, 32]" in info.stdout
    assert f"objects    {small_index[1].n_objects} in" in info.stdout


def test_unreadable_query_image_exits_2(small_index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert_one_line_error(run("query", bad, "-i", small_index[0]), 2, "not a decodable image")
    assert_one_line_error(run("query", tmp_path / "missing.jpg", "-i", small_index[0]), 2, "cannot read image")


def test_broken_index_exits_3(tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    assert_one_line_error(run("query", BUS, "-i", fake), 3, "not a readable HDF5")
    assert_one_line_error(run("info", tmp_path / "none.h5"), 3, "does not exist")


def test_index_built_with_other_weights_is_refused(small_index):
    result = run("query", BUS, "-i", small_index[0], "--weights", WEIGHTS_11)
    assert_one_line_error(result, 3, "weights")
    assert "yolov8n-reconstructed.pt" in result.output and "yolo11n-reconstructed.pt" in result.output


def test_empty_folder_and_missing_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("analyze", tmp_path / "empty", "-o", tmp_path / "x.h5"), 5, "holds no image files")
    assert_one_line_error(run("analyze", COCO128, "-o", tmp_path / "x.h5", "--weights", tmp_path / "no.pt"), 4,
                          "does not exist")
    assert_one_line_error(run("analyze", COCO128, "-o", tmp_path / "x.h5", "--dims", "33"), 2, "dims")


def test_real_subprocess_query_and_exit_code(small_index, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "objsearch", "query", str(BUS), "-i", str(small_index[0]), "--json"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["objects"]) >= 4
    bad = subprocess.run([sys.executable, "-m", "objsearch", "query", str(tmp_path / "x.jpg"), "-i",
                          str(small_index[0])], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error: ")


def test_query_base_dir_after_move(small_folder, tmp_path, cfg, detector):
    from objsearch.engine import analyze

    folder = tmp_path / "a"
    shutil.copytree(small_folder / "sub", folder)
    index = tmp_path / "i.h5"
    analyze(folder, index, cfg, detector=detector)
    moved = folder.rename(tmp_path / "b")
    image = sorted(moved.glob("*.jpg"))[0]
    result = run("query", image, "-i", index, "--base-dir", moved, "--json", "-k", 50)
    payload = json.loads(result.stdout)
    assert all(nb["path"] != image.name for o in payload["objects"] for nb in o["neighbors"])
    with_self = json.loads(run("query", image, "-i", index, "--base-dir", moved, "--json", "--include-self").stdout)
    assert any(nb["path"] == image.name for o in with_self["objects"] for nb in o["neighbors"])


def test_demo_on_a_small_folder(small_folder, tmp_path):
    result = run("demo", small_folder / "sub", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    picture = tmp_path / "query_bus.jpg"
    assert cv2.imread(str(picture)) is not None and str(picture.resolve()) in result.stdout
    again = run("demo", small_folder / "sub", "--out-dir", tmp_path)  # a second run reuses the index
    assert again.exit_code == 0 and "using the existing index" in again.stdout
