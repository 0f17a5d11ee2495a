"""``dicomlake.apply``: a user's function over real frames, instances and series.

Files are pydicom's own (CT_small, MR_small, the 10-frame emri_small), a copy of
CT_small whose pixel data is cut short (the header reads, the pixels do not decode),
and a 4-slice CT series written with pydicom, slice k offset by 10*k stored values
and named out of order. Expected values are what pydicom computes for the same
frames with the Modality LUT applied.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

import dicomlake
from dicomlake.errors import QueryError
from dicomlake.jobs.apply import FunctionFailed, apply
from dicomlake.kernels.apply import series_row_id
from dicomlake.rows import MAX_ERROR_CHARS, row_id
from dicomlake.sample import sample_file

F = "helpers.apply_functions"
TESTS = Path(__file__).resolve().parents[1]


@dataclass
class Corpus:
    src: Path
    lake: str
    series_uid: str
    slices: list[Path]  # in slice order (k = 0..3)


def write_series(folder: Path, n: int = 4) -> tuple[str, list[Path]]:
    """n axial CT slices 2.5 mm apart; slice k stored values + 10*k; names shuffled."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    names = [2, 0, 3, 1][:n]
    files = []
    for k in range(n):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.InstanceNumber = n - k
        ds.PixelData = (ds.pixel_array + np.int16(10 * k)).tobytes()
        path = folder / f"slice{names[k]}.dcm"
        ds.save_as(path)
        files.append(path)
    return uid, files


def write_truncated(path: Path) -> None:
    """CT_small with half its pixel data: the header is fine, decoding fails."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("apply")
    src = root / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        shutil.copyfile(sample_file(name), src / name)
    write_truncated(src / "truncated.dcm")
    uid, slices = write_series(src / "series")
    lake = str(root / "lake")
    dicomlake.ingest([str(src)], lake, workers=0)
    return Corpus(src, lake, uid, slices)


def rows(lake: str, sql: str) -> list[dict[str, Any]]:
    con = dicomlake.connect(lake)
    try:
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


def physical(path: Path | str) -> np.ndarray:
    """pydicom's frames of a file with the Modality LUT applied, (frames, H, W) float64."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    return np.stack([np.asarray(apply_modality_lut(f, ds), np.float64) for f in frames])


def local(uri: str) -> str:
    return uri.removeprefix("file://")


# --------------------------------------------------------------------------- values


def test_frame_values_equal_pydicom_with_the_modality_lut(corpus: Corpus) -> None:
    where = "path NOT LIKE '%truncated%' AND path NOT LIKE '%/series/%'"
    summary = apply(corpus.lake, where, f"{F}:hu_stats", table="frame_stats", workers=0)
    assert (summary.selected, summary.units, summary.ok) == (12, 12, 12)  # 1 + 1 + 10 frames
    got = rows(
        corpus.lake,
        "SELECT f.*, i.size AS i_size, i.modification_time AS i_mtime, "
        "i.SOPInstanceUID AS i_sop FROM frame_stats f JOIN instances i USING (row_id) "
        "ORDER BY f.path, f.frame",
    )
    for row in got:
        expected = physical(local(row["path"]))[row["frame"]]
        assert row["status"] == "ok" and row["error"] is None and row["version"] == "1"
        assert row["mean"] == pytest.approx(expected.mean(), rel=1e-9)
        assert row["std"] == pytest.approx(expected.std(), rel=1e-6)
        assert (row["low"], row["high"]) == (expected.min(), expected.max())
        assert row["shape"] == [1, *expected.shape] and row["dtype"] == "float32"
        assert row["row_id"] == row_id(row["path"])
        assert (row["size"], row["modification_time"]) == (row["i_size"], row["i_mtime"])
        assert row["SOPInstanceUID"] == row["i_sop"]
    frames = {(Path(local(r["path"])).name, r["frame"]) for r in got}
    assert {f for n, f in frames if n == "emri_small.dcm"} == set(range(10))
    ct = next(r for r in got if r["path"].endswith("CT_small.dcm"))
    assert ct["mean"] < 0 < ct["high"]  # Hounsfield units: air below zero


