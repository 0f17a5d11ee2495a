"""The contract between kernels and engines.

A kernel turns file references into rows, one file at a time, and a task's rows into
one Arrow RecordBatch per table. It never raises for a bad file (the row says what
went wrong), writes nothing to the lake and knows no engine, so the local process
pool and Spark run the same kernels and give identical rows. Kernels are picklable:
the engine ships them to its workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from dicomlake._types import Batches, Row
    from dicomlake.catalog import FileRef


class Kernel(Protocol):
    """What an engine runs: one row per file, then one batch per table per task.

    A kernel may also say ``pandas_free = True``: it never gives pyarrow a pandas
    object, so the local engine's workers skip pyarrow's import of pandas (see
    :func:`dicomlake.engine.local.skip_pandas_probe`). A user's function may, so
    ``ApplyKernel`` does not.
    """

    def row(self, ref: FileRef) -> Row:
        """Return the row of one file; never raises for a bad file."""
        ...

    def batch(self, rows: Sequence[Row]) -> Batches:
        """Return a task's rows as one RecordBatch per table."""
        ...

    def error_row(self, ref: FileRef, reason: str) -> Row:
        """Return the row of a file the engine gave up on (it timed out or crashed)."""
        ...


#: Seconds one unit of the user's function (``dicomlake.apply``, Spark's ``DicomApply``)
#: may take by default before it becomes an error row. Here, not in ``jobs.apply``:
#: the CLI and Spark's driver need the number without importing pydicom.
UNIT_TIMEOUT: Final = 600.0


def timeout_reason(seconds: float) -> str:
    """The reason an engine gives :meth:`Kernel.error_row` for a file past its time.

    One text for every engine (a killed worker locally, a timer on Spark), so their
    error rows stay identical.
    """
    return f"Timeout: no result after {seconds:g} s"
