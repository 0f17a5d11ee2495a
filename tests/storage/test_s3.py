"""Object storage end to end: a real S3-compatible server (moto) on 127.0.0.1.

The server is moto's ``ThreadedMotoServer`` bound to 127.0.0.1 on a free port, run in
a child process rather than a thread of the test process: some delta-rs calls
(``DeltaTable.is_deltatable``, its file system handler) block on the network while
holding the GIL, so a server thread in the same process could never answer them.
"""

from __future__ import annotations

import io
import os
import pickle
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import boto3
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.errors import SourceNotFound
from dicomlake.lake import lake_summary
from dicomlake.sample import sample_file
from dicomlake.storage import (
    StorageConfig,
    delta_options,
    fsspec_options,
    parse_storage_option,
)
from helpers.moto_server import KEY, SECRET, moto_endpoint, use_aws_env

pytestmark = pytest.mark.s3


FILES = ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server that lives for the session."""
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """Credentials and endpoint in the standard environment variables (restored after)."""
    use_aws_env(monkeypatch, s3_endpoint, tmp_path)
    return s3_endpoint


@pytest.fixture
def s3(aws_env: str) -> Any:
    """A boto3 client of the test server."""
    return boto3.client("s3", endpoint_url=aws_env)


def _bucket(s3: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.write(sample_file("CT_small.dcm"), "in/a.dcm")
        archive.writestr("readme.txt", "not DICOM")
    return buf.getvalue()


@pytest.fixture
def source_bucket(s3: Any) -> str:
    """``s3://BUCKET/data`` with three DICOM files, a text file and a zip."""
    bucket = _bucket(s3)
    for name in FILES:
        s3.upload_file(str(sample_file(name)), bucket, f"data/{name}")
    s3.put_object(Bucket=bucket, Key="data/notes.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="data/sub/arch.zip", Body=_zip_bytes())
    return bucket


def _rows(lake: str, storage: Any = None, where: str = "true") -> dict[str, dict[str, Any]]:
    con = dicomlake.connect(lake, storage_options=storage)
    try:
        table = con.sql(f"SELECT * FROM instances WHERE {where}").to_arrow_table()
    finally:
        con.close()
    return {row["path"]: row for row in table.to_pylist()}


# ------------------------------------------------------------------- StorageConfig


def test_storage_config_gives_each_library_its_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    config = StorageConfig.from_options(
        {
            "AWS_ACCESS_KEY_ID": "k",
            "aws_secret_access_key": "s",
            "region": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
            "default_block_size": 1024,
        }
    )
    assert config.fsspec() == {
        "key": "k",
        "secret": "s",
        "default_block_size": 1024,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }
    assert config.delta() == {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }
    assert "'s'" not in repr(config)  # the secret is never shown
    assert pickle.loads(pickle.dumps(config)) == config  # workers get it with the kernel
    assert dict(**config) == config.fsspec()  # usable as **storage_options for fsspec

    # nothing set: nothing passed, the libraries read the environment themselves
    assert fsspec_options(None) == {} and delta_options(None) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert delta_options({}) == {"AWS_ALLOW_HTTP": "true"}  # delta-rs refuses http otherwise

    anon = StorageConfig.from_options({"anon": "true"})
    assert anon.fsspec() == {"anon": True}
    assert anon.delta()["AWS_SKIP_SIGNATURE"] == "true"


@pytest.mark.parametrize(
    "options",
    [{"anon": "maybe"}, {"anon": True, "key": "k", "secret": "s"}, {"key": "k"}],
    ids=["anon-not-bool", "anon-with-credentials", "key-without-secret"],
)
def test_storage_config_rejects_bad_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StorageConfig.from_options(options)


def test_parse_storage_option() -> None:
    assert parse_storage_option("A=b=c") == ("A", "b=c")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_storage_option("novalue")


# ----------------------------------------------------------------------- ingest


def test_ingest_from_bucket_into_local_lake(source_bucket: str, tmp_path: Any) -> None:
    lake = str(tmp_path / "lake")
    summary = dicomlake.ingest([f"s3://{source_bucket}/data"], lake, workers=0)
    assert (summary.listed, summary.ok, summary.not_dicom, summary.error_count) == (6, 4, 2, 0)
    rows = _rows(lake)
    base = f"s3://{source_bucket}/data"
    zip_uri = f"{base}/sub/arch.zip"
    assert {p: r["status"] for p, r in rows.items()} == {
        f"{base}/CT_small.dcm": "ok",
        f"{base}/MR_small.dcm": "ok",
        f"{base}/rtstruct.dcm": "ok",
        f"{base}/notes.txt": "not_dicom",
        f"zip://in/a.dcm::{zip_uri}": "ok",
        f"zip://readme.txt::{zip_uri}": "not_dicom",
    }
    ct = rows[f"{base}/CT_small.dcm"]
    assert ct["relative_path"] == "CT_small.dcm" and ct["Modality"] == "CT"
    assert ct["size"] == os.path.getsize(sample_file("CT_small.dcm"))
    assert f'"BulkDataURI": "{base}/CT_small.dcm?offset=' in ct["meta"].replace('":"', '": "')
    member = rows[f"zip://in/a.dcm::{zip_uri}"]
    assert member["relative_path"] == "sub/arch.zip/in/a.dcm"
    assert member["SOPInstanceUID"] == ct["SOPInstanceUID"]

    again = dicomlake.ingest([f"s3://{source_bucket}/data"], lake, workers=0)
    assert (again.skipped_unchanged, again.done) == (6, 0)


def test_lake_in_bucket_explicit_config(
    source_bucket: str, s3: Any, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no credentials in the environment: everything comes from the config
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    storage = StorageConfig(key=KEY, secret=SECRET, region="us-east-1", endpoint_url=aws_env)
    lake = f"s3://{_bucket(s3)}/lakes/one"
    source = f"s3://{source_bucket}/data"
    base = source

    first = dicomlake.ingest([source], lake, workers=0, storage_options=storage)
    assert (first.ok, first.not_dicom, first.commits) == (4, 2, 1)
    con = dicomlake.connect(lake, storage_options=storage)
    assert con.sql("SELECT count(*) FROM instances WHERE status = 'ok'").fetchall() == [(4,)]
    assert con.sql("SELECT count(*) FROM series").fetchall() == [(3,)]
    con.close()

    again = dicomlake.ingest([source], lake, workers=0, storage_options=storage)
    assert (again.skipped_unchanged, again.done, again.commits) == (6, 0, 0)

    # a changed object is re-extracted in place (a MERGE); a deleted one goes with --sync
    s3.upload_file(str(sample_file("JPEG2000.dcm")), source_bucket, "data/MR_small.dcm")
    s3.delete_object(Bucket=source_bucket, Key="data/rtstruct.dcm")
    third = dicomlake.ingest([source], lake, workers=0, sync=True, storage_options=storage)
    assert (third.changed, third.skipped_unchanged, third.deleted) == (1, 4, 1)

    # string filters after a MERGE (files with string_view columns) on an object store
    rows = _rows(lake, storage, where="status = 'ok' AND Modality = 'NM'")
    assert list(rows) == [f"{base}/MR_small.dcm"]
    assert f"{base}/rtstruct.dcm" not in _rows(lake, storage)
    con = dicomlake.connect(lake, storage_options=storage)
    assert lake_summary(con)["files"] == 5
    con.close()


def test_cli_lake_in_bucket_with_workers(
    source_bucket: str, s3: Any, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # credentials only on the command line: worker processes get them with the kernel
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    opts = [
        f"--storage-option=AWS_ACCESS_KEY_ID={KEY}",
        f"--storage-option=AWS_SECRET_ACCESS_KEY={SECRET}",
        f"--storage-option=AWS_ENDPOINT_URL={aws_env}",
    ]
    lake = f"s3://{_bucket(s3)}/lake"
    runner = CliRunner()
    result = runner.invoke(
        app, ["ingest", f"s3://{source_bucket}/data", "--lake", lake, "-w", "2", "-q", *opts]
    )
    assert result.exit_code == 0, result.output
    assert "6 files, 4 ok, 2 not_dicom, 0 errors" in result.output
    result = runner.invoke(
        app,
        [
            "sql",
            "SELECT count(*) AS n FROM instances WHERE status = 'ok'",
            "--lake",
            lake,
            "--format",
            "csv",
            *opts,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "4"
    result = runner.invoke(app, ["info", "--lake", lake, *opts])
    assert result.exit_code == 0, result.output
    # a derived table written into the bucket with the same options
    result = runner.invoke(app, ["thumbnails", "--lake", lake, "-w", "0", "--size", "32", *opts])
    assert result.exit_code == 0, result.output
    assert "thumbnails: 3 instances, 3 drawn, 0 not drawn" in result.output  # 3 with pixels

    # without the options the lake cannot be reached: one line, exit 2
    result = runner.invoke(app, ["info", "--lake", lake, "--storage-option", "BROKEN"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "dicomlake: error: --storage-option takes KEY=VALUE (e.g. AWS_REGION=eu-west-1), "
        "got 'BROKEN'"
    ]


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize("where", ["no-such-bucket-dicomlake/data", "{bucket}/no-such-prefix"])
def test_missing_bucket_or_prefix(source_bucket: str, tmp_path: Any, where: str) -> None:
    source = "s3://" + where.format(bucket=source_bucket)
    with pytest.raises(SourceNotFound) as info:
        dicomlake.ingest([source], str(tmp_path / "lake"), workers=0)
    assert info.value.source == source
    result = CliRunner().invoke(app, ["ingest", source, "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 2
    assert result.output.startswith("dicomlake: error: source not found: s3://")
    assert "Traceback" not in result.output


def test_anonymous_access_is_refused_on_a_private_bucket(source_bucket: str, tmp_path: Any) -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    runner = CliRunner()
    # a private lake: the write probe is refused before anything is extracted
    lake = f"s3://{source_bucket}/lake"
    result = runner.invoke(app, ["ingest", f"s3://{source_bucket}/data", "--lake", lake, "--anon"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"dicomlake: error: cannot write lake at {lake}")
    assert len(result.output.strip().splitlines()) == 1
    # the flag reached s3fs
    assert any(fs.anon for fs in s3fs.S3FileSystem._cache.values())

    # a private object as the source: refused at the start, one line, exit 2
    local = str(tmp_path / "lake")
    one = f"s3://{source_bucket}/data/CT_small.dcm"
    result = runner.invoke(app, ["ingest", one, "--lake", local, "--anon"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"dicomlake: error: source cannot be reached: {one}")
    assert "Forbidden" in result.output and len(result.output.strip().splitlines()) == 1

    # a listable folder of private objects: each refused read is an error row, no hang
    result = runner.invoke(
        app, ["ingest", f"s3://{source_bucket}/data", "--lake", local, "--anon", "-w", "0"]
    )
    assert result.exit_code == 0, result.output
    errors = {r["error"] for r in _rows(local).values()}
    assert errors == {"PermissionError: Forbidden"}


def test_plain_dict_with_delta_style_names(
    source_bucket: str, s3: Any, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Python caller may pass the names delta-rs documents; every layer must cope
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    options = {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": aws_env,
        "AWS_REGION": "us-east-1",
    }
    lake = f"s3://{_bucket(s3)}/lakes/plain"
    source = f"s3://{source_bucket}/data"
    summary = dicomlake.ingest([source], lake, workers=0, sync=True, storage_options=options)
    assert (summary.ok, summary.not_dicom) == (4, 2)
    con = dicomlake.connect(lake, storage_options=options)
    assert con.sql("SELECT count(*) FROM instances").fetchall() == [(6,)]
    con.close()


# ------------------------------------------------------------------- deep learning


@pytest.mark.torch
def test_frame_dataset_reads_a_bucket_lake_in_dataloader_workers(
    source_bucket: str, s3: Any, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from dicomlake.ml import FrameDataset

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    storage = StorageConfig(key=KEY, secret=SECRET, region="us-east-1", endpoint_url=aws_env)
    lake = f"s3://{_bucket(s3)}/lake"
    dicomlake.ingest([f"s3://{source_bucket}/data"], lake, workers=0, storage_options=storage)
    sql = "SELECT path FROM instances WHERE Modality = 'CT' ORDER BY path"
    dataset = FrameDataset(lake, sql, storage_options=storage)
    # the bucket object and the zip member inside the bucket
    assert [p.split("::")[0] for p in dataset.items.column("path").to_pylist()] == [
        f"s3://{source_bucket}/data/CT_small.dcm",
        "zip://in/a.dcm",
    ]
    reference = pydicom.dcmread(sample_file("CT_small.dcm"))
    expected = torch.from_numpy(apply_modality_lut(reference.pixel_array, reference)).float()
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    images = [batch["image"][0, 0] for batch in loader]  # forked workers open the bucket
    assert len(images) == 2
    assert all(torch.equal(image, expected) for image in images)
    assert b"testing" in pickle.dumps(dataset)  # the config travels to the workers


def test_two_writers_of_a_bucket_lake_commit_each_row_once(s3: Any, aws_env: str) -> None:
    """Concurrent writers on object storage: delta-rs claims each version with a
    conditional put, and a writer beaten to it checks the other's rows again."""
    from dicomlake.lake.writer import TableWriter
    from helpers.lake_rows import make_batch
    from helpers.writers import BeatenWriter

    lake = f"s3://{_bucket(s3)}/lake"
    rival = TableWriter(lake, max_rows=10_000)
    rival_rows = make_batch([{"row_id": i} for i in range(50, 150)])
    writer = BeatenWriter(lake, rival, [(rival_rows, False)])
    writer.write(make_batch([{"row_id": i} for i in range(100)]))
    assert writer.flush() == 50
    assert writer.conflicts == 1 and writer.rows_taken == 50
    con = dicomlake.connect(lake)
    assert con.sql("SELECT count(*), count(DISTINCT row_id) FROM instances").fetchall() == [
        (150, 150)
    ]
    con.close()
