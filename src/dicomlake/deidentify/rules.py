"""De-identify a data set by PS3.15 Annex E: Table E.1-1's actions, options and marking.

:func:`deidentify` applies the Basic Application Level Confidentiality Profile, with
the options given, to a deep copy of a data set, in every sequence item at any depth.
Pixel data is not looked at here (``clean-pixel-data`` only adds its code; the pixel
step owns Burned In Annotation). The choices the standard leaves to an implementation:

Actions (Table E.1-1a). An option's column replaces the Basic Profile action when the
option is on; where two options given both have an action, K wins over C (so far the
table never gives one attribute two different option actions). Compound actions are
resolved for the most restrictive reading that still keeps type 1 and 2 attributes
present, since we do not look up each attribute's type in the IOD: X/Z → Z, X/D → D,
Z/D → D, X/Z/D → D, X/Z/U* → U. Then:

- X removes; Z leaves the attribute with no value (a sequence with no items); K keeps.
- D puts a dummy valid for the VR (``19000101``, ``000000``, ``0``, ``ANONYMIZED``...);
  for a UID, the keyed UID; Patient ID and Patient's Name always get the keyed
  pseudonyms of :class:`~dicomlake.deidentify.keys.Key`, keyed on the original Patient ID.
- U maps every UID value with :meth:`Key.uid`, so references between files stay
  consistent. Values under the DICOM root ``1.2.840.10008.`` (well-known frames of
  reference, SOP classes, coding schemes) are never instance UIDs and are kept.
- C (clean): free text cannot be told safe by a program, so cleaning text (the
  descriptors, patient characteristics) empties it while keeping the attribute (or
  puts the D dummy where the Basic Profile's action holds D: those may be type 1); coded
  sequences are cleaned item by item (their codes stay); AE titles become keyed
  stand-ins (``AE`` and 14 hex digits) that keep one device's files together; with
  ``retain-longitudinal-modified-dates`` dates (DA, and the date of a DT, its time and
  offset kept) move by the patient's keyed shift, times and the time zone offset stay;
  binary values that cannot be read for identifying content (signed timestamps, maker
  notes, overlay bitmaps) are removed.
- A sequence that is kept, dummied, mapped or cleaned is walked item by item with the
  same rules.

Beyond the table:

- Any UID not in the table is mapped like U unless it names a class, a transfer
  syntax, a coding scheme or a context (PS3.15 E.1: all instance UIDs must change),
  and nothing is mapped with ``retain-uids``.
- Person names and free text (PN, ST, LT, UT, UC) not in the table get a dummy
  (``ANONYMIZED``, ``ANONYMOUS^ANONYMOUS``): the table lists the standard's attributes
  as of its edition, and a name is identifying whatever its tag. A dummy rather than
  no value, since some (an SR content item's Text Value) are type 1 where they occur.
- Attributes neither in the table nor in pydicom's dictionary are removed: their
  content cannot be judged. Group lengths are removed.
- Overlays (60xx) and curves (50xx) go whole groups at a time, since an overlay plane
  without its data is invalid; ``clean-graphics`` cannot look into a bitmap, so it
  keeps them out too, and only changes the graphic annotations' treatment by name.
- Private attributes go, creators included, unless ``retain-safe-private`` is on and
  the (creator, group, element) is in ``safe_private.json`` (Table E.3.10-1); a creator
  stays exactly when one of its elements stays.
- File meta: Media Storage SOP Instance UID follows SOP Instance UID, the
  implementation UID and version name become dicomlake's, AE titles and private meta
  information go; the 128-byte preamble is zeroed (it may hold a TIFF header).

Marking: Patient Identity Removed ``YES``, De-identification Method (one value per
profile and option), De-identification Method Code Sequence (CID 7050: 113100 and
each option's code) and Longitudinal Temporal Information Modified (``MODIFIED`` with
modified dates, ``UNMODIFIED`` with full dates, ``REMOVED`` otherwise), replacing any
earlier marking.

No original value is ever logged or put in an exception.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any, Final

from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dicomlake.deidentify import options as opt
from dicomlake.deidentify.keys import Key
from dicomlake.deidentify.profile import PATTERNS, PRIVATE, ROWS, Row
from dicomlake.errors import DeidSkipped

#: dicomlake's Implementation Class UID (a UUID-derived 2.25 UID, fixed forever).
IMPLEMENTATION_CLASS_UID: Final = "2.25.27070684949820233653372840290364558406"
#: Values under this root are the standard's own UIDs, never an instance's.
DICOM_ROOT: Final = "1.2.840.10008."

_RESOLVE: Final = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
_TEXT_VRS: Final = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
_FREE_TEXT_VRS: Final = frozenset({"PN", "ST", "LT", "UT", "UC"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DUMMIES: Final[dict[str, Any]] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "AT": 0,
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "FD": 0.0,
    "FL": 0.0,
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMOUS^ANONYMOUS",
    "SH": "ANONYMIZED",
    "SL": 0,
    "SS": 0,
    "ST": "ANONYMIZED",
    "SV": 0,
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UL": 0,
    "UR": "about:blank",
    "US": 0,
    "UT": "ANONYMIZED",
    "UV": 0,
}
#: UIDs outside the table that name a kind of thing, not an instance: kept.
_KEEP_UID_KEYWORDS: Final = frozenset(
    {
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "ContextUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
        "CreatorVersionUID",
    }
)
_PATIENT_ID: Final = 0x00100020
_PATIENT_NAME: Final = 0x00100010
_TIMEZONE_OFFSET: Final = 0x00080201
_DT_DATE: Final = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)", re.DOTALL)
#: File meta elements that name the sender, receiver or their private data.
_META_DROP: Final = (0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028)
_META_PRIVATE: Final = (0x00020100, 0x00020102)


@dataclass(frozen=True)
class _Context:
    key: Key
    options: frozenset[str]
    patient_id: str
    shift_days: int | None

    def uid(self, value: str) -> str:
        value = value.strip("\0 ")
        if not value or value.startswith(DICOM_ROOT):
            return value
        return self.key.uid(value)


def deidentify(
    ds: Dataset, key: Key, options: frozenset[str], *, in_place: bool = False
) -> Dataset:
    """Return a de-identified deep copy of ``ds`` (the original is not changed).

    ``in_place=True`` de-identifies ``ds`` itself and returns it: for a caller that
    read the file only to write its copy (a third of the time went to copying).

    Raises:
        ValueError: ``options`` holds an unknown name or two that exclude each other.
        DeidSkipped: An element cannot be decoded (the message names its tag only).
    """
    options = opt.parse_options(options)
    out = ds if in_place else _copy(ds)
    patient_id = _text(_element(out, Tag(_PATIENT_ID))) if _PATIENT_ID in out else ""
    shift = key.date_shift_days(patient_id) if opt.RETAIN_MODIFIED_DATES in options else None
    ctx = _Context(key=key, options=options, patient_id=patient_id, shift_days=shift)
    _clean(out, ctx, patient_id)
    _mark(out, options)
    meta = getattr(out, "file_meta", None)
    if isinstance(meta, FileMetaDataset):
        _clean_meta(meta, out, ctx)
    if getattr(out, "preamble", None) is not None:
        out.preamble = b"\0" * 128
    return out


_PIXEL_DATA = 0x7FE00010


def _copy(ds: Dataset) -> Dataset:
    """A deep copy of ``ds`` that shares its pixel data's bytes (never changed here).

    Copying the pixels took a quarter of the time of de-identifying a small file.
    """
    pixels = ds.get_item(_PIXEL_DATA) if _PIXEL_DATA in ds else None
    if pixels is None:
        return copy.deepcopy(ds)
    del ds[_PIXEL_DATA]
    try:
        out = copy.deepcopy(ds)
    finally:
        ds[_PIXEL_DATA] = pixels
    out[_PIXEL_DATA] = copy.copy(pixels)  # a new element around the same bytes
    return out


def _text(elem: DataElement | None) -> str:
    """The value of a text element as one string ('' when absent or empty)."""
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


@functools.cache
def _row_for(tag: int) -> Row | None:
    row = ROWS.get(tag)
    if row is not None:
        return row
    for mask, value, pattern in PATTERNS:
        if tag & mask == value:
            return pattern
    return None


def effective_action(row: Row, options: frozenset[str]) -> tuple[str, str | None]:
    """The action for a row under ``options`` and the option that set it (None: basic).

    Compound actions come back resolved as the module docstring says.
    """
    chosen: tuple[str, str | None] = (row.basic, None)
    for name, action in row.options:
        if name in options and (chosen[1] is None or (action == "K" and chosen[0] != "K")):
            chosen = (action, name)
    return _RESOLVE.get(chosen[0], chosen[0]), chosen[1]


def _keep_uid(tag: BaseTag) -> bool:
    try:
        keyword = get_entry(tag)[4]
    except KeyError:
        return False
    return (
        keyword.endswith(("ClassUID", "SyntaxUID"))
        or keyword.startswith(("SOPClasses", "PertinentSOPClasses"))
        or keyword in _KEEP_UID_KEYWORDS
    )


def _in_dictionary(tag: BaseTag) -> bool:
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _clean(ds: Dataset, ctx: _Context, patient_id: str) -> None:
    """Apply the rules to one data set or item, in place, and recurse into its items."""
    item_patient = _text(_element(ds, Tag(_PATIENT_ID))) if _PATIENT_ID in ds else patient_id
    _drop_graphics_groups(ds, ctx)
    private: list[BaseTag] = []
    for tag in list(ds.keys()):
        if tag.group % 2 == 1:
            private.append(tag)
            continue
        if tag.element == 0 or tag.group == 0x0002:
            del ds[tag]
            continue
        _apply(ds, _element(ds, tag), ctx, item_patient)
    if private:
        _clean_private(ds, private, ctx, item_patient)


def _element(ds: Dataset, tag: BaseTag) -> DataElement:
    """The element at ``tag``, decoded; pydicom's errors quote the value, ours do not."""
    try:
        return ds[tag]
    except Exception as exc:
        raise DeidSkipped(
            f"element {tag} cannot be decoded ({type(exc).__name__}); the file is left out"
        ) from None


