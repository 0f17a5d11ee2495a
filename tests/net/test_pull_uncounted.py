"""``dicomlake pull`` from a PACS that lists short, or does not count what it lists.

A PACS asked on several associations at once was seen to list short (Orthanc, about
one series-level query in 170). Where its C-FIND answers count what they hold
(Number of Study Related Series, Number of Series Related Instances), a short
listing is asked again, and what stays missing counts as failed. Without counts it
cannot be noticed, so pull asks one C-FIND at a time. The PACS here is
pynetdicom's, answering from files.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicomlake.net.peers import Peer
from dicomlake.net.pull import Pull
from helpers.dimse import lake_sops, make_studies

_LEVEL_KEYS = {
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"),
}


class _UncountingPacs:
    """A Q/R SCP over ``files`` whose answers carry no counts; it notes C-FIND overlap.

    With ``counts``, study answers count their series; the first ``short`` series
    queries then leave one series out.
    """

    def __init__(self, files: list[Path], *, counts: bool = False, short: int = 0) -> None:
        self.datasets = [pydicom.dcmread(path) for path in files]
        self.counts = counts
        self.short = short
        self.finding = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def _matches(self, query: pydicom.Dataset) -> list[pydicom.Dataset]:
        keys = _LEVEL_KEYS[str(query.QueryRetrieveLevel)]
        seen: dict[tuple[str, ...], pydicom.Dataset] = {}
        for ds in self.datasets:
            wanted = [str(query.get(k, "") or "") for k in keys]
            values = [str(ds.get(k, "")) for k in keys]
            if all(w in ("", v) for w, v in zip(wanted, values, strict=True)):
                answer = pydicom.Dataset()
                answer.QueryRetrieveLevel = query.QueryRetrieveLevel
                for keyword, value in zip(keys, values, strict=True):
                    setattr(answer, keyword, value)
                seen.setdefault(tuple(values), answer)
        return list(seen.values())

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Any]]:
        with self._lock:
            self.finding += 1
            self.most_at_once = max(self.most_at_once, self.finding)
        try:
            time.sleep(0.05)  # a PACS's lookup: long enough for a second one to overlap
            answers = self._matches(event.identifier)
            level = str(event.identifier.QueryRetrieveLevel)
            if self.counts and level == "STUDY":
                for answer in answers:
                    answer.NumberOfStudyRelatedSeries = len(
                        self._matches(_query("SERIES", answer.StudyInstanceUID))
                    )
            if level == "SERIES" and self.short:
                self.short -= 1
                answers = answers[1:]
            for answer in answers:
                yield 0xFF00, answer
        finally:
            with self._lock:
                self.finding -= 1

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        query = event.identifier
        asked = query.get("SOPInstanceUID") or []
        wanted = {str(asked)} if isinstance(asked, str) else {str(uid) for uid in asked}
        series = str(query.get("SeriesInstanceUID", ""))
        chosen = [
            ds
            for ds in self.datasets
            if str(ds.SeriesInstanceUID) == series
            and (not wanted or str(ds.SOPInstanceUID) in wanted)
        ]
        yield len(chosen)
        for ds in chosen:
            yield 0xFF00, ds


def _query(level: str, study: str) -> pydicom.Dataset:
    query = pydicom.Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = level, study
    return query


@contextlib.contextmanager
def _serving(scp: _UncountingPacs) -> Iterator[Peer]:
    ae = AE(ae_title="UNCOUNTED")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, scp.on_find), (evt.EVT_C_GET, scp.on_get)],
    )
    assert server is not None  # block=False returns the running server
    try:
        yield Peer("UNCOUNTED", "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()


def _files(tmp_path: Path) -> list[Path]:
    return make_studies(tmp_path / "pacs", 24, studies=3, series=2)


def test_a_pacs_without_counts_is_asked_one_c_find_at_a_time(tmp_path: Path) -> None:
    scp = _UncountingPacs(_files(tmp_path))
    with _serving(scp) as peer:
        summary = Pull(peer, str(tmp_path / "lake"), str(tmp_path / "store"), parallel=2).run()
    assert (summary.studies, summary.series, summary.instances) == (3, 6, 24)
    assert (summary.fetched, summary.failed) == (24, 0)
    assert lake_sops(str(tmp_path / "lake")) == {str(ds.SOPInstanceUID) for ds in scp.datasets}
    assert scp.most_at_once == 1  # 10 C-FINDs, never two at once


@pytest.mark.parametrize(("short", "missing"), [(1, 0), (2, 0), (3, 1)])
def test_a_short_series_listing_is_asked_again_then_counts_as_failed(
    tmp_path: Path, short: int, missing: int
) -> None:
    """Three tries: a listing short once or twice costs nothing; short three times,
    the series it leaves out counts as failed (pull says so, and a re-run retries)."""
    scp = _UncountingPacs(_files(tmp_path), counts=True, short=short)
    with _serving(scp) as peer:
        summary = Pull(peer, str(tmp_path / "lake"), str(tmp_path / "store"), parallel=1).run()
    assert summary.series == 6 - missing
    assert summary.failed == missing
    assert summary.fetched == 24 - 4 * missing  # a series holds 4 instances
    if missing:
        assert summary.failures == {"series the PACS counts but did not list": 1}
