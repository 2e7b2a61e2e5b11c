"""The house rules of the code (README, "Architecture"), checked on the source itself.

- Imports between our packages point down the data flow only:
  schemas <- labelers <- curation <- pipelines <- cli, and policy reads curated data through
  curation's front door (`curation.open_dataset`) and runs closed-loop evaluation in the
  Meta-World scene (`curation.sources.metaworld`). Every import counts, including the ones inside
  functions.
- No import cycle between the folders (sub-packages) of a package.
- No function longer than 80 lines in the packages.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "labelers", "curation", "pipelines", "policy", "cli")
# Which of our packages each package may import (besides itself).
MAY_IMPORT = {
    "schemas": set(),
    "labelers": {"schemas"},
    "curation": {"schemas", "labelers"},
    "pipelines": {"schemas", "labelers", "curation"},
    "policy": {"schemas", "curation"},
    "cli": {"schemas", "labelers", "curation", "pipelines", "policy"},
}
# policy's imports of curation are limited to these modules (the public reader, the simulator).
POLICY_CURATION = ("curation", "curation.sources.metaworld")
MAX_FUNCTION_LINES = 80  # STYLE.md: a function reads on one screen


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of our packages in a file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return out


def _is_module(name: str) -> bool:
    p = REPO.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def test_imports_point_down_the_data_flow():
    bad = []
    for path in _sources():
        pkg = path.relative_to(REPO).parts[0]
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top == pkg:
                continue
            if top not in MAY_IMPORT[pkg]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name} ({pkg} may import {sorted(MAY_IMPORT[pkg])})")
            elif pkg == "policy" and top == "curation" and not name.startswith(POLICY_CURATION[1]) and name != "curation":
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name} (policy reads data through curation.open_dataset)")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def _folder(module: str) -> str:
    """The folder (package) a module lives in: curation.store.reader -> curation.store."""
    return module if _is_package(module) else module.rpartition(".")[0]


def _is_package(name: str) -> bool:
    return (REPO.joinpath(*name.split(".")) / "__init__.py").is_file()


def _folder_graph() -> dict[str, set[str]]:
    """folder -> the folders it imports from (one folder never counts as importing its parent)."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        here = _folder(_module(path))
        for _, name in _imports(path):
            there = _folder(name)
            if there != here and not here.startswith(there + "."):
                graph.setdefault(here, set()).add(there)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cyc := visit(m)):
                return cyc
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state and (cyc := visit(n)):
            return cyc
    return []


def test_no_import_cycle_between_folders():
    cycle = _find_cycle(_folder_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        here = _module(path)
        for _, name in _imports(path):
            if name != here and not _is_package(name):
                graph.setdefault(here, set()).add(name)
    cycle = _find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}}) == []


def _long_functions() -> dict[str, int]:
    out = {}
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > MAX_FUNCTION_LINES:
                    out[f"{path.relative_to(REPO)}:{node.name}"] = n
    return out


def test_no_function_over_80_lines():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_import_scanner_sees_imports_inside_functions(tmp_path, monkeypatch):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from curation.store import reader\n    import pipelines.job\n")
    monkeypatch.setattr(f"{__name__}._module", lambda p: "labelers.m")
    assert [n for _, n in _imports(f)] == ["curation.store.reader", "pipelines.job"]


def test_the_cli_starts_without_the_heavy_frameworks():
    """Building `curate`'s parser (what every command does first) loads neither torch, TensorFlow,
    Ray, Beam nor MuJoCo: each command imports what it needs when it runs, so a `curate versions`
    or a `curate --help` starts in well under a second rather than the ~4 s that torch takes."""
    import subprocess
    import sys

    heavy = ["torch", "tensorflow", "ray", "apache_beam", "mujoco", "transformers"]
    code = ("import sys; from cli.main import build_parser; build_parser(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
