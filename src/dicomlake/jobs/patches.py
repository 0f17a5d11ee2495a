"""The patches job: tile the instances a query picks and write the ``patches`` table.

Re-running replaces, per instance: every instance a run tiles loses all the patch rows
it had (whatever their size or position) and gets the new ones, in the same Delta
transaction, so a re-run with another size leaves no stale patches behind; instances
the run does not select keep theirs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from dicomlake.jobs.runner import run_kernel
from dicomlake.kernels.patches import PatchKernel, PatchOptions
from dicomlake.lake.location import PATCHES_TABLE
from dicomlake.lake.selection import PRIVATE, select_pixel_instances
from dicomlake.lake.writer import TableWriter
from dicomlake.rows import tally

if TYPE_CHECKING:
    from dicomlake._types import Batches, StorageOptions
    from dicomlake.catalog import FileRef
    from dicomlake.engine.local import Task

#: The query a patches run runs when given none: every instance.
DEFAULT_SQL: Final = "SELECT path FROM instances"


@dataclass
class PatchSummary:
    """What a patches run did."""

    instances: int = 0
    frames: int = 0  # frames tiled
    patches: int = 0  # patch rows written
    skipped: int = 0  # patches below min_tissue, not written
    replaced: int = 0  # instances whose earlier patch rows were replaced
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def patches_per_second(self) -> float:
        """Patch rows written per second of wall time."""
        return self.patches / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        failed = sum(self.errors.values())
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return (
            f"patches: {self.instances} instances, {self.frames} frames, "
            f"{self.patches} patches written, {self.skipped} below min_tissue, "
            f"{failed} errors"
            + (f" ({classes})" if classes else "")
            + f", {self.replaced} instances replaced"
        )


def write_patches(
    lake: str,
    options: PatchOptions,
    sql: str = DEFAULT_SQL,
    *,
    workers: int | None = None,
    storage_options: StorageOptions = None,
    file_timeout: float = 300.0,
    progress: Callable[[PatchSummary], None] | None = None,
) -> PatchSummary:
    """Tile the instances ``sql`` selects and write their rows to ``<lake>/patches``.

    Each selected instance's earlier rows are replaced (see the module docstring);
    only ``ok`` instances with pixel data are tiled.

    Args:
        lake: The lake folder or URI.
        options: How to tile.
        sql: A query over the lake's views that returns ``path``.
        workers: Worker processes (default: all cores; 0 runs in this process).
        storage_options: Settings for object storage.
        file_timeout: Seconds one file may take before it becomes an error row.
        progress: Called with the running summary after each task.

    Returns:
        The run's summary.

    Raises:
        QueryError: The query fails or returns no ``path``.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The patches table cannot be written.
    """
    started = time.monotonic()
    selected = select_pixel_instances(lake, sql, storage_options=storage_options)
    refs, sources = _unique_refs(selected)
    kernel = PatchKernel(options, sources=sources, storage_options=storage_options)
    summary = PatchSummary()

    def count(task: Task, out: Batches) -> None:
        counts = tally(out[PATCHES_TABLE])
        summary.patches += counts.pop("ok", 0)
        summary.errors.update(counts)
        stats = out["stats"]
        summary.frames += sum(stats.column("frames").to_pylist())
        summary.skipped += sum(stats.column("skipped").to_pylist())
        summary.instances += len(task.refs)
        summary.seconds = time.monotonic() - started
        if progress is not None:
            progress(summary)

    writer = TableWriter(lake, PATCHES_TABLE, max_rows=20_000, storage_options=storage_options)
    run_kernel(
        kernel,
        refs,
        writer,
        workers=workers,
        file_timeout=file_timeout,
        task_size=2 if options.store_pixels else 8,
        by_instance=True,
        on_result=count,
    )
    summary.replaced = writer.instances_replaced
    summary.seconds = time.monotonic() - started
    return summary


def _unique_refs(selected: pa.Table) -> tuple[list[FileRef], dict[str, tuple[str | None, int]]]:
    """File references of the selected instances (each path once) and their frames."""
    from dicomlake.catalog import FileRef

    refs: list[FileRef] = []
    sources: dict[str, tuple[str | None, int]] = {}
    columns = [f"{PRIVATE}{name}" for name in ("path", "size", "mtime", "sop", "frames")]
    for path, size, mtime, sop, frames in zip(
        *(selected.column(c).to_pylist() for c in columns), strict=True
    ):
        if path in sources:
            continue
        sources[path] = (sop, max(int(frames or 1), 1))
        refs.append(FileRef(path, "", size, mtime))
    return refs, sources
