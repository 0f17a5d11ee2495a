"""DICOM JSON (PS3.18 Annex F) straight from pydicom's raw elements.

pydicom's ``Dataset.to_json_dict`` spends most of a header's time building a
``DataElement`` per element (value objects, validation, ``MultiValue``) only to turn it
back into plain lists. Here the common value representations go from the raw bytes to
JSON values directly, with the same rules pydicom applies (padding, splitting, number
types), so the output is value-equal to pydicom's. Anything unusual (ambiguous VRs,
private tags in implicit VR, UN, character sets beyond Latin-1/UTF-8, values pydicom
would have to repair) goes through pydicom's own conversion for that one element.

Binary values longer than a threshold become a ``BulkDataURI`` that names the file and
byte range (``<uri>?offset=N&length=M``) instead of being inlined.

A hostile header must cost bounded memory and time, so everything pydicom reads for one
header goes through a :class:`BudgetedReader` that charges a :class:`HeaderBudget`
(elements and items, bytes of values, sequence depth, inflated size of a deflated data
set) and raises :class:`~dicomlake.errors.HeaderTooLarge` once a limit is passed; the
limits themselves are set in :mod:`dicomlake.dicom.header`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import IO, Any

import orjson
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_sequence
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicomlake.errors import ExtractError, HeaderTooLarge

JsonDict = dict[str, Any]

#: Binary VRs whose values are inlined as base64 or referenced as bulk data.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
#: VRs decoded with the default character repertoire whatever the dataset's charset.
_SPLIT_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
_MULTI_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_NUMBER_CODES = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
    "UV": ("Q", 8),
    "SV": ("q", 8),
}
_DS_ITEM = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_IS_ITEM = re.compile(r"\s*[+-]?\d+\s*")

#: pydicom's name for the default repertoire (ISO_IR 6) is 'iso8859', i.e. Latin-1.
_CHARSET_CODECS = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}

BulkHandler = Callable[[int, int], str]

#: Item tags, then delimiter tags, as they lie in a little or a big endian file.
_ITEM_TAGS = frozenset({b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"})
_DELIMITER_TAGS = frozenset(
    {b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\xff\xfe\xe0\x0d", b"\xff\xfe\xe0\xdd"}
)
#: VRs whose explicit-VR header has a 4-byte length (after two reserved bytes), PS3.5 7.1.2.
LONG_LENGTH_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
_EMPTY_LENGTHS = frozenset({b"\0\0\0\0", b"\xff\xff\xff\xff"})
#: Bytes inflated per step while a deflated data set is measured.
_INFLATE_STEP = 1 << 20


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


class HeaderBudget:
    """What reading one header may cost: elements and items, value bytes, depth.

    One budget is charged by every :class:`BudgetedReader` that pydicom reads the
    header through (sequences of defined length included, which are parsed later
    from their value's bytes), so the count spans the whole header. None disables a
    limit. The ``too_*`` methods build the error, naming the limit that was passed.

    Args:
        uri: The file's URI, for the error's ``path``.
        max_elements: Data elements and sequence items that may be read.
        max_value_bytes: Bytes that may be read in all (values and element headers).
        max_depth: Deepest nesting of sequences.
        max_inflated: Largest inflated size of a deflated data set.
    """

    __slots__ = (
        "bytes_left",
        "elements_left",
        "max_depth",
        "max_elements",
        "max_inflated",
        "max_value_bytes",
        "uri",
    )

    def __init__(
        self,
        *,
        uri: str = "",
        max_elements: int | None = None,
        max_value_bytes: int | None = None,
        max_depth: int | None = None,
        max_inflated: int | None = None,
    ) -> None:
        self.uri = uri
        self.max_elements = max_elements
        self.max_value_bytes = max_value_bytes
        self.max_depth = max_depth
        self.max_inflated = max_inflated
        # counted down, so that a reader's check is one subtraction and one comparison
        self.elements_left: float = math.inf if max_elements is None else max_elements
        self.bytes_left: float = math.inf if max_value_bytes is None else max_value_bytes

    def count(self) -> None:
        """Charge one data element or item."""
        self.elements_left -= 1
        if self.elements_left < 0:
            raise self._error(
                f"the header has more than {self.max_elements:,} data elements and items "
                "(MAX_HEADER_ELEMENTS in dicomlake.dicom.header)"
            )

    def spend(self, nbytes: int) -> None:
        """Charge ``nbytes`` read (or about to be read) into memory."""
        self.bytes_left -= nbytes
        if self.bytes_left < 0:
            raise self.too_many_bytes()

    def too_many_bytes(self) -> HeaderTooLarge:
        """The error of a header whose values pass ``max_value_bytes``."""
        return self._error(
            f"the header's values pass {_mib(self.max_value_bytes or 0)} "
            "(twice MAX_META_CHARS in dicomlake.dicom.header)"
        )

    def enter(self, depth: int) -> None:
        """Check the depth of a data set: 0 at the top, 1 in a top-level sequence."""
        if self.max_depth is not None and depth > self.max_depth:
            raise self.too_deep()

    def too_deep(self) -> HeaderTooLarge:
        """The error of a header nested past ``max_depth`` (or Python's stack)."""
        limit = f"more than {self.max_depth} deep" if self.max_depth is not None else "too deep"
        return self._error(
            f"sequences nested {limit} (MAX_SEQUENCE_DEPTH in dicomlake.dicom.header)"
        )

    def check_inflated(self, deflated: bytes) -> bytes | None:
        """Inflate a deflated data set in bounded steps; None when it is not deflate.

        Raises:
            HeaderTooLarge: It inflates past ``max_inflated``.
        """
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        size, pending = 0, deflated
        try:  # measured first, keeping nothing: a refused one never sits in memory
            while pending and not inflater.eof:
                size += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                self._check_inflated_size(size)
            self._check_inflated_size(size + len(inflater.flush()))  # the end of a match
            return zlib.decompress(deflated, -zlib.MAX_WBITS)
        except zlib.error:
            return None  # pydicom says what is wrong with it

    def _check_inflated_size(self, size: int) -> None:
        if self.max_inflated is not None and size > self.max_inflated:
            raise self._error(
                f"the deflated data set inflates past {_mib(self.max_inflated)} "
                "(MAX_DEFLATED_BYTES in dicomlake.dicom.header)"
            )

    def _error(self, message: str) -> HeaderTooLarge:
        return HeaderTooLarge(message, path=self.uri)


class BudgetedReader:
    """A read-only view of a binary file that charges a :class:`HeaderBudget`.

    pydicom reads each element and item header with one 8-byte read (and a long
    length with a 4-byte read right after it), then reads or skips the value. An
    8-byte read is charged as one element or item, unless it is a delimiter, lies where
    the last header's value starts (an 8-byte value), or is a header read again
    (pydicom steps back over the first element of a group it stops at). pydicom reads
    a whole file in one call only to inflate a deflated data set: that read is measured
    in bounded steps, and its elements counted, before pydicom inflates it whole.

    Args:
        fp: The file, positioned where pydicom starts reading.
        budget: What this header may still cost.
        defer_size: pydicom's ``defer_size``, for counting a deflated data set the way
            pydicom reads it.
    """

    __slots__ = ("_budget", "_counted", "_defer_size", "_fp", "_long", "_pos", "_value_at")

    def __init__(self, fp: IO[bytes], budget: HeaderBudget, defer_size: int | None = None) -> None:
        self._fp = fp
        self._budget = budget
        self._defer_size = defer_size
        self._pos = fp.tell()
        self._value_at = -1  # where the value of the last header read starts
        self._long = False  # that header's 4-byte length is still to be read
        self._counted = -1  # where the last header charged starts

    def read(self, size: int | None = -1) -> bytes:
        """Read like the file; charge the bytes, and the header if it is one."""
        if size is None or size < 0:
            return self._read_rest()
        data = self._fp.read(size)
        start = self._pos
        self._pos = start + len(data)
        budget = self._budget
        budget.bytes_left -= len(data)  # spend(), inlined: this runs for every read
        if budget.bytes_left < 0:
            raise budget.too_many_bytes()
        if size == 8 and start != self._value_at and len(data) == 8:
            self._value_at = self._header(data, start)
        elif size == 4 and self._long and start == self._value_at:
            self._long = False
            self._value_at = -1 if data in _EMPTY_LENGTHS else start + 4
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek like the file (skipped bytes are not charged: they are not read)."""
        position = self._fp.seek(offset, whence)
        self._pos = self._fp.tell() if position is None else position
        return self._pos

    def tell(self) -> int:
        """The position, kept here: one call less on the file per read."""
        return self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)  # name, closed, ... as the file has them

    def _header(self, data: bytes, start: int) -> int:
        """Charge an element or item header; return where its value starts (-1: none)."""
        self._long = False
        tag = data[:4]
        if tag in _DELIMITER_TAGS:
            return -1
        if start > self._counted:  # not a header read again after a rewind
            self._counted = start
            budget = self._budget
            budget.elements_left -= 1  # count(), inlined
            if budget.elements_left < 0:
                budget.count()  # raises, with the message
        if tag in _ITEM_TAGS:
            return -1
        vr0, vr1 = data[4], data[5]
        if 0x40 < vr0 < 0x5B and 0x40 < vr1 < 0x5B:  # explicit VR, as pydicom tells it
            if data[4:6] in LONG_LENGTH_VRS:
                self._long = True
                return start + 8
            return -1 if data[6:8] == b"\0\0" else start + 8
        return -1 if data[4:8] in _EMPTY_LENGTHS else start + 8

    def _read_rest(self) -> bytes:
        data = self._fp.read()
        self._pos += len(data)
        inflated = self._budget.check_inflated(data)
        if inflated is not None:
            self._count_inflated(inflated)
        return data

    def _count_inflated(self, inflated: bytes) -> None:
        """Count a deflated data set's elements as pydicom will read them (explicit VR LE)."""
        reader = BudgetedReader(io.BytesIO(inflated), self._budget)
        elements = data_element_generator(
            reader,  # type: ignore[arg-type]
            is_implicit_VR=False,
            is_little_endian=True,
            defer_size=self._defer_size,
        )
        try:
            for _ in elements:
                pass
        except (ExtractError, RecursionError):
            raise
        except Exception:  # malformed: pydicom's own read will say how
            return


def to_text(meta: JsonDict) -> str:
    """Return DICOM JSON as compact text.

    orjson, unless a value is an integer beyond 64 bits (an IS of 20 digits) or the
    nesting is beyond orjson's depth, which only the standard library writes.
    """
    try:
        return orjson.dumps(meta).decode("utf-8")
    except TypeError:
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":"))


