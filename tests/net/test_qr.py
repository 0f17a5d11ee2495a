"""The lake as a query/retrieve SCP, driven by dcmtk's findscu, getscu and movescu.

One lake of real files (pydicom's test data: uncompressed, JPEG 2000, RLE, implicit
VR, and a zip member) answers every test; each answer is compared with what the
lake's own SQL views say, and retrieved files with the originals.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

import dicomlake
from dicomlake.net.peers import Peer
from dicomlake.net.qr import QueryRetrieveSCP
from dicomlake.sample import sample_file
from helpers.orthanc import free_port

DCMTK_SKIP = "dcmtk not installed (apt-get install dcmtk)"

#: The corpus: file name -> where it goes (a plain file, or a member of more.zip).
CORPUS = {
    "CT_small.dcm": "file",  # explicit VR little endian
    "MR_small.dcm": "file",
    "JPEG2000.dcm": "file",  # JPEG 2000, the NM study
    "rtdose.dcm": "file",  # implicit VR little endian
    "SC_rgb_rle.dcm": "file",  # RLE; same study as the zip member
    "SC_rgb_small_odd.dcm": "zip",
}
NM_STUDY = "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457"
SC_STUDY = "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114"


def dcmtk(
    tool: str, *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool verbosely; its log (stderr and stdout) is returned as text."""
    if shutil.which(tool) is None:
        pytest.skip(DCMTK_SKIP)
    return subprocess.run(
        [tool, "-v", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def ask(
    tool: str, port: int, *args: str | Path, keys: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """A dcmtk tool's call to the lake's SCP (AE DICOMLAKE on 127.0.0.1), ``-k`` each key."""
    query = [arg for key in keys for arg in ("-k", key)]
    return dcmtk(tool, *args, "-aec", "DICOMLAKE", *query, "127.0.0.1", port)


def study(uid: str) -> list[str]:
    """The keys of a study-level retrieval of ``uid``."""
    return ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}"]


def originals() -> dict[str, Dataset]:
    """The corpus read from pydicom's copies, by SOP Instance UID."""
    out = {}
    for name in CORPUS:
        ds = dcmread(sample_file(name), force=True)
        out[str(ds.SOPInstanceUID)] = ds
    return out


@dataclass
class Lake:
    path: Path
    source: Path

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with dicomlake.connect(str(self.path)) as con:
            return con.execute(query).fetchall()


def build_lake(root: Path) -> Lake:
    """Ingest the corpus (files and a zip) into a fresh lake under ``root``."""
    source = root / "src"
    source.mkdir(parents=True)
    with zipfile.ZipFile(source / "more.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, where in CORPUS.items():
            if where == "zip":
                archive.write(sample_file(name), f"inner/{name}")
            else:
                shutil.copyfile(sample_file(name), source / name)
    lake = root / "lake"
    summary = dicomlake.ingest([str(source)], str(lake), workers=0)
    assert summary.ok == len(CORPUS)
    return Lake(lake, source)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("qr"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Path]]:
    """dcmtk's storescp as a C-MOVE destination: (its peer entry, its folder)."""
    if shutil.which("storescp") is None:
        pytest.skip(DCMTK_SKIP)
    folder = tmp_path_factory.mktemp("storescp")
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORE", "+xa", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # until it listens
            if dcmtk("echoscu", "-aec", "STORE", "127.0.0.1", port).returncode == 0:
                break
        yield Peer("STORE", "127.0.0.1", port), folder
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def scp(lake: Lake, store: tuple[Peer, Path]) -> Iterator[QueryRetrieveSCP]:
    with QueryRetrieveSCP(str(lake.path), port=0, destinations=[store[0]]) as server:
        yield server


def find(scp: QueryRetrieveSCP, tmp_path: Path, *keys: str, root: str = "-S") -> list[Dataset]:
    """findscu's answers, read from the response files it extracts."""
    out = tmp_path / f"find{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    result = ask("findscu", scp.port, root, "-X", "-od", out, keys=keys)
    assert result.returncode == 0, result.stderr
    return [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def status_of(log: str) -> str:
    """The final status a dcmtk retrieve tool reports."""
    found = re.findall(r"Received Final \w+ Response \(([^)]*)\)|DIMSE status is: (\S.*)", log)
    return " ".join(a or b for a, b in found)


def counts(log: str) -> dict[str, int]:
    """The sub-operation counts of getscu's final report."""
    return {
        name.lower(): int(value)
        for name, value in re.findall(r"Number of (\w+) Suboperations\s*:\s*(\d+)", log)
    }


# --------------------------------------------------------------------------- C-ECHO


def test_echoscu_gets_an_answer(scp: QueryRetrieveSCP) -> None:
    result = ask("echoscu", scp.port)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


# --------------------------------------------------------------------------- C-FIND


def test_study_level_find_lists_every_study_of_the_lake(
    scp: QueryRetrieveSCP, lake: Lake, tmp_path: Path
) -> None:
    answers = find(
        scp,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
    )
    got = {
        (
            a.StudyInstanceUID,
            a.PatientID,
            str(a.PatientName),
            a.StudyDate,
            int(a.NumberOfStudyRelatedInstances),
        )
        for a in answers
    }
    rows = lake.sql(
        'SELECT "StudyInstanceUID", "PatientID", "PatientName", '
        "coalesce(strftime(\"StudyDate\", '%Y%m%d'), ''), n_instances FROM studies"
    )
    assert got == {tuple(r) for r in rows}
    assert len(answers) == len(rows) == 5
    for answer in answers:
        assert answer.QueryRetrieveLevel == "STUDY"
        assert answer.RetrieveAETitle == "DICOMLAKE"
        assert "SpecificCharacterSet" in answer
        # only what was asked, and the server's own keys
        assert {e.keyword for e in answer} == {
            "SpecificCharacterSet",
            "QueryRetrieveLevel",
            "RetrieveAETitle",
            "StudyInstanceUID",
            "PatientID",
            "PatientName",
            "StudyDate",
            "NumberOfStudyRelatedInstances",
            "ModalitiesInStudy",
        }
    sc = next(a for a in answers if a.StudyInstanceUID == SC_STUDY)
    assert list(sc.ModalitiesInStudy) == ["OT"] or sc.ModalitiesInStudy == "OT"


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("PatientID=4MR1", "\"PatientID\" = '4MR1'"),
        ("PatientName=Compressed*", "\"PatientName\" LIKE 'Compressed%'"),
        ("PatientID=?MR1", "\"PatientID\" LIKE '_MR1'"),
        ("StudyDate=20040101-20041231", "\"StudyDate\" BETWEEN '2004-01-01' AND '2004-12-31'"),
        ("StudyDate=-20031231", "\"StudyDate\" <= '2003-12-31'"),
        ("StudyDate=20040826", "\"StudyDate\" = '2004-08-26'"),
        ("PatientID=nobody", "FALSE"),
    ],
    ids=["single", "wildcard-star", "wildcard-question", "date-range", "date-upto", "date", "none"],
)
def test_study_matching_equals_the_lakes_sql(
    scp: QueryRetrieveSCP, lake: Lake, tmp_path: Path, key: str, where: str
) -> None:
    answers = find(scp, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", key)
    expected = {r[0] for r in lake.sql(f'SELECT "StudyInstanceUID" FROM studies WHERE {where}')}
    assert {a.StudyInstanceUID for a in answers} == expected


def test_series_and_image_levels_answer_within_their_parent(
    scp: QueryRetrieveSCP, lake: Lake, tmp_path: Path
) -> None:
    series = find(
        scp,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={SC_STUDY}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    rows = lake.sql(
        'SELECT "SeriesInstanceUID", "Modality", n_instances FROM series '
        f"WHERE \"StudyInstanceUID\" = '{SC_STUDY}'"
    )
    got = {(a.SeriesInstanceUID, a.Modality, int(a.NumberOfSeriesRelatedInstances)) for a in series}
    assert got == {tuple(r) for r in rows}
    assert all(a.StudyInstanceUID == SC_STUDY for a in series)

    images = find(
        scp,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={SC_STUDY}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    )
    rows = lake.sql(
        'SELECT "SOPInstanceUID", "SOPClassUID" FROM instances '
        f"WHERE status = 'ok' AND \"StudyInstanceUID\" = '{SC_STUDY}'"
    )
    assert {(a.SOPInstanceUID, a.SOPClassUID) for a in images} == {tuple(r) for r in rows}
    assert len(images) == 2
    assert all({"StudyInstanceUID", "SeriesInstanceUID"} <= {e.keyword for e in a} for a in images)

    # a list of UIDs matches each of them
    wanted = sorted(a.SOPInstanceUID for a in images)[:1] + [
        r[0] for r in lake.sql('SELECT "SOPInstanceUID" FROM instances WHERE "Modality" = \'CT\'')
    ]
    listed = find(scp, tmp_path, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(wanted))
    assert sorted(a.SOPInstanceUID for a in listed) == sorted(wanted)


def test_patient_root_finds_patients_and_their_studies(
    scp: QueryRetrieveSCP, lake: Lake, tmp_path: Path
) -> None:
    patients = find(
        scp,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientID",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        root="-P",
    )
    rows = lake.sql(
        'SELECT "PatientID", count(DISTINCT "StudyInstanceUID"), count(*) FROM instances '
        "WHERE status = 'ok' GROUP BY 1"
    )
    got = {
        (a.PatientID, int(a.NumberOfPatientRelatedStudies), int(a.NumberOfPatientRelatedInstances))
        for a in patients
    }
    assert got == {tuple(r) for r in rows}

    studies = find(
        scp, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=ID1", "StudyInstanceUID", root="-P"
    )
    assert [(a.PatientID, a.StudyInstanceUID) for a in studies] == [("ID1", SC_STUDY)]


def test_a_level_the_model_lacks_is_refused(scp: QueryRetrieveSCP, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    keys = ["QueryRetrieveLevel=PATIENT", "PatientID"]
    result = ask("findscu", scp.port, "-S", "-X", "-od", out, keys=keys)
    assert "DataSetDoesNotMatchSOPClass" in result.stderr
    assert not list(out.iterdir())


# --------------------------------------------------------------------------- C-GET


def test_getscu_retrieves_a_study_with_its_pixels(scp: QueryRetrieveSCP, tmp_path: Path) -> None:
    # getscu takes only uncompressed syntaxes: the RLE file comes decompressed
    result = ask("getscu", scp.port, "-S", "-od", tmp_path, keys=study(SC_STUDY))
    assert counts(result.stderr) == {"remaining": 0, "completed": 2, "failed": 0, "warning": 0}
    got = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, tmp_path.iterdir())}
    sources = originals()
    assert set(got) == {uid for uid, ds in sources.items() if ds.StudyInstanceUID == SC_STUDY}
    for uid, ds in got.items():
        original = sources[uid]
        if original.file_meta.TransferSyntaxUID.is_compressed:
            assert not ds.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(ds.pixel_array, original.pixel_array)
        else:
            assert ds.PixelData == original.PixelData


def test_a_peer_taking_the_compressed_syntax_gets_the_files_bytes(
    scp: QueryRetrieveSCP,
) -> None:
    # getscu offers its compressed syntaxes in one context with uncompressed ones,
    # and the SCP takes uncompressed there; pynetdicom's SCU offers JPEG 2000 alone
    from pynetdicom import AE, build_role, evt

    original = dcmread(sample_file("JPEG2000.dcm"))
    syntax = original.file_meta.TransferSyntaxUID
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root C-GET
    ae.add_requested_context(original.SOPClassUID, [syntax])
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="DICOMLAKE",
        ext_neg=[build_role(original.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = NM_STUDY
    statuses = [
        status.Status for status, _ in assoc.send_c_get(query, "1.2.840.10008.5.1.4.1.2.2.3")
    ]
    assoc.release()
    assert statuses[-1] == 0x0000
    (ds,) = received
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.PixelData == original.PixelData


def test_a_missing_file_is_a_failed_sub_operation(tmp_path: Path) -> None:
    lake = build_lake(tmp_path / "own")
    (lake.source / "SC_rgb_rle.dcm").unlink()  # its row stays
    out = tmp_path / "got"
    out.mkdir()
    with QueryRetrieveSCP(str(lake.path), port=0) as server:
        result = ask("getscu", server.port, "-S", "-od", out, keys=study(SC_STUDY))
        assert counts(result.stderr) == {
            "remaining": 0,
            "completed": 1,
            "failed": 1,
            "warning": 0,
        }
        assert "SubOperationsCompleteOneOrMoreFailures" in status_of(result.stderr)
        # the server goes on answering
        assert ask("echoscu", server.port).returncode == 0
    assert [dcmread(p).SOPInstanceUID for p in out.iterdir()] == [
        dcmread(sample_file("SC_rgb_small_odd.dcm")).SOPInstanceUID
    ]


# --------------------------------------------------------------------------- C-MOVE


def test_movescu_sends_a_patient_to_storescp(
    scp: QueryRetrieveSCP, store: tuple[Peer, Path]
) -> None:
    _, folder = store
    keys = ["QueryRetrieveLevel=PATIENT", "PatientID=8NM1"]
    result = ask("movescu", scp.port, "-P", "-aem", "STORE", keys=keys)
    assert "Success" in status_of(result.stderr), result.stderr
    received = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in folder.iterdir()}
    original = dcmread(sample_file("JPEG2000.dcm"))
    assert set(received) == {str(original.SOPInstanceUID)}
    # storescp +xa takes JPEG 2000: the file went in its own syntax, bytes unchanged
    ds = received[str(original.SOPInstanceUID)]
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.PixelData == original.PixelData


def test_move_to_an_unknown_destination_is_refused(scp: QueryRetrieveSCP) -> None:
    result = ask("movescu", scp.port, "-S", "-aem", "NOWHERE", keys=study(NM_STUDY))
    assert "MoveDestinationUnknown" in status_of(result.stderr)


# --------------------------------------------------------------------------- associations


def test_an_allow_list_rejects_other_calling_aes(lake: Lake) -> None:
    with QueryRetrieveSCP(str(lake.path), port=0, allow_aets=["WORKSTATION"]) as server:
        allowed = ask("echoscu", server.port, "-aet", "WORKSTATION")
        other = ask("echoscu", server.port, "-aet", "INTRUDER")
    assert allowed.returncode == 0
    assert other.returncode != 0
    assert "Association Rejected" in other.stderr


def test_tls_associations_need_a_certificate_the_ca_signed(lake: Lake, tmp_path: Path) -> None:
    from dicomlake.net.peers import TlsFiles, server_tls

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (apt-get install openssl)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = server_tls(TlsFiles(str(cert), str(key), str(cert)))  # self-signed: its own CA
    with QueryRetrieveSCP(str(lake.path), port=0, ssl_context=tls) as server:
        secure = ask("echoscu", server.port, "+tls", key, cert, "+cf", cert)
        plain = ask("echoscu", server.port)
        anonymous = ask("echoscu", server.port, "+tla", "-ic")
    assert secure.returncode == 0, secure.stderr
    assert "Received Echo Response (Success)" in secure.stderr
    assert plain.returncode != 0
    assert anonymous.returncode != 0


@pytest.mark.parametrize("tool", ["getscu", "movescu"])
def test_a_retrieval_without_its_unique_key_is_refused(
    scp: QueryRetrieveSCP, tmp_path: Path, tool: str
) -> None:
    args = ["-aem", "STORE"] if tool == "movescu" else ["-od", tmp_path]
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={NM_STUDY}"]
    result = ask(tool, scp.port, "-S", *args, keys=keys)
    assert "DataSetDoesNotMatchSOPClass" in status_of(result.stderr), result.stderr
    assert not list(tmp_path.iterdir())
