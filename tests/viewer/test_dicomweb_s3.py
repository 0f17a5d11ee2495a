"""DICOMweb from a lake in a bucket, over sources in the bucket (a zip among them):
a real S3-compatible server (moto) on loopback, credentials in the environment."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import duckdb
import pydicom
from dicomweb_client.api import DICOMwebClient

import dicomlake
from dicomlake.sample import sample_file
from dicomlake.search.connection import LakeConnection
from helpers.moto_server import moto_endpoint, use_aws_env
from helpers.servers import LiveServer

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A bucket holding a CT file and a zip with an MR; the AWS environment names it."""
    import boto3

    use_aws_env(monkeypatch, endpoint, tmp_path)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.upload_file(str(sample_file("CT_small.dcm")), name, "data/ct.dcm")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.write(sample_file("MR_small.dcm"), "inner/mr.dcm", zipfile.ZIP_DEFLATED)
    s3.put_object(Bucket=name, Key="data/mr.zip", Body=buf.getvalue())
    return name


def test_dicomweb_on_a_bucket_lake(bucket: str) -> None:
    lake = f"s3://{bucket}/lake"
    dicomlake.ingest([f"s3://{bucket}/data"], lake, workers=0)
    with LiveServer(lake) as live:
        client = DICOMwebClient(live.url + "/dicomweb")
        studies = client.search_for_studies()
        assert len(studies) == 2
        for original in ("CT_small.dcm", "MR_small.dcm"):
            expected = pydicom.dcmread(sample_file(original))
            (found,) = client.search_for_instances(
                search_filters={"SOPInstanceUID": expected.SOPInstanceUID}
            )
            study = found["0020000D"]["Value"][0]
            series = found["0020000E"]["Value"][0]
            ds = client.retrieve_instance(study, series, expected.SOPInstanceUID)
            assert ds.PixelData == expected.PixelData
            (frame,) = client.retrieve_instance_frames(
                study, series, expected.SOPInstanceUID, frame_numbers=[1]
            )
            assert frame == expected.pixel_array.tobytes()
            (meta,) = client.retrieve_series_metadata(study, series)
            assert meta["00100020"] == expected.to_json_dict()["00100020"]
    # the server's database reads the lake's prefix of the bucket, nothing beside it
    db = LakeConnection(lake)
    with db.cursor() as cur, pytest.raises(duckdb.Error, match="disabled by configuration"):
        cur.fetch(f"SELECT * FROM read_blob('s3://{bucket}/data/ct.dcm')")
    db.close()
