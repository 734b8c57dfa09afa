"""Analysis on Ray Data (``objsearch.distributed``) against the local engine on real coco128 images: the same
index (media and object ids, boxes within 0.5 px, features within 1e-4, skipped files), and a killed run resumed
from its finished shards. One local Ray (2 CPUs) for the module: ``ray.init`` takes seconds."""

from __future__ import annotations

import numpy as np
import pytest

from testdata import coco_images, copy_images

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'objsearch[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install 'objsearch[ray]')")

from objsearch import distributed  # noqa: E402
from objsearch.analysis import analyze  # noqa: E402
from objsearch.analysis.runner import job_settings, relative_path  # noqa: E402
from objsearch.catalog import Catalog  # noqa: E402
from objsearch.media import list_media  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8 coco128 images and a corrupt one."""
    folder = copy_images(coco_images(8), tmp_path_factory.mktemp("ray") / "images")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 4)
    return folder


@pytest.fixture(scope="module")
def local_index(folder, cfg, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.h5"
    analyze(folder, out, cfg, detector=detector)
    return out


def assert_same_index(got, want):
    with Catalog(got) as a, Catalog(want) as b:
        assert a.state == b.state == "ready"
        assert a.media_path == b.media_path
        np.testing.assert_array_equal(a.media_id, b.media_id)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        np.testing.assert_array_equal(a.object_media_id, b.object_media_id)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.5)
        np.testing.assert_allclose(a.features(a.object_id), b.features(b.object_id), atol=1e-4)
        for d in b.dims:
            np.testing.assert_allclose(a.vectors(d), b.vectors(d), atol=1e-4)
        assert [(s.path, s.reason) for s in a.skipped] == [(s.path, s.reason) for s in b.skipped]
        assert len(a.object_id) > 10 and a.skipped


def test_ray_engine_makes_the_local_engines_index(ray_cluster, folder, local_index, cfg, detector, tmp_path):
    out = tmp_path / "ray.h5"
    summary = distributed.analyze(folder, out, cfg, detector=detector)
    assert summary.n_images == 8 and summary.n_resumed == 0
    assert not distributed.shard_dir(out).exists()  # merged, then removed
    assert_same_index(out, local_index)


def test_a_killed_ray_run_keeps_its_finished_shards(ray_cluster, folder, local_index, cfg, detector, tmp_path):
    """As if killed after the first 3 images were written as shards (and a shard was torn mid-write): the re-run
    analyzes only the other 6 and the index is the local engine's."""
    out = tmp_path / "ray.h5"
    images = list_media(folder).images
    rels = [relative_path(p, folder) for p in images]
    shards = distributed.shard_dir(out)
    settings = job_settings(detector, cfg)
    distributed._run_pipeline(images, rels, [0, 1, 2], shards, settings, cfg, str(detector.weights_path), None, None)
    assert sum(len(np.load(p)["index"]) for p in shards.glob("shard-*.npz")) == 3
    (shards / "shard-000000003-000000004-deadbeef.tmp").write_bytes(b"torn")
    summary = distributed.analyze(folder, out, cfg, detector=detector)
    assert summary.n_resumed == 3 and summary.n_images == 8
    assert_same_index(out, local_index)
    # shards of other settings are refused, not mixed in
    distributed.write_shard(distributed.shard_dir(tmp_path / "other.h5"), [0], [b"x"], {**settings, "conf": 0.9})
    with pytest.raises(distributed.IndexFileError, match="made with other settings"):
        distributed.analyze(folder, tmp_path / "other.h5", cfg, detector=detector)
