"""The deid job on real files: outputs named by new UIDs, the deid table, re-runs, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

import dicomlake
from dicomlake.deidentify.keys import Key, keygen
from dicomlake.deidentify.pixels import burned_in_risk
from dicomlake.errors import DeidKeyError
from dicomlake.jobs.deid import deid
from dicomlake.kernels.deid import failure
from dicomlake.sample import sample_file

FILES = ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "rtstruct.dcm")


def originals(folder: Path) -> dict[str, pydicom.Dataset]:
    return {p.name: pydicom.dcmread(p, force=True) for p in sorted(folder.glob("*.dcm"))}


def identifying_values(datasets: dict[str, pydicom.Dataset]) -> set[str]:
    """Values of the sources that no row, name or summary may carry."""
    values: set[str] = set()
    for ds in datasets.values():
        for name in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = str(ds.get(name, "") or "")
            if len(value) > 3:
                values.add(value)
        values.add(str(ds.SOPInstanceUID))
    return values


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(sample_file(name), folder / name)
    return folder


@pytest.fixture
def lake(source: Path, tmp_path: Path) -> str:
    target = str(tmp_path / "lake")
    dicomlake.ingest([str(source)], target, workers=0)
    return target


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "deid.key"
    keygen(path)
    return path


def deid_rows(lake: str) -> dict[str, dict[str, Any]]:
    con = dicomlake.connect(lake)
    try:
        rows = con.sql("SELECT * FROM deid").to_arrow_table().to_pylist()
    finally:
        con.close()
    return {r["path"].rsplit("/", 1)[-1]: r for r in rows}


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_outputs_are_named_by_their_new_uids(
    lake: str, source: Path, key_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    summary = deid(lake, dest, key=key_file, workers=0)
    before = originals(source)
    rows = deid_rows(lake)
    assert set(rows) == set(FILES)
    assert rows["CT_small.dcm"]["status"] == "ok"
    assert rows["rtstruct.dcm"]["status"] == "ok"  # no pixels: nothing burned in
    us = rows["US1_J2KR.dcm"]
    assert us["status"] == "skipped" and us["output"] is None
    assert "ultrasound" in us["reason"] and "clean-pixel-data" in us["reason"]
    mr_risk = burned_in_risk(before["MR_small.dcm"])
    assert rows["MR_small.dcm"]["status"] == ("ok" if mr_risk is None else "skipped")
    written = [r for r in rows.values() if r["status"] == "ok"]
    assert summary.ok == len(written) and summary.selected == len(FILES)
    assert len(outputs(dest)) == len(written)
    for name, row in rows.items():
        assert row["key_fingerprint"] == Key.from_file(key_file).fingerprint()
        assert row["options"] == [] and row["destination"] == f"file://{dest}"
        if row["status"] != "ok":
            continue
        path = Path(row["output"].removeprefix("file://"))
        assert path.is_file() and path.name != name
        ds = pydicom.dcmread(path)
        assert path.relative_to(dest).parts == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            f"{ds.SOPInstanceUID}.dcm",
        )
        assert row["SOPInstanceUID"] == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPInstanceUID != before[name].SOPInstanceUID
        assert ds.StudyInstanceUID != before[name].StudyInstanceUID
        assert ds.PatientIdentityRemoved == "YES"
    secrets = identifying_values(before)
    text = repr(sorted(rows.items())) + str(summary) + " ".join(map(str, outputs(dest)))
    assert not [value for value in secrets if value in text]


def test_the_output_ingests_as_the_same_number_of_instances(
    lake: str, key_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    summary = deid(lake, dest, key=key_file, workers=0)
    copy = str(tmp_path / "copy-lake")
    ingested = dicomlake.ingest([str(dest)], copy, workers=0)
    con = dicomlake.connect(copy)
    try:
        statuses = con.sql("SELECT status, count(*) FROM instances GROUP BY 1").fetchall()
    finally:
        con.close()
    assert dict(statuses) == {"ok": summary.ok}
    assert ingested is not None


def test_a_rerun_skips_everything_done(lake: str, key_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    first = deid(lake, dest, key=key_file, workers=0)
    stamps = {p: p.stat().st_mtime_ns for p in outputs(dest)}
    again = deid(lake, dest, key=key_file, workers=0)
    assert again.unchanged == len(FILES) == first.selected
    assert again.ok == again.done == 0
    assert {p: p.stat().st_mtime_ns for p in outputs(dest)} == stamps
    # other options are another copy: done again
    other = deid(lake, dest, key=key_file, workers=0, options=["retain-device-identity"])
    assert other.unchanged == 0 and other.done == len(FILES)


def test_the_same_key_gives_the_same_bytes_and_another_key_other_names(
    lake: str, key_file: Path, tmp_path: Path
) -> None:
    deid(lake, tmp_path / "a", key=key_file, workers=0)
    deid(lake, tmp_path / "b", key=Key.from_file(key_file), workers=0)
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    deid(lake, tmp_path / "c", key=os.urandom(32), workers=0)
    c = outputs(tmp_path / "c")
    assert len(c) == len(a)
    assert not {p.name for p in c} & {p.name for p in a}


def test_a_file_that_fails_is_an_error_row_and_the_run_goes_on(
    lake: str, source: Path, key_file: Path, tmp_path: Path
) -> None:
    (source / "CT_small.dcm").unlink()  # gone since it was ingested
    summary = deid(lake, tmp_path / "out", key=key_file, workers=1)
    rows = deid_rows(lake)
    assert rows["CT_small.dcm"]["status"] == "error"
    assert rows["CT_small.dcm"]["reason"] == (
        "FileNotFoundError: cannot read the file as DICOM (ENOENT)"
    )
    assert rows["rtstruct.dcm"]["status"] == "ok"
    assert summary.errors == {"FileNotFoundError": 1}
    # errors are tried again; what was done is not
    shutil.copyfile(sample_file("CT_small.dcm"), source / "CT_small.dcm")
    os.utime(source / "CT_small.dcm", ns=(0, 0))
    again = deid(lake, tmp_path / "out", key=key_file, workers=0)
    assert again.done == 1 and again.ok == 1


def test_where_picks_the_instances(lake: str, key_file: Path, tmp_path: Path) -> None:
    summary = deid(lake, tmp_path / "out", key=key_file, where="Modality = 'CT'", workers=0)
    assert summary.selected == summary.ok == 1
    assert set(deid_rows(lake)) == {"CT_small.dcm"}
    with pytest.raises(dicomlake.QueryError):
        deid(lake, tmp_path / "out", key=key_file, where="no_such_column = 1", workers=0)


def test_clean_pixel_data_lets_the_ultrasound_through_or_says_why(
    lake: str, key_file: Path, tmp_path: Path
) -> None:
    deid(lake, tmp_path / "out", key=key_file, options=["clean-pixel-data"], workers=0)
    row = deid_rows(lake)["US1_J2KR.dcm"]
    assert row["options"] == ["clean-pixel-data"]
    if shutil.which("tesseract") is None:
        assert row["status"] == "skipped" and "tesseract" in row["reason"]
    else:
        assert row["status"] in ("ok", "skipped")  # skipped: text still found
        assert row["status"] == "ok" or "text" in row["reason"]


def test_two_files_with_one_sop_instance_uid_give_one_output(
    source: Path, key_file: Path, tmp_path: Path
) -> None:
    shutil.copyfile(source / "CT_small.dcm", source / "CT_copy.dcm")
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(source)], lake, workers=0)
    deid(lake, tmp_path / "out", key=key_file, workers=0)
    rows = deid_rows(lake)
    assert rows["CT_copy.dcm"]["status"] == "ok"  # first by path
    assert rows["CT_small.dcm"]["status"] == "skipped"
    assert "same SOPInstanceUID" in rows["CT_small.dcm"]["reason"]


def test_bad_arguments_fail_before_anything_runs(lake: str, tmp_path: Path) -> None:
    with pytest.raises(DeidKeyError):
        deid(lake, tmp_path / "out", key=tmp_path / "missing.key", workers=0)
    with pytest.raises(DeidKeyError):
        deid(lake, tmp_path / "out", key=b"short", workers=0)
    with pytest.raises(ValueError, match="no-such-option"):
        deid(lake, tmp_path / "out", key=os.urandom(32), options=["no-such-option"])
    with pytest.raises(ValueError, match="region rules"):
        deid(lake, tmp_path / "out", key=os.urandom(32), regions=tmp_path / "none.json")
    assert not (tmp_path / "out").exists() or not outputs(tmp_path / "out")


def test_error_texts_never_carry_the_exceptions_message() -> None:
    secret = "Doe^Jane"
    assert failure(ValueError(f"invalid value {secret!r}"), "de-identification failed") == (
        "ValueError: de-identification failed"
    )
    assert secret not in failure(OSError(2, f"no {secret}"), "cannot write the output")


# -- crashes


def distinct_copies(folder: Path, count: int) -> None:
    """``count`` CT files, each its own instance (own SOPInstanceUID)."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    for i in range(count):
        uid = pydicom.uid.UID(f"1.2.826.0.1.3680043.{i + 1}")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(folder / f"ct{i:02d}.dcm")


