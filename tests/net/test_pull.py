"""``dicomlake pull`` from Orthanc, the PACS: C-GET, C-MOVE, resume, and the faults.

Orthanc runs on loopback ports with a temporary storage and a configuration that
names our AE title (for C-MOVE); test files reach it through its REST API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dicomlake.errors import PeerError
from dicomlake.lake.sync import delete_rows
from dicomlake.net.peers import Peer
from dicomlake.net.pull import Pull, Timeouts, parse_matches
from dicomlake.rows import row_id
from dicomlake.storage.locations import file_uri
from helpers.dimse import DCMTK_ENV, lake_rows, lake_sops, make_studies
from helpers.disks import small_tmpfs
from helpers.orthanc import OrthancServer, free_port

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

DICOMLAKE = [sys.executable, "-m", "dicomlake"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """24 CT instances: 2 studies x 2 series x 6."""
    return make_studies(tmp_path_factory.mktemp("pacs-files"), 24)


@pytest.fixture(scope="module")
def move_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, files: list[Path], move_port: int
) -> Iterator[OrthancServer]:
    """Orthanc holding ``files``, knowing DICOMLAKE at ``move_port``."""
    os.environ.setdefault("TCP_NODELAY", "1")  # Orthanc's dcmtk: no Nagle delays
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"),
        DicomAet="ORTHANC",
        DicomModalities={"DICOMLAKE": ["DICOMLAKE", "127.0.0.1", move_port]},
        DicomAlwaysAllowFind=True,
        DicomAlwaysAllowMove=True,
        DicomAlwaysAllowGet=True,
    ) as server:
        server.upload(files)
        yield server


def _peer(pacs: OrthancServer) -> Peer:
    return Peer("ORTHANC", "127.0.0.1", pacs.dicom_port)


def _sops(files: list[Path]) -> set[str]:
    import pydicom

    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def test_get_then_again_fetches_nothing(pacs: OrthancServer, files: list[Path], tmp_path: Path):
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    first = Pull(_peer(pacs), lake, store).run()
    assert (first.studies, first.series, first.fetched, first.skipped, first.failed) == (
        2, 4, 24, 0, 0,
    )  # fmt: skip
    assert lake_sops(lake) == _sops(files)
    assert len(list(Path(store).rglob("*.dcm"))) == 24
    again = Pull(_peer(pacs), lake, store).run()
    assert (again.fetched, again.skipped, again.failed) == (0, 24, 0)
    assert len(lake_rows(lake)) == 24


def test_a_partial_series_is_fetched_by_instance(
    pacs: OrthancServer, files: list[Path], tmp_path: Path
) -> None:
    """Rows lost (a pull killed before its commit): only those instances come again."""
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    Pull(_peer(pacs), lake, store).run()
    lost = sorted(Path(store).rglob("*.dcm"))[:5]
    for path in lost:
        path.unlink()
    delete_rows(lake, np.array([row_id(file_uri(str(p))) for p in lost], dtype=np.int64))
    assert len(lake_sops(lake)) == 19
    again = Pull(_peer(pacs), lake, store).run()
    assert (again.fetched, again.skipped, again.failed) == (5, 19, 0)
    assert lake_sops(lake) == _sops(files)
    assert len(lake_rows(lake)) == 24


def test_match_keys_narrow_the_query(pacs: OrthancServer, files: list[Path], tmp_path: Path):
    import pydicom

    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    keys = parse_matches([f"StudyInstanceUID={study}"])
    summary = Pull(_peer(pacs), str(tmp_path / "l"), str(tmp_path / "s"), keys=keys).run()
    assert (summary.studies, summary.fetched) == (1, 12)
    none = Pull(
        _peer(pacs),
        str(tmp_path / "l2"),
        str(tmp_path / "s2"),
        keys=parse_matches([], "2999-01-01"),
    ).run()
    assert (none.studies, none.fetched) == (0, 0)


def test_cli_move_and_resume(
    pacs: OrthancServer, files: list[Path], move_port: int, tmp_path: Path
) -> None:
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    command = [
        *DICOMLAKE, "pull", "--from", f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
        "--lake", lake, "--store", store, "--move", "--move-port", str(move_port),
        "--move-host", "127.0.0.1", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "24 instances fetched, 0 skipped" in done.stdout
    assert lake_sops(lake) == _sops(files)
    again = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "0 instances fetched, 24 skipped" in again.stdout


def test_unknown_move_destination_is_a_clear_error(pacs: OrthancServer, tmp_path: Path):
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    command = [
        *DICOMLAKE, "pull", "--from", f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
        "--lake", lake, "--store", store, "--move", "--aet", "NOBODY",
        "--move-port", str(free_port()), "--move-host", "127.0.0.1", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
    assert done.returncode == 2
    assert "C-MOVE destination NOBODY" in done.stderr
    assert "Traceback" not in done.stderr


# pynetdicom 3.0.4 drops the socket of a refused connection without closing it
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_connection_refused_and_no_answer(tmp_path: Path) -> None:
    refused = Peer("PACS", "127.0.0.1", free_port())
    with pytest.raises(PeerError, match=r"cannot connect to PACS@127\.0\.0\.1"):
        Pull(refused, str(tmp_path / "l"), str(tmp_path / "s"), timeouts=Timeouts(acse=2)).run()
    # a socket that listens but never answers: the ACSE timeout ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        peer = Peer("PACS", "127.0.0.1", silent.getsockname()[1])
        with pytest.raises(PeerError, match="no answer within 1 s"):
            Pull(peer, str(tmp_path / "l"), str(tmp_path / "s"), timeouts=Timeouts(acse=1)).run()


def test_a_peer_that_aborts(tmp_path: Path) -> None:
    """A Q/R SCP that aborts the association on the first C-FIND."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    def abort(event: evt.Event) -> Iterator[tuple[int, None]]:
        event.assoc.abort()
        yield 0xC000, None

    ae = AE("PACS")
    ae.add_supported_context(Find)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, abort)])
    try:
        peer = Peer("PACS", "127.0.0.1", server.server_address[1])
        with pytest.raises(PeerError, match=r"PACS@127\.0\.0\.1:[0-9]+ aborted"):
            Pull(peer, str(tmp_path / "l"), str(tmp_path / "s"), timeouts=Timeouts(dimse=5)).run()
    finally:
        ae.shutdown()


