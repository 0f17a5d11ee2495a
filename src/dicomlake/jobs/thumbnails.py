"""The thumbnails job: draw every instance of a lake that has pixel data and no thumbnail.

Waveform instances (ECGs: no pixel data, a Waveform Sequence) are drawn too, as a plot;
ingest draws them here, not while reading (the instances kernel draws pixels only).

For a lake ingested without ``--thumbnails``, or a run that died between the two
tables' commits; ingest with thumbnails also ends with it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from dicomlake.dicom.waveform import AUDIO_SOP_CLASSES
from dicomlake.jobs.runner import refs_of, run_kernel
from dicomlake.kernels.thumbnails import DEFAULT_SIZE, ThumbnailOptions, ThumbnailsKernel
from dicomlake.lake.location import THUMBNAILS_TABLE
from dicomlake.lake.writer import TableWriter
from dicomlake.rows import tally

if TYPE_CHECKING:
    from dicomlake._types import Batches, FrameChoice, StorageOptions
    from dicomlake.engine.local import Task


@dataclass
class ThumbnailSummary:
    """What a thumbnails run did."""

    instances: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def thumbnails_per_second(self) -> float:
        """Thumbnails drawn per second of wall time."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0


#: Waveform instances drawn: a waveform SOP class (not audio) with a Waveform Sequence
#: (5400,0100); the cheap SOP class test narrows the rows whose ``meta`` is parsed.
WAVEFORM_SQL = (
    "SOPClassUID LIKE '1.2.840.10008.5.1.4.1.1.9.%' "
    f"AND SOPClassUID NOT IN ({', '.join(repr(uid) for uid in sorted(AUDIO_SOP_CLASSES))}) "
    """AND json_exists(meta, '$."54000100"')"""
)


def missing_thumbnails(lake: str, storage_options: StorageOptions = None) -> pa.Table:
    """Instances with pixel data or a waveform whose thumbnails are missing, by path.

    Missing: no thumbnail row yet, or rows drawn from the file before it changed
    (their size or modification time is not the instance's: a changed file ingested
    without ``--thumbnails``). The ``waveform`` column is true for those drawn as a
    waveform plot; ``redraw`` for those that have old rows to replace.

    Raises:
        TableNotFound: The lake has no instances yet.
    """
    from dicomlake.lake.sql import connect

    con = connect(lake, storage_options=storage_options)
    try:
        has_thumbnails = bool(
            con.sql(
                "SELECT count(*) FROM duckdb_views() WHERE view_name = 'thumbnails'"
            ).fetchall()[0][0]
        )
        select = (
            "SELECT path, relative_path, i.size, i.modification_time, SOPInstanceUID, "
            "coalesce(NumberOfFrames, 1) AS frames, NOT has_pixel_data AS waveform, "
        )
        where = f"WHERE status = 'ok' AND (has_pixel_data OR ({WAVEFORM_SQL}))"
        if not has_thumbnails:
            return con.sql(
                f"{select} false AS redraw FROM instances i {where} ORDER BY path"
            ).to_arrow_table()
        return con.sql(
            f"{select} d.row_id IS NOT NULL AS redraw FROM instances i "
            "LEFT JOIN (SELECT DISTINCT row_id FROM thumbnails) d USING (row_id) "
            f"{where} AND NOT EXISTS (SELECT 1 FROM thumbnails t WHERE t.row_id = i.row_id "
            "AND t.size IS NOT DISTINCT FROM i.size "
            "AND t.modification_time IS NOT DISTINCT FROM i.modification_time) "
            "ORDER BY path"
        ).to_arrow_table()
    finally:
        con.close()


def build_thumbnails(
    lake: str,
    *,
    size: int = DEFAULT_SIZE,
    frame: FrameChoice = "middle",
    workers: int | None = None,
    file_timeout: float = 120.0,
    task_size: int = 16,
    storage_options: StorageOptions = None,
    progress: Callable[[ThumbnailSummary], None] | None = None,
) -> ThumbnailSummary:
    """Draw thumbnails for every instance of ``lake`` with pixels or a waveform and none yet.

    An instance whose thumbnails were drawn from its file before the file changed
    (see :func:`missing_thumbnails`) is drawn again: all its old rows are replaced.

    Args:
        lake: The lake folder or URI.
        size: Longest side of a thumbnail, in pixels.
        frame: Which frames to draw: 'first', 'middle' (default), 'all', or an index.
        workers: Worker processes (default: all cores; 0 runs in this process).
        file_timeout: Seconds one file may take before it becomes an error row.
        task_size: Files per task sent to a worker.
        storage_options: Settings for object storage.
        progress: Called with the running summary after each batch.

    Returns:
        The run's summary.

    Raises:
        TableNotFound: The lake has no instances yet.
        LakeError: The thumbnails table cannot be written.
        ValueError: ``size`` or ``frame`` is out of range.
    """
    options = ThumbnailOptions(size=size, frame=frame)
    started = time.monotonic()
    missing = missing_thumbnails(lake, storage_options)
    rows = missing.to_pylist()
    frames_of = {r["path"]: (r["SOPInstanceUID"], int(r["frames"] or 1)) for r in rows}
    waveforms = {r["path"] for r in rows if r["waveform"]}
    kernel = ThumbnailsKernel(
        options, frames_of=frames_of, waveforms=waveforms, storage_options=storage_options
    )
    summary = ThumbnailSummary()

    def count(task: Task, out: Batches) -> None:
        counts = tally(out[THUMBNAILS_TABLE])
        summary.ok += counts.pop("ok", 0)
        summary.errors.update(counts)
        summary.instances += len(task.refs)
        summary.seconds = time.monotonic() - started
        if progress is not None:
            progress(summary)

    redraw = pc.fill_null(missing.column("redraw"), False)
    # new ones are appended; old drawings are replaced, all of an instance's frames
    # (a replace by instance rewrites the table's files that hold them: kept apart)
    for chosen, by_instance in (
        (missing.filter(pc.invert(redraw)), False),
        (missing.filter(redraw), True),
    ):
        if not chosen.num_rows:
            continue
        run_kernel(
            kernel,
            refs_of(chosen),
            TableWriter(lake, THUMBNAILS_TABLE, max_rows=2000, storage_options=storage_options),
            workers=workers,
            file_timeout=file_timeout,
            task_size=task_size,
            by_instance=by_instance,
            on_result=count,
        )
    summary.seconds = time.monotonic() - started
    return summary
