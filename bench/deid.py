"""Benchmark: de-identification, dicomlake vs dicognito (and pydicom's deid), in one run.

Builds the planted-data archive of ``tests/helpers/planted.py`` (three patients, a CT,
an RT Structure Set and a Comprehensive SR referencing it, a secondary capture and an
ultrasound image with text in their pixels, an MR; identifying tokens in every place
PS3.15's Basic Profile cleans), repeated with fresh UIDs to ``--files`` files, and
times on one core, on the same files:

  (a) dicognito 0.19.0: one ``Anonymizer`` for the run, per file ``dcmread``,
      ``anonymize``, ``save_as(<new SOPInstanceUID>.dcm)`` (what its CLI does);
  (b) deid 0.4.13 with its default recipe: ``replace_identifiers(..., save=True)``,
      on the first ``--deid-files`` files (it is the slowest by far);
  (c) dicomlake's rules engine: per file ``dcmread``, ``deidentify(ds, key, options)``,
      ``save_as``;
  (d) dicomlake's job: ``dicomlake.jobs.deid.deid(lake, out, workers=1)`` over a lake
      the archive was ingested into (ingest timed apart).

Prints files/s and the ratio to dicognito. Then runs each tool on one copy of the
archive and prints, as Markdown, what each leaves behind: which planted values remain
in the output bytes and file names, text in pixels, original UIDs, the de-identification
marks, whether the SR's and RTSTRUCT's references still resolve, and whether each
patient got exactly one pseudonym.

    python bench/deid.py [--files 2000] [--deid-files 200] [--option NAME]... [--keep]
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pydicom

import dicomlake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.planted import (
    CATEGORIES,
    Planted,
    burned_in_text,
    leaks,
    pseudonyms,
    references,
    uids_in,
    write_planted_archive,
)

FILES_PER_COPY = 18


# --- contenders: each de-identifies ``files`` into ``out`` ------------------------


def run_dicognito(files: list[Path], out: Path) -> None:
    from dicognito.anonymizer import Anonymizer

    out.mkdir(parents=True, exist_ok=True)
    anonymizer = Anonymizer()  # one for the run: one pseudonym per patient
    for path in files:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def run_floor(files: list[Path], out: Path) -> None:
    """pydicom's read and write with nothing changed: what any pydicom-based tool pays."""
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def run_deid(files: list[Path], out: Path) -> None:
    # this script is named deid.py: its folder must not hide the deid package
    here, saved = Path(__file__).resolve().parent, sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        from deid.dicom import replace_identifiers
    finally:
        sys.path[:] = saved

    out.mkdir(parents=True, exist_ok=True)
    replace_identifiers([str(p) for p in files], save=True, output_folder=str(out), overwrite=True)


class Ours:
    """dicomlake's engine and job with one key and one set of options."""

    def __init__(self, work: Path, options: frozenset[str]):
        from dicomlake.deidentify.keys import keygen

        self.key = keygen(work / "deid.key")
        self.options = options

    def rules(self, files: list[Path], out: Path) -> None:
        from dicomlake.deidentify.rules import deidentify

        out.mkdir(parents=True, exist_ok=True)
        for path in files:
            ds = deidentify(pydicom.dcmread(path), self.key, self.options, in_place=True)
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)

    def job(self, lake: Path, out: Path) -> float:
        """Seconds for the job over ``lake`` (ingested beforehand)."""
        from dicomlake.jobs.deid import deid

        start = time.perf_counter()
        summary = deid(lake, out, key=self.key, options=self.options, workers=1)
        seconds = time.perf_counter() - start
        if summary.errors:
            print(f"  job errors: {dict(summary.errors)}", file=sys.stderr)
        return seconds


def engine_available() -> str | None:
    """Why dicomlake's de-identification cannot run here, or None."""
    try:
        import dicomlake.deidentify.keys
        import dicomlake.deidentify.rules
        import dicomlake.jobs.deid  # noqa: F401
    except ImportError as exc:
        return f"dicomlake's de-identification is not importable yet ({exc})"
    return None


