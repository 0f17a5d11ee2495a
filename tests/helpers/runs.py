"""Ingest runs as a user starts them: files to ingest, the command, and its processes.

A run is marked by an environment variable that its coordinator and every worker it
spawns inherit, so the test finds them in /proc however and whenever they started.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import dicomlake
from dicomlake.sample import sample_file


def write_files(folder: Path, count: int, per_folder: int = 100) -> set[str]:
    """``count`` copies of CT_small in subfolders; returns their row paths."""
    data = sample_file("CT_small.dcm").read_bytes()
    paths = set()
    for i in range(count):
        sub = folder / f"d{i // per_folder:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"f{i:05d}.dcm"
        path.write_bytes(data)
        paths.add(f"file://{path}")
    return paths


def lake_paths(lake: Path) -> list[str]:
    con = dicomlake.connect(str(lake))
    return [p for (p,) in con.sql("SELECT path FROM instances").fetchall()]


def ingest_command(sources: list[Path], lake: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dicomlake",
        "ingest",
        *map(str, sources),
        "--lake",
        str(lake),
        "--quiet",
        *extra,
    ]


#: An environment variable that names one run: its coordinator and the workers it
#: spawns (which inherit the environment) are then found in /proc whenever they started.
RUN_MARKER = "DICOMLAKE_TEST_RUN"


def processes_of(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds ``RUN_MARKER=marker``."""
    needle = f"\0{RUN_MARKER}={marker}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ:
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, message: str, limit: float = 60.0) -> None:
    """Wait until no process of the run ``marker`` is left.

    A worker notices within about a second that its coordinator died; ``limit`` is only
    a guard against waiting for ever, so a slow machine passes as a fast one does.
    """
    deadline = time.monotonic() + limit
    while alive := processes_of(marker):
        if time.monotonic() > deadline:  # a hang guard, not a measure of speed
            pytest.fail(f"{message}: {alive} still running after {limit:g} s")
        time.sleep(0.1)
