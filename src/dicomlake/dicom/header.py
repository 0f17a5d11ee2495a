"""Read one file's DICOM header (file meta included, pixel data not read).

This is the one function the kernels call to parse a header; a faster parser can
replace it as long as it returns the same :class:`Header`.

A file built to hurt (a header of millions of elements, sequences nested thousands
deep, a deflated data set that inflates to gigabytes) is refused with
:class:`~dicomlake.errors.HeaderTooLarge` once it passes one of the limits below, so
memory and time stay bounded whatever the file. They are read on every call: set them
on this module to change them in this process (ingest's worker processes are spawned,
and start from these defaults).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import IO, Any

from dicomlake.errors import HeaderTooLarge

JsonDict = dict[str, Any]

#: Most data elements and sequence items (nested ones included) in one header, on both
#: parsers. pydicom builds up to 1 KB of objects for each and reads 20,000 to 200,000 a
#: second, so this keeps its memory under about 0.5 GB and its time under about 30 s
#: per file. The largest real headers, enhanced multi-frame MR or CT whose per-frame
#: functional groups take some 50 elements and items a frame, reach a few hundred
#: thousand at 5,000 frames. (The native parser, which builds no object per element,
#: counts them in its JSON so that both parsers refuse the same files.)
MAX_HEADER_ELEMENTS = 500_000
#: Longest DICOM JSON of one header (the ``meta`` column), in characters, on both
#: parsers. A row's ``meta`` travels whole through Arrow batches and Parquet pages, and
#: 64 Mi is some ten times the largest real headers; pydicom may also read at most twice
#: this many bytes of values for one header.
MAX_META_CHARS = 64 * 1024 * 1024
#: Deepest nesting of sequences (the native parser's own limit): real files nest a few
#: levels (structured report content trees one or two dozen); far deeper would exhaust
#: Python's recursion limit.
MAX_SEQUENCE_DEPTH = 64
#: Largest inflated size of a deflated data set (Deflated Explicit VR Little Endian),
#: which pydicom inflates whole in memory, pixel data included.
MAX_DEFLATED_BYTES = 256 * 1024 * 1024
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)


@dataclass(slots=True)
class Header:
    """A parsed header: DICOM JSON, whether pixel data is present, and warnings.

    The native parser gives the JSON as text (``meta_json``, with ``meta`` left empty)
    and the promoted tags' elements as a small dict (``promoted``), so no Python object
    is built per element; the pydicom path gives ``meta`` as a dict and ``meta_json``
    (written to check its length against :data:`MAX_META_CHARS`).
    """

    meta: JsonDict
    has_pixel_data: bool
    warnings: list[str] = field(default_factory=list)
    meta_json: str | None = None
    promoted: JsonDict | None = None

    def tags(self) -> JsonDict:
        """The elements to read promoted tags from (a subset for the native parser)."""
        return self.promoted if self.promoted is not None else self.meta


def sniff(head: bytes) -> bool:
    """Return True when ``head`` (the first 132+ bytes) looks like DICOM.

    Accepts the standard 128-byte preamble + ``DICM``, and datasets written without
    them (the first element a group 0002 or 0008 tag with a plausible VR or length).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    if head[4:6] in _EXPLICIT_VRS:  # explicit VR, little or big endian
        return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
    group, _elem, length = struct.unpack_from("<HHL", head)
    return group in (0x0002, 0x0008) and length < 1 << 16  # implicit VR, short first value


def read_header(fp: IO[bytes], *, uri: str, bulk_threshold: int = 1024) -> Header:
    """Parse the header of the DICOM file open in ``fp``, through pydicom.

    pydicom is imported on the first call (:mod:`dicomlake.dicom.pydicom_header`), so
    the native parser's path never pays for it.

    Args:
        fp: A seekable binary file positioned at its start.
        uri: The file's URI, used in BulkDataURIs.
        bulk_threshold: Binary values longer than this many bytes become bulk data.

    Returns:
        The header as DICOM JSON (file meta group first), ``has_pixel_data``, and
        warnings about elements that could not be converted.

    Raises:
        NotDicom: The file is not DICOM.
        NestedArchive: ``uri`` names a zip member that is itself a zip archive.
        HeaderTooLarge: The header passes one of this module's limits
            (:data:`MAX_HEADER_ELEMENTS`, :data:`MAX_META_CHARS`,
            :data:`MAX_SEQUENCE_DEPTH`, :data:`MAX_DEFLATED_BYTES`).
        Exception: Any parsing error of a DICOM file (truncated, broken element).
    """
    from dicomlake.dicom.pydicom_header import read_with_pydicom

    return read_with_pydicom(fp, uri=uri, bulk_threshold=bulk_threshold)


def check_meta(meta_json: str, uri: str, *, count_elements: bool = False) -> None:
    """Refuse a header whose DICOM JSON passes :data:`MAX_META_CHARS`.

    Args:
        meta_json: The header's DICOM JSON.
        uri: The file's URI, for the error.
        count_elements: Also count its data elements and items against
            :data:`MAX_HEADER_ELEMENTS` (see :func:`json_elements`): the native
            parser's check, so that both parsers refuse the same headers (pydicom counts
            them as it reads).

    Raises:
        HeaderTooLarge: It does.
    """
    if len(meta_json) > MAX_META_CHARS:
        raise HeaderTooLarge(
            f"the header's DICOM JSON is {len(meta_json):,} characters, more than "
            f"{MAX_META_CHARS:,} (MAX_META_CHARS in dicomlake.dicom.header)",
            path=uri,
        )
    # every element and item is a JSON object of at least two characters, so a text of
    # at most twice the limit cannot pass it: typical headers are never counted
    if (
        count_elements
        and len(meta_json) > 2 * MAX_HEADER_ELEMENTS
        and json_elements(meta_json) > MAX_HEADER_ELEMENTS
    ):
        raise HeaderTooLarge(
            f"the header has more than {MAX_HEADER_ELEMENTS:,} data elements and items "
            "(MAX_HEADER_ELEMENTS in dicomlake.dicom.header)",
            path=uri,
        )


def json_elements(meta_json: str) -> int:
    """Count the data elements and sequence items of a header's DICOM JSON text.

    Each element's value and each item is a JSON object; so are person names, whose
    objects start with "Alphabetic". A quote inside a JSON string is escaped, so an
    object that starts with a key (``{"``) is never inside a string; only an empty
    object (``{}``, an empty item) can also be text. Counted with ``str.count``: no
    object is built, and 60 MB of JSON take some 50 ms.

    Example:
        >>> json_elements('{"00400275":{"vr":"SQ","Value":[{},{"00400009":{"vr":"SH"}}]}}')
        4
    """
    objects = meta_json.count('{"') + meta_json.count("{}")
    return objects - meta_json.count('{"Alphabetic"') - 1  # the header's own object
