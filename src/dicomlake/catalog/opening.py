"""Opening a file reference for reading, wherever it lies."""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Hashable, Iterator
from typing import IO, TYPE_CHECKING

from dicomlake.catalog.refs import (
    FileRef,
    info_mtime,
    split_zip_uri,
    url_to_fs,
)
from dicomlake.catalog.zips import declared_size, zip_cache
from dicomlake.storage.faults import translate_errors
from dicomlake.storage.locations import is_local, local_path
from dicomlake.storage.settings import S3_PROTOCOLS, StorageConfig

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions


@contextlib.contextmanager
def open_ref(ref: FileRef | str, *, storage_options: StorageOptions = None) -> Iterator[IO[bytes]]:
    """Open a reference for reading, wherever it lies.

    Local files are opened directly (a ``file://localhost/`` path, one that is not
    valid UTF-8, is percent-unescaped to its real bytes first); zip members through an
    archive kept open in a small per-process cache (re-checked against the archive's
    size and mtime on each use), so reading thousands of members of one zip parses its
    directory once; anything else goes through ``fsspec.open``.

    Args:
        ref: A reference from :func:`iter_files`, or its ``path`` URI.
        storage_options: Passed to fsspec for non-local files and archives.

    Yields:
        A binary file object that supports ``read``, ``seek`` and ``tell``; it is
        closed when the ``with`` block ends.

    Raises:
        FileNotFoundError: When the file or the archive is gone (other ``OSError``
            subclasses likewise pass through unchanged).
        KeyError: When the archive has no such member.
        zipfile.BadZipFile: When the archive cannot be read as a zip.
        dicomlake.storage.StorageError: When object storage still fails after its
            retries; the subclass names the cause (``Throttled``, ``ServerError``,
            ``NetworkError``, ``StorageTimeout``).
    """
    uri = ref if isinstance(ref, str) else ref.path
    zipped = split_zip_uri(uri)
    if zipped is not None:
        member, archive_uri = zipped
        with (
            _remote_errors(archive_uri, storage_options),
            _open_zip_member(archive_uri, member, storage_options) as handle,
        ):
            yield handle
    elif (local := local_path(uri)) is not None:
        with open(local, "rb") as handle:
            yield handle
    else:
        with _remote_errors(uri, storage_options):
            fs, path = url_to_fs(uri, storage_options)
            with fs.open(path, "rb") as handle:
                yield handle


@contextlib.contextmanager
def open_sized(
    ref: FileRef | str, *, storage_options: StorageOptions = None
) -> Iterator[tuple[IO[bytes], int]]:
    """Open a reference to read its first bytes, knowing its size without reading to its end.

    As :func:`open_ref`, with the same errors, but an object is opened to fetch only
    the ranges read (no read-ahead block), and the size comes from the zip entry, the
    object's listing or the file's ``stat``: seeking a zip member to its end inflates
    it all. For the native header parser, which reads a prefix and stops.

    Args:
        ref: A reference from :func:`iter_files`, or its ``path`` URI.
        storage_options: Passed to fsspec for non-local files and archives.

    Yields:
        ``(handle, size)``: a binary file object at the file's start, and the file's
        size in bytes (a zip member's declared, inflated size).

    Raises:
        FileNotFoundError: As :func:`open_ref`.
        KeyError: As :func:`open_ref`.
        zipfile.BadZipFile: As :func:`open_ref`.
        dicomlake.storage.StorageError: As :func:`open_ref`.
    """
    uri = ref if isinstance(ref, str) else ref.path
    if split_zip_uri(uri) is not None or local_path(uri) is not None:
        with open_ref(uri, storage_options=storage_options) as handle:
            size = declared_size(handle)
            if size is None:
                size = os.fstat(handle.fileno()).st_size
            yield handle, size
        return
    with _remote_errors(uri, storage_options):
        fs, path = url_to_fs(uri, storage_options)
        options: dict[str, object] = {}
        known = None if isinstance(ref, str) else ref.size
        if known is not None and uri.split("://")[0] in S3_PROTOCOLS:
            options["size"] = known  # the listing's: saves a HEAD request per object
        # no cache: each read fetches the range it asks for, and nothing more
        with fs.open(path, "rb", cache_type="none", **options) as handle:
            size = getattr(handle, "size", None)
            if not isinstance(size, int):
                size = handle.seek(0, 2)
                handle.seek(0)
            yield handle, size


def _remote_errors(
    uri: str, storage_options: StorageOptions
) -> contextlib.AbstractContextManager[None]:
    """Name a remote read's storage failure by its cause (the error row's class)."""
    if is_local(uri):
        return contextlib.nullcontext()
    return translate_errors(StorageConfig.coerce(storage_options).retries)


def _open_zip_member(
    archive_uri: str,
    member: str,
    storage_options: StorageOptions,
) -> IO[bytes]:
    local = local_path(archive_uri)
    if local is not None:
        st = os.stat(local)
        signature: Hashable = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return zip_cache.open_member(archive_uri, signature, lambda: zipfile.ZipFile(local), member)
    fs, path = url_to_fs(archive_uri, storage_options)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    signature = (info.get("size"), info_mtime(info), etag)

    def opener() -> zipfile.ZipFile:
        # ZipFile does not close a file object it was given; the fsspec file is
        # closed when the ZipFile and its open members are garbage collected.
        return zipfile.ZipFile(fs.open(path, "rb"))

    return zip_cache.open_member(archive_uri, signature, opener, member)
