"""The examples run as a user runs them: a fresh process, sample data, real output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dicomlake

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytest.importorskip("torch")

EXAMPLES = Path(__file__).parent.parent / "examples"


def train(
    script: str, lake: Path, data: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run a training example for two epochs in the foreground (no loader workers)."""
    return run_example(
        script,
        *("--lake", str(lake), "--data", str(data), "--epochs", "2", "--workers", "0"),
        *("--cache-dir", str(cache), *extra),
    )


@pytest.mark.slow
def test_train_tiny_builds_a_lake_and_trains_two_epochs(tmp_path: Path) -> None:
    lake, cache, weights = tmp_path / "lake", tmp_path / "cache", tmp_path / "tiny.pt"
    result = train("train_tiny.py", lake, tmp_path / "data", cache, "--save", str(weights))
    assert (lake / "instances" / "_delta_log").is_dir()
    classes = re.search(r"(\d+) frames, classes \{(.*)\}", result.stdout)
    assert classes is not None and int(classes.group(1)) > 100
    assert all(name in classes.group(2) for name in ("'CT'", "'MR'", "'US'", "'CR'"))
    losses = [float(v) for v in re.findall(r"epoch \d+: loss ([0-9.]+)", result.stdout)]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert losses[1] < losses[0]  # it learns something, deterministically (seed 0)
    # the second epoch read the frames from the cache the first one wrote
    assert len(list(cache.rglob("*.npy"))) >= int(classes.group(1)) - 1
    # the one truncated file of the sample data is skipped, named by path only
    assert "MR_truncated.dcm" in result.stderr
    # infer.py classifies with the saved weights, into the classes it learnt
    run_example("infer.py", "--lake", str(lake), "--weights", str(weights), "--workers", "1")
    with dicomlake.Lake(str(lake)) as con:
        labels = con.sql("SELECT DISTINCT label FROM predictions WHERE status = 'ok'").fetchall()
    assert {label for (label,) in labels} <= {"CR", "CT", "MR", "US"}


@pytest.mark.slow
def test_train_seg_builds_a_lake_of_segs_and_trains_two_epochs(tmp_path: Path) -> None:
    pytest.importorskip("highdicom", reason="highdicom (the ml extra) writes the SEGs")
    cache = tmp_path / "cache"
    result = train("train_seg.py", tmp_path / "lake", tmp_path / "data", cache)
    assert "8 segmentations, 8 segments, 8 ok" in result.stdout
    assert "8 segmentations, 0 rejected" in result.stdout
    epochs = re.findall(r"epoch \d+: loss ([0-9.]+), dice ([0-9.]+)", result.stdout)
    assert len(epochs) == 2
    losses = [float(loss) for loss, _ in epochs]
    assert losses[1] < losses[0]  # it learns, deterministically (seed 0)
    assert float(epochs[1][1]) > 0  # and finds some of the ball
    # the second epoch read frames and masks from the cache the first one wrote
    assert len(list((cache / "labels").rglob("*.npy"))) == 8


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an example with ``args`` in a fresh process; it must succeed."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def series_by_hand(paths: list[str]) -> dict[str, float]:
    """The features of a CT series computed with pydicom and numpy alone.

    Mean, std and percentiles do not depend on slice order, so the slices are only
    sorted to find the slice spacing along the normal.
    """
    import numpy as np
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    sys.path.insert(0, str(EXAMPLES))
    try:
        from features import body_mask  # the mask is the example's choice, not a result
    finally:
        sys.path.remove(str(EXAMPLES))
    slices = [pydicom.dcmread(p.removeprefix("file://")) for p in paths]
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)))
    positions = sorted(float(np.dot(normal, s.ImagePositionPatient)) for s in slices)
    slice_mm = float(np.median(np.diff(positions)))
    row_mm, column_mm = (float(v) for v in slices[0].PixelSpacing)
    hu = np.stack(
        [apply_modality_lut(s.pixel_array, s).astype(np.float32) for s in slices], axis=-1
    )
    values = hu[body_mask(hu)].astype(np.float64)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {
        "voxels": values.size,
        "volume_ml": values.size * row_mm * column_mm * slice_mm / 1000,
        "mean_hu": values.mean(),
        "std_hu": values.std(),
        "p10_hu": p10,
        "p50_hu": p50,
        "p90_hu": p90,
    }


#: A five-slice CT series of pydicom's DICOMDIR test files: 16 x 16 x 5 voxels.
CT5N = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"


def test_features_measures_every_ct_series_as_pydicom_does(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = run_example(
        "features.py", "--lake", str(lake), "--data", str(tmp_path / "data"), "--workers", "2"
    )
    assert "SeriesInstanceUID\tSeriesDescription\tstatus" in result.stdout
    with dicomlake.Lake(str(lake)) as con:
        ((ct,),) = con.sql("SELECT count(*) FROM series WHERE Modality = 'CT'").fetchall()
        rows = con.sql("SELECT * FROM features").to_arrow_table().to_pylist()
        paths = [
            p
            for (p,) in con.sql(
                f"SELECT path FROM instances WHERE SeriesInstanceUID = '{CT5N}' AND status = 'ok'"
            ).fetchall()
        ]
    assert len(rows) == ct  # one row per series, ok or not
    assert len({r["SeriesInstanceUID"] for r in rows}) == len(rows)
    assert any(r["status"] == "ok" for r in rows) and any(r["status"] != "ok" for r in rows)
    for row in rows:  # a series that is not one regular volume says why
        assert (row["error"] is None) == (row["status"] == "ok"), row
    (measured,) = [r for r in rows if r["SeriesInstanceUID"] == CT5N]
    assert measured["status"] == "ok", measured["error"]
    expected = series_by_hand(paths)
    assert len(paths) == 5 and measured["voxels"] == expected["voxels"] > 0
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=1e-6), name


def test_infer_classifies_every_frame_into_a_table_that_joins_instances(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = run_example(
        "infer.py", "--lake", str(lake), "--data", str(tmp_path / "data"), "--workers", "2"
    )
    with dicomlake.Lake(str(lake)) as con:
        ((frames,),) = con.sql(
            "SELECT sum(greatest(coalesce(NumberOfFrames, 1), 1)) FROM instances "
            "WHERE status = 'ok' AND has_pixel_data"
        ).fetchall()
        (counts,) = con.sql(
            "SELECT count(*), count(DISTINCT (row_id, frame)), count(i.row_id), "
            "count(*) FILTER (p.status = 'ok'), "
            "count(*) FILTER (p.status = 'ok' AND p.label IN ('CR', 'CT', 'MR', 'US')) "
            "FROM predictions AS p LEFT JOIN instances AS i USING (row_id)"
        ).fetchall()
    rows, distinct, joined, ok, labelled = counts
    assert rows == distinct == joined == frames  # one row per frame, each joins back
    assert labelled == ok > 0.9 * frames  # a few frames do not decode: error rows
    assert re.search(r"^CT\t(CR|CT|MR|US)\t\d+$", result.stdout, re.MULTILINE)
