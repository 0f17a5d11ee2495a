"""The apply job: a user's function over the frames, instances or series SQL picks.

``apply(lake, sql, fn, table=..., unit=...)`` selects units with the lake's SQL (as the
datasets do), runs :class:`~dicomlake.kernels.apply.ApplyKernel` on the local engine
(every core; a unit past ``unit_timeout`` or one that crashes its worker is an error
row) and writes one row per unit to ``<lake>/<table>``, a view of that name in
:func:`dicomlake.connect` afterwards (see :mod:`dicomlake.lake.user_tables`).

Re-runs are incremental. A unit is skipped when the table has its rows with the same
``version`` and the same source ``size`` and ``modification_time`` (a series: the sum
of its files' sizes and the latest time), error rows included: give a new ``version``
to run a changed function again, or to retry errors. A unit whose file or version
changed is run again and its rows replace the old ones in one transaction, so a run
killed at any moment (``kill -9``) and run again leaves exactly one row per unit.
Rows of units a run does not select (another ``sql``, or files gone from the lake)
stay as they are: a run only adds and replaces.

.. versionadded:: 0.1
"""

from __future__ import annotations

import pickle
import re
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dicomlake.catalog import FileRef
from dicomlake.errors import DicomLakeError
from dicomlake.jobs.apply_table import ApplyTable
from dicomlake.kernels.apply import (
    ApplyKernel,
    ApplyOptions,
    Function,
    InstanceSource,
    SeriesSource,
    Source,
    Unit,
    UnitRef,
    resolve_function,
    series_key,
    series_row_id,
    series_source,
)
from dicomlake.kernels.base import UNIT_TIMEOUT
from dicomlake.killpoints import kill_point
from dicomlake.lake.user_tables import check_table_name
from dicomlake.rows import row_id, tally

if TYPE_CHECKING:
    from dicomlake._types import Batches, StorageOptions
    from dicomlake.dicom.frames import Window
    from dicomlake.engine.local import Task
    from dicomlake.ml.selection import LakeLike

_QUERY = re.compile(r"^\s*\(*\s*(select|with|from|values)\b", re.IGNORECASE)


class FunctionFailed(DicomLakeError):
    """``on_error='raise'``: the user's function raised on a unit; the run stopped.

    The message is the unit and the function's ``ExceptionClass: message`` (the
    exception itself was raised in a worker process). Rows committed before stay.
    """


