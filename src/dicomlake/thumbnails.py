"""Thumbnails: draw frames through the display pipeline and store them as PNG rows.

Two ways in: during ingest (``--thumbnails``), where the kernel draws from the file it
already has open, and :func:`build_thumbnails` for a lake that has instances without
thumbnails (a lake ingested without them, or a run that crashed between the two
tables' commits).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa

from dicomlake.catalog import FileRef, open_ref
from dicomlake.dicom.pixels import DisplayFrame, FrameChoice, frame_indices, render
from dicomlake.kernels import MAX_ERROR_CHARS, build_batch, error_text, row_id, tally
from dicomlake.schema import THUMBNAILS_SCHEMA

DEFAULT_SIZE = 256
#: At most this many frames are drawn per instance with ``frame='all'``.
MAX_FRAMES = 1000


@dataclass(frozen=True, slots=True)
class ThumbnailOptions:
    """How to draw: the longest side in pixels, and which frames.

    Raises:
        ValueError: A size outside 16..4096 or an unknown frame choice.
    """

    size: int = DEFAULT_SIZE
    frame: FrameChoice = "middle"

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"thumbnail size must be 16..4096 pixels, got {self.size}")
        if not (self.frame in ("first", "middle", "all") or isinstance(self.frame, int)):
            raise ValueError(
                f"frame must be 'first', 'middle', 'all' or an index, got {self.frame!r}"
            )


def encode_png(display: DisplayFrame, size: int) -> tuple[bytes, int, int]:
    """Scale a display frame to fit ``size`` (aspect kept, physical) and encode PNG.

    Returns:
        (PNG bytes, width, height).
    """
    from PIL import Image

    image = Image.fromarray(display.pixels, mode=display.mode)
    width = float(image.width)
    height = float(image.height) * display.aspect  # non-square pixels
    scale = min(1.0, size / max(width, height))  # never enlarge
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue(), image.width, image.height


def draw(
    fp: BinaryIO,
    *,
    path: str,
    instance_id: int,
    sop_instance_uid: str | None,
    frames: int,
    options: ThumbnailOptions,
    size: int | None = None,
    mtime: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return thumbnail rows for the frames ``options`` selects (never raises)."""
    base = {
        "row_id": instance_id,
        "path": path,
        "SOPInstanceUID": sop_instance_uid,
        "size": size,
        "modification_time": mtime,
    }
    try:
        indices = frame_indices(options.frame, max(frames, 1))[:MAX_FRAMES]
    except ValueError as exc:
        return [{**base, "frame": None, "status": "error", "error": error_text(exc)}]
    rows = []
    for index in indices:
        try:
            display = render(fp, frame=index, max_side=options.size)
            data, width, height = encode_png(display, options.size)
        except Exception as exc:  # one frame that cannot be drawn is an error row
            rows.append({**base, "frame": index, "status": "error", "error": error_text(exc)})
            continue
        rows.append(
            {
                **base,
                "frame": index,
                "width": width,
                "height": height,
                "mode": display.mode,
                "format": "png",
                "data": data,
                "status": "ok",
                "error": None,
            }
        )
    return rows


def thumbnails_batch(rows: Sequence[dict[str, Any]], created_at: dt.datetime) -> pa.RecordBatch:
    """Build a RecordBatch in :data:`THUMBNAILS_SCHEMA` from thumbnail row dicts."""
    return build_batch(rows, THUMBNAILS_SCHEMA, stamps={"created_at": created_at})


