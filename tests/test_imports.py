"""The package's folders are its layers, and imports only point down: `mulreg` (shared names and
records) < `core` < `engine` < `results` < `report` < `tools` < the command line. A module imports
(at the top or inside a function) only from its own layer or a lower one, the import graph has no
cycle, and computing a loss landscape does not pull in plotting or VTK."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mulreg

PACKAGE = Path(mulreg.__file__).parent
RANKS = {"": 0, "core": 1, "engine": 2, "results": 3, "report": 4, "tools": 5}  # folder → layer
CLI = "__main__"  # above every layer


def dotted(path: Path) -> str:
    """'mulreg.engine.train' for lib/mulreg/engine/train.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("mulreg", *parts))


MODULES = sorted(dotted(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def rank(module: str) -> int:
    """The layer of a module ('mulreg.engine.train') or package ('mulreg.engine')."""
    parts = module.split(".")[1:]
    if parts == [CLI]:
        return len(RANKS)
    return RANKS[parts[0]] if parts and parts[0] in RANKS else 0


def imports_of(source: str) -> set[str]:
    """The mulreg modules (or layer packages) a source imports anywhere (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mulreg"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mulreg")}
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError("relative import: mulreg's modules import by absolute name")
    return {m for m in found if m != "mulreg"}


def source_of(module: str) -> str:
    return (PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")).read_text()


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a → b' for every import of a module in a higher layer."""
    return [f"{m} → {i}" for m, imported in graph.items() for i in sorted(imported) if rank(i) > rank(m)]


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


GRAPH = {m: imports_of(source_of(m)) for m in MODULES}


def test_every_module_lives_in_a_layer_folder():
    folders = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py") if len(p.relative_to(PACKAGE).parts) > 1}
    assert folders - {"__pycache__"} == set(RANKS) - {""}


def test_imports_only_point_down_the_layers():
    assert upward_imports(GRAPH) == []


def test_a_planted_upward_import_is_found():
    planted = imports_of("from mulreg.report.prose import verdict_sentences\n")
    assert upward_imports({**GRAPH, "mulreg.engine.train": GRAPH["mulreg.engine.train"] | planted}) == [
        "mulreg.engine.train → mulreg.report.prose"]
    inside_a_function = imports_of("def f():\n    from mulreg.tools import bench\n")
    assert upward_imports({"mulreg.core.data": inside_a_function}) == ["mulreg.core.data → mulreg.tools.bench"]


def test_the_import_graph_has_no_cycle():
    assert cycle(GRAPH) is None, " → ".join(cycle(GRAPH))


def test_the_cycle_finder_finds_one():
    sweep, cluster = "mulreg.engine.sweep", "mulreg.engine.cluster"
    assert cycle({**GRAPH, sweep: {cluster}, cluster: {sweep}}) in ([cluster, sweep, cluster], [sweep, cluster, sweep])


def test_every_module_imports_alone_and_landscape_needs_no_plotting():
    code = "; ".join(f"import {m}" for m in MODULES if not m.endswith(CLI))
    check = ("import sys, mulreg.results.landscape; "
             "bad = [m for m in sys.modules if m.split('.')[0] in ('vtk', 'vtkmodules', 'plotly', 'matplotlib')]; "
             "assert not bad, bad")
    for snippet in (check, code):
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr


MOST_LINES = 470  # a module (the "about 450")
MOST_FUNCTION_LINES = 60
LOOP_COLUMNS = 100  # engine/loop.py, the file read first


CHECK = PACKAGE.parents[1] / "gpu_check"  # the offline GPU check (run from the repository root) keeps the same shape
SOURCES = {m: source_of(m) for m in MODULES} | {f"gpu_check.{p.stem}": p.read_text() for p in CHECK.glob("*.py")}


def test_modules_and_functions_stay_short_and_the_loop_narrow():
    assert "gpu_check.worker" in SOURCES and "mulreg.engine.train" in SOURCES
    long_modules = {m: n for m, text in SOURCES.items() if (n := len(text.splitlines())) > MOST_LINES}
    long_functions = [f"{m}.{node.name}: {node.end_lineno - node.lineno + 1}" for m, text in SOURCES.items()
                      for node in ast.walk(ast.parse(text))
                      if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > MOST_FUNCTION_LINES]
    wide = [i for i, line in enumerate(source_of("mulreg.engine.loop").splitlines(), 1) if len(line) > LOOP_COLUMNS]
    assert (long_modules, long_functions, wide) == ({}, [], [])
