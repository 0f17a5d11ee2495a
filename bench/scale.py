"""Benchmark: an archive-sized run — memory stays flat, the table stays healthy.

Generates ``--files`` small DICOM files (pydicom's CT/MR/CR test files, each copy with
new Study/Series/SOP Instance UIDs, spread over nested folders), then:

  1. ingests them with all cores, sampling the coordinator's and the workers' resident
     memory as the run passes 10k, 100k and 1M files (and its end);
  2. reports the table's health: data files, commits, checkpoints (``dicomlake
     optimize`` runs at the end of a large ingest by itself);
  3. times a group-by over ``instances``, a lookup by SOPInstanceUID and a query of
     each per-modality series view (over the ``acquisition`` table the ingest made)
     in DuckDB;
  4. re-runs the same ingest with nothing changed: its time as a fraction of the first,
     and whether it added a table version.

Deletes the files at the end (``--keep`` keeps them). CI runs it at ``--files 20000
--check``: then each claim above is also checked, one line each ("check: ...: ok"), and
the script exits non-zero if any fails. The checks count work and memory, never time:

  - coordinator and largest-worker RSS: the peak of the run's second half exceeds that
    of its first (after the first tenth) by less than a bound;
  - ``instances`` is one data file after the end-of-run compaction, with a checkpoint;
  - as many rows as files, no error, and an ``acquisition`` row per instance;
  - the unchanged re-run adds no table version and reads no file.

    python bench/scale.py [--files 1000000] [--workers N] [--keep] [--check]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pydicom
from deltalake import DeltaTable
from pydicom.uid import PYDICOM_ROOT_UID as PYDICOM_ROOT

import dicomlake
from dicomlake.lake.maintenance import AUTO_COMPACT_FILES, optimize
from dicomlake.sample import sample_file

SOURCES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm")
MARKS = (10_000, 100_000, 1_000_000)

#: ``--check`` runs: more than 10k files and at most 100k, the range the bounds below
#: are set for. (At a million files the coordinator grows ~100 MiB and the table
#: compacts into several 128 MiB files: README.)
CHECK_FILES: Final = (10_001, 100_000)
#: Coordinator RSS growth: the peak of the run's second half over that of its first.
#: The README's million-file run grew 16 MiB from 10k to 100k files (199 -> 215 MiB),
#: the most this check sees; twice that. CI's 20k-file run grows 3-4 MiB, so a leak of
#: ~3 KB per file fails it at CI size.
COORDINATOR_GROWTH_MIB: Final = 32
#: The largest worker's, over the same halves. A worker's RSS saws by ~25 MiB (the
#: allocator), but the teeth of a 20k-file run's halves stay within -10 to +4 MiB of
#: each other (2 cores, six runs); a worker holds one task (at most 512 files) at a
#: time, so teeth that rise are a leak: ~2 KB a file fails it at CI size.
WORKER_GROWTH_MIB: Final = 16


def _template(name: str, run: str) -> tuple[bytes, list[tuple[int, int]]]:
    """A test file's bytes with placeholder UIDs, and where each UID's counter sits.

    The UIDs are ``<pydicom root>.<run>.<kind>.1NNNNNNN``: fixed length, so a copy
    gets new UIDs by overwriting 8 bytes in place (no pydicom per file, ~20x faster).
    Returns (bytes, [(offset, kind)]) with kind 0 study, 1 series, 2 instance.
    """
    ds = pydicom.dcmread(sample_file(name))
    uids = [f"{PYDICOM_ROOT}{run}.{kind}.19999999" for kind in range(3)]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[0], uids[1]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uids[2]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    spots = []
    for kind, uid in enumerate(uids):
        start = data.find(uid.encode())
        while start >= 0:
            spots.append((start + len(uid) - 8, kind))
            start = data.find(uid.encode(), start + 1)
    assert sum(1 for _, k in spots if k == 2) == 2, name  # file meta and dataset
    return data, spots


def generate(root: Path, count: int) -> None:
    """``count`` files with fresh UIDs, 1,000 per folder, 10 series per study."""
    run = str(random.randrange(10**9, 10**10))
    templates = [_template(name, run) for name in SOURCES]
    for i in range(count):
        data, spots = templates[i % len(templates)]
        copy = bytearray(data)
        numbers = (i // 1000, i // 100, i)
        for offset, kind in spots:
            copy[offset : offset + 8] = b"1%07d" % numbers[kind]
        folder = root / f"{i // 100_000:02d}" / f"{i // 1000 % 100:02d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.dcm").write_bytes(copy)


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


PEAKS: dict[str, float] = {}


@contextmanager
def peak_rss(phase: str) -> Iterator[None]:
    """Record this process's highest resident memory during ``phase`` (sampled 20/s)."""
    done = threading.Event()
    me = os.getpid()

    def sample() -> None:
        while not done.wait(0.05):
            PEAKS[phase] = max(PEAKS.get(phase, 0.0), rss_mib(me))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()


