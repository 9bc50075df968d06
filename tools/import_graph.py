"""
The package's own import graph: `python tools/import_graph.py [medimage_tx]`
prints the module count, the import cycles (strongly connected groups of
modules) and every import made inside a function, then exits 1 if there is
a cycle.  tests/test_layout.py holds the package to it.

Imports under C{if TYPE_CHECKING:} are left out: they name types for the
checker and never run.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalImport:
    module: str
    function: str
    statement: str


def modules(root: Path) -> dict[str, Path]:
    """
    Every module under C{root} (a package folder) by its dotted name.
    """
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package) + (f".{node.module}" if node.module else "")
    submodules = {f"{base}.{alias.name}" for alias in node.names} & known
    # `from package import submodule` depends on the submodule alone.
    whole = {base} & known if len(submodules) < len(node.names) else set()
    return submodules | whole


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """
    Every node of C{tree}, except what is under C{if TYPE_CHECKING:}.
    """
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _type_checking_only(child))


def graph(root: Path) -> tuple[dict[str, set[str]], list[LocalImport]]:
    """
    Each module's imports of the package's own modules (at any depth), and
    the imports made inside functions.
    """
    found = modules(root)
    known = set(found)
    edges: dict[str, set[str]] = {}
    local: list[LocalImport] = []
    for name, path in found.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        edges[name] = set()
        for node in _runtime_nodes(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name] |= _imported(node, name, is_package, known) - {name}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        local.append(LocalImport(name, node.name, ast.unparse(inner)))
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """
    The groups of modules that import each other (Tarjan's strongly
    connected components of more than one module, or a module importing
    itself).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "medimage_tx")
    edges, local = graph(root)
    top = [m for m in edges if m.count(".") == 1 and not (root / m.split(".")[1]).is_dir()]
    print(f"{len(edges)} modules, {len(top)} top-level modules")
    found = cycles(edges)
    print(f"{len(found)} import cycles" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"{len(local)} imports inside functions" + "".join(
        f"\n  {i.module}.{i.function}: {i.statement}" for i in local))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
