"""The C-STORE handler on its own (no network): the races its speed-ups open.

The file is fsynced before the store's lock is taken, so a process starting on the
same store may purge the ``.part`` in between: the instance is then written again
under the lock and still answered Success. Rows are buffered under a lock of their
own, so a commit under way never holds up a store.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContextTuple

import dicomlake.net.receive as receive
from dicomlake.jobs.store import (
    INCOMING,
    StoreRows,
    catch_up,
    purge_parts,
    store_lock,
    write_file,
)
from dicomlake.net.receive import SUCCESS, InstanceSink
from dicomlake.sample import sample_file
from helpers.dimse import lake_rows, lake_sops


def _event(ds: pydicom.Dataset) -> Event:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = io.BytesIO(body.getvalue())
    context = PresentationContextTuple(1, UID(CTImageStorage), UID(ExplicitVRLittleEndian))
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="TESTSCU"))
    return Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context})  # type: ignore[arg-type]


def _instance() -> pydicom.Dataset:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[InstanceSink]:
    store = str(tmp_path / "store")
    rows = StoreRows(str(tmp_path / "lake"), store)
    yield InstanceSink(store, rows)
    rows.close()


def test_a_part_purged_before_its_rename_is_written_again(
    sink: InstanceSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = store_lock

    def purge_first(root: str) -> contextlib.AbstractContextManager[None]:
        with locked(root):  # what a process starting on the store does meanwhile
            purge_parts(root)
        return locked(root)

    monkeypatch.setattr(receive, "store_lock", purge_first)
    rewritten: list[str] = []

    def write_again(root: str, target: str, data: bytes) -> None:
        rewritten.append(target)
        write_file(root, target, data)

    monkeypatch.setattr(receive, "write_file", write_again)
    ds = _instance()
    assert sink.handle_store(_event(ds)) == SUCCESS
    stored = Path(sink.root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm")
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    assert list(Path(sink.root, INCOMING).iterdir()) == []
    assert rewritten == [str(stored)]  # the second write, holding the lock
    sink.rows.close()
    assert lake_sops(str(Path(sink.root).parent / "lake")) == {ds.SOPInstanceUID}


def test_a_store_does_not_wait_for_a_commit_under_way(sink: InstanceSink) -> None:
    done = threading.Event()
    with sink.rows._lock:  # what a commit holds while it writes to the lake
        worker = threading.Thread(
            target=lambda: done.set() if sink.handle_store(_event(_instance())) == 0 else None
        )
        worker.start()
        assert done.wait(30), "the store waited for the commit"
    worker.join()
    sink.rows.close()
    assert sink.rows.counts.committed == 1


def test_a_moved_instance_leaves_no_row_behind_when_its_old_row_still_waits(
    sink: InstanceSink,
) -> None:
    """The old place's row is deleted only once every row it had is committed.

    Sent, committed, sent again (that row waits for its hand-over), then moved to
    another series: a commit tick right then must not delete the old place's
    committed row and let the waiting one land after it.
    """
    ds = _instance()
    assert sink.handle_store(_event(ds)) == SUCCESS
    sink.rows.flush()
    assert sink.handle_store(_event(ds)) == SUCCESS  # its row waits
    ds.SeriesInstanceUID = generate_uid()
    assert sink.handle_store(_event(ds)) == SUCCESS  # moved: the old place goes
    sink.rows.commit_if_due()  # a timer tick, before the waiting rows are handed over
    sink.rows.close()
    lake = str(Path(sink.root).parent / "lake")
    rows = lake_rows(lake)
    assert len(rows) == 1, rows
    assert ds.SeriesInstanceUID in rows[0][2]


def test_catching_up_drops_the_row_of_a_file_a_crash_left_behind(sink: InstanceSink) -> None:
    """A receiver killed between removing a moved instance's old file and deleting its
    row leaves that row; the next start's catch-up finds the file gone and drops it."""
    kept, moved = _instance(), _instance()
    for ds in (kept, moved):
        assert sink.handle_store(_event(ds)) == SUCCESS
    sink.rows.close()
    lake = str(Path(sink.root).parent / "lake")
    old = Path(sink.root, moved.StudyInstanceUID, moved.SeriesInstanceUID)
    (old / f"{moved.SOPInstanceUID}.dcm").unlink()  # the crash: the row is not deleted
    assert lake_sops(lake) == {kept.SOPInstanceUID, moved.SOPInstanceUID}
    assert catch_up(lake, sink.root) == 0  # nothing new to ingest...
    assert lake_sops(lake) == {kept.SOPInstanceUID}  # ...and the stale row is gone
