"""The command line from outside (typer's CliRunner, plus real subprocesses): output, exit codes, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from testdata import BUS, N_SMALL, WEIGHTS, WEIGHTS_11, coco_images, copy_images, run_cli
from objsearch.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, exit_code, *fragments):
    """Exit code as expected, exactly one line on stderr starting with 'error:', no traceback."""
    stderr = result.stderr
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def bus_json(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "-k", 4, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------------------------------- query
def test_query_json_prints_exactly_one_object(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "-k", 2, "--json")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1
    assert isinstance(json.loads(result.stdout), dict)


def test_query_json_keys(bus_json):
    assert set(bus_json) == {"image", "width", "height", "timings_ms", "objects"}
    assert (bus_json["width"], bus_json["height"]) == (810, 1080) and bus_json["image"] == str(BUS)
    timings = bus_json["timings_ms"]
    assert {"detect", "features", "search", "total"} <= set(timings)
    assert all(v >= 0 for v in timings.values())
    assert timings["total"] >= timings["detect"] + timings["search"]
    for obj in bus_json["objects"]:
        assert {"box", "class_id", "label", "confidence", "neighbors"} <= set(obj) <= {
            "box", "class_id", "label", "confidence", "neighbors", "note"}
        for nb in obj["neighbors"]:
            assert set(nb) == {"object_id", "image_id", "path", "box", "class_id", "label", "confidence", "distance"}


def test_query_json_objects_are_the_buses_and_persons(bus_json):
    labels = [obj["label"] for obj in bus_json["objects"]]
    assert labels.count("bus") == 1 and labels.count("person") >= 4
    for obj in bus_json["objects"]:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < x2 <= 810 and 0 <= y1 < y2 <= 1080
        assert 0.25 <= obj["confidence"] <= 1


def test_query_json_neighbours(bus_json, small_index, small_folder):
    for obj in bus_json["objects"]:
        assert len(obj["neighbors"]) == 4
        distances = [nb["distance"] for nb in obj["neighbors"]]
        assert distances[1:] == sorted(distances[1:])  # a promoted instance may lead (docs/neighbours.md)
        for nb in obj["neighbors"]:
            assert not Path(nb["path"]).is_absolute() and (small_folder / nb["path"]).is_file()
            assert nb["object_id"] >= 0 and len(nb["box"]) == 4
    from objsearch.catalog import Catalog

    with Catalog(small_index[0]) as f:  # the neighbour fields are the stored ones
        nb = bus_json["objects"][0]["neighbors"][0]
        row = f.object_rows([nb["object_id"]])[0]
        assert nb["class_id"] == f.class_id[row] and nb["label"] == f.class_names[nb["class_id"]]
        assert nb["image_id"] == f.object_media_id[row] and nb["path"] == f.media(nb["image_id"]).path
        np.testing.assert_allclose(nb["box"], f.xyxy[row], atol=0.01)


def test_query_same_class(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "-k", 3, "--same-class", "--json")
    assert result.exit_code == 0, result.output
    objects = json.loads(result.stdout)["objects"]
    assert sum(len(o["neighbors"]) for o in objects) > 0
    for obj in objects:
        assert all(nb["class_id"] == obj["class_id"] and nb["label"] == obj["label"] for nb in obj["neighbors"])


def test_query_writes_a_picture(small_index, tmp_path):
    out = tmp_path / "pics" / "pic.jpg"
    missing = invoke("query", BUS, "-i", small_index[0], "-k", 3, "--out", out)  # issue 19 item 14: one rule for
    assert_one_line_error(missing, 1, "does not exist")  # every output: its folder must exist, none is made
    assert not out.parent.exists()
    out.parent.mkdir()
    result = invoke("query", BUS, "-i", small_index[0], "-k", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 480  # the header is 480 px tall, rows of thumbnails below


def test_query_text_output(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "-k", 2)
    assert result.exit_code == 0, result.output
    first, *objects = result.stdout.strip().splitlines()
    assert first.startswith(f"{BUS}: ") and " objects, " in first
    assert any(line.strip().startswith("bus ") for line in objects)


def test_query_base_dir_of_a_moved_folder(tmp_path, cfg, detector):
    from objsearch.analysis import analyze

    folder = copy_images(coco_images(6), tmp_path / "before")
    index = tmp_path / "moved.h5"
    analyze(folder, index, cfg, detector=detector)
    moved = folder.rename(tmp_path / "after")
    image = moved / coco_images(6)[1].name
    result = invoke("query", image, "-i", index, "--base-dir", moved, "--json", "-k", 100)
    assert result.exit_code == 0, result.output
    objects = json.loads(result.stdout)["objects"]
    paths = {nb["path"] for obj in objects for nb in obj["neighbors"]}
    assert paths and image.name not in paths  # its own objects are left out
    assert all((moved / p).is_file() for p in paths)
    with_self = json.loads(invoke("query", image, "-i", index, "--base-dir", moved, "--json", "--include-self").stdout)
    assert image.name in {nb["path"] for obj in with_self["objects"] for nb in obj["neighbors"]}
    # without --base-dir the moved image is not recognised as indexed, and finds itself
    stale = json.loads(invoke("query", image, "-i", index, "--json", "-k", 1).stdout)
    assert image.name in {nb["path"] for obj in stale["objects"] for nb in obj["neighbors"]}


# ------------------------------------------------------------------------------------------------ info
def test_info_prints_counts(small_index):
    result = invoke("info", small_index[0])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"images     {N_SMALL} (skipped 2)" in out
    assert f"objects    {small_index[1].n_objects} in " in out
    assert "dims [16, 32]" in out and "yolov8n-reconstructed.pt" in out and "person" in out


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_query_image_exits_2(small_index, tmp_path, content):
    image = tmp_path / "query.jpg"
    if content is not None:
        image.write_bytes(content)
    assert_one_line_error(invoke("query", image, "-i", small_index[0]), 2, "cannot read image", str(image))


@pytest.fixture
def broken_index(request, small_index, tmp_path):
    path = tmp_path / "broken.h5"
    kind = request.param
    if kind == "text":
        path.write_text("this is not an index\n")
    elif kind == "truncated":
        data = small_index[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(10)
    elif kind == "version":
        shutil.copy(small_index[0], path)
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 99
    elif kind == "missing_dataset":
        shutil.copy(small_index[0], path)
        with h5py.File(path, "r+") as f:
            del f["objects/xyxy"]
    return path


BROKEN = [("text", "not a readable HDF5 file"), ("truncated", "truncated"), ("foreign", "not an objsearch index"),
          ("version", "format version 99"), ("missing_dataset", "is damaged: dataset /objects/xyxy is missing")]


@pytest.mark.parametrize(("broken_index", "message"), BROKEN, indirect=["broken_index"])
@pytest.mark.parametrize("command", ["query", "info"])
def test_broken_index_exits_3(broken_index, message, command):
    args = ("query", BUS, "-i", broken_index) if command == "query" else ("info", broken_index)
    assert_one_line_error(invoke(*args), 3, message, str(broken_index))


def test_missing_index_exits_3(tmp_path):
    assert_one_line_error(invoke("info", tmp_path / "none.h5"), 3, "does not exist")


def test_index_built_with_other_weights_is_refused(small_index):
    line = assert_one_line_error(invoke("query", BUS, "-i", small_index[0], "--weights", WEIGHTS_11), 3, "weights")
    assert "yolov8n-reconstructed.pt" in line and "yolo11n-reconstructed.pt" in line


def test_dims_not_stored_in_the_index_is_a_usage_error(small_index):
    """A --dims the index does not store is a bad value of a flag (exit 1), not a damaged index (3, issue 19 item
    13)."""
    assert_one_line_error(invoke("query", BUS, "-i", small_index[0], "--dims", 64), 1, "--dims 64", "16 or 32")


@pytest.mark.parametrize("make", ["empty", "only_text", "missing"])
def test_analyze_of_a_folder_without_images_exits_5(tmp_path, make):
    folder = tmp_path / "folder"
    if make != "missing":
        folder.mkdir()
    if make == "only_text":
        (folder / "notes.txt").write_text("x")
    line = assert_one_line_error(invoke("analyze", folder, "-o", tmp_path / "x.h5"), 5, str(folder))
    assert "holds no image files" in line or "is not a folder" in line
    assert not (tmp_path / "x.h5").exists()


def test_analyze_bad_options(tmp_path, small_folder):
    out = tmp_path / "x.h5"
    assert_one_line_error(invoke("analyze", small_folder, "-o", out, "--weights", tmp_path / "no.pt"), 4,
                          "does not exist")
    assert_one_line_error(invoke("analyze", small_folder, "-o", out, "--dims", "33"), 1, "dims must be among")
    assert_one_line_error(invoke("analyze", small_folder, "-o", out, "--conf", "2"), 1, "--conf 2: must be less "
                          "than or equal to 1")
    assert not out.exists()


def test_analyze_refuses_to_overwrite(small_index, small_folder):
    assert_one_line_error(invoke("analyze", small_folder, "-o", small_index[0], "-w", WEIGHTS), 3,
                          "already exists", "--overwrite")


def test_analyze_prints_its_summary(tmp_path):
    folder = copy_images(coco_images(3), tmp_path / "three")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "list.csv").write_text("a,b\n")
    result = invoke("analyze", folder, "-o", tmp_path / "three.h5", "-w", WEIGHTS, "--dims", "16,64")
    assert result.exit_code == 0, result.output
    assert "analyzed 3 images (" in result.stdout and "resumed" not in result.stdout
    assert "1 skipped, 1 other files ignored" in result.stdout
    assert "skipped broken.png: cannot read image" in result.stdout
    assert "dims [16, 64]" in invoke("info", tmp_path / "three.h5").stdout


def test_unknown_recipe_is_one_line_error(tmp_path, small_folder):
    assert_one_line_error(invoke("analyze", small_folder, "-o", tmp_path / "x.h5", "-w", WEIGHTS, "--recipe",
                                 "bogus:1"), 1, "bogus")


def test_unusable_device_is_one_line_error(small_index):
    result = invoke("query", BUS, "-i", small_index[0], "--device", "gpu")
    assert result.exit_code != 0
    assert_one_line_error(result, result.exit_code, "gpu")


def test_non_numeric_config_value_is_one_line_error(tmp_path, small_folder):
    config = tmp_path / "c.yaml"
    config.write_text("conf: high\n")
    assert_one_line_error(invoke("analyze", small_folder, "-o", tmp_path / "x.h5", "--config", config), 1, "conf")


def test_demo_on_a_small_folder(small_folder, tmp_path):
    result = invoke("demo", small_folder / "sub", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    picture = tmp_path / "query_bus.jpg"
    assert cv2.imread(str(picture)) is not None and str(picture.resolve()) in result.stdout
    again = invoke("demo", small_folder / "sub", "--out-dir", tmp_path)  # a second run reuses the index
    assert again.exit_code == 0 and "using the existing index" in again.stdout


# ------------------------------------------------------------------------------------------- subprocesses
def test_real_subprocess_query_json(small_index):
    result = run_cli("query", BUS, "-i", small_index[0], "--json", "-k", 3)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["objects"]) >= 5 and all(len(o["neighbors"]) == 3 for o in payload["objects"])


def test_real_subprocess_errors_are_one_line(small_index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    result = run_cli("query", bad, "-i", small_index[0])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines() == [
        f"error: cannot read image {bad}: not a decodable image"]
    text = tmp_path / "index.h5"
    text.write_text("hello")
    result = run_cli("info", text)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not a readable HDF5 file" in result.stderr


def test_no_arguments_prints_help():
    result = invoke()
    assert "analyze" in result.output and "query" in result.output and "eval" in result.output


# ---------------------------------------------------------------------------------------------------- weights
NETWORK_NOISE = ("GitHub", "NameResolution", "Downloading", "github.com")


@pytest.mark.parametrize("offline", ["1", None], ids=["YOLO_OFFLINE=1", "YOLO_OFFLINE-unset"])
@pytest.mark.parametrize("weights", ["nope.pt", "/tmp/does/not/exist.pt"])
def test_missing_local_weights_are_one_line_without_network_noise(small_index, weights, offline):
    import os

    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    if offline:
        env["YOLO_OFFLINE"] = offline
    proc = run_cli("query", BUS, "-i", small_index[0], "--weights", weights, env=env, timeout=120)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not any(noise in proc.stderr for noise in NETWORK_NOISE), proc.stderr


def test_release_names_offline_are_our_error_and_are_ultralytics_assets(monkeypatch):
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    from objsearch.errors import WeightsNotFoundError
    from objsearch.weights import RELEASE_NAMES, resolve_weights

    assert "yolov8n.pt" in RELEASE_NAMES and RELEASE_NAMES <= GITHUB_ASSETS_NAMES
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="cannot be downloaded offline"):
        resolve_weights("yolov8s.pt")
    with pytest.raises(WeightsNotFoundError, match="not one of ultralytics' release names"):
        resolve_weights("nope.pt")
    assert resolve_weights(WEIGHTS) == (str(WEIGHTS), [str(WEIGHTS)])


# ---------------------------------------------------------------------------------------------------- threads
def thread_counts(*args, **env) -> dict:
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("OBJSEARCH_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    proc = run_cli(*args, "threads", env={**base, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_threads_option_and_environment_set_torch_and_opencv():
    import os

    default = max(1, (os.cpu_count() or 1) - 1)
    assert thread_counts() == {"torch": default, "cv2": default, "omp_wait_policy": "PASSIVE"}
    assert thread_counts("--threads", 1) == {"torch": 1, "cv2": 1, "omp_wait_policy": "PASSIVE"}
    assert thread_counts("--threads", 3)["torch"] == 3
    assert thread_counts(OBJSEARCH_THREADS="3")["torch"] == 3
    assert thread_counts("--threads", 1, OBJSEARCH_THREADS="3")["torch"] == 1  # the flag wins
    assert thread_counts(OMP_WAIT_POLICY="ACTIVE")["omp_wait_policy"] == "ACTIVE"  # a user's choice is kept


def test_threads_option_rejects_zero():
    proc = run_cli("--threads", 0, "threads", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --threads 0: must be greater than or equal to 1 (see "
                                                "objsearch --help)"]


def test_a_one_off_query_reports_its_warm_up_apart_from_detection(bus_json):
    """The first pass at a new input size is 2-4x slower on a CPU: it runs untimed first and is reported apart, so the
    printed detect time is what a warm detector takes."""
    timings = bus_json["timings_ms"]
    assert timings["warmup"] > 0
    stages = sum(v for k, v in timings.items() if k not in ("total", "warmup"))
    assert timings["total"] == pytest.approx(stages, abs=0.01)
    assert timings["detect"] < timings["warmup"]
