"""The UID grammar of PS3.5 §9.1: digits in dot-separated components, at most 64.

UIDs from requests (DICOMweb paths, queries, uploads) and from files (a de-identified
copy is named by its UIDs) are checked with it before they name anything on disk.
"""

from __future__ import annotations

import re

#: Longest UID the standard allows.
MAX_UID_LENGTH = 64

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_uid(text: str) -> bool:
    """Whether ``text`` is a UID: digits and dots, no empty component, <= 64 chars.

    Example:
        >>> is_uid("1.2.840.10008.5.1.4.1.1.2"), is_uid("../1.2"), is_uid("1..2")
        (True, False, False)
    """
    return len(text) <= MAX_UID_LENGTH and _UID.fullmatch(text) is not None
