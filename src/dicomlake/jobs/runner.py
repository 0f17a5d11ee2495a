"""Running a kernel over files the lake chose, and handing its rows to a writer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from dicomlake.catalog import FileRef
from dicomlake.engine.local import LocalEngine, Task
from dicomlake.rows import row_id

if TYPE_CHECKING:
    from dicomlake._types import Batches
    from dicomlake.kernels.base import Kernel
    from dicomlake.lake.writer import TableWriter


def refs_of(chosen: pa.Table) -> list[FileRef]:
    """File references of the rows of a query over ``instances``, each path once.

    Reads ``path`` and, when the query returns them, ``relative_path``, ``size`` and
    ``modification_time``.
    """
    names = set(chosen.column_names)
    refs: list[FileRef] = []
    seen: set[str] = set()
    for row in chosen.to_pylist():
        path = row["path"]
        if path in seen:
            continue
        seen.add(path)
        refs.append(
            FileRef(
                path=path,
                relative_path=(row["relative_path"] or "") if "relative_path" in names else "",
                size=row["size"] if "size" in names else None,
                mtime=row["modification_time"] if "modification_time" in names else None,
            )
        )
    return refs


def _tasks(refs: Sequence[FileRef], size: int) -> Iterator[Task]:
    for start in range(0, len(refs), size):
        yield Task(refs=refs[start : start + size])


def run_kernel(
    kernel: Kernel,
    refs: Sequence[FileRef],
    writer: TableWriter,
    *,
    workers: int | None,
    file_timeout: float,
    task_size: int,
    by_instance: bool = False,
    on_result: Callable[[Task, Batches], None] | None = None,
) -> None:
    """Run ``kernel`` over ``refs`` on the local engine; its rows go to ``writer``.

    Args:
        kernel: Makes the rows of ``writer``'s table (the batches under its name).
        refs: The files, in the order tasks are made.
        writer: The table's writer; committed and closed at the end.
        workers: Worker processes (default: all cores; 0 runs in this process).
        file_timeout: Seconds one file may take before it becomes an error row.
        task_size: Files per task.
        by_instance: Each task's rows replace every earlier row of its instances.
        on_result: Called with each task and its batches, after they are written.

    Raises:
        LakeError: The table cannot be written.
    """
    engine = LocalEngine(kernel, workers=workers, file_timeout=file_timeout)
    with writer:
        for task, out in engine.map(_tasks(refs, task_size)):
            batch = out[writer.table]
            if by_instance:
                writer.write(batch, instances=[row_id(ref.path) for ref in task.refs])
            else:
                writer.write(batch)
            if on_result is not None:
                on_result(task, out)
