"""Benchmark: DICOM networking, ``dicomlake receive``/``pull`` vs the Orthanc PACS.

Generates ``--instances`` real CT files (pydicom's CT_small with new UIDs, 39 KiB,
explicit VR little endian) in ``--studies`` studies of two series, then times:

  1. receive: dcmtk's ``storescu`` sending the whole folder on one association to
     ``dicomlake receive`` (its own process, as a user runs it), until its rows are
     committed (the SIGTERM that ends it commits what is buffered: included);
  2. the same ``storescu`` to Orthanc (Debian's, its configuration as shipped
     otherwise: SQLite index, files in its storage folder);
  3. pull: ``dicomlake pull --get`` of every study from that Orthanc into a new lake
     (C-FIND study/series/image, C-GET per series, rows committed), beside dcmtk's
     ``getscu`` fetching the same studies into a folder (no index, no rows), and
     beside the way to the same lake without pull: that ``getscu``, then
     ``dicomlake ingest`` of its folder (all cores);
  4. checks: the lakes hold exactly the SOP Instance UIDs sent, Orthanc counts them.

dcmtk (storescu, getscu, and Orthanc's own DICOM stack) keeps Nagle's algorithm on
as Debian builds it unless ``TCP_NODELAY=1`` is in its environment: each small
write then waits for a delayed ACK (40 ms), which caps any receiver near 20
instances/s. The benchmark sets it for every dcmtk process, Orthanc included.

Prints instances/s of each and the ratios (the aim: receive at least Orthanc's rate,
the lake's rows included).

    python bench/net.py [--instances 2000] [--studies 20] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.dimse import DCMTK_ENV, dcmtk_available, lake_rows, make_studies
from helpers.orthanc import SKIP_REASON, OrthancServer, free_port, orthanc_available

DICOMLAKE = [sys.executable, "-m", "dicomlake"]


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dicomlake receive exited ({process.returncode})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("dicomlake receive did not start listening")


def storescu(folder: Path, port: int, called: str) -> float:
    """Seconds storescu takes to send ``folder`` on one association."""
    began = time.perf_counter()
    done = subprocess.run(
        ["storescu", "-R", "-xe", "+sd", "-aec", called, "127.0.0.1", str(port), str(folder)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-2000:]}")
    return seconds


def check_lake(lake: Path, expected: set[str], what: str) -> None:
    """Raise unless ``lake`` holds an ``ok`` row of exactly the ``expected`` instances."""
    got = {sop for sop, status, _ in lake_rows(str(lake)) if status == "ok"}
    if got != expected:
        raise RuntimeError(f"{what}: the lake holds {len(got)} of {len(expected)} instances")


def bench_receive(folder: Path, work: Path, expected: set[str]) -> tuple[float, str]:
    lake, store, port = work / "lake-receive", work / "store-receive", free_port()
    command = [
        *DICOMLAKE, "receive", "--lake", str(lake), "--store", str(store),
        "--port", str(port), "--quiet",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_listening(port, process)
    sending = storescu(folder, port, "DICOMLAKE")
    began = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=600)
    stopping = time.perf_counter() - began
    if process.returncode != 0:
        raise RuntimeError(f"dicomlake receive failed: {err.decode()[-2000:]}")
    check_lake(lake, expected, "receive")
    return sending + stopping, f"(send {sending:.1f} s + final commit {stopping:.2f} s)"


def bench_orthanc(folder: Path, server: OrthancServer, count: int) -> float:
    seconds = storescu(folder, server.dicom_port, "ORTHANC")
    assert server.client is not None
    stored = server.client.get("/statistics").json()["CountInstances"]
    if stored != count:
        raise RuntimeError(f"Orthanc holds {stored} of the {count} instances sent")
    return seconds


def bench_pull(server: OrthancServer, work: Path, expected: set[str]) -> float:
    lake, store = work / "lake-pull", work / "store-pull"
    command = [
        *DICOMLAKE, "pull", "--from", f"ORTHANC@127.0.0.1:{server.dicom_port}",
        "--lake", str(lake), "--store", str(store), "--get", "--quiet",
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"dicomlake pull failed: {done.stdout} {done.stderr[-2000:]}")
    for line in done.stderr.splitlines():  # a PACS listing less than it counts, ...
        print(f"  pull: {line}")
    check_lake(lake, expected, f"pull ({done.stdout.strip()})")
    return seconds


def bench_getscu(server: OrthancServer, work: Path, studies: list[str], count: int) -> float:
    out = work / "getscu"
    out.mkdir()
    began = time.perf_counter()
    for study in studies:
        command = [
            "getscu", "-S", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "-od", str(out),
            "127.0.0.1", str(server.dicom_port),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV)
        if done.returncode != 0:
            raise RuntimeError(f"getscu failed: {done.stderr[-2000:]}")
    seconds = time.perf_counter() - began
    got = sum(1 for p in out.iterdir() if p.is_file())
    if got != count:
        raise RuntimeError(f"getscu fetched {got} of {count} instances")
    return seconds


def bench_ingest(work: Path, expected: set[str]) -> float:
    """``dicomlake ingest`` of getscu's folder into a new lake (its own process)."""
    lake = work / "lake-getscu"
    command = [*DICOMLAKE, "ingest", str(work / "getscu"), "--lake", str(lake), "--quiet"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"dicomlake ingest failed: {done.stderr[-2000:]}")
    check_lake(lake, expected, "ingest of getscu's folder")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if not orthanc_available():
        sys.exit(f"bench/net.py: {SKIP_REASON}")
    if not dcmtk_available() or not shutil.which("getscu"):
        sys.exit("bench/net.py: dcmtk not installed (apt-get install dcmtk)")
    os.environ["TCP_NODELAY"] = "1"  # Orthanc's dcmtk inherits it
    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-net-"))
    try:
        folder = work / "files"
        paths = make_studies(folder, args.instances, studies=args.studies, series=2)
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        expected = {str(ds.SOPInstanceUID) for ds in datasets}
        studies = sorted({str(ds.StudyInstanceUID) for ds in datasets})
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.instances} instances ({megabytes:.0f} MB) in {len(studies)} studies")

        ours, detail = bench_receive(folder, work, expected)
        config = {
            "DicomAet": "ORTHANC",
            "DicomModalities": {"DICOMLAKE": ["DICOMLAKE", "127.0.0.1", free_port()]},
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
        }
        with OrthancServer(work / "orthanc", **config) as server:
            theirs = bench_orthanc(folder, server, args.instances)
            pulled = bench_pull(server, work, expected)
            fetched = bench_getscu(server, work, studies, args.instances)
        ingested = bench_ingest(work, expected)
        n = args.instances
        rows = [
            ("receive: storescu -> dicomlake receive (rows committed)", ours, detail),
            ("receive: storescu -> Orthanc", theirs, ""),
            ("pull: dicomlake pull --get from Orthanc (rows committed)", pulled, ""),
            ("pull: getscu from Orthanc (files only)", fetched, ""),
            ("pull: getscu, then dicomlake ingest (rows committed)", fetched + ingested, ""),
        ]
        print()
        for name, seconds, note in rows:
            print(f"{name:<60} {seconds:7.2f} s  {n / seconds:7.0f} instances/s  {note}")
        print()
        print(f"receive, dicomlake / Orthanc: {theirs / ours:.2f}x Orthanc's rate (aim: >= 1)")
        print(f"pull --get, dicomlake / getscu: {fetched / pulled:.2f}x getscu's rate")
        both = fetched + ingested
        print(f"pull --get, dicomlake / getscu + ingest: {both / pulled:.2f}x (the same lake)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
