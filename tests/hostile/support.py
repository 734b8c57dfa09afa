"""Helpers of the hostile-input suite: the outcome tally and the one-line-error assertion."""

from __future__ import annotations

import collections
import hashlib
import sys
from pathlib import Path

OUTCOMES: collections.Counter = collections.Counter()  # outcome -> number of hostile cases
FAMILIES: collections.Counter = collections.Counter()  # family (the test module: index, inputs, roots, ...) -> cases


def record(outcome: str, family: str | None = None) -> None:
    """Count one hostile case by its (asserted) outcome: ok, refused (exit 3), user error (exit 1/2/4/5), ...; and
    by its family (default: the calling test module's name without ``test_hostile_``)."""
    if family is None:
        module = sys._getframe(1).f_globals.get("__name__", "")
        family = module.rsplit(".", 1)[-1].removeprefix("test_hostile_") or "other"
    OUTCOMES[outcome] += 1
    FAMILIES[family] += 1


def outcome_of(exit_code: int) -> str:
    return {0: "ok", 3: "refused (exit 3)"}.get(exit_code, f"user error (exit {exit_code})")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else ""


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """Exit code as expected, exactly one line on stderr starting with ``error:``, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("WARNING")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), (fragment, errors[0])
    return errors[0]
