"""``objsearch.roi.roi_align_1x1`` against its oracle, torchvision's ``roi_align``; and a query that never imports
torchvision (whose import pulls in ``torch._dynamo``: seconds of a one-off query)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from testdata import BUS, ROOT, WEIGHTS, coco_images

torch = pytest.importorskip("torch")
torchvision_ops = pytest.importorskip("torchvision.ops")


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_roi_align_equals_torchvision(stride):
    """Boxes inside, across and outside the map (more than a cell out counts as zero), tiny and large, on each
    level's grid: the same numbers as torchvision's kernel."""
    from objsearch.roi import roi_align_1x1

    g = torch.Generator().manual_seed(stride)
    maps = torch.randn(48, 20, 15, generator=g)
    size = torch.tensor([15.0, 20.0]) * stride  # (width, height) in pixels
    corner = torch.rand(300, 2, generator=g) * size * 1.4 - size * 0.2
    extent = torch.rand(300, 2, generator=g) * size * 0.7
    extent[:20] *= 0.01  # smaller than a cell
    boxes = torch.cat([corner, corner + extent], 1)
    boxes[-1] = torch.tensor([0.0, 0.0, float(size[0]), float(size[1])])  # the whole map
    expected = torchvision_ops.roi_align(maps[None], [boxes], 1, 1.0 / stride, 2, aligned=True).flatten(1)
    got = roi_align_1x1(maps, boxes, 1.0 / stride)
    assert got.shape == (300, 48) and got.dtype == maps.dtype
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert roi_align_1x1(maps, boxes[:0], 1.0 / stride).shape == (0, 48)


def test_roi_align_refuses_bad_shapes():
    from objsearch.roi import roi_align_1x1

    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        roi_align_1x1(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        roi_align_1x1(torch.zeros(2, 4, 4), torch.zeros(1, 5), 1.0)


def test_nms_without_torchvision_keeps_the_same_boxes(detector, monkeypatch):
    """Without torchvision imported, ultralytics' NMS runs its own ``TorchNMS``: on real detector outputs it keeps
    the boxes (and anchor indices, which pick the pooled features) that torchvision's NMS keeps."""
    from ultralytics.utils.nms import non_max_suppression

    from objsearch.media import read_image

    import torchvision  # noqa: F401  (the first run uses it)

    x_all = []
    for path in [BUS, *coco_images(6)]:
        image = read_image(path)
        boxed = detector._letterbox(image, True)
        x = torch.from_numpy(np.ascontiguousarray(boxed[None, ..., ::-1].transpose(0, 3, 1, 2))).float() / 255
        with torch.inference_mode():
            y, _ = detector.backend.forward(x)
        x_all.append(y)
    kept = [non_max_suppression(y, 0.25, 0.7, return_idxs=True) for y in x_all]
    monkeypatch.delitem(sys.modules, "torchvision")
    n = 0
    for y, (boxes, idx) in zip(x_all, kept):
        boxes2, idx2 = non_max_suppression(y, 0.25, 0.7, return_idxs=True)
        assert torch.equal(idx[0], idx2[0]) and torch.equal(boxes[0], boxes2[0])
        n += len(idx[0])
    assert n >= 10


@pytest.mark.slow
def test_a_query_never_imports_torchvision(small_index):
    """A whole query (engine open, detector, features, search) in a fresh process leaves torchvision unimported."""
    index, _ = small_index
    code = ("import sys, json; from objsearch.engine import Engine\n"
            f"with Engine({str(index)!r}, weights={str(WEIGHTS)!r}) as e:\n"
            f"    r = e.search_file({str(BUS)!r}, k=4)\n"
            "print(json.dumps([len(r.detections), 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    n_objects, torchvision_imported, dynamo_imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert n_objects >= 3 and not torchvision_imported and not dynamo_imported
