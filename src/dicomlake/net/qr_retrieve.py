"""C-GET and C-MOVE from the lake: which files a retrieval names, read and fitted to send.

A retrieval's identifier names entities by their unique keys only (PS3.4 C.4.2.2.1:
Patient ID, Study, Series or SOP Instance UIDs, lists allowed); they select
instances on the search index (one row per SOP Instance UID, the same rows C-FIND
answers from). Each instance is read from the file or zip member its row points at
(:func:`dicomlake.catalog.opening.open_ref`) just before it is sent, so one instance
is in memory at a time.

A file that is gone or does not parse any more becomes a :func:`failed_marker`:
pynetdicom counts its sub-operation as failed and lists its SOP Instance UID, and
the retrieval goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomlake.catalog.opening import open_ref
from dicomlake.net.qr_find import MODEL_LEVELS, UNIQUE_KEYS, BadIdentifier, read_level, value_text
from dicomlake.search.connection import Cursor
from dicomlake.search.index import ensure_index
from dicomlake.search.query import BadQuery, parse

if TYPE_CHECKING:
    from pynetdicom.presentation import PresentationContext

    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)

#: Most presentation contexts one association may propose (PS3.8 §9.3.2.2: 128 ids).
MAX_CONTEXTS = 128
#: The uncompressed syntaxes offered for every SOP class, preferred first.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Match:
    """One instance a retrieval sends: where its file is and what it holds."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str | None


def read_retrieve(identifier: Dataset, model: str) -> tuple[str, list[tuple[str, str]]]:
    """The level and the unique keys (``(GGGGEEEE, value)``) of a retrieval identifier.

    Raises:
        BadIdentifier: The level is wrong, or its unique key is missing or empty.
    """
    level = read_level(identifier, model)
    levels = MODEL_LEVELS[model]
    pairs = []
    for name in levels[: levels.index(level) + 1]:
        tag = UNIQUE_KEYS[name]
        element = identifier.get(tag)
        text = "" if element is None else value_text(element).strip(" ")
        if text:
            pairs.append((f"{tag:08X}", text))
        elif name == level:
            raise BadIdentifier(
                f"a retrieval at level {level} needs the unique key ({tag >> 16:04X},"
                f"{tag & 0xFFFF:04X}) with a value"
            )
    return level, pairs


def matches(cur: Cursor, pairs: Sequence[tuple[str, str]]) -> list[Match]:
    """The instances the unique keys select, in study, series and instance order.

    Raises:
        BadIdentifier: A key's value is malformed (not a UID, ...).
        QueryTimeout: The query took too long.
    """
    try:
        search = parse("instance", pairs)
    except BadQuery as exc:
        raise BadIdentifier(str(exc)) from None
    ensure_index(cur)
    # every unique key is a column of dw_instances, so each condition applies as is
    where = " AND ".join(c.sql for c in search.conditions) or "TRUE"
    params = [p for c in search.conditions for p in c.params]
    rows = cur.fetch(
        'SELECT t.path, t."SOPInstanceUID", t."SOPClassUID", t."TransferSyntaxUID" '
        f"FROM dw_instances AS t WHERE {where} "
        'ORDER BY t."StudyInstanceUID", t."SeriesInstanceUID", t."InstanceNumber" NULLS LAST, '
        't."SOPInstanceUID"',
        params,
    )
    return [Match(str(p), str(sop), str(cls or ""), ts) for p, sop, cls, ts in rows]


def load(match: Match, *, storage_options: StorageOptions = None) -> Dataset:
    """The instance read from its file, with the file meta a C-STORE needs.

    A file or member that cannot be read, or holds another instance than its row
    says, gives a :func:`failed_marker`; the cause is logged by class only.
    """
    try:
        with open_ref(match.path, storage_options=storage_options) as handle:
            ds = dcmread(handle, force=True)
    except Exception as exc:
        log.warning(
            "an instance's file could not be read (%s): counted as failed", type(exc).__name__
        )
        return failed_marker(match)
    if str(ds.get("SOPInstanceUID", "")) != match.sop_instance_uid or "SOPClassUID" not in ds:
        log.warning(
            "an instance's file holds another instance than the lake's row: counted as failed"
        )
        return failed_marker(match)
    meta = ds.file_meta if isinstance(ds.file_meta, FileMetaDataset) else FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def failed_marker(match: Match) -> Dataset:
    """A dataset pynetdicom cannot send (it has no SOP Class UID): a failed sub-operation.

    pynetdicom's ``send_c_store`` refuses it before anything goes on the wire, and
    the retrieval lists its SOP Instance UID in *Failed SOP Instance UID List*.
    """
    ds = Dataset()
    ds.SOPInstanceUID = match.sop_instance_uid
    return ds


def proposed_contexts(found: Iterable[Match]) -> list[PresentationContext]:
    """The contexts a C-MOVE proposes to its destination for these instances.

    Per SOP class: one context of the uncompressed syntaxes, and one per compressed
    syntax of its files (each file's own syntax first, so nothing is re-encoded when
    the destination takes it). At most :data:`MAX_CONTEXTS`, uncompressed ones first.
    """
    from pynetdicom import build_context

    classes: dict[str, set[str]] = {}
    for match in found:
        if match.sop_class_uid:
            syntaxes = classes.setdefault(match.sop_class_uid, set())
            if match.transfer_syntax and UID(match.transfer_syntax).is_compressed:
                syntaxes.add(match.transfer_syntax)
    contexts = [build_context(sop_class, list(UNCOMPRESSED)) for sop_class in sorted(classes)]
    for sop_class in sorted(classes):
        for syntax in sorted(classes[sop_class]):
            contexts.append(build_context(sop_class, syntax))
    return contexts[:MAX_CONTEXTS]


def fit(ds: Dataset, accepted: Sequence[PresentationContext]) -> Dataset:
    """``ds`` in a transfer syntax the association accepted for its SOP class.

    The file's own syntax when accepted; an uncompressed file goes as it is when any
    uncompressed syntax was (pynetdicom re-encodes it); a compressed one is
    decompressed (pydicom, with the codecs extra) only when no context takes its
    own syntax. When nothing fits, ``ds`` is returned unchanged and its C-STORE fails.
    """
    if "SOPClassUID" not in ds:
        return ds
    sop_class = str(ds.SOPClassUID)
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    offered = [
        UID(str(cx.transfer_syntax[0]))
        for cx in accepted
        if cx.abstract_syntax == sop_class and cx.as_scu and cx.transfer_syntax
    ]
    if syntax in offered or not syntax.is_compressed:
        return ds
    if not any(not ts.is_compressed and not ts.is_deflated for ts in offered):
        return ds
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:
        log.warning(
            "an instance could not be decompressed (%s): counted as failed", type(exc).__name__
        )
    return ds
