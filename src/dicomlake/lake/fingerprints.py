"""What the lake already holds, so that a re-run extracts only new and changed files."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError

from dicomlake.lake.ids import positions
from dicomlake.lake.location import lake_error, try_open
from dicomlake.lake.tables import arrow_dataset

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)


#: Values :meth:`Fingerprints.classify` returns, one per file.
NEW: Final = 0
CHANGED: Final = 1
UNCHANGED: Final = 2

#: Marks an unknown size or modification time in the arrays given to ``classify``.
UNKNOWN: Final = -1


def _fingerprint_arrays(
    row_ids: np.ndarray, sizes: np.ndarray, mtimes_us: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the three arrays as int64, checking that they line up.

    Raises:
        ValueError: If the arrays differ in length.
    """
    arrays = (
        np.asarray(row_ids, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        np.asarray(mtimes_us, dtype=np.int64),
    )
    if not (len(arrays[0]) == len(arrays[1]) == len(arrays[2])):
        raise ValueError(
            "row_ids, sizes and mtimes_us must have the same length, got "
            f"{len(arrays[0])}, {len(arrays[1])} and {len(arrays[2])}"
        )
    return arrays


#: Error classes of failures that may pass (object storage throttling, server errors,
#: dropped connections, timeouts): a re-run extracts such files again.
TRANSIENT_ERRORS: Final = ("Throttled", "ServerError", "NetworkError", "StorageTimeout")


def _forget_transient_errors(table: pa.Table) -> pa.Table:
    """Drop the ``error`` column, unknowing size and time of rows with a transient error.

    Both unknown classifies the file as changed, so the next run reads it again and
    its row is replaced: a throttled bucket today is not an error row for ever.
    """
    error = table.column("error")
    table = table.drop_columns(["error"])
    if error.null_count == len(error):
        return table
    hits = [pc.starts_with(error, f"{name}:") for name in TRANSIENT_ERRORS]
    transient = pc.fill_null(functools.reduce(pc.or_, hits), False)
    if not pc.any(transient).as_py():
        return table
    for name in ("size", "modification_time"):
        column = table.column(name)
        unknown = pa.nulls(len(column), column.type)
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.if_else(transient, unknown, column))
    return table


class Fingerprints:
    """What the lake already holds, to decide which files a re-run must extract.

    Three sorted int64 arrays (row id, size, modification time in µs), about 24 bytes
    per row, so ten million rows take about 240 MB and no Python object per row.
    Unknown sizes and times are :data:`UNKNOWN` (-1).
    """

    __slots__ = ("_mtimes", "_row_ids", "_sizes", "version")

    def __init__(
        self,
        row_ids: np.ndarray,
        sizes: np.ndarray,
        mtimes_us: np.ndarray,
        *,
        version: int | None = None,
    ) -> None:
        row_ids, sizes, mtimes_us = _fingerprint_arrays(row_ids, sizes, mtimes_us)
        if len(row_ids) > 1 and not bool(np.all(row_ids[1:] >= row_ids[:-1])):
            order = np.argsort(row_ids, kind="stable")
            row_ids, sizes, mtimes_us = row_ids[order], sizes[order], mtimes_us[order]
        self._row_ids = row_ids
        self._sizes = sizes
        self._mtimes = mtimes_us
        #: Table version the fingerprints were read from; None for an empty lake.
        self.version = version

    @classmethod
    def empty(cls) -> Fingerprints:
        """Fingerprints of a lake that holds nothing yet."""
        none = np.empty(0, dtype=np.int64)
        return cls(none, none, none)

    @classmethod
    def load(cls, lake: str, storage_options: StorageOptions = None) -> Fingerprints:
        """Read the fingerprints of the current ``instances`` version.

        Only the columns ``row_id``, ``size`` and ``modification_time`` are read.

        Args:
            lake: Lake folder or object-store URI prefix.
            storage_options: Options for the storage backend.

        Returns:
            The fingerprints; empty when the lake has no ``instances`` table yet.

        Raises:
            LakeError: If the table exists but cannot be read.
        """
        dt = try_open(lake, storage_options)
        if dt is None:
            return cls.empty()
        try:
            table = arrow_dataset(dt).to_table(
                columns=["row_id", "size", "modification_time", "error"]
            )
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise lake_error("read", lake, exc) from exc
        table = _forget_transient_errors(table)
        # One column at a time, dropping each from the table once copied out, so the
        # peak stays near three copies of the data rather than five.
        row_ids = table.column("row_id").to_numpy()
        table = table.drop_columns(["row_id"])
        order = np.argsort(row_ids)
        row_ids = row_ids[order]
        sizes = pc.fill_null(table.column("size"), UNKNOWN).to_numpy()[order]
        table = table.drop_columns(["size"])
        mtimes = pc.fill_null(table.column("modification_time").cast(pa.int64()), UNKNOWN)
        del table
        mtimes = mtimes.to_numpy()[order]
        del order
        log.debug("loaded %d fingerprints from %s", len(row_ids), lake)
        return cls(row_ids, sizes, mtimes, version=dt.version())

    def __len__(self) -> int:
        return len(self._row_ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return self._row_ids.nbytes + self._sizes.nbytes + self._mtimes.nbytes

    def classify(self, row_ids: np.ndarray, sizes: np.ndarray, mtimes_us: np.ndarray) -> np.ndarray:
        """Sort listed files into new, changed and unchanged.

        A size or time counts only where both the listing and the lake know it. A row
        whose size and time are both unknown on one side counts as changed: without
        evidence, re-extracting is the safe choice.

        Args:
            row_ids: Row ids of the listed files (int64).
            sizes: Their sizes in bytes, :data:`UNKNOWN` where unknown.
            mtimes_us: Their modification times in µs since the epoch (UTC),
                :data:`UNKNOWN` where unknown.

        Returns:
            int8 array, per file :data:`NEW` (0), :data:`CHANGED` (1) or
            :data:`UNCHANGED` (2).

        Raises:
            ValueError: If the arrays differ in length.
        """
        q_ids, q_sizes, q_mtimes = _fingerprint_arrays(row_ids, sizes, mtimes_us)
        out = np.full(len(q_ids), NEW, dtype=np.int8)
        if len(self._row_ids) == 0 or len(q_ids) == 0:
            return out
        idx = positions(self._row_ids, q_ids)
        found = self._row_ids[idx] == q_ids
        l_sizes = self._sizes[idx]
        l_mtimes = self._mtimes[idx]
        size_known = (q_sizes >= 0) & (l_sizes >= 0)
        mtime_known = (q_mtimes != UNKNOWN) & (l_mtimes != UNKNOWN)
        differs = (size_known & (q_sizes != l_sizes)) | (mtime_known & (q_mtimes != l_mtimes))
        changed = differs | ~(size_known | mtime_known)
        out[found] = UNCHANGED
        out[found & changed] = CHANGED
        return out
