"""The ``instances`` kernel: one file's header as one row of the lake's column contract.

The native parser reads the files it handles exactly (local files mapped, zip members
and objects from their first bytes); what it declines goes through pydicom. Both give
the same ``meta`` and typed columns; the ``parser`` column says which one read the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final, get_args

import orjson
import pyarrow as pa

from dicomlake._types import Batches, Parser, Row, StorageOptions
from dicomlake.catalog import FileRef, local_file, open_ref, source_columns
from dicomlake.catalog.opening import open_sized
from dicomlake.catalog.zips import read_to_end
from dicomlake.dicom import native
from dicomlake.dicom.header import Header, read_header
from dicomlake.dicom.tags import promoted_values
from dicomlake.errors import HeaderTooLarge, NotDicom, StorageError
from dicomlake.kernels.acquisition import acquisition_batch, acquisition_row
from dicomlake.killpoints import kill_point
from dicomlake.rows import build_batch, clip_error, error_text, flatten
from dicomlake.schema import INSTANCES_SCHEMA

if TYPE_CHECKING:
    from dicomlake.kernels.thumbnails import ThumbnailOptions

#: Binary values longer than this many bytes become BulkDataURIs (PS3.18 Annex F).
BULK_THRESHOLD: Final = 1024
#: Which header parser to use: the native fast path where it can, or pydicom always.
PARSERS: Final = get_args(Parser)


@dataclass(slots=True)
class _NativeRead:
    """What the native parser made of a file: its header, or the bytes it read whole.

    ``header`` is None when it declined; then ``data`` holds the whole file when the
    first read took it all (a small zip member or object), for pydicom to read instead
    of opening, inflating or fetching it again.
    """

    header: Header | None
    size: int | None = None
    data: bytes | None = None


def _native_header(
    ref: FileRef, bulk_threshold: int, storage_options: StorageOptions
) -> _NativeRead:
    """The header through the native parser, the size it read (None: a local file's).

    A local file is mapped; a zip member or an object is parsed from its first bytes
    (:func:`native.parse_stream`): an object's pixel data is never fetched. A zip
    member the parser accepts is then inflated to its end, through the zip bomb guards
    and its CRC check, as the pydicom path does. An error while reading a zip member or
    an object (a damaged member) leaves the file to the pydicom path, which reads it
    again and gives the row it always gave; but storage that still fails after its
    retries is the row's error at once (trying again would double a hung read's time).
    """
    if not native.available():
        return _NativeRead(None)
    local = local_file(ref)
    if local is not None:
        result = native.parse_file(
            local, uri=ref.path, bulk_threshold=bulk_threshold, decode_meta=False
        )
        return _NativeRead(None if isinstance(result, str) else result)
    held = bytearray()
    try:
        with open_sized(ref, storage_options=storage_options) as (fp, size):
            result = native.parse_stream(
                fp, size, uri=ref.path, bulk_threshold=bulk_threshold, decode_meta=False, held=held
            )
            if isinstance(result, str) and len(held) < size:
                return _NativeRead(None, size)
            read_to_end(fp)  # a zip member's limits and CRC, as the pydicom path checks them
            if isinstance(result, str):
                return _NativeRead(None, size, bytes(held))
    except (HeaderTooLarge, StorageError):
        raise  # the parser's verdict, as on a local file; storage that failed its retries
    except Exception:  # reading again gives the pydicom path's error row
        return _NativeRead(None)
    return _NativeRead(result, size)


def extract_row(
    ref: FileRef,
    *,
    bulk_threshold: int = BULK_THRESHOLD,
    storage_options: StorageOptions = None,
    thumbnails: ThumbnailOptions | None = None,
    parser: Parser = "auto",
    acquisition: bool = False,
) -> Row:
    """Parse one file into a row dict with the lake's columns (never raises).

    The native parser reads the file when it is built and ``parser`` allows it (a zip
    member or an object from its first bytes); whatever it declines goes through
    pydicom. The ``parser`` column says which one read the file. With ``thumbnails``,
    the row also carries ``_thumbnails``: the thumbnail rows drawn from the same file;
    with ``acquisition``, an ``ok`` row carries ``_acquisition``, its row of the
    ``acquisition`` table.
    """
    row = source_columns(ref)
    row["warnings"] = None
    if ref.listing_error:
        row.update(status="error", error=clip_error(ref.listing_error))
        return row
    try:
        row["parser"] = "native"  # set first: the native parser may refuse the file
        read = _NativeRead(None)
        if parser != "pydicom":
            read = _native_header(ref, bulk_threshold, storage_options)
        header = read.header
        if header is None:
            row["parser"] = "pydicom"
        if row["size"] is None:
            row["size"] = read.size
        if header is not None and thumbnails is None and row["size"] is not None:
            return _ok_row(row, header, promoted=True, acquisition=acquisition)
        with _reopen(ref, storage_options, read.data) as fp:
            if header is None:
                header = read_header(fp, uri=ref.path, bulk_threshold=bulk_threshold)
            if row["size"] is None:
                row["size"] = fp.seek(0, 2)
            row.update(promoted_values(header.tags(), header.warnings))
            if thumbnails is not None and header.has_pixel_data:
                from dicomlake.kernels.thumbnails import thumbnail_rows

                row["_thumbnails"] = thumbnail_rows(
                    fp,
                    path=ref.path,
                    instance_id=row["row_id"],
                    sop_instance_uid=row["SOPInstanceUID"],
                    frames=row["NumberOfFrames"] or 1,
                    options=thumbnails,
                    size=row["size"],
                    mtime=ref.mtime,
                    header=header,  # pixels decoded from its JSON: no second parse
                )
        return _ok_row(row, header, promoted=False, acquisition=acquisition)
    except NotDicom as exc:
        row.update(status="not_dicom", error=error_text(exc))
        return row
    except Exception as exc:  # one bad file never stops a run
        row.update(status="error", error=error_text(exc))
        return row


def _reopen(
    ref: FileRef, storage_options: StorageOptions, data: bytes | None
) -> contextlib.AbstractContextManager[IO[bytes]]:
    """The file again for the pydicom path: the bytes the native parser read, if whole."""
    if data is not None:
        return io.BytesIO(data)
    return open_ref(ref, storage_options=storage_options)


def _ok_row(row: Row, header: Header, *, promoted: bool, acquisition: bool) -> Row:
    """Fill an ``ok`` row from a parsed header (and its promoted tags, unless done).

    With ``acquisition``, the row also carries ``_acquisition``: its row of the
    ``acquisition`` table, whose conversion warnings join the instance's.
    """
    warnings = header.warnings
    if promoted:
        row.update(promoted_values(header.tags(), warnings))
    if acquisition:
        row["_acquisition"], problems = acquisition_row(row, header.tags())
        if problems:
            said = {warning.partition(":")[0] for warning in warnings}
            warnings.extend(p for p in problems if p.partition(":")[0] not in said)
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


def rows_to_batch(rows: Sequence[Row], ingested_at: dt.datetime) -> pa.RecordBatch:
    """Build a RecordBatch in :data:`INSTANCES_SCHEMA` from row dicts."""
    return build_batch(rows, INSTANCES_SCHEMA, stamps={"ingested_at": ingested_at})


def extract_instances(
    refs: Sequence[FileRef],
    *,
    bulk_threshold: int = BULK_THRESHOLD,
    storage_options: StorageOptions = None,
    ingested_at: dt.datetime | None = None,
) -> pa.RecordBatch:
    """Parse a batch of files into one RecordBatch of ``instances`` rows.

    Args:
        refs: The files to parse.
        bulk_threshold: Binary values longer than this many bytes become BulkDataURIs.
        storage_options: Settings for object-storage sources.
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
        storage_options: Settings for object-storage sources.
        ingested_at: The run's timestamp, the same on every row of a run.
        thumbnails: Also draw thumbnails from the same read of each file.
        parser: 'auto' (native where it can, else pydicom), 'native' or 'pydicom'.
        acquisition: Also make the ``acquisition`` table's rows (``"acquisition"``
            in :meth:`batch`), from the same header.

    Raises:
        ValueError: ``parser`` is not one of :data:`PARSERS`.
    """

    #: It hands pyarrow lists and numpy arrays only (see :class:`~dicomlake.kernels.base.Kernel`).
    pandas_free = True

    def __init__(
        self,
        *,
        bulk_threshold: int = BULK_THRESHOLD,
        storage_options: StorageOptions = None,
        ingested_at: dt.datetime | None = None,
        thumbnails: ThumbnailOptions | None = None,
        parser: Parser = "auto",
        acquisition: bool = False,
    ) -> None:
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {', '.join(PARSERS)}; got {parser!r}")
        self.bulk_threshold = bulk_threshold
        self.storage_options = storage_options
        self.ingested_at = ingested_at or dt.datetime.now(dt.UTC)
        self.thumbnails = thumbnails
        self.parser = parser
        self.acquisition = acquisition

    def row(self, ref: FileRef) -> Row:
        """Return the row of one file (never raises)."""
        kill_point("parse")
        return extract_row(
            ref,
            bulk_threshold=self.bulk_threshold,
            storage_options=self.storage_options,
            thumbnails=self.thumbnails,
            parser=self.parser,
            acquisition=self.acquisition,
        )

    def batch(self, rows: Sequence[Row]) -> Batches:
        """Return one batch per table: ``instances``, and ``thumbnails`` or ``acquisition``."""
        out: Batches = {"instances": rows_to_batch(rows, self.ingested_at)}
        if self.acquisition:
            made = [row["_acquisition"] for row in rows if "_acquisition" in row]
            out["acquisition"] = acquisition_batch(made, self.ingested_at)
        if self.thumbnails is not None:
            from dicomlake.kernels.thumbnails import thumbnails_batch

            drawn = flatten(rows, "_thumbnails")
            out["thumbnails"] = thumbnails_batch(drawn, self.ingested_at)
        return out

    def error_row(self, ref: FileRef, reason: str) -> Row:
        """Return the error row of a file the engine gave up on (timeout, crash)."""
        row = source_columns(ref)
        row.update(status="error", error=clip_error(reason), warnings=None)
        return row


__all__ = ["BULK_THRESHOLD", "PARSERS", "InstancesKernel", "extract_instances", "extract_row"]
