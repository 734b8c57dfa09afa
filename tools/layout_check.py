"""The layout check of issue 20: which way the imports of ``objsearch/`` point, read with ``ast``.

Usage::

    python tools/layout_check.py [PACKAGE_DIR] [--json]

Every ``import`` statement in every module counts, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING:``), and relative imports are resolved against the importing module. Reported:

- **cycles**: groups of modules that import each other, directly or around a longer loop (strongly connected
  components of the import graph), each shown with one loop through it;
- **shell imports**: a library module importing a shell (``cli``, ``gui``, ``web`` and what lies under them); the
  shells and ``__main__`` may import each other and the library;
- **private imports**: a name with a leading underscore taken from another module of the package, by
  ``from x import _name`` or by ``module._name`` on an imported module (dunder names such as ``__version__`` are
  public);
- **long files**: a module over 800 lines, or ``cli.py`` / ``gui/window.py`` over 700 (a separate count).

Prints each count and each offence and exits 1 when any of the first three counts is not zero, or when
``--strict-length`` is given and a file is too long. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHELLS = ("cli", "cli_support", "gui", "web")
"""Top-level parts of the package that are shells: arguments and layout over the library."""

MAX_LINES = 800
"""No module of the package is longer than this."""

SHELL_MAX_LINES = {"cli.py": 700, "gui/window.py": 700}
"""Tighter limits for the two shell files most changed, by path relative to the package directory."""


@dataclass
class Module:
    """One parsed module: its dotted name, its file, whether it is a package's ``__init__``, its line count."""

    name: str
    path: Path
    is_package: bool
    n_lines: int
    tree: ast.Module


@dataclass
class Report:
    """What the check found. Each list holds one human-readable line per offence."""

    package: str
    modules: int
    cycles: list[str] = field(default_factory=list)
    shell_imports: list[str] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    long_files: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The number of offences of each kind, by kind."""
        return {
            "cycles": len(self.cycles),
            "shell_imports": len(self.shell_imports),
            "private_imports": len(self.private_imports),
            "long_files": len(self.long_files),
        }


def load_modules(package_dir: Path) -> dict[str, Module]:
    """Parse every ``.py`` file under ``package_dir`` (a package directory: its name is the top-level package).

    Returns
    -------
    dict of str to Module
        By dotted module name; a package's ``__init__.py`` is named after the package.

    Raises
    ------
    SyntaxError
        When a file does not parse.
    """
    package_dir = Path(package_dir)
    top = package_dir.name
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        parts = [top, *rel.parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text(encoding="utf-8")
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, len(text.splitlines()), ast.parse(text, filename=str(path)))
    return modules


def _resolve_base(module: Module, node: ast.ImportFrom) -> str | None:
    """The absolute dotted name that ``from <base> import ...`` refers to, relative imports resolved."""
    if node.level == 0:
        return node.module
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]  # a module's relative base is its package
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    if not parts:
        return None  # a relative import above the top-level package
    return ".".join(parts + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Module]) -> str | None:
    """The longest module of the package that ``name`` is or lies in (``a.b.c`` -> ``a.b`` when ``a.b.c`` is not a
    module), or None when it is outside the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


@dataclass
class Import:
    """One imported thing: the module of the package it comes from, the name taken (None for the module itself),
    and the line it was imported on."""

    target: str
    name: str | None
    line: int


def imports_of(module: Module, modules: dict[str, Module]) -> tuple[list[Import], dict[str, str]]:
    """Every import of a package module by ``module``, and the local names bound to package modules.

    Returns
    -------
    imports : list of Import
        One per imported name (``from x import a, b`` gives two), targets inside the package only.
    aliases : dict of str to str
        Local name -> package module it is bound to (``import objsearch.media as m``, ``from objsearch import
        engine``), for finding ``alias._private`` attribute reads.
    """
    found: list[Import] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name, modules)
                if target is None:
                    continue
                found.append(Import(target, None, node.lineno))
                if alias.asname:
                    aliases[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, node)
            if base is None:
                continue
            base_owner = _owner(base, modules)
            if base_owner is None:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # from package import submodule
                    found.append(Import(submodule, None, node.lineno))
                    aliases[alias.asname or alias.name] = submodule
                else:
                    found.append(Import(base_owner, alias.name, node.lineno))
    return found, aliases