def timed(run: Callable[[list[Path], Path], None], files: list[Path], out: Path) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(files, out)
    return time.perf_counter() - start


# --- what each leaves behind ------------------------------------------------------


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` (a job's output may hold other files)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(132)[128:] == b"DICM":
                    found.append(path)
    return found


def leave_behind(planted: Planted, out: Path) -> tuple[dict[str, str], list[str]]:
    """One Markdown cell per row of the table, and the planted strings left."""
    every = sorted(p for p in out.rglob("*") if p.is_file())
    files = dicom_files(out)
    in_bytes: set[str] = set()
    in_names: set[str] = set()
    for path in every:
        in_bytes.update(leaks(path.read_bytes(), planted))
        in_names.update(leaks(str(path.relative_to(out)), planted))
    left = planted.categories_of(in_bytes)
    cells = {c: "**left**" if c in left else "gone" for c in CATEGORIES}
    cells["file and folder names"] = "**left**" if in_names else "gone"

    text = [burned_in_text(p) for p in files]
    remains, cleaned = text.count(True), text.count(False)
    withheld = len(planted.burned_in) - remains - cleaned
    parts = [
        f"**left** in {remains}" if remains else "",
        f"cleaned in {cleaned}" if cleaned else "",
    ]
    parts.append(f"withheld {withheld}" if withheld else "")
    cells["text burned into pixels"] = ", ".join(p for p in parts if p) + (
        f" of {len(planted.burned_in)}"
    )

    kept = uids_in(files) & planted.uids
    marked = coded = unnamed = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        unnamed += not ds.get("SOPInstanceUID")
        marked += ds.get("PatientIdentityRemoved") == "YES"
        coded += bool(ds.get("DeidentificationMethodCodeSequence"))
    if kept:
        cells["original UIDs"] = f"**kept** ({len(kept)})"
    elif unnamed:
        cells["original UIDs"] = f"**removed** (no SOPInstanceUID in {unnamed} files)"
    else:
        cells["original UIDs"] = "replaced"
    cells["PatientIdentityRemoved YES"] = f"{marked} of {len(files)}"
    cells["DeidentificationMethodCodeSequence"] = f"{coded} of {len(files)}"
    resolved, dangling = references(files)
    _, planted_dangling = references(planted.files)
    total, _ = references(planted.files)
    assert not planted_dangling
    if dangling:
        cells["SR/RTSTRUCT references resolve"] = f"**{len(dangling)} dangling**"
    elif resolved < total:
        cells["SR/RTSTRUCT references resolve"] = f"**{total - resolved} of {total} dropped**"
    else:
        cells["SR/RTSTRUCT references resolve"] = f"all {total}"
    problems = pseudonyms(files, planted)
    cells["one pseudonym per patient"] = f"**no**: {problems[0]}" if problems else "yes"
    cells["files written"] = f"{len(files)} of {len(planted.files)}"
    return cells, sorted(in_bytes | in_names)


ROWS = (
    *CATEGORIES,
    "file and folder names",
    "text burned into pixels",
    "original UIDs",
    "PatientIdentityRemoved YES",
    "DeidentificationMethodCodeSequence",
    "SR/RTSTRUCT references resolve",
    "one pseudonym per patient",
    "files written",
)


def markdown(columns: dict[str, dict[str, str]]) -> str:
    names = list(columns)
    lines = ["| planted in the archive | " + " | ".join(names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(columns[n].get(row, "") for n in names) + " |")
    return "\n".join(lines)


# --- run --------------------------------------------------------------------------


def ingest(folder: Path, lake: Path) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomlake.ingest([str(folder)], str(lake), workers=1)
    return time.perf_counter() - start


def speed(args: argparse.Namespace, work: Path, ours: Ours | None) -> None:
    copies = math.ceil(args.files / FILES_PER_COPY)
    print(f"writing {copies} copies of the planted archive ...", file=sys.stderr)
    planted = write_planted_archive(work / "speed", copies=copies)
    files = planted.files
    size = sum(p.stat().st_size for p in files) / 2**20
    for path in files:
        path.read_bytes()  # every contender reads from memory
    print(f"\n{len(files)} files, {size:.0f} MiB, one core each")
    rows: list[tuple[str, int, float, Path]] = []

    def add(label: str, count: int, seconds: float, out: Path) -> None:
        rows.append((label, count, seconds, out))

    out = work / "out-dicognito"
    add(f"dicognito {version('dicognito')}", len(files), timed(run_dicognito, files, out), out)
    subset = files[: args.deid_files]
    out = work / "out-deid"
    add(f"deid {version('deid')} (default recipe)", len(subset), timed(run_deid, subset, out), out)
    out = work / "out-floor"
    add("floor: pydicom read + write, no change", len(files), timed(run_floor, files, out), out)
    if ours is not None:
        out = work / "out-rules"
        label = "dicomlake rules (read, deidentify, write)"
        add(label, len(files), timed(ours.rules, files, out), out)
        lake, out = work / "lake", work / "out-job"
        ingested = ingest(work / "speed", lake)
        add("dicomlake job (workers=1)", len(files), ours.job(lake, out), out)
        print(f"(ingest of the archive first, 1 worker: {len(files) / ingested:.0f} files/s)")
    base = rows[0][1] / rows[0][2]
    print(f"\n{'contender':<44}{'files':>7}{'written':>9}{'seconds':>9}{'files/s':>9}{'ratio':>8}")
    for label, count, secs, out in rows:
        rate = count / secs
        written = len(dicom_files(out))
        print(f"{label:<44}{count:>7}{written:>9}{secs:>9.2f}{rate:>9.0f}{rate / base:>7.2f}x")
    print("(ratio: files/s over dicognito's; withheld files are not written, but counted)")


def table(args: argparse.Namespace, work: Path, ours: Ours | None) -> None:
    planted = write_planted_archive(work / "planted")
    outs = work / "table"
    columns: dict[str, dict[str, str]] = {}
    details: dict[str, list[str]] = {}
    runs: list[tuple[str, Callable[[Path], None]]] = []
    if ours is not None:
        label = "dicomlake" + (f" ({', '.join(sorted(ours.options))})" if ours.options else "")

        def job(out: Path) -> None:
            lake = outs / "lake"
            ingest(planted.folder, lake)
            ours.job(lake, out)

        runs.append((label, job))
    runs.append((f"dicognito {version('dicognito')}", lambda o: run_dicognito(planted.files, o)))
    runs.append((f"deid {version('deid')} (default recipe)", lambda o: run_deid(planted.files, o)))
    for i, (label, run) in enumerate(runs):
        out = outs / f"out{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(out)
        columns[label], details[label] = leave_behind(planted, out)
    print(f"\nWhat each leaves behind ({len(planted.files)} planted files, 3 patients):\n")
    print(markdown(columns))
    print()
    for label, left in details.items():
        shown = ", ".join(left[:12]) + (f" ... ({len(left)} in all)" if len(left) > 12 else "")
        print(f"- {label} leaves: {shown or 'nothing planted'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="files for the speed runs")
    parser.add_argument("--deid-files", type=int, default=200, help="files for deid's run")
    parser.add_argument("--option", action="append", default=[], help="dicomlake option")
    parser.add_argument("--no-speed", action="store_true", help="only the leave-behind table")
    parser.add_argument("--keep", action="store_true", help="keep the archives and outputs")
    args = parser.parse_args()
    logging.getLogger("deid").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-deid-"))
    try:
        why = engine_available()
        ours = None
        if why is None:
            from dicomlake.deidentify.options import parse_options

            ours = Ours(work, parse_options(args.option))
        else:
            print(f"{why}: dicognito and deid only", file=sys.stderr)
        if not args.no_speed:
            speed(args, work, ours)
        table(args, work, ours)
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
