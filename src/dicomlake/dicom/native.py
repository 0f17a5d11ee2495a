"""The native header parser: DICOM JSON from a file's bytes, in C, at native speed.

``dicomlake.dicom._native`` is compiled at ``pip install`` when a C compiler is there (see
``setup.py``); without it :func:`available` is False and :func:`parse_file` declines
every file with ``"unavailable"``, so callers always fall back to
:func:`dicomlake.dicom.header.read_header`. Its output equals ``read_header``'s (and
pydicom's ``to_json_dict``) for every file it accepts; what it does not reproduce
exactly it declines with a short reason code:

- ``no_preamble``: no 128-byte preamble and ``DICM`` prefix;
- ``no_tsyntax``, ``big_endian``, ``deflated``: transfer syntaxes left to pydicom;
- ``charset``, ``charset_order``, ``utf8``: character sets beyond default/Latin-1/UTF-8,
  ISO 2022 escapes, a charset that changes text already read, invalid UTF-8;
- ``un``, ``at``, ``ambiguous_vr``, ``private_implicit``, ``unknown_tag``, ``vr``:
  value representations pydicom decides with its dictionaries, or unknown ones;
- ``value_repair``, ``nan``: values pydicom repairs or cannot write as JSON (DS/IS
  outside its patterns, odd-length numbers, NaN and infinities);
- ``undefined_length``, ``order``, ``vr_switch``, ``command_set``, ``no_dataset``,
  ``too_deep``, ``truncated``, ``malformed``, ``empty``: anything structurally odd;
- ``prefix``: given only the first bytes of a file (``file_size``), the header runs
  past them; :func:`parse_stream` reads more and tries again, and declines with it
  only past its limit.

A header whose JSON is longer than :data:`~dicomlake.dicom.header.MAX_META_CHARS`, or
that holds more data elements and items than
:data:`~dicomlake.dicom.header.MAX_HEADER_ELEMENTS` (counted in the JSON text, see
:func:`~dicomlake.dicom.header.json_elements`), is not declined but refused
(:class:`~dicomlake.errors.HeaderTooLarge`), as ``read_header`` refuses it: pydicom
would only spend far longer to reach the same verdict. The parser holds nothing per
element but the JSON text, so its memory until the check is that text: a small multiple
of the header's size in the file.

Example:
    >>> from dicomlake.dicom import native
    >>> from dicomlake.sample import sample_file
    >>> path = sample_file("CT_small.dcm")
    >>> header = native.parse_file(path, uri=path.as_uri()) if native.available() else None
    >>> header is None or header.meta["00080060"] == {"vr": "CS", "Value": ["CT"]}
    True
"""

from __future__ import annotations

import mmap
import os
from types import ModuleType
from typing import IO

import orjson

from dicomlake.dicom import header as _header
from dicomlake.dicom.header import Header

_ext: ModuleType | None
try:
    from dicomlake.dicom import _native as _ext
except ImportError:  # built without a C compiler: the pydicom path only
    _ext = None
if not hasattr(_ext, "parse"):  # a stray namespace package, not the extension
    _ext = None

if _ext is not None:
    from dicomlake.dicom.acquisition import TOP_LEVEL_KEYS
    from dicomlake.dicom.keywords import tag_for_keyword
    from dicomlake.schema import PROMOTED_TAGS

    # the elements the row is typed from: promoted tags and the acquisition table's
    _ext.set_promoted(
        {tag for k in PROMOTED_TAGS if (tag := tag_for_keyword(k)) is not None}
        | {int(key, 16) for key in TOP_LEVEL_KEYS}
    )


#: How much slower headers are without the native parser, for the ingest warning
#: (bench/ingest.py, parse only, on this project's 2-core test machine).
SPEEDUP = "about 30 times"

#: Files up to this size are read whole; larger ones are memory-mapped, so the bytes of
#: values that become BulkDataURIs (pixel data) are never touched.
_READ_LIMIT = 64 * 1024
#: :func:`parse_stream` reads this much of a file first: the whole header of nearly
#: every file, and its pixel data's start.
PREFIX_BYTES = 64 * 1024
#: ... and at most this much in all, growing eight times a step, before it leaves the
#: file to pydicom (a header this long, or encapsulated pixel data of many fragments).
PREFIX_LIMIT = 32 * 1024 * 1024


def available() -> bool:
    """Return True when the native extension was built and imports."""
    return _ext is not None


