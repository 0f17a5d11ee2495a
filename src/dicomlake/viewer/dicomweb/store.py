"""STOW-RS: store the instances of a request as files, then ingest them into the lake.

What a request does (:func:`store_instances`), under one lock per store folder:

1. Each part is checked with pydicom (through the lake's header reader: bounded
   memory, a file cut short detected): a PS3.10 file (preamble, ``DICM``, file meta
   with a Transfer Syntax UID) whose header decodes, with SOP Class, SOP Instance,
   Study and Series Instance UIDs that follow the UID grammar (``[0-9]+(.[0-9]+)*``,
   at most 64 characters: no path can be smuggled in) and agree with the file meta.
   With a study in the URL (``POST /studies/{study}``), an instance of another study
   is refused (0xA900).
2. Each good part is written atomically (a temporary file in
   ``<store>/.incoming``, fsync, ``os.replace``) to
   ``<store>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, byte for byte as sent,
   by :mod:`dicomlake.jobs.store`, which the DIMSE receiver shares.
3. One incremental ingest of the store folder brings the new files into the lake
   (thumbnails too when the lake has a thumbnails table), and each stored file's row
   is checked to be ``ok``.

Replacement rule: the store holds one file per SOP Instance UID. Storing a SOP
Instance UID again replaces its file (the ingest sees it changed and replaces its
row); if it arrives under another study or series, the old file and its row are
removed. Within one request, the last part with a given SOP Instance UID wins.

The store folder defaults to ``<lake>/_store`` (:func:`default_store_dir`): the
lake's tables are its ``instances``, ``thumbnails``, ... sub-folders, so neither
delta-rs nor DuckDB ever reads ``_store``. A lake in object storage has no such local
folder: it needs an explicit local ``store_dir`` (``--store-dir``), and its rows then
name files on this server's disk. The ingest lists the whole store folder each
request (how it finds what changed, and how files left by a failed ingest get in
later), so a request costs one listing of the store on top of its own files.

Status codes (PS3.18 table 10.5.3-1): 200 all stored, 202 some failed, 409 none
stored; the body is the Store Instances Response Module (PS3.18 annex I) as DICOM
JSON. Request-level errors (400, 413, 415) are raised as exceptions with a
``status``; see :mod:`dicomlake.viewer.dicomweb.multipart`.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dicomlake.dicom.uids import is_uid
from dicomlake.errors import DiskFull, LakeError
from dicomlake.jobs.store import (
    INCOMING,
    instance_path,
    other_copies,
    purge_parts,
    remove_files,
    spool_dir,
    store_lock,
    write_file,
)
from dicomlake.storage.locations import file_uri, local_path
from dicomlake.viewer.dicomweb.multipart import Part

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_DOES_NOT_MATCH_SOP_CLASS",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_PROCESSING",
    "INCOMING",
    "STORE_FOLDER",
    "BadStoreRequest",
    "default_store_dir",
    "is_uid",
    "spool_dir",
    "store_instances",
    "warning_header",
]

log = logging.getLogger(__name__)

#: Failure Reason (0008,1197) values, PS3.18 table I.2-2.
FAILURE_OUT_OF_RESOURCES: Final = 0xA700  # the disk is full
FAILURE_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # UIDs missing, invalid, or not the study's
FAILURE_CANNOT_UNDERSTAND: Final = 0xC000  # not a DICOM file, or its header does not decode
FAILURE_PROCESSING: Final = 0x0110  # written but not ingested, or another I/O error

#: The store folder's name inside a local lake.
STORE_FOLDER: Final = "_store"
_PREAMBLE: Final = 128
_TRANSFER_SYNTAX: Final = "00020010"
#: The UIDs an instance must have (its file's place in the store is made of three).
_REQUIRED: Final = {
    "SOPClassUID": "00080016",
    "SOPInstanceUID": "00080018",
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
}
#: Data set UIDs the file meta repeats, which must agree when given.
_IN_FILE_META: Final = {
    "SOPClassUID": ("MediaStorageSOPClassUID", "00020002"),
    "SOPInstanceUID": ("MediaStorageSOPInstanceUID", "00020003"),
}
_SERVICE: Final = "dicomlake"

# DICOM JSON tags of the Store Instances Response Module (PS3.18 annex I)
_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_CLASS_UID = "00081150"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


class BadStoreRequest(ValueError):
    """A store request that cannot be handled at all (HTTP 400)."""

    status: int = 400


def default_store_dir(lake: str) -> str:
    """``<lake>/_store``: where STOW-RS writes for a local lake.

    Raises:
        LakeError: The lake is in object storage, so it has no local folder: give a
            store folder explicitly (``dicomlake serve --store-dir``).
    """
    from dicomlake.lake.location import lake_root

    root = local_path(lake_root(lake))
    if root is None:
        raise LakeError(
            f"cannot store instances into lake at {lake} without a local folder for "
            "the files: give --store-dir (the lake's rows will name files on this server)",
            lake=lake,
        )
    return os.path.join(root, STORE_FOLDER)


@dataclass(slots=True)
class _Outcome:
    """What became of one part: stored (``path`` set) or failed (``failure`` set)."""

    index: int
    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    series: str = ""
    path: str = ""
    failure: int = 0
    reason: str = ""

    def fail(self, code: int, reason: str) -> _Outcome:
        self.failure, self.reason, self.path = code, reason, ""
        return self


def store_instances(
    lake: str,
    store_dir: str,
    parts: Sequence[Part],
    *,
    study_uid: str | None,
    base_url: str = "",
    storage_options: StorageOptions = None,
) -> tuple[int, dict[str, Any]]:
    """Store ``parts`` (STOW-RS), ingest them, and answer with the response module.

    Args:
        lake: Lake folder or URI to ingest into.
        store_dir: Local folder the files are written under (created if missing).
        parts: The request's parts, as :class:`~dicomlake.viewer.dicomweb.multipart.MultipartParser`
            gives them; they are read, not closed.
        study_uid: The study of the URL (``POST /studies/{study}``); None for
            ``POST /studies``.
        base_url: The DICOMweb root URL (``http://host/dicomweb``) the Retrieve URLs
            start with.
        storage_options: The lake's object-storage settings.

    Returns:
        The HTTP status (200, 202 or 409) and the Store Instances Response Module as
        DICOM JSON; :func:`warning_header` gives the Warning header that goes with it.

    Raises:
        BadStoreRequest: No parts, or ``study_uid`` is not a UID.
    """
    if study_uid is not None and not is_uid(study_uid):
        raise BadStoreRequest("the study in the URL is not a valid Study Instance UID")
    if not parts:
        raise BadStoreRequest("the request has no parts")
    root = os.path.abspath(store_dir)
    os.makedirs(root, exist_ok=True)
    with store_lock(root):
        purge_parts(root)
        outcomes = [_inspect(i, part, study_uid) for i, part in enumerate(parts, 1)]
        for outcome, part in zip(outcomes, parts, strict=True):
            if not outcome.failure:
                _write(outcome, part, root)
        stored = [o for o in outcomes if not o.failure]
        if stored:
            _ingest(lake, root, stored, storage_options)
    for outcome in outcomes:
        if outcome.failure:
            log.warning(
                "STOW-RS: part %d not stored (0x%04X): %s",
                outcome.index,
                outcome.failure,
                outcome.reason,
            )
    return _response(outcomes, study_uid, base_url.rstrip("/"))


def warning_header(status: int, body: dict[str, Any]) -> str | None:
    """The HTTP Warning header (``299 dicomlake: ...``) for a 202 or 409 response.

    Example:
        >>> warning_header(200, {})
    """
    if status not in (202, 409):
        return None
    failed = len(body.get(_FAILED_SOP_SEQUENCE, {}).get("Value", []))
    stored = len(body.get(_REFERENCED_SOP_SEQUENCE, {}).get("Value", []))
    if status == 409:
        text = f"none of the {failed} instances was stored"
    else:
        text = f"{failed} of {failed + stored} instances were not stored"
    return f"299 {_SERVICE}: {text}; see Failed SOP Sequence (0008,1198)"


# ---------------------------------------------------------------------- one request


def _inspect(index: int, part: Part, study_uid: str | None) -> _Outcome:
    """Check one part's header; the outcome says its UIDs or why it fails.

    The header is read by the lake's own reader (:func:`~dicomlake.dicom.header.read_header`:
    pydicom with bounded memory, value validation off so no value reaches a log, and
    a file cut short detected), so what is accepted here is what ingest reads.
    """
    from dicomlake.dicom.header import read_header
    from dicomlake.errors import TruncatedFile

    outcome = _Outcome(index)
    if part.content_type not in ("", "application/dicom"):
        return outcome.fail(
            FAILURE_CANNOT_UNDERSTAND,
            f"part type {part.content_type} is not supported (only application/dicom)",
        )
    if part.size == 0:
        return outcome.fail(FAILURE_CANNOT_UNDERSTAND, "the part is empty")
    fp = part.open()
    if fp.read(_PREAMBLE + 4)[_PREAMBLE:] != b"DICM":
        return outcome.fail(
            FAILURE_CANNOT_UNDERSTAND, "not a DICOM file (no 128-byte preamble and DICM)"
        )
    fp.seek(0)
    try:
        header = read_header(fp, uri=f"stow:part-{index}")
    except TruncatedFile:
        return outcome.fail(FAILURE_CANNOT_UNDERSTAND, "the file ends inside its header")
    except Exception as exc:  # pydicom raises many kinds on a damaged header
        log.debug("STOW-RS: part %d does not decode: %s", index, type(exc).__name__)
        return outcome.fail(FAILURE_CANNOT_UNDERSTAND, "the DICOM header does not decode")
    if any(w.startswith("pixel data truncated") for w in header.warnings):
        return outcome.fail(FAILURE_CANNOT_UNDERSTAND, "the file ends inside its pixel data")
    meta = header.meta
    if not is_uid(_uid(meta, _TRANSFER_SYNTAX)):
        return outcome.fail(
            FAILURE_CANNOT_UNDERSTAND, "no file meta information with a Transfer Syntax UID"
        )
    values = {keyword: _uid(meta, tag) for keyword, tag in _REQUIRED.items()}
    # echo back only what is a UID: nothing else belongs in a UI element
    outcome.sop_class = values["SOPClassUID"] if is_uid(values["SOPClassUID"]) else ""
    outcome.sop_instance = values["SOPInstanceUID"] if is_uid(values["SOPInstanceUID"]) else ""
    for keyword, value in values.items():
        if not value:
            return outcome.fail(FAILURE_DOES_NOT_MATCH_SOP_CLASS, f"no {keyword}")
        if not is_uid(value):
            return outcome.fail(FAILURE_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is not a valid UID")
    for keyword, (meta_keyword, tag) in _IN_FILE_META.items():
        in_meta = _uid(meta, tag)
        if in_meta and in_meta != values[keyword]:
            return outcome.fail(
                FAILURE_DOES_NOT_MATCH_SOP_CLASS, f"{meta_keyword} differs from {keyword}"
            )
    outcome.study, outcome.series = values["StudyInstanceUID"], values["SeriesInstanceUID"]
    if study_uid is not None and outcome.study != study_uid:
        return outcome.fail(
            FAILURE_DOES_NOT_MATCH_SOP_CLASS, "the instance is not of the study in the URL"
        )
    return outcome


def _uid(meta: dict[str, Any], tag: str) -> str:
    r"""A UID element of a DICOM JSON header as text: '' when absent, values joined by ``\``."""
    values = meta.get(tag, {}).get("Value") or []
    return "\\".join(str(v).strip("\0 ") for v in values)


def _write(outcome: _Outcome, part: Part, root: str) -> None:
    """Write the part to its place atomically; an I/O error fails the outcome."""
    target = instance_path(root, outcome.study, outcome.series, outcome.sop_instance)
    try:
        write_file(root, target, part.open())
    except OSError as exc:
        full = isinstance(exc, DiskFull)
        log.error("STOW-RS: cannot write part %d: %s", outcome.index, exc)
        outcome.fail(
            FAILURE_OUT_OF_RESOURCES if full else FAILURE_PROCESSING,
            "the disk is full" if full else f"cannot write the file ({exc.strerror})",
        )
        return
    outcome.path = target


def _ingest(lake: str, root: str, stored: list[_Outcome], storage_options: StorageOptions) -> None:
    """Remove replaced copies, ingest the store once, and check each stored row."""
    import numpy as np

    import dicomlake
    from dicomlake.lake.location import THUMBNAILS_TABLE, table_exists
    from dicomlake.lake.sync import delete_instances
    from dicomlake.rows import row_id

    winners = {o.sop_instance: o.path for o in stored}  # the last part wins
    # also finds an earlier part of the same request that a later one replaced
    stale = other_copies(root, winners)
    remove_files(stale)
    try:
        thumbnails = table_exists(lake, THUMBNAILS_TABLE, storage_options=storage_options)
        dicomlake.ingest(
            [root], lake, workers=0, thumbnails=thumbnails, storage_options=storage_options
        )
        if stale:
            ids = np.array([row_id(file_uri(p)) for p in stale], dtype=np.int64)
            delete_instances(lake, ids, storage_options)
        statuses = _row_statuses(lake, set(winners.values()), storage_options)
    except Exception as exc:  # the files stay: the next request's ingest picks them up
        log.exception("STOW-RS: the ingest into %s failed", lake)
        full = "disk is full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC
        for outcome in stored:
            outcome.fail(
                FAILURE_OUT_OF_RESOURCES if full else FAILURE_PROCESSING,
                "stored, but the ingest into the lake failed",
            )
        return
    for outcome in stored:
        status = statuses.get(winners[outcome.sop_instance])
        if status != "ok":
            outcome.fail(FAILURE_PROCESSING, f"the lake's row for the file is {status!r}")


def _row_statuses(lake: str, paths: set[str], storage_options: StorageOptions) -> dict[str, str]:
    """The ``status`` of each stored file's row in the lake, by local path."""
    import pyarrow.compute as pc

    from dicomlake.lake.location import open_table
    from dicomlake.lake.tables import arrow_dataset
    from dicomlake.rows import row_id

    by_id = {row_id(file_uri(path)): path for path in paths}
    table = arrow_dataset(open_table(lake, storage_options=storage_options)).to_table(
        columns=["row_id", "status"], filter=pc.field("row_id").isin(list(by_id))
    )
    ids = table.column("row_id").to_pylist()
    statuses = table.column("status").to_pylist()
    return {by_id[i]: str(s) for i, s in zip(ids, statuses, strict=True)}


