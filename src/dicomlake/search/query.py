"""A search (QIDO-RS or C-FIND) read into conditions, run on the index, answered as JSON.

Every value of the request travels as a bound parameter; the only SQL text built here
comes from this module's own constants and the index's column names, chosen by tag
from :data:`~dicomlake.search.attributes.INDEXED`. Matching follows PS3.4
C.2.2.2: single values (case-sensitive), UID lists, ``*``/``?`` wildcards, date and
time ranges, universal matching for an empty value; ``fuzzymatching=true`` makes a
person's name match case-insensitively on any name component, as a prefix.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from dicomlake.dicom.uids import is_uid
from dicomlake.search.attributes import (
    COMPUTED,
    DEFAULTS,
    INDEXED,
    INSTANCE_AVAILABILITY,
    INSTANCE_DEFAULTS,
    MODALITIES_IN_STUDY,
    RETRIEVE_URL,
    SERIES_COUNTS,
    STUDY_COUNTS,
    Column,
    UnknownAttribute,
    resolve,
    vr_of,
)
from dicomlake.search.connection import Cursor
from dicomlake.search.index import ELEMENT_TAGS, ensure_index

#: Results a page holds when the client names no limit, and at most.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 1000
#: Attributes one ``includefield`` may name, in all.
MAX_INCLUDE = 200
#: Longest value a query may match against.
MAX_VALUE = 1024

#: Query parameters that are not attributes.
_CONTROL = {"includefield", "fuzzymatching", "limit", "offset"}

_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(\.[0-9]{1,6})?)?)?")

#: Value representations matched as numbers (``5`` matches a stored ``5.000000``).
_NUMBER_VRS = frozenset({"DS", "IS", "FL", "FD", "US", "UL", "SS", "SL", "UV", "SV"})

_TABLES = {"study": "dw_studies", "series": "dw_series", "instance": "dw_instances"}
_ORDER = {
    "study": 't."StudyDate" DESC NULLS LAST, t."StudyTime" DESC NULLS LAST, t."StudyInstanceUID"',
    "series": 't."StudyInstanceUID", t."SeriesNumber" NULLS LAST, t."SeriesInstanceUID"',
    "instance": (
        't."StudyInstanceUID", t."SeriesInstanceUID", t."InstanceNumber" NULLS LAST, '
        't."SOPInstanceUID"'
    ),
}
#: Columns each level's table has (the study's columns are copied onto its series).
_HAS = {
    "study": {"study"},
    "series": {"study", "series"},
    "instance": {"study", "series", "instance"},
}
_KEY_COLUMNS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


class BadQuery(ValueError):
    """The search cannot be understood; the message says which parameter and why."""


@dataclass
class Condition:
    """One attribute to match: SQL over the index with ``?`` placeholders."""

    tag: str
    sql: str
    params: list[Any]
    level: str  # the index level whose columns ``sql`` reads; 'meta' for the header
    table: str = "dw_instances"


@dataclass
class Search:
    """A QIDO-RS request, understood."""

    level: str
    conditions: list[Condition] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)  # tags beyond the defaults
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)  # parameters that are not attributes


@dataclass
class Page:
    """What a search found: the DICOM JSON of each match, and whether more exist."""

    items: list[dict[str, Any]]
    truncated: bool
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def parse(
    level: str,
    params: Iterable[tuple[str, str]],
    *,
    scope: Mapping[str, str] | None = None,
) -> Search:
    """Read a QIDO-RS query string for ``level``.

    Args:
        level: ``study``, ``series`` or ``instance``.
        params: The query parameters in order (repeats allowed).
        scope: UIDs from the path (``/studies/{study}/series``): tag -> UID.

    Raises:
        BadQuery: An unknown attribute, a malformed value, or limits out of range.
    """
    search = Search(level)
    pairs = list(params)
    fuzzy = False
    for key, value in pairs:
        if key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadQuery("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
    seen: set[str] = set()
    for key, value in pairs:
        if key in _CONTROL:
            if key == "includefield":
                _include(search, value)
            elif key in ("limit", "offset"):
                _paging(search, key, value)
            continue
        if "." in key:
            raise BadQuery(f"{key}: matching on attributes inside sequences is not supported")
        try:
            tag = resolve(key)
        except UnknownAttribute:
            # PS3.18 §8.3: unsupported parameters are ignored; the Warning says so.
            search.ignored.append(key[:64])
            continue
        if tag in seen:
            raise BadQuery(f"{key} is given more than once")
        seen.add(tag)
        if len(value) > MAX_VALUE:
            raise BadQuery(f"{key}: the value is longer than {MAX_VALUE} characters")
        search.returned.append(tag)
        if value.strip("*") == "":
            continue  # universal matching ("" or "*"): return it, match everything
        search.conditions.append(_condition(tag, key, value, fuzzy))
    for tag, uid in (scope or {}).items():
        search.conditions.append(_condition(tag, tag, uid, False))
    return search


def _include(search: Search, value: str) -> None:
    for name in filter(None, (part.strip() for part in value.split(","))):
        if name == "all":
            search.include_all = True
            continue
        try:
            search.returned.append(resolve(name))
        except UnknownAttribute as exc:
            raise BadQuery(f"includefield: {exc}") from None
        if len(search.returned) > MAX_INCLUDE:
            raise BadQuery(f"includefield names more than {MAX_INCLUDE} attributes")


def _paging(search: Search, key: str, value: str) -> None:
    if not value.isdigit() or len(value) > 12:
        raise BadQuery(f"{key} must be a whole number >= 0, not {value!r}")
    number = int(value)
    if key == "offset":
        search.offset = number
    elif number == 0:
        raise BadQuery("limit must be at least 1")
    elif number > MAX_LIMIT:
        search.limit = MAX_LIMIT  # the Warning header says when that cut the answer
    else:
        search.limit = number


def _condition(tag: str, key: str, value: str, fuzzy: bool) -> Condition:
    column = INDEXED.get(tag)
    if column is None:
        return _meta_condition(tag, key, value)
    sql, params = _match(column.kind, f't."{column.name}"', key, value, fuzzy)
    return Condition(tag, sql, params, column.level)


def _match(kind: str, col: str, key: str, value: str, fuzzy: bool) -> tuple[str, list[Any]]:
    """SQL that matches ``col`` against the query value, by the value's kind."""
    if kind == "uid":
        uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
        for uid in uids:
            if not is_uid(uid):
                raise BadQuery(f"{key}: {uid[:70]!r} is not a UID")
        return f"list_contains(?::VARCHAR[], {col})", [uids]
    if kind == "date":
        return _date_range(col, key, value)
    if kind == "time":
        return _time_range(col, key, value)
    if kind == "int":
        numbers = value.split("\\")
        if not all(re.fullmatch(r"[+-]?[0-9]{1,18}", n.strip()) for n in numbers):
            raise BadQuery(f"{key} must be a whole number, not {value!r}")
        return f"list_contains(?::BIGINT[], {col})", [[int(n) for n in numbers]]
    if kind == "list":
        values = [v for v in value.split("\\") if v]
        if any("*" in v or "?" in v for v in values):
            patterns = [_like(v) for v in values]
            return (
                f"len(list_filter({col}, lambda x: list_bool_or([x LIKE p ESCAPE '\\' "
                "FOR p IN ?::VARCHAR[]]))) > 0",
                [patterns],
            )
        return f"list_has_any({col}, ?::VARCHAR[])", [values]
    if kind == "name" and fuzzy:
        words = [w for w in re.split(r"[\s^]+", value.lower()) if w]
        if not words:
            return "TRUE", []
        patterns = [_like(w) + "%" for w in words]
        # Every word of the query starts some component of the name, in any case.
        return (
            f"list_bool_and([len(list_filter(string_split_regex(lower({col}), '[\\^ =]+'), "
            f"lambda c: c LIKE p ESCAPE '\\')) > 0 FOR p IN ?::VARCHAR[]])",
            [patterns],
        )
    values = value.split("\\") if kind == "text" else [value]
    parts: list[str] = []
    params: list[Any] = []
    for item in values:
        if "*" in item or "?" in item:
            parts.append(f"{col} LIKE ? ESCAPE '\\'")
            params.append(_like(item))
        else:
            parts.append(f"{col} = ?")
            params.append(item)
    return "(" + " OR ".join(parts) + ")", params


