"""DIMSE peers for the networking tests and the benchmark: dcmtk's tools, test files.

``storescu`` proposes, for each file, only its own transfer syntax when told which
(``-R`` with ``-xs``, ``-xv``, ...), so :func:`storescu` runs it once per transfer
syntax group and every file goes over the wire as it is stored. dcmtk as Debian builds
it keeps Nagle's algorithm on unless ``TCP_NODELAY=1`` is in its environment (then
each small write waits for a delayed ACK); the helpers set it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

#: storescu's option proposing each transfer syntax (and only it, with ``-R``).
STORESCU_SYNTAX_OPTIONS = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk_available() -> bool:
    """Whether echoscu and storescu are installed (Debian's dcmtk)."""
    return all(shutil.which(tool) for tool in ("echoscu", "storescu"))


def clean_files(folder: Path | str) -> dict[Path, tuple[str, str]]:
    """Files under ``folder`` that storescu can send: path -> (SOP Instance UID, syntax).

    A PS3.10 file with a file meta group naming its transfer syntax, SOP Class and
    SOP Instance UIDs (storescu ignores a file without them), a transfer syntax
    storescu can propose by itself, and bytes dcmtk reads to the end (``dcmdump``
    succeeds: not cut short). Some lack a valid Study or Series Instance UID (see
    :func:`storable`); storescu may still ignore a few (it says which).
    """
    import pydicom

    found: dict[Path, tuple[str, str]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        sop = str(ds.get("SOPInstanceUID", ""))
        meta = ds.file_meta
        named = "MediaStorageSOPClassUID" in meta and "MediaStorageSOPInstanceUID" in meta
        if syntax in STORESCU_SYNTAX_OPTIONS and sop and "SOPClassUID" in ds and named:
            whole = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True)
            if whole.returncode == 0:
                found[path] = (sop, syntax)
    return found


def storable(path: Path) -> bool:
    """Whether a file has the valid Study, Series and SOP Instance UIDs a store needs."""
    import pydicom

    from dicomlake.dicom.uids import is_uid

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return all(
        is_uid(str(ds.get(k, "") or ""))
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )


def storescu(
    files: dict[Path, tuple[str, str]] | Iterable[Path],
    port: int,
    *,
    called: str = "DICOMLAKE",
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
) -> list[subprocess.CompletedProcess[str]]:
    """Send ``files`` with storescu, one run per transfer syntax, each file in its own.

    ``files`` as :func:`clean_files` gives them (or plain paths, sent in one run as
    explicit VR little endian). Runs with ``-nh``: one refused file does not stop it.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    if isinstance(files, dict):
        for path, (_, syntax) in files.items():
            groups[STORESCU_SYNTAX_OPTIONS[syntax]].append(str(path))
    else:
        groups["-xe"] = [str(p) for p in files]
    runs = []
    for option, paths in groups.items():
        command = [
            "storescu", "-R", option, "-nh", "-aet", calling, "-aec", called,
            *extra, "127.0.0.1", str(port), *paths,
        ]  # fmt: skip
        runs.append(
            subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=300)
        )
    return runs


def echoscu(port: int, *, called: str = "DICOMLAKE", calling: str = "ECHOSCU") -> int:
    """echoscu's exit code (0: the C-ECHO succeeded)."""
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=60,
    ).returncode


def make_studies(folder: Path, count: int, *, studies: int = 2, series: int = 2) -> list[Path]:
    """``count`` CT files (CT_small with new UIDs) over ``studies`` x ``series``."""
    import pydicom
    from pydicom.uid import generate_uid

    from dicomlake.sample import sample_file

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [[generate_uid() for _ in range(series)] for _ in range(studies)]
    paths = []
    for i in range(count):
        a, b = i % studies, (i // studies) % series
        ds.StudyInstanceUID = study_uids[a]
        ds.SeriesInstanceUID = series_uids[a][b]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        path = folder / f"{i:06d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def lake_rows(lake: str) -> list[tuple[str | None, str, str]]:
    """(SOPInstanceUID, status, path) of every row of the lake's ``instances``."""
    from dicomlake.lake.location import open_table
    from dicomlake.lake.tables import arrow_dataset

    data = arrow_dataset(open_table(lake)).to_table(columns=["SOPInstanceUID", "status", "path"])
    return list(
        zip(
            data.column("SOPInstanceUID").to_pylist(),
            data.column("status").to_pylist(),
            data.column("path").to_pylist(),
            strict=True,
        )
    )


def lake_sops(lake: str, status: str = "ok") -> set[str]:
    """SOP Instance UIDs of the lake's rows with ``status``."""
    return {sop for sop, row_status, _ in lake_rows(lake) if row_status == status and sop}
