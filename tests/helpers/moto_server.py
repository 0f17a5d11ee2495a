"""A real S3-compatible server (moto) on 127.0.0.1, in a child process, for the tests.

A child process, not a thread: some delta-rs calls block on the network while holding
the GIL, so a server thread in the test process could never answer them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SERVER = textwrap.dedent(
    """
    import logging, sys
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # runs until the test closes our stdin
    server.stop()
    """
)


@contextmanager
def child_server(args: list[str]) -> Iterator[int]:
    """Run ``python ARGS``, a server that prints its port and serves until stdin closes.

    Yields the port; the server stops when the block ends.
    """
    tests = str(Path(__file__).resolve().parents[1])  # so a server may import helpers
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": path},
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """Yield ``http://127.0.0.1:PORT`` of a moto server that lives for the block."""
    with child_server(["-c", _SERVER]) as port:
        yield f"http://127.0.0.1:{port}"
