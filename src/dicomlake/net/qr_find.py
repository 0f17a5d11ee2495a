"""C-FIND answered from the lake: a DIMSE identifier read as a lake search.

A C-FIND identifier and a QIDO-RS query ask the same thing: match some attributes
(PS3.4 C.2.2.2: single value, UID list, ``*``/``?`` wildcards, date and time ranges,
universal matching for an empty value), return others. So the identifier becomes
the ``(tag, value)`` pairs of :func:`dicomlake.search.query.parse` and runs
on the same in-memory index of the lake's ``ok`` rows; each DICOM JSON result keeps
only the keys the identifier asked for, plus the level's unique keys,
*QueryRetrieveLevel*, *RetrieveAETitle* and *SpecificCharacterSet*.

PATIENT level (Patient Root) is the study search grouped by (0010,0020) *Patient ID*,
with the patient's study, series and instance counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicomlake.search.attributes import COMPUTED, MODALITIES_IN_STUDY
from dicomlake.search.connection import Cursor
from dicomlake.search.query import BadQuery, Search, parse, run

#: Query/Retrieve information models, by the name the code uses.
PATIENT_ROOT = "patient"
STUDY_ROOT = "study"

#: The levels of each model, top first (PS3.4 C.3.1 and C.3.2).
MODEL_LEVELS = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

#: The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS = {
    "PATIENT": 0x00100020,  # PatientID
    "STUDY": 0x0020000D,  # StudyInstanceUID
    "SERIES": 0x0020000E,  # SeriesInstanceUID
    "IMAGE": 0x00080018,  # SOPInstanceUID
}

#: The search index's level of each DIMSE level (PATIENT runs the study search).
_SEARCH_LEVEL = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
_PATIENT_COUNTS = {
    0x00201200: "studies",  # NumberOfPatientRelatedStudies
    0x00201202: "series",  # NumberOfPatientRelatedSeries
    0x00201204: "instances",  # NumberOfPatientRelatedInstances
}
#: Keys that are answered, never matched on: computed by the server, or set by it
#: (ModalitiesInStudy is computed too, but the index matches it).
_RETURN_ONLY = {
    *(int(tag, 16) for tag in COMPUTED - {MODALITIES_IN_STUDY}),
    *_PATIENT_COUNTS,
    RETRIEVE_AE_TITLE,
    0x00080056,  # InstanceAvailability
}
#: Keys the server writes itself in every answer.
_SERVER_KEYS = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE}

#: Results fetched per query on the index; each page is streamed as it arrives.
PAGE = 500


class BadIdentifier(ValueError):
    """The identifier cannot be answered; the message says which key and why.

    Its text names tags and levels, never a value the peer sent.
    """


@dataclass
class FindQuery:
    """A C-FIND identifier, understood."""

    model: str
    level: str
    #: ``(GGGGEEEE, value)`` for every requested key; ``""`` asks for universal matching.
    pairs: list[tuple[str, str]] = field(default_factory=list)
    #: Tags the answers carry, in the identifier's order (unique keys included).
    returned: list[int] = field(default_factory=list)


def read_level(identifier: Dataset, model: str) -> str:
    """The identifier's (0008,0052) *Query/Retrieve Level*, checked against the model.

    Raises:
        BadIdentifier: The level is missing or not one of the model's levels.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    levels = MODEL_LEVELS[model]
    if level not in levels:
        shown = repr(level[:16]) if level else "missing"
        raise BadIdentifier(
            f"QueryRetrieveLevel is {shown}; the {model} root model has {', '.join(levels)}"
        )
    return level


