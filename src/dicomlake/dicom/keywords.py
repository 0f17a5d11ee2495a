"""DICOM keywords and their tags, read from the package rather than from pydicom.

Importing pydicom takes a third of a second (it loads its pixel decoders), which the
native parser's path, ``dicomlake sql`` and worker start-up need not pay to turn a few
keywords into tags. ``lake/dicom_keywords.txt`` is pydicom's dictionary written out by
``scripts/gen_dicom_keywords.py`` (a test fails when the two drift).
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def keyword_table() -> tuple[tuple[str, str], ...]:
    """Every (keyword, tag as ``GGGGEEEE``) pair of pydicom's dictionary, in its order."""
    text = resources.files("dicomlake.lake").joinpath("dicom_keywords.txt").read_text("utf-8")
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            keyword, tag = line.split("\t")
            pairs.append((keyword, tag))
    return tuple(pairs)


@functools.cache
def _tags() -> dict[str, int]:
    return {keyword: int(tag, 16) for keyword, tag in keyword_table() if keyword}


def tag_for_keyword(keyword: str) -> int | None:
    """The tag of a DICOM keyword as an int, or None when it is not one.

    Example:
        >>> hex(tag_for_keyword("PatientID"))
        '0x100020'
    """
    return _tags().get(keyword)
