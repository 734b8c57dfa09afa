"""One table of exit codes for every command (docs/commands.md, ``objsearch.errors.ExitCode``), a case per row; bad
flag values end in one ``error:`` line naming the flag, the value and what is allowed, never in click's boxed usage
panel (issue 19 item 13, issue 18 item 6); and the help of every command reads at 80 columns (issue 19 item 6)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from testdata import BUS, ROOT, WEIGHTS, coco_images, copy_images
from objsearch.cli import app
from objsearch.errors import ExitCode

runner = CliRunner()
VIDEO = ROOT.parent / "shared" / "data" / "video" / "walking.mp4"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, code: int, *fragments: str) -> str:
    """The exit code is ``code`` and stderr is exactly one line, ``error: ...``, holding every fragment; no usage
    panel, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Usage:" not in result.output and "╭" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_the_table_in_the_docs_is_the_table_in_the_code():
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = [int(n) for n in re.findall(r"^\| (\d+) \|", table, flags=re.M)]
    assert documented == [int(c) for c in ExitCode]


def test_0_done():
    assert invoke("--version").exit_code == ExitCode.OK


# --------------------------------------------------------------------------------------------------- 1: usage
def bad_values(index, folder):
    """(arguments, flag, value) of bad flag values, as a hostile run typed them (issue 18 item 6)."""
    return [
        (["analyze", folder, "-o", "x.h5", "--video-stride", 0], "--video-stride", "0"),
        (["query", BUS, "-i", index, "-k", -3], "-k/--k/--top-k", "-3"),
        (["query", BUS, "-i", index, "-k", 0], "-k/--k/--top-k", "0"),
        (["video", VIDEO, "-i", index, "--stride", 0], "--stride", "0"),
        (["video", VIDEO, "-i", index, "--max-frames", -1], "--max-frames", "-1"),
        (["video", VIDEO, "-i", index, "--group-window", -5], "--group-window", "-5"),
        (["serve", "-i", index, "--port", 70000], "--port", "70000"),
        (["query", BUS, "-i", index, "--conf", 2], "--conf", "2"),
        (["query", BUS, "-i", index, "--mode", "imgs"], "--mode", "imgs"),
        (["query", BUS, "-i", index, "--backend", "foo"], "--backend", "foo"),
        (["query", BUS, "-i", index, "--runtime", "tensorrt"], "--runtime", "tensorrt"),
        (["query", BUS, "-i", "/dev/null"], "--index/-i", "/dev/null"),
        (["query", BUS, "-i", folder], "--index/-i", str(folder)),
        (["info", folder], "INDEX", str(folder)),
        (["remove", "x.jpg", "-i", folder], "--index/-i", str(folder)),
    ]


