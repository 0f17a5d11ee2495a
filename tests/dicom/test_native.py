"""The native header parser (dicomlake._native) against read_header, on every real test file.

Where the parser accepts a file its JSON, has_pixel_data and warnings must equal
``read_header``'s (which equals pydicom's ``to_json_dict``); the files it declines are
listed with their reasons, and a new decline or an unexpected accept fails. Truncated
copies of every file must each give a result or a decline, never a crash or a read
past the buffer (the ``slow`` test runs the same under AddressSanitizer).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomlake.dicom import native
from dicomlake.dicom.header import Header, read_header
from dicomlake.dicom.tags import promoted_values
from dicomlake.sample import pydicom_test_files

ROOT = Path(__file__).resolve().parents[2]
ALL_FILES = pydicom_test_files()


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"  # two DICOMDIRs and READMEs share a name


#: Files the native parser declines (read_header reads them), and why.
EXPECTED_DECLINES = {
    "test_files/ExplVR_BigEnd.dcm": "big_endian",
    "test_files/ExplVR_BigEndNoMeta.dcm": "no_preamble",
    "test_files/ExplVR_LitEndNoMeta.dcm": "no_preamble",
    "test_files/J2K_pixelrep_mismatch.dcm": "charset",
    "test_files/MR_small_bigendian.dcm": "big_endian",
    "test_files/MR_small_expb.dcm": "big_endian",
    "test_files/README.txt": "no_preamble",
    "test_files/SC_rgb_jpeg.dcm": "vr_switch",
    "test_files/SC_rgb_small_odd_big_endian.dcm": "big_endian",
    "test_files/badVR.dcm": "value_repair",
    "test_files/crayons.icc": "no_preamble",
    "dicomdirtests/DICOMDIR-bigEnd": "big_endian",
    "dicomdirtests/DICOMDIR-nooffset": "truncated",
    "dicomdirtests/README.txt": "no_preamble",
    "TINY_ALPHA/README": "no_preamble",
    "test_files/image_dfl.dcm": "deflated",
    "test_files/liver_expb_1frame.dcm": "big_endian",
    "test_files/meta_missing_tsyntax.dcm": "no_tsyntax",
    "test_files/nested_priv_SQ.dcm": "malformed",
    "test_files/no_meta.dcm": "no_preamble",
    "test_files/rtdose_expb.dcm": "big_endian",
    "test_files/rtdose_expb_1frame.dcm": "big_endian",
    "test_files/rtplan.dump": "no_preamble",
    "test_files/rtplan_truncated.dcm": "truncated",
    "test_files/rtstruct.dcm": "no_preamble",
    "test_files/rtstruct.dump": "no_preamble",
    "test_files/test1.json": "no_preamble",
    "test_files/test_PN.json": "no_preamble",
    "test_files/zipMR.gz": "no_preamble",
    "data/OBXXXX1A_expb.dcm": "big_endian",
    "data/OBXXXX1A_expb_2frame.dcm": "big_endian",
    "data/OT-PAL-8-face.dcm": "no_preamble",
    "data/SC_rgb_expb.dcm": "big_endian",
    "data/SC_rgb_expb_16bit.dcm": "big_endian",
    "data/SC_rgb_expb_16bit_2frame.dcm": "big_endian",
    "data/SC_rgb_expb_2frame.dcm": "big_endian",
    "data/SC_rgb_expb_32bit.dcm": "big_endian",
    "data/SC_rgb_expb_32bit_2frame.dcm": "big_endian",
    "data/emri_small_big_endian.dcm": "big_endian",
    "data/gdcm-US-ALOKA-16_big.dcm": "big_endian",
    "data/liver_expb.dcm": "big_endian",
}

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(not native.available(), reason="dicomlake.dicom._native is not built"),
]


def _uri(path: Path) -> str:
    return f"file://{path}"


def _python(data: bytes | Path, uri: str, bulk_threshold: int = 1024) -> Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(data, Path):
            with data.open("rb") as fp:
                return read_header(fp, uri=uri, bulk_threshold=bulk_threshold)
        return read_header(io.BytesIO(data), uri=uri, bulk_threshold=bulk_threshold)


def _declined(result: Header | str) -> str | None:
    return result if isinstance(result, str) else None


@pytest.mark.parametrize("path", ALL_FILES, ids=[_id(p) for p in ALL_FILES])
def test_native_equals_read_header(path: Path) -> None:
    result = native.parse_file(path, uri=_uri(path), bulk_threshold=1024)
    reason = _declined(result)
    assert reason == EXPECTED_DECLINES.get(_id(path)), "decline set changed"
    if isinstance(result, str):
        return
    python = _python(path, _uri(path))
    assert result.meta == python.meta
    assert list(result.meta) == list(python.meta)  # same order too
    assert result.has_pixel_data == python.has_pixel_data
    assert result.warnings == python.warnings
    assert result.meta_json is not None
    assert orjson.loads(result.meta_json) == python.meta
    # the promoted dict is the meta's entries for the promoted tags
    assert result.promoted is not None
    assert result.promoted == {k: v for k, v in python.meta.items() if k in result.promoted}
    expected = promoted_values(python.meta, [])
    assert promoted_values(result.promoted, []) == expected


def test_declined_set_is_exact() -> None:
    declined = {}
    for path in ALL_FILES:
        result = native.parse_file(path, uri=_uri(path))
        if isinstance(result, str):
            declined[_id(path)] = result
    assert declined == EXPECTED_DECLINES
    print(f"\nnative accepts {len(ALL_FILES) - len(declined)} of {len(ALL_FILES)} files")


@pytest.mark.parametrize("threshold", [0, 1, 16, 1024, 1 << 40])
def test_bulk_threshold_and_buffers(threshold: int) -> None:
    for path in ALL_FILES[::7]:
        if _id(path) in EXPECTED_DECLINES:
            continue
        from_file = native.parse_file(path, uri=_uri(path), bulk_threshold=threshold)
        from_bytes = native.parse_file(path.read_bytes(), uri=_uri(path), bulk_threshold=threshold)
        assert isinstance(from_file, Header) and isinstance(from_bytes, Header)
        assert from_file.meta_json == from_bytes.meta_json
        assert from_file.meta == _python(path, _uri(path), threshold).meta


def test_uri_is_escaped_in_json() -> None:
    path = next(p for p in ALL_FILES if p.name == "CT_small.dcm")
    uri = 'file:///a "quoted"\\path/ü.dcm'
    header = native.parse_file(path.read_bytes(), uri=uri, bulk_threshold=0)
    assert isinstance(header, Header)
    assert header.meta == _python(path, uri, 0).meta


def test_empty_file_and_no_decode(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert native.parse_file(empty, uri=_uri(empty)) == "empty"
    path = next(p for p in ALL_FILES if p.name == "CT_small.dcm")
    header = native.parse_file(path, uri=_uri(path), decode_meta=False)
    assert isinstance(header, Header)
    assert header.meta == {} and header.meta_json and header.promoted
    assert header.promoted["00080060"] == {"vr": "CS", "Value": ["CT"]}


def _file(ds: Dataset, syntax: Any = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _nested(depth: int) -> Dataset:
    ds = Dataset()
    ds.PatientID = "deep"
    inner = ds
    for level in range(depth):
        item = Dataset()
        item.CodeValue = str(level)
        inner.ContentSequence = Sequence([item])
        inner = item
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nesting_depth_is_bounded(syntax: Any) -> None:
    ok = _file(_nested(64), syntax)  # 64 levels of sequences: the limit
    header = native.parse_file(ok, uri="mem://ok")
    assert isinstance(header, Header)
    assert header.meta == _python(ok, "mem://ok").meta
    assert native.parse_file(_file(_nested(65), syntax), uri="mem://deep") == "too_deep"


def test_charsets_and_invalid_utf8() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Günther^Ærø=ギュンター"
    ds.InstitutionName = "Zürich \\Genève "
    utf8 = _file(ds)
    header = native.parse_file(utf8, uri="mem://utf8")
    assert isinstance(header, Header)
    assert header.meta == _python(utf8, "mem://utf8").meta
    # the same bytes declared Latin-1: each byte a character, still valid JSON
    latin1 = utf8.replace(b"ISO_IR 192", b"ISO_IR 100")
    header = native.parse_file(latin1, uri="mem://latin1")
    assert isinstance(header, Header)
    assert header.meta == _python(latin1, "mem://latin1").meta
    broken = utf8.replace("Zürich".encode(), b"Z\xfcrich")
    assert native.parse_file(broken, uri="mem://broken") == "utf8"
    assert native.parse_file(utf8.replace(b"ISO_IR 192", b"ISO_IR 144"), uri="m") == "charset"


def test_charset_redefined_inside_an_item() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.CodeMeaning = "Ärger"
    ds.ConceptNameCodeSequence = Sequence([item])
    ds.PatientName = "Müller"
    data = _file(ds)
    header = native.parse_file(data, uri="mem://x")
    assert isinstance(header, Header)
    assert header.meta == _python(data, "mem://x").meta
    assert header.meta["0040A043"]["Value"][0]["00080104"]["Value"] == ["Ärger"]


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("SliceThickness", b"1.5 ", [1.5]),
        ("PixelSpacing", b" 1e2\\-.5", [100.0, -0.5]),
        ("PixelSpacing", b"1\\ ", [1.0, None]),
        ("SliceThickness", b"1e999", "nan"),
        ("SliceThickness", b"1,5", "value_repair"),
        ("SeriesNumber", b"+007 ", [7]),
        ("SeriesNumber", b"99999999999999999999", "value_repair"),
        ("SeriesNumber", b"1.0", "value_repair"),
    ],
)
def test_ds_is_rules(keyword: str, value: bytes, expected: Any) -> None:
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    vr = "IS" if keyword == "SeriesNumber" else "DS"
    ds = Dataset()  # the raw bytes, as a writer put them
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.Modality = "CT"
    data = _file(ds)
    result = native.parse_file(data, uri="mem://x")
    if isinstance(expected, str):
        assert result == expected
        return
    assert isinstance(result, Header)
    assert result.meta == _python(data, "mem://x").meta
    assert result.meta[f"{tag:08X}"]["Value"] == expected


def _offsets(size: int) -> list[int]:
    """Every offset in the first 2 KiB, then 64 spread over the rest, and the end."""
    cuts = set(range(min(size, 2048)))
    cuts.update(range(2048, size, max(1, (size - 2048) // 64)))
    cuts.update(range(max(0, size - 16), size))
    return sorted(cuts)


TRUNCATION_FILES = [p for p in ALL_FILES if p.stat().st_size <= 4 << 20]


@pytest.mark.parametrize("path", TRUNCATION_FILES, ids=[_id(p) for p in TRUNCATION_FILES])
def test_truncated_copies_return_or_decline(path: Path) -> None:
    data = path.read_bytes()
    checked = 0
    for cut in _offsets(len(data)):
        piece = data[:cut]  # a bytes object of exactly that size
        result = native.parse_file(piece, uri="mem://cut", bulk_threshold=64)
        if isinstance(result, str):
            continue
        # accepted: a cut at an element boundary, or inside the pixel data
        if result.has_pixel_data and checked >= 2:
            continue
        checked += 1
        assert result.meta == _python(piece, "mem://cut", 64).meta, cut


def test_vr_table_is_fresh() -> None:
    script = ROOT / "scripts" / "gen_vr_table.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_speed_sanity() -> None:
    """Prints parse-only files/s against read_header; no assertion on time."""
    from dicomlake.dicom import _native

    files = [p for p in ALL_FILES if _id(p) not in EXPECTED_DECLINES]
    blobs = [(p.read_bytes(), _uri(p)) for p in files]
    start = time.perf_counter()
    for _ in range(5):
        for data, uri in blobs:
            _native.parse(data, uri, 1024)
    fast = 5 * len(blobs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for data, uri in blobs:
        _python(data, uri)
    slow = len(blobs) / (time.perf_counter() - start)
    print(f"\nnative parse {fast:,.0f} files/s, read_header {slow:,.0f} files/s")


_SANITIZER_RUN = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("dicomlake.dicom._native", sys.argv[1])
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    ext.set_promoted([0x00080060, 0x00020010, 0x00280010])
    count = 0
    for name in sys.argv[2:]:
        data = Path(name).read_bytes()
        size = len(data)
        cuts = set(range(min(size, 2048)))
        cuts.update(range(2048, size, max(1, (size - 2048) // 64)))
        cuts.update(range(max(0, size - 16), size + 1))
        for cut in sorted(cuts):
            for threshold in (0, 64):
                try:
                    ext.parse(bytes(data[:cut]), "mem://x", threshold)
                except ext.Declined:
                    pass
                count += 1
    print("parsed", count)
    """
)


@pytest.mark.slow
def test_sanitizer_build_over_truncated_copies(tmp_path: Path) -> None:
    """Build with -fsanitize=address,undefined and parse every truncated copy."""
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc")
    libasan = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("no libasan")
    env = os.environ | {"DICOMLAKE_SANITIZE": "1"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    (built,) = (tmp_path / "lib" / "dicomlake" / "dicom").glob("_native*.so")
    run_env = os.environ | {
        "LD_PRELOAD": libasan,
        "PYTHONMALLOC": "malloc",  # every bytes object its own allocation, with redzones
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    files = [str(p) for p in TRUNCATION_FILES]
    run = subprocess.run(
        [sys.executable, "-c", _SANITIZER_RUN, str(built), *files],
        env=run_env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "parsed" in run.stdout
    assert "runtime error" not in run.stderr, run.stderr[-4000:]
