"""Benchmark: what a short command costs, against the bare script doing the same, one run.

A user's first impression is a one-file ingest, a ``dicomlake sql`` over a small lake
and ``dicomlake --help``. Each is a fresh process, timed from outside, beside the bare
minimum that does the same work, run alternately so both meet the same load:

  one-file ingest   ``dicomlake ingest FILE --lake L -q`` (a fresh lake each time)
                    against ``pydicom.dcmread`` + ``to_json_dict`` + ``json.dumps``;
  sql               ``dicomlake sql --lake L "SELECT count(*) FROM instances"``
                    against DuckDB counting the same table's Parquet files;
  --help            ``dicomlake --help`` (aim: under 0.2 s).

Prints the best and the median of each, and the ratios of the medians.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicomlake.sample import sample_file

BIN = Path(sys.executable).parent
DICOMLAKE = str(BIN / "dicomlake")

BARE_PARSE = """
import json, sys
import pydicom
ds = pydicom.dcmread(sys.argv[1], stop_before_pixels=True)
print(len(json.dumps(ds.to_json_dict())))
"""

BARE_SQL = """
import sys
import duckdb
print(duckdb.sql(f"SELECT count(*) FROM read_parquet('{sys.argv[1]}/*.parquet')").fetchall())
"""


def timed(command: list[str], before: list[str] | None = None) -> float:
    """Seconds one run of ``command`` takes (``before``, if any, runs first, untimed)."""
    if before:
        subprocess.run(before, check=True, capture_output=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def compare(name: str, ours: list[str], bare: list[str], runs: int, reset: list[str]) -> None:
    """Alternate ``ours`` and ``bare`` ``runs`` times; print best, median and ratio."""
    mine, theirs = [], []
    for _ in range(runs):
        mine.append(timed(ours, reset))
        theirs.append(timed(bare))
    ratio = statistics.median(mine) / statistics.median(theirs)
    print(
        f"{name:<18} dicomlake best {min(mine):.2f} s, median {statistics.median(mine):.2f} s"
        f" | bare best {min(theirs):.2f} s, median {statistics.median(theirs):.2f} s"
        f" | {ratio:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomlake-startup-"))
    try:
        source = work / "one"
        source.mkdir()
        file = source / "CT_small.dcm"
        shutil.copyfile(sample_file("CT_small.dcm"), file)
        lake = work / "lake"
        ingest = [DICOMLAKE, "ingest", str(source), "--lake", str(lake), "-q"]
        wipe = [sys.executable, "-c", f"import shutil; shutil.rmtree({str(lake)!r}, True)"]
        compare(
            "one-file ingest",
            ingest,
            [sys.executable, "-c", BARE_PARSE, str(file)],
            args.runs,
            wipe,
        )
        subprocess.run(ingest, check=True, capture_output=True)
        sql = [DICOMLAKE, "sql", "--lake", str(lake), "SELECT count(*) FROM instances"]
        bare_sql = [sys.executable, "-c", BARE_SQL, str(lake / "instances")]
        compare("sql count(*)", sql, bare_sql, args.runs, [])
        helps = [timed([DICOMLAKE, "--help"]) for _ in range(args.runs)]
        print(f"{'--help':<18} best {min(helps):.2f} s, median {statistics.median(helps):.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
