"""``DicomPatcher``: frames tiled into patches, in Python, on the local engine.

The tiling is :mod:`dicomlake.kernels.patches`; writing the ``patches`` table is
:mod:`dicomlake.jobs.patches`. The Spark :class:`dicomlake.spark.dicom.DicomPatcher`
runs the same kernel in ``mapInArrow``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from dicomlake.jobs.patches import DEFAULT_SQL, PatchSummary, write_patches
from dicomlake.kernels.patches import PatchOptions, PatchSource, patch_instance, patches_batch
from dicomlake.ml.selection import lake_location

if TYPE_CHECKING:
    from dicomlake._types import FrameChoice, StorageOptions
    from dicomlake.ml.selection import LakeLike


class DicomPatcher:
    """Tile frames into patches and write them as the lake's ``patches`` table.

    Args:
        size: Side of a patch in pixels.
        stride: Step between patches (default ``size``; smaller overlaps; at most
            ``size``).
        min_tissue: Patches whose ``tissue_fraction`` is below this are not written.
        store_pixels: Also store each patch's float32 values (physical units, channels
            first) in ``pixels``; otherwise a dataset reads them from the file.
        frames: Which frames of a multi-frame image: 'all', 'first', 'middle' or an
            index.

    Raises:
        ValueError: An option is out of range.

    Example:
        >>> patcher = DicomPatcher(size=256, min_tissue=0.5)  # doctest: +SKIP
        >>> patcher.write("lake", "SELECT path FROM instances WHERE Modality = 'SM'")
    """

    def __init__(
        self,
        size: int = 256,
        stride: int | None = None,
        min_tissue: float = 0.0,
        store_pixels: bool = False,
        frames: FrameChoice = "all",
    ) -> None:
        self.options = PatchOptions(
            size=size,
            stride=stride,
            min_tissue=min_tissue,
            store_pixels=store_pixels,
            frames=frames,
        )

    def patch(self, path: str, *, storage_options: StorageOptions = None) -> pa.Table:
        """The patch rows of one file, in :data:`~dicomlake.schema.PATCHES_SCHEMA`, unwritten.

        A file that is not DICOM or has no pixel data gives no rows.
        """
        result = patch_instance(
            PatchSource(path, frames=None), self.options, storage_options=storage_options
        )
        batch = patches_batch(result.rows, dt.datetime.now(dt.UTC))
        return pa.Table.from_batches([batch])

    def write(
        self,
        lake: LakeLike,
        sql: str = DEFAULT_SQL,
        *,
        workers: int | None = None,
        storage_options: StorageOptions = None,
        file_timeout: float = 300.0,
        progress: Callable[[PatchSummary], None] | None = None,
    ) -> PatchSummary:
        """Tile the instances ``sql`` selects and write their rows to ``<lake>/patches``.

        :func:`dicomlake.jobs.patches.write_patches` with these options; ``lake`` may
        also be a :class:`~dicomlake.Lake`, whose storage settings are the default.

        Raises:
            QueryError: The query fails or returns no ``path``.
            TableNotFound: Nothing has been ingested into the lake.
            LakeError: The patches table cannot be written.
        """
        path, options = lake_location(lake, storage_options)
        return write_patches(
            path,
            self.options,
            sql,
            workers=workers,
            storage_options=options,
            file_timeout=file_timeout,
            progress=progress,
        )

    def __repr__(self) -> str:
        o = self.options
        return (
            f"DicomPatcher(size={o.size}, stride={o.step}, min_tissue={o.min_tissue}, "
            f"store_pixels={o.store_pixels}, frames={o.frames!r})"
        )
