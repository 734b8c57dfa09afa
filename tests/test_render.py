"""Pictures in the field's shape (issue #10, item 7): box labels never overlap nor leave the picture, the query fills
the header, a neighbour's distance stays readable; and video insets (item 8) stay off the other objects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import BUS, DATA
from objsearch.engine import Engine
from objsearch.media import read_image
from objsearch.render import MIN_TEXT_SCALE, fit_text, label_rects, render_result

ZIDANE = DATA / "samples" / "zidane.jpg"
WALKING = DATA / "video" / "walking.mp4"


@pytest.fixture(scope="module")
def engine(small_index, detector):
    with Engine(small_index[0], detector=detector) as e:
        yield e


def walking_frame(n: int = 60) -> np.ndarray:
    cap = cv2.VideoCapture(str(WALKING))
    cap.set(cv2.CAP_PROP_POS_FRAMES, n)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


@pytest.fixture(scope="module")
def results(engine):
    out = {}
    for name, image in (("bus", read_image(BUS)), ("zidane", read_image(ZIDANE)), ("walking", walking_frame())):
        out[name] = (image, engine.search(image, k=8, conf=0.1 if name == "walking" else None))
    return out


def overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("name", ["bus", "zidane", "walking"])
@pytest.mark.parametrize("height", [None, 360, 480])
def test_box_labels_do_not_overlap_and_stay_inside(results, name, height):
    image, result = results[name]
    h, w = image.shape[:2]
    scale = 1.0 if height is None else height / h
    rects = label_rects(result, round(w * scale), round(h * scale), scale)
    assert len(rects) == len(result.detections) > 0
    placed = [r for r in rects if r is not None]
    assert len(placed) >= 0.9 * len(rects), (len(placed), len(rects))  # a legend-free picture holds nearly all
    for i, r in enumerate(placed):
        assert r[0] >= 0 and r[1] >= 0 and r[0] + r[2] <= round(w * scale) and r[1] + r[3] <= round(h * scale), r
        for other in placed[i + 1:]:
            assert not overlaps(r, other), (r, other)


def test_the_walking_frame_is_crowded(results):
    assert len(results["walking"][1].detections) >= 25


def test_query_fills_the_header(results, engine):
    image, result = results["bus"]
    thumbs = {i: engine.thumbnail(i) for i in result.object_ids()}
    picture = render_result(image, result, thumbs, header_height=480, thumb_height=96)
    header = picture[:480]
    used = np.flatnonzero((np.abs(header.astype(int) - 24).sum(axis=2) > 0).any(axis=0))
    assert used.size and (used[-1] - used[0] + 1) >= 0.75 * picture.shape[1], (used[-1] - used[0], picture.shape)
    # a wide query at this height stays as wide as the picture
    image, result = results["zidane"]
    picture = render_result(image, result, {i: engine.thumbnail(i) for i in result.object_ids()}, header_height=480)
    assert picture.shape[1] >= round(image.shape[1] * 480 / image.shape[0])


@pytest.mark.parametrize("label", ["person", "motorcycle", "baseball glove", "potted plant"])
@pytest.mark.parametrize("size", [48, 64, 96])
def test_neighbour_distance_stays_readable(label, size):
    text, scale = fit_text(f"{label} d=0.52", size - 4)
    assert text.endswith(" d=0.52") and scale >= MIN_TEXT_SCALE
    assert cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= size - 4
