"""A file cut anywhere in its header is an error row (TruncatedFile), never a smaller ok one.

pydicom stops without a word when the file ends inside an element's tag, VR or length
(and raises errors that name no cut inside a long length or a sequence); ``read_header``
must say the file is cut, and the native parser must decline it, so that both parsers
give the same error row. Every cut offset in the first 2 KiB of ten real files is tried,
in memory: each file is read once and sliced.

The one kind of cut that is not an error: between two top-level elements of the data set
(or just before the pixel data). The bytes before it are a whole file, only shorter, and
neither parser can tell. A cut inside the pixel data's value keeps the bytes there are,
with the warning "pixel data truncated: the file ends inside it".
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from dicomlake.dicom import native
from dicomlake.dicom.header import read_header
from dicomlake.errors import NotDicom, TruncatedFile
from dicomlake.sample import sample_file

#: The files (pydicom's own test files, always installed) and what each covers.
FILES = {
    "CT_small.dcm": "explicit VR little endian, private tags, a sequence",
    "MR_small_implicit.dcm": "implicit VR little endian, pixel data within 2 KiB",
    "MR_small_bigendian.dcm": "explicit VR big endian, pixel data (OW) within 2 KiB",
    "rtdose_expb_1frame.dcm": "big endian with sequences, pixel data within 2 KiB",
    "liver_1frame.dcm": "enhanced multi-frame: functional groups of undefined length",
    "rtplan.dcm": "implicit VR, sequences nested in sequences",
    "test-SR.dcm": "structured report: a content tree of nested sequences",
    "nested_priv_SQ.dcm": "implicit VR private sequences nested, then pixel data",
    "JPEG2000.dcm": "encapsulated transfer syntax, private tags, undefined-length items",
    "image_dfl.dcm": "deflated explicit VR little endian (offsets in the inflated stream)",
}
#: Cuts are tried from the end of the DICM prefix up to here (or the pixel data).
LIMIT = 2048
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
_TAG = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)")
PIXEL_WARNING = "pixel data truncated: the file ends inside it"


@dataclass(frozen=True)
class Layout:
    """A whole file's bytes and where its top-level elements start (by pydicom)."""

    data: bytes
    #: Offsets where a cut leaves a whole, shorter file: the start of each top-level
    #: element of the data set but the first (none in a deflated file: its offsets are
    #: in the inflated stream), and of the pixel data.
    whole: frozenset[int]
    #: The pixel data element's start and its value's (the file's size when none).
    pixel_start: int
    pixel_value: int


@functools.cache
def layout(name: str) -> Layout:
    data = sample_file(name).read_bytes()
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    pixel_start = fp.tell()  # pydicom steps back to the pixel data's header
    implicit, _little = ds.original_encoding
    deflated = ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    starts = []
    for elem in ds._dict.values():
        # a raw element's value_tell; file_tell where pydicom made a DataElement (a
        # sequence of undefined length, the character set); the VR is the file's
        value_at = elem.value_tell if hasattr(elem, "value_tell") else elem.file_tell
        assert value_at is not None
        long = not implicit and elem.VR is not None and elem.VR.encode() in _LONG_VRS
        starts.append(value_at - (12 if long else 8))
    whole = set() if deflated else set(starts[1:])
    pixel_value = len(data)
    if pixel_start < len(data):
        whole.add(pixel_start)
        long = not implicit and data[pixel_start + 4 : pixel_start + 6] in _LONG_VRS
        pixel_value = pixel_start + (12 if long else 8)
    return Layout(data, frozenset(whole), pixel_start, pixel_value)


def _clean(message: str) -> bool:
    """Whether an error message holds nothing but words, tags and numbers (no values)."""
    return re.fullmatch(r"[a-z ,:()]+", re.sub(r"\d+", "", _TAG.sub("", message))) is not None


