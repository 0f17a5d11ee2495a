"""STOW-RS: multipart bodies read and written, and instances stored into a real lake
over real HTTP (uvicorn on loopback), by dicomweb-client and by hand-made bodies."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import generate_uid
from starlette.applications import Starlette
from starlette.routing import Mount

import dicomlake
from dicomlake.errors import LakeError
from dicomlake.sample import sample_file
from dicomlake.viewer.dicomweb.multipart import (
    Limits,
    MultipartError,
    MultipartParser,
    PayloadTooLarge,
    UnsupportedMediaType,
    multipart_chunks,
    multipart_content_type,
    new_boundary,
    parse_content_type,
    parse_multipart,
    related_boundary,
)
from dicomlake.viewer.dicomweb.store import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_DOES_NOT_MATCH_SOP_CLASS,
    FAILURE_PROCESSING,
    INCOMING,
    STORE_FOLDER,
    default_store_dir,
    is_uid,
)
from dicomlake.viewer.dicomweb.stow import stow_route
from helpers.servers import AppServer, LiveServer

# DICOM JSON keys of the Store Instances Response
RETRIEVE_URL = "00081190"
FAILED = "00081198"
REFERENCED = "00081199"
REASON = "00081197"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"


# ------------------------------------------------------------------ multipart: parsing


def _body(parts: list[bytes], boundary: str, *, part_type: str = "application/dicom") -> bytes:
    return b"".join(
        multipart_chunks([({"Content-Type": part_type}, [data]) for data in parts], boundary)
    )


def _parse_in_chunks(body: bytes, boundary: str, size: int, **limits: int) -> list[bytes]:
    parser = MultipartParser(boundary, Limits(**limits), spool_bytes=16)
    try:
        for start in range(0, len(body), size):
            parser.feed(body[start : start + size])
        return [part.read() for part in parser.finish()]
    finally:
        parser.close()


def _read(body: bytes, boundary: str) -> list[tuple[dict[str, str], str, bytes]]:
    """Each part's headers, media type and bytes; the parts are closed."""
    parts = parse_multipart(body, boundary)
    try:
        return [(part.headers, part.content_type, part.read()) for part in parts]
    finally:
        for part in parts:
            part.close()


TRICKY_PARTS = [
    b"",
    b"\r\n",
    b"--",
    b"\r\n--",
    b"plain",
    b"ends with CR LF\r\n",
    b"\r\nstarts with CR LF",
    b"--BOUNDARY at a line start without its CR LF",
    b"\r\n--BOUNDARYX: the boundary followed by another character is content",
    b"\r\n--BOUNDARY-: so is the boundary and one dash",
    b"\r\n--BOUNDAR\r\n--BOUNDAR: a prefix of the boundary",
    bytes(range(256)) * 3,
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 64, 1 << 20])
def test_round_trip_in_chunks_of_every_size(size: int) -> None:
    boundary = "BOUNDARY"
    body = _body(TRICKY_PARTS, boundary)
    assert _parse_in_chunks(body, boundary, size) == TRICKY_PARTS


@pytest.mark.parametrize(
    "boundary",
    [
        "a",
        "x" * 70,
        "'()+_,-./:=?",
        "with space inside",
        "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1",
        new_boundary(),
    ],
)
def test_round_trip_with_tricky_boundaries(boundary: str) -> None:
    data = [b"first", b"-" * 100 + boundary.encode() + b"\r\n" + b"second"]
    header = multipart_content_type(boundary)
    assert related_boundary(header) == boundary
    parts = _read(_body(data, boundary), related_boundary(header))
    assert [(media, data) for _, media, data in parts] == [
        ("application/dicom", data[0]),
        ("application/dicom", data[1]),
    ]


