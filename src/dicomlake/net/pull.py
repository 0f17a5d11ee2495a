"""``dicomlake pull``: C-FIND a PACS, then C-GET or C-MOVE what the lake lacks.

1. Files stored by an earlier, killed pull whose rows were not committed get them
   (:func:`~dicomlake.jobs.store.catch_up`); then the SOP Instance UIDs the lake
   holds with status ``ok`` are read once.
2. C-FIND (Study Root) at STUDY level with the ``--match``/``--since`` keys, then at
   SERIES level per study, then at IMAGE level per series (SOP Instance and SOP
   Class UIDs): what the PACS has, instance by instance.
3. Per series, the instances the lake lacks are retrieved: the whole series when it
   lacks them all, else by a list of SOP Instance UIDs at IMAGE level. C-GET (the
   default) brings them on a second association, where we are the storage SCP for
   the SOP classes the query found, each proposed in its own transfer syntaxes so
   the PACS need not transcode. C-MOVE sends them to a receiver this command runs
   (:class:`~dicomlake.net.receive.Receiver`), named by our AE title: the PACS must
   know that title's address.
4. Every instance goes through the same store and rows as ``dicomlake receive``
   (:class:`~dicomlake.net.receive.InstanceSink`): written atomically before Success
   is answered, its row committed every few seconds and at the end.

A pull killed at any moment loses nothing stored: the next one catches up on the
store, skips what the lake holds and fetches the rest. A peer that rejects, aborts or
does not answer within the timeouts, and a C-MOVE destination the PACS does not know
(0xA801), stop the pull with a :class:`~dicomlake.errors.PeerError` after the rows of
what was stored are committed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from dicomlake.dicom.uids import is_uid
from dicomlake.errors import PeerError
from dicomlake.jobs.store import StoreRows, catch_up
from dicomlake.net.peers import DEFAULT_AET, Peer, TlsFiles, check_ae_title, client_tls
from dicomlake.net.receive import InstanceSink, Receiver, ReceiveSummary, Tally

if TYPE_CHECKING:
    from pydicom import Dataset
    from pynetdicom import AE
    from pynetdicom.association import Association

    from dicomlake._types import StorageOptions

__all__ = ["Pull", "PullSummary", "Timeouts", "lake_sop_instances", "parse_matches"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: SOP Instance UIDs asked for in one IMAGE-level retrieve.
UIDS_PER_RETRIEVE: Final = 100
#: C-MOVE: the PACS does not know the move destination (PS3.4 C.4.2.1.4).
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
#: Transfer syntaxes a C-GET proposes for each SOP class, one context each (the PACS
#: sends a file in its own syntax when one matches): native first, then compressed.
_GET_SYNTAXES: Final = (
    ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"),
    ("1.2.840.10008.1.2.4.50",),
    ("1.2.840.10008.1.2.4.51",),
    ("1.2.840.10008.1.2.4.57",),
    ("1.2.840.10008.1.2.4.70",),
    ("1.2.840.10008.1.2.4.80",),
    ("1.2.840.10008.1.2.4.81",),
    ("1.2.840.10008.1.2.4.90",),
    ("1.2.840.10008.1.2.4.91",),
    ("1.2.840.10008.1.2.5",),
    ("1.2.840.10008.1.2.1.99",),
    ("1.2.840.10008.1.2.2",),
)
_MAX_CONTEXTS: Final = 127  # one is the retrieve model's
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for association answers, each DIMSE answer, and any data.

    ``acse`` also bounds the TCP connect; ``network`` is how long an open association
    may stay silent.
    """

    acse: float = 30.0
    dimse: float = 120.0
    network: float = 120.0


@dataclass(slots=True)
class PullSummary(Tally):
    """What a pull found, fetched, skipped and failed."""

    studies: int = 0
    series: int = 0
    instances: int = 0
    fetched: int = 0
    skipped: int = 0

    @property
    def per_second(self) -> float:
        """Instances fetched per second."""
        seconds = self.seconds
        return self.fetched / seconds if seconds > 0 else 0.0


