"""File references and the URIs that name them: local files, objects, zip members.

Paths are full URIs: ``file:///data/a b/x.dcm``, ``s3://b/k``, and a zip member in
fsspec's chained form ``zip://MEMBER::URI_OF_ZIP``, so that ``fsspec.open(ref.path)``
opens the same bytes as :func:`dicomlake.catalog.open_ref`. A local path that is not
valid UTF-8 is ``file://localhost/...`` with its odd bytes percent-escaped
(:mod:`dicomlake.storage.locations`): the path alone says which file it is, so
:func:`dicomlake.catalog.open_ref` opens it from a lake row in any later process
(fsspec does not: it reads ``localhost`` as a folder name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicomlake.storage.faults import tune_filesystem
from dicomlake.storage.locations import is_local, local_path
from dicomlake.storage.settings import StorageConfig

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from dicomlake._types import StorageOptions


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZIP_PREFIX = "zip://"


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file or zip member to ingest.

    Attributes:
        path: Full URI (``file:///abs/x.dcm``, ``s3://b/k``, ``memory://x``, or
            ``zip://MEMBER::URI_OF_ZIP`` for a zip member; ``file://localhost/...``,
            percent-escaped, for a local path that is not valid UTF-8).
        relative_path: Path relative to the source it was found under, ``/``-separated.
        size: Size in bytes (uncompressed size for a zip member), None if unknown.
        mtime: Modification time in UTC, None if unknown.
        listing_error: Set when the reference could be listed but not opened as a
            container (a corrupt zip); the kernel turns it into an error row.
    """

    path: str
    relative_path: str
    size: int | None
    mtime: datetime | None
    listing_error: str | None = None


def stat_mtime(st: os.stat_result) -> datetime:
    """UTC modification time of a stat result, to the microsecond."""
    return _EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)


def info_mtime(info: dict[str, Any]) -> datetime | None:
    """Best-effort UTC modification time from an fsspec ``info`` dict.

    Each backend names it differently (local ``mtime``, s3 ``LastModified``, gcs
    ``updated``, memory ``created``) and as a number, a datetime or an ISO string.
    """
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        try:
            if isinstance(value, datetime):
                moment = value
            elif isinstance(value, int | float):
                moment = datetime.fromtimestamp(value, tz=UTC)
            elif isinstance(value, str):
                moment = datetime.fromisoformat(value)
            else:
                continue
        except (ValueError, OverflowError, OSError):
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    return None


def zip_mtime(date_time: tuple[int, int, int, int, int, int]) -> datetime | None:
    """A zip entry's DOS time stamp, read as UTC (zip stores no time zone)."""
    try:
        return datetime(*date_time, tzinfo=UTC)
    except (ValueError, TypeError):
        return None


def is_zip_name(name: str) -> bool:
    """Whether a file name says zip archive (its members are listed, not the file)."""
    return name.lower().endswith(".zip")


def split_zip_uri(uri: str) -> tuple[str, str] | None:
    """``(member, archive_uri)`` of a ``zip://MEMBER::URI`` reference, else None."""
    if not uri.startswith(ZIP_PREFIX) or "::" not in uri:
        return None
    member, archive = uri[len(ZIP_PREFIX) :].split("::", 1)
    return member, archive


def url_to_fs(url: str, storage_options: StorageOptions) -> tuple[AbstractFileSystem, str]:
    """The file system and path of a URL, with the retry settings for its protocol."""
    import fsspec.core

    protocol = url.split("://", 1)[0] if "://" in url and "::" not in url else None
    config = StorageConfig.coerce(storage_options)
    fs, path = fsspec.core.url_to_fs(url, **config.fsspec(protocol))
    tune_filesystem(fs)
    return fs, path


def local_file(ref: FileRef) -> str | None:
    """The local path of a plain file reference; None for zip members and object storage.

    The real path, undecodable bytes included (as ``os.fsdecode`` gives them), read
    back from ``ref.path``: what ``open`` needs, not always valid UTF-8 text.
    """
    if not is_local(ref.path):
        return None
    return local_path(ref.path)
