"""The public surface: ``__all__`` lists exactly what ``import dicomlake`` offers."""

from __future__ import annotations

import types

import dicomlake


def test_all_is_sorted_and_importable() -> None:
    assert dicomlake.__all__ == sorted(dicomlake.__all__)
    for name in dicomlake.__all__:
        assert hasattr(dicomlake, name), name


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name in dir(dicomlake)
        if not name.startswith("_") and not isinstance(getattr(dicomlake, name), types.ModuleType)
    }
    public -= {"annotations", "TYPE_CHECKING", "Any", "Unpack"}  # typing, not API
    assert public == set(dicomlake.__all__) - {"__version__"}


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import dicomlake, sys; "
        "print(sorted(m for m in ('pydicom', 'deltalake', 'duckdb', 'pyarrow', 'rich', 'numpy')"
        " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_ml_exports_resolve_and_import_lightly() -> None:
    import subprocess
    import sys

    import dicomlake.ml

    assert dicomlake.ml.__all__ == sorted(dicomlake.ml.__all__)
    for name in dicomlake.ml.__all__:
        assert getattr(dicomlake.ml, name) is not None, name
    code = (
        "import dicomlake.ml, sys; "
        "print(sorted(m for m in ('torch', 'pydicom', 'duckdb', 'deltalake') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
