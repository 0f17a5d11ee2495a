"""Benchmark: header extraction, dicomlake vs the pixels accelerator's way, in one run.

Builds two corpora of real DICOM files (copies of pydicom's test files, cycled):

  typical   little-endian CT / MR / CR / DX / US / MG files in the default, Latin-1 or
            UTF-8 character sets: what most archives hold;
  full mix  every small test file both contenders read (big endian, deflated, ISO 2022
            charsets, odd values included).

and times, on the same files, each contender in its own process (own peak RSS):

  (a) baseline, as the pixels accelerator does it: a pool of 32 threads, each file
      ``pydicom.dcmread(stop_before_pixels=True, defer_size=...)``, ``to_json_dict``,
      ``json.dumps`` (results kept in memory, nothing written);
  (b) ``dicomlake.ingest --parser pydicom`` into a fresh Delta lake, 1 and N workers;
  (c) ``dicomlake.ingest`` with the native parser (the default when it is built),
      1 and N workers (listing, parsing, typed columns, Arrow, Parquet shards and
      Delta commits included);
  (d) parse only, one process: the native parser over every file, beside the floor
      of reading the first 64 KiB of each file;

and prints files/s, ratios, peak RSS, each run's share of its floor (one core reading
64 KiB of each file and parsing it natively, times the run's workers), and where the
time of a 1-worker native run goes (list, read, parse, write and commit, measured apart).

    python bench/ingest.py [--files 5000] [--workers N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

import dicomlake
from dicomlake.sample import pydicom_test_files

TYPICAL_MODALITIES = {"CT", "MR", "CR", "DX", "US", "MG"}
LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
PLAIN_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}


def readable_sources() -> list[Path]:
    """Small test files that the baseline reads (ours reads every file, as a row)."""
    sources = []
    for path in pydicom_test_files():
        if path.suffix != ".dcm" or path.stat().st_size > 2_000_000:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _pixels_style(path)  # the baseline must manage the file too
        except Exception:
            continue
        sources.append(path)
    return sources


def is_typical(path: Path) -> bool:
    """Little endian (any pixel codec), a common modality, a plain character set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    charset = ds.get("SpecificCharacterSet", "") or ""
    charset = charset if isinstance(charset, str) else "\\".join(charset)
    big = syntax == "1.2.840.10008.1.2.2" or syntax.endswith(".99") or syntax.endswith(".8.1")
    return ds.get("Modality") in TYPICAL_MODALITIES and not big and charset in PLAIN_CHARSETS


def build_corpus(dest: Path, sources: list[Path], count: int) -> list[Path]:
    """Copy ``sources`` (cycled) into nested folders: ``count`` files."""
    files = []
    for i in range(count):
        source = sources[i % len(sources)]
        target = dest / f"d{i % 50:02d}" / f"{i:06d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(target)
    return files


def _pixels_style(path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size="1 KB")
    return json.dumps(ds.to_json_dict())


def baseline(files: list[Path]) -> float:
    """Seconds for the pixels-style extraction over ``files``."""
    start = time.perf_counter()
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=32) as pool:
        warnings.simplefilter("ignore")
        results = list(pool.map(_pixels_style, files))
    assert len(results) == len(files)
    return time.perf_counter() - start


def ours(
    corpus: Path, lake: Path, workers: int, parser: str, prefetch: bool = True
) -> tuple[float, int, dict]:
    """Seconds for ``dicomlake.ingest`` of ``corpus`` into a fresh lake; rows ok; parsers."""
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    summary = dicomlake.ingest(
        [str(corpus)], str(lake), workers=workers, parser=parser, prefetch=prefetch
    )
    return time.perf_counter() - start, summary.ok, dict(summary.parsers)


def peak_rss_mib() -> tuple[float, float]:
    """Peak RSS of this process and of its largest finished child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def run_contender(args: argparse.Namespace) -> None:
    """Child mode: run one contender, print its figures as JSON (own process = own RSS)."""
    corpus = Path(args.corpus)
    parsers: dict = {}
    if args.run == "baseline":
        files = sorted(p for p in corpus.rglob("*") if p.is_file())
        seconds, ok = baseline(files), len(files)
    else:
        seconds, ok, parsers = ours(
            corpus, Path(args.lake), args.workers, args.parser, not args.no_prefetch
        )
    own, children = peak_rss_mib()
    figures = {"seconds": seconds, "ok": ok, "rss": own, "rss_workers": children}
    print(json.dumps({**figures, "parsers": parsers}))


def contender(
    name: str, corpus: Path, lake: Path, workers: int, parser: str = "auto", prefetch: bool = True
) -> dict:
    command = [sys.executable, __file__, "--run", name, "--corpus", str(corpus)]
    command += ["--lake", str(lake), "--workers", str(workers), "--parser", parser]
    command += [] if prefetch else ["--no-prefetch"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_floor(files: list[Path]) -> float:
    """Seconds to read the first 64 KiB of every file (page cache warm)."""
    start = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            f.read(65536)
    return time.perf_counter() - start


def parse_only(files: list[Path]) -> tuple[float, int]:
    """Seconds for the native parser over every file in this process; files it accepted."""
    from dicomlake.dicom import native

    accepted = 0
    start = time.perf_counter()
    for path in files:
        result = native.parse_file(str(path), uri=path.as_uri(), bulk_threshold=1024)
        accepted += not isinstance(result, str)
    return time.perf_counter() - start, accepted


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (``POSIX_FADV_DONTNEED``): a cold read."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_runs(corpus: Path, files: list[Path], workers: int, work: Path) -> None:
    """Native ingest from a cold page cache, with and without the workers' read-ahead."""
    for count in (1, workers):
        for prefetch in (False, True):
            evict(files)
            figures = contender("ours", corpus, work / "lake-cold", count, "auto", prefetch)
            print(
                f"cold cache, native, {count} worker{'s' * (count > 1)}, read-ahead "
                f"{'on ' if prefetch else 'off'}: {len(files) / figures['seconds']:.0f} files/s"
            )


