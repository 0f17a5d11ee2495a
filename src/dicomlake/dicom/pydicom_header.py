"""A header through pydicom: the reader for every file the native parser declines.

Imported by :func:`dicomlake.dicom.header.read_header` on its first call, so a process
that only meets files the native parser reads never imports pydicom (a third of a
second). The limits it enforces are read from :mod:`dicomlake.dicom.header` on every
call.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from typing import IO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from dicomlake.dicom import header as limits
from dicomlake.dicom.header import Header, check_meta, sniff
from dicomlake.dicom.json import (
    BINARY_VRS,
    LONG_LENGTH_VRS,
    BudgetedReader,
    HeaderBudget,
    JsonConverter,
    bulk_data_uri,
    to_text,
)
from dicomlake.dicom.quiet import quiet
from dicomlake.errors import (
    ExtractError,
    NestedArchive,
    NotDicom,
    TruncatedFile,
    exception_chain,
)

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data
PIXEL_TAGS = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
_TSYNTAX = b"\x02\x00\x10\x00"  # (0002,0010) Transfer Syntax UID, as the file meta writes it
_BIG_ENDIAN = b"1.2.840.10008.1.2.2"  # Explicit VR Big Endian
#: What pydicom raises when it runs out of bytes (a long length, an item's header).
_RAN_OUT = (OSError, EOFError, struct.error)
#: The first bytes of a zip archive: a local file header, or the end of an empty one.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class _Truncated(Exception):
    """Encapsulated pixel data ends before its delimiter; args[0] is the length read."""


@quiet
def read_with_pydicom(fp: IO[bytes], *, uri: str, bulk_threshold: int = 1024) -> Header:
    """:func:`dicomlake.dicom.header.read_header`'s work: its arguments, result and errors."""
    head = fp.read(132)
    if not sniff(head):
        if head.startswith(_ZIP_MAGIC):
            raise _zip_archive(uri)
        raise NotDicom("no DICM prefix and no DICOM dataset at the start")
    fp.seek(0)
    budget = _budget(uri, bulk_threshold)
    with _limits_surfaced(budget):
        header = _read_header(fp, uri, bulk_threshold, budget)
        header.meta_json = to_text(header.meta)
        check_meta(header.meta_json, uri)
    return header


def _zip_archive(uri: str) -> Exception:
    """The error of a file that is a zip archive, not DICOM.

    A zip inside a zip is one error row, never opened: opening archives in archives
    would multiply what one small file can make the reader inflate (a zip of zips of
    zips), and their members would need two chained ``zip://`` levels in their paths.
    Unzipping the outer archive gives each inner one its own members and rows.
    """
    if uri.startswith("zip://"):
        return NestedArchive(
            "a zip inside a zip is not opened; unzip the outer archive first", path=uri
        )
    return NotDicom("a zip archive, but its name does not end in .zip: rename it to read it")


def _budget(uri: str, bulk_threshold: int, *, values: bool = True) -> HeaderBudget:
    """This module's limits as they are now, for one header (``values``: bound bytes read)."""
    return HeaderBudget(
        uri=uri,
        max_elements=limits.MAX_HEADER_ELEMENTS,
        max_value_bytes=max(2 * limits.MAX_META_CHARS, 4 * bulk_threshold) if values else None,
        max_depth=limits.MAX_SEQUENCE_DEPTH,
        max_inflated=limits.MAX_DEFLATED_BYTES,
    )


@contextlib.contextmanager
def _limits_surfaced(budget: HeaderBudget) -> Iterator[None]:
    """Let a passed limit be the error, even where pydicom wrapped it in another.

    pydicom turns any error while it reads an item's header into ``OSError: No tag to
    read``, and a file nested deeper than Python's recursion limit raises
    RecursionError in the middle of pydicom: the error row names the limit instead.
    """
    try:
        yield
    except ExtractError:
        raise
    except Exception as exc:
        cause = _limit_cause(exc, budget)
        if cause is None:
            raise
        raise cause from None


def _limit_cause(exc: BaseException, budget: HeaderBudget) -> ExtractError | None:
    """The limit error among ``exc`` and its causes, if any (RecursionError included)."""
    for cause in exception_chain(exc):
        if isinstance(cause, ExtractError):
            return cause
        if isinstance(cause, RecursionError):
            return budget.too_deep()
    return None


