"""The local engine: a hanging read becomes an error row; the rest of the run goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicomlake.catalog import FileRef
from dicomlake.engine.local import LocalEngine, Task
from dicomlake.kernels.instances import InstancesKernel
from dicomlake.sample import sample_file


def _ref(path: Path) -> FileRef:
    return FileRef(path=f"file://{path}", relative_path=path.name, size=None, mtime=None)


@pytest.mark.slow
def test_a_file_that_hangs_becomes_a_timeout_row(tmp_path: Path) -> None:
    # A FIFO with no writer blocks open() forever: a real stalled read, no mock.
    fifo = tmp_path / "stalled.dcm"
    os.mkfifo(fifo)
    good = [tmp_path / f"ct{i}.dcm" for i in range(6)]
    for path in good:
        shutil.copyfile(sample_file("CT_small.dcm"), path)
    engine = LocalEngine(InstancesKernel(), workers=2, file_timeout=2.0)
    tasks = [
        Task(refs=[_ref(good[0]), _ref(fifo), _ref(good[1])]),
        Task(refs=[_ref(p) for p in good[2:]]),
    ]
    results = {}
    for _task, batch in engine.map(tasks):
        for row in batch["instances"].to_pylist():
            assert row["path"] not in results
            results[row["path"]] = row
    assert len(results) == 7
    stalled = results.pop(f"file://{fifo}")
    assert stalled["status"] == "error"
    assert stalled["error"].startswith("Timeout:")
    assert {r["status"] for r in results.values()} == {"ok"}
    assert engine.timeouts == 1


def test_in_process_and_pool_give_identical_rows(tmp_path: Path) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "rtstruct.dcm", "JPEG2000.dcm", "SC_rgb.dcm"]
    refs = [_ref(sample_file(n)) for n in names]
    kernel = InstancesKernel()
    serial = {}
    for _task, batch in LocalEngine(kernel, workers=0).map([Task(refs=refs)]):
        serial.update({r["path"]: r for r in batch["instances"].to_pylist()})
    pooled = {}
    for _task, batch in LocalEngine(kernel, workers=2).map([Task(refs=[r]) for r in refs]):
        pooled.update({r["path"]: r for r in batch["instances"].to_pylist()})
    assert serial == pooled


def test_extract_instances_is_the_kernel_in_one_call(tmp_path: Path) -> None:
    from dicomlake.kernels.instances import extract_instances
    from dicomlake.schema import INSTANCES_SCHEMA

    (tmp_path / "text.dcm").write_text("not DICOM")
    batch = extract_instances([_ref(sample_file("CT_small.dcm")), _ref(tmp_path / "text.dcm")])
    assert batch.schema == INSTANCES_SCHEMA
    assert batch.column("status").to_pylist() == ["ok", "not_dicom"]


@pytest.fixture
def workers_import_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let spawned workers import this module, to unpickle the kernels defined here.

    A spawned process takes its parent's ``sys.path``; the repository root on it makes
    ``tests.engine.test_local`` importable there.
    """
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))


def _pid_rows(engine: LocalEngine, tasks: list[Task]) -> set[int]:
    """The process ids that made the rows (the kernel below records its own)."""
    pids = {r["pid"] for _task, batch in engine.map(tasks) for r in batch["rows"].to_pylist()}
    assert -1 not in pids  # an error row (a worker that crashed) made by nobody
    return pids


class _PidKernel:
    """A kernel whose row is the process that made it."""

    def row(self, ref: FileRef) -> dict[str, object]:
        return {"path": ref.path, "pid": os.getpid()}

    def batch(self, rows: list[dict[str, object]]) -> dict[str, object]:
        import pyarrow as pa

        return {"rows": pa.RecordBatch.from_pylist(rows)}

    def error_row(self, ref: FileRef, reason: str) -> dict[str, object]:
        return {"path": ref.path, "pid": -1}