def test_preamble_epilogue_padding_and_headers() -> None:
    body = (
        b"This is the preamble; it mentions --b without a line start.\r\n"
        b"--b  \t\r\n"  # transport padding after the boundary
        b"Content-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"X-Folded: one\r\n two\r\n"
        b"\r\n"
        b"DICM one\r\n"
        b"--b\r\n"
        b"\r\n"  # no headers at all
        b"two\r\n"
        b"--b--  this is the epilogue\r\n--b\r\nnot a part\r\n"
    )
    (headers, media, data), (no_headers, no_media, data_two) = _read(body, "b")
    assert (data, data_two) == (b"DICM one", b"two")
    assert media == "application/dicom" and headers["x-folded"] == "one two"
    assert no_headers == {} and no_media == ""


def test_a_body_like_dicomweb_client_writes_it() -> None:
    # dicomweb-client starts with CR LF before the first boundary and ends without one
    body = b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\nA\r\n--b\r\n\r\nB\r\n--b--"
    assert [data for _, _, data in _read(body, "b")] == [b"A", b"B"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no multipart boundary line"),
        (b"just text\r\n", "no multipart boundary line"),
        (b"--b\r\n\r\npart without end", "ends before the closing boundary"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "malformed header"),
        (b"--b\nContent-Type: x\n\nbare LF\n--b--\n", "no multipart boundary line"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message) as caught:
        parse_multipart(body, "b")
    assert caught.value.status == 400


def test_limits_are_413() -> None:
    body = _body([b"x" * 100, b"y" * 10, b"z"], "b")
    assert _parse_in_chunks(body, "b", 7, max_part_bytes=100) == [b"x" * 100, b"y" * 10, b"z"]
    for limits, message in (
        ({"max_part_bytes": 99}, "part 1 is larger than 99 bytes"),
        ({"max_parts": 2}, "more than 2 parts"),
        ({"max_total_bytes": len(body) - 1}, "larger than"),
        ({"max_header_bytes": 10}, "headers are longer than 10 bytes"),
    ):
        with pytest.raises(MultipartError, match=message) as caught:
            _parse_in_chunks(body, "b", 7, **limits)
        expected = 400 if "max_header_bytes" in limits else 413
        assert caught.value.status == expected, limits


def test_a_huge_part_is_refused_as_it_streams_not_at_the_end() -> None:
    parser = MultipartParser("b", Limits(max_part_bytes=1 << 20))
    parser.feed(b"--b\r\nContent-Type: application/dicom\r\n\r\n")
    chunk = b"\0" * 65536
    with pytest.raises(PayloadTooLarge):
        for _ in range(100):  # 6.4 MB offered, refused at the first MB
            parser.feed(chunk)
    assert parser.received <= (1 << 20) + 2 * len(chunk)
    parser.close()


def test_parts_spool_to_disk_past_the_spool_size(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    parser = MultipartParser("b", spool_bytes=1000, spool_dir=str(tmp_path))
    parser.feed(_body([data], "b"))
    (part,) = parser.finish()
    assert part.size == len(data) and part.read() == data
    assert part.open().fileno() >= 0  # a real file now, not memory
    parser.close()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ("multipart/mixed; boundary=b", 415),
        ('multipart/related; type="application/dicom+json"; boundary=b', 415),
        ('multipart/related; type="application/dicom"', 400),
        ('multipart/related; type="application/dicom"; boundary=""', 400),
        ("multipart/related; type=application/dicom; boundary=" + "x" * 71, 400),
    ],
)
def test_request_content_types(header: str | None, status: int) -> None:
    with pytest.raises(MultipartError) as caught:
        related_boundary(header)
    assert caught.value.status == status
    assert isinstance(caught.value, UnsupportedMediaType) == (status == 415)


def test_content_type_parameters() -> None:
    assert related_boundary("Multipart/Related; boundary=abc; type=application/dicom") == "abc"
    assert related_boundary('multipart/related; boundary="a;b \\"c\\""') == 'a;b "c"'
    assert parse_content_type('a/b; x="1;2"; y=3; flag; z = "q"') == (
        "a/b",
        {"x": "1;2", "y": "3", "z": "q"},
    )


