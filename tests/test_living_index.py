"""The living index through the command line: add, remove (and --missing), sync, compact, convert, stable ids, and the
messages a user sees."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from testdata import WEIGHTS, coco_images, copy_images
from objsearch.analysis import analyze
from objsearch.catalog import Catalog
from objsearch.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def grown(tmp_path, cfg, detector):
    """(folder, index, names): an index of 4 coco128 images; 3 more images wait in ``extra``."""
    folder = copy_images(coco_images(4), tmp_path / "photos")
    index = tmp_path / "photos.h5"
    analyze(folder, index, cfg, detector=detector)
    extra = copy_images(coco_images(7)[4:], tmp_path / "extra")
    return folder, index, extra


def state(index):
    with Catalog(index) as c:
        return {p: int(m) for p, m in zip(c.media_path, c.media_id)}, c.object_id.copy(), c.generation


def test_add_analyzes_only_the_new_files_and_ids_stay(grown):
    folder, index, extra = grown
    before, objects_before, generation = state(index)
    copy_images(sorted(extra.iterdir()), folder / "new")
    result = invoke("add", folder / "new", folder / sorted(before)[0], "-i", index, "-w", WEIGHTS)
    assert result.exit_code == 0, result.output
    assert "added 3 images" in result.stdout and "1 already indexed" in result.stdout
    after, objects_after, generation_after = state(index)
    assert {p: after[p] for p in before} == before  # the ids of what was there did not change
    assert sorted(set(after) - set(before)) == sorted(f"new/{p.name}" for p in extra.iterdir())
    assert min(after[p] for p in set(after) - set(before)) > max(before.values())
    assert np.array_equal(objects_after[:len(objects_before)], objects_before)
    assert generation_after > generation


def test_remove_and_remove_missing_leave_the_other_ids(grown):
    folder, index, _ = grown
    before, objects_before, _ = state(index)
    first, second, *rest = sorted(before)
    result = invoke("remove", folder / first, "-i", index)
    assert result.exit_code == 0, result.output
    assert "removed 1 image (" in result.stdout
    (folder / second).unlink()
    result = invoke("remove", "--missing", "-i", index)
    assert result.exit_code == 0, result.output
    after, _, _ = state(index)
    assert after == {p: before[p] for p in rest}
    one_line_error(invoke("remove", "-i", index), 1, "--missing")


def test_sync_adds_changed_and_removes_and_says_what_it_did(grown, tmp_path):
    folder, index, extra = grown
    before, _, _ = state(index)
    names = sorted(before)
    (folder / names[0]).unlink()                                        # deleted
    shutil.copy(sorted(extra.iterdir())[0], folder / names[1])          # changed content under the same name
    shutil.copy(sorted(extra.iterdir())[1], folder / "brand_new.jpg")   # new
    result = invoke("sync", "-i", index, "-w", WEIGHTS)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "synced: added 1 image (" in out and "1 changed and analyzed again" in out, out
    assert "removed 1 image (" in out and "2 unchanged" in out, out
    after, _, _ = state(index)
    assert set(after) == set(names[1:]) | {"brand_new.jpg"}
    assert after[names[1]] != before[names[1]] and after[names[2]] == before[names[2]]
    again = invoke("sync", "-i", index, "-w", WEIGHTS)
    assert again.exit_code == 0 and "synced: added 0 images" in again.stdout and "4 unchanged" in again.stdout


def test_analyze_of_an_indexed_folder_points_at_sync(grown):
    folder, index, _ = grown
    line = one_line_error(invoke("analyze", folder, "-o", index, "-w", WEIGHTS), 3, "already exists")
    assert f"objsearch sync {folder} -i {index}" in line


def test_compact_keeps_ids_and_drops_removed_rows(grown):
    folder, index, _ = grown
    before, _, _ = state(index)
    first = sorted(before)[0]
    assert invoke("remove", folder / first, "-i", index).exit_code == 0
    result = invoke("compact", index)
    assert result.exit_code == 0, result.output
    assert "compacted" in result.stdout
    after, _, _ = state(index)
    assert after == {p: m for p, m in before.items() if p != first}
    query = invoke("query", folder / sorted(before)[1], "-i", index, "-k", 2, "--json")
    assert query.exit_code == 0, query.output


def test_a_second_writer_is_refused_with_the_holders_pid(grown):
    from objsearch.catalog import CatalogWriter

    folder, index, _ = grown
    import os

    writer = CatalogWriter.open(index)
    try:
        one_line_error(invoke("remove", folder / sorted(state(index)[0])[0], "-i", index), 3, str(os.getpid()))
    finally:
        writer.close()


def test_convert_refuses_to_write_over_its_input(grown):
    _, index, _ = grown
    one_line_error(invoke("convert", index, "-o", index), 1, "input")
