"""Stub of the optional C extension ``dicomlake.dicom._native`` (its source: csrc/header.c)."""

from collections.abc import Iterable
from typing import Any

from typing_extensions import Buffer

MAX_DEPTH: int

class Declined(Exception):
    """The native parser does not handle this file exactly; ``args[0]`` is the reason."""

def parse(
    buffer: Buffer, uri: str, bulk_threshold: int, file_size: int = -1
) -> tuple[str, bool, list[str], dict[str, Any]]:
    """Parse a DICOM file held in ``buffer`` (whole, or its first bytes) into DICOM JSON.

    ``file_size`` (-1: the buffer's length) is the size of the file the buffer begins.
    Returns (meta_json, has_pixel_data, warnings, promoted).
    """

def set_promoted(tags: Iterable[int]) -> None:
    """Set the top-level tags whose elements ``parse`` also returns as objects."""
