"""Benchmark: ingest of zip members and objects, pydicom vs the native parser, in one run.

Builds a corpus of typical real files (pydicom's little endian CT / MR / CR / DX / US /
MG test files in plain character sets, cycled, as bench/ingest.py picks them), then
times ``dicomlake.ingest`` of the same files

  zip, deflated   one archive, members compressed (what archives usually are);
  zip, stored     one archive, members stored (read in place);
  s3 (--s3)       objects on a local moto server (needs the s3 extra and moto);

with ``parser="pydicom"`` and with ``parser="auto"`` (native where it can), each into a
fresh lake, and prints files/s, the ratio, and the share of rows read natively.

    python bench/ingest_remote.py [--files 2000] [--workers 0] [--s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ingest import is_typical, readable_sources

import dicomlake


def build_zip(dest: Path, sources: list[Path], count: int, compression: int) -> Path:
    """One archive of ``count`` members, ``sources`` cycled."""
    with zipfile.ZipFile(dest, "w", compression) as archive:
        for i in range(count):
            source = sources[i % len(sources)]
            archive.write(source, f"d{i % 50:02d}/{i:06d}_{source.name}")
    return dest


def timed_ingest(
    source: str, lake: Path, parser: str, workers: int, storage: Any = None
) -> tuple[float, int, dict[str, int]]:
    """Seconds for one ingest into a fresh lake; rows ok; rows by parser."""
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = dicomlake.ingest(
            [source], str(lake), workers=workers, parser=parser, storage_options=storage
        )
    return time.perf_counter() - start, summary.ok, dict(summary.parsers)


def compare(title: str, source: str, count: int, work: Path, workers: int, storage: Any) -> None:
    """Ingest ``source`` with each parser and print the two rates and their ratio."""
    rates = {}
    for parser in ("pydicom", "auto"):
        seconds, ok, parsers = timed_ingest(source, work / "lake", parser, workers, storage)
        rates[parser] = count / seconds
        share = parsers.get("native", 0) / max(sum(parsers.values()), 1)
        print(
            f"{title:<16}{parser:<9}{rates[parser]:>9.0f} files/s  {ok:>6} ok  "
            f"native {share:6.1%}  {parsers}"
        )
    print(f"{title:<16}native / pydicom: {rates['auto'] / rates['pydicom']:.1f}x")


@contextmanager
def s3_source(files: list[Path], work: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server holding ``files`` as objects: (source URI, storage options)."""
    import boto3

    from helpers.moto_server import KEY, SECRET, moto_endpoint

    with moto_endpoint() as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="bench")
        for i, path in enumerate(files):
            s3.upload_file(str(path), "bench", f"data/{i:06d}_{path.name}")
        storage = {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        yield "s3://bench/data", storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0, help="0: in this process")
    parser.add_argument("--s3", action="store_true", help="also objects on a moto server")
    parser.add_argument("--s3-files", type=int, default=500)
    args = parser.parse_args()
    from dicomlake.dicom import native

    if not native.available():
        sys.exit("the native parser is not built: nothing to compare")
    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-remote-"))
    try:
        typical = [p for p in readable_sources() if is_typical(p)]
        print(
            f"{len(typical)} distinct typical files, {args.files} members, "
            f"workers={args.workers}, cpus={os.cpu_count()}"
        )
        for name, compression in (("deflated", zipfile.ZIP_DEFLATED), ("stored", 0)):
            archive = build_zip(work / f"{name}.zip", typical, args.files, compression)
            compare(f"zip, {name}", str(archive), args.files, work, args.workers, None)
        if args.s3:
            files = [typical[i % len(typical)] for i in range(args.s3_files)]
            with s3_source(files, work) as (uri, storage):
                compare("s3 (moto)", uri, len(files), work, args.workers, storage)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
