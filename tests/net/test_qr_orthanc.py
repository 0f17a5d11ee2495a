"""Orthanc, a real PACS, queries the lake and moves a study from it into itself."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom import dcmread

import dicomlake
from dicomlake.net.peers import Peer
from dicomlake.net.qr import QueryRetrieveSCP
from dicomlake.sample import sample_file
from helpers.orthanc import OrthancServer, free_port


def test_orthanc_finds_and_moves_a_study_from_the_lake(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(sample_file(name), source / name)
    lake = tmp_path / "lake"
    dicomlake.ingest([str(source)], str(lake), workers=0)
    mr = dcmread(sample_file("MR_small.dcm"))

    port = free_port()
    modalities = {"lake": ["DICOMLAKE", "127.0.0.1", port]}
    with OrthancServer(tmp_path / "orthanc", DicomModalities=modalities) as orthanc:
        assert orthanc.client is not None
        client = orthanc.client
        pacs = Peer("DLREF", "127.0.0.1", orthanc.dicom_port)
        with QueryRetrieveSCP(str(lake), port=port, destinations=[pacs]):
            assert client.post("/modalities/lake/echo", json={}).status_code == 200
            query = client.post(
                "/modalities/lake/query",
                json={
                    "Level": "Study",
                    "Query": {"PatientID": "4MR1", "StudyInstanceUID": "", "StudyDate": ""},
                },
            )
            assert query.status_code == 200, query.text
            qid = query.json()["ID"]
            answers = client.get(f"/queries/{qid}/answers", params={"expand": "", "simplify": ""})
            assert [(a["StudyInstanceUID"], a["StudyDate"]) for a in answers.json()] == [
                (mr.StudyInstanceUID, mr.StudyDate)
            ]
            moved = client.post(
                f"/queries/{qid}/retrieve", json={"TargetAet": "DLREF", "Synchronous": True}
            )
            assert moved.status_code == 200, moved.text + orthanc.log_tail()
        stored = client.get("/instances", params={"expand": ""}).json()
        uids = {
            client.get(f"/instances/{i['ID']}/simplified-tags").json()["SOPInstanceUID"]
            for i in stored
        }
        assert uids == {mr.SOPInstanceUID}
        got = client.get(f"/instances/{stored[0]['ID']}/file").content
        assert mr.PixelData in got  # the same pixel bytes, as stored in the lake's file
