"""The options of the Basic Application Level Confidentiality Profile (PS3.15 E.3).

Each option is named as the command line takes it and carries its code from PS3.16
CID 7050 "De-identification Method", which the output lists in De-identification
Method Code Sequence (0012,0064) so a reader knows what was kept and what was cleaned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple


class Code(NamedTuple):
    """A coded concept: (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str


#: 113100: always present, the profile that every output conforms to.
BASIC_PROFILE: Final = Code("113100", "DCM", "Basic Application Confidentiality Profile")
#: 113102: no option of ours (faces are not removed), listed for completeness.
CLEAN_RECOGNIZABLE_VISUAL_FEATURES: Final = Code(
    "113102", "DCM", "Clean Recognizable Visual Features Option"
)

RETAIN_SAFE_PRIVATE: Final = "retain-safe-private"
RETAIN_UIDS: Final = "retain-uids"
RETAIN_DEVICE_IDENTITY: Final = "retain-device-identity"
RETAIN_INSTITUTION_IDENTITY: Final = "retain-institution-identity"
RETAIN_PATIENT_CHARACTERISTICS: Final = "retain-patient-characteristics"
RETAIN_FULL_DATES: Final = "retain-longitudinal-full-dates"
RETAIN_MODIFIED_DATES: Final = "retain-longitudinal-modified-dates"
CLEAN_DESCRIPTORS: Final = "clean-descriptors"
CLEAN_STRUCTURED_CONTENT: Final = "clean-structured-content"
CLEAN_GRAPHICS: Final = "clean-graphics"
CLEAN_PIXEL_DATA: Final = "clean-pixel-data"

#: Every option, in PS3.15's order of sections E.3.1 to E.3.10, with its CID 7050 code.
OPTIONS: Final[dict[str, Code]] = {
    CLEAN_PIXEL_DATA: Code("113101", "DCM", "Clean Pixel Data Option"),
    CLEAN_GRAPHICS: Code("113103", "DCM", "Clean Graphics Option"),
    CLEAN_STRUCTURED_CONTENT: Code("113104", "DCM", "Clean Structured Content Option"),
    CLEAN_DESCRIPTORS: Code("113105", "DCM", "Clean Descriptors Option"),
    RETAIN_FULL_DATES: Code(
        "113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    RETAIN_MODIFIED_DATES: Code(
        "113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    RETAIN_PATIENT_CHARACTERISTICS: Code("113108", "DCM", "Retain Patient Characteristics Option"),
    RETAIN_DEVICE_IDENTITY: Code("113109", "DCM", "Retain Device Identity Option"),
    RETAIN_INSTITUTION_IDENTITY: Code("113112", "DCM", "Retain Institution Identity Option"),
    RETAIN_UIDS: Code("113110", "DCM", "Retain UIDs Option"),
    RETAIN_SAFE_PRIVATE: Code("113111", "DCM", "Retain Safe Private Option"),
}

#: Pairs of options that cannot be given together (PS3.15 E.3.6: dates are either kept
#: as they are or shifted, not both).
EXCLUSIVE: Final[tuple[frozenset[str], ...]] = (
    frozenset({RETAIN_FULL_DATES, RETAIN_MODIFIED_DATES}),
)


def parse_options(names: Iterable[str]) -> frozenset[str]:
    """Return the options named, checked: a typo must not silently weaken the profile.

    Raises:
        ValueError: A name is not an option (the message lists the valid ones), or two
            names exclude each other.
    """
    chosen: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if name not in OPTIONS:
            valid = ", ".join(sorted(OPTIONS))
            raise ValueError(f"unknown de-identification option {raw!r}; valid: {valid}")
        chosen.add(name)
    for pair in EXCLUSIVE:
        if pair <= chosen:
            a, b = sorted(pair)
            raise ValueError(f"options {a} and {b} exclude each other")
    return frozenset(chosen)


def method_codes(options: frozenset[str]) -> list[Code]:
    """The CID 7050 codes for an output made with these options, 113100 first."""
    return [BASIC_PROFILE] + [code for name, code in OPTIONS.items() if name in options]