def children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid`` (the ingest's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Checks:
    """With ``--check``: print one line per claim checked, and remember the failures."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.count = 0
        self.failed: list[str] = []

    def __call__(self, ok: bool, claim: str) -> None:
        if not self.enabled:
            return
        self.count += 1
        print(f"check: {claim}: {'ok' if ok else 'FAILED'}")
        if not ok:
            self.failed.append(claim)


#: The acquisition questions timed over the whole lake (the corpus has CT, MR and CR).
VIEW_QUERIES = (
    "SELECT * FROM ct_series WHERE KVP = 120",
    "SELECT * FROM mr_series WHERE RepetitionTime > 3000 AND list_contains(EchoTime, 240)",
    "SELECT * FROM pt_series",
    "SELECT * FROM sm_series",
    "SELECT * FROM contrast",
)


def _peak(trace: list[tuple[int, float, float]], column: int, low: float, high: float) -> float:
    """The highest RSS (``column`` of ``trace``) sampled with ``low`` to ``high`` files done."""
    return max((row[column] for row in trace if low <= row[0] <= high), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the files and the lake")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check memory, table health and the re-run against bounds; exit 1 if any fails",
    )
    args = parser.parse_args()
    low, high = CHECK_FILES
    if args.check and not low <= args.files <= high:
        parser.error(f"--check is set for {low:,} to {high:,} files, not {args.files:,}")
    if args.check and args.workers < 1:
        parser.error("--check needs worker processes (--workers 1 or more)")
    check = Checks(args.check)

    work = Path(tempfile.mkdtemp(prefix="dicomlake-scale-"))
    try:
        corpus, lake = work / "corpus", work / "lake"
        started = time.perf_counter()
        generate(corpus, args.files)
        print(f"generated {args.files} files in {time.perf_counter() - started:.0f} s")

        marks = [m for m in MARKS if m < args.files] + [args.files]
        samples: list[tuple[int, float, float]] = []
        trace: list[tuple[int, float, float]] = []  # every task's, for the checks

        def progress(summary: dicomlake.jobs.ingest.IngestSummary) -> None:
            me = os.getpid()
            workers = [rss_mib(p) for p in children(me)]
            trace.append((summary.done, rss_mib(me), max(workers, default=0.0)))
            if marks and summary.done >= marks[0]:
                marks.pop(0)
                samples.append(trace[-1])

        started = time.perf_counter()
        with peak_rss("ingest"):
            first = dicomlake.ingest(
                [str(corpus)], str(lake), workers=args.workers, progress=progress
            )
        first_seconds = time.perf_counter() - started
        print(
            f"ingest: {first.done} files, {first.ok} ok, {first.error_count} errors in "
            f"{first_seconds:.0f} s ({first.done / first_seconds:.0f} files/s), "
            f"headers by {dict(first.parsers)}, {first.compacted} files compacted at the end"
        )
        for done, own, worker in samples:
            print(f"  RSS at {done:>9} files: coordinator {own:.0f} MiB, worker {worker:.0f} MiB")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"  peak RSS: coordinator {peak:.0f} MiB, largest worker {peak_child:.0f} MiB")
        if args.check:
            # a process's RSS saws up and down by some 25 MiB, a tooth every few
            # thousand files, as the allocator takes and gives back memory; a leak
            # lifts the teeth. So: the highest tooth of the run's second half against
            # that of its first (less the first tenth, the start-up)
            for name, column, bound in (
                ("coordinator", 1, COORDINATOR_GROWTH_MIB),
                ("worker", 2, WORKER_GROWTH_MIB),
            ):
                early = _peak(trace, column, args.files * 0.1, args.files * 0.5)
                late = _peak(trace, column, args.files * 0.5, args.files)
                if early and late:
                    growth = round(late - early)
                    check(
                        growth <= bound,
                        f"{name} RSS growth, peak of the first half to the second "
                        f"{growth} MiB <= {bound} MiB",
                    )
                else:
                    check(False, f"{name} RSS sampled in both halves ({len(trace)} samples)")

        table = DeltaTable(str(lake / "instances"))
        if args.check and not first.compacted and len(table.file_uris()) <= AUTO_COMPACT_FILES:
            # a run leaving this few files does not compact by itself: do it here, so
            # the check below sees the table after a compaction either way
            print(f"compaction: not run by ingest ({len(table.file_uris())} files), running it")
            print(optimize(str(lake), tables=("instances",)))
            table = DeltaTable(str(lake / "instances"))
        log = lake / "instances" / "_delta_log"
        checkpoints = len(list(log.glob("*.checkpoint*.parquet")))
        data_files = len(table.file_uris())
        print(
            f"table: version {table.version()}, {data_files} data files, "
            f"{checkpoints} checkpoint(s)"
        )
        check(data_files == 1, f"instances data files after compaction {data_files} == 1")
        check(checkpoints >= 1, f"checkpoints in instances/_delta_log {checkpoints} >= 1")

        # the acquisition table behind ct_series: made by the ingest's workers
        acquired = DeltaTable(str(lake / "acquisition"))
        acquired_rows = acquired.to_pyarrow_table(columns=["row_id"]).num_rows
        print(f"acquisition table: {acquired_rows} rows, {len(acquired.file_uris())} data files")
        check(
            acquired_rows == first.ok,
            f"acquisition rows {acquired_rows} == {first.ok} ok instances, made at ingest",
        )
        with peak_rss("queries"):
            con = dicomlake.connect(str(lake))
        (count,) = con.sql("SELECT count(*) FROM instances").fetchall()[0]
        if args.check:
            check(
                count == args.files and first.error_count == 0,
                f"rows {count} == {args.files} files, {first.error_count} errors == 0",
            )
        else:
            assert count == args.files, (count, args.files)
        started = time.perf_counter()
        groups = con.sql(
            "SELECT Modality, count(*), count(DISTINCT SeriesInstanceUID) FROM instances "
            "GROUP BY Modality"
        ).fetchall()
        group_seconds = time.perf_counter() - started
        (uid,) = con.sql(
            f"SELECT SOPInstanceUID FROM instances LIMIT 1 OFFSET {args.files // 2}"
        ).fetchall()[0]
        started = time.perf_counter()
        hit = con.execute("SELECT path FROM instances WHERE SOPInstanceUID = ?", [uid]).fetchall()
        lookup_seconds = time.perf_counter() - started
        view_seconds: dict[str, tuple[float, int]] = {}
        for query in VIEW_QUERIES:
            started = time.perf_counter()
            found = con.sql(query).fetchall()
            view_seconds[query] = (time.perf_counter() - started, len(found))
        con.close()
        assert len(hit) == 1
        print(
            f"rows: {count}; group-by over instances {group_seconds:.3f} s ({len(groups)} groups)"
        )
        print(f"lookup by SOPInstanceUID: {lookup_seconds:.3f} s")
        for query, (seconds, found) in view_seconds.items():
            print(f"{query}: {seconds:.3f} s ({found} rows)")

        version = table.version()
        started = time.perf_counter()
        with peak_rss("re-run"):
            again = dicomlake.ingest([str(corpus)], str(lake), workers=args.workers)
        again_seconds = time.perf_counter() - started
        after = DeltaTable(str(lake / "instances")).version()
        print(
            f"re-run, nothing changed: {again.skipped_unchanged} skipped, {again.done} read, "
            f"{again_seconds:.1f} s = {again_seconds / first_seconds:.3f} of the first run; "
            f"table version {version} -> {after}"
        )
        print(
            "peak RSS of the coordinator by phase: "
            + ", ".join(f"{phase} {mib:.0f} MiB" for phase, mib in PEAKS.items())
        )
        check(after == version, f"re-run adds no table version: {version} -> {after}")
        check(
            again.done == 0 and again.skipped_unchanged == args.files,
            f"re-run reads nothing: {again.done} files extracted == 0, "
            f"{again.skipped_unchanged} skipped unchanged == {args.files}",
        )
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if check.failed:
        sys.exit(f"scale.py --check: {len(check.failed)} of {check.count} checks failed")


if __name__ == "__main__":
    main()
