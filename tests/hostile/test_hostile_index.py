"""Crafted and damaged index files through the real command line: each is refused with one line and exit 3, or
served as data (exit 0) without reading outside the base directory, running code, hanging or printing escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cases
from support import assert_one_line_error, outcome_of, record, sha256

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"
VIDEO = ROOT.parent / "shared" / "data" / "video" / "walking.mp4"
SECRET = "SECRET-root:x:0:0:hostile-suite"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> cases.Ctx:
    folder = tmp_path_factory.mktemp("crafted")
    secret = tmp_path_factory.mktemp("outside") / "passwd"
    secret.write_text((SECRET + "\n") * 64)
    return cases.Ctx(folder=folder, secret=secret)


def _run(cli, command: str, index: Path, tmp_path: Path):
    if command == "info":
        return cli("info", index)
    if command == "query":
        return cli("query", BUS, "-i", index, "-k", 3)
    if command == "query_image":
        return cli("query", "--mode", "image", BUS, "-i", index, "-k", 3, "--out", tmp_path / "row.png")
    if command == "video":
        return cli("video", VIDEO, "-i", index, "--max-frames", 1, "--jsonl", tmp_path / "out.jsonl")
    raise ValueError(command)


CASE_RUNS = [(case, command) for case in cases.INDEX_CASES for command in case.commands]


@pytest.mark.parametrize("case,command", CASE_RUNS, ids=[f"{c.name}-{cmd}" for c, cmd in CASE_RUNS])
def test_crafted_index(case, command, cli, tiny_index, ctx, tmp_path):
    index = cases.craft_index(tiny_index, tmp_path / f"{case.name}.h5", case, ctx)
    marker = ctx.folder / "MARKER"
    before = sha256(index)
    result = _run(cli, command, index, tmp_path)
    assert "Traceback" not in result.output
    assert SECRET not in result.output  # nothing read outside the base directory
    assert not marker.exists(), "a checkpoint named by the index was unpickled"
    assert sha256(index) == before  # reading never writes
    if case.exit_code:
        assert_one_line_error(result, case.exit_code, case.fragment)
    else:
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output  # stored paths are printed escaped
    record(outcome_of(result.exit_code))


@pytest.mark.parametrize("raw", [b"/etc/passwd", b"../../../../etc/passwd", b"sub/../../outside.jpg"])
def test_stored_paths_escaping_the_base_dir_are_refused(raw, tiny_index, ctx, tmp_path, shared_detector):
    """The app and the web read media through ``Engine.media_path``: a stored path that leaves the base directory
    gives None (a warning), never a file outside it."""
    from objsearch.engine import Engine

    case = cases.IndexCase("paths", cases._paths_set(raw), 0)
    index = cases.craft_index(tiny_index, tmp_path / "paths.h5", case, ctx)
    with Engine(index, detector=shared_detector) as engine:
        assert all(engine.media_path(int(m)) is None for m in engine.catalog.media_id)
        result = engine.search_file(BUS, k=3)
        assert result.neighbors and all(nb.media.path == raw.decode() for row in result.neighbors for nb in row)
        json.loads(json.dumps(result.to_dict()))
    record("ok")


def test_stored_path_to_a_fifo_is_not_opened(tiny_index, ctx, tmp_path, shared_detector):
    """A stored path naming a FIFO inside the base directory: reading it fails at once (it would block for ever)."""
    from objsearch.engine import Engine
    from objsearch.errors import ImageReadError
    from objsearch.media import read_image

    base = tmp_path / "base"
    base.mkdir()
    os.mkfifo(base / "pipe.jpg")
    case = cases.IndexCase("fifo", cases._paths_set(b"pipe.jpg"), 0)
    index = cases.craft_index(tiny_index, tmp_path / "fifo.h5", case, ctx)
    with Engine(index, detector=shared_detector, base_dir=base) as engine:
        path = engine.media_path(int(engine.catalog.media_id[0]))
        assert path == base / "pipe.jpg"
        with pytest.raises(ImageReadError, match="not a regular file"):
            read_image(path)
    record("user error (exit 2)")


def test_thumbnail_bomb_is_not_decoded(tiny_index, ctx, tmp_path, cli):
    """Thumbnails whose header declares 65000 x 65000 pixels: the result picture is written without them, at once."""
    case = next(c for c in cases.INDEX_CASES if c.name == "thumbnail_bomb")
    index = cases.craft_index(tiny_index, tmp_path / "bomb.h5", case, ctx)
    out = tmp_path / "result.jpg"
    result = cli("query", BUS, "-i", index, "-k", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0
    record("ok")


def test_weights_named_by_the_index_are_never_loaded(tiny_index, ctx, tmp_path, cli, monkeypatch):
    """The old hole: the index names its own checkpoint (with a matching sha256). It is never unpickled, even when
    the file sits in the current folder under the index's weights name."""
    monkeypatch.chdir(tmp_path)
    case = next(c for c in cases.INDEX_CASES if c.name == "weights_path_evil")
    index = cases.craft_index(tiny_index, tmp_path / "evil.h5", case, ctx)
    (tmp_path / "evil.pt").write_bytes((ctx.folder / "evil.pt").read_bytes())
    for args in (("query", BUS, "-i", index), ("info", index),
                 ("video", VIDEO, "-i", index, "--max-frames", 1, "--jsonl", tmp_path / "v.jsonl")):
        result = cli(*args)
        assert "Traceback" not in result.output
        assert not (ctx.folder / "MARKER").exists()
    record("refused (exit 3)")


