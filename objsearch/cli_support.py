"""How the ``objsearch`` command line speaks, apart from its commands (``objsearch.cli``): click's own errors as one
line (``usage_line``, ``Commands``), user errors, Ctrl-C and a full disk as one ``error:`` line and an exit code
(``handle_errors``), the detector's one-time export as plain lines (``show_one_time_work``), progress bars on stderr
(``job_progress``, ``stage_progress``) and a job's summary (``run_job``). Part of the command-line shell: only
``objsearch.cli`` imports it.
"""

from __future__ import annotations

import functools
import logging
import sys

import typer
from typer.core import TyperGroup

from objsearch.errors import ExitCode, ObjsearchError, storage_error


def echo_lines(lines) -> None:
    """Print each of ``lines`` on stdout."""
    for line in lines:
        typer.echo(line)


def err(message: str) -> None:
    """Print ``error: message`` on stderr (one line: every user error ends so)."""
    typer.echo(f"error: {message}", err=True)


# click's exceptions, from the module that holds typer's public BadParameter (typer >= 0.29 carries its own copy of
# click; older ones used click itself)
click_errors = sys.modules[typer.BadParameter.__module__]


def flag_name(param) -> str:
    """How a parameter is spelled on the command line: ``-k/--k/--top-k``, ``--index/-i``, ``IMAGES``."""
    if param is None:
        return "a value"
    if getattr(param, "param_type_name", "") == "option":
        return "/".join(param.opts)
    return (param.name or "an argument").upper()


def usage_line(exc) -> str:
    """One line for an error of the command line that click found (an unknown flag, a value outside its range or
    choices, a missing argument), naming the flag, the value and what is allowed, with where the help is; click's
    own form is a boxed, multi-line usage panel."""
    import re
    import shlex

    from objsearch.types import printable

    ctx = getattr(exc, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    cause = exc.__cause__  # typer checks values with pydantic: its error holds the value given
    errors = cause.errors() if hasattr(cause, "errors") else []
    if isinstance(exc, click_errors.BadParameter) and errors and "input" in errors[0]:
        value = shlex.quote(printable(str(errors[0]["input"])))
        rule = str(errors[0].get("msg", exc.message))
        if rule.startswith("Input should be "):
            rule = "must be " + rule[len("Input should be "):].split(",")[0]
        elif rule.startswith("Value error, "):
            rule = rule[len("Value error, "):]
            choices = re.match(r"'.*' is not one of (.+)$", rule)
            if choices:
                rule = "must be one of " + choices.group(1).replace("'", "")
        text = f"{flag_name(exc.param)} {value}: {rule}"
    elif isinstance(exc, click_errors.BadParameter) and not isinstance(exc, click_errors.MissingParameter):
        text = f"invalid value for {flag_name(exc.param)}: {exc.message}"
    else:
        text = exc.format_message()
        text = text[:1].lower() + text[1:]
    return " ".join(text.split()).rstrip(".") + where


class Commands(TyperGroup):
    """objsearch's command group: click's own errors (unknown flags, values outside their range) end like every
    other user error, in one ``error:`` line and the usage exit code (``ExitCode.USAGE``), not in a usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # named objsearch however it was started (python -m objsearch, a test's runner)
            code = super().main(args=args, prog_name=prog_name or self.name or "objsearch",
                                complete_var=complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:  # bare `objsearch`: the help, as a usage error
            typer.echo(exc.ctx.get_help())
            code = ExitCode.USAGE
        except click_errors.ClickException as exc:
            err(usage_line(exc))
            code = ExitCode.USAGE
        except (click_errors.Abort, typer.Abort):
            err("interrupted")
            code = ExitCode.INTERRUPTED
        code = code if isinstance(code, int) else ExitCode.OK
        if standalone_mode:
            sys.exit(int(code))
        return int(code)


def handle_errors(func):
    """Turn user errors into one line and their exit code (``objsearch.errors.ExitCode``); Ctrl-C into 130; a full
    disk or a forbidden folder into ``CANNOT_WRITE``."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ObjsearchError as exc:
            err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err(INTERRUPTED.get(func.__name__, "interrupted"))
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except OSError as exc:
            error = storage_error(exc, resumable=func.__name__ in INTERRUPTED)  # only an analysis job resumes
            if error is None:
                raise
            err(str(error))
            raise typer.Exit(error.exit_code) from None

    return wrapper


# what Ctrl-C prints, by command function: only the commands that run an analysis job resume it
INTERRUPTED = dict.fromkeys(
    ["analyze", "add", "sync", "watch", "demo"], "interrupted (an analysis resumes when run again with the same command)")

class EchoHandler(logging.Handler):
    """Log records as ``objsearch: message`` lines on the current stderr (the one a test's runner captures too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"objsearch: {record.getMessage()}", err=True)


def show_one_time_work() -> None:
    """Let the user see what runs once and takes seconds: the export of the detector for the default ``auto``
    runtime (``objsearch.runtimes.EXPORT_LOGGER``), shown as plain lines whatever ``--verbose`` says."""
    log = logging.getLogger("objsearch.runtimes.export")
    if not any(isinstance(h, EchoHandler) for h in log.handlers):
        log.addHandler(EchoHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


def progress_bar(total: int | None, desc: str):
    """A tqdm bar on stderr counting images (``total`` None: unknown) and an ``update(done, total, objects)`` that
    moves it; returns (bar, update)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total_: int, objects: int) -> None:
        bar.n = done
        bar.set_postfix(objects=objects, refresh=False)
        bar.refresh()

    return bar, update


def print_summary(verb: str, summary, output=None) -> None:
    """Print what a job did (``objsearch.summary.job_lines``)."""
    from objsearch.summary import job_lines

    echo_lines(job_lines(verb, summary, output))


def stage_progress():
    """A progress callback ``(stage, done, total, objects)`` showing one bar per stage; returns (callback, close)."""
    bars: dict = {}

    def progress(stage, done, total, objects):
        if stage not in bars:
            for bar, _ in bars.values():
                bar.close()
            bars[stage] = progress_bar(total, stage)
        bar, update = bars[stage]
        bar.total = total
        update(done, total, objects)

    def close():
        for bar, _ in bars.values():
            bar.close()

    return progress, close


def job_progress(desc: str):
    """A progress callback ``(done, total, objects)`` that opens its bar on first use; returns (callback, close)."""
    progress, close = stage_progress()
    return (lambda done, total, objects: progress(desc, done, total, objects)), close


def run_job(desc: str, verb: str, job, *args, **kwargs):
    """Run ``job(*args, progress=..., **kwargs)`` with a progress bar named ``desc``, print its summary line(s)
    starting with ``verb``, and return the summary."""
    progress, close = job_progress(desc)
    try:
        summary = job(*args, progress=progress, **kwargs)
    finally:
        close()
    print_summary(verb, summary)
    return summary