ENCODINGS = [
    "JPEG2000.dcm",  # JPEG 2000, grayscale
    "JPEG-LL.dcm",  # JPEG lossless
    "MR_small_RLE.dcm",  # RLE
    "MR_small_bigendian.dcm",  # big endian: decoded through pydicom's own parse
    "SC_rgb_rle.dcm",  # RGB
    "SC_rgb_2frame.dcm",  # RGB, two frames
]


def test_pixels_equal_pydicom_across_encodings(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ENCODINGS:
        shutil.copyfile(sample_file(name), src / name)
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(src)], lake, workers=0)
    summary = apply(lake, "", f"{F}:pixels", table="px", workers=0)
    assert summary.errors == {}, summary
    seen = set()
    for row in rows(lake, "SELECT path, frame, pixels, shape FROM px"):
        path = local(row["path"])
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else [ds.pixel_array]
        frame = np.asarray(frames[row["frame"]])
        if frame.ndim == 3:  # RGB: channels first, as the datasets give them
            expected = np.moveaxis(frame, -1, 0).astype(np.float32)
        else:
            expected = np.asarray(apply_modality_lut(frame, ds), np.float32)[np.newaxis]
        got = np.frombuffer(row["pixels"], "<f4").reshape(row["shape"])
        np.testing.assert_array_equal(got, expected, err_msg=path)
        seen.add(Path(path).name)
    assert seen == set(ENCODINGS)


def test_instance_unit_stacks_every_frame(corpus: Corpus) -> None:
    dicomlake.apply(
        corpus.lake, "path LIKE '%emri%'", f"{F}:hu_stats", table="inst", unit="instance", workers=0
    )
    (row,) = rows(corpus.lake, "SELECT * FROM inst")
    expected = physical(local(row["path"]))
    assert row["shape"] == [10, 1, 64, 64] and "frame" not in row
    assert row["mean"] == pytest.approx(expected.mean(), rel=1e-9)


def test_series_unit_streams_slices_in_position_order(corpus: Corpus) -> None:
    summary = apply(
        corpus.lake, "SELECT * FROM series", f"{F}:series_stats", table="vols", unit="series"
    )
    # the single-file series are no volume: their rows say why
    assert (summary.units, summary.ok, summary.errors) == (4, 1, {"RejectedSeries": 3})
    (row,) = rows(corpus.lake, "SELECT * FROM vols WHERE status = 'ok'")
    assert row["SeriesInstanceUID"] == corpus.series_uid
    assert row["row_id"] == series_row_id(corpus.series_uid)
    assert [Path(local(p)) for p in row["paths"]] == corpus.slices
    expected = [physical(p).mean() for p in corpus.slices]
    assert row["slice_means"] == pytest.approx(expected, rel=1e-9)
    assert row["shape"] == [1, 128, 128, 4]
    assert row["spacing"][2] == pytest.approx(2.5)
    affine = np.array(row["affine"]).reshape(4, 4)
    assert affine[:3, 3] == pytest.approx([-158.0, -179.0, -75.0])
    assert row["size"] == sum(p.stat().st_size for p in corpus.slices)


def test_window_and_size_reach_the_function(corpus: Corpus) -> None:
    apply(
        corpus.lake,
        "path LIKE '%CT_small%'",
        f"{F}:hu_stats",
        table="small",
        window=(40, 400),
        size=32,
        workers=0,
    )
    (row,) = rows(corpus.lake, "SELECT * FROM small")
    assert row["shape"] == [1, 32, 32] and 0.0 <= row["low"] <= row["high"] <= 1.0


# --------------------------------------------------------------------------- errors


def test_raising_function_and_undecodable_file_are_error_rows(corpus: Corpus) -> None:
    where = "path NOT LIKE '%/series/%' AND path NOT LIKE '%emri%'"
    summary = apply(corpus.lake, where, f"{F}:fails_on_mr", table="errs", workers=0)
    assert summary.units == 3 and summary.ok == 1, summary
    got = {Path(local(r["path"])).name: r for r in rows(corpus.lake, "SELECT * FROM errs")}
    assert got["CT_small.dcm"]["status"] == "ok" and got["CT_small.dcm"]["mean"] is not None
    mr = got["MR_small.dcm"]
    assert mr["status"] == "error" and mr["mean"] is None
    assert mr["error"].startswith("ValueError: no MR here xxx")
    assert len(mr["error"]) == MAX_ERROR_CHARS and mr["error"].endswith("...")
    bad = got["truncated.dcm"]
    assert bad["status"] == "error" and bad["frame"] == 0 and bad["error"]