def test_1_usage_bad_values_are_one_line_naming_flag_value_and_what_is_allowed(small_index, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for args, flag, value in bad_values(small_index[0], folder):
        line = one_error_line(invoke(*args), ExitCode.USAGE, flag, value)
        assert re.search(r"must be|is a folder|not a regular file", line), line
    assert "must be one of objects, image" in invoke("query", BUS, "-i", small_index[0], "--mode", "imgs").stderr
    assert "must be less than or equal to 65535" in invoke("serve", "-i", small_index[0], "--port", 70000).stderr


def test_1_usage_unknown_flag_missing_option_combinations(small_index, tmp_path):
    one_error_line(invoke("query", BUS, "-i", small_index[0], "--fast"), ExitCode.USAGE, "no such option: --fast",
                   "objsearch query --help")
    one_error_line(invoke("query", BUS), ExitCode.USAGE, "--index")
    one_error_line(invoke("frobnicate"), ExitCode.USAGE, "frobnicate")
    one_error_line(invoke("video", VIDEO, "-i", small_index[0], "--json"), ExitCode.USAGE, "--json goes with")
    one_error_line(invoke("remove", "-i", small_index[0]), ExitCode.USAGE, "--missing")
    one_error_line(invoke("query", BUS, "-i", small_index[0], "--out", tmp_path / "no" / "x.jpg"), ExitCode.USAGE,
                   "does not exist")


def test_1_usage_in_a_real_process_is_one_line_without_a_panel(small_index):
    """What a terminal shows (rich is installed: typer would draw its boxed panel)."""
    proc = subprocess.run([sys.executable, "-m", "objsearch", "query", str(BUS), "-i", str(small_index[0]), "-k", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.strip().splitlines() == [
        "error: -k/--k/--top-k 0: must be greater than or equal to 1 (see objsearch query --help)"]
    assert proc.stdout == ""


def test_bare_objsearch_prints_its_help_as_a_usage_error():
    result = invoke()
    assert result.exit_code == ExitCode.USAGE and "Commands:" in result.stdout and "query" in result.stdout


# ------------------------------------------------------------------------------------------ 2: unreadable input
def test_2_unreadable_input(small_index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    one_error_line(invoke("query", bad, "-i", small_index[0]), ExitCode.UNREADABLE_INPUT, "cannot read image")


def test_2_remove_of_a_path_the_index_does_not_hold(small_index, small_folder, tmp_path):
    """Issue 19 item 14: "removed 0 images" and exit 0 said nothing of a path that is not in the index."""
    index = tmp_path / "copy.h5"
    shutil.copy(small_index[0], index)
    nope = small_folder / "nope.jpg"
    result = invoke("remove", nope, "-i", index)
    line = one_error_line(result, ExitCode.UNREADABLE_INPUT, str(nope), "is not in")
    assert "removed 0 images (0 objects)" in result.stdout, (line, result.stdout)
    one = sorted(p for p in small_folder.glob("*.jpg") if p.stat().st_size > 1000)[0]
    both = invoke("remove", one, nope, "-i", index)  # the one it holds goes, the other is named
    assert both.exit_code == ExitCode.UNREADABLE_INPUT and "removed 1 image (" in both.stdout, both.output
    assert str(nope) in both.stderr and str(one) not in both.stderr


# --------------------------------------------------------------------------------------------- 3: index refused
def test_3_index_refused(tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_bytes(b"not an index\n" * 20)
    one_error_line(invoke("info", fake), ExitCode.INDEX_REFUSED, str(fake))
    one_error_line(invoke("info", tmp_path / "none.h5"), ExitCode.INDEX_REFUSED, "does not exist")


# ----------------------------------------------------------------------------------------------------- 4: weights
def test_4_weights(tmp_path):
    folder = copy_images(coco_images(1), tmp_path / "one")
    one_error_line(invoke("analyze", folder, "-o", tmp_path / "x.h5", "--weights", tmp_path / "no.pt"),
                   ExitCode.WEIGHTS, "no.pt")


# ------------------------------------------------------------------------------------------------- 5: empty input
def test_5_empty_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    one_error_line(invoke("analyze", empty, "-o", tmp_path / "x.h5", "-w", WEIGHTS), ExitCode.EMPTY_INPUT,
                   "no image files")


# ------------------------------------------------------------------------------------------------ 6: cannot write
def test_6_cannot_write(small_index, tmp_path, monkeypatch):
    import cv2

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cv2, "imwrite", full)
    one_error_line(invoke("query", BUS, "-i", small_index[0], "--weights", WEIGHTS, "-k", 1, "--out",
                          tmp_path / "x.jpg"), ExitCode.CANNOT_WRITE, "No space left on device")


# ------------------------------------------------------------------------------------------------ 130: interrupted
def test_130_interrupted(tmp_path, monkeypatch):
    import objsearch.analysis

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(objsearch.analysis, "analyze", interrupted)
    folder = copy_images(coco_images(1), tmp_path / "one")
    one_error_line(invoke("analyze", folder, "-o", tmp_path / "x.h5"), ExitCode.INTERRUPTED, "interrupted",
                   "resumes")


# ------------------------------------------------------------------------------------------------ help at 80 columns
def _commands() -> list[str]:
    """Every visible command of the app (a command added later is checked too)."""
    import typer.main

    group = typer.main.get_command(app)
    return [name for name, command in group.commands.items() if not command.hidden]


COMMANDS = _commands()


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """``objsearch [COMMAND] --help`` of every command, rendered in one real process at COLUMNS=80."""
    code = ("import sys\nfrom objsearch.cli import app\n"
            "for name in [''] + sys.argv[1:]:\n"
            "    print('=====', name, flush=True)\n"
            "    app([name, '--help'] if name else ['--help'], standalone_mode=False)\n")
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *COMMANDS], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.split(r"^===== ?(\w*)\n", proc.stdout, flags=re.M)[1:]
    texts = dict(zip(parts[::2], parts[1::2]))
    assert sorted(texts) == sorted(["", *COMMANDS])
    return texts


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_reads_at_80_columns(help_texts, name):
    text = help_texts[name]
    assert text.startswith("Usage: objsearch"), text[:200]
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long
    assert "…" not in text and "``" not in text and "╭" not in text  # nothing cut, no raw markup, no panel
    assert "pip install objsearch " not in text and "pip install objsearch\n" not in text  # the extra survives
    assert "<bool>" not in text  # a flag does not look as if it took a value


def test_help_names_the_extras(help_texts):
    assert "'objsearch[fast]'" in help_texts["query"] and "'objsearch[milvus]'" in help_texts["query"]
    assert "'objsearch[ray]'" in help_texts["analyze"]
    assert re.search(r"--backend, --search\s+<auto\|kdtree\|faiss\|numpy\|hnsw\|torch\|milvus>", help_texts["query"])
    assert re.search(r"^  --version\s+Print the version", help_texts[""], flags=re.M)
