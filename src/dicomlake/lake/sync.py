"""``--sync``: find the rows of files that are gone from a source, and delete them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError

from dicomlake.lake.ids import member_of, sorted_unique
from dicomlake.lake.location import (
    ACQUISITION_TABLE,
    INSTANCES_TABLE,
    PATCHES_TABLE,
    SEGMENTS_TABLE,
    THUMBNAILS_TABLE,
    lake_error,
    try_open,
)
from dicomlake.lake.tables import WRITER_PROPERTIES, arrow_dataset
from dicomlake.storage.locations import file_uri, local_path, uri_forms

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)


#: How many row ids one delete transaction handles.
DELETE_CHUNK: Final = 1_000_000

#: The tables an instance's rows are deleted from, in this order (see
#: :func:`delete_instances`): what was made from it (thumbnails, patches, a
#: segmentation's segments) before the instance row, its acquisition row after it.
#: ``deid`` is not among them: its rows record copies written, which stay.
INSTANCE_TABLES: Final = (
    THUMBNAILS_TABLE,
    PATCHES_TABLE,
    SEGMENTS_TABLE,
    INSTANCES_TABLE,
    ACQUISITION_TABLE,
)


def _source_prefix(prefix: str) -> str:
    """A source as it appears at the start of row paths (URI form, no trailing slash).

    A local one is written as its rows are (:func:`file_uri`): ``file:///...``, or
    ``file://localhost/...`` percent-escaped when its name is not valid UTF-8.
    """
    if not prefix:
        raise ValueError("a source prefix must not be empty")
    local = local_path(prefix)
    if local is not None:
        prefix = file_uri(local)
    return prefix.rstrip("/") or prefix


def _source_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Each source in every form its rows' paths may start with (:func:`uri_forms`)."""
    return sorted({form for p in prefixes for form in uri_forms(_source_prefix(p))})


def _match(paths: pa.Array, prefixes: Sequence[str]) -> np.ndarray:
    mask = np.zeros(len(paths), dtype=bool)
    for prefix in prefixes:
        hit = pc.or_(pc.equal(paths, prefix), pc.starts_with(paths, prefix + "/"))
        mask |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return mask


def _under_any(paths: pa.Array, prefixes: Sequence[str]) -> np.ndarray:
    """Which ``paths`` lie at or below one of ``prefixes`` (a numpy bool mask).

    A zip member ``zip://MEMBER::URI`` is judged by the text after its last ``::``, the
    URI of the outermost container file. Matching stops at path separators, so the
    source ``file:///data`` does not claim ``file:///data2/x.dcm``. The regex runs on
    zip members only: on ten million plain paths it would cost seconds.
    """
    under = _match(paths, prefixes)
    is_zip = pc.fill_null(pc.starts_with(paths, "zip://"), False).to_numpy(zero_copy_only=False)
    if is_zip.any():
        members = np.flatnonzero(is_zip)
        outer = pc.replace_substring_regex(
            paths.take(pa.array(members)), pattern=r"^.*::", replacement=""
        )
        under[members] = _match(outer, prefixes)
    return under


def stale_row_ids(
    lake: str,
    prefixes: Iterable[str],
    seen_row_ids: np.ndarray,
    storage_options: StorageOptions = None,
    *,
    keep: Sequence[str] = (),
) -> np.ndarray:
    """Row ids of files that disappeared from the sources just scanned (for ``--sync``).

    Reads ``row_id`` and ``path`` batch by batch. Rows of other sources are never
    returned, so syncing one folder cannot delete what another folder contributed.

    Args:
        lake: Lake folder or object-store URI prefix.
        prefixes: The sources scanned, as URIs (``file:///data``, ``s3://b/k``); a
            plain local path is turned into a ``file://`` URI. A row belongs to a
            source when its path (for a zip member, the zip's URI after the last
            ``::``) equals the source or lies below it; below a local folder, in
            either form (``file:///data/x`` or, for a name that is not valid UTF-8,
            ``file://localhost/data/...``).
        seen_row_ids: Row ids of every file the scan listed.
        storage_options: Options for the storage backend.
        keep: Folders (URIs ending in ``/``) whose listing failed in the scan: rows
            under them are never stale, since their files were not seen, not gone.

    Returns:
        Sorted unique int64 row ids present in the lake under a prefix but not seen.

    Raises:
        ValueError: If a prefix is empty.
        LakeError: If the table exists but cannot be read.
    """
    norm = _source_prefixes(prefixes)
    kept = _source_prefixes(keep)
    empty = np.empty(0, dtype=np.int64)
    if not norm:
        return empty
    dt = try_open(lake, storage_options)
    if dt is None:
        return empty
    found: list[np.ndarray] = []
    try:
        for batch in arrow_dataset(dt).to_batches(columns=["row_id", "path"]):
            if batch.num_rows:
                under = _under_any(batch.column("path"), norm)
                if kept:
                    under &= ~_under_any(batch.column("path"), kept)
                found.append(batch.column("row_id").to_numpy()[under])
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise lake_error("read", lake, exc) from exc
    if not found:
        return empty
    candidates = sorted_unique(np.concatenate(found))
    del found
    stale: np.ndarray = candidates[~member_of(candidates, sorted_unique(seen_row_ids))]
    return stale


