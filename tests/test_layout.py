"""The layout check of issue 20 (``tools/layout_check.py``): objsearch's imports point one way, and the check itself
finds what it is meant to find."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "layout_check.py"


@pytest.fixture(scope="module")
def layout_check():
    spec = importlib.util.spec_from_file_location("layout_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["layout_check"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("layout_check", None)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_objsearch_has_no_cycle_no_shell_import_and_no_private_import(layout_check):
    report = layout_check.check(ROOT / "objsearch")
    assert report.modules > 30
    assert report.cycles == []
    assert report.shell_imports == []
    assert report.private_imports == []


def test_the_command_line_says_the_same_and_exits_0():
    result = subprocess.run([sys.executable, str(TOOL), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert {k: found["counts"][k] for k in ("cycles", "shell_imports", "private_imports")} == {
        "cycles": 0, "shell_imports": 0, "private_imports": 0}
    assert isinstance(found["counts"]["long_files"], int)


def test_a_cycle_a_shell_import_and_private_names_are_found(layout_check, tmp_path):
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "__main__.py": "from pkg.cli import main\n",
        "cli.py": "from pkg.engine import search\n\ndef main():\n    search()\n",
        "gui/__init__.py": "",
        "gui/window.py": "from pkg.engine import _secret  # a shell takes a private name too\n",
        "engine.py": """\
            from pkg import parts

            def search():
                from .store import load  # function level, relative: a cycle engine -> store -> engine
                return load(), parts._hidden
            """,
        "store.py": """\
            def load():
                from pkg.engine import search
                from pkg.gui import window  # a library module reaching up into a shell
                return search, window
            """,
        "parts.py": "_hidden = 1\n__version__ = '1'\n",
        "clean.py": "from pkg.parts import __version__  # dunder names are public\n",
    })
    report = layout_check.check(package)
    assert len(report.cycles) == 1
    assert "pkg.engine" in report.cycles[0] and "pkg.store" in report.cycles[0]
    assert len(report.shell_imports) == 1 and "pkg.store" in report.shell_imports[0]
    assert "pkg.gui.window" in report.shell_imports[0]
    assert len(report.private_imports) == 2
    assert any("_secret" in line and "pkg.gui.window" in line for line in report.private_imports)
    assert any("reads _hidden of pkg.parts" in line for line in report.private_imports)
    assert layout_check.main([str(package)]) == 1


def test_a_package_init_that_imports_back_is_a_cycle(layout_check, tmp_path):
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "jobs/__init__.py": "from pkg.jobs.run import go\n",
        "jobs/run.py": "from pkg.engine import open_index\n\ndef go():\n    return open_index\n",
        "engine.py": "def open_index():\n    from pkg.jobs.journal import Journal\n    return Journal\n",
        "jobs/journal.py": "class Journal:\n    pass\n",
    })
    report = layout_check.check(package)
    # engine -> pkg.jobs.journal runs pkg/jobs/__init__.py, which imports run, which imports engine
    assert len(report.cycles) == 1 and "pkg.engine" in report.cycles[0] and "pkg.jobs" in report.cycles[0]


def test_a_clean_package_passes_and_long_files_are_counted_apart(layout_check, tmp_path):
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "cli.py": "from pkg.engine import search\n" + "\n" * 720,
        "engine.py": "from . import parts\n\ndef search():\n    return parts.value\n",
        "parts.py": "value = 1\n",
    })
    report = layout_check.check(package)
    assert report.counts() == {"cycles": 0, "shell_imports": 0, "private_imports": 0, "long_files": 1}
    assert "cli.py" in report.long_files[0] and "limit 700" in report.long_files[0]
    assert layout_check.main([str(package)]) == 0
    assert layout_check.main([str(package), "--strict-length"]) == 1


def test_no_file_is_too_long(layout_check):
    assert layout_check.check(ROOT / "objsearch").long_files == []