def test_on_error_raise_stops_at_the_first_raise(corpus: Corpus) -> None:
    with pytest.raises(FunctionFailed, match="ValueError: no MR here"):
        apply(
            corpus.lake,
            "path LIKE '%MR_small%'",
            f"{F}:fails_on_mr",
            table="raised",
            on_error="raise",
            workers=1,  # the error text comes back from the worker with the task's counts
        )
    assert rows(corpus.lake, "SELECT count(*) AS n FROM instances")  # the lake still opens


def test_a_key_with_two_types_gives_error_rows(corpus: Corpus) -> None:
    where = "path LIKE '%CT_small%' OR path LIKE '%MR_small%'"
    apply(corpus.lake, where, f"{F}:kind_by_file", table="kinds", workers=0)
    got = {Path(local(r["path"])).name: r for r in rows(corpus.lake, "SELECT * FROM kinds")}
    assert got["CT_small.dcm"]["kind"] == 1
    assert got["MR_small.dcm"]["status"] == "error"
    assert "'kind' is string here but int64" in got["MR_small.dcm"]["error"]


def test_integers_widen_to_double_across_runs(corpus: Corpus) -> None:
    where = "path LIKE '%CT_small%'"
    apply(corpus.lake, where, f"{F}:whole", table="widen", workers=0)
    summary = apply(corpus.lake, where, f"{F}:half", table="widen", version="2", workers=0)
    assert summary.widened == ["n"]
    (row,) = rows(corpus.lake, "SELECT * FROM widen")
    assert (row["n"], row["note"], row["version"]) == (128 * 128 / 2, "half", "2")


def test_a_type_the_table_refuses_gives_error_rows(corpus: Corpus) -> None:
    where = "path LIKE '%CT_small%'"
    apply(corpus.lake, where, f"{F}:whole", table="refuse", workers=0)
    summary = apply(
        corpus.lake, where, f"{F}:whole_as_text", table="refuse", version="2", workers=0
    )
    assert summary.errors == {"TypeError": 1}
    (row,) = rows(corpus.lake, "SELECT * FROM refuse")
    assert (row["status"], row["n"], row["version"]) == ("error", None, "2")
    assert "'n' is string here but int64 in table rows" in row["error"]


def test_unit_timeout_is_an_error_row(corpus: Corpus) -> None:
    # 3 s: ample for a CT frame (and a worker's first imports) on a loaded machine
    where = "path LIKE '%CT_small%' OR path LIKE '%MR_small%'"
    summary = apply(
        corpus.lake, where, f"{F}:sleeps_on_mr", table="slow", workers=1, unit_timeout=3
    )
    assert summary.units == 2 and summary.errors == {"Timeout": 1}
    got = {Path(local(r["path"])).name: r for r in rows(corpus.lake, "SELECT * FROM slow")}
    assert got["MR_small.dcm"]["error"].startswith("Timeout: no result after 3 s")
    assert got["CT_small.dcm"]["status"] == "ok"


def test_a_series_past_the_timeout_is_one_error_row(corpus: Corpus) -> None:
    summary = apply(
        corpus.lake,
        f"SeriesInstanceUID = '{corpus.series_uid}'",
        f"{F}:sleeps_on_volumes",
        table="slow_series",
        unit="series",
        workers=1,
        unit_timeout=3,
    )
    assert (summary.units, summary.errors) == (1, {"Timeout": 1})
    (row,) = rows(corpus.lake, "SELECT * FROM slow_series")
    assert (row["SeriesInstanceUID"], row["status"]) == (corpus.series_uid, "error")
    assert row["error"].startswith("Timeout: no result after 3 s")


def test_a_crashed_worker_is_an_error_row_and_the_run_goes_on(corpus: Corpus) -> None:
    where = "path LIKE '%CT_small%' OR path LIKE '%MR_small%'"
    summary = apply(corpus.lake, where, f"{F}:exits_on_mr", table="crashed", workers=1)
    assert summary.units == 2 and summary.ok == 1, summary
    got = {Path(local(r["path"])).name: r for r in rows(corpus.lake, "SELECT * FROM crashed")}
    assert got["MR_small.dcm"]["error"] == ("WorkerCrashed: the worker process died (exit code 3)")
    assert got["CT_small.dcm"]["status"] == "ok"


