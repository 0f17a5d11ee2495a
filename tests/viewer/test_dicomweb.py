"""DICOMweb over a lake, driven by a real client (dicomweb-client) over real HTTP.

The lake holds real files: a CT series of three slices (and a copy of one slice in
another folder), a 10-frame MR, a JPEG 2000 ultrasound and a JPEG baseline picture
read in place from a zip archive (one member stored, one deflated), an ECG, and a
JPEG file whose pixel data is garbage. What a client retrieves is compared with what
pydicom reads from the files themselves.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

import dicomlake
from dicomlake.sample import sample_file
from dicomlake.search import query as search
from helpers.servers import LiveServer

CT_STUDY, CT_SERIES = "1.2.3.1", "1.2.3.1.1"
MR_STUDY, MR_SERIES = "1.2.3.2", "1.2.3.2.1"
ZIP_STUDY, US_SERIES, SC_SERIES = "1.2.3.3", "1.2.3.3.1", "1.2.3.3.2"
ECG_STUDY = "1.2.3.4"
BAD_STUDY, BAD_SERIES, BAD_SOP = "1.2.3.5", "1.2.3.5.1", "1.2.3.5.1.1"
ALL_STUDIES = {CT_STUDY, MR_STUDY, ZIP_STUDY, ECG_STUDY, BAD_STUDY}


def _edit(source: str, **attrs: Any) -> pydicom.Dataset:
    ds = pydicom.dcmread(source)
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


def make_corpus(root: Path) -> dict[str, Path]:
    """The files, written; returns where each instance's original lies, by SOP UID."""
    files: dict[str, Path] = {}
    study = {"StudyInstanceUID": CT_STUDY, "PatientID": "P1", "PatientName": "Doe^John"}
    study |= {"StudyDate": "20150304", "StudyTime": "101500", "AccessionNumber": "A1"}
    for n in (1, 2, 3):
        ds = _edit(
            sample_file("CT_small.dcm"),
            SeriesInstanceUID=CT_SERIES,
            SOPInstanceUID=f"{CT_SERIES}.{n}",
            InstanceNumber=n,
            ImagePositionPatient=[0.0, 0.0, float(n)],
            **study,
        )
        path = root / "ct" / f"slice{n}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        files[ds.SOPInstanceUID] = path
    (root / "copy").mkdir()
    shutil.copyfile(root / "ct" / "slice1.dcm", root / "copy" / "slice1.dcm")

    mr = _edit(
        sample_file("emri_small.dcm"),
        StudyInstanceUID=MR_STUDY,
        SeriesInstanceUID=MR_SERIES,
        PatientID="P2",
        PatientName="Smith^Anna",
        StudyDate="20190101",
        StudyTime="235959",
    )
    (root / "mr").mkdir()
    mr.save_as(root / "mr" / "mr.dcm")
    files[mr.SOPInstanceUID] = root / "mr" / "mr.dcm"

    zipped = {"StudyInstanceUID": ZIP_STUDY, "PatientID": "P3", "PatientName": "van Dam^Piet"}
    zipped |= {"StudyDate": "20101010"}
    us = _edit(sample_file("US1_J2KR.dcm"), SeriesInstanceUID=US_SERIES, **zipped)
    sc = _edit(
        get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"),
        SeriesInstanceUID=SC_SERIES,
        Modality="OT",
        **zipped,
    )
    (root / "parts").mkdir()
    with zipfile.ZipFile(root / "archive.zip", "w") as archive:
        for ds, name, method in (
            (us, "us.dcm", zipfile.ZIP_STORED),
            (sc, "sc.dcm", zipfile.ZIP_DEFLATED),
        ):
            ds.save_as(root / "parts" / name)
            archive.write(root / "parts" / name, name, compress_type=method)
            files[ds.SOPInstanceUID] = root / "parts" / name

    ecg = _edit(
        get_testdata_file("waveform_ecg.dcm"),
        StudyInstanceUID=ECG_STUDY,
        PatientID="P4",
        StudyDate="20220202",
        StudyTime="120000",
    )
    (root / "ecg").mkdir()
    ecg.save_as(root / "ecg" / "ecg.dcm")
    files[ecg.SOPInstanceUID] = root / "ecg" / "ecg.dcm"

    bad = _edit(
        get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"),
        StudyInstanceUID=BAD_STUDY,
        SeriesInstanceUID=BAD_SERIES,
        SOPInstanceUID=BAD_SOP,
        PatientID="P5",
        PatientName="Broken^Pixels",
        StudyDate="20220203",
        StudyTime="120000",
        Modality="XC",
    )
    bad.PixelData = encapsulate([b"\xff\xd8 not a JPEG at all " * 8])
    (root / "bad").mkdir()
    bad.save_as(root / "bad" / "bad.dcm")
    files[BAD_SOP] = root / "bad" / "bad.dcm"
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("dicomweb")
    data = root / "data"
    files = make_corpus(data)
    sources = [str(data / d) for d in ("ct", "copy", "mr", "ecg", "bad")]
    sources.append(str(data / "archive.zip"))
    lake = str(root / "lake")
    dicomlake.ingest(sources, lake, workers=0, thumbnails=dicomlake.ThumbnailOptions())
    return lake, files


