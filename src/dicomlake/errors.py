"""Exceptions raised by dicomlake.

Callers catch :class:`DicomLakeError` for anything this package raises on purpose; the
subclasses exist only where a caller acts differently::

    DicomLakeError
    ├── SourceNotFound      a SRC given to ingest does not exist (CLI exit code 2)
    ├── LakeError           the lake folder cannot be created, written or read
    │   └── TableNotFound   the lake has no such table yet (nothing ingested)
    ├── ExtractError        a file could not be turned into a row (the kernels keep it
    │   │                   as an error row whose class is the subclass's name)
    │   ├── NotDicom        the bytes are not DICOM (a ``not_dicom`` row, not an error)
    │   ├── TruncatedFile   the file ends inside its header (also a ValueError)
    │   ├── HeaderTooLarge  a header passes a limit on its size, element count or depth
    │   ├── ZipBomb         a zip member inflates past a size or ratio limit
    │   ├── NestedArchive   a zip member is itself a zip archive (not opened)
    │   ├── AmbiguousMemberName  a zip member's name holds '::' (not opened)
    │   └── WaveformError   a waveform cannot be drawn (also a ValueError)
    ├── QueryError          a query given to select data (datasets, patches, volumes)
    │                       fails or lacks a column it must return (also a ValueError)
    ├── MissingColumn       a Spark transformer's input lacks a column (also a ValueError)
    ├── OhifInstallError    OHIF could not be fetched, checked or unpacked
    ├── DeidKeyError        a de-identification key file is missing, short or unreadable
    ├── DiskFull            a received instance cannot be written: the disk or quota is
    │                       full; nothing of it is left (also an OSError)
    ├── PeerError           a DICOM peer refused, aborted or did not answer (pull)
    ├── DeidSkipped         a file is left out of a de-identified copy, for a reason
    │   └── PixelsNotClean  text is still found in the pixels after cleaning
    └── StorageError        object storage still failed after retries (also an OSError)
        ├── Throttled       503 (SlowDown, ServiceUnavailable), 429, other "slow down"s
        ├── ServerError     500, 502 and 504 replies
        ├── NetworkError    connection refused, reset, or dropped mid-response
        └── StorageTimeout  no connection or no answer within the timeouts

Messages name what was expected and what was found. They never carry patient data:
paths are fine, tag values are not.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator


class DicomLakeError(Exception):
    """Base class of every error dicomlake raises on purpose."""


class SourceNotFound(DicomLakeError):
    """A source given to ingest does not exist or cannot be listed."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class LakeError(DicomLakeError):
    """The lake cannot be created, written or read."""

    def __init__(self, message: str, *, lake: str) -> None:
        super().__init__(message)
        self.lake = lake


class TableNotFound(LakeError):
    """The lake exists but the requested table has not been written yet."""


class ExtractError(DicomLakeError):
    """A single file could not be parsed into a row.

    Attributes:
        path: The file's URI, when the code that raised knew it.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NotDicom(ExtractError):
    """The bytes are not a DICOM file (no DICM prefix and no recognisable data set).

    The kernels make such a file a ``not_dicom`` row rather than an error row.
    """


class TruncatedFile(ExtractError, ValueError):
    """The file ends inside its header: in an element's tag, length or value."""


class QueryError(DicomLakeError, ValueError):
    """A query that selects data for a dataset or a derived table is not usable.

    Attributes:
        sql: The query as given.
    """

    def __init__(self, message: str, *, sql: str) -> None:
        super().__init__(message)
        self.sql = sql


class MissingColumn(DicomLakeError, ValueError):
    """A Spark transformer's input lacks a column it needs.

    Attributes:
        column: The missing column's name.
    """

    def __init__(self, message: str, *, column: str) -> None:
        super().__init__(message)
        self.column = column


class HeaderTooLarge(ExtractError):
    """A header passes a limit that keeps memory and time bounded.

    The limits (elements and items read, DICOM JSON length, sequence depth, inflated
    size of a deflated data set) live in :mod:`dicomlake.dicom.header`; the message
    names the one passed and its value.
    """


class ZipBomb(ExtractError):
    """A zip member inflates past a size or compression-ratio limit.

    Raised when the member is opened (its declared sizes) or while it is read (the
    bytes actually inflated, since declared sizes can lie). The limits live in
    :mod:`dicomlake.catalog.zips` (``ZIP_MAX_MEMBER_BYTES``, ``ZIP_MAX_RATIO``,
    ``ZIP_RATIO_MIN_BYTES``).
    """


class NestedArchive(ExtractError):
    """A zip member is a zip archive itself: it is listed as one row, never opened."""


class AmbiguousMemberName(ExtractError):
    """A zip member's name holds ``::``: it is listed as one row, never opened.

    Its ``zip://MEMBER::ARCHIVE`` path would name another file, split at the first
    ``::`` as fsspec splits it.
    """


class WorkersFailed(DicomLakeError):
    """Worker processes die as they start, again and again: no file can be read."""


class StorageError(DicomLakeError, OSError):
    """A request to object storage still failed after its retries.

    The subclass names the cause, and its name is the error class that an error
    row and the ingest summary show. Messages say what failed and which setting
    bounds the retries; they carry no URL (the row has the path) and nothing from
    inside the object.
    """


class Throttled(StorageError):
    """The store kept asking to slow down (503 SlowDown or ServiceUnavailable, 429)."""


class ServerError(StorageError):
    """The store kept answering with a server error (500, 502, 504)."""


class NetworkError(StorageError):
    """The connection kept failing: refused, reset, or dropped mid-response."""


class StorageTimeout(StorageError):
    """The store kept not answering within ``connect_timeout`` / ``read_timeout``."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last.

    Libraries wrap errors (pydicom turns any error in an item header into ``OSError``,
    s3fs and aiobotocore wrap botocore's); the error a row should name may be inside.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class WaveformError(ExtractError, ValueError):
    """A waveform cannot be drawn: missing, malformed, truncated, or audio.

    The message names the element at fault and what was expected; never a value.
    """


class OhifInstallError(DicomLakeError):
    """OHIF could not be fetched, checked or unpacked; nothing was installed."""


class DeidKeyError(DicomLakeError):
    """A de-identification key file is missing, shorter than 32 bytes or unreadable."""


class DeidSkipped(DicomLakeError):
    """A file is left out of a de-identified copy; the message is the reason.

    Raised, for instance, for a file whose pixels may carry burned-in text when the
    ``clean-pixel-data`` option was not given. The message never holds a value of the
    file, only what kind of file it is and why.
    """


class PixelsNotClean(DeidSkipped):
    """Text is still found in the pixels after cleaning: the file is not written."""


class DiskFull(DicomLakeError, OSError):
    """A file cannot be written whole: no space left on the device, or a quota.

    Raised by the store folder (:mod:`dicomlake.jobs.store`) after removing what it had
    written of the file, so nothing half-written is ever left or acknowledged.
    """


def disk_full(exc: BaseException) -> bool:
    """ENOSPC (or a quota), from Python, pyarrow, or delta-rs (which gives only text)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


class PeerError(DicomLakeError):
    """A DICOM peer refused, aborted, failed a request or did not answer in time.

    The message names the peer (``AET@HOST:PORT``), what was asked and what happened
    (a status code, a rejection reason); never a value of a data set.
    """
