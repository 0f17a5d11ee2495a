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
from typing import Any

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


#: AWS settings a developer's environment may hold; tests clear them first.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ALLOW_HTTP",
)
#: The credentials moto accepts.
KEY, SECRET = "testing", "testing"


def use_aws_env(monkeypatch: Any, endpoint: str, home: Path) -> None:
    """Point the standard AWS environment at ``endpoint`` (restored by ``monkeypatch``).

    Never reads the developer's ~/.aws nor asks an instance metadata service. s3fs
    keeps file systems made earlier in the process, keyed without the environment: they
    would still talk to an earlier test's server, so they are dropped.
    """
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
