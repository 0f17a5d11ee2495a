"""The public surface: ``__all__`` lists exactly what ``import dicomlake`` offers."""

from __future__ import annotations

import dicomlake


def test_all_is_sorted_and_importable() -> None:
    assert dicomlake.__all__ == sorted(dicomlake.__all__)
    for name in dicomlake.__all__:
        assert hasattr(dicomlake, name), name


def test_public_names_are_in_all() -> None:
    public = {n for n in vars(dicomlake) if not n.startswith("_") and not n.islower() or n in {"ingest", "connect"}}
    public -= {"TYPE_CHECKING", "Any"}
    assert public <= set(dicomlake.__all__)
