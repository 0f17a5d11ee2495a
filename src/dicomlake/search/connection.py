"""Read-only access to a lake for searches: one locked-down DuckDB database, many cursors.

The lake's views are made once (:func:`dicomlake.lake.sql.connect`), then the
database is locked down before any request runs: external access off, only the
lake's own folder readable, configuration locked. A user's WHERE clause (the viewer's
advanced filter) therefore cannot read ``/etc/passwd`` even if it slipped past the
check its caller made.

Requests run on cursors of that database, so a slow query does not hold up the
thumbnails. DuckDB variables (which the ``tag()`` macro needs) belong to one cursor,
so each cursor is prepared once and kept in a small pool. Every few seconds a request
checks the Delta versions of the lake's tables (an incremental log read) and, when
they moved, opens a fresh database; requests already running finish on the old one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomlake.lake.location import (
    INSTANCES_TABLE,
    THUMBNAILS_TABLE,
    open_table,
    table_exists,
    table_uri,
)
from dicomlake.storage.locations import local_path

if TYPE_CHECKING:
    import duckdb
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

#: Query parameters: positional (``?``) or named (``$name``).
Params = Sequence[Any] | Mapping[str, Any] | None

#: Seconds a query may run before it is interrupted (a WHERE clause can be costly).
QUERY_TIMEOUT = 15.0


class QueryTimeout(Exception):
    """A query ran longer than its time limit and was interrupted."""


class _Watchdog:
    """One thread that interrupts queries past their deadline.

    A timer thread per query cost more than a small search itself; this one
    thread sleeps until the earliest deadline and is idle when nothing runs.
    """

    def __init__(self) -> None:
        self._deadlines: dict[int, tuple[float, Callable[[], object]]] = {}
        self._next = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float, interrupt: Callable[[], object]) -> int:
        """Call ``interrupt`` in ``seconds`` unless :meth:`forget` comes first."""
        with self._wake:
            self._next += 1
            self._deadlines[self._next] = (time.monotonic() + seconds, interrupt)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="dicomlake-query-watchdog", daemon=True
                )
                self._thread.start()
            self._wake.notify()
            return self._next

    def forget(self, ticket: int) -> None:
        """The query of ``ticket`` ended: do not interrupt it."""
        with self._wake:
            self._deadlines.pop(ticket, None)

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for ticket in [t for t, (when, _) in self._deadlines.items() if when <= now]:
                    self._deadlines.pop(ticket)[1]()  # no reference kept past the call
                soonest = min((when for when, _ in self._deadlines.values()), default=None)
                self._wake.wait(None if soonest is None else max(0.0, soonest - now))


_WATCHDOG = _Watchdog()


@dataclass
class _Generation:
    """One opened copy of the lake: its connection, versions and idle cursors."""

    con: duckdb.DuckDBPyConnection
    versions: tuple[int, int | None]
    has_thumbnails: bool
    shared: bool  # object-store lake: Arrow views live on ``con`` only, so no cursors
    idle: queue.SimpleQueue[duckdb.DuckDBPyConnection] = field(default_factory=queue.SimpleQueue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: What services built once per version of the lake (the search index).
    built: dict[str, Any] = field(default_factory=dict)
    build_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token(self) -> str:
        """Changes whenever the lake does; used to bust browser caches."""
        instances, thumbnails = self.versions
        return f"{instances}.{-1 if thumbnails is None else thumbnails}"


def lock_down(con: duckdb.DuckDBPyConnection, lake: str) -> None:
    """Forbid everything but reading the lake's own files, for good.

    No extension is installed or loaded on demand, no file outside the lake is read,
    and no setting can be changed later.

    Args:
        con: A connection made by :func:`dicomlake.lake.sql.connect`.
        lake: The lake it reads.
    """
    local = local_path(table_uri(lake, INSTANCES_TABLE))
    if local is not None:
        root = os.path.dirname(local).rstrip(os.sep) + os.sep
    else:  # the lake's own prefix in its bucket, read through the registered fsspec
        root = lake.rstrip("/") + "/"
    con.execute("SET allowed_directories = ?", [[root]])
    # An unknown function name would otherwise fetch and load an extension on demand
    # (``sqlite_scan(...)`` in a WHERE clause starts a download).
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


class LakeConnection:
    """Read-only access to one lake, refreshed when the lake changes.

    Args:
        lake: Lake folder or URI.
        check_every: Seconds between checks of the lake's Delta versions.
        timeout: Seconds a query may run (see :data:`QUERY_TIMEOUT`).

    Raises:
        TableNotFound: The lake has no ``instances`` table.
        LakeError: The lake cannot be read.
    """

    def __init__(self, lake: str, *, check_every: float = 2.0, timeout: float = QUERY_TIMEOUT):
        self.lake = lake
        self.check_every = check_every
        self.timeout = timeout
        self._instances: DeltaTable = open_table(lake, INSTANCES_TABLE)
        self._thumbnails: DeltaTable | None = None
        self._refresh_lock = threading.Lock()
        self._checked = time.monotonic()
        self._gen = self._open(self._current_versions())

    # -- versions

    def _current_versions(self) -> tuple[int, int | None]:
        self._instances.update_incremental()
        if self._thumbnails is None and table_exists(self.lake, THUMBNAILS_TABLE):
            self._thumbnails = open_table(self.lake, THUMBNAILS_TABLE)
        elif self._thumbnails is not None:
            self._thumbnails.update_incremental()
        thumbs = None if self._thumbnails is None else self._thumbnails.version()
        return self._instances.version(), thumbs

    def _open(self, versions: tuple[int, int | None]) -> _Generation:
        from dicomlake.lake.sql import connect

        con = connect(self.lake, version=versions[0])
        try:
            has_thumbnails = bool(
                con.execute(
                    "SELECT count(*) FROM duckdb_views() WHERE view_name = 'thumbnails'"
                ).fetchall()[0][0]
            )
            lock_down(con, self.lake)
        except BaseException:
            con.close()
            raise
        shared = local_path(table_uri(self.lake, INSTANCES_TABLE)) is None
        log.info("searches read %s at version %s", self.lake, versions)
        return _Generation(con, versions, has_thumbnails, shared)

    def refresh(self, *, force: bool = False) -> None:
        """Open the lake again if its tables changed (at most every ``check_every`` s).

        Raises:
            LakeError: The lake cannot be read.
        """
        now = time.monotonic()
        if not force and now - self._checked < self.check_every:
            return
        if not self._refresh_lock.acquire(blocking=force):
            return  # another request is checking; use what we have
        try:
            self._checked = time.monotonic()
            versions = self._current_versions()
            if versions != self._gen.versions:
                self._gen = self._open(versions)
        finally:
            self._refresh_lock.release()

    @property
    def token(self) -> str:
        """A short text that changes whenever the lake does."""
        return self._gen.token

    @property
    def has_thumbnails(self) -> bool:
        """Whether the lake has a ``thumbnails`` table."""
        return self._gen.has_thumbnails

    # -- cursors

    def _new_cursor(self, gen: _Generation) -> duckdb.DuckDBPyConnection:
        cur = gen.con.cursor()
        cur.execute("SET VARIABLE dicomlake_lake = ?", [self.lake])
        cur.execute("SET VARIABLE dicomlake_version = ?::BIGINT", [gen.versions[0]])
        return cur

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """A cursor for one request, taken from the pool of the current generation.

        Raises:
            LakeError: The lake changed and cannot be read any more.
        """
        self.refresh()
        gen = self._gen
        if gen.shared:
            with gen.lock:
                yield Cursor(gen.con, gen, self.timeout)
            return
        try:
            cur = gen.idle.get_nowait()
        except queue.Empty:
            cur = self._new_cursor(gen)
        try:
            yield Cursor(cur, gen, self.timeout)
        finally:
            gen.idle.put(cur)

    def close(self) -> None:
        """Close the database; later requests fail."""
        self._gen.con.close()


class Cursor:
    """A DuckDB cursor that runs each query under a time limit."""

    def __init__(self, con: duckdb.DuckDBPyConnection, gen: _Generation, timeout: float):
        self.con = con
        self.gen = gen
        self.token = gen.token
        self.has_thumbnails = gen.has_thumbnails
        self.timeout = timeout

    def fetch(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` and return all rows.

        Raises:
            QueryTimeout: The query ran longer than the time limit.
            duckdb.Error: The query failed.
        """
        import duckdb

        ticket = _WATCHDOG.watch(self.timeout, self.con.interrupt)
        try:
            return self.con.execute(sql, params if params is not None else []).fetchall()
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran longer than {self.timeout:g} s") from None
        finally:
            _WATCHDOG.forget(ticket)

    def fetch_dicts(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        """Run ``sql`` and return rows as dicts by column name.

        Raises:
            QueryTimeout: The query ran longer than the time limit.
            duckdb.Error: The query failed.
        """
        rows = self.fetch(sql, params)
        names = [d[0] for d in self.con.description or []]
        return [dict(zip(names, row, strict=True)) for row in rows]