def _drop_graphics_groups(ds: Dataset, ctx: _Context) -> None:
    """Remove curve groups (50xx) and overlay planes (60xx) whose data must go."""
    tags = list(ds.keys())
    groups = {t.group for t in tags if 0x5000 <= t.group <= 0x60FF and t.group % 2 == 0}
    for group in groups:
        if group >> 8 not in (0x50, 0x60):
            continue
        data = Tag(group, 0x3000)
        row = _row_for(data)
        if row is None:  # pragma: no cover - both patterns are in the table
            continue
        action, _ = effective_action(row, ctx.options)
        # C cannot clean a bitmap or curve: it goes as X does
        if action in ("X", "C") or group >> 8 == 0x50:
            for tag in [t for t in tags if t.group == group]:
                del ds[tag]


def _apply(ds: Dataset, elem: DataElement, ctx: _Context, patient_id: str) -> None:
    tag = elem.tag
    vr = elem.VR
    row = _row_for(tag)
    cause: str | None = None
    if row is not None:
        action, cause = effective_action(row, ctx.options)
    elif vr == "UI":
        action = "K" if opt.RETAIN_UIDS in ctx.options or _keep_uid(tag) else "U"
    elif vr in _FREE_TEXT_VRS:
        # a dummy, not empty: SR Text Value and the like are type 1 in their items
        action = "D" if _values(elem) else "K"
    elif not _in_dictionary(tag):
        action = "X"
    else:
        action = "K"

    if tag == _PATIENT_ID and action in ("Z", "D"):
        elem.value = ctx.key.patient_id(_text(elem))
        return
    if tag == _PATIENT_NAME and action in ("Z", "D"):
        elem.value = ctx.key.patient_name(patient_id)
        return
    if action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = Sequence() if vr == "SQ" else None
    elif action == "K":
        _recurse(elem, ctx, patient_id)
    elif action == "U":
        _map_uids(elem, ctx)
        _recurse(elem, ctx, patient_id)
    elif action == "D":
        _dummy(elem, ctx, patient_id)
    elif action == "C":
        if _clean_value(elem, ctx, patient_id, cause, row) is False:
            del ds[tag]
    else:  # pragma: no cover - the generator admits only Table E.1-1a's codes
        raise ValueError(f"unknown action {action!r} for {tag}")


