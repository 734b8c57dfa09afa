"""Several roots per index (issue 19 item 15) and who chooses them (issue 18 item 2): ``add`` of a folder elsewhere
makes it a root, paths are stored relative to their root, ``--base-dir`` moves a root, reads stay under the roots
the user chose (recorded with this user's key, named now, or trusted), old indexes open unchanged. Real images and
the real detector; the per-user key lives in a temporary ``OBJSEARCH_CONFIG_DIR`` per test (a fresh "machine")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from testdata import BUS, ROOT, WEIGHTS, coco_images, copy_images
from objsearch.analysis import analyze
from objsearch.catalog import Catalog
from objsearch.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """This test's own per-user configuration folder (so its key is its own)."""
    home = tmp_path / "config"
    monkeypatch.setenv("OBJSEARCH_CONFIG_DIR", str(home))
    return home


@pytest.fixture
def photos(tmp_path, cfg, detector, machine):
    """(index, photos, extra, single): an index of 3 coco128 images in ``photos``; 2 more wait in ``extra`` and one
    in ``single``."""
    photos = copy_images(coco_images(3), tmp_path / "photos")
    extra = copy_images(coco_images(5)[3:], tmp_path / "elsewhere" / "extra")
    single = copy_images(coco_images(6)[5:], tmp_path / "single")
    index = tmp_path / "photos.h5"
    analyze(photos, index, cfg, detector=detector)
    return index, photos, extra, single


def test_add_of_folders_elsewhere_makes_roots_and_each_path_is_relative_to_its_root(photos, detector):
    """Issue 19: `add ~/photos/2026 -i photos.h5` of a folder beside the analyzed one was refused; now each folder
    (or a file's folder) under none of the roots becomes one, named by the path alone."""
    from objsearch.engine import Engine

    index, folder, extra, single = photos
    one = sorted(single.iterdir())[0]
    result = invoke("add", extra, one, "-i", index, "-w", WEIGHTS)
    assert result.exit_code == 0, result.output
    assert "added 3 images" in result.stdout
    with Catalog(index) as c:
        assert c.roots == [str(folder), str(extra), str(single)]
        got = {(int(r), p) for r, p in zip(c.media_root, c.media_path)}
    assert got == ({(0, p.name) for p in folder.iterdir()} | {(1, p.name) for p in extra.iterdir()}
                   | {(2, one.name)})
    with Engine(index, detector=detector) as engine:
        for mid, r, rel in zip(engine.catalog.media_id, engine.catalog.media_root, engine.catalog.media_path):
            assert engine.media_path(int(mid)) == [folder, extra, single][r] / rel
            assert engine.read_media(int(mid)).shape[2] == 3
        query = sorted(extra.iterdir())[0]
        assert engine.media_id_of(query) == int(engine.catalog.media_id[engine.catalog.media_path.index(query.name)])
        hits = engine.search_file(query, k=3, exclude_self=False).to_dict()
    assert any(nb.get("root") == 1 and nb["path"] == query.name for o in hits["objects"] for nb in o["neighbors"])
    again = invoke("add", extra, folder, "-i", index, "-w", WEIGHTS)  # nothing new, no new root
    assert again.exit_code == 0 and "added 0 images" in again.stdout and "5 already indexed" in again.stdout
    synced = invoke("sync", "-i", index, "-w", WEIGHTS)  # every root
    assert synced.exit_code == 0 and "6 unchanged" in synced.stdout, synced.output
    removed = invoke("remove", extra, "-i", index)
    assert removed.exit_code == 0 and "removed 2 images" in removed.stdout
    info = invoke("info", index)
    assert f"root 1: {extra}, yours" in info.stdout and f"root 2: {single}, yours" in info.stdout


def test_a_folder_holding_a_root_is_a_new_root_and_a_sub_folder_is_not(photos):
    """A new root may hold an older one (its files stay under the deeper root); a folder under a root is no root."""
    index, folder, extra, _ = photos
    copy_images(coco_images(7)[6:], folder / "sub")
    assert invoke("add", folder / "sub", "-i", index, "-w", WEIGHTS).exit_code == 0
    parent = extra.parent
    copy_images(coco_images(8)[7:], parent)
    result = invoke("add", parent, "-i", index, "-w", WEIGHTS)  # holds extra/ (not a root yet) and one image
    assert result.exit_code == 0, result.output
    assert invoke("add", extra, "-i", index, "-w", WEIGHTS).stdout.count("already indexed")
    with Catalog(index) as c:
        assert c.roots == [str(folder), str(parent)]
        assert {p for r, p in zip(c.media_root, c.media_path) if r == 0} >= {f"sub/{coco_images(7)[6].name}"}
        assert {p for r, p in zip(c.media_root, c.media_path) if r == 1} == {
            coco_images(8)[7].name, *(f"extra/{p.name}" for p in extra.iterdir())}


