"""Batch kernels: file references in, one Arrow RecordBatch in the lake's schema out.

Kernels are pure functions with no engine inside, so the local process pool and the
Spark engine call the same code and produce identical rows. A kernel never raises for
a bad file: the row carries ``status`` and ``error`` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from dicomlake.catalog import FileRef, Prefetcher, extension, local_file, open_ref, path_tags
from dicomlake.dicom import native
from dicomlake.dicom.header import Header, NotDicom, read_header
from dicomlake.dicom.tags import promoted_values
from dicomlake.killpoints import kill_point
from dicomlake.schema import INSTANCES_SCHEMA, PROMOTED_TAGS

if TYPE_CHECKING:
    from dicomlake.thumbnails import ThumbnailOptions

log = logging.getLogger(__name__)

#: Longest error text kept in a row; a message is a hint, not a log.
MAX_ERROR_CHARS = 500
BULK_THRESHOLD = 1024
#: Which header parser to use: the native fast path where it can, or pydicom always.
PARSERS = ("auto", "native", "pydicom")


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


def _native_header(ref: FileRef, bulk_threshold: int) -> Header | None:
    """The header through the native parser, or None when it declines or cannot run."""
    local = local_file(ref)
    if local is None or not native.available():
        return None
    result = native.parse_file(
        local, uri=ref.path, bulk_threshold=bulk_threshold, decode_meta=False
    )
    return None if isinstance(result, str) else result


def extract_row(
    ref: FileRef,
    *,
    bulk_threshold: int = BULK_THRESHOLD,
    storage_options: dict[str, Any] | None = None,
    thumbnails: ThumbnailOptions | None = None,
    parser: str = "auto",
) -> dict[str, Any]:
    """Parse one file into a row dict with the lake's columns (never raises).

    The native parser reads local files when it is built and ``parser`` allows it;
    whatever it declines (and every zip member or object) goes through pydicom. The
    ``parser`` column says which one read the file. With ``thumbnails``, the row also
    carries ``_thumbnails``: the thumbnail rows drawn from the same file.
    """
    row = source_columns(ref)
    row["warnings"] = None
    if ref.listing_error:
        row.update(status="error", error=ref.listing_error[:MAX_ERROR_CHARS])
        return row
    try:
        row["parser"] = "native"  # set first: the native parser may refuse the file
        header = None if parser == "pydicom" else _native_header(ref, bulk_threshold)
        if header is None:
            row["parser"] = "pydicom"
        if header is not None and thumbnails is None and row["size"] is not None:
            return _ok_row(row, header, promoted=True)
        with open_ref(ref, storage_options=storage_options) as fp:
            if header is None:
                header = read_header(fp, uri=ref.path, bulk_threshold=bulk_threshold)
            if row["size"] is None:
                row["size"] = fp.seek(0, 2)
            row.update(promoted_values(header.tags(), header.warnings))
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
        return _ok_row(row, header, promoted=False)
    except NotDicom as exc:
        row.update(status="not_dicom", error=error_text(exc))
        return row
    except Exception as exc:  # one bad file never stops a run
        row.update(status="error", error=error_text(exc))
        return row


def _ok_row(row: dict[str, Any], header: Header, *, promoted: bool) -> dict[str, Any]:
    """Fill an ``ok`` row from a parsed header (and its promoted tags, unless done)."""
    warnings = header.warnings
    if promoted:
        row.update(promoted_values(header.tags(), warnings))
    row.update(
        status="ok",
        error=None,
        warnings=warnings or None,
        has_pixel_data=header.has_pixel_data,
        meta=header.meta_json or meta_text(header.meta),
    )
    return row


def meta_text(meta: dict[str, Any]) -> str:
    """The header's DICOM JSON as text.

    orjson, unless a value is an integer beyond 64 bits (an IS of 20 digits), which
    only the standard library writes; JSON numbers have no size limit.
    """
    try:
        return orjson.dumps(meta).decode("utf-8")
    except TypeError:
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":"))


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


#: This process's read-ahead threads, started by the first task that wants them.
_prefetcher: Prefetcher | None = None


@dataclass(frozen=True, slots=True)
class ShardTarget:
    """Where workers write their own Parquet shards: a table and this run's job id."""

    table_uri: str
    job_id: str
    storage_options: Any = None


