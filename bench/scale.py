"""Benchmark: an archive-sized run — memory stays flat, the table stays healthy.

Generates ``--files`` small DICOM files (pydicom's CT/MR/CR test files, each copy with
new Study/Series/SOP Instance UIDs, spread over nested folders), then:

  1. ingests them with all cores, sampling the coordinator's and the workers' resident
     memory as the run passes 10k, 100k and 1M files (and its end);
  2. reports the table's health: data files, commits, checkpoints (``dicomlake
     optimize`` runs at the end of a large ingest by itself);
  3. times a group-by over ``instances`` and a lookup by SOPInstanceUID in DuckDB;
  4. re-runs the same ingest with nothing changed: its time as a fraction of the first,
     and whether it added a table version.

Deletes the files at the end (``--keep`` keeps them). CI runs it at ``--files 20000``.

    python bench/scale.py [--files 1000000] [--workers N] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from deltalake import DeltaTable
from pydicom.uid import PYDICOM_ROOT_UID as PYDICOM_ROOT

import dicomlake
from dicomlake.sample import sample_file

SOURCES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm")
MARKS = (10_000, 100_000, 1_000_000)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the files and the lake")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dicomlake-scale-"))
    try:
        corpus, lake = work / "corpus", work / "lake"
        started = time.perf_counter()
        generate(corpus, args.files)
        print(f"generated {args.files} files in {time.perf_counter() - started:.0f} s")

        marks = [m for m in MARKS if m < args.files] + [args.files]
        samples: list[tuple[int, float, float]] = []

        def progress(summary: dicomlake.pipeline.IngestSummary) -> None:
            if marks and summary.done >= marks[0]:
                marks.pop(0)
                me = os.getpid()
                workers = [rss_mib(p) for p in children(me)]
                samples.append((summary.done, rss_mib(me), max(workers, default=0.0)))

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

        table = DeltaTable(str(lake / "instances"))
        log = lake / "instances" / "_delta_log"
        checkpoints = len(list(log.glob("*.checkpoint.parquet")))
        print(
            f"table: version {table.version()}, {len(table.file_uris())} data files, "
            f"{checkpoints} checkpoint(s)"
        )

        with peak_rss("queries"):
            con = dicomlake.connect(str(lake))
        (count,) = con.sql("SELECT count(*) FROM instances").fetchall()[0]
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
        con.close()
        assert len(hit) == 1
        print(
            f"rows: {count}; group-by over instances {group_seconds:.3f} s ({len(groups)} groups)"
        )
        print(f"lookup by SOPInstanceUID: {lookup_seconds:.3f} s")

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
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
