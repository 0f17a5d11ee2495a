"""Benchmark: header extraction, dicomlake vs the pixels accelerator's way, in one run.

Builds a corpus of real DICOM files (copies of pydicom's test files, cycled), then
times on the same files:

  (a) baseline, as the pixels accelerator does it: a pool of 32 threads, each file
      ``pydicom.dcmread(stop_before_pixels=True, defer_size=...)``, ``to_json_dict``,
      ``json.dumps`` (results kept in memory, nothing written);
  (b) ``dicomlake.ingest`` into a fresh Delta lake with 1 worker, and with all cores
      (listing, parsing, typed columns, Arrow, Delta commits included).

Prints files/s, the ratios to the baseline, and peak RSS.

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


def build_corpus(dest: Path, count: int) -> list[Path]:
    """Copy small real DICOM test files (cycled) into nested folders.

    Only files that both contenders read are used, so the ratio compares like with like.
    """
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


def ours(corpus: Path, lake: Path, workers: int) -> tuple[float, int]:
    """Seconds for ``dicomlake.ingest`` of ``corpus`` into a fresh lake; rows ok."""
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    summary = dicomlake.ingest([str(corpus)], str(lake), workers=workers)
    return time.perf_counter() - start, summary.ok


def peak_rss_mib() -> tuple[float, float]:
    """Peak RSS of this process and of its largest finished child, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def run_contender(args: argparse.Namespace) -> None:
    """Child mode: run one contender, print its figures as JSON (own process = own RSS)."""
    corpus = Path(args.corpus)
    if args.run == "baseline":
        files = sorted(p for p in corpus.rglob("*") if p.is_file())
        seconds, ok = baseline(files), len(files)
    else:
        seconds, ok = ours(corpus, Path(args.lake), args.workers)
    own, children = peak_rss_mib()
    print(json.dumps({"seconds": seconds, "ok": ok, "rss": own, "rss_workers": children}))


def contender(name: str, corpus: Path, lake: Path, workers: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--run",
        name,
        "--corpus",
        str(corpus),
        "--lake",
        str(lake),
        "--workers",
        str(workers),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the corpus and lakes")
    parser.add_argument("--run", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_contender(args)
        return

    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-"))
    try:
        corpus = work / "corpus"
        files = build_corpus(corpus, args.files)
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"corpus: {len(files)} files, {size:.0f} MiB (page cache warmed)")
        for path in files:  # every contender reads from memory
            path.read_bytes()

        base = contender("baseline", corpus, work / "unused", 32)
        one = contender("ours", corpus, work / "lake1", 1)
        many = contender("ours", corpus, work / "lakeN", args.workers)
        assert one["ok"] == many["ok"], (one, many)
        # the rest are files we flag and pydicom reads leniently (e.g. truncated ones)
        print(f"rows ok: {one['ok']} of {len(files)}")

        n = len(files)
        rows = [
            ("baseline (pixels-style, 32 threads)", base),
            ("dicomlake ingest, 1 worker", one),
            (f"dicomlake ingest, {args.workers} workers", many),
        ]
        print(f"{'contender':<40}{'files/s':>9}{'x baseline':>12}{'RSS MiB':>9}{'worker':>8}")
        for label, figures in rows:
            rate = n / figures["seconds"]
            ratio = base["seconds"] / figures["seconds"]
            workers_rss = f"{figures['rss_workers']:.0f}" if label.startswith("dicomlake") else "-"
            print(f"{label:<40}{rate:>9.0f}{ratio:>12.2f}{figures['rss']:>9.0f}{workers_rss:>8}")
        print(f"scaling 1 -> {args.workers} workers: {one['seconds'] / many['seconds']:.2f}x")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
