"""Near-duplicates (objsearch.duplicates, ``objsearch duplicates``): groups against a brute-force oracle on seeded
vectors, by the exact range search and through every in-memory store's kNN; on real images, a resized, re-encoded and
cropped copy joins its original's group and nothing else does; the command's JSON, pictures and errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from testdata import coco_images, run_cli


class FakeCatalog:
    """The parts of a Catalog that find_duplicates reads, over seeded arrays."""

    def __init__(self, vectors, class_id, media_of, confidence=None):
        n = len(vectors)
        self.object_id = np.arange(10, 10 + n, dtype=np.int64)
        self.class_id = np.asarray(class_id, np.int64)
        self.object_media_id = np.asarray(media_of, np.int64)
        self.confidence = np.asarray(confidence if confidence is not None else np.linspace(0.5, 0.9, n), np.float32)
        self._vectors = np.asarray(vectors, np.float32)
        self.media_id = np.unique(self.object_media_id)
        self.media_width = np.full(len(self.media_id), 640)
        self.media_height = np.full(len(self.media_id), 480)
        self.dims = [8]
        self.image_dims = [8]

    def vectors(self, dims):
        return self._vectors

    def require_image_vectors(self):
        pass

    def image_features(self, media_ids):  # one vector per media item: its first object's
        return self._vectors[np.searchsorted(self.object_media_id, np.asarray(media_ids))]


def oracle(vectors, class_id, media_of, threshold):
    """Connected components of the brute-force graph (same class, other image, distance <= threshold), as sets of
    rows, singletons left out."""
    n = len(vectors)
    d = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    edge = (d <= threshold) & (class_id[:, None] == class_id[None]) & (media_of[:, None] != media_of[None])
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(edge)):
        parent[root(i)] = root(j)
    groups = {}
    for i in range(n):
        groups.setdefault(root(i), set()).add(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: min(g))


def seeded(n_groups=40, seed=0):
    """Tight clusters (near-duplicates, several classes, sometimes two in one image) among scattered points."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, 8)) * 3
    sizes = rng.integers(1, 6, n_groups)
    vectors = np.concatenate([c + rng.standard_normal((s, 8)) * 0.03 for c, s in zip(centres, sizes)]
                             + [rng.standard_normal((60, 8)) * 3])
    class_id = np.concatenate([np.full(s, i % 3) for i, s in enumerate(sizes)] + [rng.integers(0, 3, 60)])
    class_id[::7] = (class_id[::7] + 1) % 3  # some members of a cluster are of another class
    media_of = np.sort(rng.integers(0, len(vectors) - 20, len(vectors)))
    return vectors.astype(np.float32), class_id, media_of


@pytest.mark.parametrize("backend", ["exact", "auto", "ivf", "kdtree", "faiss", "numpy", "hnsw"])
def test_object_groups_equal_the_brute_force_oracle(backend, monkeypatch):
    from objsearch import duplicates
    from objsearch.duplicates import find_duplicates

    if backend == "ivf":  # the inverted file, on classes this small
        monkeypatch.setattr(duplicates, "IVF_MIN", 10)
    vectors, class_id, media_of = seeded()
    catalog = FakeCatalog(vectors, class_id, media_of)
    for threshold in (0.05, 0.15, 1.5):
        report = find_duplicates(catalog, kind="objects", threshold=threshold, dims=8,
                                 backend={"exact": "auto", "ivf": "auto"}.get(backend, backend), k=64,
                                 exact_max=10_000 if backend == "exact" else 0)
        want = oracle(vectors, class_id, media_of, threshold)
        got = sorted((set((g.ids - 10).tolist()) for g in report.groups), key=lambda g: min(g))
        assert got == want, (backend, threshold)
        assert report.method.startswith({"exact": "exact", "auto": "faiss range", "ivf": "faiss range"}.get(
            backend, f"{backend} k=64"))
        for g in report.groups:  # the representative is the most confident; distances ascend from it
            rows = g.ids - 10
            assert catalog.confidence[rows[0]] == catalog.confidence[rows].max()
            assert g.distances[0] == 0 and np.all(np.diff(g.distances) >= 0)
            np.testing.assert_allclose(g.distances, np.linalg.norm(vectors[rows] - vectors[rows[0]], axis=1),
                                       rtol=1e-5, atol=1e-6)