def _read_header(fp: IO[bytes], uri: str, bulk_threshold: int, budget: HeaderBudget) -> Header:
    reader = _EndWatch(fp, budget, defer_size=bulk_threshold)
    try:
        ds = pydicom.dcmread(
            reader,
            stop_before_pixels=True,
            defer_size=bulk_threshold,
            force=True,
        )
    except InvalidDicomError as exc:
        raise NotDicom(str(exc)) from exc
    except Exception as exc:
        # a cut inside a long length, a sequence or an item: pydicom raises struct.error
        # or "No tag to read"; the row names the cut (a passed limit stays the error)
        cut = None if _limit_cause(exc, budget) else _cut_short(reader, fp, uri, exc)
        if cut is None:
            raise
        raise cut from exc
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    deflated = tsyntax in _DEFLATED
    # a deflated data set's offsets count inflated bytes: it may well be longer than
    # the file, and zlib itself says when the stream is cut short
    _check_complete(ds, fp, file_meta_only=deflated, cut=_cut_short(reader, fp, uri))
    deflated_pixels: str | None = None
    if deflated:  # offsets point into the inflated stream: inline every value
        fp.seek(0)
        # inflated once more, pixel data included: the elements are counted again, and
        # the values' bytes are bounded by limits.MAX_DEFLATED_BYTES
        whole = _budget(uri, bulk_threshold, values=False)
        ds = pydicom.dcmread(BudgetedReader(fp, whole), force=True)
        deflated_pixels = next((_vr_of(ds, t) for t in PIXEL_TAGS if t in ds), None)
        for tag in PIXEL_TAGS:
            ds._dict.pop(BaseTag(tag), None)  # stands in the meta as a whole-file BulkDataURI
        pixel_start = None
    else:
        pixel_start = fp.tell()

    def bulk(offset: int, length: int) -> str:
        return bulk_data_uri(uri, offset, length)

    converter = JsonConverter(
        fp, bulk_handler=None if deflated else bulk, bulk_threshold=bulk_threshold, budget=budget
    )
    meta = converter.dataset(ds.file_meta) if ds.file_meta else {}
    if not meta and not ds._dict:
        raise ValueError("no data elements could be read")
    meta.update(converter.dataset(ds))
    has_pixels = False
    if deflated_pixels is not None:
        # the value lies inside the deflated stream: the URI names the whole file
        has_pixels = True
        meta["7FE00010"] = {"vr": deflated_pixels, "BulkDataURI": uri}
    if pixel_start is not None:
        implicit, little = ds.original_encoding
        little_endian = little is not False  # known once a data set was read
        pixel = _pixel_element(fp, pixel_start, bool(implicit), little_endian)
        if pixel is not None:
            tag, vr, offset, length, truncated = pixel
            has_pixels = True
            if truncated:
                converter.warnings.append("pixel data truncated: the file ends inside it")
            meta[f"{tag:08X}"] = converter.element(
                pydicom.dataelem.RawDataElement(
                    pydicom.tag.Tag(tag), vr, length, None, offset, bool(implicit), little_endian
                ),
                None,
            )
    return Header(meta=meta, has_pixel_data=has_pixels, warnings=converter.warnings)


def _check_complete(
    ds: pydicom.Dataset,
    fp: IO[bytes],
    *,
    file_meta_only: bool = False,
    cut: TruncatedFile | None = None,
) -> None:
    """Raise TruncatedFile when the header ends early or has no data set.

    pydicom stops quietly at the end of the file, so a header cut short would
    otherwise look like a complete, smaller one. With ``file_meta_only`` (a deflated
    file) only the file meta group's offsets are file offsets. ``cut`` is the error of
    a file that ends inside an element's header (see :func:`_cut_short`), raised when
    no value is cut short.
    """
    position = fp.tell()
    size = fp.seek(0, 2)
    fp.seek(position)
    for dataset in (ds.file_meta,) if file_meta_only else (ds.file_meta, ds):
        for elem in dataset._dict.values():
            if not isinstance(elem, pydicom.dataelem.RawDataElement):
                continue
            if elem.length == 0xFFFFFFFF:
                continue
            short = elem.value is not None and len(elem.value) < elem.length
            if short or elem.value_tell + elem.length > size:
                raise TruncatedFile(
                    f"file ends inside element ({elem.tag >> 16:04X},{elem.tag & 0xFFFF:04X}): "
                    f"{size} bytes, the element needs {elem.value_tell + elem.length}"
                )
    if cut is not None:
        raise cut
    if not ds._dict:
        raise TruncatedFile(f"no data set after the file meta information ({size} bytes)")


