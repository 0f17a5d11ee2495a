"""Kill points: stop an ingest with SIGKILL at a precise moment, for the crash tests.

``DICOMLAKE_KILL_AT=STAGE:N`` kills the run the N-th time one of its processes passes
``STAGE`` (one of :data:`STAGES`), as a power cut or the OOM killer would: no cleanup,
no ``finally``. A random timer rarely lands inside a commit that lasts milliseconds;
a kill point does every time (the same idea as RocksDB's kill points). A worker
that reaches the point kills its coordinator first, so the whole run dies.

Unset, as it is outside the tests, a kill point costs one comparison.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Final

#: The stages a kill point can name, in the order a run passes them.
STAGES: Final = (
    "list",  # the coordinator lists a file
    "parse",  # a worker (or the coordinator with 0 workers) parses a file
    "shard",  # a worker has written a Parquet shard, not yet handed it back
    "commit",  # data files written, the Delta log entry not yet
    "committed",  # the log entry written, the writer's bookkeeping not yet
    "merge",  # a MERGE of changed files is about to run
)

ENV: Final = "DICOMLAKE_KILL_AT"


def _plan(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    stage, _, count = text.partition(":")
    if stage not in STAGES or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={text!r}: expected STAGE:N with STAGE one of {STAGES}")
    return stage, int(count)


_PLAN: Final = _plan(os.environ.get(ENV))
_passed: dict[str, int] = {}


def kill_point(stage: str) -> None:
    """Die here if ``DICOMLAKE_KILL_AT`` names this stage and its count is reached."""
    if _PLAN is None or _PLAN[0] != stage:
        return
    _passed[stage] = _passed.get(stage, 0) + 1
    if _passed[stage] < _PLAN[1]:
        return
    if multiprocessing.parent_process() is not None:  # a worker: take the run with it
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
