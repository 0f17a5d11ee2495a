"""The ``deid`` kernel: one de-identified Part 10 copy per source file, and its row.

Each file is read with pydicom, checked for burned-in text (a file at risk is left out
unless the ``clean-pixel-data`` option cleans it), de-identified by
:func:`dicomlake.deidentify.rules.deidentify` and written to
``DEST/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with the output's
(new) UIDs, never under the source's name. Pseudonyms come from the key, so the same
file and key always give the same name and the same bytes: a re-run after a crash
rewrites a file in place instead of adding a second copy.

A row never carries a value of the source file. Library errors (pydicom's quote the
values they choke on) are reduced to their class name and the stage that failed;
:class:`~dicomlake.errors.DeidSkipped` messages are safe by contract and kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from dicomlake.catalog import FileRef, open_ref
from dicomlake.dicom.uids import is_uid
from dicomlake.errors import DeidSkipped
from dicomlake.killpoints import kill_point
from dicomlake.rows import build_batch, clip_error, row_id
from dicomlake.schema import DEID_SCHEMA
from dicomlake.storage.locations import file_uri, local_path

if TYPE_CHECKING:
    import pydicom

    from dicomlake._types import Batches, Row, StorageOptions
    from dicomlake.deidentify.keys import Key
    from dicomlake.deidentify.pixels import RegionRules

#: The name of the table the kernel's rows go to.
TABLE: Final = "deid"
#: The option that lets files at risk of burned-in text be cleaned instead of skipped.
CLEAN_PIXEL_DATA: Final = "clean-pixel-data"
#: A UID safe to use as a file or folder name (PS3.5 9.1: digits and dots, <= 64).
#: The suffix of a file being written; a leftover of a killed run is removed later.
PARTIAL_SUFFIX: Final = ".partial"


@dataclass(frozen=True, slots=True)
class Deidentified:
    """A de-identified file: its Part 10 bytes and the (new) UIDs that name it."""

    data: bytes
    study: str
    series: str
    sop: str

    def relative_path(self) -> str:
        """``<study>/<series>/<sop>.dcm``: where the file goes under the destination."""
        return f"{self.study}/{self.series}/{self.sop}.dcm"


class DeidFailed(Exception):
    """A stage of de-identifying one file failed; the message is safe to store."""


def destination_uri(destination: str) -> str:
    """The destination as a row records it: ``file:///abs`` locally, else the URL."""
    local = local_path(destination)
    if local is not None:
        return file_uri(local.rstrip("/") or "/")
    return destination.rstrip("/")


def failure(exc: BaseException, stage: str) -> str:
    """``Class: stage`` for an error row; never the exception's message.

    pydicom's messages quote the element values they fail on, so only the class name
    and a fixed text of ours are kept (with the errno name of an OS error).
    """
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return clip_error(f"{name}: {stage} ({errno.errorcode[exc.errno]})")
    return clip_error(f"{name}: {stage}")


def read_dataset(ref: FileRef, storage_options: StorageOptions) -> pydicom.Dataset:
    """The whole data set of ``ref``, pixels included (read even without a preamble).

    Raises:
        DeidFailed: The file cannot be opened or read as DICOM.
    """
    import pydicom

    try:
        with open_ref(ref, storage_options=storage_options) as fp:
            return pydicom.dcmread(fp, force=True)  # the lake has it as DICOM
    except Exception as exc:  # any failure to read is one error row
        raise DeidFailed(failure(exc, "cannot read the file as DICOM")) from None


def deidentify_dataset(
    ds: pydicom.Dataset,
    key: Key,
    options: frozenset[str],
    *,
    regions: RegionRules | None = None,
) -> Deidentified:
    """De-identify ``ds`` (its pixels cleaned in place first, when at risk and allowed).

    Raises:
        DeidSkipped: The file is left out (burned-in text, pixels not clean); the
            message is the reason.
        DeidFailed: A stage failed; the message names its class and the stage only.
    """
    from dicomlake.deidentify.pixels import RegionRules, burned_in_risk, clean_pixels
    from dicomlake.deidentify.rules import deidentify

    try:
        risk = burned_in_risk(ds)
        # with the option, a device whose rules name text rectangles is cleaned too
        known = (
            CLEAN_PIXEL_DATA in options
            and "PixelData" in ds
            and bool((regions or RegionRules.default()).boxes_for(ds))
        )
    except Exception as exc:
        raise DeidFailed(failure(exc, "cannot check the pixels for burned-in text")) from None
    if risk is not None and CLEAN_PIXEL_DATA not in options:
        raise DeidSkipped(f"{risk}; give the {CLEAN_PIXEL_DATA} option to clean it")
    if risk is not None or known:
        try:
            clean_pixels(ds, rules=regions)
        except DeidSkipped:
            raise
        except Exception as exc:
            raise DeidFailed(failure(exc, "cannot clean the pixel data")) from None
    try:
        out = deidentify(ds, key, options, in_place=True)  # read for this copy only
    except DeidSkipped:
        raise
    except Exception as exc:
        raise DeidFailed(failure(exc, "de-identification failed")) from None
    uids = [str(out.get(name, "") or "") for name in _NAMING_UIDS]
    if not all(is_uid(uid) for uid in uids):
        raise DeidFailed(
            "DeidError: the output lacks a valid StudyInstanceUID, SeriesInstanceUID or "
            "SOPInstanceUID to name it by"
        )
    try:
        data = part10_bytes(out)
    except Exception as exc:
        raise DeidFailed(failure(exc, "cannot encode the de-identified file")) from None
    return Deidentified(data, *uids)


