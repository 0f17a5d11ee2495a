"""The segments table: SEG and RTSTRUCT placed on their volumes, from real files.

Series are written with pydicom (shuffled names and Instance Numbers, axial and
oblique), SEGs with highdicom (binary, fractional, labelmap, placed by source
instance or by plane position, a segment on no slice, a series not in the lake),
RT structure sets with pydicom (a hole, two islands on a slice, a contour between
slices). Every mask must equal the one written, voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dicomlake.cli import app
from dicomlake.dicom.segments import mask_extent
from dicomlake.errors import ExtractError, QueryError
from dicomlake.jobs.labels import build_segments, load_labels
from dicomlake.lake.sql import connect
from dicomlake.schema import SEGMENTS_SCHEMA
from helpers.segmentations import Corpus, build_corpus, near_edges

pytest.importorskip("highdicom", reason="highdicom (the ml extra) reads DICOM SEG")

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("segments"))


@pytest.fixture(scope="module")
def rows(corpus: Corpus) -> dict[tuple[str, int | None], dict[str, Any]]:
    summary = build_segments(str(corpus.lake))
    assert summary.segmentations == len(corpus.cases)
    con = connect(str(corpus.lake))
    try:
        table = con.sql("SELECT * FROM segments").to_arrow_table()
    finally:
        con.close()
    names = {case.path.name: name for name, case in corpus.cases.items()}
    return {(names[Path(r["path"]).name], r["segment_number"]): r for r in table.to_pylist()}


def test_one_row_per_segment_with_status_and_reason(
    corpus: Corpus, rows: dict[tuple[str, int | None], dict[str, Any]]
) -> None:
    expected = {
        (name, number): reason
        for name, case in corpus.cases.items()
        for number, reason in case.reasons.items()
    }
    assert {key: row["reason"] for key, row in rows.items()} == expected
    for key, row in rows.items():
        reason = expected[key]
        ok = reason in (None, "empty")
        assert row["status"] == ("ok" if ok else "error"), key
        assert (row["message"] is None) == (reason is None), key
        assert row["label"] == corpus.cases[key[0]].labels[key[1]]  # type: ignore[index]


def test_voxel_counts_and_bounding_boxes_are_the_masks(
    corpus: Corpus, rows: dict[tuple[str, int | None], dict[str, Any]]
) -> None:
    names = ("min_row", "max_row", "min_column", "max_column", "min_slice", "max_slice")
    for (name, number), row in rows.items():
        truth = corpus.cases[name].truth.get(number)  # type: ignore[arg-type]
        if truth is None:
            assert row["voxel_count"] is None and row["min_row"] is None
            continue
        count, box = mask_extent(truth)
        assert row["voxel_count"] == count, (name, number)
        assert tuple(row[n] for n in names) == (box or (None,) * 6), (name, number)


def test_codes_types_and_references(
    corpus: Corpus, rows: dict[tuple[str, int | None], dict[str, Any]]
) -> None:
    liver = rows[("binary", 1)]
    assert (liver["category_code_value"], liver["category_code_scheme"]) == ("85756007", "SCT")
    assert (liver["type_code_value"], liver["type_code_meaning"]) == ("10200004", "Liver")
    assert liver["algorithm_type"] == "MANUAL" and liver["Modality"] == "SEG"
    assert rows[("fractional", 1)]["segmentation_type"] == "FRACTIONAL"
    assert rows[("labelmap", 1)]["segmentation_type"] == "LABELMAP"
    assert rows[("rtstruct", 1)]["segmentation_type"] == "CONTOUR"
    assert rows[("rtstruct", 1)]["type_code_value"] is None
    for (name, _), row in rows.items():
        case = corpus.cases[name]
        series = case.series or corpus.series["absent"]
        assert row["ReferencedSeriesInstanceUID"] == series.uid


@pytest.mark.parametrize(
    "name", ["binary", "fractional", "labelmap", "position", "rtstruct", "rtstruct_oblique"]
)
def test_labels_equal_the_written_masks_voxel_for_voxel(corpus: Corpus, name: str) -> None:
    case = corpus.cases[name]
    labels = load_labels(str(corpus.lake), str(case.path))
    assert case.series is not None
    assert labels.series_uid == case.series.uid
    np.testing.assert_allclose(labels.affine, case.series.affine, atol=1e-4)
    numbers = [s.number for s in labels.segments]
    assert numbers == sorted(case.truth)
    assert labels.array.dtype == np.uint8
    assert labels.array.shape == (len(numbers), 128, 128, case.series.n_slices)
    for channel, number in enumerate(numbers):
        got, truth = labels.array[channel].astype(bool), case.truth[number]
        if name.startswith("rtstruct"):  # pixel centres on an edge may go either way
            differ = got != truth
            edges = np.zeros_like(differ)
            for k in range(truth.shape[2]):
                polygons = case.contours.get(number, {}).get(k, [])
                edges[:, :, k] = near_edges(polygons, truth.shape[:2], 1e-4)
            assert not (differ & ~edges).any(), (number, int(differ.sum()))
        else:
            assert np.array_equal(got, truth), (name, number)


def test_labelmap_channel_holds_segment_numbers(corpus: Corpus) -> None:
    case = corpus.cases["labelmap"]
    labels = load_labels(str(corpus.lake), str(case.path), labelmap=True)
    expected = np.zeros(case.truth[1].shape, np.uint8)
    for number, mask in case.truth.items():
        expected[mask] = number
    assert labels.array.shape == (1, *expected.shape)
    assert np.array_equal(labels.array[0], expected)


def test_load_labels_by_uid_and_its_errors(corpus: Corpus, rows: Any) -> None:
    uid = rows[("binary", 1)]["SOPInstanceUID"]
    by_uid = load_labels(str(corpus.lake), uid)
    assert by_uid.sop_instance_uid == uid and by_uid.array.shape[0] == 3
    with pytest.raises(ExtractError, match="reference_missing"):
        load_labels(str(corpus.lake), str(corpus.cases["missing"].path))
    with pytest.raises(QueryError, match="no SEG or RTSTRUCT"):
        load_labels(str(corpus.lake), "1.2.3.4")


def test_rerun_replaces_a_segmentations_rows(corpus: Corpus, rows: Any) -> None:
    before = len(rows)
    summary = build_segments(str(corpus.lake), "Modality = 'RTSTRUCT'")
    assert summary.segmentations == 2 and summary.segments == 4
    build_segments(str(corpus.lake))
    con = connect(str(corpus.lake))
    try:
        count, distinct = con.sql(
            "SELECT count(*), count(DISTINCT (path, segment_number)) FROM segments"
        ).fetchall()[0]
        columns = [c[0] for c in con.sql("DESCRIBE segments").fetchall()]
    finally:
        con.close()
    assert count == distinct == before
    assert columns == SEGMENTS_SCHEMA.names


def test_unreadable_segmentation_is_a_row(tmp_path: Path, corpus: Corpus) -> None:
    import shutil

    import pydicom

    import dicomlake

    src = tmp_path / "src"
    src.mkdir()
    broken = pydicom.dcmread(corpus.cases["binary"].path)
    del broken.SegmentSequence
    broken.save_as(src / "broken_seg.dcm")
    shutil.copytree(corpus.series["axial"].files[0].parent, src / "axial")
    lake = tmp_path / "lake"
    dicomlake.ingest([str(src)], str(lake), workers=0)
    summary = build_segments(str(lake))
    assert summary.errors == {"unreadable": 1}
    con = connect(str(lake))
    try:
        row = con.sql("SELECT status, reason, segment_number, message FROM segments").fetchall()
    finally:
        con.close()
    assert row[0][:3] == ("error", "unreadable", None) and row[0][3]


def test_cli_labels_then_sql(corpus: Corpus, rows: Any) -> None:
    result = runner.invoke(app, ["labels", "--lake", str(corpus.lake)])
    assert result.exit_code == 0, result.output
    assert "segmentations" in result.output and "not placed" in result.output
    quiet = runner.invoke(app, ["labels", "--lake", str(corpus.lake), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
    sql = runner.invoke(
        app,
        [
            "sql",
            "--lake",
            str(corpus.lake),
            "SELECT count(*) AS n FROM segments",
            "--format",
            "csv",
        ],
    )
    assert sql.exit_code == 0, sql.output
    assert sql.output.split()[-1] == str(len(rows))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "no_such_column = 1"], "query failed"),
        (["--bogus"], "No such option"),
    ],
)
def test_cli_labels_bad_input_exits_2(corpus: Corpus, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["labels", "--lake", str(corpus.lake), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_cli_labels_on_an_empty_lake_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["labels", "--lake", str(tmp_path / "none")])
    assert result.exit_code == 2 and "dicomlake: error:" in result.output


def test_series_that_is_no_volume_is_volume_rejected(tmp_path: Path) -> None:
    import pydicom

    import dicomlake
    from helpers.segmentations import Roi, star, write_rtstruct, write_series

    series = write_series(tmp_path / "src" / "series", 4, seed=5)
    moved = pydicom.dcmread(series.files[series.order[3]])
    moved.ImagePositionPatient = series.datasets[series.order[2]].ImagePositionPatient
    moved.save_as(series.files[series.order[3]])  # two slices at one position
    roi = Roi(1, "a", {1: [star((50, 50), 9, 6, 0)]})
    write_rtstruct(tmp_path / "src" / "rt.dcm", series, [roi])
    lake = tmp_path / "lake"
    dicomlake.ingest([str(tmp_path / "src")], str(lake), workers=0)
    assert build_segments(str(lake)).errors == {"volume_rejected": 1}
    con = connect(str(lake))
    try:
        message = con.sql("SELECT message FROM segments").fetchall()[0][0]
    finally:
        con.close()
    assert "duplicate_position" in message


def test_frames_off_the_volume_grid_are_geometry_mismatch(corpus: Corpus) -> None:
    from dataclasses import replace

    from dicomlake.dicom.seg import seg_masks
    from dicomlake.dicom.segments import TargetVolume
    from dicomlake.jobs.labels import read_segmentation, referenced_volumes

    case = corpus.cases["position"]
    assert case.series is not None
    doc = read_segmentation(str(case.path), None, "SEG")
    volume = referenced_volumes(str(corpus.lake), [case.series.uid])[case.series.uid]
    geometry = volume.geometry  # type: ignore[union-attr]
    assert not seg_masks(doc, volume.target).problems  # type: ignore[union-attr]
    half_slice = geometry.affine.copy()
    half_slice[:3, 3] += 0.5 * geometry.affine[:3, 2]
    smaller = replace(geometry, rows=64)
    for changed in (replace(geometry, affine=half_slice), smaller):
        masks = seg_masks(doc, TargetVolume(changed, {}))
        assert {p.reason for p in masks.problems.values()} == {"geometry_mismatch"}
        assert not masks.masks
