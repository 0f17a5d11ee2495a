"""The native parser on zip members and objects: read from their first bytes.

A zip of typical real files, and the same files as objects on a real S3-compatible
server (moto), ingested twice, once with ``parser="pydicom"``: at least 90% of the rows
are read natively, and every row equals the pydicom run's, ``meta`` (BulkDataURIs
included) and typed columns alike. Members whose header runs past the first read,
truncated and corrupt members take the same rows as on the pydicom path.
"""

from __future__ import annotations

import io
import random
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest

import dicomlake
from dicomlake.catalog import iter_files
from dicomlake.dicom import native
from dicomlake.kernels.instances import extract_row
from dicomlake.sample import pydicom_test_files, sample_file
from helpers.native_corpus import canonical, corpus_bytes

pytestmark = pytest.mark.native

#: Modalities, transfer syntaxes and character sets of a typical archive (bench/ingest.py).
TYPICAL_MODALITIES = {"CT", "MR", "CR", "DX", "US", "MG"}
PLAIN_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}
#: Columns that differ between two runs, or that name the parser.
RUN_COLUMNS = {"parser", "ingested_at", "row_id"}


def _typical(path: Path) -> bool:
    if path.suffix != ".dcm" or path.stat().st_size > 2_000_000:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    charset = ds.get("SpecificCharacterSet", "") or ""
    charset = charset if isinstance(charset, str) else "\\".join(charset)
    odd = syntax == "1.2.840.10008.1.2.2" or syntax.endswith((".99", ".8.1"))
    return ds.get("Modality") in TYPICAL_MODALITIES and not odd and charset in PLAIN_CHARSETS


@pytest.fixture(scope="module")
def typical_files() -> list[Path]:
    """pydicom's test files that look like a typical archive's (some 40)."""
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    files = [p for p in pydicom_test_files() if _typical(p)]
    assert len(files) >= 20
    return files


def _zip(path: Path, files: list[Path], compression: int) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for index, file in enumerate(files):
            archive.write(file, f"series/{index:03d}_{file.name}")
    return path


def _lake_rows(lake: Path) -> dict[str, dict[str, Any]]:
    with dicomlake.connect(str(lake)) as con:
        table = con.sql("SELECT * FROM instances").to_arrow_table()
    return {row["path"]: row for row in table.to_pylist()}


