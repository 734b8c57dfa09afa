"""A crafted index that chooses its own base directory (issue 18 item 2): its root attributes re-signed with a plain
sha256 as a forger would, naming ``/`` (or a second root ``/``) and a path to a file elsewhere on the machine. The
web server never serves that file, never searches it, and says in one line what the user can do; the command line
neither reads it nor fails. A legitimate copy of the same index is served (so the test can fail)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

import cases
from support import record

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"
SECRET = b"SECRET-served-from-outside-the-roots"

pytest.importorskip("fastapi", reason="the web extra is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")


@pytest.fixture(scope="module")
def secret_image(tmp_path_factory) -> Path:
    """A real JPEG (it decodes; serving it would answer 200) with a secret after its end, outside every root."""
    path = tmp_path_factory.mktemp("private") / "private.jpg"
    path.write_bytes(BUS.read_bytes() + SECRET)
    return path


def _point_at(f: h5py.File, secret: Path) -> None:
    """Every media path names ``secret`` relative to ``/``."""
    cases._paths_set(str(secret).lstrip("/").encode())(f, None)


def _root_slash(f, secret):
    """base_dir and roots say ``/``; the MAC of the real folder is kept (it does not fit ``/``)."""
    _point_at(f, secret)
    f.attrs["base_dir"] = np.bytes_(b"/")
    cases.set_json_attr(f, "roots", ["/"])


def _root_slash_no_mac(f, secret):
    _root_slash(f, secret)
    cases.set_json_attr(f, "root_macs", [""])


def _second_root_slash(f, secret):
    """A second root ``/`` with the first root's MAC copied to it, and every media item moved under it."""
    _point_at(f, secret)
    roots, macs = cases.get_json_attr(f, "roots"), cases.get_json_attr(f, "root_macs")
    cases.set_json_attr(f, "roots", roots + ["/"])
    cases.set_json_attr(f, "root_macs", macs + macs[:1])
    n = f["media/id"].shape[0]
    f.create_dataset("media/root", data=np.ones(n, np.int32), chunks=True, fletcher32=True, maxshape=(None,))


def _old_style_slash(f, secret):
    """An index as written before roots (no roots attributes) whose base_dir is ``/``."""
    _point_at(f, secret)
    f.attrs["base_dir"] = np.bytes_(b"/")
    for key in ("roots", "root_macs"):
        del f.attrs[key]
    cases.set_json_attr(f, "json_attrs", [k for k in cases.get_json_attr(f, "json_attrs")
                                          if k not in ("roots", "root_macs")])


CRAFTS = {"root_slash": _root_slash, "root_slash_no_mac": _root_slash_no_mac,
          "second_root_slash_mac_copied": _second_root_slash, "old_style_base_dir_slash": _old_style_slash}


def _crafted(tiny_index, tmp_path, craft, secret) -> Path:
    index = tmp_path / "crafted.h5"
    shutil.copy(tiny_index, index)
    with h5py.File(index, "r+") as f:
        craft(f, secret)
        cases.resign(f)  # a plain sha256 anyone can recompute
    return index


@pytest.mark.parametrize("name", sorted(CRAFTS))
def test_a_crafted_index_cannot_choose_what_serve_reads(name, tiny_index, shared_detector, secret_image, tmp_path,
                                                        caplog):
    from fastapi.testclient import TestClient

    from objsearch.engine import Engine
    from objsearch.web import WebSettings, create_app

    index = _crafted(tiny_index, tmp_path, CRAFTS[name], secret_image)
    with Engine(index, detector=shared_detector) as engine:
        client = TestClient(create_app(engine, WebSettings()), raise_server_exceptions=False)
        mid = int(engine.catalog.media_id[0])
        for response in (client.get(f"/api/media/{mid}"), client.get(f"/api/media/{mid}?max_side=64"),
                         client.post(f"/api/search?media_id={mid}"),
                         client.post(f"/api/search?media_id={mid}&mode=image")):
            assert response.status_code == 403, (response.status_code, response.text[:200])
            error = response.json()["error"]
            assert "not recorded by you" in error and "objsearch trust" in error and "\n" not in error
            assert SECRET not in response.content
        info = client.get("/api/info").json()
        assert not any(root["readable"] for root in info["roots"][-1:])
        assert client.post("/api/search?k=2", content=BUS.read_bytes(),
                           headers={"content-type": "image/jpeg"}).status_code == 200  # search still works
    assert "Traceback" not in caplog.text
    record("refused (403)", "crafted roots")


@pytest.mark.parametrize("name", sorted(CRAFTS))
def test_a_crafted_index_is_searched_on_the_command_line_without_reading_outside(name, tiny_index, cli,
                                                                                 secret_image, tmp_path,
                                                                                 monkeypatch, caplog):
    """`query --mode image --out` draws whole pictures from the indexed files: none is read; one warning says why
    (the answer itself is unchanged)."""
    import objsearch.media as media

    index = _crafted(tiny_index, tmp_path, CRAFTS[name], secret_image)
    opened = []
    original = media.read_image
    monkeypatch.setattr(media, "read_image", lambda path, **kw: (opened.append(Path(path)), original(path, **kw))[1])
    result = cli("query", "--mode", "image", BUS, "-i", index, "-k", 3, "--out", tmp_path / "row.png", "--json")
    assert result.exit_code == 0, result.output
    assert secret_image not in opened and all(p == BUS for p in opened)
    assert "Traceback" not in result.output
    warnings = [r.getMessage() for r in caplog.records if "not recorded by you" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not once per picture
    assert json.loads(result.stdout)["neighbors"]
    record("ok", "crafted roots")


def test_the_same_index_uncrafted_is_served(tiny_index, shared_detector, tmp_path):
    """The control: the index as analyze wrote it serves its images (so the refusals above are the crafts')."""
    from fastapi.testclient import TestClient

    from objsearch.engine import Engine
    from objsearch.web import WebSettings, create_app

    index = tmp_path / "copy.h5"
    shutil.copy(tiny_index, index)
    with Engine(index, detector=shared_detector) as engine:
        client = TestClient(create_app(engine, WebSettings()), raise_server_exceptions=False)
        response = client.get(f"/api/media/{int(engine.catalog.media_id[0])}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    record("ok", "crafted roots")


def test_a_crafted_root_named_with_base_dir_reads_only_under_that_folder(tiny_index, shared_detector, secret_image,
                                                                         tmp_path):
    """--base-dir makes a root the user's: the crafted relative paths then resolve under the folder the user named
    (here: not found, 404), never under ``/``."""
    from fastapi.testclient import TestClient

    from objsearch.engine import Engine
    from objsearch.web import WebSettings, create_app

    index = _crafted(tiny_index, tmp_path, _root_slash, secret_image)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    with Engine(index, detector=shared_detector, base_dir=chosen) as engine:
        client = TestClient(create_app(engine, WebSettings()), raise_server_exceptions=False)
        response = client.get(f"/api/media/{int(engine.catalog.media_id[0])}")
        assert response.status_code == 404 and SECRET not in response.content
    record("refused (404)", "crafted roots")
