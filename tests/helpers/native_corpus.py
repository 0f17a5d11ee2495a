"""Generated DICOM files that cover what a header parser must get right.

Each case is a function that returns a whole file's bytes, written with pydicom (raw
elements where pydicom would tidy a value we want written as it is). ``CASES`` maps a
case name to its function; :func:`write_corpus` writes them into a folder and returns
``{name: path}``; :func:`corpus_bytes` returns ``{name: bytes}`` for in-memory use.

What it covers: every VR with single and multiple values, and empty, in explicit and
implicit VR little endian (and big endian, and deflated, for the all-VR file);
sequences of defined and undefined length with items of both kinds, three and more
levels deep, empty sequences and empty items; private blocks in explicit and implicit
VR; every character set pydicom supports, with PN/LO/SH/ST/LT/UT text, and a change of
character set inside sequence items; odd lengths and padding variants; DS/IS edge
values; FL/FD specials; AT; UN of defined and undefined length; binary values below,
at and above the bulk threshold; native and encapsulated pixel data.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

#: The bulk threshold the tests parse with (binary values longer than this are bulk).
BULK_THRESHOLD = 1024

# fmt: off
ALL_VRS = [
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
]
# fmt: on
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}

Case = Callable[[], bytes]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------
# helpers


def _uid(name: str) -> str:
    return generate_uid(entropy_srcs=["dicomlake native corpus", name])


def _dataset(name: str, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A minimal Secondary Capture instance with file meta, named by ``name``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(name)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "DICOMLAKE_TEST"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(name + "/study")
    ds.SeriesInstanceUID = _uid(name + "/series")
    ds.PatientID = name[:64]
    ds.Modality = "OT"
    return ds


def _encode(ds: Dataset) -> bytes:
    """The file's bytes, in the transfer syntax its file meta names.

    Raw elements are written as they are: the data set says it was read in the
    encoding it is written in, so pydicom does not convert (and tidy) them first.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        charset = ds._character_set
        ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian, charset)
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _raw(tag: int, vr: str, value: bytes, *, undefined: bool = False) -> RawDataElement:
    """A raw element written exactly as given (odd lengths and odd padding kept)."""
    length = 0xFFFFFFFF if undefined else len(value)
    return RawDataElement(Tag(tag), vr, length, value, 0, False, True)


def _tags(vr: str, count: int, skip: tuple[int, ...] = ()) -> list[int]:
    """``count`` public, unretired tags of ``vr`` outside the file meta and image groups."""
    found = []
    for tag in sorted(DicomDictionary):
        entry = DicomDictionary[tag]
        if entry[0] != vr or entry[3] or tag >> 16 in (0x0000, 0x0002, 0x0028, 0x7FE0):
            continue
        if tag in (0x00080005, *skip) or "x" in f"{tag:08X}":
            continue
        found.append(tag)
        if len(found) == count:
            return found
    raise LookupError(f"only {len(found)} tags of VR {vr}")


def _selector(vr: str) -> int:
    """The (0072,00xx) Selector <VR> Value tag: one public tag for each VR but SQ."""
    tag = tag_for_keyword(f"Selector{vr}Value")
    assert tag is not None, vr
    return tag


# ---------------------------------------------------------------------------------------
# every VR, with values (multi-valued where the VR allows it) and empty

_FL = struct.Struct("<f")

VALUES: dict[str, Any] = {
    "AE": ["STORESCP", "ARCHIVE 2"],
    "AS": ["045Y", "003M"],
    "AT": [0x00100010, 0x7FE00010, 0x00091001],
    "CS": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "DA": ["20240102", "19991231"],
    "DS": ["1.5", "-2.25e3", "0", "1e-10", "123456789012"],
    "DT": ["20240102123456.123456+0100", "2024"],
    "FD": [3.141592653589793, -1e300, 0.1, 0.0],
    "FL": [1.5, -0.25, 0.1, 3.4028234663852886e38],
    "IS": ["42", "-7", "2147483647"],
    "LO": ["Long string", "second value"],
    "LT": "Long text\r\nline 2 \\ a backslash is not a separator here",
    "OB": bytes(range(16)),
    "OD": struct.pack("<3d", 1.0, -2.5, 1e-300),
    "OF": struct.pack("<3f", 1.0, -2.5, 0.1),
    "OL": struct.pack("<3L", 1, 2, 0xFFFFFFFF),
    "OV": struct.pack("<2Q", 1, 0xFFFFFFFFFFFFFFFF),
    "OW": struct.pack("<4H", 1, 2, 0x8000, 0xFFFF),
    "PN": ["Doe^John^A^Dr.^Jr.", "Yamada^Tarou==Yamada^Tarou", "Smith"],
    "SH": ["SHORT", "two"],
    "SL": [-2147483648, 2147483647, 0],
    "SS": [-32768, 32767, -1],
    "ST": "Short text \\ with a backslash",
    "SV": [-(2**63), 2**63 - 1, -1],
    "TM": ["123456.789", "0102", "23"],
    "UC": ["Unlimited characters " * 8, "b"],
    "UI": ["1.2.840.10008.1.2", "1.2.3.4.5"],
    "UL": [0, 4294967295, 7],
    "UN": b"\x01\x02\x03\x04\xff\xfe",
    "UR": "http://example.com/path?q=1",
    "US": [0, 65535, 1],
    "UT": "Unlimited text \\ with a backslash\r\n and a second line",
    "UV": [0, 2**64 - 1, 1],
}


