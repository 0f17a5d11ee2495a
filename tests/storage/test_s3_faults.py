"""Object storage that misbehaves: a real S3 server (moto) behind a fault-injecting proxy.

Every request of the ingest goes over loopback HTTP through :mod:`fault_proxy`, which
slows answers, resets connections (before the answer or mid-body), answers 500
InternalError or 503 SlowDown, hangs, or shortens listing pages, by a deterministic
schedule. What is asserted is what a user sees: the rows and their statuses, the
error class of a file that kept failing, the summary's counts per class, the CLI's
exit code, and how long a hopeless file may take. The proxy's counts show that the
retries happened.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import boto3
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file
from dicomlake.storage import Retries, StorageConfig, storage_error
from helpers.fault_proxy import Fault, FaultProxy, fault_proxy
from helpers.moto_server import moto_endpoint

pytestmark = pytest.mark.s3

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
DICOMS = ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm")
# retries fast enough for tests; timeouts loose enough for a busy 2-core machine
QUICK = Retries(max_attempts=3, connect_timeout=5, read_timeout=10)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, FaultProxy]]:
    """(moto URL, proxy in front of it), each in its own process, for this module."""
    with moto_endpoint() as moto, fault_proxy(moto) as proxy:
        yield moto, proxy


@pytest.fixture
def proxy(
    servers: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Iterator[FaultProxy]:
    """The proxy with no faults; no AWS setting of the environment leaks in."""
    import s3fs

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # a fresh client per test: botocore's retry budget must not carry over
    s3fs.S3FileSystem.clear_instance_cache()
    proxy = servers[1]
    proxy.configure()
    yield proxy
    proxy.configure()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(servers: tuple[str, FaultProxy]) -> str:
    """A bucket (filled directly, not through the proxy) with ``data/``: 3 DICOM + 1 text."""
    client = _client(servers)
    name = f"f-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    for dicom in DICOMS:
        client.upload_file(str(sample_file(dicom)), name, f"data/{dicom}")
    client.put_object(Bucket=name, Key="data/notes.txt", Body=b"not DICOM")
    return name


def _ingest(
    proxy: FaultProxy, bucket: str, lake: str, retries: Retries = QUICK, **options: Any
) -> Any:
    """Ingest the bucket's ``data/`` through the proxy in this process."""
    return dicomlake.ingest(
        [f"s3://{bucket}/data"],
        lake,
        workers=0,
        storage_options=_config(proxy, retries),
        **options,
    )


def _client(servers: tuple[str, FaultProxy]) -> Any:
    """A boto3 client of moto itself, not through the proxy."""
    return boto3.client(
        "s3",
        endpoint_url=servers[0],
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    )


def _config(proxy: FaultProxy, retries: Retries = QUICK) -> StorageConfig:
    return StorageConfig(
        key=KEY, secret=SECRET, region=REGION, endpoint_url=proxy.url, retries=retries
    )


def _put(servers: tuple[str, FaultProxy], bucket: str, key: str, body: bytes) -> None:
    client = _client(servers)
    client.put_object(Bucket=bucket, Key=key, Body=body)


def _rows(lake: str) -> dict[str, dict[str, Any]]:
    con = dicomlake.connect(lake)
    try:
        table = con.sql("SELECT path, status, error FROM instances").to_arrow_table()
    finally:
        con.close()
    return {row["path"]: row for row in table.to_pylist()}


def _statuses(lake: str) -> dict[str, str]:
    return {path: row["status"] for path, row in _rows(lake).items()}


def _expected(bucket: str, **overrides: str) -> dict[str, str]:
    """Status per path of the ``bucket`` fixture's files, with some overridden."""
    base = f"s3://{bucket}/data/"
    statuses = {base + name: "ok" for name in DICOMS} | {base + "notes.txt": "not_dicom"}
    return statuses | {base + name: status for name, status in overrides.items()}


# ------------------------------------------------------------------ transient faults


