"""No cold start a user pays for (issue 23 item 3): the warm-up runs the whole detection path (what a GPU loads on
first use: forward, NMS, pooling) once per shape and batch size, the engine also warms its vector store, and the
server and the live pipeline warm before the first request or frame. Timings are not asserted here (tools/ measures
them); these tests hold the behaviour."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from testdata import BUS

from objsearch.media import read_image


@pytest.fixture
def spied(detector, monkeypatch):
    """The session detector with its forward passes, NMS and pooling counted."""
    import ultralytics.utils.nms as nms_module

    import objsearch.detector as detector_module

    calls = {"forward": [], "nms": 0, "pool": 0, "image_feature": 0}
    forward, pool, image_feature = detector.backend.forward, detector_module.pool, detector._image_feature
    nms = nms_module.non_max_suppression

    def count_forward(x):
        calls["forward"].append(tuple(x.shape))
        return forward(x)

    def count_nms(*args, **kwargs):
        calls["nms"] += 1
        return nms(*args, **kwargs)

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(detector.backend, "forward", count_forward)
    monkeypatch.setattr(nms_module, "non_max_suppression", count_nms)
    monkeypatch.setattr(detector_module, "pool", count("pool", pool))  # objsearch.pooling.pool, as the detector calls it
    monkeypatch.setattr(detector, "_image_feature", count("image_feature", image_feature))
    return detector, calls


def test_warmup_runs_the_whole_path_once_per_shape_and_batch(spied):
    detector, calls = spied
    shape = (300, 1000, 3)  # a shape no other test uses: letterboxed to 192 x 640
    assert detector.letterbox_shape(shape) == (192, 640)
    assert detector.warmup(shape, passes=2) > 0
    assert calls["forward"] == [(1, 3, 192, 640)] * 2
    assert (calls["nms"], calls["pool"], calls["image_feature"]) == (1, 1, 1)
    assert detector.warmup(shape) == 0.0 and len(calls["forward"]) == 2  # warm already: nothing runs
    assert detector.warmup(shape, passes=1, batch=4) > 0  # another batch size is another first pass on a GPU
    assert calls["forward"][-1] == (4, 3, 192, 640) and calls["pool"] == 2
    with pytest.raises(ValueError, match="passes and batch"):
        detector.warmup(shape, passes=0)


def test_a_query_after_warmup_gets_what_it_would_cold(detector):
    """Warming changes no answer: an image's detections are the same from a fresh detector and from one warmed at
    its shape and at another shape and batch size (the Detect head caches its anchors per shape)."""
    from objsearch.detector import Detector

    image = read_image(BUS)
    cold = Detector(detector.weights_path, runtime=detector.runtime)(image)
    detector.warmup(image.shape)
    detector.warmup((1000, 300, 3), passes=1, batch=2)
    warm = detector(image)
    assert np.array_equal(cold.class_id, warm.class_id) and np.allclose(cold.features, warm.features, atol=1e-6)


def test_engine_warmup_covers_the_index_shapes_and_the_store(small_index, detector, monkeypatch):
    from objsearch.engine import STANDARD_SHAPES, Engine

    index, _ = small_index
    with Engine(index, detector=detector) as engine:
        c = engine.catalog
        sizes = list(zip(c.media_height.tolist(), c.media_width.tolist()))
        shapes = engine.common_shapes(3)
        counts = [sizes.count(shape[:2]) for shape in shapes]
        assert len(shapes) == 3 and all(shape[2] == 3 for shape in shapes)
        assert counts == sorted(counts, reverse=True) and counts[0] == max(sizes.count(s) for s in sizes)
        warmed, searched = [], []
        monkeypatch.setattr(detector, "warmup", lambda shape, passes=2, batch=1: warmed.append(shape) or 1.0)
        store = engine.store(engine.dims)
        search = store.search
        monkeypatch.setattr(store, "search", lambda *a, **kw: searched.append(a[0].shape) or search(*a, **kw))
        engine.warmup()
        assert warmed == [*engine.common_shapes(), *STANDARD_SHAPES]
        assert searched == [(1, engine.dims)]
        engine.warmup()
        assert searched == [(1, engine.dims)]  # the store is searched once


def test_a_one_off_query_warms_the_store_too(small_index, detector, monkeypatch):
    """``search_file(warmup=True)`` (what ``objsearch query`` runs) warms the detector at the query's shape and
    searches the store once before the timed search; its warm-up time is reported beside the stages."""
    from objsearch.engine import Engine

    index, _ = small_index
    with Engine(index, detector=detector, backend="torch") as engine:
        searched = []
        store = engine.store(engine.dims)
        search = store.search
        monkeypatch.setattr(store, "search", lambda *a, **kw: searched.append(a[0].shape) or search(*a, **kw))
        result = engine.search_file(BUS, k=3, warmup=True)
        assert searched[0] == (1, engine.dims) and len(searched) == 2  # the warm-up's, then the query's
        assert result.timings_ms["warmup"] > 0 and "warmup" not in {k for k in result.timings_ms if k == "total"}
        engine.search_file(BUS, k=3, warmup=True)
        assert len(searched) == 3


def test_the_live_pipeline_warms_before_its_first_frame(small_index, detector):
    from objsearch.engine import Engine
    from objsearch.live import LivePipeline
    from objsearch.sources import FrameSlot

    index, _ = small_index
    with Engine(index, detector=detector) as engine:
        warmed = threading.Event()
        engine.warmup = lambda *a, **kw: warmed.set() or 1.0
        pipeline = LivePipeline(engine, FrameSlot(), lambda result: None)
        pipeline.start()
        try:
            assert warmed.wait(30)
        finally:
            pipeline.stop()


def test_the_server_warms_before_it_serves(small_index, monkeypatch):
    """``objsearch serve`` warms the engine (default shapes and store) before it starts answering."""
    import uvicorn

    from objsearch.engine import Engine
    from objsearch.web.app import serve

    pytest.importorskip("fastapi")
    order = []
    monkeypatch.setattr(Engine, "warmup", lambda self, *a, **kw: order.append(("warmup", a, kw)) or 1.0)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: order.append(("run",)))
    index, _ = small_index
    serve(index, port=0, echo=lambda line: None)
    assert order == [("warmup", (), {}), ("run",)]
