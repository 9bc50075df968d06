"""
The package's shape (issue 18, docs/layout.md): no import cycle, and no
import of the package's own modules inside a function (the old way of
dodging a cycle), except where a comment says why: the `medimage-tx`
subcommands import their work inside `run` so listing them stays fast, and
the PostgreSQL store is imported only when configured (its driver is an
optional dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402

PACKAGE = ROOT / "medimage_tx"
LAZY_ON_PURPOSE = {"medimage_tx.relay_store.open_relay_store"}


def test_the_package_has_no_import_cycle():
    edges, _ = import_graph.graph(PACKAGE)
    assert import_graph.cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]


def test_imports_for_the_type_checker_only_are_not_edges(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("from .a import A\n")
    edges, _ = import_graph.graph(package)
    assert edges == {"pkg": set(), "pkg.a": set(), "pkg.b": {"pkg.a"}}


def test_own_modules_are_imported_at_the_top_of_a_module():
    _, local = import_graph.graph(PACKAGE)
    own = [i for i in local if " medimage_tx" in i.statement or "from ." in i.statement]
    unexpected = [i for i in own
                  if not i.module.startswith("medimage_tx.cli.") and f"{i.module}.{i.function}" not in LAZY_ON_PURPOSE]
    assert unexpected == []


def test_about_a_dozen_modules_at_the_top():
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= 13, sorted(p.name for p in top)
