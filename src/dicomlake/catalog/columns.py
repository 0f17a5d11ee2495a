"""The columns that say where a row came from: ids, path words, extension, size."""

from __future__ import annotations

import re
from typing import Any

from dicomlake.catalog.refs import FileRef, split_zip_uri
from dicomlake.rows import row_id

_PATH_TAG_SPLIT = re.compile(r"[/\\._\-\s]+")


def path_tags(relative_path: str) -> list[str]:
    r"""Split a relative path into words, for the ``path_tags`` column.

    Folder names often carry the study, the series or the patient's cohort, so the
    parts are worth searching with ``array_contains`` the way pixels users do.

    Args:
        relative_path: A path relative to its source.

    Returns:
        The parts between ``/``, ``\``, ``.``, ``_``, ``-`` and whitespace, empty
        ones dropped.

    Example:
        >>> path_tags("CT head/series_01/IM-0001.dcm")
        ['CT', 'head', 'series', '01', 'IM', '0001', 'dcm']
    """
    return [part for part in _PATH_TAG_SPLIT.split(relative_path) if part]


def extension(path: str) -> str:
    """Lower-case suffix of a path's last component, without the dot.

    For a zip member the member's own suffix counts, not the archive's, so members
    and plain files share one ``extension`` vocabulary.

    Args:
        path: A path or URI (``zip://MEMBER::URI`` included).

    Returns:
        The suffix such as ``'dcm'``, or ``''`` when the name has none.

    Example:
        >>> extension("zip://dir/IM1.DCM::file:///data/x.zip")
        'dcm'
    """
    zipped = split_zip_uri(path)
    if zipped is not None:
        path = zipped[0]
    name = re.split(r"[/\\]", path)[-1]
    stem, dot, suffix = name.lstrip(".").rpartition(".")
    return suffix.lower() if dot and stem else ""


def source_columns(ref: FileRef) -> dict[str, Any]:
    """Return the columns that say where a row came from (every table's first ones)."""
    return {
        "row_id": row_id(ref.path),
        "path": ref.path,
        "relative_path": ref.relative_path,
        "extension": extension(ref.relative_path or ref.path),
        "path_tags": path_tags(ref.relative_path),
        "size": ref.size,
        "modification_time": ref.mtime,
    }