def _sequence_item(label: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = SecondaryCaptureImageStorage
    item.ReferencedSOPInstanceUID = _uid(label)
    return item


def _add_vr(ds: Dataset, vr: str, *, empty: bool = False) -> None:
    if vr == "SQ":
        items = [] if empty else [_sequence_item("a"), _sequence_item("b")]
        ds.ReferencedImageSequence = Sequence(items)
        return
    value: Any = VALUES[vr]
    if empty:
        value = b"" if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN") else None
    ds.add(DataElement(_selector(vr), vr, value))


def _vr_case(vr: str, syntax: str, empty: bool) -> Case:
    def build() -> bytes:
        ds = _dataset(f"vr-{vr}-{syntax}-{empty}", SYNTAXES[syntax])
        _add_vr(ds, vr, empty=empty)
        return _encode(ds)

    return build


for _vr in ALL_VRS:
    for _syntax in SYNTAXES:
        case(f"vr-{_vr}-{_syntax}")(_vr_case(_vr, _syntax, empty=False))
        case(f"empty-{_vr}-{_syntax}")(_vr_case(_vr, _syntax, empty=True))


def _all_vrs(name: str, syntax: str) -> bytes:
    ds = _dataset(name, syntax)
    for vr in ALL_VRS:
        _add_vr(ds, vr)
    if syntax == ExplicitVRBigEndian:  # binary values as a big endian writer has them
        for vr, code in (("OD", "d"), ("OF", "f"), ("OL", "L"), ("OV", "Q"), ("OW", "H")):
            data = VALUES[vr]
            size = struct.calcsize("<" + code)
            numbers = struct.unpack(f"<{len(data) // size}{code}", data)
            ds[_selector(vr)].value = struct.pack(f">{len(numbers)}{code}", *numbers)
    return _encode(ds)


case("all-vrs-explicit")(lambda: _all_vrs("all-vrs-explicit", ExplicitVRLittleEndian))
case("all-vrs-implicit")(lambda: _all_vrs("all-vrs-implicit", ImplicitVRLittleEndian))
case("all-vrs-big-endian")(lambda: _all_vrs("all-vrs-big-endian", ExplicitVRBigEndian))
case("all-vrs-deflated")(lambda: _all_vrs("all-vrs-deflated", DeflatedExplicitVRLittleEndian))


@case("ambiguous-vrs-implicit")
def _ambiguous_vrs() -> bytes:
    """'US or SS' and 'OB or OW' in implicit VR: the VR comes from other elements."""
    ds = _dataset("ambiguous-vrs-implicit", ImplicitVRLittleEndian)
    ds.PixelRepresentation = 1
    ds.BitsAllocated = 16
    ds.add(DataElement(0x00280106, "SS", -5))  # Smallest Image Pixel Value
    ds.add(DataElement(0x00280107, "SS", 300))  # Largest Image Pixel Value
    ds.add(DataElement(0x00281201, "OW", b"\x00\x01" * 4))  # Red Palette LUT Data
    ds.add(DataElement(0x00283006, "US", [1, 2, 3]))  # LUT Data, 'US or OW'
    return _encode(ds)


def _lut_descriptors(name: str, pixel_representation: int) -> bytes:
    """Palette and LUT descriptors ('US or SS'), first value above 32767, implicit VR."""
    ds = _dataset(name, ImplicitVRLittleEndian)
    ds.PixelRepresentation = pixel_representation
    vr = "US" if pixel_representation == 0 else "SS"
    for tag in (0x00281101, 0x00281102, 0x00281103):  # Red/Green/Blue Palette Descriptor
        ds.add(DataElement(tag, vr, [40000, 0, 16]))
    ds.add(DataElement(0x00283002, vr, 4096))  # LUT Descriptor with one value
    return _encode(ds)


case("lut-descriptors-implicit-unsigned")(
    lambda: _lut_descriptors("lut-descriptors-implicit-unsigned", 0)
)
case("lut-descriptors-implicit-signed")(
    lambda: _lut_descriptors("lut-descriptors-implicit-signed", 1)
)


@case("ambiguous-vrs-explicit")
def _ambiguous_vrs_explicit() -> bytes:
    ds = _dataset("ambiguous-vrs-explicit")
    ds.PixelRepresentation = 1
    ds.add(DataElement(0x00280106, "SS", -5))
    ds.add(DataElement(0x00280107, "US", 300))
    return _encode(ds)


@case("group-lengths")
def _group_lengths() -> bytes:
    """Group length elements in the data set (pydicom's writer leaves them out)."""
    ds = _dataset("group-lengths")
    ds.add(DataElement(0x00080000, "UL", 0))
    ds.add(DataElement(0x00100000, "UL", 1234))
    ds.add(DataElement(0x00200000, "UL", 0))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    for tag in sorted(ds.keys()):
        write_data_element(fp, ds[tag], ["iso8859"])
    return _with_meta(ds, fp.getvalue())


# ---------------------------------------------------------------------------------------
# multi-values


@case("multi-values")
def _multi_values() -> bytes:
    ds = _dataset("multi-values")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "HELIX"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.ImagePositionPatient = ["-125.0", "-125.0", "10.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["400", "2000"]
    ds.EchoNumbers = ["1", "2", "3"]
    ds.OtherPatientIDs = ["A", "B", "C"]
    ds.PerformingPhysicianName = ["Doe^John", "Roe^Jane", "Poe^Edgar"]
    ds.add(DataElement(0x00186052, "UL", list(range(20))))  # Table of X Break Points
    ds.add(DataElement(0x00189079, "FD", [0.5 * i for i in range(40)]))  # Inversion Times
    ds.add(DataElement(0x0018605A, "FL", [0.25 * i for i in range(40)]))
    ds.add(DataElement(0x00081161, "UL", [1]))  # one-item list
    return _encode(ds)


# ---------------------------------------------------------------------------------------
# sequences


def _nested(
    levels: int,
    seq_undefined: Callable[[int], bool],
    item_undefined: Callable[[int], bool],
    label: str = "n",
) -> Sequence:
    """A sequence ``levels`` deep; each level's first item holds the next level."""
    items = []
    for index in range(2):
        item = Dataset()
        item.CodeValue = f"L{levels}I{index}"
        item.CodeMeaning = f"level {levels} item {index}"
        item.add(DataElement(0x00720078, "UL", [levels, index]))
        if index == 0 and levels > 1:
            inner = _nested(levels - 1, seq_undefined, item_undefined, label)
            element = DataElement(0x00400260, "SQ", inner)  # Performed Protocol Code Sequence
            element.is_undefined_length = seq_undefined(levels - 1)
            item.add(element)
        item.is_undefined_length_sequence_item = item_undefined(index + levels)
        items.append(item)
    return Sequence(items)


def _sequence_case(
    name: str, syntax: str, seq: Callable[[int], bool], item: Callable[[int], bool], levels: int = 4
) -> Case:
    def build() -> bytes:
        ds = _dataset(name, syntax)
        element = DataElement(0x00081032, "SQ", _nested(levels, seq, item))  # Procedure Code Seq
        element.is_undefined_length = seq(levels)
        ds.add(element)
        ds.PatientName = "After^Sequence"  # an element after the sequence must still be read
        return _encode(ds)

    return build


def _always(_: int) -> bool:
    return True


def _never(_: int) -> bool:
    return False


def _odd(level: int) -> bool:
    return level % 2 == 1


def _even(level: int) -> bool:
    return level % 2 == 0


for _syntax, _ts in SYNTAXES.items():
    case(f"sq-defined-{_syntax}")(_sequence_case(f"sq-defined-{_syntax}", _ts, _never, _never))
    case(f"sq-undefined-{_syntax}")(
        _sequence_case(f"sq-undefined-{_syntax}", _ts, _always, _always)
    )
    case(f"sq-mixed-{_syntax}")(_sequence_case(f"sq-mixed-{_syntax}", _ts, _odd, _even))
    case(f"sq-mixed2-{_syntax}")(_sequence_case(f"sq-mixed2-{_syntax}", _ts, _even, _odd))
    case(f"sq-deep-{_syntax}")(_sequence_case(f"sq-deep-{_syntax}", _ts, _odd, _odd, levels=40))
case("sq-mixed-big-endian")(_sequence_case("sq-mixed-big-endian", ExplicitVRBigEndian, _odd, _even))
case("sq-mixed-deflated")(
    _sequence_case("sq-mixed-deflated", DeflatedExplicitVRLittleEndian, _odd, _even)
)


def _empty_sequences(name: str, syntax: str) -> bytes:
    ds = _dataset(name, syntax)
    defined = DataElement(0x00081032, "SQ", Sequence())  # empty, defined length 0
    undefined = DataElement(0x00081115, "SQ", Sequence())  # empty, just a delimiter
    undefined.is_undefined_length = True
    ds.add(defined)
    ds.add(undefined)
    empty_defined, empty_undefined = Dataset(), Dataset()
    empty_undefined.is_undefined_length_sequence_item = True
    items = DataElement(0x00081140, "SQ", Sequence([empty_defined, empty_undefined]))
    ds.add(items)  # Referenced Image Sequence: two empty items
    items_u = DataElement(0x00081250, "SQ", Sequence([Dataset(), _sequence_item("x")]))
    items_u.is_undefined_length = True
    ds.add(items_u)  # Related Series Sequence: an empty item then a full one
    ds.PatientName = "After^Empty"
    return _encode(ds)


for _syntax, _ts in SYNTAXES.items():
    case(f"sq-empty-{_syntax}")(lambda ts=_ts, s=_syntax: _empty_sequences(f"sq-empty-{s}", ts))


@case("sq-with-binary")
def _sequence_with_binary() -> bytes:
    """Bulk and inline binary values inside defined and undefined length items."""
    ds = _dataset("sq-with-binary")
    inner = Dataset()
    inner.add(DataElement(_selector("OB"), "OB", bytes(range(256)) * 8))  # 2048: bulk
    inner.add(DataElement(_selector("OW"), "OW", b"\x01\x02" * 8))
    deeper = Dataset()
    deeper.add(DataElement(_selector("OF"), "OF", b"\x00\x00\x80\x3f" * 400))  # 1600: bulk
    deeper.is_undefined_length_sequence_item = True
    nested = DataElement(0x00400260, "SQ", Sequence([deeper]))
    inner.add(nested)
    outer = DataElement(0x00081032, "SQ", Sequence([inner, Dataset()]))
    ds.add(outer)
    undefined_item = Dataset()
    undefined_item.add(DataElement(_selector("OB"), "OB", bytes(range(200)) * 6))
    undefined_item.is_undefined_length_sequence_item = True
    second = DataElement(0x00081115, "SQ", Sequence([undefined_item]))
    second.is_undefined_length = True
    ds.add(second)
    return _encode(ds)


# ---------------------------------------------------------------------------------------
# private blocks


def _private_dataset(name: str, syntax: str, creator: str) -> Dataset:
    ds = _dataset(name, syntax)
    block = ds.private_block(0x0009, creator, create=True)
    block.add_new(0x01, "LO", "private long string")
    block.add_new(0x02, "US", [1, 2, 3])
    block.add_new(0x03, "OB", bytes(range(32)))
    block.add_new(0x04, "DS", ["1.5", "2.5"])
    block.add_new(0x05, "OB", bytes(range(256)) * 5)  # 1280 bytes: bulk
    item = Dataset()
    inner = item.private_block(0x0009, creator, create=True)
    inner.add_new(0x01, "LO", "inside an item")
    item.PatientID = "ITEM"
    block.add_new(0x06, "SQ", Sequence([item]))
    other = ds.private_block(0x0009, "ANOTHER CREATOR", create=True)  # second block
    other.add_new(0x01, "SH", "other block")
    high = ds.private_block(0x0011, "HIGH GROUP", create=True)
    high.add_new(0xFF, "UL", 0xDEADBEEF)
    return ds


@case("private-explicit")
def _private_explicit() -> bytes:
    return _encode(_private_dataset("private-explicit", ExplicitVRLittleEndian, "DICOMLAKE"))


@case("private-implicit-unknown-creator")
def _private_implicit_unknown() -> bytes:
    return _encode(
        _private_dataset("private-implicit-unknown", ImplicitVRLittleEndian, "DICOMLAKE")
    )


@case("private-implicit-known-creator")
def _private_implicit_known() -> bytes:
    """A creator in pydicom's private dictionary: the VRs come from there."""
    ds = _dataset("private-implicit-known", ImplicitVRLittleEndian)
    block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    block.add_new(0x01, "FL", 1.5)  # Chemical Shift
    block.add_new(0x02, "IS", "12")  # Chemical Shift Number MR
    block.add_new(0x04, "CS", "ISOTROPIC")  # Diffusion Direction
    block.add_new(0x05, "SS", -3)
    block.add_new(0x7F, "LO", "not in the dictionary")
    return _encode(ds)


@case("private-explicit-orphan")
def _private_orphan() -> bytes:
    """Private elements with no creator, and a creator with no elements."""
    ds = _dataset("private-explicit-orphan")
    ds.add(DataElement(0x00191001, "LO", "no creator for me"))
    ds.add(DataElement(0x00190010, "LO", "LONELY CREATOR"))
    ds.add(DataElement(0x00211010, "LO", "CREATOR"))
    ds.add(DataElement(0x00211020, "LO", "element in the creator range"))
    return _encode(ds)


# ---------------------------------------------------------------------------------------
# character sets

_LATIN = "Buc^Jérôme"
#: charset value -> (PN, text for LO/SH/ST/LT/UT)
CHARSETS: dict[str, tuple[str, str]] = {
    "": ("Doe^John", "plain ASCII text"),
    "ISO_IR 6": ("Doe^John", "plain ASCII text"),
    "ISO_IR 100": (_LATIN, "Ça été déjà vu, naïve façade"),
    "ISO_IR 101": ("Wałęsa^Lech", "Zażółć gęślą jaźń"),
    "ISO_IR 109": ("Ġużeppi^Borg", "Ħabib ċar"),
    "ISO_IR 110": ("Ēriks^Ģirts", "Ļoti ņemt"),
    "ISO_IR 144": ("Люкceмбypг", "Съешь же ещё этих мягких булок"),
    "ISO_IR 127": ("قباني^لنزار", "نص عربي"),
    "ISO_IR 126": ("Διονυσιος", "Ξεσκεπάζω την ψυχοφθόρα"),
    "ISO_IR 138": ("שרון^דבורה", "טקסט עברי"),
    "ISO_IR 148": ("Çağlar^Öztürk", "Pijamalı hasta yağız şoföre"),
    "ISO_IR 166": ("สวัสดี^ครับ", "ภาษาไทย"),
    "ISO_IR 13": ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ｶﾀｶﾅ ﾃｷｽﾄ"),
    "ISO_IR 192": ("Wang^XiaoDong=王^小東=", "Grüße, 你好, привет, 🙂"),
    "GB18030": ("Wang^XiaoDong=王^小东=", "中文文本 €"),
    "GBK": ("Wang^XiaoDong=王^小东=", "中文文本"),
    "ISO 2022 IR 6": ("Doe^John", "plain ASCII text"),
    "ISO 2022 IR 100": (_LATIN, "Ça été déjà vu"),
    "ISO 2022 IR 101": ("Wałęsa^Lech", "Zażółć gęślą"),
    "ISO 2022 IR 109": ("Ġużeppi^Borg", "Ħabib ċar"),
    "ISO 2022 IR 110": ("Ēriks^Ģirts", "Ļoti ņemt"),
    "ISO 2022 IR 126": ("Διονυσιος", "Ξεσκεπάζω"),
    "ISO 2022 IR 127": ("قباني^لنزار", "نص عربي"),
    "ISO 2022 IR 138": ("שרון^דבורה", "טקסט עברי"),
    "ISO 2022 IR 144": ("Люкceмбypг", "Съешь же"),
    "ISO 2022 IR 148": ("Çağlar^Öztürk", "Pijamalı hasta"),
    "ISO 2022 IR 166": ("สวัสดี^ครับ", "ภาษาไทย"),
    "ISO 2022 IR 13": ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ｶﾀｶﾅ"),
    "\\ISO 2022 IR 87": ("Yamada^Tarou=山田^太郎=やまだ^たろう", "日本語のテキスト"),
    "ISO 2022 IR 13\\ISO 2022 IR 87": ("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "ｶﾀｶﾅと漢字"),
    "\\ISO 2022 IR 87\\ISO 2022 IR 159": ("Yamada^Tarou=山田^太郎=やまだ^たろう", "漢字 丂"),
    "\\ISO 2022 IR 149": ("Hong^Gildong=洪^吉洞=홍^길동", "한국어 텍스트"),
    "\\ISO 2022 IR 58": ("Zhang^XiaoDong=张^小东=", "中文文本"),
    "ISO 2022 IR 6\\ISO 2022 IR 126\\ISO 2022 IR 144": ("Διονυσιος=Люкceмбypг", "Ξεσκεπάζω Съешь"),
    "ISO 2022 IR 100\\ISO 2022 IR 126": ("Jérôme=Διονυσιος", "déjà Ξεσκεπάζω"),
}


def _charset_name(charset: str) -> str:
    return "charset-" + (charset.replace(" ", "_").replace("\\", "+") or "none")


def _charset_case(charset: str, pn: str, text: str) -> Case:
    def build() -> bytes:
        ds = _dataset(_charset_name(charset))
        if charset:
            values = charset.split("\\")
            ds.SpecificCharacterSet = values if len(values) > 1 else values[0]
        ds.PatientName = pn
        ds.PerformingPhysicianName = [pn, pn.split("=")[0]]
        ds.InstitutionName = text[:64]
        ds.StationName = text[:16]
        ds.OtherPatientIDs = [text[:16], "ID2"]
        ds.InstitutionAddress = text + "\r\n" + text
        ds.AdditionalPatientHistory = text + " \\ " + text
        ds.add(DataElement(_selector("UT"), "UT", text * 3))
        ds.add(DataElement(_selector("UC"), "UC", [text, text]))
        ds.add(DataElement(_selector("LT"), "LT", text))
        ds.Modality = "OT"  # CS: always the default repertoire
        return _encode(ds)

    return build


for _charset, (_pn, _text) in CHARSETS.items():
    case(_charset_name(_charset))(_charset_case(_charset, _pn, _text))


@case("charset-in-sequence-items")
def _charset_in_items() -> bytes:
    """Items that change the character set, items that inherit it, nested items."""
    ds = _dataset("charset-in-sequence-items")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = _LATIN
    utf8 = Dataset()
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Wang^XiaoDong=王^小東="
    utf8.InstitutionName = "Grüße 你好"
    inherit_utf8 = Dataset()
    inherit_utf8.PatientName = "李^四"
    inherit_utf8.is_undefined_length_sequence_item = True
    inner = DataElement(0x00400260, "SQ", Sequence([inherit_utf8]))
    inner.is_undefined_length = True
    utf8.add(inner)
    inherit_latin = Dataset()
    inherit_latin.PatientName = "Müller^Jürgen"
    cyrillic = Dataset()
    cyrillic.SpecificCharacterSet = "ISO_IR 144"
    cyrillic.PatientName = "Люкceмбypг"
    cyrillic.is_undefined_length_sequence_item = True
    japanese = Dataset()
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    japanese.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.add(DataElement(0x00081115, "SQ", Sequence([utf8, inherit_latin, cyrillic, japanese])))
    ds.InstitutionName = "Hôpital après la séquence"
    return _encode(ds)


@case("charset-in-sequence-items-latin1-utf8")
def _charset_in_items_simple() -> bytes:
    """Items switching between Latin-1 and UTF-8 only, nested, both length kinds."""
    ds = _dataset("charset-in-sequence-items-latin1-utf8")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Wang^XiaoDong=王^小東="
    latin = Dataset()
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.PatientName = _LATIN
    latin.InstitutionName = "Hôpital"
    inherit_latin = Dataset()
    inherit_latin.PatientName = "Müller^Jürgen"
    inherit_latin.is_undefined_length_sequence_item = True
    back_to_utf8 = Dataset()
    back_to_utf8.SpecificCharacterSet = "ISO_IR 192"
    back_to_utf8.PatientName = "李^四"
    inner = DataElement(0x00400260, "SQ", Sequence([inherit_latin, back_to_utf8]))
    inner.is_undefined_length = True
    latin.add(inner)
    inherit_utf8 = Dataset()
    inherit_utf8.PatientName = "Grüße^你好"
    ds.add(DataElement(0x00081115, "SQ", Sequence([latin, inherit_utf8])))
    ds.InstitutionName = "Hôpital après la séquence, 你好"
    return _encode(ds)


def _raw_charset_case(
    name: str, charset: bytes | None, elements: dict[int, tuple[str, bytes]]
) -> Case:
    def build() -> bytes:
        ds = _dataset(name)
        if charset is not None:
            ds[0x00080005] = _raw(0x00080005, "CS", charset)
        for tag, (vr, value) in elements.items():
            ds[tag] = _raw(tag, vr, value)
        return _encode(ds)

    return build


_JEROME = "Jérôme^Buc".encode("latin-1")
case("charset-utf8-invalid-bytes")(
    _raw_charset_case(
        "charset-utf8-invalid-bytes",
        b"ISO_IR 192",
        {0x00100010: ("PN", _JEROME), 0x00080080: ("LO", b"H\xf4pital\xff ")},
    )
)
case("charset-unknown")(
    _raw_charset_case("charset-unknown", b"ISO_IR 999", {0x00100010: ("PN", _JEROME)})
)
case("charset-misspelled")(
    _raw_charset_case(
        "charset-misspelled", b"ISO-IR 192", {0x00100010: ("PN", "Grüße^王".encode())}
    )
)
case("charset-padded-nul")(
    _raw_charset_case(
        "charset-padded-nul", b"ISO_IR 192\x00\x00", {0x00100010: ("PN", "Grüße^王".encode())}
    )
)
case("charset-absent-non-ascii")(
    _raw_charset_case(
        "charset-absent-non-ascii",
        None,
        {0x00100010: ("PN", _JEROME), 0x00080080: ("LO", b"H\xf4pital")},
    )
)
case("charset-empty-value")(
    _raw_charset_case("charset-empty-value", b"", {0x00100010: ("PN", _JEROME)})
)
case("charset-ir100-multibyte-mislabel")(
    _raw_charset_case(
        "charset-ir100-multibyte-mislabel", b"ISO_IR 100", {0x00100010: ("PN", "Grüße^王".encode())}
    )
)


# ---------------------------------------------------------------------------------------
# odd lengths, padding, DS/IS edge values, FL/FD specials, AT


def _raw_case(
    name: str, elements: list[tuple[str, bytes]], syntax: str = ExplicitVRLittleEndian
) -> Case:
    """Raw values of each VR, each on its own public tag of that VR."""

    def build() -> bytes:
        ds = _dataset(name, syntax)
        by_vr: dict[str, list[bytes]] = {}
        for vr, value in elements:
            by_vr.setdefault(vr, []).append(value)
        for vr, values in by_vr.items():
            for tag, value in zip(
                _tags(vr, len(values), skip=tuple(ds.keys())), values, strict=True
            ):
                ds[tag] = _raw(tag, vr, value)
        return _encode(ds)

    return build


PADDING = [
    ("UI", b"1.2.3\x00"),
    ("UI", b"1.2.34 "),
    ("UI", b"1.2.345"),
    ("UI", b"1.2\\1.3\x00"),
    ("UI", b"1.2.3\x00\x00\x00"),
    ("UI", b"\x00\x00"),
    ("CS", b"ABC "),
    ("CS", b"ABC\x00"),
    ("CS", b"ABC"),
    ("CS", b" ABC"),
    ("CS", b"A\\B "),
    ("CS", b"A \\ B"),
    ("CS", b"  "),
    ("CS", b"\\"),
    ("LO", b"Name\x00"),
    ("LO", b"Name "),
    ("LO", b"Nam"),
    ("LO", b"  Lead"),
    ("LO", b"a\\b \\c\x00"),
    ("LO", b" \\ "),
    ("LO", b"\x00\x00"),
    ("SH", b"odd"),
    ("SH", b"x\x00"),
    ("ST", b"text  "),
    ("ST", b"text\x00"),
    ("ST", b"  lead kept"),
    ("ST", b"odd"),
    ("LT", b"  lead\r\n"),
    ("LT", b"x\x00\x00\x00"),
    ("UT", b"odd length"[:9]),
    ("UT", b"trail   "),
    ("UT", b"nul\x00"),
    ("PN", b"Doe^John\x00"),
    ("PN", b"Doe^John "),
    ("PN", b"Doe^Jon"),
    ("PN", b"A\\B\\"),
    ("PN", b"^^^^"),
    ("PN", b"=Ideo=Phon"),
    ("PN", b"  "),
    ("DA", b"20240102 "),
    ("DA", b"2024010"),
    ("TM", b"1234 "),
    ("TM", b"123456.1"),
    ("DT", b"2024 "),
    ("AS", b"045Y"),
    ("AE", b" AE TITLE "),
    ("AE", b"A\\B"),
    ("UR", b"http://x/ "),
    ("UR", b"http://x/y"),
    ("UC", b"uc\\odd "),
    ("UC", b"u"),
]
DS_IS = [
    ("DS", b" 1.5 "),
    ("DS", b"  -2\\ 3.0 "),
    ("DS", b"1."),
    ("DS", b".5"),
    ("DS", b"-.5"),
    ("DS", b"+1.5"),
    ("DS", b"1e10"),
    ("DS", b"1E-5"),
    ("DS", b"-1.5e+300"),
    ("DS", b"1\\\\2"),
    ("DS", b"\\"),
    ("DS", b"  "),
    ("DS", b"0"),
    ("DS", b"-0"),
    ("DS", b"0012.50"),
    ("DS", b"1e-400"),
    ("DS", b"123456789012345"),
    ("DS", b"1.5\x00"),
    ("DS", b"3.14159265358979323846"),
    ("DS", b"9007199254740993"),
    ("IS", b"+12"),
    ("IS", b" -3"),
    ("IS", b"+0"),
    ("IS", b"007"),
    ("IS", b"1\\\\2"),
    ("IS", b"2147483648"),
    ("IS", b"-2147483649"),
    ("IS", b"12 "),
    ("IS", b"\\"),
    ("IS", b"-0"),
    ("IS", b"5\x00"),
]
DS_IS_INVALID = [
    ("DS", b"abc"),
    ("DS", b"nan"),
    ("DS", b"1,5"),
    ("DS", b"inf"),
    ("IS", b"1.0"),
    ("IS", b"1.5"),
    ("IS", b"x"),
    ("IS", b"1e3"),
]


def _floats(code: str, values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}{code}", *values)


_FLOAT_SPECIALS = [
    -0.0,
    0.0,
    1.0,
    0.1,
    5e-324,  # the smallest denormal
    2.2250738585072014e-308,  # the smallest normal
    1.7976931348623157e308,  # the largest
    1e-300,
    1e300,
    1.0000000000000002,
    -123456789.123456789,
]
_FLOAT32_SPECIALS = [
    -0.0,
    1e-45,  # the smallest denormal
    1.1754943508222875e-38,  # the smallest normal
    3.4028234663852886e38,  # the largest
    0.1,
    1 / 3,
    16777217.0,
    1e-40,
]
_NON_FINITE = [float("nan"), float("inf"), float("-inf")]
FLOATS = [
    ("FD", _floats("d", _FLOAT_SPECIALS)),
    ("FL", _floats("f", _FLOAT32_SPECIALS)),
    ("OD", _floats("d", _FLOAT_SPECIALS[:4] + _NON_FINITE)),  # binary: no JSON number
    ("OF", _floats("f", _FLOAT32_SPECIALS[:4] + _NON_FINITE)),
]
FLOATS_NON_FINITE = [
    ("FD", _floats("d", [1.0, *_NON_FINITE])),
    ("FL", _floats("f", [1.0, *_NON_FINITE])),
    ("FD", struct.pack("<Q", 0x7FF8_0000_0000_0001)),  # a NaN with a payload
    ("FL", struct.pack("<L", 0xFFC0_0001)),  # a negative NaN with a payload
]
DS_OVERFLOW = [("DS", b"1e400"), ("DS", b"-1e309\\1")]
ATS = [
    ("FD", _floats("d", _FLOAT_SPECIALS)),
    ("FL", _floats("f", _FLOAT32_SPECIALS)),
    ("FD", struct.pack("<Q", 0x7FF8_0000_0000_0001)),  # a NaN with a payload
    ("FL", struct.pack("<L", 0xFFC0_0001)),  # a negative NaN with a payload
    ("OD", _floats("d", _FLOAT_SPECIALS[:4])),
    ("OF", _floats("f", _FLOAT32_SPECIALS[:4])),
]
ATS = [
    ("AT", struct.pack("<HH", 0x0010, 0x0010)),
    ("AT", struct.pack("<6H", 0x0008, 0x0018, 0x7FE0, 0x0010, 0xFFFE, 0xE000)),
    ("AT", b""),
    ("AT", struct.pack("<HH", 0x0009, 0x1001)),
]
NUMBERS_ODD = [
    ("FD", b"\x00" * 7),  # not a multiple of 8
    ("FL", b"\x00" * 6),
    ("US", b"\x01\x00\x02"),
    ("UL", b"\x01\x00\x00\x00\x02\x00"),
    ("SS", b"\xff"),
    ("SL", b"\x01\x02\x03\x04\x05"),
]

for _syntax, _ts in SYNTAXES.items():
    case(f"padding-{_syntax}")(_raw_case(f"padding-{_syntax}", PADDING, _ts))
    case(f"ds-is-{_syntax}")(_raw_case(f"ds-is-{_syntax}", DS_IS, _ts))
    case(f"floats-{_syntax}")(_raw_case(f"floats-{_syntax}", FLOATS, _ts))
    case(f"at-{_syntax}")(_raw_case(f"at-{_syntax}", ATS, _ts))
case("ds-is-invalid")(_raw_case("ds-is-invalid", DS_IS_INVALID))
case("ds-overflow")(_raw_case("ds-overflow", DS_OVERFLOW))
case("floats-non-finite")(_raw_case("floats-non-finite", FLOATS_NON_FINITE))
#: IS values beyond 64 bits: valid DICOM (12 bytes at most is a rule often broken),
#: but no JSON number type the lake's writer (orjson) can hold
case("is-beyond-64-bits")(
    _raw_case(
        "is-beyond-64-bits", [("IS", b"99999999999999999999"), ("IS", b"-18446744073709551617")]
    )
)
case("numbers-odd-length")(_raw_case("numbers-odd-length", NUMBERS_ODD))


@case("at-big-endian")
def _at_big_endian() -> bytes:
    ds = _dataset("at-big-endian", ExplicitVRBigEndian)
    ds.add(DataElement(0x00280009, "AT", [0x00181063, 0x7FE00010]))
    ds.add(DataElement(0x00209165, "AT", 0x00100020))
    ds.add(DataElement(0x00186052, "UL", [1, 0x01020304]))
    ds.add(DataElement(_selector("FD"), "FD", [-0.0, 1e-310, 0.1]))
    return _encode(ds)


# ---------------------------------------------------------------------------------------
# UN


def _implicit_items(*items: bytes, undefined: bool) -> bytes:
    """Implicit VR LE items, each a run of implicit elements."""
    out = b""
    for body in items:
        if undefined:
            out += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
            out += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        else:
            out += struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
    return out


def _implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


@case("un-explicit")
def _un() -> bytes:
    ds = _dataset("un-explicit")
    # UN for public tags: pydicom reads them with the dictionary VR
    ds[0x00100010] = _raw(0x00100010, "UN", b"Doe^John")  # PN
    ds[0x00280010] = _raw(0x00280010, "UN", b"\x04\x00")  # Rows, US
    ds[0x00181050] = _raw(0x00181050, "UN", b"0.5 ")  # Spatial Resolution, DS
    ds[0x00080008] = _raw(0x00080008, "UN", b"ORIGINAL\\PRIMARY")  # Image Type, CS
    ds[0x00209165] = _raw(0x00209165, "UN", b"\x10\x00\x20\x00")  # AT
    ds[0x00720076] = _raw(0x00720076, "UN", _floats("f", [1.5, 0.1]))  # FL
    # UN for private tags: stays binary
    ds[0x00090010] = _raw(0x00090010, "LO", b"UN CREATOR")
    ds[0x00091001] = _raw(0x00091001, "UN", b"\x01\x02\x03")  # odd length
    ds[0x00091002] = _raw(0x00091002, "UN", bytes(range(256)) * 6)  # bulk
    ds[0x00091003] = _raw(0x00091003, "UN", b"")
    # UN of undefined length: implicit VR LE items (a sequence in disguise)
    body = _implicit(0x00100020, b"ITEM-ID ") + _implicit(0x00081150, b"1.2.3\x00")
    ds[0x00091004] = _raw(0x00091004, "UN", _implicit_items(body, undefined=True), undefined=True)
    ds[0x00081115] = _raw(  # a public sequence tag as UN of undefined length
        0x00081115, "UN", _implicit_items(body, body, undefined=False), undefined=True
    )
    nested = _implicit_items(body, undefined=True)
    inner = struct.pack("<HHL", 0x0040, 0x0260, 0xFFFFFFFF) + nested
    inner += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    ds[0x00081032] = _raw(  # nested: an undefined-length sequence inside a UN item
        0x00081032, "UN", _implicit_items(body + inner, undefined=True), undefined=True
    )
    ds[0x00081140] = _raw(0x00081140, "UN", _implicit_items(body, undefined=False))  # defined
    return _encode(ds)


# ---------------------------------------------------------------------------------------
# binary values around the bulk threshold


def _binary_case(name: str, syntax: str) -> Case:
    def build() -> bytes:
        ds = _dataset(name, syntax)
        sizes = {
            0x00720065: ("OB", 1023),  # Selector OB Value
            0x0008041B: ("OB", 1024),  # Record Key
            0x0008041C: ("OB", 1025),  # Prior Record Key
            0x00720069: ("OW", 1026),  # Selector OW Value
            0x00281201: ("OW", 1024),  # Red Palette Color LUT Data
            0x00720067: ("OF", 4000),
            0x00720073: ("OD", 1032),
            0x00720075: ("OL", 1020),
            0x00720081: ("OV", 2048),
            0x00142210: ("OB", 0),
            0x00660040: ("OL", 1028),
            0x003A032E: ("OD", 8),
        }
        for tag, (vr, size) in sizes.items():
            data = bytes((i * 7 + tag) & 0xFF for i in range(size))
            ds.add(DataElement(tag, vr, data))
        ds.PatientName = "After^Bulk"
        return _encode(ds)

    return build


for _syntax, _ts in SYNTAXES.items():
    case(f"bulk-{_syntax}")(_binary_case(f"bulk-{_syntax}", _ts))
case("bulk-big-endian")(_binary_case("bulk-big-endian", ExplicitVRBigEndian))
case("bulk-deflated")(_binary_case("bulk-deflated", DeflatedExplicitVRLittleEndian))


# ---------------------------------------------------------------------------------------
# transfer syntaxes and file structure


@case("no-preamble")
def _no_preamble() -> bytes:
    """A data set with no preamble, no DICM prefix and no file meta."""
    ds = _dataset("no-preamble")
    ds.PatientName = "No^Preamble"
    return _dataset_body(ds, implicit=False, little=True)


@case("no-preamble-implicit")
def _no_preamble_implicit() -> bytes:
    ds = _dataset("no-preamble-implicit")
    ds.PatientName = "No^Preamble"
    return _dataset_body(ds, implicit=True, little=True)


def _with_meta(ds: Dataset, body: bytes) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    fp = DicomFileLike(buffer)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    return buffer.getvalue() + body


def _dataset_body(ds: Dataset, implicit: bool, little: bool) -> bytes:
    buffer = io.BytesIO()
    clean = Dataset()
    clean.update(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean.save_as(buffer, implicit_vr=implicit, little_endian=little)
    return buffer.getvalue()


@case("ts-explicit-but-implicit-body")
def _ts_mismatch() -> bytes:
    """The file meta says explicit VR, the data set is implicit VR (pydicom copes)."""
    ds = _dataset("ts-explicit-but-implicit-body")
    ds.PatientName = "Mismatch^Implicit"
    ds.add(DataElement(0x00081032, "SQ", Sequence([_sequence_item("m")])))
    return _with_meta(ds, _dataset_body(ds, implicit=True, little=True))


@case("ts-implicit-but-explicit-body")
def _ts_mismatch2() -> bytes:
    ds = _dataset("ts-implicit-but-explicit-body", ImplicitVRLittleEndian)
    ds.PatientName = "Mismatch^Explicit"
    return _with_meta(ds, _dataset_body(ds, implicit=False, little=True))


@case("deflated-raw")
def _deflated_raw() -> bytes:
    """Deflated by hand (raw deflate of an explicit VR LE data set), with a pixel value."""
    ds = _dataset("deflated-raw", DeflatedExplicitVRLittleEndian)
    ds.PatientName = "Deflated^Raw"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.add(DataElement(0x7FE00010, "OB", bytes(range(16))))
    body = _dataset_body(ds, implicit=False, little=True)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _with_meta(ds, compressor.compress(body) + compressor.flush())


# ---------------------------------------------------------------------------------------
# pixel data


def _image(name: str, syntax: str, rows: int, columns: int, bits: int) -> Dataset:
    ds = _dataset(name, syntax)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _native_pixels(name: str, syntax: str, rows: int, bits: int, vr: str) -> Case:
    def build() -> bytes:
        ds = _image(name, syntax, rows, rows, bits)
        size = rows * rows * bits // 8
        ds.add(DataElement(0x7FE00010, vr, bytes((i * 13) & 0xFF for i in range(size))))
        return _encode(ds)

    return build


case("pixels-native-small")(
    _native_pixels("pixels-native-small", ExplicitVRLittleEndian, 4, 16, "OW")
)
case("pixels-native-bulk")(
    _native_pixels("pixels-native-bulk", ExplicitVRLittleEndian, 64, 8, "OB")
)
case("pixels-native-implicit")(
    _native_pixels("pixels-native-implicit", ImplicitVRLittleEndian, 64, 16, "OW")
)
case("pixels-native-big-endian")(
    _native_pixels("pixels-native-big-endian", ExplicitVRBigEndian, 32, 16, "OW")
)
case("pixels-native-deflated")(
    _native_pixels("pixels-native-deflated", DeflatedExplicitVRLittleEndian, 32, 16, "OW")
)


@case("pixels-float")
def _float_pixels() -> bytes:
    ds = _image("pixels-float", ExplicitVRLittleEndian, 16, 16, 32)
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.add(DataElement(0x7FE00008, "OF", _floats("f", [i / 3 for i in range(256)])))
    return _encode(ds)


def _frames(count: int, size: int) -> list[bytes]:
    return [bytes((i * 31 + f) & 0xFF for i in range(size)) for f in range(count)]


def _encapsulated(name: str, frames: int, *, bot: bool, truncate: int = 0) -> Case:
    def build() -> bytes:
        ds = _image(name, RLELossless, 16, 16, 8)
        ds.NumberOfFrames = frames
        value = encapsulate(_frames(frames, 300 + frames), has_bot=bot)
        ds.add(DataElement(0x7FE00010, "OB", value))
        ds["PixelData"].is_undefined_length = True
        data = _encode(ds)
        return data[:-truncate] if truncate else data

    return build


case("pixels-encapsulated-bot")(_encapsulated("pixels-encapsulated-bot", 3, bot=True))
case("pixels-encapsulated-no-bot")(_encapsulated("pixels-encapsulated-no-bot", 3, bot=False))
case("pixels-encapsulated-one-frame")(_encapsulated("pixels-encapsulated-one-frame", 1, bot=False))
case("pixels-encapsulated-truncated")(
    _encapsulated("pixels-encapsulated-truncated", 3, bot=True, truncate=100)
)
case("pixels-encapsulated-no-delimiter")(
    _encapsulated("pixels-encapsulated-no-delimiter", 2, bot=True, truncate=8)
)


@case("pixels-then-trailing-padding")
def _pixels_then_padding() -> bytes:
    """Elements after the pixel data: a header parser stops at the pixel data."""
    ds = _image("pixels-then-trailing-padding", ExplicitVRLittleEndian, 4, 4, 8)
    ds.add(DataElement(0x7FE00010, "OB", bytes(16)))
    ds.add(DataElement(0xFFFCFFFC, "OB", bytes(64)))
    return _encode(ds)


@case("pixels-empty")
def _pixels_empty() -> bytes:
    ds = _image("pixels-empty", ExplicitVRLittleEndian, 4, 4, 8)
    ds.add(DataElement(0x7FE00010, "OB", b""))
    return _encode(ds)


@case("pixels-native-truncated")
def _pixels_native_truncated() -> bytes:
    return _native_pixels("pixels-native-truncated", ExplicitVRLittleEndian, 64, 8, "OB")()[:-500]


# ---------------------------------------------------------------------------------------
# files larger than the first bytes a zip member's or an object's read takes (64 KiB)


def _long_header(name: str, syntax: str) -> Case:
    """A header of some 200 KiB (a sequence of 2,000 items) before 1 MiB of pixels."""

    def build() -> bytes:
        ds = _image(name, syntax, 512, 512, 32)
        items = []
        for i in range(2000):
            item = Dataset()
            item.ReferencedSOPClassUID = SecondaryCaptureImageStorage
            item.ReferencedSOPInstanceUID = _uid(f"{name}/{i}")
            item.ReferencedFrameNumber = i + 1
            items.append(item)
        ds.ReferencedImageSequence = Sequence(items)
        ds.ImageComments = "x" * 9000
        ds.add(DataElement(0x7FE00010, "OW", bytes(range(256)) * 4096))
        return _encode(ds)

    return build


case("long-header-explicit")(_long_header("long-header-explicit", ExplicitVRLittleEndian))
case("long-header-implicit")(_long_header("long-header-implicit", ImplicitVRLittleEndian))
case("pixels-native-large")(
    _native_pixels("pixels-native-large", ExplicitVRLittleEndian, 512, 16, "OW")
)
case("pixels-encapsulated-many-fragments")(
    _encapsulated("pixels-encapsulated-many-fragments", 400, bot=True)
)


# ---------------------------------------------------------------------------------------
# writing


def corpus_bytes(names: list[str] | None = None) -> dict[str, bytes]:
    """Return ``{name: file bytes}`` for ``names`` (default: every case)."""
    return {name: CASES[name]() for name in (names or list(CASES))}


def write_corpus(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write each case as ``<folder>/<name>.dcm``; return ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in corpus_bytes(names).items():
        path = folder / f"{name}.dcm"
        path.write_bytes(data)
        paths[name] = path
    return paths


def canonical(value: Any) -> Any:
    """JSON values compared by type: 1 != 1.0, -0.0 != 0.0, NaN == NaN (by bits)."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return ("float", "nan")
        return ("float", struct.pack("<d", value).hex())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return ("int", value)
    raise TypeError(f"not a JSON value: {value!r}")


# ---------------------------------------------------------------------------------------
# sequences sent as UN, and implicit VR items inside explicit VR data sets (PS3.5 6.2.2)


def _implicit_encoded_items(items: list[Dataset], *, undefined: bool) -> bytes:
    """Sequence items encoded implicit VR little endian, as a UN value carries them."""
    bodies = [_dataset_body(item, implicit=True, little=True) for item in items]
    return _implicit_items(*bodies, undefined=undefined)


def _explicit_with(ds: Dataset, raw: dict[int, bytes]) -> bytes:
    """``ds`` explicit VR little endian, with whole raw elements placed by tag."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    tags = sorted(set(ds.keys()) | set(raw))
    for tag in tags:
        if tag in raw:
            fp.write(raw[tag])
        else:
            write_data_element(fp, ds[tag], ["iso8859"])
    return _with_meta(ds, fp.getvalue())


def _un_element(tag: int, value: bytes | None, items: bytes) -> bytes:
    """An explicit VR UN element holding ``items``; undefined length when value is None."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UN\x00\x00"
    if value is None:
        return head + struct.pack("<L", 0xFFFFFFFF) + items + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return head + struct.pack("<L", len(items)) + items


def _code_item(value: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = f"Meaning of {value}"
    item.ReferencedImageSequence = Sequence([_sequence_item(value)])
    return item


@case("un-sequence-undefined-length")
def _un_sequence_undefined() -> bytes:
    """A sequence (Procedure Code Sequence) sent as UN of undefined length."""
    ds = _dataset("un-sequence-undefined-length")
    items = _implicit_encoded_items([_code_item("A1"), _code_item("B2")], undefined=True)
    return _explicit_with(ds, {0x00081032: _un_element(0x00081032, None, items)})


@case("un-sequence-defined-length")
def _un_sequence_defined() -> bytes:
    """A sequence (Derivation Code Sequence) sent as UN of defined length."""
    ds = _dataset("un-sequence-defined-length")
    items = _implicit_encoded_items([_code_item("C3")], undefined=False)
    return _explicit_with(ds, {0x00089215: _un_element(0x00089215, b"", items)})


@case("sq-with-implicit-item")
def _sq_implicit_item() -> bytes:
    """An explicit VR sequence whose item is encoded implicit VR (pydicom switches)."""
    ds = _dataset("sq-with-implicit-item")
    items = _implicit_encoded_items([_code_item("D4")], undefined=True)
    head = struct.pack("<HH", 0x0008, 0x1032) + b"SQ\x00\x00" + struct.pack("<L", 0xFFFFFFFF)
    tail = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return _explicit_with(ds, {0x00081032: head + items + tail})
