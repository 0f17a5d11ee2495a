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
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.values import convert_SQ

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
    """

    def __init__(
        self,
        fp: BinaryIO,
        *,
        bulk_handler: BulkHandler | None,
        bulk_threshold: int = 1024,
    ) -> None:
        self.fp = fp
        self.bulk_handler = bulk_handler
        self.bulk_threshold = bulk_threshold
        self.warnings: list[str] = []

    def dataset(self, ds: Dataset, codec: str | None = "latin-1", base: int = 0) -> JsonDict:
        """Return the JSON dict of ``ds``.

        Args:
            ds: The dataset, as pydicom read it (raw elements).
            codec: The character set codec inherited from the parent dataset.
            base: File offset that the dataset's value offsets are relative to:
                pydicom parses a defined-length sequence from its own bytes, so its
                items' offsets start at the sequence value, not the file.
        """
        out: JsonDict = {}
        elements = ds._dict  # raw elements, unconverted; pydicom's own storage
        charset = elements.get(0x00080005)
        if charset is not None:
            value = charset.value
            codec = charset_codec(value) if isinstance(value, bytes | str | None) else None
        for tag, elem in list(elements.items()):
            key = f"{tag:08X}"
            try:
                if isinstance(elem, RawDataElement) and (
                    elem.VR == "SQ" or (elem.VR is None and _implicit_vr(tag) == "SQ")
                ):
                    out[key] = self._raw_sequence(ds, elem, codec, base)
                    continue
                out[key] = self.element(elem, codec, base)
            except (_Fallback, UnicodeDecodeError, ValueError, struct.error):
                converted = self._pydicom(ds, tag, key, codec, base)
                if converted is not None:
                    out[key] = converted
        return out

    def element(
        self, elem: RawDataElement | DataElement, codec: str | None, base: int = 0
    ) -> JsonDict:
        """Return the JSON of one element, raising _Fallback for pydicom's path."""
        if isinstance(elem, DataElement):  # pydicom converted it while reading
            if elem.VR == "SQ" and isinstance(elem.value, Sequence):
                items = [self.dataset(item, codec, base) for item in elem.value]
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
        self, ds: Dataset, elem: RawDataElement, codec: str | None, base: int
    ) -> JsonDict:
        """Parse a defined-length sequence from its bytes and convert its items."""
        value = elem.value
        if value is None:
            value = self._read(base + elem.value_tell, elem.length)
        if not value:
            return {"vr": "SQ", "Value": []}
        charset = ds._character_set
        encodings = [charset] if isinstance(charset, str) else list(charset or [])
        sequence = convert_SQ(
            value, elem.is_implicit_VR, elem.is_little_endian, encodings, elem.value_tell
        )
        item_base = base + elem.value_tell  # items' offsets start at the value
        return {"vr": "SQ", "Value": [self.dataset(item, codec, item_base) for item in sequence]}

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
        self.fp.seek(offset)
        data = self.fp.read(length)
        if len(data) != length:
            raise ValueError(f"value at offset {offset} truncated: {len(data)} of {length} bytes")
        return data

    def _pydicom(
        self, ds: Dataset, tag: int, key: str, codec: str | None, base: int
    ) -> JsonDict | None:
        """Convert one element with pydicom, recursing into sequences ourselves."""
        raw = ds._dict[tag]
        item_base = base
        if isinstance(raw, RawDataElement):
            if raw.value is None:
                raw = raw._replace(value=self._read(base + raw.value_tell, raw.length))
                ds._dict[tag] = raw
            item_base = base + raw.value_tell  # items parsed from the value's bytes
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = [self.dataset(item, codec, item_base) for item in elem.value]
                return {"vr": "SQ", "Value": items}
            return elem.to_json_dict(self._pydicom_bulk_handler(base), self._pydicom_threshold)
        except Exception as exc:  # pydicom could not convert it either: keep the rest
            self.warnings.append(f"({key[:4]},{key[4:]}) not converted: {type(exc).__name__}")
            return None
