"""Moments: hits of one video, one class, close in time, shown as one neighbour (checked against a brute-force
grouping); the engine's grouped rows still hold k entries; reverse video search ranks the right video and moment
first on the real clips."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from testdata import DATA, WEIGHTS, coco_images, run_cli
from objsearch.moments import group_neighbors, summarize_video_matches
from objsearch.types import Detections, Hits, MediaRef, Neighbor, SearchResult

VIDEOS = DATA / "video"


def nb(object_id, path, t, distance, class_id=0, fps=10.0):
    frame = -1 if t is None else int(round(t * fps))
    media = MediaRef(path=path, media_id=object_id, frame_index=frame, timestamp_s=-1.0 if t is None else t)
    return Neighbor(object_id, media, np.zeros(4, np.float32), class_id, 0.9, distance)


def brute_force_moments(row, window):
    """Oracle: connected components of 'same video, same class, times within window' over all pairs."""
    parent = list(range(len(row)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(row):
        for j, b in enumerate(row):
            if (i < j and a.media.is_video_frame and b.media.is_video_frame and a.media.path == b.media.path
                    and a.class_id == b.class_id and abs(a.media.timestamp_s - b.media.timestamp_s) <= window):
                parent[find(j)] = find(i)
    comps = {}
    for i in range(len(row)):
        comps.setdefault(find(i), []).append(row[i])
    out = []
    for members in comps.values():
        best = min(members, key=lambda n: n.distance)
        times = [m.media.timestamp_s for m in members]
        out.append((best.object_id, min(times), max(times), len({m.media.frame_index for m in members})))
    return sorted(out, key=lambda m: [n.distance for n in row if n.object_id == m[0]][0])


@pytest.mark.parametrize("seed", range(20))
def test_group_neighbors_equals_the_connected_components(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    row = [nb(i, f"v{rng.integers(3)}.mp4", float(rng.integers(0, 300)) / 10, float(d), int(rng.integers(2)))
           if rng.random() < 0.8 else nb(i, f"img{i}.jpg", None, float(d))
           for i, d in enumerate(np.sort(rng.random(n)))]
    window = float(rng.choice([0.0, 0.5, 2.0, 5.0]))
    got = group_neighbors(row, window)
    want = brute_force_moments(row, window)
    assert [g.object_id for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        if g.media.is_video_frame:
            assert (g.moment.start_s, g.moment.end_s, g.moment.frames) == pytest.approx(w[1:])
        else:
            assert g.moment is None
    assert [g.distance for g in got] == sorted(g.distance for g in got)


def test_a_moment_bridged_late_joins_two_earlier_ones():
    row = [nb(1, "a.mp4", 0.0, 0.1), nb(2, "a.mp4", 4.0, 0.2), nb(3, "a.mp4", 2.0, 0.3), nb(4, "a.mp4", 2.0, 0.4, 1)]
    got = group_neighbors(row, 2.0)
    assert [(g.object_id, g.moment.start_s, g.moment.end_s, g.moment.frames) for g in got] == [
        (1, 0.0, 4.0, 3), (4, 2.0, 2.0, 1)]
    with pytest.raises(ValueError, match="window_s"):
        group_neighbors(row, -1)


def result_of(rows, t_query=0.0):
    n = len(rows)
    dets = Detections(np.zeros((n, 4)), np.ones(n), np.zeros(n, np.int64))
    return SearchResult(MediaRef("q.mp4", frame_index=0, timestamp_s=t_query), dets, Hits.empty(n, 1), rows,
                        ["person", "car"])


def test_summary_votes_once_per_query_object_and_video_by_reciprocal_rank():
    rows = [[nb(1, "a.mp4", 5.0, 0.1), nb(2, "a.mp4", 6.0, 0.2), nb(3, "b.mp4", 1.0, 0.3)],
            [nb(4, "b.mp4", 1.5, 0.15), nb(5, "a.mp4", 20.0, 0.4)]]
    matches = summarize_video_matches([result_of(rows, 1.0)], 2.0)
    assert [m.path for m in matches] == ["a.mp4", "b.mp4"]
    a, b = matches
    assert a.score == pytest.approx(1 + 1 / 2) and a.n_query_objects == 2 and a.best_distance == pytest.approx(0.1)
    assert [(m.start_s, m.end_s, m.n_query_objects) for m in a.moments] == [(5.0, 5.0, 1), (20.0, 20.0, 1)]
    assert b.score == pytest.approx(1 / 3 + 1) and b.moments[0].start_s == 1.0 and b.moments[0].end_s == 1.5
    assert json.loads(json.dumps(matches[0].to_dict()))["moments"][0]["best_object_id"] == 1


# ----------------------------------------------------------------------------------------- on the real clips
@pytest.fixture(scope="module")
def clips_index(tmp_path_factory):
    """walking.mp4 (13.6 s) and car-detection.mp4 (30 s) at 1 fps, and 16 coco128 images, at 320 px."""
    folder = tmp_path_factory.mktemp("clips") / "media"
    folder.mkdir()
    for name in ("walking.mp4", "car-detection.mp4"):
        shutil.copy(VIDEOS / name, folder / name)
    for p in coco_images(16):
        shutil.copy(p, folder / p.name)
    out = folder.parent / "clips.h5"
    done = run_cli("analyze", folder, "-o", out, "--weights", WEIGHTS, "--imgsz", "320", "--dims", "32")
    assert done.returncode == 0, done.stderr
    return out


def cut(src, dst, start_s, seconds):
    """A piece of a video, written with OpenCV (mp4v), as a user's query clip would be."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(start_s * fps))
    writer = None
    for _ in range(int(seconds * fps)):
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
    writer.release()
    cap.release()
    return dst