@pytest.mark.parametrize(
    ("fn", "error"),
    [
        ("not a name", ValueError),
        ("helpers.no_such_module:fn", ImportError),
        (f"{F}:no_such_function", AttributeError),
        (f"{F}:not_a_function", TypeError),
        (lambda item: {}, TypeError),  # does not pickle for workers
    ],
    ids=["spec", "module", "name", "not-callable", "lambda"],
)
def test_a_bad_function_fails_before_any_work(corpus: Corpus, fn: Any, error: type) -> None:
    with pytest.raises(error):
        apply(corpus.lake, "", fn, table="never")
    assert not (Path(corpus.lake) / "never").exists()


@pytest.mark.parametrize("name", ["instances", "series", "1x", "a-b", "_x"])
def test_table_names_are_checked(corpus: Corpus, name: str) -> None:
    with pytest.raises(ValueError, match="table"):
        apply(corpus.lake, "", f"{F}:whole", table=name, workers=0)


def test_bad_sql_is_a_query_error(corpus: Corpus) -> None:
    with pytest.raises(QueryError):
        apply(corpus.lake, "no_such_column = 1", f"{F}:whole", table="never", workers=0)


# --------------------------------------------------------------------------- re-runs


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(sample_file(name), src / name)
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(src)], lake, workers=0)
    return src, lake


def test_rerun_skips_version_and_changed_file_replace(fresh: tuple[Path, str]) -> None:
    src, lake = fresh
    first = apply(lake, "", f"{F}:hu_stats", table="t", workers=0)
    assert (first.units, first.skipped) == (2, 0)
    again = apply(lake, "", f"{F}:hu_stats", table="t", workers=0)
    assert (again.units, again.skipped) == (0, 2)

    bumped = apply(lake, "", f"{F}:hu_stats", table="t", version="2", workers=0)
    assert (bumped.units, bumped.replaced) == (2, 2)
    assert rows(lake, "SELECT version, count(*) AS n FROM t GROUP BY 1") == [
        {"version": "2", "n": 2}
    ]

    ds = pydicom.dcmread(src / "CT_small.dcm")
    ds.PixelData = (ds.pixel_array + np.int16(100)).tobytes()
    ds.save_as(src / "CT_small.dcm")
    dicomlake.ingest([str(src)], lake, workers=0)
    changed = apply(lake, "", f"{F}:hu_stats", table="t", version="2", workers=0)
    assert (changed.units, changed.skipped, changed.replaced) == (1, 1, 1)
    (ct,) = rows(lake, "SELECT * FROM t WHERE path LIKE '%CT_small%'")
    assert ct["mean"] == pytest.approx(physical(src / "CT_small.dcm").mean(), rel=1e-9)
    assert rows(lake, "SELECT count(*) AS n FROM t") == [{"n": 2}]


_KILLED_RUN = """
import sys
from dicomlake.jobs.apply import apply

if __name__ == "__main__":
    apply(sys.argv[1], "", "helpers.apply_functions:hu_stats", table="t", workers=0,
          commit_rows=1)
"""


def test_killed_then_rerun_gives_one_row_per_unit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):  # 3 tasks of 4 files
        shutil.copyfile(sample_file("CT_small.dcm"), src / f"ct{i:02d}.dcm")
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(src)], lake, workers=0)
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    killed = subprocess.run(
        [sys.executable, str(script), lake],
        env={**env, "DICOMLAKE_KILL_AT": "committed:2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = rows(lake, "SELECT count(*) AS n FROM t")[0]["n"]
    assert 0 < before < 12
    again = subprocess.run(
        [sys.executable, str(script), lake], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    counted = rows(lake, "SELECT count(*) AS n, count(DISTINCT row_id) AS units FROM t")
    assert counted == [{"n": 12, "units": 12}]
    assert rows(lake, "SELECT count(*) AS n FROM t WHERE status = 'ok'") == [{"n": 12}]