class _EndWatch(BudgetedReader):
    """A :class:`BudgetedReader` that notes where pydicom read past the end of the file.

    pydicom reads an element's or item's header with one 8-byte read and stops without
    a word when it comes back short, so a file cut inside a tag, VR or length reads as
    a complete, smaller header; a cut inside a long length or a sequence raises an error
    that names no cut (``struct.error``, ``No tag to read``). This keeps the first read
    that came back short since pydicom last stepped back before its end (pydicom peeks
    and rewinds), the last element or item header read, and where the transfer syntax's
    header is (to name that tag in a big endian data set). A value's read is told from
    a header's as :class:`BudgetedReader` tells them: by where the last header's value
    starts. Nothing but a comparison is added to a read that is not short.
    """

    __slots__ = ("cut", "last_header", "tsyntax_header")

    def __init__(self, fp: IO[bytes], budget: HeaderBudget, defer_size: int | None = None) -> None:
        super().__init__(fp, budget, defer_size)
        #: (where it started, bytes asked, bytes read, whether it read a value) of the
        #: first read that came back short
        self.cut: tuple[int, int, int, bool] | None = None
        #: (where it starts, its 8 bytes) of the last element or item header read, and
        #: of the transfer syntax's
        self.last_header: tuple[int, bytes] | None = None
        self.tsyntax_header: tuple[int, bytes] | None = None

    def read(self, size: int | None = -1) -> bytes:
        """Read like :class:`BudgetedReader`; note a read that comes back short."""
        data = BudgetedReader.read(self, size)
        if size is not None and len(data) < size and self.cut is None:
            # a short read leaves where the last header's value starts as it was
            start = self._pos - len(data)
            self.cut = (start, size, len(data), start == self._value_at and not self._long)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek like :class:`BudgetedReader`; stepping back before a short read's end forgets it."""
        position = BudgetedReader.seek(self, offset, whence)
        if self.cut is not None and position < self.cut[0] + self.cut[2]:
            self.cut = None
        return position

    def _header(self, data: bytes, start: int) -> int:
        self.last_header = (start, data)
        if data[:4] == _TSYNTAX:
            self.tsyntax_header = self.last_header
        return BudgetedReader._header(self, data, start)


def _cut_short(
    reader: _EndWatch, fp: IO[bytes], uri: str, exc: BaseException | None = None
) -> TruncatedFile | None:
    """The error of a file whose end pydicom read into, if it did (None: it did not).

    A read that came back with some bytes but fewer than asked is a cut (at the top
    level, pydicom stopped quietly there), and so is a value's read that found the end.
    A header's read that found the end exactly is one only with ``exc``, an error from
    running out of bytes (a sequence or item without its end): at the top level, the
    end between two elements is a shorter, whole file. Without ``exc``, pydicom ending
    past the end of the file (it skips what a length names) is one too. ``exc`` may
    also be zlib's error for a deflated data set cut short. The message names the tag
    of the header last read, never a value.
    """
    position = fp.tell()
    size = fp.seek(0, 2)
    try:
        if isinstance(exc, zlib.error) and "truncated" in str(exc):  # Error -5, Z_BUF_ERROR
            return TruncatedFile(f"file ends inside its deflated data set: {size} bytes", path=uri)
        cut = reader.cut
        if cut is not None and (cut[2] or cut[3] or isinstance(exc, _RAN_OUT)):
            start, asked, got, value = cut
        elif exc is None and reader.tell() > size:
            start, asked, got, value = reader.tell(), 0, 0, True
        else:
            return None
        if reader.last_header is None:
            return TruncatedFile(
                f"file ends inside the header of the first element: {size} bytes", path=uri
            )
        at, header = reader.last_header
        big = header[:2] != b"\x02\x00" and _transfer_syntax(reader, fp) == _BIG_ENDIAN
        group, elem = struct.unpack(">HH" if big else "<HH", header[:4])
        tag = f"({group:04X},{elem:04X})"
        if value:
            what = f"the value of element {tag}"
        elif asked == 8 and got:
            what = f"the header of an element after {tag}"
        elif asked == 8:
            what = f"a sequence, after {tag}"
        elif asked == 4 and start == at + 8 and header[4:6] in LONG_LENGTH_VRS:
            what = f"the header of element {tag}"  # its 4-byte length
        else:
            what = f"element {tag}"
        return TruncatedFile(f"file ends inside {what}: {size} bytes", path=uri)
    finally:
        fp.seek(position)


