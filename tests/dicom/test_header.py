"""Our DICOM JSON and typed columns against pydicom's own, on every real test file."""

from __future__ import annotations

import base64
import datetime as dt
import math
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from dicomlake.dicom.header import read_header
from dicomlake.dicom.tags import promoted_values
from dicomlake.errors import NotDicom
from dicomlake.sample import pydicom_test_files
from dicomlake.schema import PROMOTED_TAGS

PIXEL_KEYS = {"7FE00010", "7FE00008", "7FE00009"}
#: Files where we deliberately differ from pydicom, and why.
EXPECTED_DIFFERENCES = {
    # pydicom stops quietly at the end of the file; we report the truncation.
    "rtplan_truncated.dcm": "error",
    # no preamble and a stray first byte: pydicom's force=True reads one garbage element.
    "no_meta.dcm": "not_dicom",
}
ALL_FILES = pydicom_test_files()


def _reference(path: Path) -> pydicom.Dataset | None:
    """Read ``path`` as pydicom would for a user, or None if pydicom cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            return None


def _ours(path: Path) -> Any:
    with warnings.catch_warnings(), path.open("rb") as fp:
        warnings.simplefilter("ignore")
        return read_header(fp, uri=f"file://{path}")


def _normalise(value: Any) -> Any:
    """Plain JSON types, NaN made comparable."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, str):
        return str(value)
    return value


def _inline_bulk(value: Any, path: Path) -> Any:
    """Replace each BulkDataURI by the InlineBinary of the bytes it names."""
    if isinstance(value, list):
        return [_inline_bulk(v, path) for v in value]
    if not isinstance(value, dict):
        return value
    if "BulkDataURI" in value:
        uri = value["BulkDataURI"]
        assert uri.startswith(f"file://{path}?"), uri
        query = dict(part.split("=") for part in uri.rsplit("?", 1)[1].split("&"))
        with path.open("rb") as fp:
            fp.seek(int(query["offset"]))
            data = fp.read(int(query["length"]))
        assert len(data) == int(query["length"])
        return {"vr": value["vr"], "InlineBinary": base64.b64encode(data).decode()}
    return {k: _inline_bulk(v, path) for k, v in value.items()}


def _pydicom_json(ds: pydicom.Dataset) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ds.file_meta.to_json_dict() if ds.file_meta else {}
        out.update(ds.to_json_dict())
    return out


@pytest.mark.parametrize("path", ALL_FILES, ids=[p.name for p in ALL_FILES])
def test_meta_equals_pydicom_json(path: Path) -> None:
    if path.name in EXPECTED_DIFFERENCES:
        expected_error = NotDicom if EXPECTED_DIFFERENCES[path.name] == "not_dicom" else ValueError
        with pytest.raises(expected_error):
            _ours(path)
        return
    ds = _reference(path)
    if ds is None:
        # pydicom refuses it (no DICM prefix): we must say not_dicom or read it as DICOM
        try:
            header = _ours(path)
        except NotDicom:
            return
        forced = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert _normalise(header.meta) == _normalise(
            {k: v for k, v in _pydicom_json(forced).items()}
            | {k: header.meta[k] for k in header.meta.keys() & PIXEL_KEYS}
        )
        return
    try:
        expected = _pydicom_json(ds)
    except Exception:
        # pydicom cannot convert this file to JSON itself; we still give a row and
        # name each element we could not convert
        header = _ours(path)
        assert header.warnings
        return
    header = _ours(path)
    ours = {k: v for k, v in header.meta.items() if k not in PIXEL_KEYS}
    assert _normalise(_inline_bulk(ours, path)) == _normalise(_inline_bulk(expected, path))


def _full_pixel_bytes(path: Path) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            return ds[keyword].value
    return None


PIXEL_FILES = [p for p in ALL_FILES if p.suffix == ".dcm" and p.stat().st_size < 20_000_000]