class InstancesKernel:
    """The ``instances`` kernel as the engines run it: picklable, options bound.

    Args:
        bulk_threshold: Binary values longer than this many bytes become BulkDataURIs.
        storage_options: fsspec options for object-storage sources.
        ingested_at: The run's timestamp, the same on every row of a run.
        thumbnails: Also draw thumbnails from the same read of each file.
        parser: 'auto' (native where it can, else pydicom), 'native' or 'pydicom'.
        shards: Where :meth:`ship` writes the rows of new files; None sends them back.
        prefetch: Read local files ahead on background threads (see :meth:`prepare`).

    Raises:
        ValueError: ``parser`` is not one of :data:`PARSERS`.
    """

    def __init__(
        self,
        *,
        bulk_threshold: int = BULK_THRESHOLD,
        storage_options: dict[str, Any] | None = None,
        ingested_at: dt.datetime | None = None,
        thumbnails: ThumbnailOptions | None = None,
        parser: str = "auto",
        shards: ShardTarget | None = None,
        prefetch: bool = True,
    ) -> None:
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {', '.join(PARSERS)}; got {parser!r}")
        self.bulk_threshold = bulk_threshold
        self.storage_options = storage_options
        self.ingested_at = ingested_at or dt.datetime.now(dt.UTC)
        self.thumbnails = thumbnails
        self.parser = parser
        self.shards = shards
        self.prefetch = prefetch

    def prepare(self, refs: Sequence[FileRef]) -> None:
        """Before a task: start reading its local files ahead (a :class:`Prefetcher`).

        On cold or network storage the files' opens and first reads then overlap each
        other and the parsing; on a warm page cache it costs a few microseconds a file.
        """
        if self.prefetch:
            global _prefetcher
            if _prefetcher is None:
                _prefetcher = Prefetcher()
            _prefetcher.submit(refs)

    def row(self, ref: FileRef) -> dict[str, Any]:
        """Return the row of one file (never raises)."""
        kill_point("parse")
        return extract_row(
            ref,
            bulk_threshold=self.bulk_threshold,
            storage_options=self.storage_options,
            thumbnails=self.thumbnails,
            parser=self.parser,
        )

    def batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
        """Return rows as ``{"instances": batch}`` (and ``"thumbnails"`` when drawn)."""
        out = {"instances": rows_to_batch(rows, self.ingested_at)}
        if self.thumbnails is not None:
            from dicomlake.thumbnails import thumbnails_batch

            drawn = [thumb for row in rows for thumb in row.get("_thumbnails", ())]
            out["thumbnails"] = thumbnails_batch(drawn, self.ingested_at)
        return out

    def ship(self, out: dict[str, pa.RecordBatch], replace: Any) -> dict[str, Any]:
        """In the worker: store new rows as a Parquet shard, send back only a summary.

        With :attr:`shards` set, the ``instances`` rows of a task of new files (not
        ``replace``) are written as one data file in the table's folder; what goes
        back to the coordinator is that file's add-action (``"shards"``) and the rows'
        ``status``/``error``/``parser`` for counting. Changed files' rows still go back
        whole (the coordinator merges them), and so do the rows of a shard that could
        not be written: the coordinator then writes them itself, or reports why not.
        """
        batch = out["instances"]
        if self.shards is None or replace or not batch.num_rows:
            return out
        from dicomlake.lake.shards import shard_name, write_shard

        target = self.shards
        try:
            action = write_shard(
                target.table_uri,
                pa.Table.from_batches([batch]),
                shard_name(target.job_id, f"w{os.getpid()}"),
                storage_options=target.storage_options,
            )
        except Exception as exc:  # the coordinator's own write will say what is wrong
            log.warning("could not write a shard to %s (%s)", target.table_uri, error_text(exc))
            return out
        kill_point("shard")
        return {**out, "instances": batch.select(["status", "error", "parser"]), "shards": [action]}

    def error_row(self, ref: FileRef, reason: str) -> dict[str, Any]:
        """Return the error row of a file the engine gave up on (timeout, crash)."""
        row = source_columns(ref)
        row.update(status="error", error=reason[:MAX_ERROR_CHARS], warnings=None)
        return row


__all__ = [
    "PROMOTED_TAGS",
    "InstancesKernel",
    "ShardTarget",
    "extract_instances",
    "extract_row",
    "row_id",
    "rows_to_batch",
]