def _recurse(elem: DataElement, ctx: _Context, patient_id: str) -> None:
    if elem.VR == "SQ" and elem.value is not None:
        for item in elem.value:
            _clean(item, ctx, patient_id)


def _map_uids(elem: DataElement, ctx: _Context) -> None:
    if elem.VR != "UI" or elem.value is None or opt.RETAIN_UIDS in ctx.options:
        return
    value = elem.value
    if isinstance(value, MultiValue | list):
        elem.value = [ctx.uid(str(v)) for v in value]
    else:
        elem.value = ctx.uid(str(value))


def _dummy(elem: DataElement, ctx: _Context, patient_id: str) -> None:
    vr = elem.VR
    if vr == "SQ":
        _recurse(elem, ctx, patient_id)
    elif vr == "UI":
        if elem.value in (None, ""):
            elem.value = ctx.key.uid("")
        else:
            _map_uids(elem, ctx)
    elif vr in _BINARY_VRS:
        elem.value = b"\0" * 8
    else:
        elem.value = _DUMMIES.get(vr, "ANONYMIZED")


def _clean_value(
    elem: DataElement, ctx: _Context, patient_id: str, cause: str | None, row: Row | None
) -> bool:
    """Clean one element in place; False when it cannot be cleaned and must go.

    Text is emptied, or given a dummy where the Basic Profile would (its action holds
    D): the table gives D where an IOD may need a value (a type 1 Structure Set Label).
    """
    vr = elem.VR
    if vr == "SQ":
        _recurse(elem, ctx, patient_id)
    elif vr == "UI":
        _map_uids(elem, ctx)
    elif vr in _BINARY_VRS:
        return False
    elif cause == opt.RETAIN_MODIFIED_DATES:
        if vr in ("DA", "DT"):
            _shift(elem, ctx)
        elif vr != "TM" and elem.tag != _TIMEZONE_OFFSET:
            elem.value = None
    elif vr == "AE":
        values = _values(elem)
        elem.value = [f"AE{ctx.key.token('ae', v, 14)}" for v in values] or None
    elif vr in ("AS", "DA", "DT", "TM") or (row is not None and "D" in row.basic):
        _dummy(elem, ctx, patient_id)
    else:
        elem.value = None
    return True


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def _shift(elem: DataElement, ctx: _Context) -> None:
    """Move every date of a DA or DT element by the patient's keyed shift."""
    days = ctx.shift_days or 0
    shifted = [_shift_one(v, elem.VR, days) for v in _values(elem)]
    if not shifted:
        return
    elem.value = shifted if len(shifted) > 1 else shifted[0]