class _Fallback(Exception):
    """This element needs pydicom's own conversion."""


def bulk_data_uri(uri: str, offset: int, length: int) -> str:
    """Return the BulkDataURI naming ``length`` bytes at ``offset`` of ``uri``."""
    return f"{uri}?offset={offset}&length={length}"


def charset_codec(value: bytes | str | None) -> str | None:
    """Return the Python codec for a (0008,0005) value, or None when not handled here."""
    if value is None:
        return "latin-1"
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _CHARSET_CODECS.get(value.strip(" \x00"))


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str | None:
    """Return the dictionary VR of a public tag, None when pydicom must decide."""
    if (tag >> 16) & 1:  # private group: needs the private creator
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UL" if tag & 0xFFFF == 0 else None
    return None if " or " in vr or vr == "UN" else vr


def _unpack(vr: str, data: bytes, little: bool) -> list[Any]:
    code, size = _NUMBER_CODES[vr]
    count, rest = divmod(len(data), size)
    if rest:
        raise _Fallback
    return list(struct.unpack(f"{'<' if little else '>'}{count}{code}", data))


def _split(text: str) -> list[str]:
    return text.rstrip(" \x00").split("\\")


def _ds_values(data: bytes) -> list[Any] | None:
    text = data.decode("latin-1").strip()
    items = _split(text)
    if len(items) == 1 and not items[0]:
        return None
    values: list[Any] = []
    for item in items:
        if _DS_ITEM.fullmatch(item):
            values.append(float(item))
        elif not item.strip() and len(items) > 1:
            values.append(None)  # PS3.18 F.2.5: an empty value in a list is null
        else:
            raise _Fallback
    return values


