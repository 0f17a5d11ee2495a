"""End to end: real files in, a real Delta table out, checked with real DuckDB."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
from deltalake import DeltaTable

import dicomlake
from dicomlake.sample import (
    no_pixel_file,
    no_preamble_file,
    private_blob_file,
    sample_file,
    write_bad_files,
    write_broken_zip,
)
from helpers.runs import RUN_MARKER, wait_until_gone


def rows(lake: Path, where: str = "true") -> list[dict]:
    con = dicomlake.connect(str(lake))
    return (
        con.sql(f"SELECT * FROM instances WHERE {where} ORDER BY path").to_arrow_table().to_pylist()
    )


def files_on_disk(folder: Path) -> set[str]:
    """The paths a user expects as rows: every file, zip members instead of zips."""
    expected = set()
    for path in folder.rglob("*"):
        if path.is_symlink() and not path.exists():
            expected.add(f"file://{path}")
        elif not path.is_file():
            continue
        elif path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    for info in archive.infolist():
                        if not info.is_dir():
                            expected.add(f"zip://{info.filename}::file://{path}")
            except zipfile.BadZipFile:
                expected.add(f"file://{path}")
        else:
            expected.add(f"file://{path}")
    return expected


def test_every_file_of_the_sample_corpus_is_one_row(sample_corpus: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(sample_corpus)], str(lake), workers=2)
    got = rows(lake)
    paths = [r["path"] for r in got]
    assert len(paths) == len(set(paths))
    assert set(paths) == files_on_disk(sample_corpus)
    assert summary.listed == len(paths)
    assert summary.ok + summary.not_dicom + summary.error_count == len(paths)
    statuses = {r["status"] for r in got}
    assert statuses == {"ok", "not_dicom", "error"}
    for row in got:
        assert (row["error"] is None) == (row["status"] == "ok"), row["path"]
        assert (row["meta"] is not None) == (row["status"] == "ok"), row["path"]


def test_zip_members_are_rows_with_fsspec_paths(sample_corpus: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(sample_corpus / "archive.zip")], str(lake), workers=0)
    got = rows(lake)
    zip_uri = f"file://{sample_corpus / 'archive.zip'}"
    assert {r["path"] for r in got} == {
        f"zip://series/{name}::{zip_uri}"
        for name in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm", "JPEG2000.dcm")
    }
    ct = next(r for r in got if r["path"].startswith("zip://series/CT_small"))
    reference = pydicom.dcmread(sample_file("CT_small.dcm"))
    assert ct["status"] == "ok"
    assert ct["SOPInstanceUID"] == reference.SOPInstanceUID
    assert ct["Rows"] == reference.Rows
    assert not (tmp_path / "lake" / "series").exists()  # nothing unpacked


# ---------------------------------------------------------------- bad-input matrix


def _case_empty(folder: Path) -> str:
    (folder / "empty.dcm").write_bytes(b"")
    return "not_dicom"


def _case_random_bytes(folder: Path) -> str:
    (folder / "random.dcm").write_bytes(os.urandom(5000))
    return "not_dicom"


def _case_text(folder: Path) -> str:
    (folder / "readme.txt").write_text("hello, not DICOM\n" * 10)
    return "not_dicom"


def _case_dicm_then_garbage(folder: Path) -> str:
    (folder / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    return "error"


def _case_truncated_header(folder: Path) -> str:
    (folder / "truncated.dcm").write_bytes(sample_file("CT_small.dcm").read_bytes()[:200])
    return "error"


def _case_private_6mb(folder: Path) -> str:
    private_blob_file(folder / "blob.dcm")
    return "ok"


def _case_no_pixel_data(folder: Path) -> str:
    no_pixel_file(folder / "sr.dcm")
    return "ok"


def _case_no_preamble(folder: Path) -> str:
    no_preamble_file(folder / "nopreamble.dcm")
    return "ok"


def _case_odd_name(folder: Path) -> str:
    shutil.copyfile(sample_file("MR_small.dcm"), folder / "MR scan ü [1] (copy)")
    return "ok"


BAD_CASES = {
    "empty": _case_empty,
    "random-bytes": _case_random_bytes,
    "text": _case_text,
    "dicm-then-garbage": _case_dicm_then_garbage,
    "truncated-200": _case_truncated_header,
    "private-6mb": _case_private_6mb,
    "no-pixel-data": _case_no_pixel_data,
    "no-preamble": _case_no_preamble,
    "spaces-unicode-brackets": _case_odd_name,
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_its_status_and_changes_nothing_else(case: str, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), folder / "good.dcm")
    expected = BAD_CASES[case](folder)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(folder)], str(lake), workers=0)
    got = {r["path"].rsplit("/", 1)[1]: r for r in rows(lake)}
    assert len(got) == 2
    good = got.pop("good.dcm")
    assert good["status"] == "ok" and good["Modality"] == "CT" and good["error"] is None
    ((name, row),) = got.items()
    assert row["status"] == expected, (name, row["error"])
    if expected == "ok":
        assert row["error"] is None and row["SOPInstanceUID"]
    else:
        assert row["error"] and len(row["error"]) < 600
        assert row["meta"] is None
    assert summary.listed == 2


def test_case_private_blob_is_referenced_not_inlined(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    private_blob_file(folder / "blob.dcm")
    lake = tmp_path / "lake"
    dicomlake.ingest([str(folder)], str(lake), workers=0)
    (row,) = rows(lake)
    assert len(row["meta"]) < 100_000  # 6 MB of base64 would be 8 MB
    assert f"file://{folder / 'blob.dcm'}?offset=" in row["meta"]
    assert row["has_pixel_data"] is True


def test_no_pixel_data_row(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    no_pixel_file(folder / "sr.dcm")
    dicomlake.ingest([str(folder)], str(tmp_path / "lake"), workers=0)
    (row,) = rows(tmp_path / "lake")
    assert row["status"] == "ok" and row["has_pixel_data"] is False and row["Modality"] == "SR"


def test_zip_with_a_broken_member(tmp_path: Path) -> None:
    archive = write_broken_zip(tmp_path / "broken.zip")
    dicomlake.ingest([str(archive)], str(tmp_path / "lake"), workers=0)
    got = {r["relative_path"]: r for r in rows(tmp_path / "lake")}
    assert got["good/CT_small.dcm"]["status"] == "ok"
    assert got["broken/MR_small.dcm"]["status"] == "error"
    assert got["broken/MR_small.dcm"]["error"].split(":")[0] in {"ZlibError", "BadZipFile"}


def test_symlink_loop_neither_hangs_nor_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    shutil.copyfile(sample_file("CT_small.dcm"), folder / "sub" / "ct.dcm")
    (folder / "sub" / "loop").symlink_to(folder)
    dicomlake.ingest([str(folder)], str(tmp_path / "lake"), workers=0)
    got = rows(tmp_path / "lake")
    assert [r["status"] for r in got] == ["ok"]


def test_bad_files_of_the_sample_set(tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path / "bad")
    dicomlake.ingest([str(tmp_path / "bad")], str(tmp_path / "lake"), workers=0)
    got = {r["relative_path"]: r["status"] for r in rows(tmp_path / "lake")}
    assert got == expected


# ---------------------------------------------------------------- incremental runs


def _version(lake: Path) -> int:
    return DeltaTable(str(lake / "instances")).version()


def test_rerun_skips_unchanged_files_and_commits_nothing(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    first = dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    version = _version(lake)
    second = dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    assert first.new == 4 and first.skipped_unchanged == 0
    assert second.skipped_unchanged == 4 and second.new == 0 and second.done == 0
    assert _version(lake) == version
    assert len(rows(lake)) == 4


def test_changed_file_is_re_extracted_in_place(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    target = small_folder / "CT_small.dcm"
    ds = pydicom.dcmread(target)
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.save_as(target)
    os.utime(target, (time.time() + 10, time.time() + 10))
    summary = dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    assert summary.changed == 1 and summary.skipped_unchanged == 3
    got = rows(lake)
    assert len(got) == 4
    ct = [r for r in got if r["path"].endswith("CT_small.dcm")]
    assert [r["SOPInstanceUID"] for r in ct] == ["1.2.3.4.5.6.7.8.9"]


def test_sync_removes_rows_of_deleted_files_only_under_the_source(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), other / "kept.dcm")
    dicomlake.ingest([str(small_folder), str(other)], str(lake), workers=0)
    (small_folder / "MR_small.dcm").unlink()
    plain = dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    assert plain.deleted == 0 and len(rows(lake)) == 5
    synced = dicomlake.ingest([str(small_folder)], str(lake), workers=0, sync=True)
    assert synced.deleted == 1
    paths = {r["path"] for r in rows(lake)}
    assert f"file://{small_folder / 'MR_small.dcm'}" not in paths
    assert f"file://{other / 'kept.dcm'}" in paths
    assert len(paths) == 4


def test_same_file_through_two_sources_is_one_row(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    summary = dicomlake.ingest(
        [str(small_folder), str(small_folder / "CT_small.dcm")], str(lake), workers=0
    )
    assert summary.duplicates == 1
    assert len(rows(lake)) == 4


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun_gives_exactly_one_row_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    ct = sample_file("CT_small.dcm").read_bytes()
    for i in range(1500):
        sub = folder / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.dcm").write_bytes(ct)
    lake = tmp_path / "lake"
    command = [
        sys.executable,
        "-m",
        "dicomlake",
        "ingest",
        str(folder),
        "--lake",
        str(lake),
        "--workers",
        "1",
        "--commit-rows",
        "100",
        "--quiet",
    ]
    # SIGKILL to the coordinator right after its second commit's log entry, while its
    # worker is mid-task: midway through the run on any machine, however fast
    marker = f"kill-9-{os.getpid()}"
    env = {**os.environ, "DICOMLAKE_KILL_AT": "committed:2", RUN_MARKER: marker}
    with (tmp_path / "stderr").open("w") as stderr:  # not a pipe: the worker holds it open
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    assert process.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    wait_until_gone(marker, "worker processes outlived their killed coordinator")
    committed = len(rows(lake))
    assert 0 < committed < 1500
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = rows(lake)
    paths = [r["path"] for r in got]
    assert len(paths) == 1500 == len(set(paths))
    assert set(paths) == files_on_disk(folder)
    assert f"{committed} skipped unchanged" in result.stdout


def test_lake_object_ingests_queries_and_refreshes(small_folder: Path, tmp_path: Path) -> None:
    with dicomlake.Lake(str(tmp_path / "lake")) as lake:
        lake.ingest([str(small_folder / "CT_small.dcm")], workers=0)
        assert lake.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
        lake.ingest([str(small_folder)], workers=0)
        assert lake.sql("SELECT count(*) FROM instances").fetchall() == [(4,)]
        assert lake.to_arrow("SELECT * FROM studies").num_rows == 4
        assert lake.summary()["ok"] == 4
