"""Servers run for real in the tests: uvicorn on a free loopback port, in a thread;
and waiting for a server a test started as a command."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from dicomlake.viewer import create_app

_T = TypeVar("_T")


def wait_until_ready(
    ready: Callable[[], _T | None],
    process: subprocess.Popen[Any],
    what: str,
    limit: float = 60.0,
) -> _T:
    """Poll ``ready()`` until it gives something, while ``process`` (the server) lives.

    Fails when the process exits first (with its stderr). ``limit`` only guards
    against waiting for ever, so a slow machine passes as a fast one does.
    """
    deadline = time.monotonic() + limit
    while (answer := ready()) is None:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}): {process.communicate()[1]}")
        if time.monotonic() > deadline:  # a hang guard, not a measure of speed
            pytest.fail(f"{what} did not answer within {limit:g} s")
        time.sleep(0.1)
    return answer


def listening(port: int) -> Callable[[], bool | None]:
    """A ``ready`` check for :func:`wait_until_ready`: something accepts on the port."""

    def check() -> bool | None:
        with socket.socket() as probe:
            return True if probe.connect_ex(("127.0.0.1", port)) == 0 else None

    return check


class AppServer:
    """uvicorn serving an ASGI ``app`` on a free loopback port.

    Use as a context manager; ``url`` is the server's base address.
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class LiveServer(AppServer):
    """The viewer, ``create_app(lake, **options)``, served for real."""

    def __init__(self, lake: str, **options: Any) -> None:
        options.setdefault("check_every", 0.2)
        options.setdefault("host", "127.0.0.1")
        super().__init__(create_app(lake, **options))

    def __enter__(self) -> LiveServer:
        super().__enter__()
        return self
