"""``dicomlake receive``: dcmtk's echoscu and storescu, and pynetdicom, against our SCP.

Every clean file of the sample corpus goes over the wire in its own transfer syntax
and arrives as an ``ok`` row; the faults are real ones: a data set that does not
decode, a 256 KiB file system that fills up, TLS with certificates made here, a
calling AE title not on the allow-list, a receiver killed before its commit.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomlake.net.peers import TlsFiles, client_tls
from dicomlake.net.receive import Receiver
from helpers.dimse import (
    DCMTK_ENV,
    clean_files,
    dcmtk_available,
    echoscu,
    lake_rows,
    lake_sops,
    make_studies,
    storable,
    storescu,
)
from helpers.disks import small_tmpfs
from helpers.orthanc import free_port
from helpers.servers import listening, wait_until_ready

DCMTK_SKIP = "dcmtk not installed (apt-get install dcmtk)"
DICOMLAKE = [sys.executable, "-m", "dicomlake"]


@pytest.fixture
def dcmtk() -> None:
    if not dcmtk_available():
        pytest.skip(DCMTK_SKIP)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(str(tmp_path / "lake"), str(tmp_path / "store"), port=0) as running:
        yield running


def _send(port: int, datasets: list[pydicom.Dataset], **kwargs: object) -> list[int]:
    """C-STORE each data set on one pynetdicom association; the statuses."""
    from pynetdicom import AE

    ae = AE("PYNETDICOM")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLAKE", **kwargs)  # type: ignore[arg-type]
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


# pynetdicom 3.0.4's state machine raises in its reactor thread when dcmtk aborts an
# association it just rejected (Evt15 in Sta13): its own race, not a receiver fault
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.dcmtk
def test_echo_and_the_allow_list(dcmtk: None, tmp_path: Path) -> None:
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    with Receiver(lake, store, port=0, allow_aets=["MODALITY"]) as receiver:
        assert echoscu(receiver.port, calling="MODALITY") == 0
        assert echoscu(receiver.port, calling="STRANGER") != 0
        refused = storescu([Path(make_studies(tmp_path / "f", 1)[0])], receiver.port)
        assert refused[0].returncode != 0
    assert receiver.summary.rejected == 2
    assert receiver.summary.received == 0


@pytest.mark.dcmtk
@pytest.mark.slow
def test_every_clean_corpus_file_arrives_as_an_ok_row(
    dcmtk: None, receiver: Receiver, sample_corpus: Path
) -> None:
    """Each file in its own transfer syntax; those without valid Study, Series and SOP
    Instance UIDs (no place in the store) are refused with 0xA900 and an error row."""
    files = clean_files(sample_corpus)
    assert len({syntax for _, syntax in files.values()}) >= 8  # compressed ones included
    for run in storescu(files, receiver.port):
        for line in run.stderr.splitlines():  # only the refusals below fail a store
            assert not line.startswith("F:"), run.stderr[-2000:]
            assert "No presentation context" not in line, line
            if line.endswith(", ignoring file"):  # storescu's own verdict: not sent
                files.pop(Path(line.split(" in file: ", 1)[1].rsplit(",", 1)[0]))
    summary = receiver.stop()
    good = {path: sop for path, (sop, _) in files.items() if storable(path)}
    refused = len(files) - len(good)
    assert refused and all(reason.startswith("0xA900 ") for reason in summary.failures)
    assert summary.failed == refused and summary.ok == len(good)
    sent = set(good.values())
    assert lake_sops(receiver.lake) == sent
    rows = lake_rows(receiver.lake)
    ok_rows = [r for r in rows if r[1] == "ok"]
    assert len(ok_rows) == len(sent)  # one row per SOP Instance UID, none doubled
    errors = [path for _, status, path in rows if status == "error"]
    assert errors and all(path.startswith("dimse://STORESCU/") for path in errors)
    assert {p.stem for p in Path(receiver.store).rglob("*.dcm")} == sent
    # each file kept in the transfer syntax it was sent in (the last sent, for a UID
    # that several test files share)
    last: dict[str, set[str]] = {}
    for sop, syntax in files.values():
        last.setdefault(sop, set()).add(syntax)
    for path in Path(receiver.store).rglob("*.dcm"):
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert str(meta.TransferSyntaxUID) in last[path.stem]


@pytest.mark.dcmtk
def test_sent_again_replaces_and_a_moved_instance_leaves_its_old_place(
    dcmtk: None, receiver: Receiver, tmp_path: Path
) -> None:
    files = make_studies(tmp_path / "f", 6)
    for _ in range(2):
        assert storescu(files, receiver.port)[0].returncode == 0
    moved = pydicom.dcmread(files[0])
    old_series = str(moved.SeriesInstanceUID)
    moved.SeriesInstanceUID = generate_uid()
    assert _send(receiver.port, [moved]) == [0]
    summary = receiver.stop()
    assert summary.ok == 13 and summary.replaced == 7  # 6 sent again, 1 moved
    rows = lake_rows(receiver.lake)
    assert len(rows) == 6 and {status for _, status, _ in rows} == {"ok"}
    paths = sorted(Path(receiver.store).rglob("*.dcm"))
    assert len(paths) == 6
    here = [p for p in paths if p.stem == str(moved.SOPInstanceUID)]
    assert len(here) == 1 and here[0].parent.name == str(moved.SeriesInstanceUID)
    assert old_series != here[0].parent.name


def _undecodable(tmp_path: Path) -> Path:
    """A Part 10 file whose data set ends inside (0010,0010): nothing can decode it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    path = tmp_path / "broken.dcm"
    with path.open("wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta)
        out.write(b"\x10\x00\x10\x00PN\xf0\xff" + b"Doe^")  # 65520 bytes promised, 4 given
    return path


def test_a_data_set_that_does_not_decode_fails_and_the_association_goes_on(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynetdicom import AE, _config

    broken = _undecodable(tmp_path)
    good = make_studies(tmp_path / "f", 1)[0]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    ae = AE("PYNETDICOM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="DICOMLAKE")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(broken).Status) == 0xC210
        assert int(assoc.send_c_store(good).Status) == 0x0000
    finally:
        assoc.release()
    summary = receiver.stop()
    assert (summary.ok, summary.failed) == (1, 1)
    rows = lake_rows(receiver.lake)
    errors = [path for _, status, path in rows if status == "error"]
    assert len(errors) == 1 and errors[0].startswith("dimse://PYNETDICOM/")
    assert [p.name for p in Path(receiver.store).rglob("*.dcm")] == [
        str(pydicom.dcmread(good).SOPInstanceUID) + ".dcm"
    ]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs) for the store."""
    with small_tmpfs(tmp_path / "disk") as disk:
        yield disk


def test_a_full_disk_fails_the_store_and_leaves_no_half_file(
    small_disk: Path, tmp_path: Path
) -> None:
    files = make_studies(tmp_path / "f", 12)  # 12 x 39 KiB: more than 256 KiB
    datasets = [pydicom.dcmread(p) for p in files]
    with Receiver(str(tmp_path / "lake"), str(small_disk / "store"), port=0) as receiver:
        statuses = _send(receiver.port, datasets)
    stored = [ds for ds, status in zip(datasets, statuses, strict=True) if status == 0]
    assert 0 < len(stored) < len(datasets)
    assert set(statuses) == {0x0000, 0xA700}
    assert statuses == sorted(statuses)  # once full, every later one fails
    on_disk = sorted(Path(small_disk / "store").rglob("*.dcm"))
    assert {p.stem for p in on_disk} == {str(ds.SOPInstanceUID) for ds in stored}
    for path in on_disk:  # each whole: it reads to its last byte
        pydicom.dcmread(path).pixel_array  # noqa: B018
    assert list((small_disk / "store" / ".incoming").iterdir()) == []
    assert lake_sops(str(tmp_path / "lake")) == {str(ds.SOPInstanceUID) for ds in stored}
    assert receiver.summary.failures["0xA700 DiskFull"] == len(datasets) - len(stored)


def _certificates(folder: Path) -> dict[str, str]:
    """A CA, a server and a client certificate it signs, and a stranger's own."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def make(
        name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, ca: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        signer = issuer[1] if issuer else key
        return builder.sign(signer, hashes.SHA256()), key

    ca = make("dicomlake test CA", None, True)
    paths: dict[str, str] = {}
    for name, (cert, key) in {
        "ca": ca,
        "server": make("server", ca, False),
        "client": make("client", ca, False),
        "stranger": make("stranger", None, False),
    }.items():
        crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths[name], paths[name + "_key"] = str(crt), str(pem)
    return paths


def _echo(port: int, tls: tuple[object, str] | None) -> bool:
    from pynetdicom import AE

    ae = AE("PYNETDICOM")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMLAKE", tls_args=tls)  # type: ignore[arg-type]
    if not assoc.is_established:
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:  # pynetdicom leaves it open after a refused handshake
            sock.close()
        return False
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return status == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_with_a_certificate_made_here(tmp_path: Path) -> None:
    pki = _certificates(tmp_path)
    server = TlsFiles(cert=pki["server"], key=pki["server_key"], ca=pki["ca"])
    with Receiver(str(tmp_path / "lake"), str(tmp_path / "store"), port=0, tls=server) as rx:
        client = TlsFiles(cert=pki["client"], key=pki["client_key"], ca=pki["ca"])
        assert _echo(rx.port, client_tls(client, "127.0.0.1"))
        ds = pydicom.dcmread(make_studies(tmp_path / "f", 1)[0])
        assert _send(rx.port, [ds], tls_args=client_tls(client, "127.0.0.1")) == [0]
        # no client certificate, another CA's, or no TLS at all: refused
        assert not _echo(rx.port, client_tls(TlsFiles(ca=pki["ca"]), "127.0.0.1"))
        stranger = TlsFiles(cert=pki["stranger"], key=pki["stranger_key"], ca=pki["ca"])
        assert not _echo(rx.port, client_tls(stranger, "127.0.0.1"))
        assert not _echo(rx.port, None)
        # a client that checks the server against another CA refuses it
        wrong_ca = TlsFiles(cert=pki["client"], key=pki["client_key"], ca=pki["stranger"])
        assert not _echo(rx.port, client_tls(wrong_ca, "127.0.0.1"))
    assert lake_sops(str(tmp_path / "lake")) == {str(ds.SOPInstanceUID)}
    for _ in range(5):  # the sockets pynetdicom drops on a failed handshake: closed here
        time.sleep(0.1)
        gc.collect()


@pytest.mark.dcmtk
@pytest.mark.slow
def test_cli_sigterm_commits_and_a_killed_receiver_catches_up(dcmtk: None, tmp_path: Path) -> None:
    lake, store, port = str(tmp_path / "lake"), str(tmp_path / "store"), free_port()
    command = [
        *DICOMLAKE, "receive", "--lake", lake, "--store", store, "--port", str(port),
        "--commit-seconds", "600", "--quiet",
    ]  # fmt: skip
    first, second = make_studies(tmp_path / "a", 4), make_studies(tmp_path / "b", 3)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_ready(listening(port), process, "dicomlake receive")
    assert storescu(first, port)[0].returncode == 0
    process.send_signal(signal.SIGTERM)  # the buffered rows are committed on the way out
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.startswith("received: 4 instances, 4 stored, 0 failed")
    assert len(lake_sops(lake)) == 4
    # killed before any commit: the files are on disk, their rows come at the next start
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_ready(listening(port), process, "dicomlake receive")
    assert storescu(second, port)[0].returncode == 0
    process.kill()
    process.communicate(timeout=60)
    assert len(lake_sops(lake)) == 4
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_ready(listening(port), process, "dicomlake receive")
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "3 files of earlier runs ingested" in out
    assert len(lake_sops(lake)) == 7 and len(lake_rows(lake)) == 7


#: Runs ``dicomlake receive`` in a process that signals itself at one precise moment:
#: a real signal, timed where a test from outside can only hope to land.
_SIGNAL_AT = """
import os, signal, sys
import dicomlake.net.receive as receive
from dicomlake.cli import main

moment, signame, lake, store, port = sys.argv[1:]
def signalled(call):
    def wrapper(*args, **kwargs):
        result = call(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, signame))
        return result
    return wrapper
if moment == "binding":  # the port is bound, start_server has not returned yet
    import pynetdicom
    pynetdicom.AE.start_server = signalled(pynetdicom.AE.start_server)
else:  # while earlier runs' files are caught up
    receive.catch_up = signalled(receive.catch_up)
sys.argv = ["dicomlake", "receive", "--lake", lake, "--store", store, "--port", port, "-q"]
main()
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_port_is_bound_stops_cleanly(tmp_path: Path, signame: str) -> None:
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    args = ["binding", signame, lake, store, str(free_port())]
    run = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT, *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("received: 0 instances")


def test_a_signal_while_catching_up_interrupts(tmp_path: Path) -> None:
    lake, store = str(tmp_path / "lake"), str(tmp_path / "store")
    args = ["catching-up", "SIGINT", lake, store, str(free_port())]
    run = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT, *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip() == "dicomlake: error: interrupted while catching up; re-run to go on"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "x"], "Invalid value for '--port'"),
        (["--port", "70000"], "less than or equal to 65535"),
        (["--aet", "A" * 17], "17 characters"),
        (["--allow-aet", "A\\B"], "backslash"),
        (["--tls-ca", "/nonexistent/ca.pem"], "needs --tls-cert"),
    ],
)
def test_cli_wrong_flags_exit_2(flags: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [*DICOMLAKE, "receive", "--lake", str(tmp_path / "l"), "--store", str(tmp_path / "s"),
         *flags],
        capture_output=True, text=True, env={**DCMTK_ENV, "COLUMNS": "200"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lake_with_thumbnails_gets_those_of_received_instances(tmp_path: Path) -> None:
    import dicomlake
    from dicomlake.lake.location import open_table
    from dicomlake.lake.tables import arrow_dataset

    lake = str(tmp_path / "lake")
    first, second = make_studies(tmp_path / "f", 2)
    (tmp_path / "seed").mkdir()
    first.rename(tmp_path / "seed" / first.name)
    dicomlake.ingest([str(tmp_path / "seed")], lake, workers=0, thumbnails=True)
    with Receiver(lake, str(tmp_path / "store"), port=0) as receiver:
        assert _send(receiver.port, [pydicom.dcmread(second)]) == [0]
    thumbs = arrow_dataset(open_table(lake, "thumbnails")).to_table(
        columns=["SOPInstanceUID", "status"]
    )
    assert (
        str(pydicom.dcmread(second).SOPInstanceUID) in thumbs.column("SOPInstanceUID").to_pylist()
    )
    assert set(thumbs.column("status").to_pylist()) == {"ok"}