class ThumbnailsKernel:
    """The kernel of ``dicomlake thumbnails``: draws instances that lack thumbnails.

    Each ref's ``context`` carries (SOPInstanceUID, NumberOfFrames) from the lake.
    """

    def __init__(
        self,
        options: ThumbnailOptions,
        *,
        frames_of: dict[str, tuple[str | None, int]],
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.options = options
        self.frames_of = frames_of
        self.storage_options = storage_options
        self.created_at = dt.datetime.now(dt.UTC)

    def row(self, ref: FileRef) -> dict[str, Any]:
        """Draw one file (never raises)."""
        uid, frames = self.frames_of.get(ref.path, (None, 1))
        try:
            with open_ref(ref, storage_options=self.storage_options) as fp:
                rows = draw(
                    fp,
                    path=ref.path,
                    instance_id=row_id(ref.path),
                    sop_instance_uid=uid,
                    frames=frames,
                    options=self.options,
                    size=ref.size,
                    mtime=ref.mtime,
                )
        except Exception as exc:
            return self.error_row(ref, error_text(exc))
        return {"thumbnails": rows}

    def error_row(self, ref: FileRef, reason: str) -> dict[str, Any]:
        """The row of a file that could not be opened, timed out or crashed a worker."""
        uid, _frames = self.frames_of.get(ref.path, (None, 1))
        row = {
            "row_id": row_id(ref.path),
            "path": ref.path,
            "SOPInstanceUID": uid,
            "frame": None,
            "status": "error",
            "error": reason[:MAX_ERROR_CHARS],
            "size": ref.size,
            "modification_time": ref.mtime,
        }
        return {"thumbnails": [row]}

    def batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
        """All thumbnail rows of a task as one batch."""
        flat = [thumb for row in rows for thumb in row["thumbnails"]]
        return {"thumbnails": thumbnails_batch(flat, self.created_at)}


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


def _missing(lake: str, storage_options: dict[str, Any] | None) -> pa.Table:
    """Instances with pixel data and no thumbnail row yet."""
    from dicomlake.lake.sql import connect

    con = connect(lake, storage_options=storage_options)
    try:
        has_thumbnails = bool(
            con.sql(
                "SELECT count(*) FROM duckdb_views() WHERE view_name = 'thumbnails'"
            ).fetchall()[0][0]
        )
        anti = "AND row_id NOT IN (SELECT row_id FROM thumbnails)" if has_thumbnails else ""
        return con.sql(
            "SELECT path, relative_path, size, modification_time, SOPInstanceUID, "
            "coalesce(NumberOfFrames, 1) AS frames FROM instances "
            f"WHERE status = 'ok' AND has_pixel_data {anti} ORDER BY path"
        ).to_arrow_table()
    finally:
        con.close()


def _refs(table: pa.Table) -> Iterator[FileRef]:
    for row in table.to_pylist():
        yield FileRef(
            path=row["path"],
            relative_path=row["relative_path"] or "",
            size=row["size"],
            mtime=row["modification_time"],
        )


def build_thumbnails(
    lake: str,
    *,
    size: int = DEFAULT_SIZE,
    frame: FrameChoice = "middle",
    workers: int | None = None,
    file_timeout: float = 120.0,
    task_size: int = 16,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[ThumbnailSummary], None] | None = None,
) -> ThumbnailSummary:
    """Draw thumbnails for every instance of ``lake`` that has pixel data and none yet.

    Args:
        lake: The lake folder or URI.
        size: Longest side of a thumbnail, in pixels.
        frame: Which frames to draw: 'first', 'middle' (default), 'all', or an index.
        workers: Worker processes (default: all cores; 0 runs in this process).
        file_timeout: Seconds one file may take before it becomes an error row.
        task_size: Files per task sent to a worker.
        storage_options: fsspec / delta-rs options for object storage.
        progress: Called with the running summary after each batch.

    Returns:
        The run's summary.

    Raises:
        TableNotFound: The lake has no instances yet.
        ValueError: ``size`` or ``frame`` is out of range.
    """
    from dicomlake.engine.local import LocalEngine, Task
    from dicomlake.lake.delta import ThumbnailWriter

    options = ThumbnailOptions(size=size, frame=frame)
    started = time.monotonic()
    missing = _missing(lake, storage_options)
    frames_of = {
        r["path"]: (r["SOPInstanceUID"], int(r["frames"] or 1)) for r in missing.to_pylist()
    }
    kernel = ThumbnailsKernel(options, frames_of=frames_of, storage_options=storage_options)
    engine = LocalEngine(kernel, workers=workers, file_timeout=file_timeout)
    summary = ThumbnailSummary()

    def tasks() -> Iterator[Task]:
        chunk: list[FileRef] = []
        for ref in _refs(missing):
            chunk.append(ref)
            if len(chunk) >= task_size:
                yield Task(refs=chunk)
                chunk = []
        if chunk:
            yield Task(refs=chunk)

    with ThumbnailWriter(lake, storage_options=storage_options) as writer:
        for task, out in engine.map(tasks()):
            batch = out["thumbnails"]
            writer.write(batch)
            count_thumbnails(summary, batch)
            summary.instances += len(task.refs)
            summary.seconds = time.monotonic() - started
            if progress is not None:
                progress(summary)
    summary.seconds = time.monotonic() - started
    return summary


def count_thumbnails(summary: ThumbnailSummary, batch: pa.RecordBatch) -> None:
    """Add a batch's ok and error rows to ``summary``."""
    counts = tally(batch)
    summary.ok += counts.pop("ok", 0)
    summary.errors.update(counts)