def delete_rows(
    lake: str,
    row_ids: np.ndarray,
    storage_options: StorageOptions = None,
    *,
    chunk_size: int = DELETE_CHUNK,
    table: str = INSTANCES_TABLE,
) -> int:
    """Delete rows by row id (of ``instances``, or of another table keyed by it).

    Each chunk is one MERGE ... WHEN MATCHED DELETE transaction: one scan of the
    table per chunk, where a ``row_id IN (...)`` predicate costs a comparison per id
    per row and a long SQL text.

    Args:
        lake: Lake folder or object-store URI prefix.
        row_ids: Row ids to delete; duplicates and ids not in the lake are fine.
        storage_options: Options for the storage backend.
        chunk_size: Most row ids per transaction.
        table: The table to delete from.

    Returns:
        Number of rows deleted.

    Raises:
        ValueError: If ``chunk_size`` is not positive.
        LakeError: If the table cannot be written.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    ids = sorted_unique(row_ids)
    if len(ids) == 0:
        return 0
    dt = try_open(lake, storage_options, table)
    if dt is None:
        return 0
    deleted = 0
    try:
        for start in range(0, len(ids), chunk_size):
            source = pa.table({"row_id": ids[start : start + chunk_size]})
            metrics = (
                dt.merge(
                    source,
                    "target.row_id = source.row_id",
                    source_alias="source",
                    target_alias="target",
                    writer_properties=WRITER_PROPERTIES,
                )
                .when_matched_delete()
                .execute()
            )
            deleted += int(metrics.get("num_target_rows_deleted", 0))
    except (DeltaError, OSError) as exc:
        raise lake_error("write", lake, exc) from exc
    log.info("deleted %d rows from %s", deleted, lake)
    return deleted


def delete_instances(lake: str, row_ids: np.ndarray, storage_options: StorageOptions = None) -> int:
    """Delete instances by row id: their ``instances`` rows and the rows keyed by them.

    The one place that knows which tables hang off an instance row
    (:data:`INSTANCE_TABLES`; a table the lake lacks is skipped): a caller that
    deleted the instance rows alone left the file's thumbnails, patches (which
    ``PatchDataset`` would still serve, then fail to read) and acquisition row.

    The order leaves a crash in between nothing that stays wrong. What was made
    from the file goes first: a crash after it leaves the instance row, which the
    next ``--sync`` finds stale again and deletes with the rest (a reader meanwhile
    sees the gone file's row without its thumbnail); deleted after it, they would
    stay for good, since nothing that deletes finds a row whose instance is gone.
    The acquisition row goes last: one left by a crash is hidden by the
    ``acquisition`` view, which joins the instance row, and ``dicomlake optimize``
    removes it.

    Args:
        lake: Lake folder or object-store URI prefix.
        row_ids: Row ids of the instances; duplicates and ids not in the lake are fine.
        storage_options: Options for the storage backend.

    Returns:
        Number of ``instances`` rows deleted.

    Raises:
        LakeError: If a table cannot be written.
    """
    deleted = 0
    for table in INSTANCE_TABLES:
        count = delete_rows(lake, row_ids, storage_options, table=table)
        if table == INSTANCES_TABLE:
            deleted = count
    return deleted
