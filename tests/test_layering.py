"""The layering: drivers (I/O, maps, simulators) never import the controller; the site model
imports no drivers. Read from the source, so a new upward import fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its body."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_drivers_and_simulators_never_import_the_controller():
    upward = {
        str(path.relative_to(ROOT)): sorted(n for n in imported(path) if n.startswith("controller"))
        for path in (ROOT / "drivers").rglob("*.py")
    }
    assert {f: names for f, names in upward.items() if names} == {}


def test_the_site_model_imports_no_drivers():
    names = imported(ROOT / "controller" / "config.py")
    assert not [n for n in names if n.startswith("drivers")]
