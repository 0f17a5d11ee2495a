"""Listing sources into file references, and opening them for reading.

A source is a local folder, a local file, a zip archive, or an fsspec URL
(``memory://``, ``s3://``, ...). :func:`iter_files` streams one :class:`FileRef` per
regular file or zip member, so ingest can start on the first file of a folder of
millions before the walk is done; :func:`open_ref` opens any reference it produced.

Paths are full URIs, never percent-encoded: ``file:///data/a b/x.dcm``, ``s3://b/k``,
and a zip member in fsspec's chained form ``zip://MEMBER::URI_OF_ZIP``, so that
``fsspec.open(ref.path)`` opens the same bytes as :func:`open_ref`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import queue
import re
import stat
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from dicomlake.errors import AmbiguousMemberName, SourceNotFound, ZipBomb
from dicomlake.storage import StorageConfig, storage_error, translate_errors, tune_filesystem

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from dicomlake.storage import StorageOptionsLike

__all__ = ["FileRef", "check_sources", "extension", "iter_files", "open_ref", "path_tags"]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZIP_PREFIX = "zip://"
_FILE_PREFIX = "file://"
_PATH_TAG_SPLIT = re.compile(r"[/\\._\-\s]+")
_MAX_ERROR_CHARS = 300
# How many open zip archives open_ref keeps per process.
_ZIP_CACHE_SIZE = 8


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file or zip member to ingest.

    Attributes:
        path: Full URI (``file:///abs/x.dcm``, ``s3://b/k``, ``memory://x``, or
            ``zip://MEMBER::URI_OF_ZIP`` for a zip member).
        relative_path: Path relative to the source it was found under, ``/``-separated.
        size: Size in bytes (uncompressed size for a zip member), None if unknown.
        mtime: Modification time in UTC, None if unknown.
        listing_error: Set when the reference could be listed but not opened as a
            container (a corrupt zip); the kernel turns it into an error row.
        open_path: The real local path to open, set only when the file name is not
            valid UTF-8 and ``path`` therefore shows it escaped (for a zip member: the
            real path of the archive). None otherwise.
    """

    path: str
    relative_path: str
    size: int | None
    mtime: datetime | None
    listing_error: str | None = None
    open_path: str | None = None


# --------------------------------------------------------------------------- helpers


def _is_local(source: str) -> bool:
    """Tell plain paths and ``file://`` URLs (fast walker) from other fsspec URLs."""
    if "::" in source:
        return False
    return source.startswith(_FILE_PREFIX) or "://" not in source


def _local_path(source: str) -> str:
    """Absolute local path of a plain path or ``file://`` URL, symlinks kept."""
    if source.startswith(_FILE_PREFIX):
        source = source[len(_FILE_PREFIX) :]
    return os.path.abspath(os.path.expanduser(source))


def _display(text: str) -> str:
    """Make a file system name valid UTF-8 text, escaping undecodable bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def _file_uri(local_path: str) -> str:
    """``file://`` URI of an absolute local path, not percent-encoded."""
    shown = _display(local_path)
    if os.sep != "/":
        shown = "/" + shown.replace(os.sep, "/").lstrip("/")
    return _FILE_PREFIX + shown


def _stat_mtime(st: os.stat_result) -> datetime:
    """UTC modification time of a stat result, to the microsecond."""
    return _EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)


def _info_mtime(info: dict[str, Any]) -> datetime | None:
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


def _zip_mtime(date_time: tuple[int, int, int, int, int, int]) -> datetime | None:
    """A zip entry's DOS time stamp, read as UTC (zip stores no time zone)."""
    try:
        return datetime(*date_time, tzinfo=UTC)
    except (ValueError, TypeError):
        return None


def _short_error(exc: BaseException) -> str:
    """``"Class: message"`` for an error row, bounded in length."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def _split_zip_uri(uri: str) -> tuple[str, str] | None:
    """``(member, archive_uri)`` of a ``zip://MEMBER::URI`` reference, else None."""
    if not uri.startswith(_ZIP_PREFIX) or "::" not in uri:
        return None
    member, archive = uri[len(_ZIP_PREFIX) :].split("::", 1)
    return member, archive


def _url_to_fs(url: str, storage_options: StorageOptionsLike) -> tuple[AbstractFileSystem, str]:
    """The file system and path of a URL, with the retry settings for its protocol."""
    import fsspec.core

    protocol = url.split("://", 1)[0] if "://" in url and "::" not in url else None
    config = StorageConfig.coerce(storage_options)
    fs, path = fsspec.core.url_to_fs(url, **config.fsspec(protocol))
    tune_filesystem(fs)
    return fs, path