def test_base_dir_moves_a_root(photos, tmp_path):
    """Roots moved on disk: `--base-dir NEW` moves the first, `--base-dir OLD=NEW` or `N=NEW` another."""
    index, folder, extra, _ = photos
    assert invoke("add", extra, "-i", index, "-w", WEIGHTS).exit_code == 0
    moved0, moved1 = tmp_path / "moved0", tmp_path / "moved1"
    shutil.move(folder, moved0)
    shutil.move(extra, moved1)
    query = moved1 / sorted(os.listdir(moved1))[0]
    for base_dirs in (["--base-dir", moved0, "--base-dir", f"{extra}={moved1}"],
                      ["--base-dir", f"1={moved1}", "--base-dir", moved0]):
        out = tmp_path / "row.jpg"
        result = invoke("query", "--mode", "image", query, "-i", index, "-k", 4, "--json", "--out", out,
                        *base_dirs)
        assert result.exit_code == 0, result.output
        assert "WARNING" not in result.output  # every picture was found under the moved roots
        assert json.loads(result.stdout.splitlines()[0])["neighbors"]
    line = invoke("query", query, "-i", index, "--base-dir", moved0, "--base-dir", moved1, "--base-dir", tmp_path)
    assert line.exit_code != 0 and "3 folders for 2 roots" in line.stderr
    line = invoke("query", query, "-i", index, "--base-dir", f"1={tmp_path / 'nope'}")
    assert line.exit_code != 0 and "is not a folder" in line.stderr


def _strip_roots(index):
    """The attributes an index had before several roots: no roots, no root_macs (its digest made again, as the
    writer of those days made it)."""
    from objsearch.catalog.attrs import attrs_digest

    with h5py.File(index, "r+") as f:
        for key in ("roots", "root_macs"):
            del f.attrs[key]
        keys = json.loads(bytes(f.attrs["json_attrs"]).decode())
        f.attrs["json_attrs"] = np.bytes_(json.dumps([k for k in keys if k not in ("roots", "root_macs")]).encode())
        f.attrs["attrs_sha256"] = np.bytes_(attrs_digest(dict(f.attrs.items())).encode())


def test_an_index_from_before_roots_opens_unchanged_and_is_read_once_trusted(photos, detector, tmp_path):
    """An index without roots attributes (every index made before) opens and searches as before; its images are
    read once the user names their folder (--base-dir) or trusts it; then `add` elsewhere works too."""
    from objsearch.engine import Engine
    from objsearch.roots import UntrustedRootError

    index, folder, extra, _ = photos
    _strip_roots(index)
    with Catalog(index) as c:
        assert c.roots == [str(folder)] and c.root_macs == [""] and not np.any(c.media_root)
    before = index.read_bytes()
    with Engine(index, detector=detector) as engine:
        assert engine.search_file(BUS, k=2).neighbors  # search and thumbnails need no image file
        with pytest.raises(UntrustedRootError, match=r"objsearch trust .*photos\.h5"):
            engine.media_path(int(engine.catalog.media_id[0]))
        assert engine.media_picture(int(engine.catalog.media_id[0])) is None
    with Engine(index, detector=detector, base_dir=folder) as engine:
        assert engine.read_media(int(engine.catalog.media_id[0])).ndim == 3
    assert index.read_bytes() == before  # reading never writes
    refused = invoke("sync", "-i", index, "-w", WEIGHTS)
    assert refused.exit_code == 3 and "objsearch trust" in refused.stderr
    trusted = invoke("trust", index)
    assert trusted.exit_code == 0 and f"root 0 {folder}" in trusted.stdout
    with Engine(index, detector=detector) as engine:
        assert engine.read_media(int(engine.catalog.media_id[0])).ndim == 3
    assert invoke("add", extra, "-i", index, "-w", WEIGHTS).exit_code == 0
    with Catalog(index) as c:
        assert c.roots == [str(folder), str(extra)]


def test_an_index_made_on_another_machine_is_read_only_when_trusted_there(photos, detector, monkeypatch, tmp_path):
    """Another user's key (another machine): its recorded roots are not this user's until `objsearch trust`."""
    from objsearch.engine import Engine
    from objsearch.roots import UntrustedRootError

    index, folder, _, _ = photos
    monkeypatch.setenv("OBJSEARCH_CONFIG_DIR", str(tmp_path / "another-machine"))
    with Engine(index, detector=detector) as engine:
        with pytest.raises(UntrustedRootError):
            engine.read_media(int(engine.catalog.media_id[0]))
    assert invoke("trust", index).exit_code == 0
    with Engine(index, detector=detector) as engine:
        assert engine.read_media(int(engine.catalog.media_id[0])).ndim == 3


def test_the_key_is_private_and_made_once(machine, tmp_path):
    """0600 in a 0700 folder; concurrent first uses agree on one key; a key others can read records nothing and
    says why."""
    from objsearch.errors import ObjsearchError
    from objsearch.roots import key_path, root_trusted, sign_root, user_key

    code = ("import os; os.environ['OBJSEARCH_CONFIG_DIR'] = %r; from objsearch.roots import user_key; "
            "print(user_key(create=True).hex())" % str(machine))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT))) for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    assert stat.S_IMODE(key_path().stat().st_mode) == 0o600 and stat.S_IMODE(machine.stat().st_mode) == 0o700
    assert user_key(create=False).hex() in keys
    mac = sign_root("ab" * 16, "/data/photos")
    assert root_trusted("ab" * 16, "/data/photos", mac)
    assert not root_trusted("ab" * 16, "/", mac) and not root_trusted("cd" * 16, "/data/photos", mac)
    assert not root_trusted("ab" * 16, "/data/photos", "0" * 64) and not root_trusted("ab" * 16, "relative", mac)
    key_path().chmod(0o644)
    with pytest.raises(ObjsearchError, match="can be read by other users"):
        user_key(create=False)
    assert not root_trusted("ab" * 16, "/data/photos", mac)
