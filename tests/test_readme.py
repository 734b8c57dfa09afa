"""The README is a first contact (issue 19, item 7): short, its Python example runs as printed, and every link from it
and from docs/ leads to a file that exists; weights/README.md names the default the code resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from testdata import DATA, ROOT

README = ROOT / "README.md"
EXAMPLE_MARK = "<!-- readme-example -->"


def readme_example() -> str:
    """The Python block that follows the example mark in README.md."""
    text = README.read_text(encoding="utf-8")
    assert EXAMPLE_MARK in text, "README.md lost its example mark"
    after = text.split(EXAMPLE_MARK, 1)[1]
    match = re.search(r"```python\n(.*?)```", after, flags=re.S)
    assert match, "no python block after the example mark"
    return match.group(1)


def test_readme_is_a_first_contact():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    code = readme_example().strip().splitlines()
    assert len(code) <= 12, len(code)  # "a ten-line example": imports included, blank lines too


def _links(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://", target):
            yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    missing = [t for t in _links(page) if t and not (page.parent / t).exists()]
    assert not missing, missing


def test_weights_readme_names_the_default_the_code_resolves():
    from objsearch.weights import DEFAULT_NAME, SHARED_WEIGHTS

    text = (ROOT / "weights" / "README.md").read_text(encoding="utf-8")
    assert SHARED_WEIGHTS.name in text and DEFAULT_NAME in text
    assert "yolov8n-reconstructed" not in text


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    """The example as printed, in an empty folder (paths to the sample data made absolute): one line per object of
    bus.jpg, each with its k=3 neighbours, and the index file it wrote."""
    code = readme_example().replace("../shared/data", str(DATA))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("bus ["), done.stdout
    assert all(line.count("('images/") == 3 for line in lines), done.stdout
    assert (tmp_path / "coco8.h5").is_file()
