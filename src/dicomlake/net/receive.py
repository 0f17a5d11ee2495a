"""A C-ECHO and C-STORE SCP that writes what it receives into a store folder and the lake.

:class:`Receiver` runs pynetdicom's server in background threads (``start`` and
``stop``: the ``dicomlake receive`` command, the tests, and ``dicomlake pull --move``,
whose PACS sends here). :class:`InstanceSink` is the storage half on its own: the
C-STORE handler that ``dicomlake pull`` binds to its C-GET association.

What one C-STORE does (:meth:`InstanceSink.handle_store`):

1. The data set is taken as the peer encoded it (``event.encoded_dataset()``: the
   128-byte preamble, ``DICM``, a file meta group naming the negotiated transfer
   syntax, then the bytes received, never decoded and encoded again).
2. Its Study, Series and SOP Instance UIDs are read (pydicom, stopping after
   (0020,000E)); a data set that does not decode, or whose UIDs are missing, invalid
   (no path can be smuggled in) or disagree with the request, is refused with 0xC210
   or 0xA900 and leaves an ``error`` row whose ``path`` is
   ``dimse://<calling AE>/<SOP Instance UID>`` (no file: nothing was stored).
3. The file is written atomically to ``<store>/<study>/<series>/<sop>.dcm``
   (:func:`dicomlake.jobs.store.write_part`: temporary file and fsync, outside the
   store's lock so that associations at once sync together, then
   :func:`~dicomlake.jobs.store.place_part`: the rename, holding it). A full
   disk is answered 0xA700 and leaves nothing behind; only a file on disk is answered
   Success. A copy of the same SOP Instance UID under another study or series is
   removed, file and row.
4. The file's row is made as ingest makes it and buffered; rows are committed every
   few seconds (:class:`~dicomlake.jobs.store.StoreRows`). A row that is not ``ok``
   (the header does not decode after all) is answered 0xC210; the file stays, so
   its error row names bytes one can look at.

Files stored but not yet committed when a receiver is killed get their rows when it
starts again (:func:`~dicomlake.jobs.store.catch_up`: an incremental ingest of the
store). Logs name AE titles, UIDs-free reasons and files; never a value of a data set.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import queue
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from dicomlake.dicom.uids import is_uid
from dicomlake.errors import DiskFull
from dicomlake.jobs.store import (
    StoreIndex,
    StoreRows,
    catch_up,
    instance_path,
    place_part,
    remove_files,
    store_lock,
    write_file,
    write_part,
)
from dicomlake.net.peers import DEFAULT_AET, TlsFiles, check_ae_title, no_delay, server_tls

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from dicomlake._types import StorageOptions

__all__ = [
    "CANNOT_UNDERSTAND",
    "DEFAULT_PORT",
    "DOES_NOT_MATCH",
    "OUT_OF_RESOURCES",
    "SUCCESS",
    "InstanceSink",
    "ReceiveSummary",
    "Receiver",
    "storage_contexts",
]

log = logging.getLogger(__name__)

#: The port ``dicomlake receive`` listens on by default (the registered DICOM port
#: 104 needs root; 11112 is the IANA port of DICOM).
DEFAULT_PORT: Final = 11112

# C-STORE statuses (PS3.4 table B.2-1)
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700  # the disk is full, or the file cannot be written
DOES_NOT_MATCH: Final = 0xA900  # data set does not match SOP class (UIDs missing/wrong)
CANNOT_UNDERSTAND: Final = 0xC210  # the data set does not decode

#: Largest PDU the receiver announces: big PDUs cut pynetdicom's per-PDU overhead.
MAX_PDU: Final = 4 * 1024 * 1024
#: Associations served at once.
MAX_ASSOCIATIONS: Final = 32
_LAST_UID_TAG: Final = 0x0020000E  # Series Instance UID: the header is read up to it
#: Seconds pynetdicom's DUL thread sleeps when it finds nothing to do (its own default
#: is 1 ms). Each C-STORE waits for that loop twice (the request read, the response
#: sent): at 1 ms those naps were about a third of a receive's time per instance. An
#: association left idle costs a few per cent of a core at this value.
LOOP_DELAY: Final = 0.0002
#: Seconds an acceptor's reactor waits on its message queue between its checks for a
#: release or an abort (pynetdicom's loop sleeps 1 ms, then only peeks at the queue).
_MESSAGE_WAIT: Final = 0.005
#: An acceptor idle this many seconds naps pynetdicom's 1 ms again until a request.
_IDLE_AFTER: Final = 1.0
_IDLE_DELAY: Final = 0.001


@dataclass(slots=True)
class Tally:
    """What receivers and pulls both count: failures (by reason), bytes, and the clock."""

    failed: int = 0
    bytes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def seconds(self) -> float:
        """Seconds since the start (until the end, once ended)."""
        return (self.ended or time.monotonic()) - self.started


@dataclass(slots=True)
class ReceiveSummary(Tally):
    """What a receiver (or a pull's storage side) took in so far."""

    received: int = 0
    ok: int = 0
    #: Instances the store already held (sent again, or moved to another series):
    #: their file and row were replaced, so ``ok`` counts more than the store holds.
    replaced: int = 0
    associations: int = 0
    rejected: int = 0
    committed: int = 0
    caught_up: int = 0
    #: When the first and the latest instance arrived (monotonic clock).
    first_at: float | None = None
    last_at: float | None = None

    def mark(self) -> None:
        """Note an instance's arrival (callers hold the summary's lock)."""
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    @property
    def per_second(self) -> float:
        """Instances received per second, from the first instance to the latest.

        A receiver waits most of its life; its rate is that of the instances' arrival.
        """
        if self.first_at is None or self.last_at is None or self.received < 2:
            return 0.0
        seconds = self.last_at - self.first_at
        return (self.received - 1) / seconds if seconds > 0 else 0.0


def storage_contexts() -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) an SCP accepts: every storage class, every syntax.

    pynetdicom's :data:`~pynetdicom.AllStoragePresentationContexts` and the retired
    storage classes of pydicom's UID dictionary (old ultrasound, nuclear medicine and
    print files still live in archives), with all the transfer syntaxes pynetdicom
    knows (native, deflated, JPEG, JPEG-LS, JPEG 2000, RLE, HTJ2K, MPEG and HEVC
    video): whatever the peer proposes for a storage class is accepted as it is, so
    files arrive in their own transfer syntax.
    """
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, register_uid
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    known = set(classes)
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if (
            kind == "SOP Class"
            and name.endswith("Storage")
            and "Commitment" not in name
            and "Directory" not in name
            and uid not in known
        ):
            if uid_to_service_class(uid) is not StorageServiceClass:
                # the C-STORE of a class pynetdicom does not know would abort the
                # association: it is told that it belongs to the storage service
                register_uid(
                    uid, keyword or f"Storage_{uid.replace('.', '_')}", StorageServiceClass
                )
            classes.append(str(uid))
            known.add(str(uid))
    return [(uid, list(ALL_TRANSFER_SYNTAXES)) for uid in classes]


class _Refused(Exception):
    """A data set refused before it reached the store: its status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_UID_TAGS: Final = (
    ("StudyInstanceUID", "0020000D"),
    ("SeriesInstanceUID", "0020000E"),
    ("SOPInstanceUID", "00080018"),
)