@pytest.fixture(scope="module")
def server(corpus: tuple[str, dict[str, Path]]) -> Iterator[LiveServer]:
    with LiveServer(corpus[0]) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> DICOMwebClient:
    return DICOMwebClient(server.url + "/dicomweb")


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/dicomweb", timeout=30) as c:
        yield c


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [item[tag]["Value"][0] for item in items if item.get(tag, {}).get("Value")]


def uids_of(items: list[dict[str, Any]], level: str = "study") -> set[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return set(values(items, tag))


def sop(files: dict[str, Path], uid: str) -> pydicom.Dataset:
    return pydicom.dcmread(files[uid])


def first_sop(client: DICOMwebClient, study: str, series: str) -> str:
    found = client.search_for_instances(study, series)
    return str(found[0]["00080018"]["Value"][0])


# --------------------------------------------------------------------------- QIDO-RS


def test_studies_with_their_counts_and_modalities(client: DICOMwebClient) -> None:
    studies = {s["0020000D"]["Value"][0]: s for s in client.search_for_studies()}
    assert set(studies) == ALL_STUDIES
    ct = studies[CT_STUDY]
    # three slices, and the copy of one of them counted once
    assert ct["00201208"]["Value"] == [3] and ct["00201206"]["Value"] == [1]
    assert ct["00080061"]["Value"] == ["CT"]
    assert ct["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert ct["00080020"]["Value"] == ["20150304"]
    assert studies[ZIP_STUDY]["00080061"]["Value"] == ["OT", "US"]
    assert studies[ZIP_STUDY]["00201206"]["Value"] == [2]
    assert ct["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{CT_STUDY}")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"PatientID": "P1"}, {CT_STUDY}),
        ({"PatientID": "p1"}, set()),  # single values match case-sensitively
        ({"PatientName": "Doe*"}, {CT_STUDY}),
        ({"PatientName": "*a*"}, {MR_STUDY, ZIP_STUDY}),
        ({"PatientName": "Smith^Ann?"}, {MR_STUDY}),
        ({"StudyDate": "20100101-20151231"}, {CT_STUDY, ZIP_STUDY}),
        ({"StudyDate": "-20120101"}, {ZIP_STUDY}),
        ({"StudyDate": "20160101-"}, {MR_STUDY, ECG_STUDY, BAD_STUDY}),
        ({"StudyDate": "20150304"}, {CT_STUDY}),
        ({"StudyTime": "2300-"}, {MR_STUDY}),
        ({"StudyTime": "10"}, {CT_STUDY}),
        ({"ModalitiesInStudy": "US"}, {ZIP_STUDY}),
        ({"ModalitiesInStudy": "CT\\MR"}, {CT_STUDY, MR_STUDY}),
        ({"StudyInstanceUID": f"{CT_STUDY},{MR_STUDY}"}, {CT_STUDY, MR_STUDY}),
        ({"AccessionNumber": "A1"}, {CT_STUDY}),
        ({"00100020": "P2"}, {MR_STUDY}),
        ({"SOPInstanceUID": f"{CT_SERIES}.2"}, {CT_STUDY}),  # any instance matches
    ],
)
def test_study_matching(
    client: DICOMwebClient, filters: dict[str, str], expected: set[str]
) -> None:
    assert uids_of(client.search_for_studies(search_filters=filters)) == expected