@dataclass
class ApplySummary:
    """What an apply run did."""

    table: str
    unit: str
    selected: int = 0  # units the query picked
    skipped: int = 0  # units unchanged since their rows were written
    units: int = 0  # units run (rows written)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    replaced: int = 0  # units (instances or series) whose earlier rows were replaced
    widened: list[str] = field(default_factory=list)  # columns made double
    seconds: float = 0.0

    @property
    def units_per_second(self) -> float:
        """Units run per second of wall time."""
        return self.units / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        failed = sum(self.errors.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return (
            f"apply: {self.selected} {self.unit}s selected, {self.skipped} unchanged, "
            f"{self.units} run, {self.ok} ok, {failed} errors"
            + (f" ({classes})" if classes else "")
            + f", {self.replaced} replaced -> table {self.table}"
        )


def selection_sql(text: str, unit: Unit) -> str:
    """A query from ``text``: a query as it is, else a WHERE expression over instances.

    Example:
        >>> selection_sql("Modality = 'CT'", "frame")
        "SELECT path FROM instances WHERE (Modality = 'CT')"
    """
    if _QUERY.match(text):
        return text
    columns = '"SeriesInstanceUID", path' if unit == "series" else "path"
    query = f"SELECT {columns} FROM instances"
    return f"{query} WHERE ({text})" if text.strip() else query


def _instance_sources(lake: str, sql: str, storage: StorageOptions) -> dict[str, Source]:
    from dicomlake.lake.selection import PRIVATE, select_pixel_instances

    selected = select_pixel_instances(lake, sql, storage_options=storage)
    columns = [f"{PRIVATE}{c}" for c in ("path", "sop", "frames", "size", "mtime")]
    sources: dict[str, Source] = {}
    for path, sop, frames, size, mtime in zip(
        *(selected.column(c).to_pylist() for c in columns), strict=True
    ):
        if path not in sources:
            sources[path] = InstanceSource(path, sop, max(int(frames or 1), 1), size, mtime)
    return sources


def _series_sources(lake: str, sql: str, storage: StorageOptions) -> dict[str, Source]:
    from dicomlake.jobs.volumes import select_series

    selected, slices = select_series(lake, sql, storage_options=storage)
    sources: dict[str, Source] = {}
    for uid in selected.column("SeriesInstanceUID").to_pylist():
        series = slices.get(uid)
        if series is None:
            reason = "too_few_slices: no ok instance with pixel data"
            sources[series_key(uid)] = SeriesSource(uid, None, reason, None, None, None)
        else:
            sources[series_key(uid)] = series_source(uid, series.files, series.geometry())
    return sources


def _plan(
    lake: str,
    sql: str,
    options: ApplyOptions,
    table: str,
    storage: StorageOptions,
    commit_rows: int,
) -> tuple[ApplySummary, ApplyTable, dict[str, Source]]:
    """The units ``sql`` selects, the table they go to, and those to run (not unchanged).

    Raises:
        QueryError: The query fails or lacks the column it must return.
        TableNotFound: Nothing has been ingested into the lake.
        ValueError: The table holds another unit's rows.
        LakeError: The table cannot be read.
    """
    unit = options.unit
    query = selection_sql(sql, unit)
    if unit == "series":
        sources = _series_sources(lake, query, storage)
    else:
        sources = _instance_sources(lake, query, storage)
    summary = ApplySummary(table=table, unit=unit, selected=len(sources))
    if unit == "frame":
        summary.selected = sum(s.frames for s in sources.values() if isinstance(s, InstanceSource))
    out = ApplyTable(lake, table, unit, storage_options=storage, max_rows=commit_rows)
    done = out.done()
    todo: dict[str, Source] = {}
    for key, source in sources.items():
        found = done.get(_unit_id(source))
        if found is not None and found == (options.version, source.size, source.mtime):
            summary.skipped += (
                source.frames if isinstance(source, InstanceSource) and (unit == "frame") else 1
            )
            continue
        todo[key] = source
    return summary, out, todo


def _unit_id(source: Source) -> int:
    if isinstance(source, SeriesSource):
        return series_row_id(source.uid)
    return row_id(source.path)


def _tasks(refs: Sequence[FileRef], size: int) -> Iterator[Task]:
    from dicomlake.engine.local import Task

    for start in range(0, len(refs), size):
        yield Task(refs=refs[start : start + size])


def _check_callable(fn: Function, workers: int | None) -> None:
    """Resolve ``fn`` here first, so a bad name fails before any worker starts.

    Raises:
        ValueError, ImportError, AttributeError, TypeError: See
            :func:`~dicomlake.kernels.apply.resolve_function`; or a callable that
            does not pickle while workers would need it.
    """
    resolve_function(fn)
    if isinstance(fn, str) or workers == 0:
        return
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(
            f"the function does not pickle ({type(exc).__name__}: {exc}), so worker "
            "processes cannot get it: define it at module level and pass it or its "
            "'package.module:name', or run with workers=0"
        ) from exc


def apply(
    lake: LakeLike,
    sql: str,
    fn: Function,
    table: str = "features",
    unit: Unit = "frame",
    workers: int | None = None,
    version: str = "1",
    window: Window = None,
    size: int | tuple[int, int] | None = None,
    on_error: Literal["row", "raise"] = "row",
    unit_timeout: float = UNIT_TIMEOUT,
    progress: Callable[[ApplySummary], None] | None = None,
    storage_options: StorageOptions = None,
    *,
    commit_rows: int = 1000,
) -> ApplySummary:
    """Run ``fn`` over every unit ``sql`` selects and write its rows to ``<lake>/<table>``.

    See :mod:`dicomlake.kernels.apply` for the item ``fn`` gets, the dict it returns
    and the table's columns, and the module docstring for re-runs.

    Args:
        lake: Lake path or :class:`~dicomlake.Lake`.
        sql: A query over the lake's views returning ``path`` (frame and instance
            units) or ``SeriesInstanceUID`` (series units; with ``path`` too, only
            those instances form each series), or a WHERE expression over
            ``instances`` (``"Modality = 'CT'"``). Only ``ok`` instances with pixel
            data are units.
        fn: ``"package.module:name"`` (imported in each worker) or a picklable
            callable.
        table: The output table: letters, digits and _, not a built-in table.
        unit: ``'frame'``, ``'instance'`` or ``'series'``.
        workers: Worker processes (default: all cores; 0 runs in this process, with
            no timeout).
        version: Your label of ``fn``: a new one runs every unit again.
        window: None (physical values), ``(center, width)`` or ``'dicom'``.
        size: Resize frames to ``size`` x ``size`` or (height, width) (frame and
            instance units).
        on_error: ``'row'``: a raising ``fn`` gives an error row and the run goes on;
            ``'raise'``: the run stops at the first unit whose ``fn`` raised, with
            :class:`FunctionFailed` (that unit's task is not written, so a re-run
            runs it again; rows committed before stay). Undecodable files are error
            rows either way.
        unit_timeout: Seconds one unit may take (a frame unit: all frames of its
            file) before its worker is stopped and it becomes an error row.
        progress: Called with the running summary after each task.
        storage_options: Settings for object storage.
        commit_rows: Rows buffered before a commit: a crash loses at most these.

    Returns:
        The run's summary.

    Raises:
        ValueError: An invalid unit, table name, window, size, on_error or function
            name, or a table that holds another unit's rows.
        ImportError: The function's module cannot be imported.
        AttributeError: The module has no such function.
        TypeError: ``fn`` is not callable, or does not pickle while workers need it.
        QueryError: The query fails or lacks the column it must return.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The table cannot be written.
        FunctionFailed: ``on_error='raise'`` and ``fn`` raised.

    Example:
        >>> summary = apply("lake", "Modality = 'CT'", "mypkg.features:hu_stats",
        ...                 table="hu", unit="series")  # doctest: +SKIP
    """
    from dicomlake.dicom.frames import check_window
    from dicomlake.engine.local import LocalEngine
    from dicomlake.ml.frame_dataset import check_size
    from dicomlake.ml.selection import lake_location

    started = time.monotonic()
    if on_error not in ("row", "raise"):
        raise ValueError(f"on_error must be 'row' or 'raise', got {on_error!r}")
    if not unit_timeout > 0:
        raise ValueError(f"unit_timeout must be a positive number of seconds, got {unit_timeout}")
    check_table_name(table)
    options = ApplyOptions(fn, unit, str(version), check_window(window), check_size(size))
    _check_callable(fn, workers)
    path, storage = lake_location(lake, storage_options)
    kernel = ApplyKernel(options, table=table, storage_options=storage)
    engine = LocalEngine(kernel, workers=workers, file_timeout=unit_timeout, small_here=False)
    # a worker takes ~0.4 s to start (a fresh interpreter importing pydicom, pyarrow
    # and the function's module): started now, that overlaps the selection query and
    # the reading of the table's rows; a run with nothing to do stops them unused
    engine.start()
    results: Iterator[tuple[Task, Batches]] | None = None
    try:
        summary, out, todo = _plan(path, sql, options, table, storage, commit_rows)
        refs = [UnitRef(key, "", s.size, s.mtime, source=s) for key, s in todo.items()]
        results = engine.map(_tasks(refs, 1 if unit == "series" else 4))
        for task, batches in results:
            stats = batches["stats"]
            failures = [t for texts in stats.column("failures").to_pylist() for t in texts]
            if on_error == "raise" and failures:
                out.close()
                raise FunctionFailed(f"the function raised on a {unit} ({failures[0]})")
            ids = [_unit_id(todo[ref.path]) for ref in task.refs]
            commits = out.commits
            written = out.write(batches[table], ids)
            if out.commits > commits:
                kill_point("committed")  # the crash tests' moment: rows of some units in
            counts = tally(written)
            summary.ok += counts.pop("ok", 0)
            summary.errors.update(counts)
            summary.units += written.num_rows
            summary.seconds = time.monotonic() - started
            if progress is not None:
                progress(summary)
        out.close()
    finally:
        if isinstance(results, Generator):  # stops the workers now, also after an error
            results.close()
        engine.close()  # workers started ahead and never given work (a query error)
    summary.replaced = out.replaced
    summary.widened = list(out.widened)
    summary.seconds = time.monotonic() - started
    return summary
