"""``dicomlake pull`` from a PACS that does not count what it lists.

Without Number of Study Related Series / Number of Series Related Instances in its
C-FIND answers, a short listing cannot be noticed, so pull asks one C-FIND at a time:
a PACS asked on several associations at once was seen to list short (Orthanc, about
one series-level query in 170). The PACS here is pynetdicom's, answering from files.
"""

from __future__ import annotations

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
from pynetdicom.transport import ThreadedAssociationServer

from dicomlake.net.peers import Peer
from dicomlake.net.pull import Pull
from helpers.dimse import lake_sops, make_studies

_LEVEL_KEYS = {
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"),
}


class _UncountingPacs:
    """A Q/R SCP over ``files`` whose answers carry no counts; it notes C-FIND overlap."""

    def __init__(self, files: list[Path]) -> None:
        self.datasets = [pydicom.dcmread(path) for path in files]
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
            for answer in self._matches(event.identifier):
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


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[_UncountingPacs, ThreadedAssociationServer]]:
    scp = _UncountingPacs(make_studies(tmp_path / "pacs", 24, studies=3, series=2))
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
        yield scp, server
    finally:
        server.shutdown()


def test_a_pacs_without_counts_is_asked_one_c_find_at_a_time(
    pacs: tuple[_UncountingPacs, ThreadedAssociationServer], tmp_path: Path
) -> None:
    scp, server = pacs
    peer = Peer("UNCOUNTED", "127.0.0.1", server.server_address[1])
    summary = Pull(peer, str(tmp_path / "lake"), str(tmp_path / "store"), parallel=2).run()
    assert (summary.studies, summary.series, summary.instances) == (3, 6, 24)
    assert (summary.fetched, summary.failed) == (24, 0)
    assert lake_sops(str(tmp_path / "lake")) == {str(ds.SOPInstanceUID) for ds in scp.datasets}
    assert scp.most_at_once == 1  # 10 C-FINDs, never two at once
