"""A DICOM JSON header (``meta``) as rows of a tag table: keyword, tag, VR, value.

Sequences become nested lists of items (the page draws them as expandable blocks),
binary values are shown by their size: an ``InlineBinary`` by its decoded length, a
``BulkDataURI`` (``<path>?offset=N&length=M``) by ``M``, so the page never carries
pixel data.
"""

from __future__ import annotations

import binascii
import urllib.parse
from functools import lru_cache
from typing import Any

#: Values longer than this many characters are cut, with an ellipsis.
MAX_VALUE_CHARS = 2000


@lru_cache(maxsize=8192)
def keyword(tag: str) -> str:
    """The DICOM keyword of an 8-hex-digit tag, '' when the dictionary has none."""
    from pydicom.datadict import keyword_for_tag

    try:
        return keyword_for_tag(int(tag, 16)) or ""
    except ValueError:
        return ""


def bulk_length(uri: str) -> int | None:
    """The byte length a BulkDataURI names, or None when it names a whole file.

    Example:
        >>> bulk_length("file:///x.dcm?offset=1234&length=524288")
        524288
    """
    _, sep, query = uri.rpartition("?")
    if not sep:
        return None
    values = urllib.parse.parse_qs(query).get("length")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


def _inline_length(text: str) -> int | None:
    try:
        return len(binascii.a2b_base64(text))
    except (binascii.Error, ValueError):
        return None


def _format_value(value: Any) -> str:
    if isinstance(value, dict):  # a person name: Alphabetic, Ideographic, Phonetic
        return "=".join(
            str(value[k]) for k in ("Alphabetic", "Ideographic", "Phonetic") if k in value
        )
    if value is None:
        return ""
    return str(value)


def _size_text(n: int | None, what: str) -> str:
    return what if n is None else f"{n:,} bytes ({what})"


def tag_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn one dataset of DICOM JSON into tag table rows, in tag order.

    Args:
        meta: DICOM JSON (PS3.18 Annex F): ``{"GGGGEEEE": {"vr": ..., "Value": [...]}}``.

    Returns:
        One dict per element: ``tag`` ("(GGGG,EEEE)"), ``keyword``, ``vr``, ``value``
        (text), and for sequences ``items`` (a list of such lists), for binary values
        ``bytes`` (their size, when known).
    """
    rows: list[dict[str, Any]] = []
    for key in sorted(meta):
        element = meta[key] if isinstance(meta[key], dict) else {}
        vr = str(element.get("vr", ""))
        row: dict[str, Any] = {
            "tag": f"({key[:4]},{key[4:]})".upper() if len(key) == 8 else key,
            "keyword": keyword(key),
            "vr": vr,
        }
        if vr == "SQ":
            items = [item for item in element.get("Value") or [] if isinstance(item, dict)]
            row["items"] = [tag_rows(item) for item in items]
            row["value"] = f"{len(items)} item" + ("" if len(items) == 1 else "s")
        elif "InlineBinary" in element:
            row["bytes"] = _inline_length(str(element["InlineBinary"]))
            row["value"] = _size_text(row["bytes"], "inline binary")
        elif "BulkDataURI" in element:
            row["bytes"] = bulk_length(str(element["BulkDataURI"]))
            row["value"] = _size_text(row["bytes"], "bulk data")
        else:
            text = "\\".join(_format_value(v) for v in element.get("Value") or [])
            if len(text) > MAX_VALUE_CHARS:
                text = text[:MAX_VALUE_CHARS] + "…"
            row["value"] = text
        rows.append(row)
    return rows
