"""Promoted tags: typed column values lifted out of a header's DICOM JSON.

The columns and their Arrow types are fixed by :data:`dicomlake.schema.PROMOTED_TAGS`;
this module turns JSON values into those Python types (dates as ``date``, numbers as
numbers, multi-valued tags as lists). A value that does not fit its type (a date
that is not a date) becomes null with a warning, never an error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from dicomlake.dicom.keywords import tag_for_keyword
from dicomlake.schema import PROMOTED_TAGS

JsonDict = dict[str, Any]
_INT32 = (-(2**31), 2**31 - 1)


def _first(element: JsonDict) -> Any:
    values = element.get("Value")
    return values[0] if values else None


def _as_text(element: JsonDict) -> str | None:
    value = _first(element)
    if value is None:
        return None
    if isinstance(value, dict):  # PN: rebuild the name as DICOM writes it
        groups = ("Alphabetic", "Ideographic", "Phonetic")
        return "=".join(value[k] for k in groups if k in value)
    return str(value)


def parse_da(text: str) -> dt.date:
    """Parse a DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``) into a date.

    Raises:
        ValueError: The text is not a date.
    """
    text = text.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a DA value (YYYYMMDD): {len(text)} characters")
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _as_date(element: JsonDict) -> dt.date | None:
    value = _first(element)
    return parse_da(value) if value else None


def _as_int(element: JsonDict) -> int | None:
    value = _first(element)
    return None if value is None else int(value)


def _as_int32(element: JsonDict) -> int | None:
    value = _as_int(element)
    if value is not None and not _INT32[0] <= value <= _INT32[1]:
        raise ValueError(f"{value} is out of range for a 32-bit column")
    return value


def _as_float(element: JsonDict) -> float | None:
    value = _first(element)
    return None if value is None else float(value)


def _as_floats(element: JsonDict) -> list[float | None] | None:
    values = element.get("Value")
    if not values:
        return None
    return [None if v is None else float(v) for v in values]


def _converter(typ: pa.DataType) -> Callable[[JsonDict], Any]:
    if pa.types.is_date(typ):
        return _as_date
    if pa.types.is_int32(typ):
        return _as_int32
    if pa.types.is_integer(typ):
        return _as_int
    if pa.types.is_floating(typ):
        return _as_float
    if pa.types.is_list(typ):
        return _as_floats
    return _as_text


#: keyword -> ('GGGGEEEE', converter)
_PROMOTED: dict[str, tuple[str, Callable[[JsonDict], Any]]] = {
    keyword: (f"{tag_for_keyword(keyword):08X}", _converter(typ))
    for keyword, typ in PROMOTED_TAGS.items()
}


def _safe_reason(exc: BaseException) -> str:
    """Why a value did not fit its column, without quoting the value (patient data).

    Python's own messages quote it ("invalid literal for int() with base 10: 'DOE'");
    ours (dates, ranges) do not.
    """
    message = str(exc)
    if "'" in message or '"' in message:
        return f"{type(exc).__name__}: the value does not fit the column"
    return message


def promoted_values(meta: JsonDict, warnings: list[str] | None = None) -> dict[str, Any]:
    """Return ``{keyword: typed value or None}`` for every promoted tag.

    Args:
        meta: The header as DICOM JSON.
        warnings: Where to note values that could not be typed (they become None).
    """
    row: dict[str, Any] = dict.fromkeys(_PROMOTED)
    get = meta.get
    for keyword, (key, convert) in _PROMOTED.items():
        element = get(key)
        if element is None:
            continue
        if convert is _as_text:  # most columns: a string value taken as it is
            values = element.get("Value")
            if values and type(values[0]) is str:
                row[keyword] = values[0]
                continue
        elif convert is _as_int32:  # Rows, Columns, bits: a small JSON integer
            values = element.get("Value")
            if values and type(values[0]) is int and _INT32[0] <= values[0] <= _INT32[1]:
                row[keyword] = values[0]
                continue
        try:
            row[keyword] = convert(element)
        except (ValueError, TypeError) as exc:
            if warnings is not None:
                warnings.append(f"{keyword}: {_safe_reason(exc)}")
    return row