def test_the_layouts_are_what_the_cuts_assume() -> None:
    """Some files reach their pixel data within the cuts; every other one has whole cuts."""
    reached = [n for n in FILES if layout(n).pixel_start < LIMIT]
    assert len(reached) >= 3, reached
    for name in FILES:
        assert name == "image_dfl.dcm" or min(layout(name).whole) < LIMIT, name


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_cut_in_the_header_is_truncated(name: str) -> None:
    """Each cut offset: TruncatedFile from pydicom's path, a decline from the native one."""
    file = layout(name)
    data = file.data
    end = min(LIMIT, file.pixel_value + 4, len(data))
    wrong: list[str] = []
    truncated = 0
    for cut in range(132, end):
        piece = data[:cut]
        if cut >= file.pixel_value:  # inside the pixel data's value
            header = read_header(io.BytesIO(piece), uri="x")
            if not header.has_pixel_data or PIXEL_WARNING not in header.warnings:
                wrong.append(f"{cut}: pixel data cut, but {header.has_pixel_data=}")
            continue
        if cut in file.whole:  # a whole, shorter file: nothing is cut
            header = read_header(io.BytesIO(piece), uri="x")
            if header.has_pixel_data:
                wrong.append(f"{cut}: a file cut before its pixel data has pixel data")
            continue
        try:
            read_header(io.BytesIO(piece), uri="x")
        except TruncatedFile as exc:
            truncated += 1
            if not _clean(str(exc)) or f"{cut} bytes" not in str(exc):
                wrong.append(f"{cut}: message {str(exc)!r}")
        except Exception as exc:  # every other error is a failure here
            wrong.append(f"{cut}: {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"{cut}: read_header returned a header")
        if native.available():
            result = native.parse_file(piece, uri="x")
            if not isinstance(result, str):
                wrong.append(f"{cut}: the native parser accepted it")
    assert not wrong, f"{len(wrong)} cuts of {name} went wrong: {wrong[:20]}"
    assert truncated > 100  # the header's cuts were tried, not skipped


def test_cuts_inside_the_preamble_are_not_dicom() -> None:
    """Up to the DICM prefix, a cut file has no DICOM to read: a not_dicom row."""
    data = layout("CT_small.dcm").data
    for cut in range(1, 132):
        with pytest.raises(NotDicom):
            read_header(io.BytesIO(data[:cut]), uri="x")
        if native.available():
            assert isinstance(native.parse_file(data[:cut], uri="x"), str), cut


def test_messages_name_what_was_cut() -> None:
    """The message names the element before the cut, or the one whose header is cut."""
    data = layout("CT_small.dcm").data
    # 900 is two bytes into the tag of (0009,10E7); (0009,10E6) is the element before
    with pytest.raises(TruncatedFile, match=r"header of an element after \(0009,10E6\): 900 bytes"):
        read_header(io.BytesIO(data[:900]), uri="x")
    # inside the 4-byte length of the first OB element of the file meta, (0002,0001)
    with pytest.raises(TruncatedFile, match=r"inside the header of element \(0002,0001\)"):
        read_header(io.BytesIO(data[:154]), uri="x")
    big = layout("MR_small_bigendian.dcm")
    # inside the pixel data's 4-byte length, in a big endian data set
    with pytest.raises(TruncatedFile, match=r"inside the header of element \(7FE0,0010\)"):
        read_header(io.BytesIO(big.data[: big.pixel_start + 10]), uri="x")


def _extract_row():  # type: ignore[no-untyped-def]
    try:
        from dicomlake.kernels import extract_row  # type: ignore[attr-defined]
    except ImportError:
        from dicomlake.kernels.instances import extract_row
    return extract_row


@pytest.mark.parametrize("parser", ["auto", "pydicom"])
def test_a_cut_file_is_an_error_row(tmp_path: Path, parser: str) -> None:
    """Through the kernel, on either parser: status error, TruncatedFile, no values."""
    from dicomlake.catalog import FileRef

    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.PatientName = "ZZTRUNC^SECRET"
    ds.PatientID = "TRUNC-ID-4242"
    ds.InstitutionName = "ZZ-SECRET-CLINIC-1"  # same length: the offsets stay put
    buffer = io.BytesIO()
    ds.save_as(buffer)
    path = tmp_path / "cut.dcm"
    path.write_bytes(buffer.getvalue()[:900])
    row = _extract_row()(FileRef(path.as_uri(), "cut.dcm", 900, None), parser=parser)
    assert row["status"] == "error", row
    assert row["error"].startswith("TruncatedFile"), row["error"]
    assert row["parser"] == "pydicom"  # the native parser declined it (or is not built)
    for value in ("ZZTRUNC", "SECRET", "4242", "CLINIC"):
        assert value not in row["error"]
