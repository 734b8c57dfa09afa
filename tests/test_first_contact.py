"""First contact with the command line (issue #10, item 6): --version, --device as ultralytics spells it, -k
spellings, several query images (files, folders, globs, URLs; JSON Lines), demo --overwrite, the demo index found
from any folder, eval without labels, and a Ctrl-C message that only promises what the command does."""

from __future__ import annotations

import http.server
import json
from pathlib import Path
import threading

import pytest
from typer.testing import CliRunner

from testdata import BUS, DATA, coco_images, copy_images
from objsearch import config, media
from objsearch.cli import app

runner = CliRunner()
ZIDANE = DATA / "samples" / "zidane.jpg"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    from objsearch import __version__

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"objsearch {__version__}"


def test_a_bare_gpu_index_means_cuda():
    from objsearch.detector import device_name

    assert device_name("0") == device_name(0) == "cuda:0"
    assert device_name(" 1 ") == "cuda:1"
    assert device_name("cpu") == "cpu" and device_name("CUDA:0") == "cuda:0" and device_name("mps") == "mps"


def test_device_0_on_the_command_line(small_index):
    import torch

    result = invoke("query", BUS, "-i", small_index[0], "--device", "0", "-k", 1, "--json")
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
    else:  # refused as a CUDA device, not as an unknown name; a usage error (what this machine cannot do)
        assert result.exit_code == 1 and "no CUDA GPU" in result.stderr, result.output


@pytest.mark.parametrize("flag", ["-k", "--k", "--top-k"])
def test_k_spellings(small_index, flag):
    result = invoke("query", BUS, "-i", small_index[0], flag, 2, "--json")
    assert result.exit_code == 0, result.output
    objects = json.loads(result.stdout)["objects"]
    assert objects and all(len(o["neighbors"]) <= 2 for o in objects)
    assert any(len(o["neighbors"]) == 2 for o in objects)


def test_query_several_images_a_folder_and_a_glob(small_index, tmp_path):
    folder = copy_images(coco_images(3), tmp_path / "q")
    result = invoke("query", BUS, ZIDANE, folder, str(folder / "*.jpg"), "-i", small_index[0], "-k", 1, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    names = sorted(p.name for p in folder.glob("*.jpg"))
    assert [Path(d["image"]).name for d in lines] == ["bus.jpg", "zidane.jpg", *names, *names]
    text = invoke("query", BUS, ZIDANE, "-i", small_index[0], "-k", 1)
    assert text.exit_code == 0 and "bus.jpg: " in text.stdout and "zidane.jpg: " in text.stdout


def test_query_several_images_goes_on_after_a_bad_one(small_index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = invoke("query", bad, BUS, "-i", small_index[0], "-k", 1, "--json")
    assert result.exit_code == 2
    assert len(result.stdout.strip().splitlines()) == 1 and "bad.jpg" in result.stderr
    no_match = invoke("query", str(tmp_path / "*.png"), "-i", small_index[0])
    assert no_match.exit_code == 2 and "no image file matches" in no_match.stderr
    several = invoke("query", BUS, ZIDANE, "-i", small_index[0], "--out", tmp_path / "x.jpg")
    assert several.exit_code == 1 and "write one picture each into a folder" in several.stderr


class _Bus(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        data = BUS.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_query_an_url(small_index, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Bus)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/bus.jpg"
        refused = invoke("query", url, "-i", small_index[0])
        assert refused.exit_code == 2 and "loopback" in refused.stderr and url in refused.stderr, refused.output
        fetch = media.fetch_image  # the test server is on 127.0.0.1: allow it here only
        monkeypatch.setattr(media, "fetch_image", lambda url, **kw: fetch(url, **{**kw, "allow_private": True}))
        result = invoke("query", url, "-i", small_index[0], "-k", 1, "--json")
        local = invoke("query", BUS, "-i", small_index[0], "-k", 1, "--json")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.exit_code == 0, result.output
    got, want = json.loads(result.stdout), json.loads(local.stdout)
    assert got["image"] == url
    assert [o["box"] for o in got["objects"]] == [o["box"] for o in want["objects"]]


def test_demo_index_is_found_from_any_folder(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / "runs" / "demo").mkdir(parents=True)
    (project / "runs" / "demo" / "coco128.h5").write_bytes(b"")
    monkeypatch.setattr(config, "PROJECT_ROOT", project)
    monkeypatch.chdir(elsewhere)
    assert config.find_demo_index() == project / "runs" / "demo" / "coco128.h5"
    (elsewhere / "runs" / "demo").mkdir(parents=True)
    (elsewhere / "runs" / "demo" / "coco128.h5").write_bytes(b"")
    assert config.find_demo_index() == elsewhere / "runs" / "demo" / "coco128.h5"  # the current folder first
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "none")
    assert config.find_demo_index(tmp_path) is None


def test_eval_refuses_a_folder_without_labels_at_once(tmp_path, monkeypatch):
    import objsearch.provenance

    def no_detector(*args, **kwargs):
        raise AssertionError("the detector loaded for a folder without labels")

    monkeypatch.setattr(objsearch.provenance, "load_detector", no_detector)
    folder = copy_images(coco_images(2), tmp_path / "images")
    result = invoke("eval", folder)
    assert result.exit_code == 5, result.output
    assert "no YOLO labels" in result.stderr


def test_ctrl_c_in_eval_does_not_promise_a_resume(monkeypatch):
    import objsearch.provenance

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(objsearch.provenance, "load_detector", interrupted)
    result = invoke("eval", DATA / "coco8")
    assert result.exit_code == 130
    assert result.stderr.strip() == "error: interrupted"


@pytest.mark.slow
def test_demo_overwrite_analyzes_again(tmp_path):
    from testdata import WEIGHTS

    folder = copy_images(coco_images(2), tmp_path / "two")
    args = ["demo", folder, "--out-dir", tmp_path / "out", "-w", WEIGHTS]
    first = invoke(*args)
    assert first.exit_code == 0 and "analyzed 2 images" in first.stdout, first.output
    assert "using the existing index" in invoke(*args).stdout
    again = invoke(*args, "--overwrite")
    assert again.exit_code == 0 and "analyzed 2 images" in again.stdout, again.output



