"""The onnx and openvino runtimes give the boxes and features of the torch model (oracle: the torch detector)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from testdata import BUS, WEIGHTS, coco_images, run_cli

from objsearch.media import read_image

BOX_TOL_PX = 0.5
FEATURE_TOL = 1e-3
MAPS_RECIPE = "cls_cell:1,cls_logits:1,cls_roi:1,box_cell:1,neck_roi:1"  # every block, so every exported output


@pytest.fixture(scope="module")
def weights_copy(tmp_path_factory):
    """The test checkpoint copied to a temporary folder, so the exported graphs are cached there (not in the
    shared data)."""
    path = tmp_path_factory.mktemp("weights") / WEIGHTS.name
    shutil.copy(WEIGHTS, path)
    return path


@pytest.fixture(autouse=True)
def beside_the_weights(monkeypatch):
    """These tests read the graphs beside ``weights_copy``: no session-wide cache folder (conftest sets one)."""
    monkeypatch.delenv("OBJSEARCH_CACHE_DIR", raising=False)


@pytest.fixture(scope="module")
def torch_detector():
    """The oracle: the detector run by torch (the session's ``detector`` runs the default runtime, auto)."""
    from objsearch.detector import Detector

    return Detector(WEIGHTS, runtime="torch")


@pytest.fixture(scope="module")
def images():
    return [read_image(p) for p in [BUS, *coco_images(3)]]


def _compare(ref, other, images, min_boxes: int = 10) -> tuple[int, float, float]:
    """(boxes compared, max box difference in px, max feature difference); asserts the same detections."""
    n, box, feat = 0, 0.0, 0.0
    for image in images:
        a, b = ref(image), other(image)
        assert np.array_equal(a.class_id, b.class_id)
        assert a.features.shape == b.features.shape and b.features.dtype == np.float32
        assert a.image_feature.shape == b.image_feature.shape  # the whole-image vector, same pass, same code
        feat = max(feat, float(np.abs(a.image_feature - b.image_feature).max()))
        if len(a):
            box = max(box, float(np.abs(a.xyxy - b.xyxy).max()))
            feat = max(feat, float(np.abs(a.features - b.features).max()))
            assert np.abs(a.confidence - b.confidence).max() < 1e-3
        n += len(a)
    assert n >= min_boxes  # the images do have objects
    return n, box, feat


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_runtime_matches_torch(runtime, torch_detector, weights_copy, images):
    pytest.importorskip("onnxruntime" if runtime == "onnx" else "openvino")
    from objsearch.detector import Detector

    other = Detector(weights_copy, runtime=runtime)
    assert other.runtime == runtime and other.weights_sha256 == torch_detector.weights_sha256
    assert other.backend.path.parent == weights_copy.parent  # cached beside the weights
    assert other.backend.path.name.startswith(f"{WEIGHTS.name}.objsearch-{torch_detector.weights_sha256[:12]}-")
    _, box, feat = _compare(torch_detector, other, images)
    assert box <= BOX_TOL_PX and feat <= FEATURE_TOL
    assert other.warmup((480, 640, 3)) > 0  # warm-up runs through the runtime too


def test_runtime_with_branch_maps_matches_torch(weights_copy, images):
    """A recipe with the class/box branch blocks exports those maps too (another cached graph)."""
    pytest.importorskip("onnxruntime")
    from objsearch.detector import Detector

    ref = Detector(weights_copy, recipe=MAPS_RECIPE)
    other = Detector(weights_copy, recipe=MAPS_RECIPE, runtime="onnx")
    assert other.backend.maps
    plain = Detector(weights_copy, runtime="onnx")
    assert not plain.backend.maps and plain.backend.path != other.backend.path
    _, box, feat = _compare(ref, other, images[:2], min_boxes=5)
    assert box <= BOX_TOL_PX and feat <= FEATURE_TOL


def test_export_is_cached(weights_copy):
    pytest.importorskip("onnxruntime")
    from objsearch.detector import Detector

    first = Detector(weights_copy, runtime="onnx").backend.path
    stamp = first.stat().st_mtime_ns
    assert Detector(weights_copy, runtime="onnx").backend.path == first
    assert first.stat().st_mtime_ns == stamp  # reused, not exported again
    assert not list(first.parent.glob("*.tmp"))


def test_auto_picks_an_installed_fast_runtime(weights_copy, torch_detector):
    pytest.importorskip("onnxruntime")
    from objsearch.detector import Detector
    from objsearch.runtimes import auto_runtime

    assert auto_runtime("cpu") == "onnx" and auto_runtime("cuda") == "torch"
    auto = Detector(weights_copy, runtime="auto")
    assert (auto.runtime, auto.runtime_requested) == ("onnx", "auto")
    record = json.loads(Path(str(auto.backend.path) + ".verified.json").read_text())
    assert record["max_relative_difference"] <= record["tolerance"]  # checked against torch before it is used
    image = read_image(BUS)
    assert np.abs(auto(image).features - torch_detector(image).features).max() <= FEATURE_TOL


def test_auto_keeps_torch_when_the_export_differs(tmp_path, monkeypatch):
    """An exported graph whose outputs are not torch's (here made 1% off) is not used by ``auto``."""
    pytest.importorskip("onnxruntime")
    from objsearch import runtimes
    from objsearch.detector import Detector

    weights = tmp_path / WEIGHTS.name
    shutil.copy(WEIGHTS, weights)
    forward = runtimes.OnnxBackend.forward

    def off_by_one_percent(self, x):
        y, maps = forward(self, x)
        return y * 1.01, maps

    monkeypatch.setattr(runtimes.OnnxBackend, "forward", off_by_one_percent)
    auto = Detector(weights, runtime="auto")
    assert auto.runtime == "torch"
    record = json.loads(next(tmp_path.glob("*.verified.json")).read_text())
    assert record["max_relative_difference"] == pytest.approx(0.01, rel=0.05)


def test_runtime_config_is_checked():
    from objsearch.config import ConfigError, load_config

    assert load_config(None)["runtime"] == "auto"  # the fast CPU path by default (issue 23)
    assert load_config(None, runtime="ONNX")["runtime"] == "onnx"
    assert load_config(None, runtime="auto")["runtime"] == "auto"
    with pytest.raises(ConfigError, match="runtime"):
        load_config(None, runtime="tensorrt")


@pytest.mark.slow
def test_query_runtime_flag(small_index, weights_copy):
    """``query --runtime onnx`` prints the neighbours ``--runtime torch`` prints; a bad name is one error line."""
    pytest.importorskip("onnxruntime")
    index, _ = small_index
    outs = {}
    for runtime in ("torch", "onnx"):
        proc = run_cli("query", BUS, "-i", index, "--json", "--weights", weights_copy, "--runtime", runtime)
        assert proc.returncode == 0, proc.stderr
        outs[runtime] = json.loads(proc.stdout)
    ids = [[[n["object_id"] for n in o["neighbors"]] for o in out["objects"]] for out in outs.values()]
    assert ids[0] == ids[1] and len(ids[0]) > 0
    bad = run_cli("query", BUS, "-i", index, "--runtime", "tensorrt")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: --runtime tensorrt:")
    assert "Traceback" not in bad.stderr


def test_add_with_runtime_matches_torch(tmp_path, cfg, detector):
    """``add --runtime onnx`` runs onnx (its export appears beside the weights) and adds the objects ``add`` with
    torch adds: same boxes, classes and (within the tolerance) features."""
    pytest.importorskip("onnxruntime")
    weights_copy = tmp_path / "weights" / WEIGHTS.name
    weights_copy.parent.mkdir()
    shutil.copy(WEIGHTS, weights_copy)
    from objsearch.analysis import add, analyze
    from objsearch.catalog import Catalog

    folder = tmp_path / "images"
    first, extra = coco_images(5)[:3], coco_images(5)[3:]
    for p in first:
        (folder / "old").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / "old" / p.name)
    analyze(folder, tmp_path / "base.h5", cfg, detector=detector)
    for p in extra:
        (folder / "new").mkdir(exist_ok=True)
        shutil.copy(p, folder / "new" / p.name)
    results = {}
    for runtime in ("torch", "onnx"):
        index = tmp_path / f"{runtime}.h5"
        shutil.copy(tmp_path / "base.h5", index)
        summary = add(index, [folder / "new"], weights=str(weights_copy), runtime=runtime)
        assert summary.n_added == len(extra)
        assert bool(list(weights_copy.parent.glob("*.onnx"))) == (runtime == "onnx")
        with Catalog(index) as catalog:
            ids = catalog.object_id
            results[runtime] = (ids, catalog.xyxy.copy(), catalog.class_id.copy(), catalog.features(ids))
    (ids_t, box_t, cls_t, feat_t), (ids_o, box_o, cls_o, feat_o) = results["torch"], results["onnx"]
    assert np.array_equal(ids_t, ids_o) and np.array_equal(cls_t, cls_o) and len(ids_t) >= 5
    assert np.abs(box_t - box_o).max() <= BOX_TOL_PX and np.abs(feat_t - feat_o).max() <= FEATURE_TOL