def _is_values(data: bytes) -> list[Any] | None:
    items = _split(data.decode("latin-1"))
    if len(items) == 1 and not items[0].strip():
        return None
    values: list[Any] = []
    for item in items:
        if _IS_ITEM.fullmatch(item):
            values.append(int(item))
        elif not item.strip() and len(items) > 1:
            values.append(None)
        else:
            raise _Fallback
    return values


def _pn_values(data: bytes, codec: str) -> list[JsonDict] | None:
    text = data.rstrip(b"\x00 ").decode(codec)
    if not text:
        return None
    values = []
    for name in text.split("\\"):
        groups = name.split("=")
        entry = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            entry["Ideographic"] = groups[1]
        if len(groups) > 2:
            entry["Phonetic"] = groups[2]
        values.append(entry)
    return values


def _string_values(vr: str, data: bytes, codec: str | None) -> list[Any] | None:
    """Convert a non-binary, non-sequence value; None means 'empty'."""
    if vr in _SPLIT_VRS:
        items = _split(data.decode("latin-1"))
    elif vr == "UI":
        items = _split(data.decode("latin-1").rstrip("\x00 "))
    elif vr in _MULTI_TEXT_VRS:
        if codec is None:
            raise _Fallback
        items = [item.rstrip("\x00 ") for item in data.decode(codec).split("\\")]
    elif vr in _SINGLE_TEXT_VRS:
        if codec is None:
            raise _Fallback
        items = [data.decode(codec).rstrip("\x00 ")]
    elif vr == "DS":
        return _ds_values(data)
    elif vr == "IS":
        return _is_values(data)
    elif vr == "PN":
        if codec is None:
            raise _Fallback
        return _pn_values(data, codec)
    elif vr == "AE":
        items = [item.strip() for item in data.decode("latin-1").split("\\")]
    elif vr == "UR":
        items = [data.decode("latin-1").rstrip()]
    else:
        raise _Fallback
    if len(items) == 1 and not items[0]:
        return None
    return items