# --------------------------------------------------------------------------- listing


def iter_files(
    sources: Iterable[str], *, storage_options: StorageOptionsLike = None
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
        if _is_local(source):
            yield from _iter_local_source(source)
        else:
            yield from _iter_fsspec_source(source, storage_options)


def _iter_local_source(source: str) -> Iterator[FileRef]:
    root = _local_path(source)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise SourceNotFound(f"source not found: {source}", source=source) from None
    except OSError as exc:
        raise SourceNotFound(
            f"source cannot be read: {source} ({_short_error(exc)})", source=source
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_local(root, st)
    elif stat.S_ISREG(st.st_mode):
        yield from _local_file_refs(root, _display(os.path.basename(root)), st, direct=True)
    else:
        logger.warning("skipping source %s: not a regular file or folder", _display(root))


def _walk_local(root: str, root_stat: os.stat_result) -> Iterator[FileRef]:
    """Depth-first walk that yields each file as soon as its directory entry is read.

    Files of a directory are yielded while it is being scanned; its subdirectories
    are walked after it, so only one directory handle is open at a time.
    """
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        dirpath, rel_dir = stack.pop()
        subdirs: list[tuple[str, str]] = []
        try:
            scan = os.scandir(dirpath)
        except OSError as exc:
            logger.warning("cannot list folder %s: %s", _display(dirpath), _short_error(exc))
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
                        "listing of %s stopped early: %s", _display(dirpath), _short_error(exc)
                    )
                    yield _folder_error(dirpath, rel_dir, exc)
                    break
                name = _display(entry.name)
                rel = f"{rel_dir}/{name}" if rel_dir else name
                yield from _local_entry_refs(entry, rel, visited, subdirs)
        stack.extend(reversed(subdirs))


def _folder_error(dirpath: str, rel_dir: str, exc: OSError) -> FileRef:
    """The error row of a folder that could not be listed (its path ends with ``/``).

    A row, not only a warning: the run's summary counts it, and ``--sync`` keeps the
    rows of the files under it rather than deleting them as gone.
    """
    uri = _file_uri(dirpath).rstrip("/") + "/"
    rel = f"{rel_dir}/" if rel_dir else ""
    return FileRef(uri, rel, None, None, _short_error(exc))


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
                path=_file_uri(entry.path),
                relative_path=rel,
                size=None,
                mtime=None,
                listing_error=f"{type(exc).__name__}: {reason}",
                open_path=_open_path(entry.path),
            )
        elif not isinstance(exc, FileNotFoundError):  # vanished since listed: no row
            logger.warning("cannot stat %s: %s", _display(entry.path), _short_error(exc))
        return
    if is_dir:
        key = (st.st_dev, st.st_ino)
        if key in visited:
            logger.debug("skipping %s: folder already walked", _display(entry.path))
        else:
            visited.add(key)
            subdirs.append((entry.path, rel))
        return
    if stat.S_ISREG(st.st_mode):
        yield from _local_file_refs(entry.path, rel, st, direct=False)


def _open_path(local_path: str) -> str | None:
    """The real path, kept only when the URI had to escape it."""
    return None if _display(local_path) == local_path else local_path


def _local_file_refs(
    local_path: str, rel: str, st: os.stat_result, *, direct: bool
) -> Iterator[FileRef]:
    uri = _file_uri(local_path)
    size, mtime, open_path = st.st_size, _stat_mtime(st), _open_path(local_path)
    if not _is_zip_name(local_path):
        yield FileRef(uri, rel, size, mtime, open_path=open_path)
        return
    yield from _zip_refs(
        lambda: zipfile.ZipFile(local_path),
        zip_uri=uri,
        zip_rel=rel,
        direct=direct,
        size=size,
        mtime=mtime,
        open_path=open_path,
    )