def test_fuzzy_names_match_any_component_in_any_case(client: DICOMwebClient) -> None:
    found = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "anna"})
    assert uids_of(found) == {MR_STUDY}
    found = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "DAM"})
    assert uids_of(found) == {ZIP_STUDY}
    strict = client.search_for_studies(search_filters={"PatientName": "anna"})
    assert strict == []


def test_percent_encoded_wildcards(http: httpx.Client) -> None:
    response = http.get("/studies?PatientName=Doe%2A")
    assert response.status_code == 200
    assert uids_of(response.json()) == {CT_STUDY}


def test_matched_and_included_attributes_are_returned(client: DICOMwebClient) -> None:
    found = client.search_for_studies(
        search_filters={"PatientID": "P1"}, fields=["StudyDescription", "00180050"]
    )
    assert len(found) == 1
    assert found[0]["00100020"]["Value"] == ["P1"]
    assert "00081030" in found[0] and found[0]["00180050"]["vr"] == "DS"  # SliceThickness
    everything = client.search_for_studies(search_filters={"PatientID": "P1"}, fields=["all"])
    assert "00280030" in everything[0]  # PixelSpacing of the representative file


def test_series_and_instance_levels(client: DICOMwebClient) -> None:
    assert uids_of(client.search_for_series(CT_STUDY), "series") == {CT_SERIES}
    assert uids_of(client.search_for_series(search_filters={"Modality": "OT"}), "series") == {
        SC_SERIES
    }
    series = {s["0020000E"]["Value"][0]: s for s in client.search_for_series(ZIP_STUDY)}
    assert series[US_SERIES]["00201209"]["Value"] == [1]
    instances = client.search_for_instances(CT_STUDY, CT_SERIES)
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3]
    assert instances[0]["00280010"] == {"vr": "US", "Value": [128]}
    by_patient = client.search_for_instances(search_filters={"PatientID": "P2"})
    assert [i["00280008"]["Value"] for i in by_patient] == [[10]]
    in_study = client.search_for_instances(ZIP_STUDY)
    assert len(in_study) == 2


def test_paging_is_stable_and_says_when_cut(http: httpx.Client, client: DICOMwebClient) -> None:
    everything = [s["0020000D"]["Value"][0] for s in client.search_for_studies()]
    pages = [
        s["0020000D"]["Value"][0]
        for offset in range(0, 5, 2)
        for s in client.search_for_studies(limit=2, offset=offset)
    ]
    assert pages == everything
    cut = http.get("/studies", params={"limit": 2})
    assert len(cut.json()) == 2 and cut.headers["Warning"].startswith("299 ")
    whole = http.get("/studies", params={"limit": 5})
    assert "Warning" not in whole.headers
    # ordered newest study first
    assert everything == [BAD_STUDY, ECG_STUDY, MR_STUDY, CT_STUDY, ZIP_STUDY]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("StudyDate=2015", "not a date"),
        ("StudyInstanceUID=1.2.x", "not a UID"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("ReferencedSeriesSequence.SeriesInstanceUID=1", "sequences"),
        ("includefield=Nope", "includefield"),
        ("SeriesNumber=one", "whole number"),
    ],
)
def test_bad_queries_are_400_with_the_reason(http: httpx.Client, query: str, message: str) -> None:
    response = http.get(f"/studies?{query}")
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_unknown_parameters_are_ignored_with_a_warning(http: httpx.Client) -> None:
    response = http.get("/studies", params={"NoSuchKeyword": "1", "PatientID": "P1"})
    assert response.status_code == 200 and uids_of(response.json()) == {CT_STUDY}
    assert "NoSuchKeyword" in response.headers["Warning"]


def test_a_lone_star_is_universal_matching(client: DICOMwebClient) -> None:
    """``*`` alone matches studies without the attribute too (PS3.4 C.2.2.2.4)."""
    everything = uids_of(client.search_for_studies())
    assert uids_of(client.search_for_studies(search_filters={"AccessionNumber": "*"})) == everything


def test_uids_in_paths_are_checked(http: httpx.Client) -> None:
    for path in (
        "/studies/1.2.3.x/series",
        "/studies/..%5C..%5Cetc/metadata",
        "/studies/1.2/series/a/instances",
        "/studies/1.2/series/1.2/instances/1.2'--/metadata",
    ):
        assert http.get(path).status_code == 400, path
    assert http.get("/studies/9.9.9/metadata").status_code == 404


