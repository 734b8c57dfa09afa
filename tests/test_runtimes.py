"""The onnx and openvino runtimes give the boxes and features of the torch model (oracle: the torch detector)."""

from __future__ import annotations

import json
import shutil

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
def test_runtime_matches_torch(runtime, detector, weights_copy, images):
    pytest.importorskip("onnxruntime" if runtime == "onnx" else "openvino")
    from objsearch.detector import Detector

    other = Detector(weights_copy, runtime=runtime)
    assert other.runtime == runtime and other.weights_sha256 == detector.weights_sha256
    assert other.backend.path.parent == weights_copy.parent  # cached beside the weights
    assert other.backend.path.name.startswith(f"{WEIGHTS.name}.objsearch-{detector.weights_sha256[:12]}-")
    _, box, feat = _compare(detector, other, images)
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


def test_auto_picks_an_installed_fast_runtime(weights_copy, detector):
    pytest.importorskip("onnxruntime")
    from objsearch.detector import Detector
    from objsearch.runtimes import auto_runtime

    assert auto_runtime("cpu") == "onnx" and auto_runtime("cuda") == "torch"
    auto = Detector(weights_copy, runtime="auto")
    assert (auto.runtime, auto.runtime_requested) == ("onnx", "auto")
    image = read_image(BUS)
    assert np.abs(auto(image).features - detector(image).features).max() <= FEATURE_TOL


def test_runtime_config_is_checked():
    from objsearch.config import ConfigError, load_config

    assert load_config(None)["runtime"] == "torch"
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
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr
