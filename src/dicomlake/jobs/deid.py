"""The de-identification job: ``ok`` instances of a lake, copied de-identified to DEST.

Each source instance gets one row in the source lake's ``deid`` table per destination
(see :data:`dicomlake.schema.DEID_SCHEMA`). A re-run skips the instances whose row for
this destination is ``ok`` or ``skipped`` with the same key fingerprint, options and
source size and time; errors are tried again. Outputs are named by their new UIDs,
which the key fixes, so a run killed at any moment and run again leaves exactly one
file per input: a file written but not yet recorded is written again, in place.

Two source files with the same SOPInstanceUID would name the same output: only the
first (by path) is written; the others get a ``skipped`` row that says so.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from dicomlake.errors import QueryError
from dicomlake.kernels.deid import DeidKernel, deid_batch, destination_uri
from dicomlake.lake.location import DEID_TABLE
from dicomlake.lake.writer import TableWriter
from dicomlake.storage.locations import local_path

if TYPE_CHECKING:
    from dicomlake._types import Row, StorageOptions
    from dicomlake.catalog import FileRef
    from dicomlake.deidentify.keys import Key
    from dicomlake.deidentify.pixels import RegionRules
    from dicomlake.engine.local import Task

#: Files per task sent to a worker.
TASK_SIZE: Final = 8


@dataclass
class DeidSummary:
    """What a de-identification run did; it names no value of any file."""

    destination: str = ""
    selected: int = 0  # ok instances the selection picked
    unchanged: int = 0  # done earlier with the same key, options and destination
    ok: int = 0  # files written
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    errors: Counter[str] = field(default_factory=Counter)  # by error class
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """Instances this run has handled so far (written, skipped or failed)."""
        return self.ok + sum(self.skipped.values()) + sum(self.errors.values())

    @property
    def files_per_second(self) -> float:
        """Instances handled per second of wall time."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        failed = sum(self.errors.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return (
            f"deid: {self.selected} instances, {self.ok} written, {skipped} skipped, "
            f"{failed} errors"
            + (f" ({classes})" if classes else "")
            + f", {self.unchanged} already done"
        )


def load_key(key: Key | bytes | str | os.PathLike[str]) -> Key:
    """The key given as a :class:`Key`, its 32+ raw bytes, or the path of a key file.

    Raises:
        DeidKeyError: The key file is missing, short or unreadable, or the bytes short.
    """
    from dicomlake.deidentify.keys import Key

    if isinstance(key, Key):
        return key
    if isinstance(key, bytes | bytearray):
        return Key(bytes(key))
    return Key.from_file(os.fspath(key))


def load_regions(regions: str | os.PathLike[str] | RegionRules | None) -> RegionRules | None:
    """Region rules given loaded or as the path of a rules file; None for none.

    Raises:
        ValueError: The file cannot be read or is not valid rules.
    """
    if regions is None:
        return None
    from dicomlake.deidentify.pixels import RegionRules

    if isinstance(regions, RegionRules):
        return regions
    try:
        return RegionRules.from_file(os.fspath(regions))
    except OSError as exc:
        raise ValueError(
            f"cannot read the region rules {os.fspath(regions)}: {exc.strerror or exc}"
        ) from None


#: Every ok instance, numbered among those sharing its SOPInstanceUID (by path).
_INSTANCES_SQL: Final = """
SELECT row_id, path, relative_path, size, modification_time, SOPInstanceUID,
       row_number() OVER (PARTITION BY coalesce(SOPInstanceUID, path) ORDER BY path) AS copy,
       first(row_id) OVER (PARTITION BY coalesce(SOPInstanceUID, path) ORDER BY path) AS first
FROM instances WHERE status = 'ok'
"""

#: Whether the instance ``s`` has a row for this destination, key and options that
#: need not be redone: written or skipped, from the same source size and time.
_DONE_SQL: Final = """
EXISTS (SELECT 1 FROM deid d WHERE d.row_id = s.row_id
  AND d.destination = $destination AND d.key_fingerprint = $fingerprint
  AND d.options = $options::VARCHAR[] AND d.status IN ('ok', 'skipped')
  AND d.size IS NOT DISTINCT FROM s.size
  AND d.modification_time IS NOT DISTINCT FROM s.modification_time)
"""


def select_instances(
    lake: str,
    where: str | None,
    *,
    destination: str,
    fingerprint: str,
    options: Sequence[str],
    storage_options: StorageOptions = None,
) -> tuple[pa.Table, int]:
    """The ok instances ``where`` picks that are not done yet, and how many are.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
    """
    import duckdb

    from dicomlake.lake.selection import strip_query
    from dicomlake.lake.sql import connect

    condition = "TRUE"
    if where is not None and where.strip():
        condition = f"({strip_query(where)})"
    con = connect(lake, storage_options=storage_options)
    try:
        has_deid = bool(
            con.sql(
                f"SELECT count(*) FROM duckdb_views() WHERE view_name = '{DEID_TABLE}'"
            ).fetchall()[0][0]
        )
        done = _DONE_SQL if has_deid else "FALSE"
        statement = f"""
            SELECT s.*, {done} AS done
            FROM ({_INSTANCES_SQL}) AS s
            WHERE s.row_id IN (SELECT row_id FROM instances WHERE status = 'ok' AND {condition})
            ORDER BY s.path
        """
        params = (
            {"destination": destination, "fingerprint": fingerprint, "options": list(options)}
            if has_deid
            else {}
        )
        try:
            chosen: pa.Table = con.sql(statement, params=params).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"the --where expression failed: {exc}", sql=where or "") from exc
    finally:
        con.close()
    flags = chosen.column("done").to_pylist()
    done_count = sum(1 for flag in flags if flag)
    todo = chosen.filter(pa.array([not flag for flag in flags], type=pa.bool_()))
    return todo, done_count


def _refs_and_duplicates(chosen: pa.Table) -> tuple[list[FileRef], list[Row]]:
    """File references to de-identify, and the partial rows of duplicates left out."""
    from dicomlake.catalog import FileRef

    refs: list[FileRef] = []
    duplicates: list[Row] = []
    for row in chosen.to_pylist():
        ref = FileRef(
            row["path"], row["relative_path"] or "", row["size"], row["modification_time"]
        )
        if row["copy"] > 1:
            duplicates.append({"ref": ref, "first": row["first"]})
        else:
            refs.append(ref)
    return refs, duplicates


def _tasks(refs: Sequence[FileRef], size: int) -> Iterator[Task]:
    from dicomlake.engine.local import Task

    for start in range(0, len(refs), size):
        yield Task(refs=refs[start : start + size])


def deid(
    lake: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: Key | bytes | str | os.PathLike[str],
    where: str | None = None,
    options: Iterable[str] = (),
    workers: int | None = None,
    regions: str | os.PathLike[str] | RegionRules | None = None,
    storage_options: StorageOptions = None,
    file_timeout: float = 300.0,
    task_size: int = TASK_SIZE,
    commit_rows: int = 500,
    progress: Callable[[DeidSummary], None] | None = None,
) -> DeidSummary:
    """Write a de-identified copy of the lake's ``ok`` instances to ``out``.

    Args:
        lake: The source lake folder or URI; its ``deid`` table records the run.
        out: A local folder or an fsspec URL (``s3://bucket/prefix``); files go to
            ``<out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
        key: The pseudonym key: a :class:`~dicomlake.deidentify.keys.Key`, its bytes, or
            the path of a key file (``dicomlake deid keygen``).
        where: A SQL expression over ``instances`` picking what to copy.
        options: PS3.15 option names (:mod:`dicomlake.deidentify.options`).
        workers: Worker processes (default: all cores; 0 runs in this process).
        regions: Region rules for ``clean-pixel-data`` (a file or loaded rules).
        storage_options: Settings for object storage (lake, sources, destination).
        file_timeout: Seconds one file may take before it becomes an error row.
        task_size: Files per task sent to a worker.
        commit_rows: Commit the ``deid`` table at least every this many rows.
        progress: Called with the running summary after each task.

    Returns:
        The run's summary (counts and reasons; no value of any file).

    Raises:
        DeidKeyError: The key is missing, short or unreadable.
        ValueError: An unknown option name, or options that exclude each other.
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The ``deid`` table cannot be written.
    """
    from dicomlake.deidentify.options import parse_options
    from dicomlake.engine.local import LocalEngine

    started = time.monotonic()
    lake_text, destination = os.fspath(lake), os.fspath(out)
    loaded = load_key(key)
    chosen_options = parse_options(options)
    rules = load_regions(regions)
    local = local_path(destination)
    if local is not None:
        os.makedirs(local, exist_ok=True)
    kernel = DeidKernel(
        loaded, chosen_options, destination, regions=rules, storage_options=storage_options
    )
    todo, unchanged = select_instances(
        lake_text,
        where,
        destination=kernel.destination,
        fingerprint=kernel.fingerprint,
        options=kernel.option_list,
        storage_options=storage_options,
    )
    refs, duplicates = _refs_and_duplicates(todo)
    summary = DeidSummary(
        destination=destination_uri(destination),
        selected=todo.num_rows + unchanged,
        unchanged=unchanged,
    )

    def count(batch: pa.RecordBatch) -> None:
        for status, reason in zip(
            batch.column("status").to_pylist(), batch.column("reason").to_pylist(), strict=True
        ):
            if status == "ok":
                summary.ok += 1
            elif status == "skipped":
                summary.skipped[reason or "skipped"] += 1
            else:
                summary.errors[(reason or "Error").split(":", 1)[0]] += 1
        summary.seconds = time.monotonic() - started
        if progress is not None:
            progress(summary)

    engine = LocalEngine(kernel, workers=workers, file_timeout=file_timeout)
    with TableWriter(
        lake_text, DEID_TABLE, max_rows=commit_rows, storage_options=storage_options
    ) as writer:
        if duplicates:
            batch = _duplicate_rows(kernel, duplicates)
            writer.write(batch, replace=True)
            count(batch)
        for _task, batches in engine.map(_tasks(refs, task_size)):
            batch = batches[DEID_TABLE]
            writer.write(batch, replace=True)
            count(batch)
    summary.seconds = time.monotonic() - started
    return summary


def _duplicate_rows(kernel: DeidKernel, duplicates: Sequence[Row]) -> pa.RecordBatch:
    """Skipped rows of files whose SOPInstanceUID another file of the lake has too."""
    rows = [
        {
            **kernel.error_row(item["ref"], ""),
            "status": "skipped",
            "reason": (
                "another file of the lake has the same SOPInstanceUID and names the same "
                f"output (row_id {item['first']})"
            ),
        }
        for item in duplicates
    ]
    return deid_batch(rows, kernel.created_at)
