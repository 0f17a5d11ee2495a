"""The ``volumes`` table from Python: series geometry checked without reading pixels.

The work is :mod:`dicomlake.jobs.volumes`; this face also takes a
:class:`~dicomlake.Lake`, whose storage settings it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomlake.jobs.volumes import VolumesSummary
from dicomlake.jobs.volumes import build_volumes as _build_volumes
from dicomlake.ml.selection import lake_location

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions
    from dicomlake.dicom.geometry import GeometryTolerance
    from dicomlake.ml.selection import LakeLike


def build_volumes(
    lake: LakeLike,
    where: str | None = None,
    *,
    storage_options: StorageOptions = None,
    tolerance: GeometryTolerance | float | None = None,
) -> VolumesSummary:
    """Check every series' slice geometry and overwrite the lake's ``volumes`` table.

    See :func:`dicomlake.jobs.volumes.build_volumes`; ``lake`` may also be a
    :class:`~dicomlake.Lake`.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The ``volumes`` table cannot be written.
    """
    path, options = lake_location(lake, storage_options)
    return _build_volumes(path, where, storage_options=options, tolerance=tolerance)