def test_writer_refuses_header_injection_and_bad_boundaries() -> None:
    with pytest.raises(MultipartError):
        list(multipart_chunks([({"X": "a\r\nInjected: yes"}, [b""])], "b"))
    with pytest.raises(MultipartError):
        list(multipart_chunks([({"Bad Name": "v"}, [b""])], "b"))
    for boundary in ("", "x" * 71, "trailing space ", 'no"quote', "é"):
        with pytest.raises(MultipartError):
            list(multipart_chunks([], boundary))


def test_writer_streams_lazily_and_dicomweb_client_reads_it() -> None:
    drawn: list[int] = []

    def chunks(n: int) -> Iterator[bytes]:
        drawn.append(n)
        yield f"part {n} ".encode()
        yield b"\r\n--not the boundary\r\n"

    boundary = new_boundary()
    stream = multipart_chunks(
        (({"Content-Type": "application/dicom"}, chunks(n)) for n in range(3)), boundary
    )
    first = next(stream)
    assert first.startswith(f"--{boundary}\r\n".encode()) and drawn == []
    body = first + b"".join(stream)
    assert drawn == [0, 1, 2]
    response = requests.models.Response()
    response.status_code = 200
    response.headers["Content-Type"] = multipart_content_type(boundary)
    response._content = body
    client = DICOMwebClient("http://127.0.0.1:9")
    decoded = list(client._decode_multipart_message(response, stream=False))
    assert decoded == [f"part {n} \r\n--not the boundary\r\n".encode() for n in range(3)]


# ------------------------------------------------------------------------ test data