def test_evil_checkpoint_really_runs_code_when_unpickled(ctx, tmp_path):
    """The crafted checkpoint is a real threat (so the tests above can fail): unpickling it writes the marker."""
    import pickle

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    cases.evil_checkpoint(path, marker)
    pickle.loads(path.read_bytes())
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "folder", "fifo"])
def test_not_an_index(kind, cli, tiny_index, tmp_path):
    index = tmp_path / "x.h5"
    if kind == "empty":
        index.write_bytes(b"")
    elif kind == "text":
        index.write_text("hello\n")
    elif kind == "truncated":
        data = tiny_index.read_bytes()
        index.write_bytes(data[: len(data) // 2])
    elif kind == "folder":
        index.mkdir()
    elif kind == "fifo":
        os.mkfifo(index)
    # a folder or a FIFO named as the index is a usage error (exit 1: the path is of the wrong kind, refused before
    # it is opened); a file that is not an index is refused as one (exit 3)
    code = 1 if kind in ("folder", "fifo") else 3
    for args in (("info", index), ("query", BUS, "-i", index)):
        result = cli(*args)
        assert_one_line_error(result, code, str(index))
    record(outcome_of(code))


def test_k_larger_than_the_index_is_capped(cli, tiny_index):
    result = cli("query", BUS, "-i", tiny_index, "-k", 2_000_000_000, "--json")
    assert result.exit_code == 0, result.output
    n_objects = sum(len(o["neighbors"]) for o in json.loads(result.stdout)["objects"][:1])
    from objsearch.catalog import Catalog

    with Catalog(tiny_index) as c:
        assert n_objects == len(c.object_id)
    record("ok")


def test_a_second_writer_is_refused_with_the_holders_pid(cli, tiny_index, tiny_folder, tmp_path):
    from objsearch.catalog import CatalogWriter

    index = tmp_path / "locked.h5"
    index.write_bytes(tiny_index.read_bytes())
    with CatalogWriter.open(index, description="another objsearch"):
        for args in (("remove", "--missing", "-i", index), ("sync", tiny_folder, "-i", index),
                     ("add", tiny_folder, "-i", index)):
            result = cli(*args)
            assert_one_line_error(result, 3, str(os.getpid()))
            record("refused (exit 3)")
