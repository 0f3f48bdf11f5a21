"""The package's modules import each other one way only.

The graph is read from the source, so it holds every import: at module level, under
``if TYPE_CHECKING:``, inside functions, in ``.pyi`` stubs and in the compiled
modules' ``.pyx``/``.pxd`` files. An import cycle hidden because one of its edges is
type-only or runs late is still a cycle: the modules on it cannot be understood, or
moved, one without the other.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import vault_observe

PACKAGE = "vault_observe"
ROOT = Path(vault_observe.__file__).resolve().parent
PYTHON_SUFFIXES = (".py", ".pyi")
CYTHON_SUFFIXES = (".pyx", ".pxd", ".pxi")
# `from X import ...`, `from X cimport ...`, `import X`, `cimport X` at a line's start
# (Cython is not Python: the ast module cannot read it).
_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+(.+)|c?import\s+([\w.]+))", re.M)
# `include "x.pxi"`: the text of x.pxi becomes part of the module (an edge to the .pxi).
_CYTHON_INCLUDE = re.compile(r'^\s*include\s+"([\w.]+)\.pxi"', re.M)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def source_files() -> dict[str, list[Path]]:
    """Module name -> its source files (a compiled module has a .pyx, .pxd and .pyi)."""
    files: dict[str, list[Path]] = {}
    for path in sorted(ROOT.rglob("*")):
        if path.suffix in PYTHON_SUFFIXES + CYTHON_SUFFIXES and "__pycache__" not in path.parts:
            files.setdefault(module_name(path), []).append(path)
    return files


def _resolve(importer: str, is_package: bool, level: int, target: str) -> str:
    """The absolute name of ``from <level dots><target>`` written in ``importer``."""
    if not level:
        return target
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _python_imports(path: Path, importer: str) -> Iterator[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement of a Python file."""
    is_package = path.stem == "__init__"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(importer, is_package, node.level, node.module or "")
            yield module, [alias.name for alias in node.names]


def _cython_imports(path: Path, importer: str) -> Iterator[tuple[str, list[str]]]:
    text = path.read_text(encoding="utf-8")
    # Docstrings and comments could hold "from ... import": keep code lines only.
    text = re.sub(r'"""(?:.|\n)*?"""', "", text)
    text = re.sub(r"#.*", "", text)
    for match in _CYTHON_IMPORT.finditer(text):
        source, names, plain = match.groups()
        if plain is not None:
            yield plain, []
            continue
        level = len(source) - len(source.lstrip("."))
        module = _resolve(importer, False, level, source.lstrip("."))
        yield module, [name.strip(" ()") for name in names.split(",")]
    for included in _CYTHON_INCLUDE.findall(text):
        yield _resolve(importer, False, 1, included), []


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, in any way."""
    files = source_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for importer, paths in files.items():
        for path in paths:
            reader = _python_imports if path.suffix in PYTHON_SUFFIXES else _cython_imports
            for module, names in reader(path, importer):
                if module != PACKAGE and not module.startswith(PACKAGE + "."):
                    continue
                # `from . import core` imports the module core, `from .x import y` the module x.
                targets = [f"{module}.{name}" for name in names if f"{module}.{name}" in files]
                if len(targets) < len(names) or not names:
                    targets.append(module)
                for target in targets:
                    # `import a.b.c` runs a/__init__ and a/b/__init__ too, which import nothing here.
                    if target in files and target != importer:
                        graph[importer].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm),
    each given as one cycle through all of its modules where a path allows it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _path_within(graph: dict[str, set[str]], start: str, goal: str, members: set[str]) -> list[str]:
    """A shortest import path start -> goal through ``members`` (breadth first)."""
    before: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & members):
                if successor == goal:
                    path = [successor, node]
                    while path[-1] != start:
                        path.append(before[path[-1]])
                    return path[::-1]
                if successor not in seen:
                    seen.add(successor)
                    before[successor] = node
                    following.append(successor)
        frontier = following
    return []


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    lines = [f"{len(component)} modules import each other: {', '.join(component)}"]
    for module in component:
        back = _path_within(graph, module, module, members)
        if back:
            lines.append("  cycle: " + " -> ".join(back))
            break
    for module in component:
        lines.append(f"  {module} imports {', '.join(sorted(graph[module] & members))}")
    return "\n".join(lines)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A type-only import, one inside a function and a relative one are edges too."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import core, framing\n"
        "if TYPE_CHECKING:\n"
        "    from .pipeline import Daemon\n"
        "def late():\n"
        "    from ..sinks.base import Sink\n"
        "    import vault_observe.model\n"
    )
    found = list(_python_imports(source, "vault_observe.sources.mod"))
    assert ("vault_observe.sources", ["core", "framing"]) in found
    assert ("vault_observe.sources.pipeline", ["Daemon"]) in found
    assert ("vault_observe.sinks.base", ["Sink"]) in found
    assert ("vault_observe.model", []) in found
    cython = tmp_path / "mod.pyx"
    cython.write_text(
        '"""from .docstring import Nothing"""\n'
        "from libc.stdint cimport int64_t\n"
        "from vault_observe._spans cimport (\n    PackedSpan,\n)\n"
        "from .model import SpanBatch  # from .comment import Nothing\n"
        'include "_bytebuf.pxi"\n'
    )
    found = list(_cython_imports(cython, "vault_observe._fast"))
    assert [module for module, _ in found] == [
        "libc.stdint",
        "vault_observe._spans",
        "vault_observe.model",
        "vault_observe._bytebuf",
    ]


def test_the_graph_covers_the_package() -> None:
    graph = import_graph()
    assert "vault_observe.pipeline" in graph
    assert "vault_observe.sinks.factory" in graph["vault_observe.cli"]
    # from the compiled modules' .pyx: cimports and included .pxi files
    assert "vault_observe._spans" in graph["vault_observe._fast"]
    assert "vault_observe._encode_common" in graph["vault_observe._batch_json"]
    assert "vault_observe._bytebuf" in graph["vault_observe._encode_common"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (type-only and in-function imports count):\n" + "\n".join(
        describe(graph, component) for component in cycles
    )


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """Every module loads in a fresh interpreter (the compiled ones when built), and
    every module loaded is one the graph above was read from."""
    files = source_files()
    compiled = {name for name, paths in files.items() if any(p.suffix == ".pyx" for p in paths)}
    # A .pxi is text included into a compiled module, not a module of its own.
    included = {name for name, paths in files.items() if all(p.suffix == ".pxi" for p in paths)}
    names = sorted(name for name in files if not name.endswith("__main__") and name not in included)
    script = (
        "import importlib, json, sys\n"
        "failed, missing = [], []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        (missing if exc.name == name else failed).append(f'{name}: {exc!r}')\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'vault_observe')\n"
        "print(json.dumps({'failed': failed, 'missing': missing, 'loaded': loaded}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(done.stdout)
    assert report["failed"] == []
    # Only a compiled module may be absent (a pure-Python install), never a source one.
    assert {line.split(":")[0] for line in report["missing"]} <= compiled
    assert set(report["loaded"]) <= set(files)