def _ingest_both(
    sources: list[str], work: Path, **options: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows of an ingest with the native parser and of one with pydicom only, by path."""
    runs = []
    for parser in ("auto", "pydicom"):
        lake = work / f"lake-{parser}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dicomlake.ingest(sources, str(lake), workers=0, parser=parser, **options)
        runs.append(_lake_rows(lake))
    return runs[0], runs[1]


def _assert_same_rows(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> None:
    """Every column but the parser's and the run's equal; ``meta`` as JSON, by type."""
    assert ours.keys() == theirs.keys()
    for path, row in ours.items():
        other = theirs[path]
        assert other["parser"] == "pydicom"
        for column, value in row.items():
            if column in RUN_COLUMNS:
                continue
            if column == "meta" and value is not None and other[column] is not None:
                assert canonical(orjson.loads(value)) == canonical(orjson.loads(other[column])), (
                    path
                )
            else:
                assert value == other[column], (path, column)


def _native_share(rows: dict[str, dict[str, Any]]) -> float:
    ok = [row for row in rows.values() if row["status"] == "ok"]
    return sum(row["parser"] == "native" for row in ok) / len(ok)


def _bulk_uris(meta: Any) -> list[str]:
    if isinstance(meta, list):
        return [uri for v in meta for uri in _bulk_uris(v)]
    if not isinstance(meta, dict):
        return []
    found = [meta["BulkDataURI"]] if "BulkDataURI" in meta else []
    return found + [uri for v in meta.values() for uri in _bulk_uris(v)]


# ----------------------------------------------------------------------------- zip


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED], ids=["deflated", "stored"]
)
def test_zip_of_typical_files_is_read_natively(
    compression: int, typical_files: list[Path], tmp_path: Path
) -> None:
    archive = _zip(tmp_path / "typical.zip", typical_files, compression)
    ours, theirs = _ingest_both([str(archive)], tmp_path)
    assert len(ours) == len(typical_files)
    assert {row["status"] for row in ours.values()} == {"ok"}
    assert _native_share(ours) >= 0.9
    _assert_same_rows(ours, theirs)
    # pixel data read through the BulkDataURIs the native rows wrote: the member's bytes
    uris = [
        uri
        for row in ours.values()
        if row["parser"] == "native"
        for uri in _bulk_uris(orjson.loads(row["meta"]))
    ]
    assert uris and all(uri.startswith("zip://series/") for uri in uris)
    with zipfile.ZipFile(archive) as zf:
        for uri in uris[:10]:
            base, query = uri.rsplit("?", 1)
            fields = dict(part.split("=") for part in query.split("&"))
            offset, length = int(fields["offset"]), int(fields["length"])
            member = base.removeprefix("zip://").split("::", 1)[0]
            assert offset + length <= zf.getinfo(member).file_size


def _member_rows(archive: Path) -> dict[str, dict[str, Any]]:
    """Each member's row with the native parser and with pydicom: {member: (auto, pydicom)}."""
    out: dict[str, Any] = {}
    for ref in iter_files([str(archive)]):
        member = ref.path.removeprefix("zip://").split("::", 1)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[member] = (extract_row(ref), extract_row(ref, parser="pydicom"))
    return out


def test_member_whose_header_runs_past_the_first_read(tmp_path: Path) -> None:
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    cases = corpus_bytes(["long-header-explicit", "long-header-implicit"])
    archive = tmp_path / "long.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in cases.items():
            assert len(data) > 4 * native.PREFIX_BYTES
            zf.writestr(f"{name}.dcm", data)
    rows = _member_rows(archive)
    for member, (ours, theirs) in rows.items():
        assert ours["status"] == "ok" and ours["parser"] == "native", member
        assert canonical(orjson.loads(ours["meta"])) == canonical(orjson.loads(theirs["meta"]))
        assert ours["size"] == theirs["size"] == len(cases[member.removesuffix(".dcm")])


def _noisy_ct() -> bytes:
    """CT_small with 512 KiB of noise for pixels: its deflate stream is some 600 KiB."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 512
    ds.PixelData = random.Random(15).randbytes(512 * 512 * 2)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _corrupt_deflate(data: bytes, name: str, at: int) -> bytes:
    """A zip of one deflated member, 400 of its compressed bytes garbage from ``at`` on."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    raw = bytearray(buffer.getvalue())
    start = 30 + len(name) + at  # past the local header and the name
    raw[start : start + 400] = bytes(range(200)) * 2
    return bytes(raw)


def test_truncated_and_corrupt_members_take_the_pydicom_paths_rows(tmp_path: Path) -> None:
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    ct = sample_file("CT_small.dcm").read_bytes()
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cut-in-header.dcm", ct[:1500])
        zf.writestr("cut-in-pixels.dcm", ct[: len(ct) - 5000])
        zf.writestr("garbage.dcm", bytes(range(256)) * 300)
        zf.writestr("empty.dcm", b"")
        zf.writestr("preamble-only.dcm", b"\0" * 128 + b"DICM")
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as nested:
            nested.writestr("a.dcm", ct)
        zf.writestr("nested.zip.dcm", inner.getvalue())
    rows = _member_rows(archive)
    expected = {
        "cut-in-header.dcm": ("error", "pydicom"),
        "cut-in-pixels.dcm": ("ok", "native"),
        "garbage.dcm": ("not_dicom", "pydicom"),
        "empty.dcm": ("not_dicom", "pydicom"),
        "preamble-only.dcm": ("error", "pydicom"),
        "nested.zip.dcm": ("error", "pydicom"),
    }
    assert {m: (ours["status"], ours["parser"]) for m, (ours, _) in rows.items()} == expected
    for member, (ours, theirs) in rows.items():
        for column in ("status", "error", "warnings", "size", "has_pixel_data"):
            assert ours.get(column) == theirs.get(column), (member, column)
    ours, theirs = rows["cut-in-pixels.dcm"]
    assert ours["warnings"] == ["pixel data truncated: the file ends inside it"]
    assert canonical(orjson.loads(ours["meta"])) == canonical(orjson.loads(theirs["meta"]))

    # a deflate stream damaged inside the header, and one damaged inside the pixel data
    # (past the first read): inflated to the end either way, an error row either way
    large = _noisy_ct()
    for name, data, at in (("ct.dcm", ct, 200), ("large.dcm", large, 200_000)):
        broken = tmp_path / f"broken-{name}.zip"
        broken.write_bytes(_corrupt_deflate(data, name, at))
        ((ours, theirs),) = _member_rows(broken).values()
        assert ours["status"] == theirs["status"] == "error", name
        assert ours["parser"] == "pydicom"  # reading it failed: the pydicom path's row
        assert ours["error"] == theirs["error"]


# ------------------------------------------------------------------------------ S3


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from helpers.moto_server import moto_endpoint

    with moto_endpoint() as url:
        yield url


@pytest.mark.s3
def test_bucket_of_typical_files_is_read_natively(
    s3_endpoint: str, typical_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from helpers.moto_server import use_aws_env

    use_aws_env(monkeypatch, s3_endpoint, tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for index, file in enumerate(typical_files):
        s3.upload_file(str(file), bucket, f"data/{index:03d}_{file.name}")
    zipped = _zip(tmp_path / "some.zip", typical_files[:5], zipfile.ZIP_DEFLATED)
    s3.upload_file(str(zipped), bucket, "data/zips/some.zip")
    s3.put_object(Bucket=bucket, Key="data/notes.txt", Body=b"not DICOM")

    ours, theirs = _ingest_both([f"s3://{bucket}/data"], tmp_path)
    assert len(ours) == len(typical_files) + 5 + 1
    assert ours[f"s3://{bucket}/data/notes.txt"]["status"] == "not_dicom"
    assert _native_share(ours) >= 0.9
    _assert_same_rows(ours, theirs)
    members = [p for p, row in ours.items() if p.startswith("zip://")]
    assert len(members) == 5
    assert all(ours[p]["parser"] == "native" for p in members)
    uris = [
        uri for p in ours if ours[p]["meta"] for uri in _bulk_uris(orjson.loads(ours[p]["meta"]))
    ]
    assert any(uri.startswith(f"s3://{bucket}/data/") for uri in uris)