def _zip_refs(
    opener: Callable[[], contextlib.AbstractContextManager[zipfile.ZipFile]],
    *,
    zip_uri: str,
    zip_rel: str,
    direct: bool,
    size: int | None,
    mtime: datetime | None,
    open_path: str | None,
) -> Iterator[FileRef]:
    """Members of one zip archive, or one error reference when it cannot be read."""
    try:
        with opener() as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        yield FileRef(zip_uri, zip_rel, size, mtime, _short_error(exc), open_path)
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
        path = f"{_ZIP_PREFIX}{member}::{zip_uri}"
        yield FileRef(
            path=path,
            relative_path=member if direct else f"{zip_rel}/{member}",
            size=info.file_size,
            mtime=_zip_mtime(info.date_time),
            listing_error=_member_name_error(member, path),
            open_path=open_path,
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
    return _short_error(error)


def _iter_fsspec_source(source: str, storage_options: StorageOptionsLike) -> Iterator[FileRef]:
    fs, root = _url_to_fs(source, storage_options)
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
    fs: AbstractFileSystem, root: str, source: str, storage_options: StorageOptionsLike
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


def _listing_error(uri: str, exc: BaseException, storage_options: StorageOptionsLike) -> str:
    """The error text of a listing that failed, with its cause named; logged once."""
    named = storage_error(exc, StorageConfig.coerce(storage_options).retries)
    text = _short_error(named or exc)
    logger.warning("cannot list %s: %s", uri, text)
    return text


def _fsspec_file_refs(
    fs: AbstractFileSystem,
    fs_path: str,
    uri: str,
    rel: str,
    info: dict[str, Any],
    storage_options: StorageOptionsLike,
    *,
    direct: bool,
) -> Iterator[FileRef]:
    size = info.get("size")
    size = int(size) if size is not None else None
    mtime = _info_mtime(info)
    if not _is_zip_name(fs_path):
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

    yield from _zip_refs(
        opener, zip_uri=uri, zip_rel=rel, direct=direct, size=size, mtime=mtime, open_path=None
    )


def check_sources(sources: Sequence[str], *, storage_options: StorageOptionsLike = None) -> None:
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
        if _is_local(source):
            path = _local_path(source)
            if not os.path.exists(path):
                raise SourceNotFound(f"source not found: {source}", source=source)
            if os.path.isdir(path):
                try:
                    with os.scandir(path):
                        pass
                except OSError as exc:
                    raise SourceNotFound(
                        f"source cannot be listed: {source} ({_short_error(exc)})",
                        source=source,
                    ) from exc
            continue
        try:
            fs, root = _url_to_fs(source, storage_options)
            fs.invalidate_cache()
            exists = fs.exists(root)
        except Exception as exc:  # botocore's connection errors are not OSErrors
            raise SourceNotFound(
                f"source cannot be reached: {source} ({_short_error(exc)}); check the URL, "
                "storage options and that the fsspec backend for it is installed",
                source=source,
            ) from exc
        if not exists:
            raise SourceNotFound(f"source not found: {source}", source=source)


# --------------------------------------------------------------------------- opening

#: Largest zip member read in place, by its declared size or by what it inflates to.
#: DICOM's 32-bit lengths keep nearly every file under 4 GiB, and a member is inflated
#: again from its start for each backward seek: a larger one is better unzipped first.
ZIP_MAX_MEMBER_BYTES = 4 * 1024**3
#: Highest compression ratio (inflated / compressed) of a member larger than
#: :data:`ZIP_RATIO_MIN_BYTES`. CT and MR compress 2-10x and sparse segmentations some
#: 50-150x; deflate's own ceiling, about 1030x, is reached only by long runs of one
#: byte, which is what zip bombs are made of.
ZIP_MAX_RATIO = 200
#: Members up to this size are read whatever their ratio: inflating one costs well under
#: a second and holds at most this much.
ZIP_RATIO_MIN_BYTES = 32 * 1024**2
#: How far a guarded member moves in one read, checking the limits after each.
_ZIP_STEP = 1 << 20
#: The same for LZMA members: zipfile inflates all the compressed bytes of one read at
#: once (up to some 7,000 times as many), so those reads stay small.
_ZIP_LZMA_STEP = 4096


def _size_text(n: float) -> str:
    return f"{n / 1024**3:,.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:,.0f} MiB"


def _check_zip_size(size: int, path: str, *, declared: bool) -> None:
    """Refuse a member larger than :data:`ZIP_MAX_MEMBER_BYTES`."""
    if size > ZIP_MAX_MEMBER_BYTES:
        verb = "declares" if declared else "inflates past"
        raise ZipBomb(
            f"member {verb} {_size_text(size)} (limit {_size_text(ZIP_MAX_MEMBER_BYTES)}, "
            "ZIP_MAX_MEMBER_BYTES in dicomlake.catalog); unzip the archive to read it",
            path=path,
        )


def _check_zip_ratio(inflated: int, compressed: int, path: str, *, declared: bool) -> None:
    """Refuse a member past :data:`ZIP_RATIO_MIN_BYTES` that inflates too many times."""
    if inflated > ZIP_RATIO_MIN_BYTES and inflated > ZIP_MAX_RATIO * max(compressed, 1):
        how = "" if declared else " as read, more than its declared sizes say"
        raise ZipBomb(
            f"member inflates {inflated / max(compressed, 1):,.0f}x{how} (limit "
            f"{ZIP_MAX_RATIO}x past {_size_text(ZIP_RATIO_MIN_BYTES)}, ZIP_MAX_RATIO in "
            "dicomlake.catalog)",
            path=path,
        )


def _open_guarded(archive: zipfile.ZipFile, member: str, path: str) -> IO[bytes]:
    """Open a member after checking its declared sizes, guarded while it is read."""
    info = archive.getinfo(member)
    _check_zip_size(info.file_size, path, declared=True)
    _check_zip_ratio(info.file_size, info.compress_size, path, declared=True)
    return _GuardedMember(*_member_stream(archive, info), info=info, path=path)


def _member_stream(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[IO[bytes], Callable[[], int], list[IO[bytes]]]:
    """The member's inflating stream, how many compressed bytes it has read, what to close.

    zipfile inflates a bzip2 member's compressed bytes whole in each read (a few
    hundred bytes can hold gigabytes of one byte), so such a member is read as its raw
    bytes through :class:`bz2.BZ2File`, which inflates in bounded steps.
    """
    if info.compress_type != zipfile.ZIP_BZIP2:
        stream = archive.open(info)
        compressed = info.compress_size

        def consumed() -> int:
            # zipfile's own counts: read from the archive, less what the inflater holds
            # unread (zipfile reads ahead up to a whole step); the declared size if gone
            left = getattr(stream, "_compress_left", None)
            if left is None:
                return compressed
            inflater = getattr(stream, "_decompressor", None)
            return compressed - left - len(getattr(inflater, "unconsumed_tail", b""))

        return stream, consumed, []
    import bz2
    import copy

    raw_info = copy.copy(info)
    raw_info.compress_type = zipfile.ZIP_STORED
    raw_info.file_size = info.compress_size
    raw = archive.open(raw_info)
    # the entry's CRC is of the inflated bytes, not these: bz2 checks its own CRCs
    raw._expected_crc = None  # type: ignore[attr-defined]
    return bz2.BZ2File(raw), raw.tell, [raw]


class _GuardedMember(io.BufferedIOBase):
    """A zip member's stream that stops once it inflates past the zip limits.

    A zip's declared sizes can lie, so what is actually inflated (the furthest
    position reached, against the compressed bytes read so far) is checked after each
    step: forward moves go in steps of at most 1 MiB, reads and seeks alike, so the
    reader never inflates more than one step past a limit. Going back uses the
    stream's own seek, which inflates again only what was already checked.

    Args:
        stream: The inflating stream.
        consumed: Returns how many compressed bytes ``stream`` has read.
        closing: Other streams to close with this one.
        info: The member's entry.
        path: The member's URI, for errors.

    Raises:
        ZipBomb: From any read or seek that takes the member past a limit.
    """

    def __init__(
        self,
        stream: IO[bytes],
        consumed: Callable[[], int],
        closing: list[IO[bytes]],
        *,
        info: zipfile.ZipInfo,
        path: str,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._consumed = consumed
        self._closing = closing
        self._info = info
        self._path = path
        self._step = _ZIP_LZMA_STEP if info.compress_type == zipfile.ZIP_LZMA else _ZIP_STEP
        self._pos = 0
        self._furthest = 0
        # below this position no limit can be passed: most reads check nothing
        self._watch_from = min(
            ZIP_RATIO_MIN_BYTES + 1, ZIP_MAX_MEMBER_BYTES + 1, max(info.file_size, 1)
        )
        self.name = info.filename

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._stream.seekable()

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all with -1), one checked step at a time."""
        if size is not None and 0 <= size <= self._step:  # _read_step, inlined: most reads
            data = self._stream.read(size)
            self._pos += len(data)
            if self._pos > self._furthest:
                self._furthest = self._pos
                if self._pos >= self._watch_from:
                    self._check(self._pos)
            return data
        everything = size is None or size < 0
        left = 0 if size is None else size
        parts: list[bytes] = []
        while everything or left > 0:
            part = self._read_step(self._step if everything else min(left, self._step))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        """Read at most one step."""
        return self._read_step(self._step if size < 0 else min(size, self._step))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek, in checked steps past what was inflated before.

        The stream's own seek inflates what it skips: backward, it starts again from the
        member's start, inflating only what was checked already.
        """
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._info.file_size + offset  # zipfile's end: the declared size
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence}")
        target = max(target, 0)
        # zipfile inflates all the compressed bytes of one LZMA read at once: small steps
        # only, and back to the start first (a rewind inflates nothing)
        lzma = self._info.compress_type == zipfile.ZIP_LZMA
        if lzma and target < self._pos:
            self._pos = self._stream.seek(0)
        if target <= self._furthest and not lzma:  # inflated and checked before
            self._pos = self._stream.seek(target)
            return self._pos
        while self._pos < target:
            self._stream.seek(min(target, self._pos + self._step))
            moved = self._stream.tell()
            if moved <= self._pos:
                break  # the end of the member
            self._advance(moved)
        return self._pos

    def close(self) -> None:
        """Close the stream and the streams it reads from."""
        if not self.closed:
            for stream in (self._stream, *self._closing):
                stream.close()
        super().close()

    def _read_step(self, size: int) -> bytes:
        data = self._stream.read(size)
        self._advance(self._pos + len(data))
        return data

    def _advance(self, position: int) -> None:
        self._pos = position
        if position > self._furthest:
            self._furthest = position
            if position >= self._watch_from:
                self._check(position)

    def _check(self, inflated: int) -> None:
        _check_zip_size(inflated, self._path, declared=False)
        declared = self._info.file_size
        # zipfile stops at the declared size itself (its CRC check then fails); bz2 goes on
        if inflated > declared or (inflated == declared and self._stream.peek(1)):  # type: ignore[attr-defined]
            raise ZipBomb(
                f"member inflates past its declared size ({declared:,} bytes)", path=self._path
            )
        _check_zip_ratio(inflated, self._consumed(), self._path, declared=False)


class _ZipCache:
    """A small LRU of open ``ZipFile`` objects, so members share one central directory.

    Entries are keyed by archive URI and checked against a signature (size, mtime,
    inode or ETag) on every use, so a rewritten archive is reopened. Members are
    opened under the lock: an archive evicted by another thread stays readable for
    members already open, because ``ZipFile`` counts its open members. A member is
    checked against the zip bomb limits and handed out guarded (:class:`_GuardedMember`).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[Hashable, zipfile.ZipFile]] = OrderedDict()
        self._lock = threading.Lock()

    def open_member(
        self,
        key: str,
        signature: Hashable,
        opener: Callable[[], zipfile.ZipFile],
        member: str,
    ) -> IO[bytes]:
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached[0] == signature:
                self.hits += 1
                self._entries.move_to_end(key)
                archive = cached[1]
            else:
                self.misses += 1
                if cached is not None:
                    del self._entries[key]
                    cached[1].close()
                archive = opener()
                self._entries[key] = (signature, archive)
                while len(self._entries) > self.maxsize:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    evicted.close()
            return _open_guarded(archive, member, f"{_ZIP_PREFIX}{member}::{key}")

    def clear(self) -> None:
        """Close and forget every cached archive."""
        with self._lock:
            for _, archive in self._entries.values():
                archive.close()
            self._entries.clear()
            self.hits = self.misses = 0

    def _forget_after_fork(self) -> None:
        # A forked child shares the parent's file offsets: never reuse its handles.
        self._entries = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0


_zip_cache = _ZipCache(_ZIP_CACHE_SIZE)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_zip_cache._forget_after_fork)


#: How much of each file :class:`Prefetcher` asks the kernel to read ahead.
_PREFETCH_BYTES = 64 * 1024


class Prefetcher:
    """Read-ahead of local files on a few daemon threads, for cold or network storage.

    For each file it is given, a thread opens it and asks the kernel to read its first
    64 KiB into the page cache (``posix_fadvise(WILLNEED)``: no copy, returns at once
    when the pages are there), so the opens and reads of a task's files overlap each
    other and the parsing, which then finds the header in memory. Threads are daemons:
    a read stuck on a stalled mount never keeps a process from exiting.

    Args:
        threads: How many opens may wait on the storage at once.
    """

    def __init__(self, threads: int = 8) -> None:
        self.threads = threads
        self._queue: queue.SimpleQueue[str] | None = None
        #: Local files queued so far (zip members and objects are not read ahead).
        self.queued = 0

    def submit(self, refs: Sequence[FileRef]) -> None:
        """Start reading ahead the local files among ``refs`` (others are skipped)."""
        if not hasattr(os, "posix_fadvise"):
            return
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            for _ in range(self.threads):
                threading.Thread(target=self._run, name="dicomlake-prefetch", daemon=True).start()
        for ref in refs:
            path = local_file(ref)
            if path is not None:
                self._queue.put(path)
                self.queued += 1

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            path = self._queue.get()
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # the parser will report it
            try:
                os.posix_fadvise(fd, 0, _PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def local_file(ref: FileRef) -> str | None:
    """The local path of a plain file reference; None for zip members and object storage."""
    if not _is_local(ref.path):
        return None
    return ref.open_path or _local_path(ref.path)


@contextlib.contextmanager
def open_ref(
    ref: FileRef | str, *, storage_options: StorageOptionsLike = None
) -> Iterator[IO[bytes]]:
    """Open a reference for reading, wherever it lies.

    Local files are opened directly; zip members through an archive kept open in a
    small per-process cache (re-checked against the archive's size and mtime on each
    use), so reading thousands of members of one zip parses its directory once;
    anything else goes through ``fsspec.open``.

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
    open_path = None if isinstance(ref, str) else ref.open_path
    zipped = _split_zip_uri(uri)
    if zipped is not None:
        member, archive_uri = zipped
        with (
            _remote_errors(archive_uri, storage_options),
            _open_zip_member(archive_uri, member, open_path, storage_options) as handle,
        ):
            yield handle
    elif _is_local(uri):
        with open(open_path or _local_path(uri), "rb") as handle:
            yield handle
    else:
        with _remote_errors(uri, storage_options):
            fs, path = _url_to_fs(uri, storage_options)
            with fs.open(path, "rb") as handle:
                yield handle


def _remote_errors(
    uri: str, storage_options: StorageOptionsLike
) -> contextlib.AbstractContextManager[None]:
    """Name a remote read's storage failure by its cause (the error row's class)."""
    if _is_local(uri):
        return contextlib.nullcontext()
    return translate_errors(StorageConfig.coerce(storage_options).retries)


def _open_zip_member(
    archive_uri: str,
    member: str,
    open_path: str | None,
    storage_options: StorageOptionsLike,
) -> IO[bytes]:
    if _is_local(archive_uri):
        local = open_path or _local_path(archive_uri)
        st = os.stat(local)
        signature: Hashable = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return _zip_cache.open_member(
            archive_uri, signature, lambda: zipfile.ZipFile(local), member
        )
    fs, path = _url_to_fs(archive_uri, storage_options)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    signature = (info.get("size"), _info_mtime(info), etag)

    def opener() -> zipfile.ZipFile:
        # ZipFile does not close a file object it was given; the fsspec file is
        # closed when the ZipFile and its open members are garbage collected.
        return zipfile.ZipFile(fs.open(path, "rb"))

    return _zip_cache.open_member(archive_uri, signature, opener, member)


# --------------------------------------------------------------------------- columns


def path_tags(relative_path: str) -> list[str]:
    r"""Split a relative path into words, for the ``path_tags`` column.

    Folder names often carry the study, the series or the patient's cohort, so the
    parts are worth searching with ``array_contains`` the way pixels users do.

    Args:
        relative_path: A path relative to its source.

    Returns:
        The parts between ``/``, ``\``, ``.``, ``_``, ``-`` and whitespace, empty
        ones dropped.

    Example:
        >>> path_tags("CT head/series_01/IM-0001.dcm")
        ['CT', 'head', 'series', '01', 'IM', '0001', 'dcm']
    """
    return [part for part in _PATH_TAG_SPLIT.split(relative_path) if part]


def extension(path: str) -> str:
    """Lower-case suffix of a path's last component, without the dot.

    For a zip member the member's own suffix counts, not the archive's, so members
    and plain files share one ``extension`` vocabulary.

    Args:
        path: A path or URI (``zip://MEMBER::URI`` included).

    Returns:
        The suffix such as ``'dcm'``, or ``''`` when the name has none.

    Example:
        >>> extension("zip://dir/IM1.DCM::file:///data/x.zip")
        'dcm'
    """
    zipped = _split_zip_uri(path)
    if zipped is not None:
        path = zipped[0]
    name = re.split(r"[/\\]", path)[-1]
    stem, dot, suffix = name.lstrip(".").rpartition(".")
    return suffix.lower() if dot and stem else ""