_NAMING_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def part10_bytes(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file, its file meta naming the (new) SOP instance.

    The rules have cleaned the meta group; a data set read without one gets one here.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset):
        meta = FileMetaDataset()
        ds.file_meta = meta
    if "TransferSyntaxUID" not in meta:
        implicit = bool(ds.original_encoding[0])
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_partials(folder: str) -> int:
    """Remove ``.<name>.<pid>.partial`` files of processes that are gone (killed runs).

    Returns:
        How many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
            continue
        pid_text = name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[-1]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    return removed


def write_local(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a hidden temporary name, then a rename.

    A reader sees the old file or the whole new one; a killed writer leaves only a
    ``.partial`` file, which :func:`sweep_partials` removes.
    """
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(temporary, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_remote(url: str, data: bytes, storage_options: StorageOptions) -> None:
    """Write ``data`` to an object-store URL in one put (atomic on object stores)."""
    import fsspec

    from dicomlake.storage.settings import fsspec_options

    protocol = url.split("://", 1)[0]
    fs, path = fsspec.core.url_to_fs(url, **fsspec_options(storage_options, protocol))
    fs.pipe_file(path, data)


class DeidKernel:
    """De-identifies files into ``destination`` (picklable; never raises for a file).

    Args:
        key: The pseudonym key (its fingerprint goes in the rows, never the key).
        options: Checked option names (:func:`dicomlake.deidentify.options.parse_options`).
        destination: A local folder or an fsspec URL (``s3://bucket/prefix``).
        regions: Where burned-in text lies, for ``clean-pixel-data``.
        storage_options: Settings for object storage (sources and destination).
    """

    def __init__(
        self,
        key: Key,
        options: frozenset[str],
        destination: str,
        *,
        regions: RegionRules | None = None,
        storage_options: StorageOptions = None,
    ) -> None:
        self.key = key
        self.options = frozenset(options)
        self.option_list = sorted(self.options)
        self.fingerprint = key.fingerprint()
        self.destination = destination_uri(destination)
        self.local_root = local_path(destination)
        self.regions = regions
        self.storage_options = storage_options
        self.created_at = dt.datetime.now(dt.UTC)
        self._swept: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_swept"] = set()  # each process sweeps the folders it writes to
        return state

    def _base(self, ref: FileRef) -> Row:
        return {
            "row_id": row_id(ref.path),
            "path": ref.path,
            "destination": self.destination,
            "options": self.option_list,
            "key_fingerprint": self.fingerprint,
            "size": ref.size,
            "modification_time": ref.mtime,
        }

    def row(self, ref: FileRef) -> Row:
        """De-identify and write one file; its row says how it went (never raises)."""
        kill_point("parse")
        base = self._base(ref)
        try:
            ds = read_dataset(ref, self.storage_options)
            done = deidentify_dataset(ds, self.key, self.options, regions=self.regions)
            output = self._write(done)
        except DeidSkipped as exc:
            return {**base, "status": "skipped", "reason": clip_error(str(exc))}
        except DeidFailed as exc:
            return {**base, "status": "error", "reason": str(exc)}
        except Exception as exc:  # a bug of ours: still one row, still no values
            return {**base, "status": "error", "reason": failure(exc, "unexpected error")}
        return {**base, "status": "ok", "output": output, "SOPInstanceUID": done.sop}

    def _write(self, done: Deidentified) -> str:
        """Write the file under the destination; return its URI for the row."""
        relative = done.relative_path()
        try:
            if self.local_root is not None:
                path = os.path.join(self.local_root, *relative.split("/"))
                folder = os.path.dirname(path)
                if folder not in self._swept:
                    sweep_partials(folder)
                    self._swept.add(folder)
                write_local(path, done.data)
                return file_uri(path)
            url = f"{self.destination}/{relative}"
            write_remote(url, done.data, self.storage_options)
            return url
        except Exception as exc:
            raise DeidFailed(failure(exc, "cannot write the output")) from None

    def error_row(self, ref: FileRef, reason: str) -> Row:
        """The row of a file the engine gave up on (timed out, or crashed its worker)."""
        return {**self._base(ref), "status": "error", "reason": clip_error(reason)}

    def batch(self, rows: Sequence[Row]) -> Batches:
        """A task's rows as one batch of the ``deid`` table."""
        return {TABLE: deid_batch(rows, self.created_at)}


def deid_batch(rows: Sequence[Row], created_at: dt.datetime) -> pa.RecordBatch:
    """Build a RecordBatch in :data:`DEID_SCHEMA` from row dicts."""
    return build_batch(rows, DEID_SCHEMA, stamps={"created_at": created_at})