def test_slow_answers_within_the_timeouts_are_just_slow(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    proxy.configure(Fault("get", "delay", seconds=0.3), Fault("list", "delay", seconds=0.3))
    lake = str(tmp_path / "lake")
    summary = _ingest(proxy, bucket, lake)
    assert (summary.ok, summary.not_dicom, summary.error_count) == (3, 1, 0)
    assert _statuses(lake) == _expected(bucket)
    counts = proxy.counts()
    assert counts.injected["delay"] == counts.requests["get"] + counts.requests["list"]
    assert counts.requests["get"] >= 4  # each object was read through the slow proxy


def test_faults_on_the_first_attempts_are_retried(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    # each object meets another fault on its first attempts; the listing and the
    # probe of the source root too
    proxy.configure(
        Fault("get", "reset", key="data/CT_small.dcm", times=2),
        Fault("get", "reset_mid", key="data/MR_small.dcm", times=1),  # half a body
        Fault("get", "500", key="data/rtstruct.dcm", times=2),
        Fault("get", "503", key="data/notes.txt", times=2),
        Fault("head", "503", key="data", times=2),
        Fault("list", "reset", key="data/", times=1),
    )
    lake = str(tmp_path / "lake")
    summary = _ingest(proxy, bucket, lake)
    assert (summary.ok, summary.not_dicom, summary.error_count) == (3, 1, 0)
    assert _statuses(lake) == _expected(bucket)
    counts = proxy.counts()
    assert counts.injected == {"reset": 3, "reset_mid": 1, "500": 2, "503": 4}
    assert counts.of("get", "data/CT_small.dcm") == 3  # two resets, then the answer
    assert counts.of("get", "data/MR_small.dcm") == 2  # a cut body is read again
    assert counts.of("get", "data/rtstruct.dcm") == 3
    assert counts.of("get", "data/notes.txt") == 3
    assert counts.of("head", "data") >= 3  # the source's root: probed, then listed


def test_a_key_that_keeps_failing_is_an_error_row_with_its_cause(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    proxy.configure(
        Fault("get", "503", key="data/CT_small.dcm"),
        Fault("get", "500", key="data/MR_small.dcm"),
        Fault("get", "reset", key="data/rtstruct.dcm"),
    )
    lake = str(tmp_path / "lake")
    options = [
        f"--storage-option=AWS_ACCESS_KEY_ID={KEY}",
        f"--storage-option=AWS_SECRET_ACCESS_KEY={SECRET}",
        f"--storage-option=AWS_REGION={REGION}",
        f"--storage-option=AWS_ENDPOINT_URL={proxy.url}",
        "--storage-option=max_attempts=2",
        "--storage-option=read_timeout=10",
    ]
    source = f"s3://{bucket}/data"
    result = CliRunner().invoke(app, ["ingest", source, "--lake", lake, "-w", "0", "-q", *options])
    # the run finishes and says what failed, by class; error rows are not a failed run
    assert result.exit_code == 0, result.output
    assert "4 files, 0 ok, 1 not_dicom, 3 errors (" in result.output
    for part in ("Throttled 1", "ServerError 1", "NetworkError 1"):
        assert part in result.output
    rows = _rows(lake)
    base = f"s3://{bucket}/data/"
    assert rows[base + "notes.txt"]["status"] == "not_dicom"
    assert rows[base + "CT_small.dcm"]["error"] == (
        "Throttled: HTTP 503 SlowDown on GetObject, retries exhausted (max_attempts=2)"
    )
    assert rows[base + "MR_small.dcm"]["error"] == (
        "ServerError: HTTP 500 InternalError on GetObject, retries exhausted (max_attempts=2)"
    )
    network = rows[base + "rtstruct.dcm"]["error"]
    assert network.startswith("NetworkError: connection failed (")
    assert network.endswith("retries exhausted (max_attempts=2)")
    counts = proxy.counts()
    # botocore's attempts, and s3fs's once more: within the documented 4 * max_attempts
    for key in ("data/CT_small.dcm", "data/MR_small.dcm", "data/rtstruct.dcm"):
        assert 2 <= counts.of("get", key) <= 4 * 2


def test_a_key_that_hangs_is_an_error_row_within_the_bound(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    retries = Retries(max_attempts=1, connect_timeout=2, read_timeout=1)
    proxy.configure(Fault("get", "hang", key="data/MR_small.dcm", seconds=60))
    lake = str(tmp_path / "lake")
    summary = dicomlake.ingest(
        [f"s3://{bucket}/data"], lake, workers=0, storage_options=_config(proxy, retries)
    )
    assert dict(summary.errors) == {"StorageTimeout": 1}
    assert _statuses(lake) == _expected(bucket, **{"MR_small.dcm": "error"})
    error = _rows(lake)[f"s3://{bucket}/data/MR_small.dcm"]["error"]
    assert error.startswith("StorageTimeout: no answer within read_timeout=1 s")
    # the client gave up on each request after read_timeout (a wait for the server's
    # 60 s would have ended in an answer, not a StorageTimeout), and a read makes at
    # most 4 * max_attempts requests: the documented bound on the work one file costs
    hung = proxy.counts().of("get", "data/MR_small.dcm")
    assert 1 <= hung <= 4 * retries.max_attempts


@pytest.mark.slow
def test_the_engine_file_timeout_bounds_a_read_the_timeouts_allow(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    # loose storage timeouts: the per-file timeout of the worker pool cuts it short
    retries = Retries(max_attempts=1, read_timeout=60)
    proxy.configure(Fault("get", "hang", key="data/MR_small.dcm", seconds=60))
    lake = str(tmp_path / "lake")
    summary = dicomlake.ingest(
        [f"s3://{bucket}/data"],
        lake,
        workers=1,
        file_timeout=2,
        storage_options=_config(proxy, retries),
    )
    assert dict(summary.errors) == {"Timeout": 1}
    assert _statuses(lake) == _expected(bucket, **{"MR_small.dcm": "error"})


# ------------------------------------------------------------------------- listing


def test_a_paginated_listing_returns_every_object(
    servers: tuple[str, FaultProxy], proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    extra = [f"data/more/t{i:02d}.txt" for i in range(9)]
    for key in extra:
        _put(servers, bucket, key, b"x")
    proxy.configure(max_keys=2)  # the server answers listings 2 entries at a time
    lake = str(tmp_path / "lake")
    summary = _ingest(proxy, bucket, lake)
    base = f"s3://{bucket}/"
    expected = _expected(bucket) | {base + key: "not_dicom" for key in extra}
    assert _statuses(lake) == expected
    assert summary.listed == len(expected) == 13
    counts = proxy.counts()
    pages = math.ceil(len(extra) / 2)
    assert counts.of("list", "data/more/", page=pages) == 1  # the last page was asked for
    assert counts.of("list", "data/more/", page=pages + 1) == 0


def test_a_listing_page_that_fails_for_a_while_is_retried(
    servers: tuple[str, FaultProxy], proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    extra = [f"data/more/t{i}.txt" for i in range(6)]
    for key in extra:
        _put(servers, bucket, key, b"x")
    proxy.configure(
        Fault("list", "503", key="data/more/", pages=(2,), times=2),
        Fault("list", "reset", key="data/more/", pages=(3,), times=1),
        max_keys=2,
    )
    lake = str(tmp_path / "lake")
    summary = _ingest(proxy, bucket, lake)
    base = f"s3://{bucket}/"
    assert _statuses(lake) == _expected(bucket) | {base + key: "not_dicom" for key in extra}
    assert (summary.listed, summary.error_count) == (10, 0)
    counts = proxy.counts()
    assert counts.injected == {"503": 2, "reset": 1}
    assert counts.of("list", "data/more/", page=2) == 3  # two 503 SlowDown, then the page
    assert counts.of("list", "data/more/", page=3) == 2  # a reset, then the page


def test_a_folder_that_cannot_be_listed_is_an_error_row(
    servers: tuple[str, FaultProxy], proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    _put(servers, bucket, "data/sub/a.txt", b"x")
    _put(servers, bucket, "data/sub/deeper/b.txt", b"x")
    proxy.configure(Fault("list", "500", key="data/sub/"))
    lake = str(tmp_path / "lake")
    summary = dicomlake.ingest(
        [f"s3://{bucket}/data"],
        lake,
        workers=0,
        storage_options=_config(proxy, Retries(max_attempts=2)),
    )
    folder = f"s3://{bucket}/data/sub/"
    # the folder's files cannot be seen, so the folder itself is counted
    assert _statuses(lake) == _expected(bucket) | {folder: "error"}
    assert _rows(lake)[folder]["error"] == (
        "ServerError: HTTP 500 InternalError on ListObjectsV2, retries exhausted (max_attempts=2)"
    )
    assert dict(summary.errors) == {"ServerError": 1}
    assert proxy.counts().of("list", "data/sub/") == 2  # max_attempts, then gave up


def test_a_transient_error_row_is_read_again_by_the_next_run(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    proxy.configure(Fault("get", "503", key="data/CT_small.dcm"))
    lake = str(tmp_path / "lake")
    config = _config(proxy, Retries(max_attempts=2))
    first = dicomlake.ingest([f"s3://{bucket}/data"], lake, workers=0, storage_options=config)
    assert dict(first.errors) == {"Throttled": 1}
    proxy.configure()  # the store has calmed down
    second = dicomlake.ingest([f"s3://{bucket}/data"], lake, workers=0, storage_options=config)
    assert second.changed == 1 and second.skipped_unchanged == 3  # only the throttled file
    assert _statuses(lake) == _expected(bucket)  # its row replaced: one row, now ok


def test_sync_keeps_the_rows_under_a_folder_it_could_not_list(
    servers: tuple[str, FaultProxy], proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    _put(servers, bucket, "data/sub/MR_small.dcm", sample_file("MR_small.dcm").read_bytes())
    lake = str(tmp_path / "lake")
    config = _config(proxy, Retries(max_attempts=2))
    source = f"s3://{bucket}/data"
    dicomlake.ingest([source], lake, workers=0, storage_options=config)
    inner = f"s3://{bucket}/data/sub/MR_small.dcm"
    assert _statuses(lake)[inner] == "ok"
    proxy.configure(Fault("list", "500", key="data/sub/"))
    synced = dicomlake.ingest([source], lake, workers=0, sync=True, storage_options=config)
    # not seen is not gone: the file under the unlisted folder keeps its row
    assert synced.deleted == 0
    assert _statuses(lake)[inner] == "ok"
    proxy.configure()
    _put(servers, bucket, "data/gone.txt", b"x")
    dicomlake.ingest([source], lake, workers=0, storage_options=config)
    client_delete(servers, bucket, "data/gone.txt")
    cleaned = dicomlake.ingest([source], lake, workers=0, sync=True, storage_options=config)
    assert cleaned.deleted == 2  # gone.txt, and the folder's error row of the last run
    assert f"s3://{bucket}/data/sub/" not in _statuses(lake)


def client_delete(servers: tuple[str, FaultProxy], bucket: str, key: str) -> None:
    client = _client(servers)
    client.delete_object(Bucket=bucket, Key=key)


def test_a_source_that_cannot_be_listed_at_all_is_refused_by_the_cli(
    proxy: FaultProxy, bucket: str, tmp_path: Any
) -> None:
    proxy.configure(Fault("list", "500", key="data/"))
    source = f"s3://{bucket}/data"
    options = [
        f"--storage-option=AWS_ACCESS_KEY_ID={KEY}",
        f"--storage-option=AWS_SECRET_ACCESS_KEY={SECRET}",
        f"--storage-option=AWS_ENDPOINT_URL={proxy.url}",
        "--storage-option=max_attempts=1",
    ]
    result = CliRunner().invoke(app, ["ingest", source, "--lake", str(tmp_path / "l"), *options])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"dicomlake: error: source cannot be reached: {source} (")
    assert len(result.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ the settings


def test_retry_settings_reach_botocore_and_are_validated() -> None:
    config = StorageConfig.from_options(
        {
            "AWS_MAX_ATTEMPTS": "7",
            "connect_timeout": "1.5",
            "READ_TIMEOUT": "20s",
            "retry_mode": "Adaptive",
            "config_kwargs": {"max_pool_connections": 50},
        }
    )
    assert config.retries == Retries(
        max_attempts=7, connect_timeout=1.5, read_timeout=20, mode="adaptive"
    )
    assert config.fsspec("s3")["config_kwargs"] == {
        "connect_timeout": 1.5,
        "read_timeout": 20,
        "retries": {"mode": "adaptive", "total_max_attempts": 7},
        "max_pool_connections": 50,
    }
    assert "config_kwargs" not in StorageConfig().fsspec()  # other protocols: untouched
    assert "retries=Retries(max_attempts=7" in repr(config)
    assert StorageConfig().fsspec("s3")["config_kwargs"]["retries"] == {
        "mode": "standard",
        "total_max_attempts": 5,
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": "0"}, "max_attempts must be a whole number of attempts >= 1"),
        ({"max_attempts": "three"}, "storage option max_attempts must be a whole number"),
        ({"read_timeout": "-1"}, "read_timeout must be a number of seconds > 0"),
        ({"connect_timeout": "inf"}, "connect_timeout must be a number of seconds > 0"),
        ({"retry_mode": "eager"}, "retry mode must be one of 'standard', 'adaptive'"),
        ({"retries": 3}, "use max_attempts=3"),
    ],
    ids=["zero-attempts", "not-a-number", "negative", "infinite", "unknown-mode", "retries-int"],
)
def test_bad_retry_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StorageConfig.from_options(options)


def test_the_cli_refuses_a_bad_retry_setting_in_one_line(tmp_path: Any) -> None:
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "s3://bucket/x",
            "--lake",
            str(tmp_path / "l"),
            "--storage-option",
            "max_attempts=0",
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "dicomlake: error: max_attempts must be a whole number of attempts >= 1, got 0"
    ]


def test_only_storage_failures_are_renamed() -> None:
    assert storage_error(FileNotFoundError("gone")) is None
    assert storage_error(PermissionError("Forbidden")) is None
    assert storage_error(ValueError("bad file")) is None
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as exc:
            raise OSError("read failed") from exc
    except OSError as wrapped:
        named = storage_error(wrapped, Retries(max_attempts=4))
    assert type(named).__name__ == "NetworkError"
    assert (
        str(named) == "connection failed (ConnectionResetError), retries exhausted (max_attempts=4)"
    )
    assert isinstance(named, OSError) and isinstance(named, dicomlake.DicomLakeError)