def parse_matches(pairs: Iterable[str], since: str | None = None) -> dict[str, str]:
    """``KEY=VALUE`` study-level matching keys (DICOM keywords), with ``--since``.

    Raises:
        ValueError: Not ``KEY=VALUE``, an unknown keyword, a key given twice, or a
            date that is not ``YYYY-MM-DD``.

    Example:
        >>> parse_matches(["PatientID=12", "ModalitiesInStudy=CT"], "2024-01-31")
        {'PatientID': '12', 'ModalitiesInStudy': 'CT', 'StudyDate': '20240131-'}
    """
    from pydicom.datadict import tag_for_keyword

    keys: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--match {pair!r}: give KEY=VALUE, e.g. PatientID=12345")
        if tag_for_keyword(key) is None:
            raise ValueError(f"--match {key!r} is not a DICOM keyword (e.g. StudyDate)")
        if key == "QueryRetrieveLevel":
            raise ValueError("--match QueryRetrieveLevel is set by the pull itself")
        if key in keys:
            raise ValueError(f"--match {key} given twice")
        keys[key] = value
    if since is not None:
        found = _DATE.fullmatch(since.strip())
        if found is None:
            raise ValueError(f"--since {since!r} is not a date: give YYYY-MM-DD")
        try:
            day = dt.date(*(int(g) for g in found.groups()))
        except ValueError:
            raise ValueError(f"--since {since!r} is not a valid date") from None
        if "StudyDate" in keys:
            raise ValueError("give --since or --match StudyDate=..., not both")
        keys["StudyDate"] = day.strftime("%Y%m%d") + "-"
    return keys


def lake_sop_instances(lake: str, storage_options: StorageOptions = None) -> set[str]:
    """SOP Instance UIDs of the lake's ``ok`` rows (empty for a lake not made yet).

    Two columns read whole and compared here: the lake's dataset must not be filtered
    on string columns (see :func:`~dicomlake.lake.tables.arrow_dataset`).
    """
    from dicomlake.lake.location import try_open
    from dicomlake.lake.tables import arrow_dataset

    table = try_open(lake, storage_options)
    if table is None:
        return set()
    data = arrow_dataset(table).to_table(columns=["SOPInstanceUID", "status"])
    uids = data.column("SOPInstanceUID").to_pylist()
    statuses = data.column("status").to_pylist()
    return {uid for uid, status in zip(uids, statuses, strict=True) if uid and status == "ok"}


@dataclass(slots=True)
class _Series:
    study: str
    series: str
    instances: dict[str, str]  # SOP Instance UID -> SOP Class UID