def test_a_tiny_local_input_runs_without_workers(tmp_path: Path) -> None:
    """One task of a few regular local files is done here: no worker start-up to wait for."""
    files = [tmp_path / f"f{i}.dcm" for i in range(3)]
    for path in files:
        path.write_bytes(b"x")
    engine = LocalEngine(_PidKernel(), workers=2)
    engine.start()  # as ingest does, ahead of listing
    assert _pid_rows(engine, [Task(refs=[_ref(p) for p in files])]) == {os.getpid()}
    assert engine._pool is None  # the started workers were stopped unused


def test_a_fifo_or_more_tasks_still_go_to_workers(
    tmp_path: Path, workers_import_tests: None
) -> None:
    fifo = tmp_path / "stalled.dcm"
    os.mkfifo(fifo)
    engine = LocalEngine(_PidKernel(), workers=1)
    # the kernel above never opens the FIFO; the engine must still not trust it here
    assert os.getpid() not in _pid_rows(engine, [Task(refs=[_ref(fifo)])])
    files = [tmp_path / f"f{i}.dcm" for i in range(2)]
    for path in files:
        path.write_bytes(b"x")
    two_tasks = [Task(refs=[_ref(p)]) for p in files]
    assert os.getpid() not in _pid_rows(LocalEngine(_PidKernel(), workers=1), two_tasks)


class _StillbornKernel(_PidKernel):
    """A kernel that kills the worker process unpickling it: no worker ever starts."""

    def __getstate__(self) -> dict[str, int]:
        return {"doomed": 1}

    def __setstate__(self, state: dict[str, int]) -> None:
        os._exit(3)  # only ever unpickled in a worker


def test_workers_that_die_as_they_start_end_the_run_with_a_clear_error(
    tmp_path: Path, workers_import_tests: None
) -> None:
    """Not an endless restart with an error row per file (a script without a main guard)."""
    from dicomlake.errors import WorkersFailed

    files = [tmp_path / f"f{i}.dcm" for i in range(20)]
    for path in files:
        path.write_bytes(b"x")
    engine = LocalEngine(_StillbornKernel(), workers=1)
    tasks = [Task(refs=[_ref(p)]) for p in files]
    with pytest.raises(WorkersFailed, match=r"die as they start \(exit code 3\)"):
        list(engine.map(tasks))
    assert engine.crashes == 2  # restarted twice, then gave up; no file was blamed


class _PandasKernel(_PidKernel):
    """A kernel whose row says whether its process has imported pandas so far."""

    pandas_free = True

    def row(self, ref: FileRef) -> dict[str, object]:
        import sys

        import pyarrow as pa

        pa.array(["a list, as the kernels hand pyarrow"])
        return {"path": ref.path, "pid": os.getpid(), "pandas": "pandas" in sys.modules}


def test_workers_of_a_pandas_free_kernel_never_import_pandas(
    tmp_path: Path, workers_import_tests: None
) -> None:
    """pyarrow's probe for pandas (0.3 s a worker) is skipped; pandas still imports on use."""
    pytest.importorskip("pandas", reason="not applicable: pandas is not installed")
    files = [tmp_path / f"f{i}.dcm" for i in range(2)]
    for path in files:
        path.write_bytes(b"x")
    engine = LocalEngine(_PandasKernel(), workers=1)
    rows = [
        r
        for _t, b in engine.map([Task(refs=[_ref(p)]) for p in files])
        for r in b["rows"].to_pylist()
    ]
    assert rows and not any(r["pandas"] for r in rows)
    assert InstancesKernel.pandas_free
    probe = (
        "import sys; from dicomlake.engine.local import skip_pandas_probe; import pyarrow as pa\n"
        "skip_pandas_probe(); pa.array(['x']); assert 'pandas' not in sys.modules\n"
        "assert type(pa.table({'a': [1]}).to_pandas()).__name__ == 'DataFrame'"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
