"""Benchmark: DICOMweb, ``dicomlake serve`` vs the Orthanc PACS, in one run.

Generates ``--instances`` small real DICOM files (64 x 64 16-bit images, explicit VR
little endian; ten instances in two series per study, two studies per patient, six
modalities, study dates over 25 years, mixed-case patient names with ``^``), then:

  1. ingests them all into a lake with dicomlake (all cores), and the first
     ``--orthanc-instances`` (whole studies) into a second lake;
  2. uploads those first files to Orthanc 1.10 with its DICOMweb plugin (Debian's
     ``orthanc`` and ``orthanc-dicomweb``; ``POST /instances`` from a pool of
     threads), its configuration as shipped otherwise;
  3. serves each lake with ``dicomlake serve`` (its own process, as a user runs it)
     and times, one client, keep-alive, after a warm-up:
       - QIDO-RS p50/p95 per kind of query (same queries, drawn from patients,
         dates, modalities and names of the shared first files, on every server):
         by PatientID, by a StudyDate range, by ModalitiesInStudy in a year, by
         Modality at series level, by a wildcard PatientName, a series' instances;
       - WADO-RS frames/s: ``.../instances/{i}/frames/1`` of ``--frames`` instances,
         one client, then ``--clients`` concurrent clients;
     on ours over the big lake and the small one, and on Orthanc over the small one;
  4. checks that ours@small and Orthanc give the same number of results for each
     query and the same frame bytes (a benchmark of wrong answers is no benchmark).

Prints the tables and the ratios (the aim: our QIDO p50 at least 10x Orthanc's,
frames/s at least Orthanc's).

    python bench/dicomweb.py [--instances 100000] [--orthanc-instances 10000]
                             [--repeat 50] [--frames 1000] [--clients 8] [--keep]

A smoke run: ``--instances 2000 --orthanc-instances 1000``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import dicomlake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.orthanc import SKIP_REASON, OrthancServer, orthanc_available

#: The UID root of the generated files (a 2.25 root: no registration needed).
ROOT = "2.25.31415926535897932384626433832795"
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 5
INSTANCES_PER_STUDY = SERIES_PER_STUDY * INSTANCES_PER_SERIES
STUDIES_PER_PATIENT = 2
#: Modality: SOP Class (all carry the same small monochrome image).
MODALITIES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
LAST_NAMES = (
    "Smith", "Johnson", "McDonald", "O'Brien", "Nguyen", "Garcia", "Martin", "Lee",
    "Brown", "Dubois", "Rossi", "Kowalski", "Jansen", "Novak", "Silva", "Tanaka",
    "Kim", "Schmidt", "Larsen", "Popescu", "Ivanova", "Costa", "Murphy", "Walsh",
    "VanDerBerg", "DeLuca", "MacLeod", "Fischer", "Horvath", "Yilmaz", "Okafor", "Haddad",
)  # fmt: skip
FIRST_NAMES = (
    "Anna", "John", "Maria", "Peter", "Lucia", "Omar", "Sofia", "Jan", "Eva", "Liam",
    "Noor", "Ines", "Hugo", "Mila", "Ravi", "Chen",
)  # fmt: skip
STUDY_DESCRIPTIONS = ("Chest", "Brain", "Abdomen", "Knee", "Spine", "Pelvis", "Hand", "Neck")
SERIES_DESCRIPTIONS = ("Axial", "Sagittal", "Coronal", "Scout", "Post contrast", "Delayed")
YEARS = range(2000, 2025)
SIDE = 64


@dataclass(frozen=True)
class Instance:
    """What the queries need to know of a generated instance."""

    index: int
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    date: str
    modality: str


def uid_number(n: int) -> str:
    """A fixed-width UID component without a leading zero."""
    return str(10_000_000 + n)


def describe(index: int) -> Instance:
    """The attributes of instance ``index`` (a pure function of it: reproducible)."""
    study = index // INSTANCES_PER_STUDY
    series = index // INSTANCES_PER_SERIES
    patient = study // STUDIES_PER_PATIENT
    person = random.Random(patient * 7919)
    name = f"{person.choice(LAST_NAMES)}^{person.choice(FIRST_NAMES)}"
    visit = random.Random(study * 104729)
    year, month, day = visit.choice(YEARS), visit.randint(1, 12), visit.randint(1, 28)
    return Instance(
        index=index,
        patient_id=f"PID{patient:07d}",
        patient_name=name,
        study_uid=f"{ROOT}.1.{uid_number(study)}",
        series_uid=f"{ROOT}.2.{uid_number(series)}",
        sop_uid=f"{ROOT}.3.{uid_number(index)}",
        date=f"{year}{month:02d}{day:02d}",
        modality=visit.choice(list(MODALITIES)),
    )


#: Placeholders of the template, each as wide as every value it stands for (the
#: values are padded with spaces, or NUL for UIDs, to that width).
FIELDS = {
    "sop": (f"{ROOT}.3.{'3' * 8}", "\0"),
    "study": (f"{ROOT}.1.{'1' * 8}", "\0"),
    "series": (f"{ROOT}.2.{'2' * 8}", "\0"),
    "patient_id": ("PIDXXXXXXX", " "),
    "patient_name": ("N" * 24, " "),
    "date": ("19010101", " "),
    "time": ("235959", " "),
    "accession": ("AXXXXXXXXX", " "),
    "study_description": ("D" * 16, " "),
    "series_description": ("E" * 16, " "),
    "series_number": ("88", " "),
    "instance_number": ("777777", " "),
}


def template(modality: str) -> tuple[bytes, dict[str, list[int]]]:
    """The file bytes of a ``modality`` image with placeholders, and their offsets."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MODALITIES[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = FIELDS["sop"][0]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate, ds.StudyTime = FIELDS["date"][0], FIELDS["time"][0]
    ds.AccessionNumber = FIELDS["accession"][0]
    ds.Modality = modality
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = FIELDS["study_description"][0]
    ds.SeriesDescription = FIELDS["series_description"][0]
    ds.PatientName = FIELDS["patient_name"][0]
    ds.PatientID = FIELDS["patient_id"][0]
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = FIELDS["study"][0], FIELDS["series"][0]
    ds.StudyID = "1"
    ds.SeriesNumber = FIELDS["series_number"][0]
    ds.InstanceNumber = FIELDS["instance_number"][0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ramp = np.add.outer(np.arange(SIDE), np.arange(SIDE)) * (4095 // (2 * SIDE))
    ds.PixelData = ramp.astype("<u2").tobytes()
    fp = pydicom.filebase.DicomBytesIO()
    ds.save_as(fp, enforce_file_format=True)
    data = fp.getvalue()
    header_end = data.index(b"\xe0\x7f\x10\x00")  # the Pixel Data tag
    offsets: dict[str, list[int]] = {}
    for name, (placeholder, _) in FIELDS.items():
        raw = placeholder.encode()
        found, start = [], 0
        while (at := data.find(raw, start, header_end)) >= 0:
            found.append(at)
            start = at + len(raw)
        expected = 2 if name == "sop" else 1  # the SOP Instance UID is in the meta too
        assert len(found) == expected, (name, found)
        offsets[name] = found
    return data, offsets


def generate(folder: Path, count: int) -> list[Path]:
    """Write ``count`` files, 1000 a folder; return their paths in index order."""
    templates = {m: template(m) for m in MODALITIES}
    paths = []
    for index in range(count):
        info = describe(index)
        data, offsets = templates[info.modality]
        study = index // INSTANCES_PER_STUDY
        visit = random.Random(study * 104729 + 1)
        values = {
            "sop": info.sop_uid,
            "study": info.study_uid,
            "series": info.series_uid,
            "patient_id": info.patient_id,
            "patient_name": info.patient_name,
            "date": info.date,
            "time": f"{visit.randint(7, 19):02d}{visit.randint(0, 59):02d}00",
            "accession": f"A{study:09d}",
            "study_description": visit.choice(STUDY_DESCRIPTIONS),
            "series_description": SERIES_DESCRIPTIONS[
                (index // INSTANCES_PER_SERIES) % len(SERIES_DESCRIPTIONS)
            ],
            "series_number": str(index // INSTANCES_PER_SERIES % SERIES_PER_STUDY + 1),
            "instance_number": str(index % INSTANCES_PER_SERIES + 1),
        }
        out = bytearray(data)
        for name, value in values.items():
            placeholder, pad = FIELDS[name]
            raw = value.ljust(len(placeholder), pad).encode()
            assert len(raw) == len(placeholder), (name, value)
            for at in offsets[name]:
                out[at : at + len(raw)] = raw
        sub = folder / f"{index // 1000:04d}"
        if index % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{index:07d}.dcm"
        path.write_bytes(out)
        paths.append(path)
    return paths


# --- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(lake: Path) -> Iterator[str]:
    """``dicomlake serve`` in its own process; yields its DICOMweb root."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomlake", "serve", "--lake", str(lake), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/dicomweb"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"dicomlake serve exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            try:
                response = httpx.get(url + "/studies?limit=1", timeout=30)
            except httpx.TransportError:
                response = None
            if response is not None:
                if response.status_code not in (200, 204):
                    raise SystemExit(
                        f"our DICOMweb answers {response.status_code} at {url}/studies"
                    )
                break
            if time.monotonic() > deadline:
                raise SystemExit("dicomlake serve did not start in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- queries ---------------------------------------------------------------------------


def query_kinds(shared: list[Instance]) -> dict[str, Callable[[random.Random], str]]:
    """Each kind of QIDO query: a function from a RNG to a path and query string,
    drawn from the instances every server holds."""
    studies = shared[::INSTANCES_PER_STUDY]
    series = shared[::INSTANCES_PER_SERIES]

    def by_patient(rng: random.Random) -> str:
        return f"/studies?PatientID={rng.choice(studies).patient_id}"

    def by_date(rng: random.Random) -> str:
        year, quarter = rng.choice(YEARS), rng.randrange(4)
        first, last = f"{3 * quarter + 1:02d}01", f"{3 * quarter + 3:02d}28"
        return f"/studies?StudyDate={year}{first}-{year}{last}"

    def by_modality(rng: random.Random) -> str:
        year = rng.choice(YEARS)
        modality = rng.choice(list(MODALITIES))
        return f"/studies?ModalitiesInStudy={modality}&StudyDate={year}0101-{year}1231"

    def series_by_modality(rng: random.Random) -> str:
        year = rng.choice(YEARS)
        return f"/series?Modality={rng.choice(list(MODALITIES))}&StudyDate={year}0101-{year}1231"

    def by_name(rng: random.Random) -> str:
        return f"/studies?PatientName={rng.choice(LAST_NAMES)[:3]}*"

    def instances_of_series(rng: random.Random) -> str:
        one = rng.choice(series)
        return f"/studies/{one.study_uid}/series/{one.series_uid}/instances"

    return {
        "studies by PatientID": by_patient,
        "studies by StudyDate range": by_date,
        "studies by ModalitiesInStudy+date": by_modality,
        "series by Modality+date": series_by_modality,
        "studies by PatientName wildcard": by_name,
        "instances of a series": instances_of_series,
    }


def count_results(response: httpx.Response) -> int:
    if response.status_code == 204 or not response.content.strip():
        return 0
    if response.status_code != 200:
        raise SystemExit(f"{response.url}: {response.status_code} {response.text[:300]}")
    return len(response.json())


@dataclass
class Timing:
    p50: float
    p95: float
    counts: list[int]


def time_queries(url: str, queries: list[str], warmup: int = 5) -> Timing:
    """Latency of each query, one after the other, on one keep-alive connection."""
    seconds, counts = [], []
    with httpx.Client(base_url=url, timeout=300) as client:
        for query in queries[:warmup]:
            count_results(client.get(query))
        for query in queries:
            started = time.perf_counter()
            response = client.get(query)
            response.read()
            seconds.append(time.perf_counter() - started)
            counts.append(count_results(response))
    ms = sorted(1000 * s for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return Timing(statistics.median(ms), p95, counts)


FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"'}


def frame_body(response: httpx.Response) -> bytes:
    """The single part of a frames answer."""
    if response.status_code != 200:
        raise SystemExit(f"{response.url}: {response.status_code} {response.text[:300]}")
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    part = response.content.split(b"--" + boundary.encode())[1]
    return part.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")


def frames_per_second(url: str, paths: list[str], clients: int) -> float:
    """Frames fetched per second by ``clients`` concurrent clients (1: sequential)."""
    local = threading.local()

    def fetch(path: str) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=300)
        return len(frame_body(local.client.get(path, headers=FRAME_ACCEPT)))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(fetch, paths[: 2 * clients]))  # connect and warm up
        started = time.perf_counter()
        sizes = list(pool.map(fetch, paths))
        elapsed = time.perf_counter() - started
    assert all(s == SIDE * SIDE * 2 for s in sizes), set(sizes)
    return len(paths) / elapsed


# --- the run ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--orthanc-instances", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50, help="queries of each kind")
    parser.add_argument("--frames", type=int, default=1000, help="frames fetched per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent frame clients")
    parser.add_argument("--workers", type=int, default=None, help="ingest workers")
    parser.add_argument("--upload-threads", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the files and lakes")
    args = parser.parse_args()
    if not orthanc_available():
        parser.error(SKIP_REASON)
    # whole studies on both sides, so a study-level answer is the same everywhere
    shared_count = args.orthanc_instances // INSTANCES_PER_STUDY * INSTANCES_PER_STUDY
    if not 0 < shared_count <= args.instances:
        parser.error("--orthanc-instances: at least one study, at most --instances")

    work = Path(tempfile.mkdtemp(prefix="dicomlake-dicomweb-"))
    try:
        started = time.perf_counter()
        paths = generate(work / "corpus", args.instances)
        size = sum(p.stat().st_size for p in paths[:100]) / 100
        print(
            f"generated {len(paths):,} files ({size / 1024:.1f} KiB each) "
            f"in {time.perf_counter() - started:.0f} s"
        )
        big, small = work / "lake-big", work / "lake-small"
        # the shared files as whole folders where they fill them (listing a folder is
        # far cheaper for ingest than naming each of 10,000 files), then the rest
        whole_folders = shared_count // 1000
        shared_sources = [work / "corpus" / f"{n:04d}" for n in range(whole_folders)]
        shared_sources += paths[whole_folders * 1000 : shared_count]
        for lake, sources in ((big, [work / "corpus"]), (small, shared_sources)):
            started = time.perf_counter()
            summary = dicomlake.ingest([str(s) for s in sources], str(lake), workers=args.workers)
            seconds = time.perf_counter() - started
            print(
                f"ingest {summary.ok:,} files into {lake.name} in {seconds:.0f} s "
                f"({summary.ok / seconds:,.0f} files/s), {summary.error_count} errors"
            )

        shared = [describe(i) for i in range(shared_count)]
        kinds = query_kinds(shared)
        rng = random.Random(20240601)
        queries = {kind: [make(rng) for _ in range(args.repeat)] for kind, make in kinds.items()}
        frame_paths = [
            f"/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}/frames/1"
            for i in random.Random(7).sample(shared, min(args.frames, len(shared)))
        ]

        timings: dict[str, dict[str, Timing]] = {}
        rates: dict[str, dict[int, float]] = {}
        samples: dict[str, bytes] = {}

        def measure(label: str, url: str) -> None:
            print(f"measuring {label} ...", flush=True)
            timings[label] = {k: time_queries(url, q) for k, q in queries.items()}
            rates[label] = {c: frames_per_second(url, frame_paths, c) for c in (1, args.clients)}
            samples[label] = frame_body(httpx.get(url + frame_paths[0], headers=FRAME_ACCEPT))

        ours_big = f"ours@{args.instances // 1000}k"
        ours_small = f"ours@{shared_count // 1000}k" if shared_count >= 1000 else "ours@small"
        theirs = f"Orthanc@{shared_count // 1000}k" if shared_count >= 1000 else "Orthanc"
        with OrthancServer(work / "orthanc") as orthanc:
            started = time.perf_counter()
            orthanc.upload(paths[:shared_count], workers=args.upload_threads)
            seconds = time.perf_counter() - started
            print(
                f"upload {shared_count:,} files to Orthanc in {seconds:.0f} s "
                f"({shared_count / seconds:,.0f} files/s, {args.upload_threads} threads)"
            )
            with serve(big) as url:
                measure(ours_big, url)
            with serve(small) as url:
                measure(ours_small, url)
            measure(theirs, orthanc.dicomweb_url)

        report(args, timings, rates, ours_big, ours_small, theirs)
        agree = sum(
            a == b
            for kind in queries
            for a, b in zip(
                timings[ours_small][kind].counts, timings[theirs][kind].counts, strict=True
            )
        )
        total = sum(len(q) for q in queries.values())
        print(
            f"\nanswers: {agree}/{total} queries give the same number of results on "
            f"{ours_small} and {theirs}; frame bytes "
            f"{'equal' if samples[ours_small] == samples[theirs] else 'DIFFER'}"
        )
        for kind in queries:
            for q, a, b in zip(
                queries[kind],
                timings[ours_small][kind].counts,
                timings[theirs][kind].counts,
                strict=True,
            ):
                if a != b:
                    print(f"  differs: {q}: ours {a}, Orthanc {b}")
                    break
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    timings: dict[str, dict[str, Timing]],
    rates: dict[str, dict[int, float]],
    ours_big: str,
    ours_small: str,
    theirs: str,
) -> None:
    """The QIDO table, the frames table and the ratios against Orthanc."""
    labels = (ours_big, ours_small, theirs)
    print(f"\nQIDO-RS latency, ms ({args.repeat} queries of each kind, one client)")
    head = "".join(f"{label + ' p50':>16}{'p95':>8}" for label in labels)
    print(f"{'query':<36}{head}{'results':>10}{'x big':>8}{'x small':>9}")
    for kind in timings[theirs]:
        row = "".join(
            f"{timings[label][kind].p50:>16.1f}{timings[label][kind].p95:>8.1f}" for label in labels
        )
        mean_results = statistics.mean(timings[theirs][kind].counts)
        reference = timings[theirs][kind].p50
        ratio_big = reference / timings[ours_big][kind].p50
        ratio_small = reference / timings[ours_small][kind].p50
        print(f"{kind:<36}{row}{mean_results:>10.1f}{ratio_big:>8.1f}{ratio_small:>9.1f}")
    print("(results: mean per query on Orthanc; x: Orthanc's p50 / ours, higher is faster)")

    print(f"\nWADO-RS frames/s ({args.frames} frames of {SIDE}x{SIDE} 16-bit, first frame each)")
    print(
        f"{'clients':<36}"
        + "".join(f"{label:>16}" for label in labels)
        + f"{'x big':>8}{'x small':>9}"
    )
    for clients in (1, args.clients):
        row = "".join(f"{rates[label][clients]:>16.0f}" for label in labels)
        ratio_big = rates[ours_big][clients] / rates[theirs][clients]
        ratio_small = rates[ours_small][clients] / rates[theirs][clients]
        print(f"{clients:<36}{row}{ratio_big:>8.2f}{ratio_small:>9.2f}")
    print("(x: ours / Orthanc's frames/s)")

    worst_qido = min(
        timings[theirs][k].p50 / timings[label][k].p50
        for k in timings[theirs]
        for label in (ours_big, ours_small)
    )
    worst_frames = min(
        rates[label][c] / rates[theirs][c]
        for c in rates[theirs]
        for label in (ours_big, ours_small)
    )
    print(
        f"\naim: QIDO p50 >= 10x faster than Orthanc: worst {worst_qido:.1f}x "
        f"({'met' if worst_qido >= 10 else 'NOT met'}); frames/s >= Orthanc's: worst "
        f"{worst_frames:.2f}x ({'met' if worst_frames >= 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
