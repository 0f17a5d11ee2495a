"""Batch kernels: file references in, one Arrow RecordBatch in the lake's schema out.

Kernels are pure functions with no engine inside, so the local process pool and the
Spark engine call the same code and produce identical rows. A kernel never raises for
a bad file: the row carries ``status`` and ``error`` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from dicomlake.catalog import FileRef, extension, open_ref, path_tags
from dicomlake.dicom.header import NotDicom, read_header
from dicomlake.dicom.tags import promoted_values
from dicomlake.schema import INSTANCES_SCHEMA, PROMOTED_TAGS

if TYPE_CHECKING:
    from dicomlake.thumbnails import ThumbnailOptions

#: Longest error text kept in a row; a message is a hint, not a log.
MAX_ERROR_CHARS = 500
BULK_THRESHOLD = 1024


def row_id(path: str) -> int:
    """Return the stable 64-bit row id of ``path`` (signed, from BLAKE2b)."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def error_text(exc: BaseException) -> str:
    """Return a short ``Class: message`` text for an error row."""
    message = " ".join(str(exc).split())  # one line: decoders list causes on several
    name = type(exc).__name__
    if type(exc).__module__ == "zlib":  # zlib.error: a corrupt compressed zip member
        name = "ZlibError"
    text = f"{name}: {message}" if message else name
    return text[:MAX_ERROR_CHARS]


def tally(batch: pa.RecordBatch) -> Counter[str]:
    """Count a batch's rows: ``ok``, ``not_dicom``, and errors by class.

    The class is the text before the first ``:`` of ``error`` (see :func:`error_text`).
    """
    counts: Counter[str] = Counter()
    statuses = batch.column("status").to_pylist()
    for status, error in zip(statuses, batch.column("error").to_pylist(), strict=True):
        if status in ("ok", "not_dicom"):
            counts[status] += 1
        else:
            counts[(error or "Error").split(":", 1)[0]] += 1
    return counts


def source_columns(ref: FileRef) -> dict[str, Any]:
    """Return the columns that say where a row came from."""
    return {
        "row_id": row_id(ref.path),
        "path": ref.path,
        "relative_path": ref.relative_path,
        "extension": extension(ref.relative_path or ref.path),
        "path_tags": path_tags(ref.relative_path),
        "size": ref.size,
        "modification_time": ref.mtime,
    }


def extract_row(
    ref: FileRef,
    *,
    bulk_threshold: int = BULK_THRESHOLD,
    storage_options: dict[str, Any] | None = None,
    thumbnails: ThumbnailOptions | None = None,
) -> dict[str, Any]:
    """Parse one file into a row dict with the lake's columns (never raises).

    With ``thumbnails``, the row also carries ``_thumbnails``: the thumbnail rows
    drawn from the same open file (the file is read once).
    """
    row = source_columns(ref)
    row["warnings"] = None
    if ref.listing_error:
        row.update(status="error", error=ref.listing_error[:MAX_ERROR_CHARS])
        return row
    try:
        with open_ref(ref, storage_options=storage_options) as fp:
            header = read_header(fp, uri=ref.path, bulk_threshold=bulk_threshold)
            if row["size"] is None:
                row["size"] = fp.seek(0, 2)
            warnings = header.warnings
            row.update(promoted_values(header.meta, warnings))
            if thumbnails is not None and header.has_pixel_data:
                from dicomlake.thumbnails import draw

                row["_thumbnails"] = draw(
                    fp,
                    path=ref.path,
                    instance_id=row["row_id"],
                    sop_instance_uid=row["SOPInstanceUID"],
                    frames=row["NumberOfFrames"] or 1,
                    options=thumbnails,
                    size=row["size"],
                    mtime=ref.mtime,
                )
    except NotDicom as exc:
        row.update(status="not_dicom", error=error_text(exc))
        return row
    except Exception as exc:  # one bad file never stops a run
        row.update(status="error", error=error_text(exc))
        return row
    row.update(
        status="ok",
        error=None,
        warnings=warnings or None,
        has_pixel_data=header.has_pixel_data,
        meta=orjson.dumps(header.meta).decode("utf-8"),
    )
    return row