# ----------------------------------------------------------------------- the response


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _reference(outcome: _Outcome) -> dict[str, Any]:
    return {
        _REFERENCED_SOP_CLASS_UID: _element("UI", *filter(None, [outcome.sop_class])),
        _REFERENCED_SOP_INSTANCE_UID: _element("UI", *filter(None, [outcome.sop_instance])),
    }


def _response(
    outcomes: list[_Outcome], study_uid: str | None, base: str
) -> tuple[int, dict[str, Any]]:
    stored = [o for o in outcomes if not o.failure]
    failed = [o for o in outcomes if o.failure]
    studies = {o.study for o in stored}
    study = study_uid or (studies.pop() if len(studies) == 1 else None)
    body: dict[str, Any] = {
        _RETRIEVE_URL: _element("UR", *([f"{base}/studies/{study}"] if study else []))
    }
    if failed:
        body[_FAILED_SOP_SEQUENCE] = _element(
            "SQ",
            *({**_reference(o), _FAILURE_REASON: _element("US", o.failure)} for o in failed),
        )
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = _element(
            "SQ",
            *(
                {
                    **_reference(o),
                    _RETRIEVE_URL: _element(
                        "UR",
                        f"{base}/studies/{o.study}/series/{o.series}/instances/{o.sop_instance}",
                    ),
                }
                for o in stored
            ),
        )
    status = 409 if not stored else 202 if failed else 200
    return status, body