def test_a_full_disk_counts_each_instance_not_stored(
    pacs: OrthancServer, files: list[Path], tmp_path: Path
) -> None:
    """Store on a 256 KiB file system: what does not fit is failed, and the CLI says so."""
    with small_tmpfs(tmp_path / "disk") as disk:
        lake = str(tmp_path / "lake")
        command = [
            *DICOMLAKE, "pull", "--from", f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
            "--lake", lake, "--store", str(disk / "store"), "--quiet",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
        stored = lake_sops(lake)
        assert 0 < len(stored) < 24
        assert done.returncode == 1, done.stderr
        assert f"{len(stored)} instances fetched" in done.stdout
        assert f"{24 - len(stored)} failed" in done.stdout
        assert "0xA700 DiskFull" in done.stderr
        assert {p.stem for p in (disk / "store").rglob("*.dcm")} == stored


def test_pull_from_our_own_scp_and_an_unknown_move_destination(tmp_path: Path) -> None:
    """Interoperation: a lake served by ``dicomlake serve --dimse-port`` pulled into
    another lake (C-GET), and its C-MOVE to a title it does not know (0xA801)."""
    import dicomlake
    from dicomlake.net.qr import QueryRetrieveSCP

    source = str(tmp_path / "source")
    make_studies(tmp_path / "f", 6)
    dicomlake.ingest([str(tmp_path / "f")], source)
    with QueryRetrieveSCP(source, aet="LAKESCP", port=0) as scp:
        peer = Peer("LAKESCP", "127.0.0.1", scp.port)
        got = Pull(peer, str(tmp_path / "copy"), str(tmp_path / "store")).run()
        assert (got.fetched, got.failed) == (6, 0)
        assert lake_sops(str(tmp_path / "copy")) == lake_sops(source)
        moving = Pull(
            peer, str(tmp_path / "l2"), str(tmp_path / "s2"), move=True, move_host="127.0.0.1",
            move_port=free_port(),
        )  # fmt: skip
        with pytest.raises(PeerError, match=r"does not know the C-MOVE destination DICOMLAKE"):
            moving.run()