def test_header_attributes_not_in_the_index_match_on_the_header(client: DICOMwebClient) -> None:
    # SliceThickness (0018,0050) is no index column: matched on each file's header
    found = client.search_for_instances(search_filters={"SliceThickness": "5.000000"})
    assert uids_of(found, "instance") == {f"{CT_SERIES}.{n}" for n in (1, 2, 3)}
    assert client.search_for_instances(search_filters={"SliceThickness": "7"}) == []


# --------------------------------------------------------------------------- WADO-RS


def test_retrieve_gives_the_stored_files(
    client: DICOMwebClient, corpus: tuple[str, dict[str, Path]]
) -> None:
    files = corpus[1]
    for ds in client.retrieve_study(CT_STUDY) + client.retrieve_study(ZIP_STUDY):
        original = sop(files, ds.SOPInstanceUID)
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.PixelData == original.PixelData
    series = client.retrieve_series(CT_STUDY, CT_SERIES)
    assert sorted(ds.InstanceNumber for ds in series) == [1, 2, 3]
    one = client.retrieve_instance(MR_STUDY, MR_SERIES, first_sop(client, MR_STUDY, MR_SERIES))
    assert np.array_equal(one.pixel_array, pydicom.dcmread(files[one.SOPInstanceUID]).pixel_array)


def test_retrieve_in_explicit_little_endian_decodes(
    client: DICOMwebClient, corpus: tuple[str, dict[str, Path]]
) -> None:
    files = corpus[1]
    us_sop = first_sop(client, ZIP_STUDY, US_SERIES)
    wanted = (("application/dicom", "1.2.840.10008.1.2.1"),)
    ds = client.retrieve_instance(ZIP_STUDY, US_SERIES, us_sop, media_types=wanted)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(files[us_sop]).pixel_array)


def test_undecodable_transcode_is_406(http: httpx.Client) -> None:
    url = f"/studies/{BAD_STUDY}/series/{BAD_SERIES}/instances/{BAD_SOP}"
    explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    assert http.get(url, headers={"Accept": explicit}).status_code == 406
    stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    assert http.get(url, headers={"Accept": stored}).status_code == 200
    other = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
    assert http.get(url, headers={"Accept": other}).status_code == 406


def _comparable(element: Any) -> Any:
    """An element without its bulk data's address or inline bytes, sequences too."""
    if isinstance(element, list):
        return [_comparable(item) for item in element]
    if not isinstance(element, dict):
        return element
    return {
        k: _comparable(v) for k, v in element.items() if k not in ("BulkDataURI", "InlineBinary")
    }


def test_metadata_equals_pydicoms_json(
    client: DICOMwebClient, corpus: tuple[str, dict[str, Path]]
) -> None:
    files = corpus[1]
    for study in (CT_STUDY, MR_STUDY, ZIP_STUDY, ECG_STUDY):
        for meta in client.retrieve_study_metadata(study):
            uid = meta["00080018"]["Value"][0]
            expected = pydicom.dcmread(files[uid]).to_json_dict(bulk_data_threshold=1024)
            expected.pop("FFFCFFFC", None)  # trailing padding: no attribute, not kept
            assert not any(tag.startswith("0002") for tag in meta)
            assert set(meta) == set(expected), uid
            for tag, element in expected.items():
                assert _comparable(meta[tag]) == _comparable(element), (uid, tag)


def test_bulkdata_uris_point_at_this_server(
    client: DICOMwebClient,
    http: httpx.Client,
    server: LiveServer,
    corpus: tuple[str, dict[str, Path]],
) -> None:
    files = corpus[1]
    uid = f"{CT_SERIES}.1"
    # (dicomweb-client 0.61 sends a Host header without the port, so the URIs it is
    # given would name port 80: ask with httpx, then let the client fetch the URI)
    (meta,) = http.get(f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{uid}/metadata").json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{server.url}/dicomweb/studies/{CT_STUDY}/series/{CT_SERIES}/")
    (data,) = client.retrieve_bulkdata(uri)
    assert data == pydicom.dcmread(files[uid]).PixelData


