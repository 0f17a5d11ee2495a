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

from dicomlake.errors import SourceNotFound
from dicomlake.storage import fsspec_options

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
    import fsspec.core

    return fsspec.core.url_to_fs(url, **fsspec_options(storage_options))


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
    vanishing. Unreadable directories are skipped with a warning.

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
                    break
                name = _display(entry.name)
                rel = f"{rel_dir}/{name}" if rel_dir else name
                yield from _local_entry_refs(entry, rel, visited, subdirs)
        stack.extend(reversed(subdirs))


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
        yield FileRef(
            path=f"{_ZIP_PREFIX}{member}::{zip_uri}",
            relative_path=member if direct else f"{zip_rel}/{member}",
            size=info.file_size,
            mtime=_zip_mtime(info.date_time),
            open_path=open_path,
        )


def _iter_fsspec_source(source: str, storage_options: StorageOptionsLike) -> Iterator[FileRef]:
    fs, root = _url_to_fs(source, storage_options)
    # fsspec keeps one file system object per set of options, with its listings
    # cached: a re-run in the same process must see the bucket as it is now
    fs.invalidate_cache()
    if fs.isfile(root):
        info = fs.info(root)
        name = posixpath.basename(root.rstrip("/"))
        yield from _fsspec_file_refs(fs, root, source, name, info, direct=True)
        return
    if not fs.isdir(root):
        raise SourceNotFound(f"source not found: {source}", source=source)

    def on_error(exc: OSError) -> None:
        logger.warning("cannot list %s: %s", getattr(exc, "filename", None) or source, exc)

    prefix = root.rstrip("/") + "/"
    base = source if source.endswith("/") else source + "/"
    # fsspec lists one directory (one paged listing) per step and yields it at once
    for dirpath, _dirs, files in fs.walk(root, detail=True, on_error=on_error):
        for key, info in sorted(files.items()):
            if not key or info.get("type") == "directory":
                continue  # "" is a directory marker object, not a file
            full = str(info.get("name") or f"{dirpath.rstrip('/')}/{key}").rstrip("/")
            rel = full[len(prefix) :] if full.startswith(prefix) else full
            uri = fs.unstrip_protocol(full) if "::" in source else base + rel
            yield from _fsspec_file_refs(fs, full, uri, rel, info, direct=False)


def _fsspec_file_refs(
    fs: AbstractFileSystem,
    fs_path: str,
    uri: str,
    rel: str,
    info: dict[str, Any],
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
        with fs.open(fs_path, "rb") as raw:
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
        except (ImportError, ValueError, OSError) as exc:
            raise SourceNotFound(
                f"source cannot be reached: {source} ({_short_error(exc)}); check the URL, "
                "storage options and that the fsspec backend for it is installed",
                source=source,
            ) from exc
        if not exists:
            raise SourceNotFound(f"source not found: {source}", source=source)


# --------------------------------------------------------------------------- opening


class _ZipCache:
    """A small LRU of open ``ZipFile`` objects, so members share one central directory.

    Entries are keyed by archive URI and checked against a signature (size, mtime,
    inode or ETag) on every use, so a rewritten archive is reopened. Members are
    opened under the lock: an archive evicted by another thread stays readable for
    members already open, because ``ZipFile`` counts its open members.
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
            return archive.open(member)

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
    """
    uri = ref if isinstance(ref, str) else ref.path
    open_path = None if isinstance(ref, str) else ref.open_path
    zipped = _split_zip_uri(uri)
    if zipped is not None:
        member, archive_uri = zipped
        with _open_zip_member(archive_uri, member, open_path, storage_options) as handle:
            yield handle
    elif _is_local(uri):
        with open(open_path or _local_path(uri), "rb") as handle:
            yield handle
    else:
        import fsspec

        with fsspec.open(uri, "rb", **fsspec_options(storage_options)) as handle:
            yield handle


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