class JsonConverter:
    """Turn one file's pydicom dataset (raw elements) into DICOM JSON.

    Args:
        fp: The open file the dataset was read from, for values pydicom deferred.
        bulk_handler: Called with (offset, length) for binary values over the
            threshold; None inlines every value (used for deflated files, whose
            offsets do not point into the file).
        bulk_threshold: Binary values longer than this many bytes become bulk data.
        budget: What the header may cost; the sequences of defined length parsed here
            and the deferred values read here are charged to it (no limits if None).
    """

    def __init__(
        self,
        fp: IO[bytes],
        *,
        bulk_handler: BulkHandler | None,
        bulk_threshold: int = 1024,
        budget: HeaderBudget | None = None,
    ) -> None:
        self.fp = fp
        self.bulk_handler = bulk_handler
        self.bulk_threshold = bulk_threshold
        self.budget = budget or HeaderBudget()
        self.warnings: list[str] = []

    def dataset(
        self, ds: Dataset, codec: str | None = "latin-1", base: int = 0, depth: int = 0
    ) -> JsonDict:
        """Return the JSON dict of ``ds``.

        Args:
            ds: The dataset, as pydicom read it (raw elements).
            codec: The character set codec inherited from the parent dataset.
            base: File offset that the dataset's value offsets are relative to:
                pydicom parses a defined-length sequence from its own bytes, so its
                items' offsets start at the sequence value, not the file.
            depth: How many sequences enclose ``ds`` (0 for the top level).

        Raises:
            HeaderTooLarge: The header passes a limit of the budget.
        """
        self.budget.enter(depth)
        out: JsonDict = {}
        elements = ds._dict  # raw elements, unconverted; pydicom's own storage
        charset = elements.get(BaseTag(0x00080005))
        if charset is not None:
            value = charset.value
            codec = charset_codec(value) if isinstance(value, bytes | str | None) else None
        for tag, elem in list(elements.items()):
            key = f"{tag:08X}"
            try:
                if isinstance(elem, RawDataElement) and (
                    elem.VR == "SQ" or (elem.VR is None and _implicit_vr(tag) == "SQ")
                ):
                    out[key] = self._raw_sequence(ds, elem, codec, base, depth)
                    continue
                out[key] = self.element(elem, codec, base, depth)
            except (_Fallback, UnicodeDecodeError, ValueError, struct.error):
                converted = self._pydicom(ds, tag, key, codec, base, depth)
                if converted is not None:
                    out[key] = converted
        return out

    def element(
        self, elem: RawDataElement | DataElement, codec: str | None, base: int = 0, depth: int = 0
    ) -> JsonDict:
        """Return the JSON of one element, raising _Fallback for pydicom's path."""
        if isinstance(elem, DataElement):  # pydicom converted it while reading
            if elem.VR == "SQ" and isinstance(elem.value, Sequence):
                items = [self.dataset(item, codec, base, depth + 1) for item in elem.value]
                return {"vr": "SQ", "Value": items}
            if " or " in elem.VR or elem.VR == "SQ":
                raise _Fallback
            return elem.to_json_dict(self._pydicom_bulk_handler(base), self._pydicom_threshold)
        vr = elem.VR
        if vr == "UN":  # pydicom may replace it with the dictionary VR
            raise _Fallback
        if vr is None:
            vr = _implicit_vr(elem.tag)
            if vr is None:
                raise _Fallback
        value = elem.value
        if vr in BINARY_VRS:
            length = elem.length if value is None else len(value)
            if length > self.bulk_threshold and self.bulk_handler is not None:
                uri = self.bulk_handler(base + elem.value_tell, length)
                return {"vr": vr, "BulkDataURI": uri}
            if value is None:
                value = self._read(base + elem.value_tell, elem.length)
            if not value:
                return {"vr": vr}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        if vr == "SQ":
            raise _Fallback
        if value is None:  # deferred by pydicom: read it now
            value = self._read(base + elem.value_tell, elem.length)
        if not value:
            return {"vr": vr}
        if vr in _NUMBER_CODES:
            numbers = _unpack(vr, value, elem.is_little_endian)
            return {"vr": vr, "Value": numbers} if numbers else {"vr": vr}
        if vr == "AT":
            raise _Fallback
        values = _string_values(vr, value, codec)
        if values is None:
            return {"vr": vr}
        return {"vr": vr, "Value": values}

    def _raw_sequence(
        self, ds: Dataset, elem: RawDataElement, codec: str | None, base: int, depth: int
    ) -> JsonDict:
        """Parse a defined-length sequence from its bytes and convert its items.

        pydicom's ``convert_SQ``, but through a :class:`BudgetedReader`, so that the
        items and elements it reads are charged like those of the top level.
        """
        value = elem.value
        if value is None:
            value = self._read(base + elem.value_tell, elem.length)
        if not value:
            return {"vr": "SQ", "Value": []}
        self.budget.enter(depth + 1)
        charset = ds._character_set
        encodings = [charset] if isinstance(charset, str) else list(charset or [])
        reader = BudgetedReader(io.BytesIO(value), self.budget)
        sequence = read_sequence(
            reader,  # type: ignore[arg-type]
            elem.is_implicit_VR,
            elem.is_little_endian,
            len(value),
            encodings or [default_encoding],
            elem.value_tell,
        )
        item_base = base + elem.value_tell  # items' offsets start at the value
        items = [self.dataset(item, codec, item_base, depth + 1) for item in sequence]
        return {"vr": "SQ", "Value": items}

    @property
    def _pydicom_threshold(self) -> int:
        """The threshold in pydicom terms: it is on base64 length, raw > (t // 4) * 3."""
        return self.bulk_threshold * 4 // 3 + 4

    def _pydicom_bulk_handler(self, base: int) -> Callable[[DataElement], str] | None:
        if self.bulk_handler is None:
            return None
        bulk = self.bulk_handler

        def handler(element: DataElement) -> str:
            return bulk(base + (element.file_tell or 0), len(element.value))

        return handler

    def _read(self, offset: int, length: int) -> bytes:
        self.budget.spend(length)  # before reading: a declared length can be huge
        self.fp.seek(offset)
        data = self.fp.read(length)
        if len(data) != length:
            raise ValueError(f"value at offset {offset} truncated: {len(data)} of {length} bytes")
        return data

    def _pydicom(
        self, ds: Dataset, tag: int, key: str, codec: str | None, base: int, depth: int
    ) -> JsonDict | None:
        """Convert one element with pydicom, recursing into sequences ourselves."""
        raw = ds._dict[BaseTag(tag)]
        item_base = base
        if isinstance(raw, RawDataElement):
            if raw.value is None:
                raw = raw._replace(value=self._read(base + raw.value_tell, raw.length))
                ds._dict[BaseTag(tag)] = raw
            item_base = base + raw.value_tell  # items parsed from the value's bytes
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = [self.dataset(item, codec, item_base, depth + 1) for item in elem.value]
                return {"vr": "SQ", "Value": items}
            return elem.to_json_dict(self._pydicom_bulk_handler(base), self._pydicom_threshold)
        except (ExtractError, RecursionError):
            raise  # a limit passed: the whole header is refused, not this element
        except Exception as exc:  # pydicom could not convert it either: keep the rest
            self.warnings.append(f"({key[:4]},{key[4:]}) not converted: {type(exc).__name__}")
            return None
