"""The ``dicomlake`` command run with its stderr on a pseudo-terminal, as a user sees it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class TerminalRun:
    """What a command run on a terminal did: exit code, stdout, and the stderr screen."""

    returncode: int
    stdout: bytes
    screen: str


def run_on_a_terminal(args: list[str], timeout: float = 120) -> TerminalRun:
    """Run ``python -m dicomlake ARGS`` with stderr on a pty (live lines draw) and stdout piped."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomlake", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=timeout)
    os.close(primary)
    assert process.stdout is not None
    with process.stdout:
        stdout = process.stdout.read()
    screen = b"".join(chunks).decode("utf-8", "replace")
    return TerminalRun(process.returncode, stdout, screen)