def dataset_uids(data: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of an encoded file, each checked.

    The native parser reads them when it takes the file (a tenth of a millisecond);
    otherwise pydicom reads the header up to (0020,000E).

    Raises:
        _Refused: The header does not decode (0xC210), or a UID is missing or not a
            UID (0xA900).
    """
    values = _native_uids(data)
    if values is None:
        values = _pydicom_uids(data)
    for (keyword, _), value in zip(_UID_TAGS, values, strict=True):
        if not value:
            raise _Refused(DOES_NOT_MATCH, f"no {keyword}")
        if not is_uid(value):
            raise _Refused(DOES_NOT_MATCH, f"{keyword} is not a valid UID")
    return values[0], values[1], values[2]


def _native_uids(data: bytes) -> list[str] | None:
    from dicomlake.dicom import native

    try:
        header = native.parse_file(data, uri="", decode_meta=False)
    except Exception:  # a header past the limits: pydicom reads only its first part
        return None
    if header == "truncated":  # the header ends inside an element: nothing decodes it
        raise _Refused(CANNOT_UNDERSTAND, "the data set ends inside its header")
    if isinstance(header, str):
        return None
    promoted = header.promoted or {}
    return ["\\".join(map(str, promoted.get(tag, {}).get("Value") or [])) for _, tag in _UID_TAGS]


def _pydicom_uids(data: bytes) -> list[str]:
    from pydicom import config
    from pydicom.filereader import read_partial

    try:
        with config.disable_value_validation():  # no value may reach a log
            ds = read_partial(
                io.BytesIO(data), stop_when=lambda tag, vr, length: tag > _LAST_UID_TAG
            )
            return [str(ds.get(keyword, "") or "").strip("\0 ") for keyword, _ in _UID_TAGS]
    except Exception as exc:  # pydicom raises many kinds on a damaged data set
        log.debug("data set does not decode: %s", type(exc).__name__)
        raise _Refused(CANNOT_UNDERSTAND, "the data set does not decode") from None


_PREAMBLE: Final = b"\0" * 128 + b"DICM"
_LONG_VRS: Final = frozenset({b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"})


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One (0002,eeee) element, explicit VR little endian; ``value`` already padded."""
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


@functools.cache
def _implementation() -> bytes:
    """The (0002,0012) and (0002,0013) elements: pynetdicom's implementation UID, version."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    return _element(0x0012, b"UI", _padded(str(PYNETDICOM_IMPLEMENTATION_UID), b"\0")) + (
        _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" "))
    )


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes | None:
    """The preamble, ``DICM`` and file meta group of a received data set, or None.

    The bytes pynetdicom's ``event.encoded_dataset(include_meta=True)`` puts before
    the data set (pydicom writing ``event.file_meta``), made here in microseconds:
    group length, version 00 01, the request's SOP class and instance, the context's
    transfer syntax, pynetdicom's implementation UID and version. None when a value
    is not a plain UID (digits and dots), which pydicom may encode its own way: the
    caller then lets pynetdicom write it.

    Example:
        >>> head = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")
        >>> head[128:132], len(head) == 132 + 12 + int.from_bytes(head[140:144], "little")
        (b'DICM', True)
    """
    if not (is_uid(sop_class) and is_uid(sop_instance) and is_uid(transfer_syntax)):
        return None
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\0\1"),
            _element(0x0002, b"UI", _padded(sop_class, b"\0")),
            _element(0x0003, b"UI", _padded(sop_instance, b"\0")),
            _element(0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _implementation(),
        )
    )
    return _PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(elements))) + elements


def encoded_file(event: Event) -> bytes:
    """A C-STORE's data set as a PS3.10 file: the file meta group, then the bytes received.

    Equal to ``event.encoded_dataset(include_meta=True)``, whose pydicom encoding of
    the file meta takes most of a millisecond; that path still makes what
    :func:`file_meta` declines.

    Raises:
        AttributeError: The event is not a C-STORE (as pynetdicom raises).
    """
    request: Any = event.request
    try:
        stream: bytes = request.DataSet.getvalue()
        head = file_meta(
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
            str(event.context.transfer_syntax or ""),
        )
    except AttributeError:
        head = None
    if head is None:
        return event.encoded_dataset(include_meta=True)
    return head + stream


class InstanceSink:
    """The storage half of an SCP: C-STORE data sets into the store folder and rows.

    Thread-safe: pynetdicom calls :meth:`handle_store` on each association's thread.

    Args:
        root: The store folder (made absolute, created).
        rows: Where the rows of stored files go.
        on_stored: Called after each C-STORE with its status (progress displays).
        track: Keep the SOP Instance UIDs stored in :attr:`stored` (a pull checks
            that it got every instance it asked for).
    """

    def __init__(
        self,
        root: str,
        rows: StoreRows,
        *,
        summary: ReceiveSummary | None = None,
        on_stored: Callable[[int], None] | None = None,
        track: bool = False,
    ) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.rows = rows
        self.index = StoreIndex(self.root)
        self.summary = summary or ReceiveSummary()
        self._on_stored = on_stored
        self._count = threading.Lock()
        self._track = track
        #: SOP Instance UIDs stored with an ``ok`` row (with ``track``).
        self.stored: set[str] = set()

    def handle_store(self, event: Event) -> int:
        """Pynetdicom's ``EVT_C_STORE`` handler: store, make the row, answer a status."""
        calling = _calling_aet(event)
        request_sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            status = self._store(event, request_sop)
        except _Refused as refused:
            status = refused.status
            log.warning(
                "C-STORE from %s refused (0x%04X): %s", calling, refused.status, refused.reason
            )
            self._error_row(calling, request_sop, refused.reason)
            self._tally(status, refused.reason)
        except Exception:  # one bad instance never stops the receiver
            log.exception("C-STORE from %s failed", calling)
            status = OUT_OF_RESOURCES
            self._tally(status, "internal error")
        if self._on_stored is not None:
            self._on_stored(status)
        return status

    def _store(self, event: Event, request_sop: str) -> int:
        try:
            data = encoded_file(event)
        except Exception:
            raise _Refused(CANNOT_UNDERSTAND, "the data set cannot be read") from None
        study, series, sop = dataset_uids(data)
        if request_sop and sop != request_sop:
            raise _Refused(
                DOES_NOT_MATCH, "SOPInstanceUID differs from the request's Affected SOP Instance"
            )
        target = instance_path(self.root, study, series, sop)
        part: str | None = None
        try:
            # written and fsynced before the lock: associations at once sync together
            part = write_part(self.root, data)
            with store_lock(self.root):
                again = os.path.exists(target)
                try:
                    place_part(part, target)
                except FileNotFoundError:  # a process starting on the store purged it
                    write_file(self.root, target, data)
                part = None
                old = self.index.place(sop, target)
                if old is not None:
                    remove_files([old])
        except DiskFull:
            log.error("C-STORE: the disk of %s is full; instance not stored", self.root)
            self._tally(OUT_OF_RESOURCES, "DiskFull")
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("C-STORE: cannot write into %s: %s", self.root, exc.strerror or exc)
            self._tally(OUT_OF_RESOURCES, type(exc).__name__)
            return OUT_OF_RESOURCES
        finally:
            if part is not None:  # the lock could not be taken: the .part goes
                with contextlib.suppress(OSError):
                    os.unlink(part)
        if old is not None:
            self.rows.remove(old)
        stored = self.rows.add(target)
        if stored.status != "ok":
            log.warning("C-STORE: stored %s, but its row is %s", target, stored.status)
            self._tally(CANNOT_UNDERSTAND, (stored.error or stored.status).split(":", 1)[0])
            return CANNOT_UNDERSTAND
        with self._count:
            self.summary.mark()
            self.summary.received += 1
            self.summary.ok += 1
            self.summary.bytes += len(data)
            if old is not None or again:
                self.summary.replaced += 1
            if self._track:
                self.stored.add(sop)
        return SUCCESS

    def _tally(self, status: int, reason: str) -> None:
        with self._count:
            self.summary.mark()
            self.summary.received += 1
            self.summary.failed += 1
            self.summary.failures[f"0x{status:04X} {reason}"] += 1

    def _error_row(self, calling: str, sop: str, reason: str) -> None:
        """The error row of a data set refused before the store (no file)."""
        from dicomlake.catalog.refs import FileRef

        name = sop if is_uid(sop) else "unknown-" + os.urandom(6).hex()
        aet = urllib.parse.quote(calling or "unknown", safe="")
        path = f"dimse://{aet}/{name}"
        try:
            self.rows.add_error(FileRef(path, name, None, None), reason)
        except Exception:
            log.exception("cannot record the refused data set's error row")


class Receiver:
    """``dicomlake receive``: a C-ECHO and C-STORE SCP over a store folder and a lake.

    Args:
        lake: The lake folder or URI the rows go to.
        store: The local folder the files go to (created).
        aet: This SCP's AE title (1 to 16 characters).
        host: Address to listen on (loopback by default).
        port: TCP port; 0 picks a free one (see :attr:`port` once started).
        allow_aets: When given, only these calling AE titles may associate; others
            are rejected (``calling AE title not recognised``).
        tls: ``--tls-cert/--tls-key/--tls-ca`` (TLS when any is given).
        commit_seconds: Rows are committed at least this often.
        thumbnails: Draw thumbnails too (None: when the lake has that table).
        storage_options: The lake's object-storage settings.
        progress: Called about twice a second with the running summary.
        sink: Store into this sink (and its rows) instead of one of its own, which
            ``start`` would make after catching up on the store; the caller then
            commits and closes its rows (``dicomlake pull --move``).

    Raises:
        ValueError: An AE title, the port or a TLS file is wrong.
    """

    def __init__(
        self,
        lake: str,
        store: str,
        *,
        aet: str = DEFAULT_AET,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allow_aets: Sequence[str] = (),
        tls: TlsFiles | None = None,
        commit_seconds: float = 2.0,
        thumbnails: bool | None = None,
        storage_options: StorageOptions = None,
        progress: Callable[[ReceiveSummary], None] | None = None,
        sink: InstanceSink | None = None,
    ) -> None:
        self.lake = lake
        self.store = os.path.abspath(store)
        self.aet = check_ae_title(aet, what="--aet")
        self.allow_aets = [check_ae_title(a, what="--allow-aet") for a in allow_aets]
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not between 0 and 65535")
        self.host = host
        self._port = port
        self.ssl_context = server_tls(tls or TlsFiles())
        self.commit_seconds = commit_seconds
        self.thumbnails = thumbnails
        self.storage_options = storage_options
        self.progress = progress
        self.summary = sink.summary if sink is not None else ReceiveSummary()
        self.sink: InstanceSink | None = sink
        self._own_sink = sink is None
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        #: The last error of a background commit (the rows stay buffered).
        self.commit_error: BaseException | None = None
        #: Whether ``start`` is ingesting earlier runs' files (the long part of a start).
        self.catching_up = False

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when 0 was asked for)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    def start(self) -> Receiver:
        """Catch up on files stored earlier, then listen; returns at once.

        Raises:
            LakeError: The lake cannot be read or written.
            OSError: The port cannot be bound.
        """
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        os.makedirs(self.store, exist_ok=True)
        if self._own_sink:
            self.catching_up = True
            try:
                self.summary.caught_up = catch_up(self.lake, self.store, self.storage_options)
            finally:
                self.catching_up = False
            rows = StoreRows(
                self.lake,
                self.store,
                thumbnails=self.thumbnails,
                commit_seconds=self.commit_seconds,
                storage_options=self.storage_options,
            )
            self.sink = InstanceSink(self.store, rows, summary=self.summary)
        assert self.sink is not None
        rows = self.sink.rows
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.add_supported_context(Verification)
        for abstract, syntaxes in storage_contexts():
            ae.add_supported_context(abstract, syntaxes)
        if self.allow_aets:
            ae.require_calling_aet = self.allow_aets
        handlers = [
            (evt.EVT_C_STORE, self.sink.handle_store),
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            self._server = ae.start_server(
                (self.host, self._port),
                block=False,
                evt_handlers=handlers,  # type: ignore[arg-type]
                ssl_context=self.ssl_context,
            )
        except BaseException:
            if self._own_sink:
                rows.close()
            raise
        self._ae = ae
        self._stop.clear()
        if self._own_sink:
            self.summary.started = time.monotonic()
            self._ticker = threading.Thread(target=self._tick, name="dicomlake-commit", daemon=True)
            self._ticker.start()
        log.info("receiving as %s on %s:%d into %s", self.aet, self.host, self.port, self.store)
        return self

    def _on_open(self, event: Event) -> None:
        no_delay(event)
        quicken(event, acceptor=True)
        with self._lock_summary():
            self.summary.associations += 1

    def _on_rejected(self, event: Event) -> None:
        with self._lock_summary():
            self.summary.rejected += 1
        log.warning("association from %s rejected", _calling_aet(event))

    def _lock_summary(self) -> threading.Lock:
        assert self.sink is not None
        return self.sink._count

    def _tick(self) -> None:
        """Commit what is due and show progress, until stopped."""
        assert self.sink is not None
        while not self._stop.wait(0.25):
            try:
                self.sink.rows.commit_if_due()
                self.commit_error = None
            except Exception as exc:  # the rows stay buffered; the next tick tries again
                if self.commit_error is None:
                    log.error("cannot commit to the lake: %s", exc)
                self.commit_error = exc
            self.summary.committed = self.sink.rows.counts.committed
            if self.progress is not None:
                self.progress(self.summary)

    def stop(self) -> ReceiveSummary:
        """Stop listening, end open associations, commit every buffered row.

        Raises:
            LakeError: The last commit failed (the files are on disk: the next
                ``receive`` or an ``ingest`` of the store brings them in).
        """
        self._stop.set()
        if self._server is not None and self._ae is not None:
            listening = self._server.socket
            if listening is not None:
                with contextlib.suppress(OSError):  # already closed
                    # no association from now on; this also wakes the server's loop,
                    # which would otherwise see the shutdown at its next poll (0.5 s)
                    listening.shutdown(socket.SHUT_RDWR)
            self._ae.shutdown()
        if self._ticker is not None:
            self._ticker.join()
        self._server = self._ae = self._ticker = None
        if not self._own_sink:
            return self.summary
        if self.summary.ended is None:
            self.summary.ended = time.monotonic()
        if self.sink is not None:
            try:
                self.sink.rows.close()
            finally:
                self.summary.committed = self.sink.rows.counts.committed
        return self.summary

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handle_echo(event: Event) -> int:
    return SUCCESS


def _calling_aet(event: Event) -> str:
    """The calling AE title of an event's association, without padding."""
    title = event.assoc.requestor.ae_title
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def quicken(event: Event, *, acceptor: bool = False) -> None:
    """Shorten pynetdicom's polling naps on an association (``EVT_CONN_OPEN``).

    Its DUL thread then naps :data:`LOOP_DELAY` instead of 1 ms when idle, and,
    unless pynetdicom's logger is on for INFO, the association does without its
    standard DIMSE logging handlers (their lines would go nowhere). With
    ``acceptor`` (an association a peer opened to us, on which we only answer), its
    reactor also waits on the message queue instead of finding a message only after
    its next 1 ms nap: a request is served as soon as it is decoded, and its DUL
    naps 1 ms again while no request came for a second. Not for an
    association that sends requests itself: pynetdicom pauses the reactor before
    each request, which a reactor waiting on the queue would answer late.
    """
    dul = getattr(event.assoc, "dul", None)
    if dul is None or not hasattr(dul, "_run_loop_delay"):
        return  # a test double, or a pynetdicom that changed
    dul._run_loop_delay = LOOP_DELAY
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard handlers format every message's log lines (a tenth
        # of a millisecond each, through pydicom) even when no one logs them
        from pynetdicom import evt
        from pynetdicom._handlers import standard_dimse_recv_handler, standard_dimse_sent_handler

        event.assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
        event.assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)
    dimse = getattr(event.assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    if acceptor and isinstance(messages, queue.Queue):
        dimse.get_msg = _Reactor(dul, messages, dimse.get_msg)  # type: ignore[union-attr]


class _Reactor:
    """An acceptor's ``DIMSEServiceProvider.get_msg``: a non-blocking peek waits a little.

    It also sets the DUL thread's nap: :data:`LOOP_DELAY` from a request on, back
    to pynetdicom's 1 ms once none came for :data:`_IDLE_AFTER` seconds (an
    association left open costs little while it waits).
    """

    def __init__(self, dul: Any, messages: queue.Queue[Any], get: Callable[..., Any]) -> None:
        self.dul = dul
        self.messages = messages
        self.get = get
        self.last = time.monotonic()

    def __call__(self, block: bool = False) -> Any:
        if block:
            return self.get(block=True)
        try:
            item = self.messages.get(timeout=_MESSAGE_WAIT)
        except queue.Empty:
            if time.monotonic() - self.last > _IDLE_AFTER:
                self.dul._run_loop_delay = _IDLE_DELAY
            return None, None
        self.last = time.monotonic()
        self.dul._run_loop_delay = LOOP_DELAY
        return item