def _private(name: str) -> bool:
    """Whether ``name`` is private: a leading underscore, and not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_shell(name: str, top: str) -> bool:
    """Whether the dotted module ``name`` is a shell or lies inside one."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] == top and parts[1] in SHELLS


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _loop_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One shortest loop from the component's first module back to itself, staying inside the component."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    return [start]


def _loaded_with(target: str, importer: str, top: str) -> list[str]:
    """The modules that importing ``target`` from ``importer`` runs: ``target`` and the packages it lies in (their
    ``__init__``), except the top-level package and the packages ``importer`` itself lies in (loaded before it)."""
    own = importer.split(".")
    parts = target.split(".")
    loaded = []
    for n in range(2, len(parts) + 1):
        name = ".".join(parts[:n])
        if name != importer and not (n < len(parts) and own[:n] == parts[:n]):
            loaded.append(name)
    return loaded


def check(package_dir: Path) -> Report:
    """Run the layout check over ``package_dir`` (e.g. ``objsearch/``).

    Parameters
    ----------
    package_dir : Path
        The package directory; its name is the top-level package name.

    Returns
    -------
    Report
        The offences found, by kind.
    """
    package_dir = Path(package_dir)
    modules = load_modules(package_dir)
    top = package_dir.name
    report = Report(package=top, modules=len(modules))
    graph: dict[str, set[str]] = {name: set() for name in modules}
    edge_line: dict[tuple[str, str], int] = {}

    for name, module in modules.items():
        rel = module.path.relative_to(package_dir.parent)
        found, aliases = imports_of(module, modules)
        library = not (_is_shell(name, top) or name == f"{top}.__main__")
        for imp in found:
            for target in _loaded_with(imp.target, name, top):
                graph[name].add(target)
                edge_line.setdefault((name, target), imp.line)
            if library and _is_shell(imp.target, top):
                what = imp.target + (f".{imp.name}" if imp.name else "")
                report.shell_imports.append(f"{rel}:{imp.line}: library module {name} imports shell {what}")
            if imp.name and _private(imp.name) and imp.target != name:
                report.private_imports.append(f"{rel}:{imp.line}: {name} imports {imp.name} from {imp.target}")
        for node in ast.walk(module.tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != name
                and _private(node.attr)
            ):
                report.private_imports.append(
                    f"{rel}:{node.lineno}: {name} reads {node.attr} of {aliases[node.value.id]}"
                )

        limit = SHELL_MAX_LINES.get(module.path.relative_to(package_dir).as_posix(), MAX_LINES)
        if module.n_lines > limit:
            report.long_files.append(f"{rel}: {module.n_lines} lines (limit {limit})")

    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        loop = _loop_through(component, graph)
        steps = "; ".join(f"{a} imports {b} (line {edge_line[(a, b)]})" for a, b in zip(loop, loop[1:]))
        report.cycles.append(f"{len(component)} modules: {', '.join(component)}: {steps}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the check from the command line; returns the exit code (0 clean, 1 offences)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path, default=ROOT / "objsearch", help="package directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--strict-length", action="store_true", help="also fail on files that are too long")
    args = parser.parse_args(argv)
    report = check(args.package)
    counts = report.counts()
    failing = ["cycles", "shell_imports", "private_imports"] + (["long_files"] if args.strict_length else [])
    if args.json:
        print(json.dumps({"counts": counts, **asdict(report)}, indent=2))
    else:
        print(f"{report.package}: {report.modules} modules")
        for kind in ("cycles", "shell_imports", "private_imports", "long_files"):
            print(f"{kind}: {counts[kind]}")
            for line in getattr(report, kind):
                print(f"  {line}")
    return 1 if any(counts[kind] for kind in failing) else 0


if __name__ == "__main__":
    sys.exit(main())
