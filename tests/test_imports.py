"""The import graph of `mulreg` runs one way: no module imports (directly or through others, at
the top or inside a function) a module that imports it back; and computing a loss landscape does
not pull in plotting or VTK."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mulreg

PACKAGE = Path(mulreg.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """The mulreg modules `module` imports anywhere in its source (relative imports)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found |= {n.split(".")[0] for n in names if n.split(".")[0] in MODULES}
    return found - {module}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in MODULES:
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    assert cycle(graph) is None, " → ".join(cycle(graph))


def test_the_cycle_finder_finds_one():
    assert cycle({**{m: set() for m in MODULES}, "sweep": {"cluster"}, "cluster": {"sweep"}}) in (
        ["cluster", "sweep", "cluster"], ["sweep", "cluster", "sweep"])


def test_every_module_imports_alone_and_landscape_needs_no_plotting():
    code = "; ".join(f"import mulreg.{m}" for m in MODULES if m != "__main__")
    check = ("import sys, mulreg.landscape; "
             "bad = [m for m in sys.modules if m.split('.')[0] in ('vtk', 'vtkmodules', 'plotly', 'matplotlib')]; "
             "assert not bad, bad")
    for snippet in (check, code):
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