def test_image_groups_and_bad_arguments():
    from objsearch.duplicates import find_duplicates

    vectors, class_id, media_of = seeded(seed=1)
    catalog = FakeCatalog(vectors, class_id, np.arange(len(vectors)))  # one object per image
    report = find_duplicates(catalog, kind="images", threshold=0.15, dims=8)
    want = oracle(vectors, np.zeros(len(vectors)), np.arange(len(vectors)), 0.15)
    assert sorted((set(g.ids.tolist()) for g in report.groups), key=min) == want
    assert report.n_duplicates == sum(len(g) - 1 for g in want)
    with pytest.raises(ValueError, match="kind"):
        find_duplicates(catalog, kind="faces")
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(catalog, threshold=float("nan"))
    with pytest.raises(ValueError, match="k must"):
        find_duplicates(catalog, k=0, exact_max=0)


@pytest.fixture(scope="module")
def made(tmp_path_factory, cfg, detector):
    """Six coco128 images and, of the first two, a resized (0.5x), a re-encoded (JPEG 40) and a cropped (5% off each
    side) copy; returns (folder, index, {copy name: source name})."""
    from objsearch.analysis import analyze

    folder = tmp_path_factory.mktemp("dups") / "photos"
    folder.mkdir()
    truth = {}
    for i, p in enumerate(coco_images(6)):
        shutil.copy(p, folder / p.name)
        if i >= 2:
            continue
        image = cv2.imread(str(p))
        h, w = image.shape[:2]
        copies = {"resized": cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                  "cropped": image[round(0.05 * h):h - round(0.05 * h), round(0.05 * w):w - round(0.05 * w)]}
        for kind, copy in copies.items():
            cv2.imwrite(str(folder / f"{p.stem}-{kind}.jpg"), copy, [cv2.IMWRITE_JPEG_QUALITY, 95])
            truth[f"{p.stem}-{kind}.jpg"] = p.name
        cv2.imwrite(str(folder / f"{p.stem}-reencoded.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 40])
        truth[f"{p.stem}-reencoded.jpg"] = p.name
    index = folder.parent / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    return folder, index, truth


def test_copies_join_their_original_at_the_default_threshold(made):
    from objsearch.catalog import Catalog
    from objsearch.duplicates import find_duplicates

    folder, index, truth = made
    with Catalog(index) as catalog:
        report = find_duplicates(catalog, kind="images")
        groups = [{catalog.media(int(i)).path for i in g.ids} for g in report.groups]
        want = [{src} | {c for c, s in truth.items() if s == src} for src in sorted(set(truth.values()))]
        assert sorted(groups, key=min) == want
        # the representative of each group is its largest picture: the original or the re-encoded copy
        for g in report.groups:
            rep = catalog.media(g.representative)
            assert rep.width * rep.height == max(catalog.media(int(i)).width * catalog.media(int(i)).height
                                                 for i in g.ids)
        objects = find_duplicates(catalog, kind="objects")
        for g in objects.groups:  # an object's duplicates come from copies of its own image
            sources = {truth.get(catalog.media(int(m)).path, catalog.media(int(m)).path)
                       for m in catalog.object_media_id[catalog.object_rows(g.ids)]}
            assert len(sources) == 1, sources
        assert objects.groups  # the same object in an original and its copies is found


def test_duplicates_command_json_pictures_and_errors(made, tmp_path):
    folder, index, truth = made
    proc = run_cli("duplicates", "-i", index, "--json", "--out", tmp_path / "groups", timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["kind"] == "images" and data["n_groups"] == 2 and data["n_duplicates"] == 6
    members = {m["path"] for g in data["groups"] for m in [g["representative"], *g["members"]]}
    assert members == set(truth) | set(truth.values())
    assert all(g["members"][0]["distance"] > 0 for g in data["groups"])
    assert sorted(p.name for p in (tmp_path / "groups").iterdir()) == ["group-0001.jpg", "group-0002.jpg"]
    picture = cv2.imread(str(tmp_path / "groups" / "group-0001.jpg"))
    assert picture is not None and picture.shape[1] >= 4 * 128
    proc = run_cli("duplicates", "-i", index, "--objects", timeout=120)
    assert proc.returncode == 0 and "near-duplicate objects" in proc.stdout.splitlines()[0]
    proc = run_cli("duplicates", "-i", index, "--objects", "--images", timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: pass --objects or --images, not both"
    proc = run_cli("duplicates", "-i", tmp_path / "missing.h5", timeout=120)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1
