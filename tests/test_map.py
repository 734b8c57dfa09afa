"""A map of the index (objsearch.layout_map and the web routes of objsearch.web.map_routes): the layout keeps
clusters apart, placing follows a brute-force oracle, the sidecar is data (refused when foreign or damaged), and the
API computes the map in the background, serves every live item, and follows the index as it changes."""

from __future__ import annotations

import io
import json
import shutil
import struct
import time

import numpy as np
import pytest

from testdata import coco_images, copy_images


def clusters(n_per: int, seed: int = 0, d: int = 16, k: int = 4):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 10
    label = np.repeat(np.arange(k), n_per)
    return (centres[label] + rng.standard_normal((k * n_per, d)).astype(np.float32)), label


def neighbour_agreement(xy: np.ndarray, label: np.ndarray, k: int = 5) -> float:
    from scipy.spatial import cKDTree

    _, nn = cKDTree(xy).query(xy, k + 1)
    return float((label[nn[:, 1:]] == label[:, None]).mean())


@pytest.mark.parametrize("max_landmarks", [10_000, 120])
def test_layout_keeps_clusters_apart(max_landmarks):
    from objsearch.layout_map import compute_layout

    x, label = clusters(100)
    seen = []
    xy, n_landmarks = compute_layout(x, seed=0, max_landmarks=max_landmarks, progress=lambda f, p: seen.append(f))
    assert xy.shape == (400, 2) and xy.dtype == np.float32 and np.all(np.isfinite(xy))
    assert n_landmarks == min(400, max_landmarks)
    assert neighbour_agreement(xy, label) > 0.95
    assert seen[-1] == 1.0 and seen == sorted(seen)
    again, _ = compute_layout(x, seed=0, max_landmarks=max_landmarks)
    np.testing.assert_allclose(again, xy, atol=1e-4)  # seeded


