"""sofa's import graph: no cycles between modules or between packages, and ``sofa.ops`` at the bottom.

The graph is read from the source with :mod:`ast` (nothing is imported): an edge A → B for every
``import``/``from ... import`` in module A of a sofa module B (``from sofa.x import name`` is an edge to
``sofa.x.name`` where that is a module, else to ``sofa.x``). Imports inside functions count as edges too, unless
a check says otherwise: a cycle closed only by a function-level import still ties the modules into one unit.
A package-level edge is a module edge between two top-level parts of sofa (``sofa.data``, ``sofa.train``,
``sofa.checkpoint``, ...; the root package ``sofa`` is a part of its own).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: ``sofa.ops`` holds pure tensor functions: it may not import these parts (nor the root package ``sofa``)
ABOVE_OPS = (
    "sofa.layers",
    "sofa.mixers",
    "sofa.models",
    "sofa.data",
    "sofa.train",
    "sofa.dense",
    "sofa.bench",
    "sofa.checkpoint",
    "sofa.cli",
)


@dataclass(frozen=True)
class ImportEdge:
    importer: str
    imported: str
    line: int
    in_function: bool


def find_modules(src: Path, package: str = "sofa") -> Dict[str, Path]:
    """Dotted module name → file, for every module of ``package`` under ``src`` (a package is its __init__)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the nearest enclosing module (``sofa.x.attr`` → ``sofa.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(src: Path, package: str = "sofa") -> List[ImportEdge]:
    """Every import of one module of ``package`` by another, with its line and whether it sits in a function."""
    modules = find_modules(src, package)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _walk_imports(tree, False):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target != package and not target.startswith(package + "."):
                    continue
                imported = _resolve(target, modules)
                if imported is not None and imported != module:
                    edges.append(ImportEdge(module, imported, node.lineno, in_function))
    return list(dict.fromkeys(edges))  # one edge per line (``from x import a, b`` names x once)


def _walk_imports(node: ast.AST, in_function: bool) -> Iterable[Tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            continue  # typing-only imports never run
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk_imports(child, inner)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def part_of(module: str) -> str:
    """The top-level part of sofa a module belongs to: ``sofa.data.lra.readers`` → ``sofa.data``."""
    return ".".join(module.split(".")[:2])


def graph(edges: Iterable[ImportEdge], function_level: bool = True, by_part: bool = False) -> Dict[str, Set[str]]:
    out: Dict[str, Set[str]] = {}
    for e in edges:
        if e.in_function and not function_level:
            continue
        a, b = (part_of(e.importer), part_of(e.imported)) if by_part else (e.importer, e.imported)
        if a != b:
            out.setdefault(a, set()).add(b)
    return out


def find_cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of ``g`` with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(g) | {w for ws in g.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def describe(cycles: List[List[str]], edges: List[ImportEdge], by_part: bool = False) -> str:
    """The edges inside each cycle, with file lines, for the failure message."""
    lines = []
    key = part_of if by_part else (lambda m: m)
    for component in cycles:
        lines.append("cycle: " + ", ".join(component))
        for e in edges:
            if key(e.importer) in component and key(e.imported) in component and key(e.importer) != key(e.imported):
                where = "inside a function" if e.in_function else "at module level"
                lines.append(f"  {e.importer} -> {e.imported} (line {e.line}, {where})")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def edges() -> List[ImportEdge]:
    return import_edges(SRC)


def test_no_import_cycle_between_modules(edges):
    cycles = find_cycles(graph(edges, function_level=False))
    assert not cycles, describe(cycles, [e for e in edges if not e.in_function])


def test_no_import_cycle_counting_imports_inside_functions(edges):
    cycles = find_cycles(graph(edges, function_level=True))
    assert not cycles, describe(cycles, edges)


def test_no_import_cycle_between_packages(edges):
    cycles = find_cycles(graph(edges, by_part=True))
    assert not cycles, describe(cycles, edges, by_part=True)


def test_ops_imports_nothing_above_it(edges):
    upward = [
        e
        for e in edges
        if part_of(e.importer) == "sofa.ops" and (e.imported == "sofa" or part_of(e.imported) in ABOVE_OPS)
    ]
    assert not upward, "\n".join(f"{e.importer} -> {e.imported} (line {e.line})" for e in upward)


def test_checker_finds_cycles_closed_inside_functions(tmp_path):
    """The checker itself: a cycle closed only by a function-level import, a relative import, a package-level
    cycle between two parts, and a TYPE_CHECKING import that is not an edge."""
    pkg = tmp_path / "sofa"
    for d in ("a", "b"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("from sofa.a import two\n")
    (pkg / "a" / "two.py").write_text("def f():\n    from .one import x\n")
    (pkg / "b" / "three.py").write_text(
        "from sofa.a.one import y\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sofa.a import two\n"
    )
    (pkg / "a" / "four.py").write_text("import sofa.b.three\n")
    found = import_edges(tmp_path)
    pairs = {(e.importer, e.imported, e.in_function) for e in found}
    assert ("sofa.a.one", "sofa.a.two", False) in pairs and ("sofa.a.two", "sofa.a.one", True) in pairs
    assert ("sofa.b.three", "sofa.a.two", False) not in pairs
    assert find_cycles(graph(found, function_level=False)) == []
    assert find_cycles(graph(found, function_level=True)) == [["sofa.a.one", "sofa.a.two"]]
    assert find_cycles(graph(found, by_part=True)) == [["sofa.a", "sofa.b"]]