def _like(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (``*`` any run, ``?`` one character)."""
    out = []
    for char in pattern:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _range(value: str) -> tuple[str, str]:
    if value.count("-") > 1:
        raise BadQuery(f"{value!r} is not a value or a range (A-B, -B, A-)")
    low, _, high = value.partition("-")
    return low.strip(), high.strip()


def _between(
    col: str, key: str, value: str, bound: Callable[[str, bool], Any]
) -> tuple[str, list[Any]]:
    """SQL for a value or a range ``A-B``, ``-B``, ``A-``.

    ``bound(text, upper)`` reads one end; a single value is the range from its lower
    to its upper reading (a TM of ``10`` spans the hour).
    """
    if "-" in value:
        low, high = _range(value)
        if not low and not high:
            raise BadQuery(f"{key}: a range needs at least one end")
    else:
        low = high = value
    conds, params = [], []
    if low:
        conds.append(f"{col} >= ?")
        params.append(bound(low, False))
    if high:
        conds.append(f"{col} <= ?")
        params.append(bound(high, True))
    return "(" + " AND ".join(conds) + ")", params


def _date_range(col: str, key: str, value: str) -> tuple[str, list[Any]]:
    def date(text: str, upper: bool) -> dt.date:
        text = text.replace(".", "")  # ACR-NEMA YYYY.MM.DD
        if not _DATE.fullmatch(text):
            raise BadQuery(f"{key}: {text!r} is not a date (YYYYMMDD)")
        try:
            return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise BadQuery(f"{key}: {text!r} is not a date (YYYYMMDD)") from None

    return _between(col, key, value, date)


def _time_range(col: str, key: str, value: str) -> tuple[str, list[Any]]:
    """TM matching on the index's TIME column: ``10`` is 10:00:00 to 10:59:59.999999."""

    def time(text: str, upper: bool) -> dt.time:
        match = _TIME.fullmatch(text)
        if not match:
            raise BadQuery(f"{key}: {text!r} is not a time (HHMMSS.FFFFFF)")
        hours, minutes, seconds, fraction = match.groups()
        fill = 59 if upper else 0
        if fraction:
            micro = int(fraction[1:].ljust(6, "9" if upper else "0"))
        else:
            micro = 999999 if upper else 0
        try:
            return dt.time(
                int(hours),
                int(minutes) if minutes else fill,
                int(seconds) if seconds else fill,
                micro,
            )
        except ValueError:
            raise BadQuery(f"{key}: {text!r} is not a time (HHMMSS.FFFFFF)") from None

    column = 't."study_time"' if col.endswith('"StudyTime"') else col
    return _between(column, key, value, time)


def _meta_condition(tag: str, key: str, value: str) -> Condition:
    """Match an attribute the index does not hold, on each file's header.

    The element's first value is pulled out of ``meta`` once per row (as ``m.v``,
    its JSON path a bound parameter) and matched like an index column of its kind.
    """
    vr = vr_of(tag)
    path = f'$."{tag}".Value[0]' + (".Alphabetic" if vr == "PN" else "")
    if vr == "DA":
        sql, params = _date_range("try_strptime(m.v, '%Y%m%d')::DATE", key, value)
    elif vr in ("TM", "DT"):
        sql, params = _text_range(key, value, vr)
    elif vr in _NUMBER_VRS:
        try:
            numbers = [float(n) for n in value.split("\\")]
        except ValueError:
            raise BadQuery(f"{key} must be a number, not {value!r}") from None
        sql, params = "list_contains(?::DOUBLE[], TRY_CAST(m.v AS DOUBLE))", [numbers]
    else:
        kind = "uid" if vr == "UI" else "name" if vr == "PN" else "text"
        sql, params = _match(kind, "m.v", key, value, False)
    sub = (
        "t.row_id IN (SELECT m.row_id FROM (SELECT row_id, json_extract_string(meta, ?) AS v "
        f"FROM instances WHERE status = 'ok') AS m WHERE {sql})"
    )
    return Condition(tag, sub, [path, *params], "meta")


def _text_range(key: str, value: str, vr: str) -> tuple[str, list[Any]]:
    """TM and DT values as text: their digits sort like the times they name."""
    low, high = _range(value) if "-" in value else (value, value)
    conds, params = [], []
    for bound, op in ((low, ">="), (high, "<=")):
        if bound:
            if not re.fullmatch(r"[0-9.+\-]+", bound):
                raise BadQuery(f"{key}: {bound!r} is not a {vr} value")
            conds.append(f"m.v {op} ?")
            params.append(bound if op == ">=" else bound + "\U0010ffff")
    return " AND ".join(conds) or "TRUE", params


# --------------------------------------------------------------------------- running


def run(cur: Cursor, search: Search, base_url: str) -> Page:
    """Find a page of matches and build their DICOM JSON.

    Raises:
        QueryTimeout: The search took too long.
    """
    ensure_index(cur)
    level = search.level
    table = _TABLES[level]
    key = _KEY_COLUMNS[level]
    where, params = _where(search)
    fetch = search.limit + 1  # one more tells whether the page was cut
    rows = cur.fetch_dicts(
        f"SELECT t.* FROM {table} AS t WHERE {where} ORDER BY {_ORDER[level]} LIMIT ? OFFSET ?",
        [*params, fetch, search.offset],
    )
    truncated = len(rows) > search.limit
    rows = rows[: search.limit]
    items = _answer(cur, search, rows, key, base_url)
    return Page(items, truncated, search.ignored)


def _where(search: Search) -> tuple[str, list[Any]]:
    level = search.level
    key = _KEY_COLUMNS[level]
    conds: list[str] = []
    params: list[Any] = []
    for cond in search.conditions:
        if cond.level in _HAS[level]:
            conds.append(cond.sql)
        elif cond.tag == MODALITIES_IN_STUDY:
            conds.append(
                f't."StudyInstanceUID" IN (SELECT t."StudyInstanceUID" FROM dw_studies AS t '
                f"WHERE {cond.sql})"
            )
        elif cond.level == "meta" and level == "instance":
            conds.append(cond.sql)
        else:
            conds.append(f't."{key}" IN (SELECT t."{key}" FROM dw_instances AS t WHERE {cond.sql})')
        params.extend(cond.params)
    return " AND ".join(conds) or "TRUE", params


def _answer(
    cur: Cursor,
    search: Search,
    rows: Sequence[dict[str, Any]],
    key: str,
    base_url: str,
) -> list[dict[str, Any]]:
    if not rows:
        return []
    level = search.level
    wanted = list(dict.fromkeys((*DEFAULTS[level], *search.returned)))
    from_header = [t for t in wanted if t not in COMPUTED]
    rep_ids = [int(r["rep_row_id"] if level != "instance" else r["row_id"]) for r in rows]
    cached = (
        {rep: _elements(row["elements"]) for rep, row in zip(rep_ids, rows, strict=True)}
        if level != "instance"
        else {}
    )
    # An instance's defaults (UIDs and numbers) are index columns, exactly as stored;
    # anything else is read from the representative files' headers.
    held = set(INSTANCE_DEFAULTS) if level == "instance" else set(ELEMENT_TAGS)
    missing = [t for t in from_header if t not in held]
    extra = (
        _header_elements(cur, rep_ids, missing, search.include_all)
        if missing or search.include_all
        else {}
    )
    items = []
    for row, rep in zip(rows, rep_ids, strict=True):
        item: dict[str, Any] = {}
        elements = {**cached.get(rep, {}), **extra.get(rep, {})}
        if search.include_all:
            item.update(elements)
        for tag in from_header:
            if tag in elements:
                item[tag] = elements[tag]
            elif level == "instance" and tag in held:
                element = _from_column(tag, INDEXED[tag], row)
                if element is not None:
                    item[tag] = element
        _computed(item, level, row, wanted, base_url)
        items.append(dict(sorted(item.items())))
    return items


def _elements(text: str | None) -> dict[str, Any]:
    """The cached default attributes of a study's or series' representative file."""
    if not text:
        return {}
    return {tag: element for tag, element in orjson.loads(text).items() if element is not None}


def _header_elements(
    cur: Cursor, rep_ids: list[int], tags: list[str], everything: bool
) -> dict[int, dict[str, Any]]:
    """Elements read from the representative files' headers (not in the index)."""
    if everything:
        rows = cur.fetch(
            "SELECT row_id, meta FROM instances "
            "WHERE status = 'ok' AND row_id IN (SELECT unnest(?::BIGINT[]))",
            [rep_ids],
        )
        out = {}
        for row_id, meta in rows:
            header = orjson.loads(meta) if meta else {}
            out[int(row_id)] = {
                tag: element
                for tag, element in header.items()
                if not tag.startswith("0002")
                and "BulkDataURI" not in element
                and "InlineBinary" not in element
            }
        return out
    paths = [f'$."{tag}"' for tag in tags]
    rows = cur.fetch(
        "SELECT row_id, json_extract(meta, ?::VARCHAR[]) FROM instances "
        "WHERE status = 'ok' AND row_id IN (SELECT unnest(?::BIGINT[]))",
        [paths, rep_ids],
    )
    return {
        int(row_id): {
            tag: orjson.loads(text)
            for tag, text in zip(tags, values, strict=True)
            if text is not None
        }
        for row_id, values in rows
    }


def _from_column(tag: str, column: Column, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """An instance attribute written from its index column."""
    value = row.get(column.name)
    if value is None:
        return None
    vr = vr_of(tag)
    if vr == "IS":
        value = int(value)
    return {"vr": vr, "Value": [value]}


def _computed(
    item: dict[str, Any], level: str, row: Mapping[str, Any], wanted: list[str], base_url: str
) -> None:
    study = row["StudyInstanceUID"]
    item[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    if level == "study":
        item[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url}/studies/{study}"]}
        for tag, name in STUDY_COUNTS.items():
            item[tag] = {"vr": "IS", "Value": [int(row[name])]}
        item[MODALITIES_IN_STUDY] = (
            {"vr": "CS", "Value": list(row["modalities"])} if row["modalities"] else {"vr": "CS"}
        )
        return
    series = row["SeriesInstanceUID"]
    series_url = f"{base_url}/studies/{study}/series/{series}"
    if level == "series":
        item[RETRIEVE_URL] = {"vr": "UR", "Value": [series_url]}
        for tag, name in SERIES_COUNTS.items():
            item[tag] = {"vr": "IS", "Value": [int(row[name])]}
        return
    item[RETRIEVE_URL] = {
        "vr": "UR",
        "Value": [f"{series_url}/instances/{row['SOPInstanceUID']}"],
    }