def test_place_is_the_mean_of_the_k_nearest():
    from objsearch.layout_map import place

    rng = np.random.default_rng(1)
    ref, ref_xy, q = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((300, 2)).astype(
        np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    got = place(ref, ref_xy, q, k=7)
    d = ((q[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
    want = ref_xy[np.argsort(d, axis=1)[:, :7]].mean(1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_follow_drops_removed_and_places_new():
    from objsearch.layout_map import IndexMap, follow

    x, _ = clusters(30, d=8)
    ids = np.arange(100, 220, dtype=np.int64)
    m = IndexMap("objects", 32, "u", ids, np.asarray(x[:, :2] * 3, np.float32), np.ones(120, bool), 120, 0, 1.0)
    live = np.concatenate([ids[10:], [500, 501]]).astype(np.int64)
    vectors = {int(i): x[j] for j, i in enumerate(ids)} | {500: x[0], 501: x[119]}
    out, placed, dropped = follow(m, live, lambda i: np.stack([vectors[int(v)] for v in i]))
    assert (placed, dropped) == (2, 10)
    assert out.ids.tolist() == live.tolist() and out.laid_out.sum() == 110
    # a new item whose vector equals a dropped one lands among that one's neighbours, not elsewhere
    assert np.linalg.norm(out.xy[-2] - m.xy[0]) < np.linalg.norm(out.xy[-2] - m.xy[119])
    assert out.placed_fraction == pytest.approx(2 / 112)


def test_sidecar_round_trip_and_refusals(tmp_path):
    from objsearch.layout_map import IndexMap, load_map, save_map

    path = tmp_path / "i.h5.map-objects-d32.npz"
    m = IndexMap("objects", 32, "abc", np.array([1, 5, 9], np.int64), np.zeros((3, 2), np.float32),
                 np.array([True, True, False]), 3, 0, 2.5)
    save_map(path, m)
    got = load_map(path, index_uuid="abc", kind="objects", dims=32)
    assert got.ids.tolist() == [1, 5, 9] and got.laid_out.tolist() == [True, True, False] and got.layout_s == 2.5
    assert load_map(path, index_uuid="other", kind="objects", dims=32) is None  # another index's map
    assert load_map(path, index_uuid="abc", kind="objects", dims=16) is None
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    with np.load(path) as z:
        parts = dict(z)
    bad = dict(parts, xy=np.full((3, 2), np.nan, np.float32))
    np.savez(path, **bad)
    assert load_map(path, index_uuid="abc", kind="objects", dims=32) is None
    buf = io.BytesIO()
    np.savez(buf, **dict(parts, ids=np.array([object()], dtype=object)))  # a pickle is never loaded
    path.write_bytes(buf.getvalue())
    assert load_map(path, index_uuid="abc", kind="objects", dims=32) is None
    path.write_bytes(b"not a zip")
    assert load_map(path, index_uuid="abc", kind="objects", dims=32) is None


# ------------------------------------------------------------------------------------------------- the API
pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'objsearch[web]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")


@pytest.fixture
def grown(tmp_path, cfg, detector):
    from objsearch.analysis import analyze

    folder = copy_images(coco_images(10), tmp_path / "photos")
    index = tmp_path / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    return folder, index


def wait_ready(client, kind: str, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get(f"/api/map?kind={kind}&points=false").json()
        if status["state"] == "ready" and not status["computing"]:
            return status
        assert status["state"] in ("missing", "computing", "ready"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_map_api_computes_in_the_background_and_follows_the_index(grown, detector):
    from fastapi.testclient import TestClient

    from objsearch.analysis import add
    from objsearch.engine import Engine
    from objsearch.web import create_app

    folder, index = grown
    with Engine(index, detector=detector) as engine:
        app = create_app(engine)
        client = TestClient(app, raise_server_exceptions=False)
        first = client.get("/api/map?kind=objects").json()
        assert first["state"] in ("missing", "computing") and "points" not in first
        assert client.get("/api/map/points?kind=objects").status_code == 409
        status = wait_ready(client, "objects")
        data = client.get("/api/map?kind=objects").json()
        c = engine.catalog
        assert data["points"]["id"] == c.object_id.tolist()
        assert data["points"]["class_id"] == c.class_id.tolist()
        assert data["points"]["media_id"] == c.object_media_id.tolist()
        # the binary form holds the same points
        body = client.get("/api/map/points?kind=objects").content
        n = struct.unpack_from("<I", body)[0]
        ids = np.frombuffer(body, "<f8", n, 8)
        xy = np.frombuffer(body, "<f4", 2 * n, 8 + 16 * n).reshape(n, 2)
        cls = np.frombuffer(body, "<i2", n, 8 + 24 * n)
        assert ids.astype(np.int64).tolist() == data["points"]["id"] and cls.tolist() == data["points"]["class_id"]
        np.testing.assert_allclose(xy[:, 0], data["points"]["x"], atol=1e-3)
        assert (index.parent / f"{index.name}.map-objects-d32.npz").is_file()  # kept with the index
        item = client.get(f"/api/map/item/{ids[0]:.0f}?kind=objects").json()
        assert item["media_id"] == data["points"]["media_id"][0] and len(item["box"]) == 4
        assert client.get("/api/map/item/999999?kind=objects").status_code == 404
        assert client.get("/api/map?kind=faces").status_code == 400

        # another writer adds images: the map places them without a new layout, and says so by its version
        for p in coco_images(14)[10:]:
            shutil.copy(p, folder / p.name)
        add(index, [folder], detector=detector)
        time.sleep(1.1)  # the app looks for other writers' commits at most every second
        status2 = client.get("/api/status").json()
        assert status2["images"] == 14 and status2["generation"] > 0
        after = client.get("/api/map?kind=objects").json()
        assert after["points"]["id"] == engine.catalog.object_id.tolist()
        assert after["version"] > status["version"] and after["n_points"] > data["n_points"]
        assert 0 < after["placed_fraction"] <= 0.5

        images = wait_ready(client, "images")
        assert images["n_points"] == 14
        app.state.maps["objects"].close()
        app.state.maps["images"].close()


def test_status_reports_the_watcher(grown, detector):
    from fastapi.testclient import TestClient

    from objsearch.engine import Engine
    from objsearch.watch import WatchStats
    from objsearch.web import create_app

    folder, index = grown
    stats = WatchStats(folders=[str(folder)], n_added=3)
    with Engine(index, detector=detector) as engine:
        client = TestClient(create_app(engine, watch_stats=stats), raise_server_exceptions=False)
        data = client.get("/api/status").json()
        assert data["watch"]["folders"] == [str(folder)] and data["watch"]["n_added"] == 3
        assert data["images"] == 10 and set(data["maps"]) == {"objects", "images"}
        assert json.dumps(data)
