"""STOW-RS: an instance stored again at another place leaves no companion row behind.

The old copy's file and ``instances`` row go (see ``test_dicomweb_store.py``); its
thumbnails and acquisition row must go with them.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from starlette.applications import Starlette
from starlette.routing import Mount

import dicomlake
from dicomlake.sample import sample_file
from dicomlake.viewer.dicomweb.multipart import multipart_chunks, multipart_content_type
from dicomlake.viewer.dicomweb.stow import stow_route
from helpers.instance_tables import INSTANCE_TABLES, row_ids_by_table
from helpers.servers import AppServer


def _post(url: str, ds: pydicom.Dataset) -> int:
    body = io.BytesIO()
    ds.save_as(body)
    chunks = multipart_chunks([({"Content-Type": "application/dicom"}, [body.getvalue()])], "b")
    response = httpx.post(
        f"{url}/dicomweb/studies",
        content=b"".join(chunks),
        headers={"Content-Type": multipart_content_type("b")},
        timeout=120,
    )
    return response.status_code


def test_a_stale_copys_thumbnails_and_acquisition_row_go_with_it(tmp_path: Path) -> None:
    folder, lake = tmp_path / "src", str(tmp_path / "lake")
    folder.mkdir()
    shutil.copyfile(sample_file("MR_small.dcm"), folder / "MR_small.dcm")
    dicomlake.ingest([str(folder)], lake, workers=0, thumbnails=True)
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    app = Starlette(routes=[Mount("/dicomweb", routes=stow_route(lake))])
    with AppServer(app) as server:
        assert _post(server.url, ds) == 200
        ds.SeriesInstanceUID = generate_uid()  # the same instance, in another series
        assert _post(server.url, ds) == 200
    tables = row_ids_by_table(lake)
    assert len(tables["instances"]) == 2, tables  # the MR and the CT's new copy
    assert tables == {table: tables["instances"] for table in INSTANCE_TABLES}