RUN = (
    "import sys; from dicomlake.jobs.deid import deid; "
    "deid(sys.argv[1], sys.argv[2], key=sys.argv[3], workers=int(sys.argv[4]), "
    "task_size=1, commit_rows=2)"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "workers"), [("parse:5", "0"), ("parse:7", "1"), ("merge:2", "0")]
)
def test_killed_then_rerun_gives_one_output_per_input(
    tmp_path: Path, key_file: Path, kill_at: str, workers: str
) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    count = 10
    distinct_copies(folder, count)
    lake, dest = str(tmp_path / "lake"), tmp_path / "out"
    dicomlake.ingest([str(folder)], lake, workers=0)
    command = [sys.executable, "-c", RUN, lake, str(dest), str(key_file), workers]
    env = {**os.environ, "DICOMLAKE_KILL_AT": kill_at}
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partly = [p for p in outputs(dest) if p.suffix == ".dcm"]
    assert len(partly) < count
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = outputs(dest)
    assert len(files) == count and all(p.suffix == ".dcm" for p in files)  # no .partial
    rows = deid_rows(lake)
    assert len(rows) == count and all(r["status"] == "ok" for r in rows.values())
    assert {Path(r["output"].removeprefix("file://")) for r in rows.values()} == set(files)


def test_an_object_store_destination_gets_the_same_files(
    lake: str, key_file: Path, tmp_path: Path
) -> None:
    import fsspec

    deid(lake, tmp_path / "local", key=key_file, workers=0)
    url = "memory://deid-test/out"
    summary = deid(lake, url, key=key_file, workers=0)
    fs = fsspec.filesystem("memory")
    try:
        remote = {
            path.removeprefix("/deid-test/out/"): fs.cat_file(path)
            for path in fs.find("/deid-test/out")
        }
    finally:
        fs.rm("/deid-test", recursive=True)
    local = {
        p.relative_to(tmp_path / "local").as_posix(): p.read_bytes()
        for p in outputs(tmp_path / "local")
    }
    assert remote == local and len(remote) == summary.ok
    con = dicomlake.connect(lake)
    try:
        written = con.sql(
            "SELECT output FROM deid WHERE status = 'ok' AND destination = ?", params=[url]
        ).fetchall()
    finally:
        con.close()
    assert {output for (output,) in written} == {f"{url}/{k}" for k in remote}


def test_partial_files_of_dead_writers_are_swept(lake: str, key_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    deid(lake, dest, key=key_file, where="Modality = 'CT'", workers=0)
    (written,) = outputs(dest)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = written.parent / f".{written.name}.{int(dead.stdout)}.partial"
    live = written.parent / f".{written.name}.{os.getppid()}.partial"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    deid(
        lake, dest, key=key_file, where="Modality = 'CT'", workers=0, options=["clean-descriptors"]
    )
    assert not stale.exists()  # swept on the next write into that folder
    assert live.exists()  # a live writer's is left alone