def _shift_one(value: str, vr: str, days: int) -> str:
    text = value.strip()
    if vr == "DA" and "-" in text:  # a range, as in a query
        return "-".join(_shift_one(part, vr, days) if part else "" for part in text.split("-"))
    if vr == "DA":
        text = text.replace(".", "")  # ACR-NEMA YYYY.MM.DD
    match = _DT_DATE.fullmatch(text)
    if match is None or (vr == "DA" and match[4]):
        return str(_DUMMIES[vr])
    year, month, day, rest = match[1], match[2], match[3], match[4]
    try:
        date = dt.date(int(year), int(month or 1), int(day or 1))
        moved = date + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return str(_DUMMIES[vr])
    width = 4 + (2 if month else 0) + (2 if day else 0)
    return moved.strftime("%Y%m%d")[:width] + rest


def _clean_private(ds: Dataset, tags: list[BaseTag], ctx: _Context, patient_id: str) -> None:
    """Remove private elements, keeping safe ones (and their creators) when asked."""
    # the table's private row: X, or C (keep what is safe) with retain-safe-private
    keep_safe = effective_action(PRIVATE, ctx.options)[0] == "C"
    kept_creators: set[BaseTag] = set()
    creators: list[BaseTag] = []
    for tag in tags:
        block = tag.element >> 8
        if 0x0010 <= tag.element <= 0x00FF:
            creators.append(tag)
            continue
        creator = Tag(tag.group, block) if block >= 0x10 else None
        if keep_safe and creator is not None and creator in ds:
            name = _text(_element(ds, creator))
            if (name, tag.group, tag.element & 0xFF) in _safe_private():
                kept_creators.add(creator)
                elem = _element(ds, tag)
                if elem.VR == "UI" and elem.value:  # a safe UID still links to the source
                    values = (
                        elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
                    )
                    mapped = [ctx.uid(str(v)) for v in values]
                    elem.value = mapped if len(mapped) > 1 else mapped[0]
                _recurse(elem, ctx, patient_id)
                continue
        del ds[tag]
    for tag in creators:
        if tag not in kept_creators:
            del ds[tag]


@functools.cache
def _safe_private() -> frozenset[tuple[str, int, int]]:
    """(creator, group, element offset) of every safe private attribute we keep."""
    text = resources.files("dicomlake.deidentify").joinpath("safe_private.json").read_text("utf-8")
    entries: Iterable[dict[str, str]] = json.loads(text)["attributes"]
    safe = set()
    for entry in entries:
        match = re.fullmatch(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)", entry["tag"])
        if match is None:
            raise ValueError(f"safe_private.json: bad tag {entry['tag']!r}")
        safe.add((entry["creator"].strip(), int(match[1], 16), int(match[2], 16)))
    return frozenset(safe)


def _mark(ds: Dataset, options: frozenset[str]) -> None:
    """Record that and how the data set was de-identified (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    codes = opt.method_codes(options)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [code.meaning for code in codes]
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme
        item.CodeMeaning = code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if opt.RETAIN_MODIFIED_DATES in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif opt.RETAIN_FULL_DATES in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


@functools.cache
def _implementation_version() -> str:
    try:
        version = metadata.version("dicomlake")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "0"
    return f"DICOMLAKE_{version}"[:16]


def _clean_meta(meta: FileMetaDataset, ds: Dataset, ctx: _Context) -> None:
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif "MediaStorageSOPInstanceUID" in meta and opt.RETAIN_UIDS not in ctx.options:
        meta.MediaStorageSOPInstanceUID = UID(ctx.uid(str(meta.MediaStorageSOPInstanceUID)))
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = _implementation_version()
    for tag in (*_META_DROP, *_META_PRIVATE):
        if tag in meta:
            del meta[tag]
