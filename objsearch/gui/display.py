"""Can the app open a window here? Checked before the window is made, because Qt cannot say so gracefully: when no
display or platform plugin can be opened, ``QApplication`` aborts the whole process (``qFatal``, SIGABRT).

``probe_display`` creates a ``QApplication`` in a short child process and, when that dies, turns Qt's messages into
one line naming the missing piece: no X server at ``$DISPLAY``, the shared libraries the platform plugin lacks
(from ``ldd``, with the Debian/Ubuntu packages that hold them), or an unknown ``$QT_QPA_PLATFORM``.

``drop_opencv_plugin_path`` undoes what importing OpenCV's GUI wheels does: ``cv2`` points
``QT_QPA_PLATFORM_PLUGIN_PATH`` at its own bundled Qt 5 plugins, which are not PyQt6's.

PyQt6 is not imported here (the probe imports it in the child).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from objsearch.errors import ExitCode, ObjsearchError

PROBE = "from PyQt6.QtWidgets import QApplication; QApplication(['objsearch'])"


class DisplayError(ObjsearchError):
    """No display, or no Qt platform plugin that can open it (a missing system library, an unknown platform)."""

    exit_code = ExitCode.USAGE


def _package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def drop_opencv_plugin_path(environ: dict | None = None) -> bool:
    """Remove ``QT_QPA_PLATFORM_PLUGIN_PATH`` and ``QT_QPA_FONTDIR`` from ``environ`` (default ``os.environ``) when
    they point into the ``cv2`` package's folder, so that Qt uses PyQt6's own plugins; a value set elsewhere is
    kept. Returns whether anything was removed."""
    environ = os.environ if environ is None else environ
    cv2_folder = _package_folder("cv2")
    removed = False
    for key in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR"):
        value = environ.get(key)
        if not value:
            continue
        path = Path(value).resolve()
        if (cv2_folder is not None and path.is_relative_to(cv2_folder)) or "cv2" in path.parts:
            del environ[key]
            removed = True
    return removed


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships a shared library, by Debian's naming rule: ``libxcb-icccm.so.4`` ->
    ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0``, ``libEGL.so.1`` -> ``libegl1``."""
    name, _, version = soname.partition(".so.")
    name = name.lower()
    if not version:
        return name
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def missing_libraries(library: str | Path) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``library`` (directly or through its dependencies), in order,
    each once; [] when ``ldd`` is not there."""
    try:
        out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = re.findall(r"^\s*(\S+)\s*=>\s*not found", out, flags=re.MULTILINE)
    return list(dict.fromkeys(names))


def platform_plugin(platform: str, environ: dict | None = None) -> Path | None:
    """The file Qt loads for ``platform`` (``libq{platform}.so``): in ``$QT_QPA_PLATFORM_PLUGIN_PATH`` when set and
    present there, else in PyQt6's own plugin folder; None when neither holds it."""
    environ = os.environ if environ is None else environ
    folders = [Path(environ["QT_QPA_PLATFORM_PLUGIN_PATH"])] if environ.get("QT_QPA_PLATFORM_PLUGIN_PATH") else []
    pyqt = _package_folder("PyQt6")
    if pyqt is not None:
        folders.append(pyqt / "Qt6" / "plugins" / "platforms")
    for folder in folders:
        candidate = folder / f"libq{platform}.so"
        if candidate.is_file():
            return candidate
    return None


def explain_qt_failure(output: str, environ: dict | None = None) -> str:
    """One line for what Qt printed before it aborted (``output``: its stderr)."""
    environ = os.environ if environ is None else environ
    match = re.search(r'could not connect to display\s*(\S*)', output)
    if match:
        display = match.group(1) or environ.get("DISPLAY", "")
        return (f"cannot open the display {display}: no X server answers there (start the app in a desktop "
                f"session, or under xvfb-run)")
    match = re.search(r'Could not find the Qt platform plugin "([^"]*)"', output)
    if match:
        available = re.search(r"Available platform plugins are:\s*(.*?)\.?\s*$", output, flags=re.MULTILINE)
        listed = f"; available: {available.group(1)}" if available else ""
        return f'no Qt platform plugin "{match.group(1)}" (QT_QPA_PLATFORM){listed}'
    match = re.search(r'Could not load the Qt platform plugin "([^"]*)"', output)
    if match:
        platform = match.group(1)
        plugin = platform_plugin(platform, environ)
        missing = missing_libraries(plugin) if plugin is not None else []
        if missing:
            packages = " ".join(dict.fromkeys(debian_package(m) for m in missing))
            return (f"the Qt {platform} platform plugin cannot load: missing {', '.join(missing)} (on Debian/Ubuntu: "
                    f"sudo apt-get install {packages})")
        return f"the Qt {platform} platform plugin cannot load ({plugin or 'plugin file not found'})"
    lines = [line.strip() for line in output.splitlines() if line.strip() and "Traceback" not in line]
    return f"Qt cannot start: {lines[-1] if lines else 'it exited without a message'}"


def probe_display(timeout: float = 60.0, environ: dict | None = None) -> None:
    """Create a ``QApplication`` in a child process with ``environ`` (default ``os.environ``).

    Raises
    ------
    DisplayError
        When the child fails: the message names the missing piece (``explain_qt_failure``).
    """
    environ = dict(os.environ if environ is None else environ)
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environ,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DisplayError(f"the display {environ.get('DISPLAY', '')} did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise DisplayError(explain_qt_failure(proc.stderr, environ))


def require_display(environ: dict | None = None) -> None:
    """Refuse at once, on Linux, when no display is named (``DISPLAY``, ``WAYLAND_DISPLAY`` or ``QT_QPA_PLATFORM``).

    Raises
    ------
    DisplayError
        Saying where the app can run.
    """
    environ = os.environ if environ is None else environ
    if sys.platform.startswith("linux") and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
                                                 or environ.get("QT_QPA_PLATFORM")):
        raise DisplayError("no display to open a window on (DISPLAY is not set); run it in a desktop session, or "
                           "under xvfb-run")
