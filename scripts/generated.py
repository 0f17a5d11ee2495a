"""Shared by the generators in scripts/: write a generated file, or check it is current.

A test runs each generator with ``--check``, so code generated from a table of the
standard fails CI when either side was edited alone.
"""

from __future__ import annotations

from pathlib import Path


def write_or_check(text: str, path: Path, *, check: bool, command: str) -> int:
    """Write ``text`` to ``path``; with ``check``, only compare (1 when they differ).

    Args:
        text: What the generator made.
        path: The generated file.
        check: Compare instead of writing.
        command: How to regenerate, for the message of a stale file.

    Returns:
        The process exit code: 0, or 1 for a stale file under ``check``.
    """
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run {command}")
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0
