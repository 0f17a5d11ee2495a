"""The lake as a DIMSE query/retrieve SCP: C-ECHO, C-FIND, C-GET and C-MOVE.

A workstation queries the lake (Patient Root and Study Root information models,
PATIENT to IMAGE levels) and retrieves from it, as it would from a PACS. Queries run
on a read-only view of the lake (:class:`~dicomlake.search.connection.
LakeConnection`, refreshed when the lake changes); retrievals read each instance's
file when it is sent (:mod:`dicomlake.net.qr_retrieve`). pynetdicom runs each
association in its own thread; this module binds its events to those two modules.

Example:
    >>> with QueryRetrieveSCP("my-lake", port=0) as scp:  # doctest: +SKIP
    ...     print(scp.port)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dicomlake.errors import DicomLakeError
from dicomlake.net.peers import DEFAULT_AET, Peer, check_ae_title, no_delay, parse_peer
from dicomlake.net.qr_find import PATIENT_ROOT, STUDY_ROOT, BadIdentifier, find, read_find
from dicomlake.net.qr_retrieve import (
    UNCOMPRESSED,
    Match,
    fit,
    load,
    matches,
    proposed_contexts,
    read_retrieve,
)
from dicomlake.search.connection import LakeConnection, QueryTimeout

if TYPE_CHECKING:
    import ssl

    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)

#: C-FIND, C-GET and C-MOVE statuses this SCP answers (PS3.4 C.4.1.1.4, C.4.2.1.5).
PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
#: The SOP classes this SCP serves (PS3.4 annex C.6).
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "find",
    "1.2.840.10008.5.1.4.1.2.1.2": "move",
    "1.2.840.10008.5.1.4.1.2.1.3": "get",
}
STUDY_ROOT_MODELS = {
    "1.2.840.10008.5.1.4.1.2.2.1": "find",
    "1.2.840.10008.5.1.4.1.2.2.2": "move",
    "1.2.840.10008.5.1.4.1.2.2.3": "get",
}
#: A C-STORE sent to this SCP (it stores nothing): SOP class not supported here.
STORE_REFUSED = 0x0122


class DimseServerError(DicomLakeError):
    """The DIMSE server could not start (the port is taken, a setting is wrong)."""


def parse_destination(text: str) -> Peer:
    """A C-MOVE destination written ``AET=HOST:PORT`` (or ``AET@HOST:PORT``).

    Raises:
        ValueError: A part is missing or wrong; the message names it.

    Example:
        >>> parse_destination("WORKSTATION=127.0.0.1:11113")
        Peer(aet='WORKSTATION', host='127.0.0.1', port=11113)
    """
    aet, equals, address = text.partition("=")
    if not equals:
        if "@" in text:
            return parse_peer(text)
        raise ValueError(f"destination {text!r} has no '=': give it as AET=HOST:PORT")
    return parse_peer(f"{aet}@{address}")


class QueryRetrieveSCP:
    """A query/retrieve SCP answering from ``lake``, running in background threads.

    Args:
        lake: Lake folder or URI.
        aet: This SCP's AE title.
        host: Address to bind.
        port: TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        destinations: C-MOVE destinations by AE title; a C-MOVE to another title is
            answered 0xA801 (move destination unknown).
        allow_aets: Calling AE titles allowed to associate; empty allows any.
        ssl_context: TLS for every association (see :func:`dicomlake.net.peers.server_tls`).
        storage_options: fsspec options for files in object storage.

    Raises:
        ValueError: An AE title is not valid.
    """

    def __init__(
        self,
        lake: str,
        *,
        aet: str = DEFAULT_AET,
        host: str = "127.0.0.1",
        port: int = 11112,
        destinations: Mapping[str, Peer] | Iterable[Peer] = (),
        allow_aets: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        storage_options: StorageOptions = None,
    ) -> None:
        self.lake = lake
        self.aet = check_ae_title(aet)
        self.host = host
        self.port = port
        peers = destinations.values() if isinstance(destinations, Mapping) else destinations
        self.destinations = {check_ae_title(p.aet): p for p in peers}
        self.allow_aets = [check_ae_title(a, what="allowed AE title") for a in allow_aets]
        self.ssl_context = ssl_context
        self.storage_options = storage_options
        self._db: LakeConnection | None = None
        self._server: ThreadedAssociationServer | None = None

    # -- running

    def start(self) -> QueryRetrieveSCP:
        """Open the lake and start listening; returns at once.

        Raises:
            TableNotFound: Nothing was ingested into the lake yet.
            LakeError: The lake cannot be read.
            DimseServerError: The address cannot be bound.
        """
        from pynetdicom import _config

        # Identifiers hold patient values: never log them.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self._db = LakeConnection(self.lake)
        ae = self._application_entity()
        try:
            self._server = ae.start_server(
                (self.host, self.port),
                block=False,
                evt_handlers=self._handlers(),
                ssl_context=self.ssl_context,
            )
        except OSError as exc:
            self._db.close()
            self._db = None
            raise DimseServerError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}): "
                "is the port taken? Pick another with --dimse-port"
            ) from None
        self.port = int(self._server.server_address[1])
        log.info("DIMSE query/retrieve SCP %s listening on %s:%d", self.aet, self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening, end open associations, close the lake."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> QueryRetrieveSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _application_entity(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

        ae = AE(ae_title=self.aet)
        ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
        for model in (*PATIENT_ROOT_MODELS, *STUDY_ROOT_MODELS):
            ae.add_supported_context(model)
        # C-GET sends over the peer's own association: it proposes the storage
        # classes with itself as their SCP (role selection, PS3.7 D.3.3.4). pynetdicom
        # accepts the first syntax of this list that a context offers, before any
        # file is known: uncompressed first, since any file can go that way (a
        # compressed one decompressed), while a compressed syntax takes only its own.
        syntaxes = [*UNCOMPRESSED, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in UNCOMPRESSED)]
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is None:
                continue
            ae.add_supported_context(cx.abstract_syntax, syntaxes, scp_role=True, scu_role=False)
        if self.allow_aets:
            ae.require_calling_aet = list(self.allow_aets)
        return ae

    def _handlers(self) -> list[Any]:
        from pynetdicom import evt

        return [
            (evt.EVT_C_ECHO, _echo),
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_C_STORE, _refuse_store),
            (evt.EVT_CONN_OPEN, no_delay),
        ]

    @property
    def db(self) -> LakeConnection:
        """The lake's read-only connection (after :meth:`start`)."""
        if self._db is None:
            raise RuntimeError("the SCP is not started")
        return self._db

    # -- C-FIND

    def _find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        model = _model(event)
        try:
            query = read_find(event.identifier, model)
            with self.db.cursor() as cur:
                for answer in find(cur, query, self.aet):
                    if event.is_cancelled:
                        yield CANCEL, None
                        return
                    yield PENDING, answer
        except BadIdentifier as exc:
            log.warning("C-FIND refused: %s", exc)
            yield IDENTIFIER_MISMATCH, None
            return
        except (QueryTimeout, DicomLakeError) as exc:
            log.warning("C-FIND failed: %s", type(exc).__name__)
            yield UNABLE_TO_PROCESS, None
            return
        yield SUCCESS, None

    # -- C-GET and C-MOVE

    def _select(self, event: Event) -> list[Match]:
        _, pairs = read_retrieve(event.identifier, _model(event))
        with self.db.cursor() as cur:
            return matches(cur, pairs)

    def _get(self, event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
        try:
            found = self._select(event)
        except BadIdentifier as exc:
            log.warning("C-GET refused: %s", exc)
            yield from _refused(IDENTIFIER_MISMATCH)
            return
        except (QueryTimeout, DicomLakeError) as exc:
            log.warning("C-GET failed: %s", type(exc).__name__)
            yield from _refused(UNABLE_TO_PROCESS)
            return
        yield len(found)
        yield from self._send(event, found, event.assoc)

    def _move(self, event: Event) -> Iterator[Any]:
        destination = self.destinations.get(str(event.move_destination or "").strip())
        if destination is None:
            log.warning("C-MOVE to an unknown destination refused (0xA801)")
            yield None, None
            return
        try:
            found = self._select(event)
            error = None
        except BadIdentifier as exc:
            log.warning("C-MOVE refused: %s", exc)
            found, error = [], IDENTIFIER_MISMATCH
        except (QueryTimeout, DicomLakeError) as exc:
            log.warning("C-MOVE failed: %s", type(exc).__name__)
            found, error = [], UNABLE_TO_PROCESS
        # The store association is opened by pynetdicom after the count is yielded;
        # its accepted contexts decide whether a compressed file is decompressed.
        opened = _Opened()
        from pynetdicom import evt

        options: dict[str, Any] = {
            "evt_handlers": [(evt.EVT_ESTABLISHED, opened.seen), (evt.EVT_CONN_OPEN, no_delay)]
        }
        if found:
            options["contexts"] = proposed_contexts(found)
        else:  # the failure is answered over an association pynetdicom opens anyway
            from pynetdicom import build_context

            options["contexts"] = [build_context(VERIFICATION)]
        yield destination.host, destination.port, options
        if error is not None:
            yield from _refused(error)
            return
        yield len(found)
        yield from self._send(event, found, opened.wait())

    def _send(
        self, event: Event, found: list[Match], assoc: Association | None
    ) -> Iterator[tuple[int, Dataset | None]]:
        for match in found:
            if event.is_cancelled:
                yield CANCEL, None
                return
            ds = load(match, storage_options=self.storage_options)
            accepted = assoc.accepted_contexts if assoc is not None else []
            yield PENDING, fit(ds, accepted)


class _Opened:
    """The association a C-MOVE opened to its destination, once established."""

    def __init__(self) -> None:
        self.assoc: Association | None = None
        self._event = threading.Event()

    def seen(self, event: Event) -> None:
        self.assoc = event.assoc
        self._event.set()

    def wait(self) -> Association | None:
        self._event.wait(5.0)
        return self.assoc


def _refused(status: int) -> Iterator[int | tuple[int, Dataset | None]]:
    """A retrieval that fails before any sub-operation: one counted, failed with ``status``.

    pynetdicom wants the number of sub-operations first; a count of 0 would answer
    success, so the failure stands as the one sub-operation that could not start.
    """
    yield 1
    yield status, None


def _model(event: Event) -> str:
    """``patient`` or ``study``: the information model of the request's context."""
    syntax = str(event.context.abstract_syntax)
    return PATIENT_ROOT if syntax in PATIENT_ROOT_MODELS else STUDY_ROOT


def _echo(event: Event) -> int:
    return SUCCESS


def _refuse_store(event: Event) -> int:
    """This SCP answers from the lake; storing into it is ``dicomlake receive``'s job."""
    return STORE_REFUSED