def _instance(name: str = "CT_small.dcm", **values: str) -> pydicom.Dataset:
    """A pydicom test file with fresh UIDs (file meta kept in step), then ``values``."""
    ds = pydicom.dcmread(sample_file(name))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _encode(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


class _Server(AppServer):
    """The STOW routes alone under /dicomweb, served for real."""

    def __init__(self, lake: str, store_dir: str | None = None, **options: Any) -> None:
        routes = stow_route(lake, store_dir, **options)
        super().__init__(Starlette(routes=[Mount("/dicomweb", routes=routes)]))
        self.dicomweb = f"{self.url}/dicomweb"

    def __enter__(self) -> _Server:
        super().__enter__()
        return self

    def post(
        self,
        parts: list[bytes],
        *,
        study: str | None = None,
        part_type: str = "application/dicom",
        content_type: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        boundary = new_boundary()
        url = f"{self.dicomweb}/studies" + (f"/{study}" if study else "")
        headers = {"Content-Type": content_type or multipart_content_type(boundary)}
        headers.update(kwargs.pop("headers", {}))
        body = kwargs.pop("content", None)
        if body is None:
            body = _body(parts, boundary, part_type=part_type)
        return httpx.post(url, content=body, headers=headers, timeout=60, **kwargs)


@pytest.fixture
def lake(tmp_path: Path) -> str:
    """A lake ingested from real files (CT_small and MR_small)."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(sample_file(name), folder / name)
    path = str(tmp_path / "lake")
    dicomlake.ingest([str(folder)], path, workers=0)
    return path


@pytest.fixture
def server(lake: str) -> Iterator[_Server]:
    with _Server(lake) as running:
        yield running


def _rows(lake: str, sop_uids: list[str]) -> list[tuple[Any, ...]]:
    con = dicomlake.connect(lake)
    try:
        return con.execute(
            "SELECT SOPInstanceUID, status, path, PatientName, SeriesInstanceUID FROM instances "
            "WHERE SOPInstanceUID IN (SELECT unnest(?)) ORDER BY path",
            [sop_uids],
        ).fetchall()
    finally:
        con.close()


def _uids(body: dict[str, Any], key: str) -> list[str]:
    return [item[SOP_INSTANCE].get("Value", [""])[0] for item in body.get(key, {}).get("Value", [])]


def _reasons(body: dict[str, Any]) -> list[int]:
    return [item[REASON]["Value"][0] for item in body[FAILED]["Value"]]


# ------------------------------------------------------------------- stores over HTTP


def test_dicomweb_client_stores_instances_into_the_lake(server: _Server, lake: str) -> None:
    ct, mr = _instance("CT_small.dcm"), _instance("MR_small.dcm")
    client = DICOMwebClient(server.dicomweb)
    result = client.store_instances(datasets=[ct, mr])
    referenced = {item.ReferencedSOPInstanceUID: item for item in result.ReferencedSOPSequence}
    assert set(referenced) == {ct.SOPInstanceUID, mr.SOPInstanceUID}
    assert "FailedSOPSequence" not in result
    assert referenced[ct.SOPInstanceUID].ReferencedSOPClassUID == ct.SOPClassUID
    # dicomweb-client sends "Host: 127.0.0.1" without the port: the URL follows the Host
    assert urllib.parse.urlsplit(referenced[ct.SOPInstanceUID].RetrieveURL).path == (
        f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        f"/instances/{ct.SOPInstanceUID}"
    )
    assert "RetrieveURL" in result and not result.RetrieveURL  # two studies: no one URL

    store = Path(lake) / STORE_FOLDER
    rows = _rows(lake, [ct.SOPInstanceUID, mr.SOPInstanceUID])
    assert [r[1] for r in rows] == ["ok", "ok"]
    for ds in (ct, mr):
        file = store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert file.read_bytes() == _encode(ds)  # byte for byte as sent
        assert f"file://{file}" in [r[2] for r in rows]
    assert list((store / INCOMING).iterdir()) == []


def test_one_study_gets_its_retrieve_url(server: _Server, lake: str) -> None:
    first = _instance()
    second = _instance(StudyInstanceUID=first.StudyInstanceUID)
    client = DICOMwebClient(server.dicomweb)
    result = client.store_instances([first, second], study_instance_uid=first.StudyInstanceUID)
    assert result.RetrieveURL.endswith(f"/dicomweb/studies/{first.StudyInstanceUID}")
    assert len(result.ReferencedSOPSequence) == 2


def test_one_garbage_part_gives_202_and_the_good_ones_are_stored(
    server: _Server, lake: str
) -> None:
    good = [_instance(), _instance("MR_small.dcm")]
    ct_without_uid = _instance()
    del ct_without_uid.SeriesInstanceUID
    response = server.post(
        [_encode(good[0]), b"this is not DICOM", _encode(ct_without_uid), _encode(good[1])]
    )
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+json"
    assert response.headers["warning"].startswith("299 dicomlake: 2 of 4 instances were not")
    body = response.json()
    assert _uids(body, REFERENCED) == [ds.SOPInstanceUID for ds in good]
    assert _reasons(body) == [FAILURE_CANNOT_UNDERSTAND, FAILURE_DOES_NOT_MATCH_SOP_CLASS]
    assert _uids(body, FAILED) == ["", ct_without_uid.SOPInstanceUID]  # known when readable
    rows = _rows(lake, [ds.SOPInstanceUID for ds in [*good, ct_without_uid]])
    assert sorted(r[0] for r in rows) == sorted(ds.SOPInstanceUID for ds in good)
    assert {r[1] for r in rows} == {"ok"}


def test_all_bad_gives_409(server: _Server, lake: str) -> None:
    no_meta = _instance()
    no_meta.file_meta = FileMetaDataset()
    raw = io.BytesIO()  # a bare data set: no preamble, no DICM, no file meta
    pydicom.dcmwrite(raw, no_meta, implicit_vr=True, little_endian=True)
    mismatch = _instance()
    mismatch.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    json_part = server.post([b"{}"], part_type="application/dicom+json")
    assert json_part.status_code == 409
    assert _reasons(json_part.json()) == [FAILURE_CANNOT_UNDERSTAND]
    whole = _encode(_instance())
    response = server.post(
        [raw.getvalue(), b"", whole[:300], _encode(mismatch), whole[:-10000], b"\0" * 200]
    )
    assert response.status_code == 409
    assert "none of the 6 instances was stored" in response.headers["warning"]
    body = response.json()
    assert REFERENCED not in body
    assert _reasons(body) == [
        FAILURE_CANNOT_UNDERSTAND,  # a file meta group without a transfer syntax
        FAILURE_CANNOT_UNDERSTAND,  # empty
        FAILURE_CANNOT_UNDERSTAND,  # cut inside the header
        FAILURE_DOES_NOT_MATCH_SOP_CLASS,  # file meta and data set disagree
        FAILURE_CANNOT_UNDERSTAND,  # cut inside the pixel data
        FAILURE_CANNOT_UNDERSTAND,  # a preamble and nothing else
    ]
    assert _uids(body, FAILED)[3] == mismatch.SOPInstanceUID
    with pytest.raises(requests.HTTPError) as caught:
        DICOMwebClient(server.dicomweb).store_instances([mismatch])
    assert caught.value.response.status_code == 409


def test_an_instance_of_another_study_than_the_url_fails(server: _Server, lake: str) -> None:
    mine = _instance()
    other = _instance("MR_small.dcm")
    response = server.post([_encode(mine), _encode(other)], study=mine.StudyInstanceUID)
    assert response.status_code == 202
    body = response.json()
    assert _uids(body, REFERENCED) == [mine.SOPInstanceUID]
    assert _uids(body, FAILED) == [other.SOPInstanceUID]
    assert _reasons(body) == [FAILURE_DOES_NOT_MATCH_SOP_CLASS]
    assert body[RETRIEVE_URL]["Value"] == [f"{server.dicomweb}/studies/{mine.StudyInstanceUID}"]
    with pytest.raises(requests.HTTPError) as caught:
        DICOMwebClient(server.dicomweb).store_instances([other], mine.StudyInstanceUID)
    assert caught.value.response.status_code == 409
    assert _rows(lake, [other.SOPInstanceUID]) == []
    assert server.post([_encode(mine)], study="1.2.x").status_code == 400


@pytest.mark.parametrize(
    "values",
    [
        {"SOPInstanceUID": "../../../escaped"},
        {"StudyInstanceUID": "../.."},
        {"SeriesInstanceUID": "/tmp"},
        {"SOPInstanceUID": "1.2.3/../4"},
        {"SOPInstanceUID": "1." + "2" * 63},  # 65 characters
        {"StudyInstanceUID": ".."},
    ],
)
def test_uids_that_would_leave_the_store_are_refused(
    server: _Server, lake: str, values: dict[str, str]
) -> None:
    ds = _instance(**values)
    response = server.post([_encode(ds)])
    assert response.status_code == 409
    assert _reasons(response.json()) == [FAILURE_DOES_NOT_MATCH_SOP_CLASS]
    assert _uids(response.json(), FAILED) in ([""], [ds.SOPInstanceUID])
    assert not is_uid(next(iter(values.values())))
    written = [p for p in Path(lake).parent.rglob("*") if p.is_file() and "escaped" in p.name]
    assert written == []
    assert [p.name for p in (Path(lake) / STORE_FOLDER).iterdir()] == [INCOMING]


def test_too_large_is_413_and_stores_nothing(lake: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ct = _encode(_instance())
    with _Server(lake, str(store), limits=Limits(max_total_bytes=len(ct) * 2)) as server:
        declared = server.post([ct, ct, ct])
        assert declared.status_code == 413 and "larger than" in declared.json()["error"]

        def chunked() -> Iterator[bytes]:
            body = _body([ct, ct, ct], "b")
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        streamed = server.post([], content=chunked(), content_type=multipart_content_type("b"))
        assert streamed.status_code == 413
        assert server.post([ct]).status_code == 200
    with _Server(lake, str(store), limits=Limits(max_parts=2)) as server:
        assert server.post([b"x"] * 3).status_code == 413
    assert len(list(store.rglob("*.dcm"))) == 1


def test_request_errors(server: _Server) -> None:
    ct = _encode(_instance())
    assert server.post([ct], content_type="application/dicom").status_code == 415
    dicom_json = 'multipart/related; type="application/dicom+json"; boundary=b'
    assert server.post([ct], content_type=dicom_json).status_code == 415
    unclosed = server.post(
        [], content=b"--b\r\n\r\n" + ct, content_type=multipart_content_type("b")
    )
    assert unclosed.status_code == 400 and "closing boundary" in unclosed.json()["error"]
    empty = server.post([], content=b"--b--\r\n", content_type=multipart_content_type("b"))
    assert empty.status_code == 400 and "no parts" in empty.json()["error"]
    xml_only = server.post([ct], headers={"Accept": "application/dicom+xml"})
    assert xml_only.status_code == 406
    either = server.post([ct], headers={"Accept": "application/dicom+xml, application/json"})
    assert either.status_code == 200
    assert httpx.get(f"{server.dicomweb}/studies").status_code == 405


def test_storing_again_replaces_the_file_and_its_row(server: _Server, lake: str) -> None:
    ds = _instance(PatientName="First^Version")
    assert server.post([_encode(ds)]).status_code == 200
    ds.PatientName = "Second^Version"
    assert server.post([_encode(ds)]).status_code == 200
    rows = _rows(lake, [ds.SOPInstanceUID])
    assert [(r[1], str(r[3])) for r in rows] == [("ok", "Second^Version")]

    # the same SOP Instance UID in another series: the old file and row go
    old_series = ds.SeriesInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Third^Version"
    assert server.post([_encode(ds)]).status_code == 200
    rows = _rows(lake, [ds.SOPInstanceUID])
    assert [(r[1], str(r[3]), r[4]) for r in rows] == [
        ("ok", "Third^Version", ds.SeriesInstanceUID)
    ]
    assert list((Path(lake) / STORE_FOLDER / ds.StudyInstanceUID / old_series).glob("*")) == []
    assert list((Path(lake) / STORE_FOLDER).rglob(f"{ds.SOPInstanceUID}.dcm")) == [
        Path(lake)
        / STORE_FOLDER
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    ]

    # twice in one request: the last part wins
    ds.PatientName = "Fourth^Version"
    later = pydicom.dcmread(io.BytesIO(_encode(ds)))
    later.PatientName = "Fifth^Version"
    response = server.post([_encode(ds), _encode(later)])
    assert response.status_code == 200
    assert [str(r[3]) for r in _rows(lake, [ds.SOPInstanceUID])] == ["Fifth^Version"]


def test_concurrent_stores_all_land(server: _Server, lake: str) -> None:
    batches = [[_instance() for _ in range(2)] for _ in range(4)]
    statuses: list[int] = []

    def send(batch: list[pydicom.Dataset]) -> None:
        statuses.append(server.post([_encode(ds) for ds in batch]).status_code)

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * 4
    uids = [ds.SOPInstanceUID for batch in batches for ds in batch]
    assert sorted(r[0] for r in _rows(lake, uids) if r[1] == "ok") == sorted(uids)


def test_a_failed_ingest_is_a_processing_failure_and_heals_next_time(
    server: _Server, lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ingest = dicomlake.ingest

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise LakeError("cannot write lake: simulated", lake=lake)

    first = _instance()
    monkeypatch.setattr(dicomlake, "ingest", broken)
    response = server.post([_encode(first)])
    assert response.status_code == 409
    assert _reasons(response.json()) == [FAILURE_PROCESSING]
    assert _rows(lake, [first.SOPInstanceUID]) == []

    monkeypatch.setattr(dicomlake, "ingest", real_ingest)
    second = _instance()
    assert server.post([_encode(second)]).status_code == 200
    rows = _rows(lake, [first.SOPInstanceUID, second.SOPInstanceUID])
    assert sorted(r[0] for r in rows) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])


def test_leftovers_of_a_crashed_request_are_not_ingested(server: _Server, lake: str) -> None:
    incoming = Path(lake) / STORE_FOLDER / INCOMING
    (incoming / "dead.part").write_bytes(_encode(_instance())[:1000])
    assert server.post([_encode(_instance())]).status_code == 200
    assert list(incoming.iterdir()) == []
    con = dicomlake.connect(lake)
    try:
        ((bad,),) = con.sql("SELECT count(*) FROM instances WHERE status <> 'ok'").fetchall()
    finally:
        con.close()
    assert bad == 0


def test_the_lake_reads_and_ingests_with_its_store_folder(
    server: _Server, lake: str, tmp_path: Path
) -> None:
    ds = _instance()
    assert server.post([_encode(ds)]).status_code == 200
    assert (Path(lake) / STORE_FOLDER).is_dir()
    more = tmp_path / "more"
    more.mkdir()
    shutil.copyfile(sample_file("rtstruct.dcm"), more / "rtstruct.dcm")
    summary = dicomlake.ingest([str(more)], lake, workers=0)
    assert summary.ok == 1
    con = dicomlake.connect(lake)
    try:
        total, stored = con.sql(
            "SELECT count(*), count(*) FILTER (WHERE path LIKE '%/_store/%') FROM instances"
        ).fetchall()[0]
        assert (total, stored) == (4, 1)  # CT, MR, RT struct, and the stored CT
    finally:
        con.close()
    from deltalake import DeltaTable

    files = DeltaTable(os.path.join(lake, "instances")).file_uris()
    assert files and not any("_store" in f for f in files)


def test_thumbnails_are_drawn_when_the_lake_has_them(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), folder / "ct.dcm")
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(folder)], lake, workers=0, thumbnails=True)
    ds = _instance()
    with _Server(lake) as server:
        assert server.post([_encode(ds)]).status_code == 200
    con = dicomlake.connect(lake)
    try:
        found = con.execute(
            "SELECT t.status FROM thumbnails t JOIN instances i USING (row_id) "
            "WHERE i.SOPInstanceUID = ?",
            [ds.SOPInstanceUID],
        ).fetchall()
    finally:
        con.close()
    assert found == [("ok",)]


def test_object_storage_lakes_need_a_store_folder(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="--store-dir"):
        default_store_dir("s3://bucket/lake")
    with pytest.raises(LakeError, match="--store-dir"):
        stow_route("s3://bucket/lake")
    assert default_store_dir(str(tmp_path / "lake")) == str(tmp_path / "lake" / STORE_FOLDER)
    assert len(stow_route("s3://bucket/lake", str(tmp_path / "store"))) == 2


# ------------------------------------------------------------- the served app and CLI


def test_the_served_app_stores_and_then_finds_the_instances(lake: str) -> None:
    ct = _instance()
    with LiveServer(lake, allow_store=True) as live:
        client = DICOMwebClient(f"{live.url}/dicomweb")
        result = client.store_instances([ct])
        assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [
            ct.SOPInstanceUID
        ]
        deadline = time.monotonic() + 10
        while True:  # the viewer picks up the new lake version within check_every
            found = client.search_for_instances(ct.StudyInstanceUID)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [pydicom.Dataset.from_json(f).SOPInstanceUID for f in found] == [ct.SOPInstanceUID]
    assert (Path(lake) / STORE_FOLDER / ct.StudyInstanceUID).is_dir()


def test_serve_passes_the_store_options(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import dicomlake.viewer
    from dicomlake.cli import app as cli_app

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(dicomlake.viewer, "serve", lambda lake, **kw: calls.append(kw))
    runner = CliRunner()
    help_text = runner.invoke(cli_app, ["serve", "--help"]).output
    assert "--allow-store" in help_text and "--store-dir" in help_text
    assert runner.invoke(cli_app, ["serve", "--lake", lake]).exit_code == 0
    store = str(tmp_path / "uploads")
    args = ["serve", "--lake", lake, "--allow-store", "--store-dir", store]
    assert runner.invoke(cli_app, args).exit_code == 0
    assert [(c["allow_store"], c["store_dir"]) for c in calls] == [(False, None), (True, store)]
    refused = runner.invoke(cli_app, ["serve", "--lake", lake, "--store-dir", store])
    assert refused.exit_code == 2 and "needs --allow-store" in refused.output
