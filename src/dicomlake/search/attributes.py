"""What a search knows about attributes: levels, default return keys, index columns.

PS3.18 §10.6.3.3 lists, per level, the attributes a search returns by default
(Tables 10.6.3-3 to -5); a client adds others with ``includefield``. Each attribute a
search may match is either a typed column of the search index
(:mod:`dicomlake.search.index`), which is fast, or an element of the
``meta`` column (the whole header as DICOM JSON), read only when a query asks for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, tag_for_keyword

#: The key that names one entity of each level.
LEVEL_KEYS = {
    "study": "0020000D",
    "series": "0020000E",
    "instance": "00080018",
}

#: Attributes the server computes (they are not in any one file).
STUDY_COUNTS = {"00201206": "n_series", "00201208": "n_instances"}
SERIES_COUNTS = {"00201209": "n_instances"}
MODALITIES_IN_STUDY = "00080061"
RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
COMPUTED = {MODALITIES_IN_STUDY, RETRIEVE_URL, INSTANCE_AVAILABILITY, *STUDY_COUNTS, *SERIES_COUNTS}

#: Default return attributes read from a study's representative file (Table 10.6.3-3,
#: plus StudyDescription, which every study browser shows).
STUDY_DEFAULTS = (
    "00080005",  # SpecificCharacterSet
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081030",  # StudyDescription
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
)

#: Default return attributes of a series (Table 10.6.3-4), plus the study it is in.
SERIES_DEFAULTS = (
    "00080005",  # SpecificCharacterSet
    "00080060",  # Modality
    "00080201",  # TimezoneOffsetFromUTC
    "0008103E",  # SeriesDescription
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)

#: Default return attributes of an instance (Table 10.6.3-5), plus its study and series.
INSTANCE_DEFAULTS = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)

DEFAULTS = {"study": STUDY_DEFAULTS, "series": SERIES_DEFAULTS, "instance": INSTANCE_DEFAULTS}


@dataclass(frozen=True)
class Column:
    """An index column that holds an attribute: its level, name and kind of value."""

    level: str
    name: str
    kind: str  # 'uid', 'text', 'date', 'time', 'int', 'name', 'list'


#: Attributes held in the search index, by tag.
INDEXED: dict[str, Column] = {
    "0020000D": Column("study", "StudyInstanceUID", "uid"),
    "00100020": Column("study", "PatientID", "text"),
    "00100010": Column("study", "PatientName", "name"),
    "00100030": Column("study", "PatientBirthDate", "date"),
    "00100040": Column("study", "PatientSex", "text"),
    "00080020": Column("study", "StudyDate", "date"),
    "00080030": Column("study", "StudyTime", "time"),
    "00080050": Column("study", "AccessionNumber", "text"),
    "00081030": Column("study", "StudyDescription", "text"),
    "00080061": Column("study", "modalities", "list"),
    "0020000E": Column("series", "SeriesInstanceUID", "uid"),
    "00080060": Column("series", "Modality", "text"),
    "0008103E": Column("series", "SeriesDescription", "text"),
    "00200011": Column("series", "SeriesNumber", "int"),
    "00180015": Column("series", "BodyPartExamined", "text"),
    "00080018": Column("instance", "SOPInstanceUID", "uid"),
    "00080016": Column("instance", "SOPClassUID", "uid"),
    "00200013": Column("instance", "InstanceNumber", "int"),
    "00280010": Column("instance", "Rows", "int"),
    "00280011": Column("instance", "Columns", "int"),
    "00280008": Column("instance", "NumberOfFrames", "int"),
    "00280100": Column("instance", "BitsAllocated", "int"),
    "00020010": Column("instance", "TransferSyntaxUID", "uid"),
}

#: Value representations of the computed attributes and the index's int columns.
_VR_OVERRIDES = {
    "00080061": "CS",
    "00081190": "UR",
    "00080056": "CS",
    "00201206": "IS",
    "00201208": "IS",
    "00201209": "IS",
}

_TAG = re.compile(r"[0-9A-Fa-f]{8}")


class UnknownAttribute(ValueError):
    """A query names an attribute that is neither a keyword nor a tag."""


@lru_cache(maxsize=2048)
def resolve(name: str) -> str:
    """The tag ``GGGGEEEE`` (upper-case hex) of a keyword or tag in a query.

    Raises:
        UnknownAttribute: ``name`` is neither a DICOM keyword nor 8 hex digits.
    """
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise UnknownAttribute(f"{name!r} is neither a DICOM keyword nor a tag (GGGGEEEE)")
    return f"{tag:08X}"


def vr_of(tag: str) -> str:
    """The value representation of a tag, for values the server writes itself."""
    if tag in _VR_OVERRIDES:
        return _VR_OVERRIDES[tag]
    try:
        vr = str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]
