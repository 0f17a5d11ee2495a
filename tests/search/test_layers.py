"""The search package sits below the faces: it and the DIMSE face import no other face."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dicomlake

PACKAGE = Path(dicomlake.__file__).parent


def imported(folder: str) -> dict[str, set[str]]:
    """The dicomlake modules each file under ``folder`` imports, top level or not."""
    out: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(PACKAGE))] = {n for n in names if n.startswith("dicomlake.")}
    return out


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("search", ("viewer", "net", "cli", "spark", "ml")),
        ("net", ("viewer", "cli", "spark", "ml")),
    ],
)
def test_no_imports_from_faces_above_or_beside(folder: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        file: sorted(n for n in names if n.split(".")[1] in forbidden)
        for file, names in imported(folder).items()
    }
    assert {file: names for file, names in bad.items() if names} == {}
