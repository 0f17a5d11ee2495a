"""The store folder: instances received over the network, and their rows in the lake.

STOW-RS (:mod:`dicomlake.viewer.dicomweb.store`) and the DIMSE C-STORE SCP
(:mod:`dicomlake.net.receive`, also the storage side of ``dicomlake pull``) keep what
they receive here, the same way:

- **Layout.** One file per SOP Instance UID, at
  ``<store>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
  (:func:`instance_path`). Each of the three is checked against the UID grammar
  (digits and dots, at most 64 characters) before it names anything, so no path can
  be smuggled in (``..``, ``/``, a drive letter).
- **Atomic writes.** A file is written to a temporary ``<store>/.incoming/*.part``,
  flushed and fsynced, then renamed into place (:func:`write_file`); a reader or a
  crash sees the whole old file or the whole new one. A full disk (ENOSPC, a quota)
  raises :class:`~dicomlake.errors.DiskFull` after the temporary file is removed:
  nothing half-written is left, and nothing is acknowledged that is not on disk.
- **Replacement.** Storing a SOP Instance UID again replaces its file (and its row);
  arriving under another study or series, the old file and its row are removed
  (:func:`other_copies` scans the store for STOW-RS's requests; :class:`StoreIndex`
  keeps the SOP-to-file map of a long-running receiver, built by one scan).
- **Locking.** :func:`store_lock` holds the folder for a thread and, by ``flock``,
  against other processes (STOW-RS holds it per request, a receiver per file), so
  the ``.part`` files that :func:`purge_parts` removes are always a crashed writer's.

:class:`StoreRows` turns stored files into rows as ingest makes them (the instances
kernel on each file, thumbnails too when the lake has that table) and commits them
through :class:`~dicomlake.lake.writer.TableWriter` every few seconds; a file stored
again replaces its row (merge on ``row_id``), never doubles it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn

from dicomlake.dicom.uids import is_uid
from dicomlake.errors import DiskFull, disk_full
from dicomlake.storage.locations import file_uri

if TYPE_CHECKING:
    from dicomlake._types import Row, StorageOptions
    from dicomlake.catalog.refs import FileRef
    from dicomlake.kernels.instances import InstancesKernel
    from dicomlake.lake.writer import TableWriter

__all__ = [
    "INCOMING",
    "PART_SUFFIX",
    "StoreIndex",
    "StoreRows",
    "StoredRow",
    "catch_up",
    "instance_path",
    "other_copies",
    "place_part",
    "purge_parts",
    "remove_files",
    "spool_dir",
    "store_lock",
    "write_file",
    "write_part",
]

log = logging.getLogger(__name__)

#: Sub-folder of the store for files being written.
INCOMING: Final = ".incoming"
#: Suffix of a file being written (a leftover one is a crashed writer's).
PART_SUFFIX: Final = ".part"
_SUFFIX: Final = ".dcm"
_COPY_CHUNK: Final = 1024 * 1024

#: One lock per store folder for the threads of this process; processes sharing a
#: folder are serialized by a flock on it (see :func:`store_lock`).
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


# ----------------------------------------------------------------------- the files


def instance_path(root: str, study: str, series: str, sop: str) -> str:
    """``<root>/<study>/<series>/<sop>.dcm``, each part checked to be a UID.

    Raises:
        ValueError: A part is not a UID (the message names which, never its value).

    Example:
        >>> instance_path("/s", "1.2", "1.2.3", "1.2.3.4")
        '/s/1.2/1.2.3/1.2.3.4.dcm'
    """
    for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
        if not is_uid(uid):
            raise ValueError(f"{name} is not a valid UID")
    if not is_uid(sop):
        raise ValueError("SOPInstanceUID is not a valid UID")
    return os.path.join(root, study, series, sop + _SUFFIX)


@contextlib.contextmanager
def store_lock(root: str) -> Iterator[None]:
    """Hold the store folder: other threads (a lock), then other processes (flock).

    Re-entrant within a thread.
    """
    with _THREAD_LOCKS_GUARD:
        lock = _THREAD_LOCKS.setdefault(root, threading.RLock())
    with lock:
        fd = os.open(root, os.O_RDONLY)
        try:
            _flock(fd)
            yield
        finally:
            os.close(fd)  # releases the flock


if sys.platform != "win32":
    import fcntl

    def _flock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

else:  # pragma: no cover - no flock on Windows; one process per store there

    def _flock(fd: int) -> None:
        return None


def purge_parts(root: str) -> None:
    """Remove the ``.part`` files in ``<root>/.incoming``: left there by a crashed writer.

    Call it holding :func:`store_lock`. Only those: the folder also holds the
    anonymous spool files of requests still being received (see :func:`spool_dir`).
    """
    incoming = os.path.join(root, INCOMING)
    os.makedirs(incoming, exist_ok=True)
    for entry in os.scandir(incoming):
        if entry.name.endswith(PART_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def spool_dir(root: str) -> str:
    """The folder (created) where request bodies are spooled: the store's ``.incoming``.

    On the store's file system rather than in ``/tmp``, which may be memory.
    """
    path = os.path.join(os.path.abspath(root), INCOMING)
    os.makedirs(path, exist_ok=True)
    return path


def write_file(root: str, target: str, data: bytes | IO[bytes]) -> None:
    """Write ``data`` to ``target`` atomically: a temporary file, fsync, rename.

    The temporary file is ``<root>/.incoming/<random>.part`` (same file system as
    ``target``); the caller holds :func:`store_lock` so it is never purged early.

    Raises:
        DiskFull: No space left (or a quota): the temporary file is removed, the old
            ``target`` (if any) is untouched.
        OSError: Any other write error, with the same guarantees.
    """
    place_part(write_part(root, data), target)


def write_part(root: str, data: bytes | IO[bytes]) -> str:
    """Write ``data`` to a new ``<root>/.incoming/<random>.part``, fsynced; its path.

    The first half of :func:`write_file`, which a caller may do without holding
    :func:`store_lock` (several threads then fsync at once, which the file system
    commits together), then :func:`place_part` holding it. A ``.part`` purged in
    between (another process starting on the store) makes :func:`place_part` fail
    with FileNotFoundError; the caller then writes again, holding the lock.

    Raises:
        DiskFull: As :func:`write_file` (nothing is left behind).
        OSError: Any other write error (nothing is left behind).
    """
    temp = os.path.join(root, INCOMING, secrets.token_hex(8) + PART_SUFFIX)
    try:
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileNotFoundError:
            os.makedirs(os.path.dirname(temp), exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                shutil.copyfileobj(data, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        _failed(temp, exc)
    return temp


def place_part(temp: str, target: str) -> None:
    """Rename a :func:`write_part` file to ``target`` (its folders made); hold the lock.

    Raises:
        DiskFull: No space for the folders (the ``.part`` is removed).
        OSError: Any other error (the ``.part`` is removed); FileNotFoundError when
            the ``.part`` itself is gone.
    """
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(temp, target)
    except OSError as exc:
        _failed(temp, exc)


def _failed(temp: str, exc: OSError) -> NoReturn:
    """Remove a temporary file after ``exc``; raise ``exc`` (DiskFull for a full disk)."""
    with contextlib.suppress(OSError):
        os.unlink(temp)
    if disk_full(exc):
        raise DiskFull(exc.errno, "the disk is full (no space left on device)") from exc
    raise exc


def other_copies(root: str, kept: Mapping[str, str]) -> list[str]:
    """Files of the SOP Instance UIDs of ``kept`` at other places than ``kept`` names.

    Args:
        root: The store folder.
        kept: SOP Instance UID -> the one file that stays.

    Returns:
        The other files of those SOP Instance UIDs (another study or series), found
        by one scan of the store.
    """
    names = {sop + _SUFFIX: path for sop, path in kept.items()}
    found: list[str] = []
    for sop, path in _scan(root):
        if sop + _SUFFIX in names and path != names[sop + _SUFFIX]:
            found.append(path)
    return found


def _scan(root: str) -> Generator[tuple[str, str], None, None]:
    """(SOP Instance UID, path) of every ``<study>/<series>/<sop>.dcm`` of the store."""
    try:
        studies = os.scandir(root)
    except FileNotFoundError:
        return
    with studies:
        for study in studies:
            if study.name.startswith(".") or not study.is_dir(follow_symlinks=False):
                continue
            with os.scandir(study.path) as series_entries:
                for series in series_entries:
                    if not series.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(series.path) as entries:
                        for entry in entries:
                            if entry.name.endswith(_SUFFIX):
                                yield entry.name[: -len(_SUFFIX)], entry.path


def _has_files(root: str) -> bool:
    """Whether the store holds any instance file."""
    scan = _scan(root)
    try:
        return next(scan, None) is not None
    finally:
        scan.close()


class StoreIndex:
    """Where each SOP Instance UID of a store is: one scan at start, then kept up.

    A receiver consults it per instance instead of scanning the store each time. A
    copy written by another process after the scan is not known (STOW-RS's own scan
    finds it at its next request).
    """

    def __init__(self, root: str) -> None:
        self._paths: dict[str, str] = dict(_scan(root))

    def __len__(self) -> int:
        return len(self._paths)

    def place(self, sop: str, path: str) -> str | None:
        """Note that ``sop`` is now at ``path``; the other file it had, if any."""
        old = self._paths.get(sop)
        self._paths[sop] = path
        return old if old is not None and old != path else None


# ----------------------------------------------------------------------- the rows


@dataclass(slots=True)
class StoredRow:
    """The row a stored file got: its status (``ok``, ``error``...) and error text."""

    path: str
    status: str
    error: str | None = None


@dataclass(slots=True)
class _Counts:
    ok: int = 0
    errors: int = 0
    replaced: int = 0
    removed: int = 0
    committed: int = 0
    bytes: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)


class StoreRows:
    """Rows of files stored in a store folder, committed to the lake every few seconds.

    Thread-safe: receivers call :meth:`add` from each association's thread. The row
    is made on the calling thread (the instances kernel on the stored file, as ingest
    makes it); rows are handed to the table's writer and committed by its policy
    (``commit_rows`` rows or ``commit_seconds`` seconds), checked by
    :meth:`commit_if_due`, which a timer calls (and on :meth:`add` once many rows
    wait, unless a commit is under way). :meth:`close` commits everything still
    buffered. A commit never holds up :meth:`add`: the rows waiting are guarded by a
    lock of their own, taken only to append or to take them all.

    Args:
        lake: The lake folder or URI.
        root: The store folder (absolute).
        thumbnails: Draw thumbnails too; None: when the lake has a ``thumbnails``
            table (as STOW-RS does).
        commit_rows: Commit once this many rows wait...
        commit_seconds: ...or the oldest has waited this long.
        storage_options: The lake's object-storage settings.

    Raises:
        LakeError: The lake cannot be read or written.
    """

    def __init__(
        self,
        lake: str,
        root: str,
        *,
        thumbnails: bool | None = None,
        commit_rows: int = 5000,
        commit_seconds: float = 2.0,
        storage_options: StorageOptions = None,
    ) -> None:
        from dicomlake.jobs.acquisition_rows import acquisition_writer
        from dicomlake.kernels.instances import InstancesKernel
        from dicomlake.lake.location import INSTANCES_TABLE, THUMBNAILS_TABLE, table_exists
        from dicomlake.lake.writer import TableWriter

        self.lake = lake
        self.root = root
        self._options = storage_options
        if thumbnails is None:
            thumbnails = table_exists(lake, THUMBNAILS_TABLE, storage_options=storage_options)
        drawing = None
        if thumbnails:
            from dicomlake.kernels.thumbnails import ThumbnailOptions

            drawing = ThumbnailOptions()
        self._kernel: InstancesKernel = InstancesKernel(
            storage_options=storage_options, thumbnails=drawing, acquisition=True
        )
        self._lock = threading.RLock()  # hand-overs, commits, the writers
        self._pending = threading.Lock()  # the rows waiting, ``_added``, ``_deletes``
        self._acquired: TableWriter = acquisition_writer(lake, storage_options)
        self._writer: TableWriter = TableWriter(
            lake,
            INSTANCES_TABLE,
            max_rows=commit_rows,
            max_seconds=commit_seconds,
            storage_options=storage_options,
            before_commit=self._acquired.flush,
        )
        self._thumbs: TableWriter | None = (
            TableWriter(
                lake,
                THUMBNAILS_TABLE,
                max_rows=2000,
                max_seconds=commit_seconds,
                storage_options=storage_options,
            )
            if drawing is not None
            else None
        )
        self._known = self._lake_row_ids()
        self._added: set[int] = set()
        self._new: list[Row] = []
        self._changed: list[Row] = []
        self._deletes: list[int] = []
        self._since = time.monotonic()
        self._batch_seconds = min(0.5, commit_seconds)
        self._closed = False
        self.counts = _Counts()
        # the first batch imports what building one needs (a third of a second):
        # done now, not while the first instances wait for their answers
        self._kernel.batch([])

    def _lake_row_ids(self) -> Any:
        from dicomlake.lake.fingerprints import Fingerprints

        return Fingerprints.load(self.lake, storage_options=self._options)

    # -- rows in

    def ref(self, path: str) -> FileRef:
        """The reference ingest would list for ``path``, a file under the store."""
        from dicomlake.catalog.refs import FileRef, stat_mtime
        from dicomlake.storage.locations import display_name

        st = os.stat(path)
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        return FileRef(file_uri(path), display_name(rel), st.st_size, stat_mtime(st))

    def add(self, path: str) -> StoredRow:
        """Make the row of a stored file and buffer it (replacing the file's old row).

        Returns:
            What the row says (its status and error text).

        Raises:
            LakeError: A commit that came due failed.
        """
        ref = self.ref(path)
        row = self._kernel.row(ref)
        return self._buffer(row, ref.size or 0)

    def add_error(self, ref: FileRef, reason: str) -> StoredRow:
        """Buffer the error row of something received that could not be stored."""
        row = self._kernel.error_row(ref, reason)
        return self._buffer(row, 0)

    def _buffer(self, row: Row, size: int) -> StoredRow:
        import numpy as np

        from dicomlake.lake.fingerprints import NEW, UNKNOWN

        rid = int(row["row_id"])
        status = str(row["status"])
        with self._pending:
            if self._closed:
                raise RuntimeError("StoreRows is closed")
            known = rid in self._added or (
                self._known.classify(
                    np.array([rid], dtype=np.int64),
                    np.array([UNKNOWN], dtype=np.int64),
                    np.array([UNKNOWN], dtype=np.int64),
                )[0]
                != NEW
            )
            if known:
                self._changed.append(row)
                self.counts.replaced += 1
            else:
                self._new.append(row)
                self._added.add(rid)
            if status == "ok":
                self.counts.ok += 1
                self.counts.bytes += size
            else:
                self.counts.errors += 1
                name = str(row.get("error") or status).split(":", 1)[0]
                self.counts.error_classes[name] = self.counts.error_classes.get(name, 0) + 1
            many = len(self._new) + len(self._changed) >= 256
        if many and self._lock.acquire(blocking=False):  # else a commit is under way
            try:
                self._hand_over()
            finally:
                self._lock.release()
        return StoredRow(str(row["path"]), status, row.get("error"))

    def remove(self, path: str) -> None:
        """The row of ``path`` goes (its file was replaced by a copy elsewhere)."""
        from dicomlake.rows import row_id

        with self._pending:
            self._deletes.append(row_id(file_uri(path)))
            self.counts.removed += 1

    # -- commits

    def _hand_over(self) -> None:
        """Give the buffered rows to the writers (one batch each way); hold ``_lock``."""
        from dicomlake.jobs.acquisition_rows import write_acquisition
        from dicomlake.lake.location import INSTANCES_TABLE, THUMBNAILS_TABLE

        with self._pending:
            taken = ((self._new, False), (self._changed, True))
            self._new, self._changed = [], []
        for index, (rows, replace) in enumerate(taken):
            if not rows:
                continue
            try:
                out = self._kernel.batch(rows)
            except BaseException:  # these rows and the next wait for another try
                with self._pending:
                    for back, replaced in taken[index:]:
                        (self._changed if replaced else self._new)[:0] = back
                raise
            if self._thumbs is not None and THUMBNAILS_TABLE in out:
                # thumbnails first: an instance row committed means its thumbnail was
                self._thumbs.write(out[THUMBNAILS_TABLE], replace=True)
            write_acquisition(self._acquired, out, replace=replace)
            self._writer.write(out[INSTANCES_TABLE], replace=replace)
        self._since = time.monotonic()

    def commit_if_due(self) -> int:
        """Hand over rows waiting past half a second, and commit what is due.

        Returns:
            Rows committed.
        """
        with self._lock:
            if self._closed:
                return 0
            with self._pending:
                deletes = len(self._deletes)
            if deletes or time.monotonic() - self._since >= self._batch_seconds:
                # a deletion waits for every row added before it: handed over now...
                self._hand_over()
            if self._thumbs is not None:
                self._thumbs.commit_if_due()
            committed = self._writer.commit_if_due()
            if deletes and not self._writer.buffered_rows:  # ...and committed
                self._delete(deletes)
            self.counts.committed += committed
            return committed

    def flush(self) -> int:
        """Commit every buffered row now; rows committed."""
        with self._lock:
            with self._pending:
                deletes = len(self._deletes)
            self._hand_over()
            if self._thumbs is not None:
                self._thumbs.flush()
            committed = self._writer.flush()
            if deletes:
                self._delete(deletes)
            self.counts.committed += committed
            return committed

    def _delete(self, count: int) -> None:
        """Delete the rows of the first ``count`` replaced copies.

        Call it once every instance row buffered before those copies were replaced
        is committed: a row still waiting would land after the deletion and stay.
        Their thumbnails still buffered are committed here, for the same reason.
        """
        import numpy as np

        from dicomlake.lake.sync import delete_instances

        with self._pending:
            ids = np.array(self._deletes[:count], dtype=np.int64)
            del self._deletes[:count]
            self._added.difference_update(ids.tolist())
        if self._thumbs is not None:  # a copy's thumbnails still waiting would land after
            self._thumbs.flush()
        delete_instances(self.lake, ids, self._options)

    def close(self) -> None:
        """Commit everything buffered; the object is spent."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
                with self._pending:
                    self._closed = True  # no add from now on...
                    late = bool(self._new or self._changed or self._deletes)
                if late:  # ...and those that came during the flush are committed too
                    self.flush()
            finally:
                with self._pending:
                    self._closed = True
                self._writer.close()
                self._acquired.close()
                if self._thumbs is not None:
                    self._thumbs.close()


def catch_up(lake: str, root: str, storage_options: StorageOptions = None) -> int:
    """Ingest the store folder once: what a crash left between files and rows.

    An incremental ingest: files the lake holds unchanged are skipped, files stored
    before the crash get their rows, and rows of files no longer in the store go
    (``--sync``: a moved instance whose old file was removed but whose row was not
    deleted yet). The ``.incoming`` folder is emptied of leftovers first. A store
    without files is left alone: an unmounted volume must not empty the lake.

    Returns:
        Files the lake did not hold yet (new or changed rows).
    """
    import dicomlake
    from dicomlake.lake.location import THUMBNAILS_TABLE, table_exists

    os.makedirs(root, exist_ok=True)
    with store_lock(root):
        purge_parts(root)
    if not _has_files(root):
        return 0
    thumbnails = table_exists(lake, THUMBNAILS_TABLE, storage_options=storage_options)
    summary = dicomlake.ingest(
        [root],
        lake,
        workers=0,
        thumbnails=thumbnails,
        sync=True,
        storage_options=storage_options,
    )
    return int(summary.done)


def remove_files(paths: Iterable[str]) -> None:
    """Unlink ``paths``; already gone is fine."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