@pytest.mark.parametrize("path", PIXEL_FILES, ids=[p.name for p in PIXEL_FILES])
def test_pixel_data_bulk_uri_names_pydicoms_bytes(path: Path) -> None:
    if path.name in EXPECTED_DIFFERENCES or _reference(path) is None:
        pytest.skip("not applicable: not read by pydicom as a user would")
    try:
        expected = _full_pixel_bytes(path)
    except Exception:
        pytest.skip("not applicable: pydicom cannot read the pixel data")
    header = _ours(path)
    if any("truncated" in w for w in header.warnings):
        # we keep what the file holds and warn; pydicom's value differs or is absent
        assert header.has_pixel_data
        return
    assert header.has_pixel_data == (expected is not None)
    if expected is None:
        return
    (key,) = header.meta.keys() & PIXEL_KEYS
    tsyntax = header.meta.get("00020010", {}).get("Value", [""])[0]
    if tsyntax in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"):
        # deflated: the value is inside the compressed stream; the URI names the file
        assert header.meta[key]["BulkDataURI"] == f"file://{path}"
        return
    element = _inline_bulk(header.meta[key], path)
    assert base64.b64decode(element.get("InlineBinary", "")) == expected


def _pydicom_typed(ds: pydicom.Dataset, keyword: str) -> Any:
    """The promoted value as a user would derive it from pydicom."""
    value = ds.get(keyword) if keyword != "TransferSyntaxUID" else ds.file_meta.get(keyword)
    typ = PROMOTED_TAGS[keyword]
    if value is None or value == "" or (isinstance(value, MultiValue) and len(value) == 0):
        return None
    if str(typ).startswith("list"):
        items = list(value) if isinstance(value, MultiValue) else [value]
        return [None if v == "" else float(v) for v in items]
    first = value[0] if isinstance(value, MultiValue) else value
    if str(typ) == "date32[day]":
        text = str(first).replace(".", "")
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    if str(typ).startswith("int"):
        return int(first)
    if str(typ) == "double":
        return float(first)
    if isinstance(first, PersonName):
        return str(first)
    return str(first)


DICOM_FILES = [
    p for p in ALL_FILES if _reference(p) is not None and p.name not in EXPECTED_DIFFERENCES
]


@pytest.mark.parametrize("path", DICOM_FILES, ids=[p.name for p in DICOM_FILES])
def test_typed_columns_equal_pydicom_values(path: Path) -> None:
    ds = _reference(path)
    assert ds is not None
    header = _ours(path)
    warns: list[str] = []
    typed = promoted_values(header.meta, warns)
    for keyword in PROMOTED_TAGS:
        try:
            expected = _pydicom_typed(ds, keyword)
        except (ValueError, TypeError):
            expected = None  # not a valid value of its type: we keep null and warn
            if typed[keyword] is not None:
                continue
        got = typed[keyword]
        if isinstance(expected, float) and math.isnan(expected):
            assert got is not None and math.isnan(got), keyword
            continue
        assert got == expected, f"{keyword}: ours {got!r} pydicom {expected!r}"


def test_large_private_value_becomes_bulk_data_uri(tmp_path: Path) -> None:
    from dicomlake.sample import private_blob_file

    path = private_blob_file(tmp_path / "blob.dcm")
    header = _ours(path)
    blobs = [v for k, v in header.meta.items() if k.startswith("0099") and v["vr"] == "OB"]
    assert len(blobs) == 1
    (blob,) = blobs
    assert "InlineBinary" not in blob
    uri = blob["BulkDataURI"]
    assert uri.endswith(f"&length={6 * 1024 * 1024}")
    assert len(header.meta["00100010"]["Value"]) == 1  # the rest of the header is intact


def test_small_binary_values_are_inlined() -> None:
    from dicomlake.sample import sample_file

    path = sample_file("CT_small.dcm")
    header = _ours(path)
    inline = [v for v in header.meta.values() if "InlineBinary" in v]
    assert inline, "CT_small has short OB values (file meta version)"
    assert all(len(base64.b64decode(v["InlineBinary"])) <= 1024 for v in inline)