def test_frames_native_and_compressed(
    client: DICOMwebClient, http: httpx.Client, corpus: tuple[str, dict[str, Path]]
) -> None:
    files = corpus[1]
    mr_sop = first_sop(client, MR_STUDY, MR_SERIES)
    mr = pydicom.dcmread(files[mr_sop])
    frames = client.retrieve_instance_frames(MR_STUDY, MR_SERIES, mr_sop, frame_numbers=[2, 10])
    assert frames == [mr.pixel_array[1].tobytes(), mr.pixel_array[9].tobytes()]

    us_sop = first_sop(client, ZIP_STUDY, US_SERIES)
    us = pydicom.dcmread(files[us_sop])
    stored = ((("application/octet-stream", "*")), ("image/jp2", "1.2.840.10008.1.2.4.90"))
    (jp2,) = client.retrieve_instance_frames(
        ZIP_STUDY, US_SERIES, us_sop, frame_numbers=[1], media_types=stored
    )
    assert jp2 == next(generate_frames(us.PixelData, number_of_frames=1))
    raw = (("application/octet-stream", "1.2.840.10008.1.2.1"),)
    (decoded,) = client.retrieve_instance_frames(
        ZIP_STUDY, US_SERIES, us_sop, frame_numbers=[1], media_types=raw
    )
    assert decoded == us.pixel_array.tobytes()

    # what OHIF asks: raw bytes in any syntax, each part naming its syntax
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    for study, series, uid, syntax in (
        (MR_STUDY, MR_SERIES, mr_sop, "1.2.840.10008.1.2.1"),
        (ZIP_STUDY, US_SERIES, us_sop, "1.2.840.10008.1.2.4.90"),
    ):
        response = http.get(
            f"/studies/{study}/series/{series}/instances/{uid}/frames/1",
            headers={"Accept": ohif},
        )
        assert response.status_code == 200
        part_headers = response.content.split(b"\r\n\r\n", 1)[0].decode()
        assert f"application/octet-stream; transfer-syntax={syntax}" in part_headers

    url = f"/studies/{MR_STUDY}/series/{MR_SERIES}/instances/{mr_sop}/frames/11"
    assert http.get(url).status_code == 404
    assert http.get(url.replace("/11", "/1,x")).status_code == 400


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_rendered_and_thumbnails(client: DICOMwebClient, http: httpx.Client) -> None:
    uid = f"{CT_SERIES}.1"
    jpeg = client.retrieve_instance_rendered(CT_STUDY, CT_SERIES, uid)
    image = _image(jpeg)
    assert image.format == "JPEG" and image.size == (128, 128)
    assert np.asarray(image).std() > 10  # a picture, not a flat field
    base = f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{uid}"
    png = http.get(
        f"{base}/rendered", params={"viewport": "64,64"}, headers={"Accept": "image/png"}
    )
    assert png.headers["content-type"] == "image/png" and _image(png.content).size == (64, 64)
    narrow = http.get(
        f"{base}/rendered", params={"window": "40,10"}, headers={"Accept": "image/png"}
    )
    wide = http.get(
        f"{base}/rendered", params={"window": "40,4000"}, headers={"Accept": "image/png"}
    )
    narrow_px, wide_px = np.asarray(_image(narrow.content)), np.asarray(_image(wide.content))
    assert narrow_px.std() > wide_px.std()  # a narrow window has more contrast
    crop = http.get(f"{base}/rendered", params={"viewport": "32,32,0,0,64,64"})
    assert _image(crop.content).size == (32, 32)
    assert http.get(f"{base}/rendered", params={"window": "40"}).status_code == 400
    assert http.get(f"{base}/rendered", headers={"Accept": "image/gif"}).status_code == 406

    series = client.retrieve_series_rendered(CT_STUDY, CT_SERIES)
    assert series  # multipart of the three slices; dicomweb-client gives the first
    for path in (
        f"/studies/{CT_STUDY}/thumbnail",
        f"/studies/{CT_STUDY}/series/{CT_SERIES}/thumbnail",
        f"{base}/thumbnail",
        f"/studies/{MR_STUDY}/series/{MR_SERIES}/instances/"
        f"{first_sop(client, MR_STUDY, MR_SERIES)}/frames/3/thumbnail",
    ):
        response = http.get(path, headers={"Accept": "image/jpeg"})
        assert response.status_code == 200, path
        assert max(_image(response.content).size) <= 128