def test_exports_never_go_into_a_read_only_folder(tmp_path, monkeypatch):
    """Weights in a folder marked read-only (like the shared data set; root could write there anyway) have their
    exported graphs cached under $XDG_CACHE_HOME/objsearch instead."""
    from types import SimpleNamespace

    from objsearch.runtimes import cache_path

    shared, writable = tmp_path / "shared", tmp_path / "mine"
    for folder in (shared, writable):
        folder.mkdir()
        shutil.copy(WEIGHTS, folder / WEIGHTS.name)
    shared.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        for folder, where in ((shared, tmp_path / "cache" / "objsearch"), (writable, writable)):
            det = SimpleNamespace(weights_path=folder / WEIGHTS.name, weights_sha256="ab" * 32)
            assert cache_path(det, False, ".onnx").parent == where
    finally:
        shared.chmod(0o755)


def test_the_default_runtime_is_onnx_on_the_cpu(detector):
    """The configuration's default (``auto``) runs the exported graph in onnxruntime on the CPU (the session's
    detector is loaded from the default configuration)."""
    from objsearch.config import DEFAULTS

    assert DEFAULTS["runtime"] == "auto"
    assert (detector.runtime, detector.runtime_requested) == ("onnx", "auto")


@pytest.mark.slow
def test_the_cli_shows_the_one_time_export(small_index, tmp_path):
    """A first query with a fresh cache says on stderr that it exports the detector once; the next one reuses it
    silently and prints the same neighbours."""
    import os

    index, _ = small_index
    env = {**os.environ, "OBJSEARCH_CACHE_DIR": str(tmp_path / "exports")}
    first = run_cli("query", BUS, "-i", index, "--json", "-k", "3", env=env)
    second = run_cli("query", BUS, "-i", index, "--json", "-k", "3", env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert f"objsearch: exporting {WEIGHTS.name} to ONNX, once" in first.stderr
    assert "checking the onnx graph against torch, once" in first.stderr
    assert "export" not in second.stderr and "checking" not in second.stderr
    assert len(list((tmp_path / "exports").glob("*.onnx"))) == 1
    ids = [[[n["object_id"] for n in o["neighbors"]] for o in json.loads(p.stdout)["objects"]] for p in (first, second)]
    assert ids[0] == ids[1] and ids[0]


@pytest.mark.slow
def test_processes_exporting_at_once_leave_one_whole_graph(tmp_path):
    """Three processes that export the same detector into one empty cache at the same moment all get a working
    graph; the cache holds one whole .onnx (and its check record), no temporary file."""
    import os
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    cache = tmp_path / "exports"
    code = ("import sys; from objsearch.detector import Detector\n"
            f"d = Detector({str(WEIGHTS)!r}, runtime='auto')\n"
            "print(d.runtime, d.backend.path)")
    env = {**os.environ, "OBJSEARCH_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert {out.split()[0] for out, _ in outs} == {"onnx"}
    graphs = list(cache.glob("*.onnx"))
    assert len(graphs) == 1 and sorted(p.name for p in cache.iterdir()) == sorted(
        [graphs[0].name, graphs[0].name + ".verified.json"])
    import onnxruntime

    onnxruntime.InferenceSession(str(graphs[0]), providers=["CPUExecutionProvider"])  # whole: it loads
    record = json.loads(Path(str(graphs[0]) + ".verified.json").read_text())
    assert record["max_relative_difference"] <= record["tolerance"]
