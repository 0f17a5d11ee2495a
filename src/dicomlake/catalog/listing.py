"""Listing sources into file references, streamed as the walk goes.

A source is a local folder, a local file, a zip archive, or an fsspec URL
(``memory://``, ``s3://``, ...). :func:`iter_files` yields one
:class:`~dicomlake.catalog.refs.FileRef` per regular file or zip member, so ingest can
start on the first file of a folder of millions before the walk is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dicomlake.catalog.refs import (
    ZIP_PREFIX,
    FileRef,
    info_mtime,
    is_zip_name,
    stat_mtime,
    url_to_fs,
    zip_mtime,
)
from dicomlake.errors import AmbiguousMemberName, SourceNotFound
from dicomlake.rows import error_text
from dicomlake.storage.faults import storage_error, translate_errors
from dicomlake.storage.locations import display_name, file_uri, is_local, local_path
from dicomlake.storage.settings import StorageConfig

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from dicomlake._types import StorageOptions

logger = logging.getLogger(__name__)


def iter_files(
    sources: Iterable[str], *, storage_options: StorageOptions = None
) -> Iterator[FileRef]:
    """Stream one reference per regular file or zip member under each source.

    Nothing is listed ahead: local folders are walked depth-first with
    ``os.scandir`` and remote ones page by page, so ingest starts on the first file
    while the walk goes on. Symlinks are followed (loops are cut by remembering each
    directory's device and inode); a broken symlink or a corrupt zip becomes one
    reference with ``listing_error`` set, so it shows up as an error row instead of
    vanishing. A folder that cannot be listed is one error row, its path ending in
    ``/``.

    Args:
        sources: Local folders or files, zip archives, ``file://`` URLs or any fsspec
            URL (``s3://bucket/prefix``, ``memory://x``).
        storage_options: Passed to fsspec for non-local sources (credentials, ...).

    Yields:
        One :class:`FileRef` per regular file; zip archives yield their members
        instead of themselves.

    Raises:
        SourceNotFound: When the walk reaches a source that does not exist.

    Example:
        >>> refs = iter_files(["/nonexistent-dicomlake-source"])
        >>> next(refs)
        Traceback (most recent call last):
        ...
        dicomlake.errors.SourceNotFound: source not found: /nonexistent-dicomlake-source
    """
    for source in sources:
        root = local_path(source)
        if root is not None:
            yield from _iter_local_source(source, root)
        else:
            yield from _iter_fsspec_source(source, storage_options)


def _iter_local_source(source: str, root: str) -> Iterator[FileRef]:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise SourceNotFound(f"source not found: {source}", source=source) from None
    except OSError as exc:
        raise SourceNotFound(
            f"source cannot be read: {source} ({error_text(exc)})", source=source
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_local(root, st)
    elif stat.S_ISREG(st.st_mode):
        yield from _local_file_refs(root, os.path.basename(root), st, direct=True)
    else:
        logger.warning("skipping source %s: not a regular file or folder", display_name(root))


def _walk_local(root: str, root_stat: os.stat_result) -> Iterator[FileRef]:
    """Depth-first walk that yields each file as soon as its directory entry is read.

    Files of a directory are yielded while it is being scanned; its subdirectories
    are walked after it, so only one directory handle is open at a time. Relative
    paths are carried as the file system gives them (undecodable bytes as surrogate
    escapes) and made text (:func:`display_name`) as each reference is made.
    """
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        dirpath, rel_dir = stack.pop()
        subdirs: list[tuple[str, str]] = []
        try:
            scan = os.scandir(dirpath)
        except OSError as exc:
            logger.warning("cannot list folder %s: %s", display_name(dirpath), error_text(exc))
            yield _folder_error(dirpath, rel_dir, exc)
            continue
        with scan:
            while True:
                try:
                    entry = next(scan)
                except StopIteration:
                    break
                except OSError as exc:
                    logger.warning(
                        "listing of %s stopped early: %s", display_name(dirpath), error_text(exc)
                    )
                    yield _folder_error(dirpath, rel_dir, exc)
                    break
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                yield from _local_entry_refs(entry, rel, visited, subdirs)
        stack.extend(reversed(subdirs))


def _folder_error(dirpath: str, rel_dir: str, exc: OSError) -> FileRef:
    """The error row of a folder that could not be listed (its path ends with ``/``).

    A row, not only a warning: the run's summary counts it, and ``--sync`` keeps the
    rows of the files under it rather than deleting them as gone.
    """
    uri = file_uri(dirpath).rstrip("/") + "/"
    rel = f"{rel_dir}/" if rel_dir else ""
    return FileRef(uri, display_name(rel), None, None, error_text(exc))


def _local_entry_refs(
    entry: os.DirEntry[str],
    rel: str,
    visited: set[tuple[int, int]],
    subdirs: list[tuple[str, str]],
) -> Iterator[FileRef]:
    """References for one directory entry; directories are queued in ``subdirs``."""
    try:
        is_dir = entry.is_dir()  # follows symlinks
    except OSError:
        is_dir = False
    try:
        st = entry.stat()  # follows symlinks: size and mtime of the target
    except OSError as exc:
        if entry.is_symlink():
            reason = "broken symlink" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
            yield FileRef(
                path=file_uri(entry.path),
                relative_path=display_name(rel),
                size=None,
                mtime=None,
                listing_error=f"{type(exc).__name__}: {reason}",
            )
        elif not isinstance(exc, FileNotFoundError):  # vanished since listed: no row
            logger.warning("cannot stat %s: %s", display_name(entry.path), error_text(exc))
        return
    if is_dir:
        key = (st.st_dev, st.st_ino)
        if key in visited:
            logger.debug("skipping %s: folder already walked", display_name(entry.path))
        else:
            visited.add(key)
            subdirs.append((entry.path, rel))
        return
    if stat.S_ISREG(st.st_mode):
        yield from _local_file_refs(entry.path, rel, st, direct=False)


def _local_file_refs(
    local_path: str, rel: str, st: os.stat_result, *, direct: bool
) -> Iterator[FileRef]:
    uri = file_uri(local_path)
    size, mtime = st.st_size, stat_mtime(st)
    if not is_zip_name(local_path):
        yield FileRef(uri, display_name(rel), size, mtime)
        return
    yield from _zip_refs(
        lambda: zipfile.ZipFile(local_path),
        zip_uri=uri,
        zip_rel=rel,
        direct=direct,
        size=size,
        mtime=mtime,
    )


def _zip_refs(
    opener: Callable[[], contextlib.AbstractContextManager[zipfile.ZipFile]],
    *,
    zip_uri: str,
    zip_rel: str,
    direct: bool,
    size: int | None,
    mtime: datetime | None,
) -> Iterator[FileRef]:
    """Members of one zip archive, or one error reference when it cannot be read.

    A local archive's ``zip_rel`` is as the file system gave it: the relative paths
    are made text here (:func:`display_name`). Member names are zipfile's text (cp437
    or UTF-8), written literally in ``path`` and opened by that name.
    """
    shown = display_name if is_local(zip_uri) else str
    try:
        with opener() as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        yield FileRef(zip_uri, shown(zip_rel), size, mtime, error_text(exc))
        return
    # A name can appear twice in an archive; a path must be one row. Reading a member
    # by name gives its last entry (zipfile, like unzip tools), so that one is listed.
    last = {info.filename: info for info in infos}
    shadowed = len(infos) - len(last)
    if shadowed:
        logger.warning(
            "%s: %d member(s) shadowed by a later one of the same name", zip_uri, shadowed
        )
    for info in infos:
        if info.is_dir() or last[info.filename] is not info:
            continue
        member = info.filename
        path = f"{ZIP_PREFIX}{member}::{zip_uri}"
        yield FileRef(
            path=path,
            relative_path=shown(member if direct else f"{zip_rel}/{member}"),
            size=info.file_size,
            mtime=zip_mtime(info.date_time),
            listing_error=_member_name_error(member, path),
        )


def _member_name_error(member: str, path: str) -> str | None:
    """The error of a member whose name a ``zip://`` path cannot address, else None.

    The chained form ``zip://MEMBER::ARCHIVE`` is split at its first ``::`` (here as in
    fsspec), so a name holding one would send the read elsewhere: ``x::file:///a.zip``
    reads member ``x`` of another archive. Such a member is an error row, never opened.
    """
    if "::" not in member:
        return None
    error = AmbiguousMemberName(
        "'::' in the member's name makes its zip:// path name another file; "
        "rename it in the archive to read it",
        path=path,
    )
    return error_text(error)


def _iter_fsspec_source(source: str, storage_options: StorageOptions) -> Iterator[FileRef]:
    fs, root = url_to_fs(source, storage_options)
    # fsspec keeps one file system object per set of options, with its listings
    # cached: a re-run in the same process must see the bucket as it is now
    fs.invalidate_cache()
    try:
        info = fs.info(root)  # not isfile/isdir: they read any failure as "no"
    except FileNotFoundError:
        raise SourceNotFound(f"source not found: {source}", source=source) from None
    except Exception as exc:  # still failing after the retries: one error row, go on
        yield FileRef(source, "", None, None, _listing_error(source, exc, storage_options))
        return
    if info.get("type") == "directory":
        yield from _walk_fsspec(fs, root, source, storage_options)
    elif info.get("type") == "file":
        name = posixpath.basename(root.rstrip("/"))
        yield from _fsspec_file_refs(fs, root, source, name, info, storage_options, direct=True)
    else:
        raise SourceNotFound(f"source not found: {source}", source=source)


def _walk_fsspec(
    fs: AbstractFileSystem, root: str, source: str, storage_options: StorageOptions
) -> Iterator[FileRef]:
    """Depth-first walk, one folder listing (all its pages) at a time.

    Not ``fs.walk``: it drops a folder whose listing fails (its ``on_error`` does
    not reach sub-folders). Here a folder that still cannot be listed after the
    retries becomes one error reference named after it (``s3://b/prefix/``), so
    what could not be seen is counted, never silently missing.
    """
    prefix = root.rstrip("/") + "/"
    base = source if source.endswith("/") else source + "/"
    stack = [root.rstrip("/")]
    while stack:
        folder = stack.pop()
        rel_folder = folder[len(prefix) :] + "/" if folder.startswith(prefix) else ""
        try:
            entries = fs.ls(folder, detail=True)
        except FileNotFoundError:
            logger.debug("folder %s vanished while listed", folder)
            continue
        except Exception as exc:
            uri = fs.unstrip_protocol(folder) + "/" if "::" in source else base + rel_folder
            yield FileRef(uri, rel_folder, None, None, _listing_error(uri, exc, storage_options))
            continue
        subfolders = []
        for info in sorted(entries, key=lambda item: str(item.get("name"))):
            full = str(info.get("name") or "").rstrip("/")
            if not full or full == folder:
                continue  # the folder itself, or its directory marker object
            if info.get("type") == "directory":
                subfolders.append(full)
                continue
            rel = full[len(prefix) :] if full.startswith(prefix) else full
            uri = fs.unstrip_protocol(full) if "::" in source else base + rel
            yield from _fsspec_file_refs(fs, full, uri, rel, info, storage_options, direct=False)
        stack.extend(reversed(subfolders))


def _listing_error(uri: str, exc: BaseException, storage_options: StorageOptions) -> str:
    """The error text of a listing that failed, with its cause named; logged once."""
    named = storage_error(exc, StorageConfig.coerce(storage_options).retries)
    text = error_text(named or exc)
    logger.warning("cannot list %s: %s", uri, text)
    return text


def _fsspec_file_refs(
    fs: AbstractFileSystem,
    fs_path: str,
    uri: str,
    rel: str,
    info: dict[str, Any],
    storage_options: StorageOptions,
    *,
    direct: bool,
) -> Iterator[FileRef]:
    size = info.get("size")
    size = int(size) if size is not None else None
    mtime = info_mtime(info)
    if not is_zip_name(fs_path):
        yield FileRef(uri, rel, size, mtime)
        return

    @contextlib.contextmanager
    def opener() -> Iterator[zipfile.ZipFile]:
        # a storage failure is an OSError named by its cause: _zip_refs makes it a row
        with (
            translate_errors(StorageConfig.coerce(storage_options).retries),
            fs.open(fs_path, "rb") as raw,
        ):
            # zipfile reports any OSError while reading the end of the file as "File
            # is not a zip file": read that block first (zipfile reads it anyway), so
            # a refused read (403) keeps its own error
            end = raw.seek(0, os.SEEK_END)
            if end:
                raw.seek(end - 1)
                raw.read(1)
                raw.seek(0)
            with zipfile.ZipFile(raw) as archive:
                yield archive

    yield from _zip_refs(opener, zip_uri=uri, zip_rel=rel, direct=direct, size=size, mtime=mtime)


def check_sources(sources: Sequence[str], *, storage_options: StorageOptions = None) -> None:
    """Fail fast, before any work starts, when a source is missing.

    Args:
        sources: The sources that :func:`iter_files` will walk.
        storage_options: Passed to fsspec for non-local sources.

    Raises:
        SourceNotFound: For the first source that does not exist, or whose file
            system cannot be reached (protocol not installed, bad URL), or a local
            folder that cannot be listed. ``.source`` names it.

    Example:
        >>> check_sources(["/nonexistent-dicomlake-source"])
        Traceback (most recent call last):
        ...
        dicomlake.errors.SourceNotFound: source not found: /nonexistent-dicomlake-source
    """
    for source in sources:
        path = local_path(source)
        if path is not None:
            if not os.path.exists(path):
                raise SourceNotFound(f"source not found: {source}", source=source)
            if os.path.isdir(path):
                try:
                    with os.scandir(path):
                        pass
                except OSError as exc:
                    raise SourceNotFound(
                        f"source cannot be listed: {source} ({error_text(exc)})",
                        source=source,
                    ) from exc
            continue
        try:
            fs, root = url_to_fs(source, storage_options)
            fs.invalidate_cache()
            exists = fs.exists(root)
        except Exception as exc:  # botocore's connection errors are not OSErrors
            raise SourceNotFound(
                f"source cannot be reached: {source} ({error_text(exc)}); check the URL, "
                "storage options and that the fsspec backend for it is installed",
                source=source,
            ) from exc
        if not exists:
            raise SourceNotFound(f"source not found: {source}", source=source)