def test_multiframe_rendered_frames_differ(client: DICOMwebClient) -> None:
    uid = first_sop(client, MR_STUDY, MR_SERIES)
    first = client.retrieve_instance_frames_rendered(MR_STUDY, MR_SERIES, uid, frame_numbers=[1])
    last = client.retrieve_instance_frames_rendered(MR_STUDY, MR_SERIES, uid, frame_numbers=[10])
    assert not np.array_equal(np.asarray(_image(first)), np.asarray(_image(last)))


def test_waveform_is_rendered_as_a_plot(client: DICOMwebClient, http: httpx.Client) -> None:
    (ecg,) = client.search_for_instances(ECG_STUDY)
    series = ecg["0020000E"]["Value"][0]
    uid = ecg["00080018"]["Value"][0]
    response = http.get(
        f"/studies/{ECG_STUDY}/series/{series}/instances/{uid}/rendered",
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    plot = np.asarray(_image(response.content).convert("L"))
    assert plot.std() > 5


def test_wado_uri(http: httpx.Client, corpus: tuple[str, dict[str, Path]]) -> None:
    files = corpus[1]
    uid = f"{CT_SERIES}.2"
    params = {"requestType": "WADO", "studyUID": CT_STUDY, "seriesUID": CT_SERIES, "objectUID": uid}
    image = http.get("/wado", params=params)
    assert image.headers["content-type"] == "image/jpeg" and _image(image.content).size == (
        128,
        128,
    )
    file = http.get("/wado", params={**params, "contentType": "application/dicom"})
    assert file.content == files[uid].read_bytes()
    small = http.get("/wado", params={**params, "rows": "32", "columns": "32"})
    assert _image(small.content).size == (32, 32)
    assert http.get("/wado", params={**params, "requestType": "X"}).status_code == 400
    assert http.get("/wado", params={**params, "objectUID": "9.9"}).status_code == 404


def test_metadata_of_a_big_study_streams_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 instances of one study: metadata arrives in pieces, read a batch at a time."""
    from dicomlake.search.connection import Cursor
    from dicomlake.viewer.dicomweb import retrieve
    from helpers.lake_rows import write_study_rows

    lake = str(tmp_path / "lake")
    write_study_rows(lake, study="1.2.9", n=10_000)
    largest = []
    original = Cursor.fetch

    def counted(self: Cursor, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        rows = original(self, sql, params)
        if "SELECT row_id, meta FROM instances" in sql:
            largest.append(len(rows))
        return rows

    monkeypatch.setattr(Cursor, "fetch", counted)
    with (
        LiveServer(lake) as live,
        httpx.Client(base_url=live.url + "/dicomweb") as c,
        c.stream("GET", "/studies/1.2.9/metadata", timeout=60) as response,
    ):
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    items = json.loads(body)
    assert len(items) == 10_000
    assert len(largest) == 10_000 // retrieve.META_BATCH + 1
    assert max(largest) <= retrieve.META_BATCH


def test_files_gone_since_ingest(tmp_path: Path) -> None:
    """A file deleted after ingest is a 410 alone, and left out of its series."""
    data = tmp_path / "data"
    data.mkdir()
    for n in (1, 2):
        ds = _edit(sample_file("CT_small.dcm"), SOPInstanceUID=f"1.2.7.{n}", InstanceNumber=n)
        ds.save_as(data / f"{n}.dcm")
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(data)], lake, workers=0)
    (data / "1.dcm").unlink()
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    with LiveServer(lake) as live:
        client = DICOMwebClient(live.url + "/dicomweb")
        with httpx.Client(base_url=live.url + "/dicomweb") as http:
            gone = http.get(f"/studies/{study}/series/{series}/instances/1.2.7.1")
            assert gone.status_code == 410 and "cannot be read" in gone.json()["error"]
        assert [d.SOPInstanceUID for d in client.retrieve_series(study, series)] == ["1.2.7.2"]


def test_search_parse_is_bounded() -> None:
    with pytest.raises(search.BadQuery):
        search.parse("study", [("includefield", ",".join(["PatientID"] * 300))])
    parsed = search.parse("study", [("limit", "100000")])
    assert parsed.limit == search.MAX_LIMIT