def _transfer_syntax(reader: _EndWatch, fp: IO[bytes]) -> bytes:
    """The transfer syntax UID the file meta gave pydicom (b"" when it gave none)."""
    if reader.tsyntax_header is None:
        return b""
    at, header = reader.tsyntax_header
    fp.seek(at + 8)
    return fp.read(min(struct.unpack_from("<H", header, 6)[0], 64)).rstrip(b"\0 ")


def _vr_of(ds: pydicom.Dataset, tag: int) -> str:
    """The VR the file gives a pixel data element (its standard VR when none or odd)."""
    vr = ds._dict[BaseTag(tag)].VR
    return vr if vr in BINARY_VRS else PIXEL_TAGS[tag]


def _pixel_element(
    fp: IO[bytes], start: int, implicit: bool, little: bool
) -> tuple[int, str, int, int, bool] | None:
    """Locate the pixel data element: (tag, VR, value offset, length, truncated).

    Encapsulated (undefined length) values are walked item by item, reading only
    the 8-byte item headers, to find where the value ends.
    """
    fp.seek(start)
    header = fp.read(8)
    if len(header) < 8:
        if header:  # fewer bytes than any element's header (pydicom stopped quietly)
            raise TruncatedFile(
                f"file ends inside the header of an element at byte {start}: "
                f"{start + len(header)} bytes"
            )
        return None
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", header[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        return None
    if implicit or not header[4:6].isalpha():  # some writers switch to implicit VR here
        vr = PIXEL_TAGS[tag]
        (length,) = struct.unpack(end + "L", header[4:8])
        offset = start + 8
    else:
        vr = header[4:6].decode("latin-1")
        if header[4:6] in LONG_LENGTH_VRS:
            raw = fp.read(4)
            if len(raw) < 4:
                raise TruncatedFile(
                    f"file ends inside the header of element ({group:04X},{elem:04X}): "
                    f"{start + 8 + len(raw)} bytes"
                )
            (length,) = struct.unpack(end + "L", raw)
            offset = start + 12
        else:
            (length,) = struct.unpack(end + "H", header[6:8])
            offset = start + 8
        if vr not in BINARY_VRS:
            vr = PIXEL_TAGS[tag]
    truncated = False
    if length == 0xFFFFFFFF:
        try:
            length = _encapsulated_length(fp, offset, end)
        except _Truncated as exc:
            length, truncated = exc.args[0], True
    else:
        available = fp.seek(0, 2) - offset
        if available < length:
            length, truncated = max(available, 0), True
    return tag, vr, offset, length, truncated


def _encapsulated_length(fp: IO[bytes], offset: int, end: str) -> int:
    """Return the byte length of an encapsulated value, up to its delimiter.

    Raises:
        _Truncated: The file ends first (inside an item header or an item's value);
            ``args[0]`` is the length up to the end of the file.
    """
    size = fp.seek(0, 2)
    position = offset
    item = struct.Struct(end + "HHL")
    while True:
        if position > size:  # the last fragment's value runs past the end of the file
            raise _Truncated(size - offset)
        fp.seek(position)
        raw = fp.read(8)
        if len(raw) < 8:
            raise _Truncated(position - offset)
        group, elem, length = item.unpack(raw)
        tag = group << 16 | elem
        if tag == _SEQ_DELIM:
            return position - offset
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise ValueError(f"unexpected tag ({group:04X},{elem:04X}) in encapsulated pixel data")
        position += 8 + length
