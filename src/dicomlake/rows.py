"""Rows as every kernel builds them: stable ids, short error texts, Arrow batches.

The ground floor of the kernels: each turns files into row dicts with these helpers,
so an error reads the same and a batch is built the same way in every table.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

from dicomlake._types import Row

#: Longest error text kept in a row; a message is a hint, not a log.
MAX_ERROR_CHARS: Final = 500


def row_id(path: str) -> int:
    """Return the stable 64-bit row id of ``path`` (signed, from BLAKE2b).

    Example:
        >>> row_id("file:///data/a.dcm") == row_id("file:///data/a.dcm")
        True
    """
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def error_text(exc: BaseException) -> str:
    """Return a short one-line ``Class: message`` text for an error row.

    Example:
        >>> error_text(ValueError("bad   value"))
        'ValueError: bad value'
    """
    message = " ".join(str(exc).split())  # one line: decoders list causes on several
    name = type(exc).__name__
    if type(exc).__module__ == "zlib":  # zlib.error: a corrupt compressed zip member
        name = "ZlibError"
    text = f"{name}: {message}" if message else name
    return clip_error(text)


def clip_error(text: str) -> str:
    """Bound an error text to :data:`MAX_ERROR_CHARS`, marking a cut with ``...``."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS - 3] + "..."


def tally(batch: pa.RecordBatch) -> Counter[str]:
    """Count a batch's rows: ``ok``, ``not_dicom``, and errors by class.

    The class is the text before the first ``:`` of ``error`` (see :func:`error_text`).
    """
    counts: Counter[str] = Counter()
    statuses = batch.column("status").to_pylist()
    for status, error in zip(statuses, batch.column("error").to_pylist(), strict=True):
        if status in ("ok", "not_dicom"):
            counts[status] += 1
        else:
            counts[(error or "Error").split(":", 1)[0]] += 1
    return counts


def build_batch(
    rows: Sequence[Row], schema: pa.Schema, *, stamps: Mapping[str, Any]
) -> pa.RecordBatch:
    """Build a RecordBatch in ``schema`` from row dicts; ``stamps`` fill whole columns.

    Keys a row lacks become nulls; keys the schema lacks are ignored (private ones
    such as ``_thumbnails`` included).
    """
    # row by row, each row's values appended to its columns: one pass over each dict
    # while it is in the cache (column by column cost three times as much)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema if f.name not in stamps}
    appends = [(name, values.append) for name, values in columns.items()]
    for row in rows:
        get = row.get
        for name, append in appends:
            append(get(name))
    arrays = []
    for field in schema:
        if field.name in stamps:
            values: list[Any] = [stamps[field.name]] * len(rows)
        else:
            values = columns[field.name]
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def flatten(rows: Sequence[Row], key: str) -> list[Row]:
    """The rows listed under ``key`` of each row, in order (a kernel's per-file lists)."""
    return [item for row in rows for item in row.get(key, ())]