@pytest.mark.parametrize("clip,start_s", [("walking.mp4", 5.0), ("car-detection.mp4", 15.5)])
def test_reverse_video_search_ranks_the_right_video_and_moment_first(clips_index, tmp_path, clip, start_s):
    query = cut(VIDEOS / clip, tmp_path / "query.mp4", start_s, 3.0)
    stride = str(round(cv2.VideoCapture(str(query)).get(cv2.CAP_PROP_FPS) / 2))  # 2 query frames a second
    done = run_cli("video", query, "-i", clips_index, "--summary", "--json", "--stride", stride, "-k", "8")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["n_frames"] >= 6 and summary["n_objects"] > 0
    videos = summary["videos"]
    assert videos[0]["path"] == clip, [(v["path"], v["score"]) for v in videos]
    top = videos[0]["moments"][0]
    assert top["start_s"] <= start_s + 3.0 + 1.0 and top["end_s"] >= start_s - 1.0, top
    assert top["end_s"] - top["start_s"] <= 3.0 + 2.0, top  # a moment as long as the query, not the whole clip
    text = run_cli("video", query, "-i", clips_index, "--summary", "--stride", stride, "-k", "8")
    assert text.returncode == 0 and text.stdout.splitlines()[1].startswith(f"  1. {clip}: score"), text.stdout


def test_query_json_and_text_carry_frame_time_and_moment(clips_index):
    person = DATA / "coco128" / "images" / "train2017" / "000000000036.jpg"
    grouped = run_cli("query", person, "-i", clips_index, "-k", "6", "--json")
    assert grouped.returncode == 0, grouped.stderr
    rows = [o["neighbors"] for o in json.loads(grouped.stdout)["objects"]]
    frames = [n for row in rows for n in row if "frame_index" in n]
    assert frames and all("timestamp_s" in n and "moment" in n for n in frames)
    assert all(n["moment"]["start_s"] <= n["timestamp_s"] <= n["moment"]["end_s"] for n in frames)
    assert all(len(row) == 6 for row in rows)
    for row in rows:  # no two neighbours of a row are one moment
        spans = [(n["path"], n["class_id"], n["moment"]["start_s"], n["moment"]["end_s"]) for n in row if "moment" in n]
        for i, a in enumerate(spans):
            for b in spans[i + 1:]:
                assert a[:2] != b[:2] or a[3] + 2.0 < b[2] or b[3] + 2.0 < a[2]
    flat = run_cli("query", person, "-i", clips_index, "-k", "6", "--json", "--no-group")
    assert all("moment" not in n for o in json.loads(flat.stdout)["objects"] for n in o["neighbors"])
    text = run_cli("query", person, "-i", clips_index, "-k", "6")
    assert " @ 00:00:" in text.stdout, text.stdout
    info = run_cli("info", clips_index)
    assert "images     61, 45 of them frames of 2 videos" in info.stdout, info.stdout


def test_engine_grouping_equals_grouping_the_whole_ranking(clips_index):
    """Oracle: the grouped row is the first k moments of the complete, ungrouped ranking (each shown moment lies
    within the complete ranking's: its extent counts the frames among the hits the engine fetched)."""
    from objsearch.engine import Engine
    from objsearch.media import read_image

    image = read_image(DATA / "coco128" / "images" / "train2017" / "000000000036.jpg")
    with Engine(clips_index, weights=str(WEIGHTS)) as engine:
        n = len(engine.catalog.object_id)
        grouped = engine.search(image, k=10, group_s=2.0)
        everything = engine.search(image, k=n, group_s=None)
        for q in range(len(grouped.detections)):
            want = group_neighbors(everything.neighbors[q], 2.0)[:10]
            assert [g.object_id for g in grouped.neighbors[q]] == [w.object_id for w in want]
            for g, w in zip(grouped.neighbors[q], want):
                assert (g.moment is None) == (w.moment is None)
                if g.moment is not None:
                    assert w.moment.start_s <= g.moment.start_s <= g.moment.end_s <= w.moment.end_s
                    assert 1 <= g.moment.frames <= w.moment.frames
            np.testing.assert_array_equal(grouped.hits.ids[q, :len(want)], [w.object_id for w in want])
        assert grouped.hits.ids.shape == (len(grouped.detections), 10)


def test_web_api_searches_an_indexed_frame_and_serves_its_picture(clips_index):
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient

    from objsearch.engine import Engine
    from objsearch.web import WebSettings, create_app

    with Engine(clips_index, weights=str(WEIGHTS)) as engine:
        c = engine.catalog
        frame_id = int(c.media_id[list(c.media_path).index("walking.mp4") + 5])
        client = TestClient(create_app(engine, WebSettings()), raise_server_exceptions=False)
        found = client.post(f"/api/search?media_id={frame_id}&k=5")
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["frame"] == int(engine.media(frame_id).frame_index) and body["timestamp_s"] == 5.0
        nbs = [n for o in body["objects"] for n in o["neighbors"]]
        assert any(n.get("moment") for n in nbs) and all(n["image_id"] != frame_id for n in nbs)
        flat = client.post(f"/api/search?media_id={frame_id}&k=5&group=false").json()
        assert not any("moment" in n for o in flat["objects"] for n in o["neighbors"])
        picture = client.get(f"/api/media/{frame_id}")
        assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"