def build_batch(
    rows: Sequence[dict[str, Any]], schema: pa.Schema, *, stamps: dict[str, Any]
) -> pa.RecordBatch:
    """Build a RecordBatch in ``schema`` from row dicts; ``stamps`` fill whole columns.

    Keys a row lacks become nulls; keys the schema lacks are ignored (private ones
    such as ``_thumbnails`` included).
    """
    arrays = []
    for field in schema:
        if field.name in stamps:
            values: list[Any] = [stamps[field.name]] * len(rows)
        else:
            values = [row.get(field.name) for row in rows]
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rows_to_batch(rows: Sequence[dict[str, Any]], ingested_at: dt.datetime) -> pa.RecordBatch:
    """Build a RecordBatch in :data:`INSTANCES_SCHEMA` from row dicts."""
    return build_batch(rows, INSTANCES_SCHEMA, stamps={"ingested_at": ingested_at})


def extract_instances(
    refs: Sequence[FileRef],
    *,
    bulk_threshold: int = BULK_THRESHOLD,
    storage_options: dict[str, Any] | None = None,
    ingested_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Parse a batch of files into one RecordBatch of ``instances`` rows.

    Args:
        refs: The files to parse.
        bulk_threshold: Binary values longer than this many bytes become BulkDataURIs.
        storage_options: fsspec options for object-storage sources.
        ingested_at: The run's timestamp (now, by default).

    Returns:
        One row per reference, in order, in :data:`dicomlake.schema.INSTANCES_SCHEMA`.
    """
    kernel = InstancesKernel(
        bulk_threshold=bulk_threshold, storage_options=storage_options, ingested_at=ingested_at
    )
    return kernel.batch([kernel.row(ref) for ref in refs])["instances"]


class InstancesKernel:
    """The ``instances`` kernel as the engines run it: picklable, options bound.

    Args:
        bulk_threshold: Binary values longer than this many bytes become BulkDataURIs.
        storage_options: fsspec options for object-storage sources.
        ingested_at: The run's timestamp, the same on every row of a run.
    """

    def __init__(
        self,
        *,
        bulk_threshold: int = BULK_THRESHOLD,
        storage_options: dict[str, Any] | None = None,
        ingested_at: dt.datetime | None = None,
        thumbnails: ThumbnailOptions | None = None,
    ) -> None:
        self.bulk_threshold = bulk_threshold
        self.storage_options = storage_options
        self.ingested_at = ingested_at or dt.datetime.now(dt.UTC)
        self.thumbnails = thumbnails

    def row(self, ref: FileRef) -> dict[str, Any]:
        """Return the row of one file (never raises)."""
        return extract_row(
            ref,
            bulk_threshold=self.bulk_threshold,
            storage_options=self.storage_options,
            thumbnails=self.thumbnails,
        )

    def batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
        """Return rows as ``{"instances": batch}`` (and ``"thumbnails"`` when drawn)."""
        out = {"instances": rows_to_batch(rows, self.ingested_at)}
        if self.thumbnails is not None:
            from dicomlake.thumbnails import thumbnails_batch

            drawn = [thumb for row in rows for thumb in row.get("_thumbnails", ())]
            out["thumbnails"] = thumbnails_batch(drawn, self.ingested_at)
        return out

    def error_row(self, ref: FileRef, reason: str) -> dict[str, Any]:
        """Return the error row of a file the engine gave up on (timeout, crash)."""
        row = source_columns(ref)
        row.update(status="error", error=reason[:MAX_ERROR_CHARS], warnings=None)
        return row


__all__ = [
    "PROMOTED_TAGS",
    "InstancesKernel",
    "extract_instances",
    "extract_row",
    "row_id",
    "rows_to_batch",
]