def parse_file(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | mmap.mmap,
    *,
    uri: str,
    bulk_threshold: int = 1024,
    decode_meta: bool = True,
    file_size: int | None = None,
) -> Header | str:
    """Parse a DICOM file's header natively, or say why the pydicom path must.

    Args:
        source: A local path (memory-mapped when larger than 64 KiB, so bulk values
            are not read) or the whole file's bytes (or an mmap of it).
        uri: The file's URI, used in BulkDataURIs.
        bulk_threshold: Binary values longer than this many bytes become bulk data.
        decode_meta: Also decode the JSON into ``Header.meta``; with False, ``meta``
            stays empty and only ``meta_json`` and ``promoted`` are set (no Python
            object per element).
        file_size: With bytes, the size of the file they are the first bytes of (a
            zip member's or an object's prefix), when larger than they are: values
            past them that become BulkDataURIs need not be held, and a header that
            runs past them is declined with ``"prefix"``. None: they are the file.

    Returns:
        A :class:`Header` equal to ``read_header``'s (with ``meta_json``, the JSON
        text, and ``promoted``, the promoted tags' elements, set as well), or the
        reason code (a str) when it declines.

    Raises:
        OSError: ``source`` is a path that cannot be opened or mapped.
        HeaderTooLarge: The header passes
            :data:`~dicomlake.dicom.header.MAX_META_CHARS` or
            :data:`~dicomlake.dicom.header.MAX_HEADER_ELEMENTS`.
        ValueError: ``file_size`` is smaller than the bytes given.
    """
    if _ext is None:
        return "unavailable"
    if isinstance(source, str | os.PathLike):
        if file_size is not None:
            raise ValueError("file_size goes with bytes, not with a path")
        fd = os.open(source, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return "empty"  # an empty file cannot be mapped
            if size <= _READ_LIMIT:  # one read is cheaper than mapping a small file
                return _parse(os.read(fd, size), uri, bulk_threshold, decode_meta)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                return _parse(mapped, uri, bulk_threshold, decode_meta)
        finally:
            os.close(fd)
    return _parse(source, uri, bulk_threshold, decode_meta, file_size)


def parse_stream(
    fp: IO[bytes],
    size: int,
    *,
    uri: str,
    bulk_threshold: int = 1024,
    decode_meta: bool = True,
    held: bytearray | None = None,
) -> Header | str:
    """Parse the header of a file open in ``fp`` from its first bytes, natively.

    For a zip member or an object, where every byte read costs (inflating it, fetching
    it): reads :data:`PREFIX_BYTES` first, then more, eight times as much a step, only
    while the header runs past what was read, up to :data:`PREFIX_LIMIT`. Pixel data
    past the prefix becomes a BulkDataURI without being read, as from a local file.

    Args:
        fp: The file, at its start; read forward only, never sought.
        size: The file's size in bytes (a zip member's declared size).
        uri: The file's URI, used in BulkDataURIs.
        bulk_threshold: Binary values longer than this many bytes become bulk data.
        decode_meta: As for :func:`parse_file`.
        held: Where to keep the bytes read (the whole file, when it was read whole,
            for the pydicom path to read after a decline); a new buffer if None.

    Returns:
        The :class:`Header`, as :func:`parse_file` gives it for the whole file, or
        the reason code when it declines: its own, ``"prefix"`` past the limit, or
        ``"short_read"`` when ``fp`` ends before ``size`` bytes.

    Raises:
        HeaderTooLarge: As for :func:`parse_file`.
        Exception: Whatever ``fp.read`` raises (a storage or zip error).
    """
    if _ext is None:
        return "unavailable"
    if size <= 0:
        return "empty"
    data = bytearray() if held is None else held
    want = min(size, PREFIX_BYTES)
    while True:
        while len(data) < want:
            chunk = fp.read(want - len(data))
            if not chunk:
                return "short_read"  # the file is shorter than it said
            data += chunk
        result = _parse(data, uri, bulk_threshold, decode_meta, size)
        if result != "prefix" or want >= min(size, PREFIX_LIMIT):
            return result
        want = min(size, want * 8, PREFIX_LIMIT)


def _parse(
    buffer: object, uri: str, bulk_threshold: int, decode_meta: bool, file_size: int | None = None
) -> Header | str:
    assert _ext is not None
    try:
        meta_json, has_pixels, warnings, promoted = _ext.parse(
            buffer, uri, bulk_threshold, -1 if file_size is None else file_size
        )
    except _ext.Declined as exc:
        return str(exc.args[0])
    _header.check_meta(meta_json, uri, count_elements=True)
    return Header(
        meta=orjson.loads(meta_json) if decode_meta else {},
        has_pixel_data=has_pixels,
        warnings=warnings,
        meta_json=meta_json,
        promoted=promoted,
    )