def time_split(corpus: Path, files: list[Path], work: Path) -> dict[str, float]:
    """Where a 1-worker native run's time goes, each stage timed on its own."""
    import pyarrow as pa

    from dicomlake.catalog import FileRef, iter_files
    from dicomlake.kernels.instances import InstancesKernel
    from dicomlake.lake.writer import TableWriter

    start = time.perf_counter()
    refs: list[FileRef] = list(iter_files([str(corpus)]))
    listed = time.perf_counter() - start
    kernel = InstancesKernel()
    kernel.batch([])  # the first batch's imports (a third of a second) are start-up, not Arrow
    start = time.perf_counter()
    rows = [kernel.row(ref) for ref in refs]
    parsed = time.perf_counter() - start
    start = time.perf_counter()
    batch = kernel.batch(rows)["instances"]
    table = pa.Table.from_batches([batch])
    built = time.perf_counter() - start
    start = time.perf_counter()
    with TableWriter(str(work / "split-lake"), max_rows=len(rows) + 1) as writer:
        writer.write(table)
    written = time.perf_counter() - start
    return {
        "list": listed,
        "read (64 KiB floor)": read_floor(files),
        "read + parse": parsed,
        "rows -> Arrow": built,
        "Parquet + commit": written,
    }


def report(title: str, corpus: Path, files: list[Path], workers: int, work: Path) -> None:
    from dicomlake.dicom import native

    n = len(files)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"\n{title}: {n} files, {size:.0f} MiB (page cache warmed)")
    for path in files:  # every contender reads from memory
        path.read_bytes()
    base = contender("baseline", corpus, work / "unused", 32)
    rows = [("baseline (pixels-style, 32 threads)", base)]
    parsers = ["pydicom", "native"] if native.available() else ["pydicom"]
    runs = [(parser, count) for parser in parsers for count in (1, workers)]
    for parser, count in runs:
        figures = contender("ours", corpus, work / f"lake-{parser}{count}", count, parser)
        rows.append((f"dicomlake {parser}, {count} worker{'s' * (count > 1)}", figures))
    # the floor of one core: reading each file's first 64 KiB, then parsing it natively
    # (both measured here, in one process); a run of N workers has N cores' worth
    per_core = None
    if native.available():
        parse_seconds, _ = parse_only(files)
        per_core = n / (read_floor(files) + parse_seconds)
        print(f"floor: read 64 KiB + native parse, one core: {per_core:.0f} files/s")
    header = f"{'contender':<40}{'files/s':>9}{'x baseline':>12}{'of floor':>10}"
    print(f"{header}{'RSS MiB':>9}{'worker':>8}")
    for (label, figures), count in zip(rows, [0] + [c for _, c in runs], strict=True):
        rate = n / figures["seconds"]
        ratio = base["seconds"] / figures["seconds"]
        share = f"{rate / (per_core * count):.0%}" if per_core and count else "-"
        workers_rss = f"{figures['rss_workers']:.0f}" if label.startswith("dicomlake") else "-"
        print(
            f"{label:<40}{rate:>9.0f}{ratio:>12.2f}{share:>10}"
            f"{figures['rss']:>9.0f}{workers_rss:>8}"
        )
    for parser, offset in zip(parsers, range(1, len(rows), 2), strict=False):
        one, many = rows[offset][1], rows[offset + 1][1]
        print(
            f"{parser}: scaling 1 -> {workers} workers {one['seconds'] / many['seconds']:.2f}x"
            f", headers read by {one['parsers']}"
        )
    # a run's fixed cost (worker start-up, table creation) apart from its per-file rate:
    # the same contender again on the first 100 files
    small = corpus.parent / f"{corpus.name}-first100"
    for path in files[:100]:
        target = small / path.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    base_rate = n / base["seconds"]
    for (label, figures), (parser, count) in zip(rows[1:], runs, strict=True):
        fixed = contender("ours", small, work / "lake-small", count, parser)["seconds"]
        marginal = (n - 100) / max(figures["seconds"] - fixed, 1e-9)
        print(
            f"{label}: {fixed:.2f} s for the first 100 files (start-up), then "
            f"{marginal:.0f} files/s = {marginal / base_rate:.1f}x baseline"
        )
    if native.available():
        floor = read_floor(files)
        seconds, accepted = parse_only(files)
        print(
            f"parse only, native: {n / seconds:.0f} files/s ({accepted} of {n} accepted); "
            f"read-64-KiB floor {n / floor:.0f} files/s; native / floor "
            f"{seconds / floor:.2f}x the time"
        )
        cold_runs(corpus, files, workers, work)
        split = time_split(corpus, files, work)
        total = sum(v for k, v in split.items() if "floor" not in k)
        print(
            "time split, 1 process, native: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in split.items())
            + f" (sum {total:.2f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the corpus and lakes")
    parser.add_argument("--run", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--parser", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--no-prefetch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_contender(args)
        return

    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-"))
    try:
        sources = readable_sources()
        typical = [p for p in sources if is_typical(p)]
        for title, chosen in (("typical archive", typical), ("full test-file mix", sources)):
            corpus = work / title.split()[0]
            files = build_corpus(corpus, chosen, args.files)
            report(f"{title} ({len(chosen)} distinct files)", corpus, files, args.workers, work)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