class Pull:
    """One ``dicomlake pull`` (see the module's docstring).

    Args:
        peer: The PACS.
        lake: The lake folder or URI.
        store: The local store folder.
        aet: Our AE title (the C-MOVE destination too).
        keys: Study-level matching keys (:func:`parse_matches`).
        move: C-MOVE instead of C-GET.
        move_host: C-MOVE: the address our receiver listens on.
        move_port: C-MOVE: its port.
        timeouts: ACSE, DIMSE and network timeouts.
        tls: TLS files (the PACS's certificate is checked against ``tls.ca``).
        storage_options: The lake's object-storage settings.
        progress: Called now and then with the running summary.
        parallel: C-GET associations at once (series are shared among them): the
            time of one instance is mostly waiting, for the network and the disk.

    Raises:
        ValueError: An AE title or a TLS file is wrong.
    """

    def __init__(
        self,
        peer: Peer,
        lake: str,
        store: str,
        *,
        aet: str = DEFAULT_AET,
        keys: dict[str, str] | None = None,
        move: bool = False,
        move_host: str = "0.0.0.0",
        move_port: int = 11112,
        timeouts: Timeouts | None = None,
        tls: TlsFiles | None = None,
        storage_options: StorageOptions = None,
        progress: Callable[[PullSummary], None] | None = None,
        parallel: int = 2,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.peer = peer
        self.lake = lake
        self.store = os.path.abspath(store)
        self.aet = check_ae_title(aet, what="--aet")
        self.keys = dict(keys or {})
        self.move = move
        self.move_host = move_host
        self.move_port = move_port
        self.timeouts = timeouts or Timeouts()
        self.tls = tls or TlsFiles()
        self.tls_args = client_tls(self.tls, peer.host)
        self.storage_options = storage_options
        self.progress = progress
        self.summary = PullSummary()
        self._received = ReceiveSummary()
        self._pacs: Counter[str] = Counter()  # failure reasons the PACS's statuses gave
        self._lock = threading.Lock()
        self.parallel = parallel

    # -- the run

    def run(self) -> PullSummary:
        """Query, then retrieve what the lake lacks; the summary.

        Raises:
            PeerError: The PACS refused, aborted or did not answer, or does not know
                the C-MOVE destination; what was stored is committed first.
            LakeError: The lake cannot be read or written.
        """
        from pynetdicom import _config

        # identifiers hold patient values: never logged (as the Q/R SCP); pynetdicom
        # would also format each C-FIND answer's lines, a third of the query's time
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self.summary = PullSummary()
        self._received = ReceiveSummary()
        self._pacs = Counter()
        os.makedirs(self.store, exist_ok=True)
        catch_up(self.lake, self.store, self.storage_options)
        held = lake_sop_instances(self.lake, self.storage_options)
        found = self._query()
        wanted: list[tuple[_Series, list[str]]] = []
        for series in found:
            missing = [sop for sop in series.instances if sop not in held]
            self.summary.skipped += len(series.instances) - len(missing)
            if missing:
                wanted.append((series, missing))
        self._report()
        if wanted:
            self._retrieve(wanted)
        self.summary.ended = time.monotonic()
        self._report()
        return self.summary

    def _report(self) -> None:
        self.summary.fetched = self._received.ok
        self.summary.bytes = self._received.bytes
        if self.progress is not None:
            self.progress(self.summary)

    # -- associations

    def _ae(self) -> AE:
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.acse_timeout = self.timeouts.acse
        ae.connection_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        ae.maximum_pdu_size = 4 * 1024 * 1024
        return ae

    def _associate(self, ae: AE, what: str, **kwargs: Any) -> Association:
        from pynetdicom import evt

        from dicomlake.net.peers import no_delay
        from dicomlake.net.receive import quicken

        connected = threading.Event()

        def on_open(event: evt.Event) -> None:
            connected.set()
            no_delay(event)
            quicken(event)

        handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, on_open)]
        began = time.monotonic()
        try:
            assoc = ae.associate(
                self.peer.host,
                self.peer.port,
                ae_title=self.peer.aet,
                tls_args=self.tls_args,
                evt_handlers=handlers,
                **kwargs,
            )
        except OSError as exc:
            raise PeerError(f"cannot connect to {self.peer} for {what}: {exc}") from exc
        if assoc.is_established:
            return assoc
        _close_socket(assoc)
        if not connected.is_set():
            raise PeerError(
                f"cannot connect to {self.peer} for {what}: refused, unreachable, or no "
                f"TCP connection within {self.timeouts.acse:.0f} s"
            )
        if assoc.is_rejected:
            raise PeerError(
                f"{self.peer} rejected the association for {what} (check that it knows "
                f"our AE title {self.aet} and accepts {what})"
            )
        waited = time.monotonic() - began
        if assoc.is_aborted and waited < 0.9 * self.timeouts.acse:
            raise PeerError(f"{self.peer} aborted the association for {what}")
        raise PeerError(
            f"no association with {self.peer} for {what}: no answer within "
            f"{self.timeouts.acse:.0f} s (--acse-timeout)"
        )

    # -- C-FIND

    def _query(self) -> list[_Series]:
        """Studies, their series, their instances, as the PACS lists them.

        Where the PACS also counts them (Number of Study Related Series, Number of
        Series Related Instances), a shorter list is asked for again (twice), then
        the difference counts as failed: nothing goes missing without a word.
        """
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind as Find,
        )

        ae = self._ae()
        ae.add_requested_context(Find)
        assoc = self._associate(ae, "C-FIND")
        more: list[Association] = []
        study_keys = {"StudyInstanceUID": "", "NumberOfStudyRelatedSeries": "", **self.keys}
        try:
            studies = self._find(assoc, Find, "STUDY", study_keys)
            listed = [(study, uid) for study in studies if (uid := _uid(study, "StudyInstanceUID"))]
            self.summary.studies += len(listed)

            def series_of(study: Dataset, study_uid: str, on: Association) -> list[Dataset]:
                series_keys = {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": "",
                    "NumberOfSeriesRelatedInstances": "",
                }
                answers = self._complete(
                    functools.partial(self._find, on, Find, "SERIES", series_keys),
                    _count(study, "NumberOfStudyRelatedSeries"),
                    "series",
                    "SeriesInstanceUID",
                )
                with self._lock:
                    self.summary.series += len(answers)
                return answers

            def instances_of(study_uid: str, answer: Dataset, on: Association) -> _Series:
                series_uid = _uid(answer, "SeriesInstanceUID")
                image_keys = {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series_uid,
                    "SOPInstanceUID": "",
                    "SOPClassUID": "",
                }
                images = self._complete(
                    functools.partial(self._find, on, Find, "IMAGE", image_keys),
                    _count(answer, "NumberOfSeriesRelatedInstances"),
                    "instances",
                    "SOPInstanceUID",
                )
                instances = {_uid(i, "SOPInstanceUID"): _uid(i, "SOPClassUID") for i in images}
                with self._lock:
                    self.summary.instances += len(instances)
                self._report()
                return _Series(study_uid, series_uid, instances)

            # Concurrent C-FINDs only where the PACS counts what it lists: Orthanc
            # 1.x, asked on two associations at once, lists a study's series short
            # about once in 170 queries. A count shows it (and it is asked again);
            # without one, the series would be lost without a word.
            pool = _Pool(self, ae, assoc, more)
            series_lists = pool.map(
                [functools.partial(series_of, study, uid) for study, uid in listed],
                at_once=_counted((study for study, _ in listed), "NumberOfStudyRelatedSeries"),
            )
            self._report()
            found = [
                (uid, answer)
                for (_, uid), answers in zip(listed, series_lists, strict=True)
                for answer in answers
            ]
            return pool.map(
                [functools.partial(instances_of, uid, answer) for uid, answer in found],
                at_once=_counted((answer for _, answer in found), "NumberOfSeriesRelatedInstances"),
            )
        finally:
            for each in (assoc, *more):
                _release(each)

    def _complete(
        self, ask: Callable[[], list[Dataset]], counted: int | None, what: str, key: str
    ) -> list[Dataset]:
        """The answers with a valid ``key`` UID, asked again while fewer than counted."""
        answers: list[Dataset] = []
        for attempt in range(3):
            if attempt:  # again at once (a glitch of concurrent queries), then in 0.5 s
                time.sleep(0.5 * (attempt - 1))
            answers = [a for a in ask() if _uid(a, key)]
            if counted is None or len({_uid(a, key) for a in answers}) >= counted:
                return answers
            log.warning(
                "the PACS listed %d %s where it counts %d (attempt %d)",
                len(answers),
                what,
                counted,
                attempt + 1,
            )
        assert counted is not None
        short = counted - len({_uid(a, key) for a in answers})
        with self._lock:
            self.summary.failed += short
            self.summary.failures[f"{what} the PACS counts but did not list"] += short
        return answers

    def _find(
        self, assoc: Association, model: str, level: str, keys: dict[str, str]
    ) -> list[Dataset]:
        from pydicom import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        answers: list[Dataset] = []
        for status, identifier in assoc.send_c_find(query, model):
            code = _status(status, assoc, self.peer, f"C-FIND at {level} level")
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    answers.append(identifier)
            elif code != 0x0000:
                raise PeerError(
                    f"{self.peer} failed the C-FIND at {level} level (status 0x{code:04X})"
                )
        return answers

    # -- C-GET / C-MOVE

    def _retrieve(self, wanted: list[tuple[_Series, list[str]]]) -> None:
        """Fetch the instances ``wanted`` lacks; count each one that did not arrive.

        An instance counts as failed when it was asked for and is not stored with an
        ``ok`` row at the end, whatever the PACS's statuses said; the reasons are our
        storage side's refusals, then the PACS's failure statuses, then "asked for,
        not received".
        """
        rows = StoreRows(self.lake, self.store, storage_options=self.storage_options)
        sink = InstanceSink(self.store, rows, summary=self._received, track=True)
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(rows, stop), daemon=True)
        ticker.start()
        try:
            if self.move:
                self._move_all(wanted, sink)
            else:
                self._get_all(wanted, sink)
        finally:
            stop.set()
            ticker.join()
            rows.close()
            self._report()
        recorded = lake_sop_instances(self.lake, self.storage_options)
        unrecorded = len(sink.stored - recorded)
        if unrecorded:
            log.error("%d stored instances have no ok row in the lake", unrecorded)
        got = sink.stored & recorded
        lacking = sum(1 for _, missing in wanted for sop in missing if sop not in got)
        self.summary.failed += lacking
        left = lacking
        for reasons, prefix in ((self._received.failures, "refused here: "), (self._pacs, "")):
            for reason, count in reasons.most_common():
                taken = min(count, left)
                if taken:
                    self.summary.failures[prefix + reason] += taken
                    left -= taken
        if left:
            self.summary.failures["asked for, not received"] += left

    def _tick(self, rows: StoreRows, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            try:
                rows.commit_if_due()
            except Exception as exc:  # the rows stay buffered; close() tries again
                log.error("cannot commit to the lake: %s", exc)
            self._report()

    def _requests(
        self, wanted: list[tuple[_Series, list[str]]]
    ) -> Iterator[tuple[_Series, list[str], Dataset]]:
        """The retrieve identifiers: a whole series, or lists of its instances."""
        from pydicom import Dataset

        for series, missing in wanted:
            if len(missing) == len(series.instances):
                chunks: list[list[str] | None] = [None]
            else:
                chunks = [
                    missing[i : i + UIDS_PER_RETRIEVE]
                    for i in range(0, len(missing), UIDS_PER_RETRIEVE)
                ]
            for chunk in chunks:
                query = Dataset()
                query.StudyInstanceUID = series.study
                query.SeriesInstanceUID = series.series
                if chunk is None:
                    query.QueryRetrieveLevel = "SERIES"
                    yield series, missing, query
                else:
                    query.QueryRetrieveLevel = "IMAGE"
                    query.SOPInstanceUID = chunk if len(chunk) > 1 else chunk[0]
                    yield series, chunk, query

    def _get_all(self, wanted: list[tuple[_Series, list[str]]], sink: InstanceSink) -> None:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelGet as Get,
        )

        classes = sorted({c for s, _ in wanted for c in s.instances.values() if is_uid(c)})
        ae = self._ae()
        ae.add_requested_context(Get)
        per_class = [list(t) for t in _GET_SYNTAXES]
        if len(classes) * len(per_class) > _MAX_CONTEXTS:  # one context a class, all syntaxes
            per_class = [[ts for group in _GET_SYNTAXES for ts in group]]
        for sop_class in classes[:_MAX_CONTEXTS]:
            for syntaxes in per_class:
                ae.add_requested_context(sop_class, syntaxes)
        if len(classes) > _MAX_CONTEXTS:
            log.warning("more SOP classes than presentation contexts; some may fail")
        roles = [build_role(c, scp_role=True) for c in classes[:_MAX_CONTEXTS]]
        requests = list(self._requests(wanted))

        def get(assoc: Association, request: tuple[_Series, list[str], Dataset]) -> None:
            _series, asked, query = request
            level = query.QueryRetrieveLevel
            responses = assoc.send_c_get(query, Get)
            self._retrieve_one(responses, assoc, f"C-GET at {level} level", len(asked))
            self._report()

        associations: list[Association] = []
        try:
            for _ in range(min(self.parallel, len(requests))):
                handlers = [(evt.EVT_C_STORE, sink.handle_store)]
                associations.append(
                    self._associate(ae, "C-GET", ext_neg=roles, evt_handlers=handlers)
                )
        except PeerError:
            if not associations:
                raise
            log.warning("%s took %d C-GET associations at once", self.peer, len(associations))
        _share(associations, requests, get, release=True)

    def _move_all(self, wanted: list[tuple[_Series, list[str]]], sink: InstanceSink) -> None:
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelMove as Move,
        )

        receiver = Receiver(
            self.lake,
            self.store,
            aet=self.aet,
            host=self.move_host,
            port=self.move_port,
            allow_aets=[self.peer.aet],
            sink=sink,
        )
        try:
            receiver.start()
        except OSError as exc:
            raise PeerError(
                f"cannot listen on {self.move_host}:{self.move_port} for the C-MOVE: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            ae = self._ae()
            ae.add_requested_context(Move)
            assoc = self._associate(ae, "C-MOVE")
            try:
                for _series, asked, query in self._requests(wanted):
                    level = query.QueryRetrieveLevel
                    responses = assoc.send_c_move(query, self.aet, Move)
                    self._retrieve_one(responses, assoc, f"C-MOVE at {level} level", len(asked))
                    self._report()
            finally:
                _release(assoc)
        finally:
            receiver.stop()

    def _retrieve_one(
        self,
        responses: Iterable[tuple[Dataset, Dataset | None]],
        assoc: Association,
        what: str,
        asked: int,
    ) -> None:
        """Follow one retrieve's responses; note what the PACS says failed, and why.

        The counts are settled at the end from what arrived (see :meth:`_retrieve`).
        """
        final: Dataset | None = None
        for status, _identifier in responses:
            code = _status(status, assoc, self.peer, what)
            if code == MOVE_DESTINATION_UNKNOWN:
                raise PeerError(
                    f"{self.peer} does not know the C-MOVE destination {self.aet} (0xA801): "
                    f"add {self.aet} with this host and port {self.move_port} to its "
                    "DICOM modalities, or pull with --get"
                )
            if code in (0xFF00, 0xFF01):
                continue
            final = status
            if self.move and code & 0xF000 in (0xA000, 0xC000) and not _suboperations(status):
                # Orthanc, for one, answers 0xC000 and sends nothing for an AE title
                # it does not know; every other C-MOVE of the pull would fail alike
                raise PeerError(
                    f"{self.peer} refused the {what} before sending anything (status "
                    f"0x{code:04X}): does it know the C-MOVE destination {self.aet} "
                    f"at this host, port {self.move_port}? Or pull with --get"
                )
        if final is None:
            raise PeerError(f"{self.peer} ended the {what} without a final status")
        code = int(final.Status)
        if code != 0x0000:
            failed = int(getattr(final, "NumberOfFailedSuboperations", 0) or 0)
            with self._lock:
                self._pacs[f"{what}: status 0x{code:04X}"] += failed or asked


class _Pool:
    """C-FINDs on up to ``pull.parallel`` associations at once, answers in order.

    The PACS answers a C-FIND after its own lookup (Orthanc: about 20 ms for a
    series' instances); one association waited for each in turn. Associations beyond
    the first open when there are tasks for them; a PACS that refuses one leaves the
    work to those it took. The first error stops the other workers and is raised.
    """

    def __init__(self, pull: Pull, ae: AE, first: Association, more: list[Association]) -> None:
        self.pull = pull
        self.ae = ae
        self.first = first
        self.more = more  # opened here, released by the caller

    def map(self, tasks: list[Callable[[Association], _T]], *, at_once: bool) -> list[_T]:
        """Each task's result, called with an association of its own at that time.

        Without ``at_once``, the tasks run one after another on the first association.
        """
        if not at_once:
            return [task(self.first) for task in tasks]
        wanted = min(self.pull.parallel, len(tasks)) - 1 - len(self.more)
        try:
            for _ in range(max(0, wanted)):
                self.more.append(self.pull._associate(self.ae, "C-FIND"))
        except PeerError:
            log.warning(
                "%s took %d C-FIND associations at once", self.pull.peer, 1 + len(self.more)
            )
        associations = [self.first, *self.more][: max(1, len(tasks))]
        if len(associations) == 1:
            return [task(self.first) for task in tasks]
        results: list[Any] = [None] * len(tasks)

        def run(assoc: Association, index: int) -> None:
            results[index] = tasks[index](assoc)

        _share(associations, range(len(tasks)), run)
        return results


def _share(
    associations: list[Association],
    items: Iterable[_T],
    do: Callable[[Association, _T], None],
    *,
    release: bool = False,
) -> None:
    """``do(association, item)`` for every item, a thread per association taking the next.

    The first error stops every thread and is raised here. With ``release``, each
    association is released when its thread ends.
    """
    todo: queue.SimpleQueue[_T] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    errors: list[BaseException] = []

    def work(assoc: Association) -> None:
        try:
            while not errors:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                do(assoc, item)
        except BaseException as exc:  # the first error stops every worker
            errors.append(exc)
        finally:
            if release:
                _release(assoc)

    workers = [threading.Thread(target=work, args=(a,), daemon=True) for a in associations]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _suboperations(status: Dataset) -> int:
    """Sub-operations a final retrieve status says were done (completed, failed, warned)."""
    return sum(
        int(status.get(keyword, 0) or 0)
        for keyword in (
            "NumberOfCompletedSuboperations",
            "NumberOfFailedSuboperations",
            "NumberOfWarningSuboperations",
        )
    )


def _count(ds: Dataset, keyword: str) -> int | None:
    """An IS count of a C-FIND answer (None when absent or not a number)."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _counted(answers: Iterable[Dataset], keyword: str) -> bool:
    """Whether every answer gives the count ``keyword`` (what it holds a level down)."""
    return all(_count(answer, keyword) is not None for answer in answers)


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip("\0 ")
    return value if is_uid(value) else ""


def _status(status: Dataset | None, assoc: Association, peer: Peer, what: str) -> int:
    """The status code of a response; a lost association or no answer is an error.

    pynetdicom answers an empty status for all three (an abort, a closed connection,
    the DIMSE timeout); its reactor marks which a moment later.
    """
    if status is not None and "Status" in status:
        return int(status.Status)
    deadline = time.monotonic() + 1.0
    while assoc.is_established and not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    if assoc.is_aborted or assoc.acse.is_aborted("a-abort"):
        raise PeerError(f"{peer} aborted the association during the {what}")
    if assoc.acse.is_aborted("a-p-abort") or not assoc.is_established:
        raise PeerError(f"the connection to {peer} closed during the {what}")
    raise PeerError(f"{peer} did not answer the {what} within the DIMSE timeout")


def _close_socket(assoc: Association) -> None:
    """Close the socket of an association that failed (pynetdicom leaves it open)."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    inner = getattr(sock, "socket", None)
    if inner is not None:
        with contextlib.suppress(OSError):
            inner.close()


def _release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
