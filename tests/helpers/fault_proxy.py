"""A real HTTP reverse proxy in front of an S3 server that injects faults, for the tests.

It forwards every request to the upstream (the moto server of :mod:`moto_server`) and
applies a deterministic schedule of faults: a delay (a slow answer), a hang (no answer
at all), a reset before any answer or in the middle of the body (``SO_LINGER`` 0, so
the client gets a TCP RST), or an S3 error reply (500 InternalError, 503 SlowDown). A
:class:`Fault` picks its requests by kind (``get``, ``head``, ``list``), by object key
or listing prefix, by listing page, and by attempt ("the first N attempts of each key
fail", or always). It can also shorten listing pages (``max-keys``), so a listing
paginates without uploading thousands of objects. It counts requests of each kind,
attempts of each key and page, and faults injected, so tests can assert that retries
happened.

It runs in a child process, like the moto server: a server thread in the test process
would compete for the GIL with the code under test, and timeouts of a second would
then measure that instead of the network. The test process talks to it over HTTP, on
paths under ``/__fault__/`` that are never forwarded.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from helpers.moto_server import child_server

FAULTS = ("delay", "hang", "reset", "reset_mid", "500", "503")
KINDS = ("get", "head", "list", "other")
_CONTROL = "/__fault__/"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_ERRORS = {
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class Fault:
    """One rule of the schedule.

    Args:
        kind: ``get``, ``head``, ``list`` or ``any``.
        fault: ``delay``, ``hang``, ``reset``, ``reset_mid``, ``500`` or ``503``.
        key: The object key (``get``/``head``) or listing prefix (``list``) it hits;
            None for all.
        times: Only the first ``times`` attempts of each key (and listing page) fail;
            None: every attempt.
        pages: Listing pages it hits, 1-based; None for all.
        seconds: How long a ``delay`` waits, or the most a ``hang`` lasts.
    """

    kind: str
    fault: str
    key: str | None = None
    times: int | None = None
    pages: tuple[int, ...] | None = None
    seconds: float = 30.0

    def __post_init__(self) -> None:
        assert self.kind in (*KINDS, "any"), self.kind
        assert self.fault in FAULTS, self.fault


@dataclass(frozen=True)
class Counts:
    """What the proxy saw since it was last configured."""

    requests: dict[str, int]
    injected: dict[str, int]
    attempts: dict[str, int]

    def of(self, kind: str, key: str, page: int = 1) -> int:
        """Requests of ``kind`` for ``key`` (and listing page), faulty ones included."""
        return self.attempts.get(_attempt_id(kind, key, page), 0)


def _attempt_id(kind: str, key: str, page: int) -> str:
    return f"{kind} {key}#{page}"


# ------------------------------------------------------------------------- server


class _State:
    """The schedule and the counters, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.configure([], None)

    def configure(self, faults: list[Fault], max_keys: int | None) -> None:
        with self.lock:
            self.faults = faults
            self.max_keys = max_keys
            self.requests: Counter[str] = Counter()
            self.injected: Counter[str] = Counter()
            self.attempts: Counter[str] = Counter()
            self.pages: dict[str, dict[str, int]] = {}

    def page(self, prefix: str, token: str | None) -> int:
        """1 for a listing's first page, then 2, 3... in the order tokens appear."""
        if token is None:
            return 1
        tokens = self.pages.setdefault(prefix, {})
        return tokens.setdefault(token, len(tokens) + 2)

    def decide(self, kind: str, key: str, token: str | None) -> Fault | None:
        """Count the request; return the fault to inject, if any."""
        with self.lock:
            page = self.page(key, token) if kind == "list" else 1
            attempt_id = _attempt_id(kind, key, page)
            self.requests[kind] += 1
            self.attempts[attempt_id] += 1
            attempt = self.attempts[attempt_id]
            for fault in self.faults:
                if fault.kind not in (kind, "any") or fault.key not in (None, key):
                    continue
                if fault.pages is not None and page not in fault.pages:
                    continue
                if fault.times is not None and attempt > fault.times:
                    continue
                self.injected[fault.fault] += 1
                return fault
            return None

    def counts(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "injected": dict(self.injected),
                "attempts": dict(self.attempts),
            }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ------------------------------------------------------------------ dispatch

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith(_CONTROL):
            self._control(body)
            return
        kind, key, query = self._classify()
        state = self.server.state
        fault = state.decide(kind, key, query.get("continuation-token"))
        path = self.path
        if kind == "list" and state.max_keys is not None:
            path = _with_max_keys(path, query, state.max_keys)
        if fault is None:
            self._forward(path, body)
        elif fault.fault == "delay":
            time.sleep(fault.seconds)
            self._forward(path, body)
        elif fault.fault == "hang":
            self._hang(fault.seconds)
        elif fault.fault == "reset":
            self._reset()
        elif fault.fault == "reset_mid":
            self._forward(path, body, cut=True)
        else:
            self._error_reply(fault.fault)

    def _classify(self) -> tuple[str, str, dict[str, str]]:
        """(kind, key or listing prefix, query) of a path-style S3 request."""
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        _bucket, _, key = parts.path.lstrip("/").partition("/")
        key = unquote(key)
        if self.command == "HEAD":
            return "head", key, query
        if self.command == "GET" and key:
            return "get", key, query
        if self.command == "GET" and "list-type" in query:
            return "list", query.get("prefix", ""), query
        return "other", key, query

    def _control(self, body: bytes) -> None:
        state = self.server.state
        if self.command == "PUT" and self.path == _CONTROL + "config":
            config = json.loads(body)
            faults = [
                Fault(**{**f, "pages": tuple(f["pages"]) if f.get("pages") else None})
                for f in config["faults"]
            ]
            state.configure(faults, config.get("max_keys"))
            self._reply(204, b"")
        elif self.command == "GET" and self.path == _CONTROL + "counts":
            self._reply(200, json.dumps(state.counts()).encode(), "application/json")
        else:
            self._reply(404, b"")

    # -------------------------------------------------------------------- replies

    def _reply(self, status: int, body: bytes, content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error_reply(self, status: str) -> None:
        code, message = _ERRORS[status]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response(int(status))
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "fault-proxy")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, path: str, body: bytes, *, cut: bool = False) -> None:
        """Send the request upstream and its answer back (``cut``: half, then a reset)."""
        host, port = self.server.upstream
        upstream = http.client.HTTPConnection(host, port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command == "HEAD":
                length = response.getheader("Content-Length") or "0"
            else:
                length = str(len(payload))
            self.send_header("Content-Length", length)
            self.end_headers()
            if cut and payload:
                self.wfile.write(payload[: len(payload) // 2])
                time.sleep(0.05)  # let the half arrive before the reset
                self._reset()
            elif cut:
                self._reset()
            elif self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            upstream.close()

    def _reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed server would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _hang(self, seconds: float) -> None:
        """Answer nothing until the client gives up (or ``seconds`` pass), then reset."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.server.state.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                break  # the client closed its end
        self._reset()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.state = _State()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and hangs end connections abruptly on purpose


def _with_max_keys(path: str, query: dict[str, str], max_keys: int) -> str:
    """The listing path with its page size capped at ``max_keys``."""
    base, _, raw = path.partition("?")
    kept = [p for p in raw.split("&") if p and not p.startswith("max-keys=")]
    wanted = min(int(query.get("max-keys") or max_keys), max_keys)
    return f"{base}?{'&'.join([*kept, f'max-keys={wanted}'])}"


def _serve(upstream: str) -> None:
    server = _Server(upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # runs until the test closes our stdin
    server.state.stopping.set()
    server.shutdown()


# ------------------------------------------------------------------------- client


class FaultProxy:
    """The test side: the proxy's URL, its schedule and its counts."""

    def __init__(self, url: str) -> None:
        self.url = url
        # never through an HTTP proxy of the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def configure(self, *faults: Fault, max_keys: int | None = None) -> None:
        """Replace the schedule and zero the counts."""
        body = json.dumps({"faults": [asdict(f) for f in faults], "max_keys": max_keys})
        request = urllib.request.Request(
            self.url + _CONTROL + "config", data=body.encode(), method="PUT"
        )
        with self._opener.open(request, timeout=10):
            pass

    def counts(self) -> Counts:
        """What the proxy saw since :meth:`configure`."""
        with self._opener.open(self.url + _CONTROL + "counts", timeout=10) as reply:
            return Counts(**json.loads(reply.read()))


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Yield a :class:`FaultProxy` to ``upstream`` that lives for the block."""
    with child_server(["-m", "helpers.fault_proxy", upstream]) as port:
        yield FaultProxy(f"http://127.0.0.1:{port}")


if __name__ == "__main__":
    _serve(sys.argv[1])