def value_text(element: DataElement) -> str:
    """An element's value as a query string: values joined by backslashes."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def read_find(identifier: Dataset, model: str) -> FindQuery:
    """Read a C-FIND identifier of the ``model`` (``patient`` or ``study`` root).

    Raises:
        BadIdentifier: The level is wrong.
    """
    level = read_level(identifier, model)
    query = FindQuery(model, level)
    levels = MODEL_LEVELS[model]
    unique = [UNIQUE_KEYS[name] for name in levels[: levels.index(level) + 1]]
    seen: set[int] = set()
    for element in identifier:
        tag = int(element.tag)
        # command and file meta groups, group lengths, private tags: not query keys
        if element.tag.group <= 0x0007 or element.tag.is_private or element.tag.element == 0:
            continue
        if tag in _SERVER_KEYS:
            continue
        seen.add(tag)
        query.returned.append(tag)
        if tag in _RETURN_ONLY:
            continue
        text = "" if element.VR == "SQ" else value_text(element).strip(" ")
        query.pairs.append((f"{tag:08X}", text))
    for tag in unique:
        if tag not in seen:
            query.returned.append(tag)
    return query


def find(cur: Cursor, query: FindQuery, aet: str) -> Iterator[Dataset]:
    """The answers to ``query``, one identifier each, as the index yields them.

    Raises:
        BadIdentifier: A key's value cannot be matched (not a date, not a UID, ...).
        QueryTimeout: A page of the search took too long.
    """
    search = _search(query)
    if query.level == "PATIENT":
        yield from _patients(cur, search, query, aet)
        return
    for item in _items(cur, search):
        yield answer(item, query, aet)


def _search(query: FindQuery) -> Search:
    try:
        search = parse(_SEARCH_LEVEL[query.level], query.pairs)
    except BadQuery as exc:
        raise BadIdentifier(str(exc)) from None
    search.limit = PAGE
    return search


def _items(cur: Cursor, search: Search) -> Iterator[dict[str, Any]]:
    """Every result of the search, a page at a time."""
    while True:
        page = run(cur, search, "")
        yield from page.items
        if not page.truncated:
            return
        search.offset += search.limit


def _patients(cur: Cursor, search: Search, query: FindQuery, aet: str) -> Iterator[Dataset]:
    """One answer per Patient ID among the matching studies, with its counts."""
    patients: dict[str | None, tuple[dict[str, Any], dict[str, int]]] = {}
    for item in _items(cur, search):
        key = _first(item.get("00100020"))
        first, counts = patients.setdefault(
            None if key is None else str(key), (item, {"studies": 0, "series": 0, "instances": 0})
        )
        counts["studies"] += 1
        counts["series"] += int(_first(item.get("00201206")) or 0)
        counts["instances"] += int(_first(item.get("00201208")) or 0)
    for first, counts in patients.values():
        item = dict(first)
        for tag, name in _PATIENT_COUNTS.items():
            item[f"{tag:08X}"] = {"vr": "IS", "Value": [counts[name]]}
        yield answer(item, query, aet)


def _first(element: Mapping[str, Any] | None) -> Any:
    if not element:
        return None
    values = element.get("Value") or [None]
    return values[0]


def answer(item: Mapping[str, Any], query: FindQuery, aet: str) -> Dataset:
    """The response identifier: the asked-for keys of one DICOM JSON result.

    A key the result lacks is returned empty (PS3.4 C.2.2.1.2); values are written
    in UTF-8 (ISO_IR 192), which holds any text the lake's headers hold.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = aet
    for tag in query.returned:
        key = f"{tag:08X}"
        element = item.get(key)
        if element is not None and "BulkDataURI" not in element:
            try:
                ds[tag] = DataElement.from_json(
                    Dataset,
                    key,
                    element["vr"],
                    _json_value(element),
                    _json_kind(element),
                    bulk_data_uri_handler=_no_bulk,
                )
                continue
            except (KeyError, TypeError, ValueError):
                pass  # a value this attribute cannot hold is returned empty
        empty = _empty(tag)
        if empty is not None:
            ds[tag] = empty
    return ds


def _json_kind(element: Mapping[str, Any]) -> str:
    return "InlineBinary" if "InlineBinary" in element else "Value"


def _json_value(element: Mapping[str, Any]) -> Any:
    if "InlineBinary" in element:
        return element["InlineBinary"]
    return element.get("Value", [])


def _no_bulk(uri: str) -> bytes:
    """Bulk data inside a returned sequence is answered empty (never read here)."""
    return b""


def _empty(tag: int) -> DataElement | None:
    """A zero-length element for ``tag``; None for a tag the dictionary does not know."""
    try:
        vr = str(dictionary_VR(BaseTag(tag))).split(" or ")[0]
    except KeyError:
        return None
    return DataElement(tag, vr, Sequence() if vr == "SQ" else None)
