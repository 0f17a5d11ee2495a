"""Series volumes from real files: order, spacing, affine, HU, rejections, table, CLI.

Series are written with pydicom from its real CT file (CT_small.dcm): each slice gets
a known position, a stored-value offset of 10 per slice (so the order can be read back
from the pixels), a shuffled file name and a shuffled Instance Number.
"""

from __future__ import annotations

import pickle
import random
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
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.errors import QueryError, TableNotFound
from dicomlake.jobs.volumes import frame_records
from dicomlake.lake.sql import connect
from dicomlake.ml.volumes import build_volumes
from dicomlake.sample import pydicom_test_files, sample_file
from dicomlake.schema import VOLUMES_SCHEMA
from helpers.geometry import AXIAL, OBLIQUE, turned

ORIGIN = np.array([-158.135803, -179.035797, -75.699997])
runner = CliRunner()


@dataclass
class Series:
    """A written series: its UID and, per slice index k (position order), the file."""

    uid: str
    files: list[Path]
    positions: list[np.ndarray]


def write_series(
    folder: Path,
    positions: list[np.ndarray],
    orientations: list[tuple[float, ...]],
    *,
    crop: frozenset[int] = frozenset(),
    seed: int = 0,
) -> Series:
    """Slice k at positions[k]; names and Instance Numbers shuffled (never in k order)."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(sample_file("CT_small.dcm"))
    uid = generate_uid()
    n = len(positions)
    rng = random.Random(seed)
    names, numbers = list(range(n)), list(range(1, n + 1))
    while names == sorted(names) or names == sorted(names, reverse=True):
        rng.shuffle(names)
    while numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True):
        rng.shuffle(numbers)
    files = []
    for k in range(n):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [round(float(v), 6) for v in positions[k]]
        ds.ImageOrientationPatient = list(orientations[k])
        pixels = template.pixel_array + np.int16(10 * k)
        if k in crop:
            pixels = np.ascontiguousarray(pixels[:64, :64])
            ds.Rows, ds.Columns = 64, 64
        ds.PixelData = pixels.tobytes()
        path = folder / f"img{names[k]:02d}.dcm"
        ds.save_as(path)
        files.append(path)
    return Series(uid, files, [np.asarray(p, np.float64) for p in positions])


def straight(n: int, gap: float, orientation: tuple[float, ...] = AXIAL) -> list[np.ndarray]:
    normal = np.cross(orientation[:3], orientation[3:])
    return [ORIGIN + k * gap * normal for k in range(n)]


@dataclass
class Corpus:
    lake: Path
    series: dict[str, Series]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("volumes")
    src = root / "src"
    tilt = turned(3, 0)
    six = straight(6, 2.5)
    shift = np.array([0, 2.5 * np.tan(np.radians(20)), 0])
    gantry = [p + k * shift for k, p in enumerate(straight(5, 2.5))]
    series = {
        "axial": write_series(src / "axial", six, [AXIAL] * 6, seed=1),
        "oblique": write_series(src / "oblique", straight(5, 3.0, OBLIQUE), [OBLIQUE] * 5, seed=2),
        "tilted": write_series(src / "tilted", straight(5, 2.5), [AXIAL] * 4 + [tilt], seed=3),
        "dropped": write_series(src / "dropped", [*six[:2], *six[3:]], [AXIAL] * 5, seed=4),
        "duplicated": write_series(
            src / "duplicated", [*six[:3], six[2], *six[3:5]], [AXIAL] * 6, seed=5
        ),
        "resized": write_series(
            src / "resized", straight(5, 2.5), [AXIAL] * 5, crop=frozenset({1}), seed=6
        ),
        "gantry": write_series(src / "gantry", gantry, [AXIAL] * 5, seed=7),
    }
    lake = root / "lake"
    summary = dicomlake.ingest([str(src)], str(lake), workers=0)
    assert summary.ok == 37, summary
    return Corpus(lake, series)


EXPECTED = {
    "axial": ("ok", None),
    "oblique": ("ok", None),
    "tilted": ("rejected", "orientation_differs"),
    "dropped": ("rejected", "missing_slices"),
    "duplicated": ("rejected", "duplicate_position"),
    "resized": ("rejected", "size_differs"),
    "gantry": ("rejected", "sheared"),
}


@pytest.fixture(scope="module")
def built(corpus: Corpus) -> dict[str, dict[str, Any]]:
    summary = build_volumes(str(corpus.lake))
    assert (summary.series, summary.ok) == (7, 2)
    assert summary.rejected == {reason: 1 for _, reason in EXPECTED.values() if reason}
    con = connect(str(corpus.lake))
    rows = con.sql("SELECT * FROM volumes").to_arrow_table().to_pylist()
    con.close()
    by_uid = {row["SeriesInstanceUID"]: row for row in rows}
    return {name: by_uid[s.uid] for name, s in corpus.series.items()}


# --------------------------------------------------------------------------- table


def test_volumes_table_status_and_reasons(built: dict[str, dict[str, Any]]) -> None:
    assert {name: (row["status"], row["reason"]) for name, row in built.items()} == EXPECTED
    assert built["dropped"]["message"].startswith("1 slice(s) missing")
    assert built["duplicated"]["message"].startswith("1 of 6 slices share a position")
    assert built["tilted"]["message"].startswith("1 of 5 slices have an orientation")
    assert built["resized"]["message"].startswith("1 of 5 slices differ in Rows x Columns")
    assert built["resized"]["rows"] is None
    assert built["tilted"]["rows"] == 128 and built["tilted"]["n_slices"] == 5
    assert all(row["Modality"] == "CT" for row in built.values())


@pytest.mark.parametrize(("name", "gap"), [("axial", 2.5), ("oblique", 3.0)])
def test_volumes_table_geometry(
    built: dict[str, dict[str, Any]], corpus: Corpus, name: str, gap: float
) -> None:
    row, series = built[name], corpus.series[name]
    assert [p.rsplit("/", 1)[1] for p in row["paths"]] == [f.name for f in series.files]
    assert row["frames"] == [0] * len(series.files)
    assert (row["rows"], row["columns"], row["n_slices"]) == (128, 128, len(series.files))
    assert row["spacing_row"] == row["spacing_column"] == pytest.approx(0.661468)
    assert row["spacing_slice"] == pytest.approx(gap, abs=1e-5)
    affine = np.array(row["affine"]).reshape(4, 4)
    for k, position in enumerate(series.positions):
        assert affine @ [0, 0, k, 1] == pytest.approx([*position, 1], abs=1e-5)
    assert row["origin"] == pytest.approx(series.positions[0].tolist(), abs=1e-6)
    orientation = OBLIQUE if name == "oblique" else AXIAL
    assert row["orientation"] == pytest.approx(orientation, abs=1e-6)


def test_volumes_schema_and_sql(corpus: Corpus, built: dict[str, dict[str, Any]]) -> None:
    con = connect(str(corpus.lake))
    names = [r[0] for r in con.sql("DESCRIBE volumes").fetchall()]
    assert names == VOLUMES_SCHEMA.names
    rows = con.sql(
        "SELECT v.reason, count(*) FROM volumes v JOIN series s USING (SeriesInstanceUID) "
        "WHERE s.Modality = 'CT' GROUP BY 1 ORDER BY 1 NULLS FIRST"
    ).fetchall()
    con.close()
    assert rows == [
        (None, 2),
        ("duplicate_position", 1),
        ("missing_slices", 1),
        ("orientation_differs", 1),
        ("sheared", 1),
        ("size_differs", 1),
    ]


def test_rebuild_overwrites_and_where_selects_instances(corpus: Corpus, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest(
        [str(p.parent) for p in (corpus.series["tilted"].files[0],)], str(lake), workers=0
    )
    assert build_volumes(str(lake)).rejected == {"orientation_differs": 1}
    tilted = corpus.series["tilted"].files[4].name
    summary = build_volumes(str(lake), f"path NOT LIKE '%{tilted}'")
    assert (summary.series, summary.ok, summary.rejected) == (1, 1, {})
    summary = build_volumes(str(lake), "Modality = 'MR'")
    assert summary.series == 0
    con = connect(str(lake))
    assert con.sql("SELECT count(*) FROM volumes").fetchall() == [(0,)]
    con.close()


@pytest.mark.torch
def test_bad_where_is_a_query_error(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="NoSuchColumn"):
        build_volumes(str(corpus.lake), "NoSuchColumn = 1")
    with pytest.raises(TableNotFound):
        build_volumes(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def dataset(corpus: Corpus) -> Any:
    pytest.importorskip("torch")
    from dicomlake.ml import SeriesVolumeDataset

    return SeriesVolumeDataset(str(corpus.lake), "SELECT * FROM series ORDER BY n_instances")


def test_dataset_rejects_with_reasons(dataset: Any, corpus: Corpus) -> None:
    uids = {s.uid: name for name, s in corpus.series.items()}
    assert len(dataset) == 2
    assert sorted(uids[u] for u in dataset.series_uids) == ["axial", "oblique"]
    assert {uids[r.SeriesInstanceUID]: r.reason for r in dataset.rejected} == {
        name: reason for name, (_, reason) in EXPECTED.items() if reason
    }
    assert [g.n_slices for g in dataset.geometries] == [5, 6]  # ORDER BY n_instances
    assert dataset.items.to_pydict() == {
        "SeriesInstanceUID": dataset.series_uids,
        "n_slices": [5, 6],
    }


def test_volume_values_are_hounsfield_units_in_position_order(dataset: Any, corpus: Corpus) -> None:
    for index, uid in enumerate(dataset.series_uids):
        series = next(s for s in corpus.series.values() if s.uid == uid)
        item = dataset[index]
        image = item["image"].numpy()
        assert image.dtype == np.float32
        assert image.shape == (1, 128, 128, len(series.files))
        numbers = []
        for k, path in enumerate(series.files):
            ds = pydicom.dcmread(path)
            numbers.append(int(ds.InstanceNumber))
            hu = apply_modality_lut(ds.pixel_array, ds)
            np.testing.assert_array_equal(image[0, :, :, k], hu.astype(np.float32))
        assert numbers != sorted(numbers)  # the order did not come from InstanceNumber
        meta = item["meta"]
        assert meta["SeriesInstanceUID"] == uid
        assert [p.rsplit("/", 1)[1] for p in meta["paths"]] == [f.name for f in series.files]


def test_affine_places_pixels_where_the_header_says(dataset: Any, corpus: Corpus) -> None:
    for index, uid in enumerate(dataset.series_uids):
        series = next(s for s in corpus.series.values() if s.uid == uid)
        meta = dataset[index]["meta"]
        affine = meta["affine"].numpy()
        assert meta["affine"].dtype.is_floating_point and affine.shape == (4, 4)
        for k, path in enumerate(series.files):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ipp = np.array(ds.ImagePositionPatient, np.float64)
            iop = np.array(ds.ImageOrientationPatient, np.float64)
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
            assert affine @ [0, 0, k, 1] == pytest.approx([*ipp, 1], abs=1e-5)
            r, c = 100, 7
            expected = ipp + c * column_spacing * iop[:3] + r * row_spacing * iop[3:]
            assert affine @ [r, c, k, 1] == pytest.approx([*expected, 1], abs=1e-4)
        assert meta["origin"].numpy() == pytest.approx(series.positions[0], abs=1e-5)
        spacing = meta["spacing"].numpy()
        assert spacing[:2] == pytest.approx([0.661468, 0.661468])
        assert spacing[2] == pytest.approx(
            np.linalg.norm(series.positions[1] - series.positions[0])
        )


@pytest.mark.torch
def test_query_with_path_forms_series_from_those_instances(corpus: Corpus) -> None:
    pytest.importorskip("torch")
    from dicomlake.ml import SeriesVolumeDataset

    tilted = corpus.series["tilted"]
    ds = SeriesVolumeDataset(
        str(corpus.lake),
        f"SELECT SeriesInstanceUID, path FROM instances WHERE SeriesInstanceUID = '{tilted.uid}' "
        f"AND path NOT LIKE '%/{tilted.files[4].name}'",
    )
    assert ds.rejected == []
    assert ds[0]["image"].shape == (1, 128, 128, 4)
    assert ds.geometries[0].spacing[2] == pytest.approx(2.5)


@pytest.mark.torch
def test_label_window_transform_and_cache(corpus: Corpus, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dicomlake.ml import SeriesVolumeDataset

    seen = []

    def transform(item: dict[str, Any]) -> dict[str, Any]:
        seen.append(item["meta"]["SeriesInstanceUID"])
        item["extra"] = 1
        return item

    cache = tmp_path / "cache"
    ds = SeriesVolumeDataset(
        str(corpus.lake),
        "SELECT SeriesInstanceUID, Modality FROM series",
        label="Modality",
        window=(40, 400),
        transform=transform,
        cache_dir=cache,
    )
    first = ds[0]
    assert ds.classes == ("CT",) and int(first["label"]) == 0
    assert first["extra"] == 1 and seen == [ds.series_uids[0]]
    image = first["image"]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert len(list(cache.rglob("*.npy"))) == ds.geometries[0].n_slices
    again = ds[0]["image"]
    assert bool((again == image).all())


@pytest.mark.torch
def test_label_must_agree_within_a_series(corpus: Corpus) -> None:
    pytest.importorskip("torch")
    from dicomlake.ml import SeriesVolumeDataset

    with pytest.raises(QueryError, match="different values within"):
        SeriesVolumeDataset(
            str(corpus.lake),
            "SELECT SeriesInstanceUID, path, InstanceNumber FROM instances",
            label="InstanceNumber",
        )


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("SELECT path FROM instances", "SeriesInstanceUID"),
        ("SELECT SeriesInstanceUID FROM nowhere", "nowhere"),
        ("  ; ", "empty"),
    ],
)
@pytest.mark.torch
def test_query_errors(corpus: Corpus, sql: str, match: str) -> None:
    pytest.importorskip("torch")
    from dicomlake.ml import SeriesVolumeDataset

    with pytest.raises(QueryError, match=match):
        SeriesVolumeDataset(str(corpus.lake), sql)
    with pytest.raises(QueryError, match="not_there"):
        SeriesVolumeDataset(str(corpus.lake), "SELECT * FROM series", label="not_there")


def test_dataset_pickles_small_without_connections(dataset: Any) -> None:
    import duckdb

    data = pickle.dumps(dataset)
    assert len(data) < 20_000
    clone = pickle.loads(data)

    def walk(value: Any, depth: int = 0) -> None:
        assert not isinstance(value, duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation)
        if isinstance(value, np.ndarray):
            assert value.size <= 16
        if depth < 6:
            children = value.__dict__.values() if hasattr(value, "__dict__") else ()
            if isinstance(value, dict):
                children = value.values()
            elif isinstance(value, list | tuple):
                children = value
            elif hasattr(value, "__slots__"):
                children = [getattr(value, s) for s in value.__slots__ if hasattr(value, s)]
            for child in children:
                walk(child, depth + 1)

    walk(clone)
    assert bool((clone[0]["image"] == dataset[0]["image"]).all())


@pytest.mark.torch
def test_dataloader_workers_yield_the_same_volumes(dataset: Any) -> None:
    torch = pytest.importorskip("torch")

    def run(workers: int) -> list[tuple[str, Any, Any]]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers)
        return [
            (batch["meta"]["SeriesInstanceUID"][0], batch["image"][0], batch["meta"]["affine"][0])
            for batch in loader
        ]

    serial, parallel = run(0), run(2)
    assert [s[0] for s in serial] == [p[0] for p in parallel] == dataset.series_uids
    for (_, image_a, affine_a), (_, image_b, affine_b) in zip(serial, parallel, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(affine_a, affine_b)


def test_import_volumes_without_torch() -> None:
    code = (
        "import sys, dicomlake.ml.volumes, dicomlake.dicom.geometry, dicomlake.ml; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- pydicom data


def _pydicom_file(part: str) -> list[Path]:
    return [p for p in pydicom_test_files() if part in p.as_posix()]


@pytest.fixture(scope="module")
def pydicom_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pydicom-series")
    for part in ("98892001/CT5N/", "77654033/CT2/", "98892001/CT2N/", "98892003/MR700/"):
        folder = root / "src" / part.strip("/").replace("/", "_")
        folder.mkdir(parents=True)
        for path in _pydicom_file(part):
            (folder / path.name).write_bytes(path.read_bytes())
    enhanced = root / "src" / "enhanced"
    enhanced.mkdir()
    (enhanced / "eCT_Supplemental.dcm").write_bytes(
        sample_file("eCT_Supplemental.dcm").read_bytes()
    )
    dicomlake.ingest([str(root / "src")], str(root / "lake"), workers=0)
    return root / "lake"


def test_pydicom_series(pydicom_lake: Path) -> None:
    summary = build_volumes(str(pydicom_lake))
    assert (summary.series, summary.ok) == (5, 2)
    assert summary.rejected == {"missing_slices": 1, "orientation_differs": 2}
    con = connect(str(pydicom_lake))
    rows = {
        row["paths"][0].split("/")[-2]: row
        for row in con.sql("SELECT * FROM volumes").to_arrow_table().to_pylist()
    }
    con.close()
    ct5n = rows["98892001_CT5N"]
    # InstanceNumber 6..10 runs down in z; the normal (0, 0, 1) sorts them up.
    assert [p.rsplit("/", 1)[1] for p in ct5n["paths"]] == ["3353", "3023", "2693", "2392", "2062"]
    assert ct5n["spacing_slice"] == pytest.approx(2.5)
    assert ct5n["origin"] == pytest.approx([-72.199997, -143.0, -1.2375])
    assert rows["77654033_CT2"]["message"].startswith("161 slice(s) missing")
    assert rows["98892003_MR700"]["reason"] == "orientation_differs"
    assert rows["98892001_CT2N"]["reason"] == "orientation_differs"
    enhanced = rows["enhanced"]
    assert enhanced["status"] == "ok" and enhanced["frames"] == [1, 0]
    assert enhanced["spacing_slice"] == pytest.approx(10.0)
    assert enhanced["origin"] == pytest.approx([99.5, -301.5, -149.0])
    assert enhanced["orientation"] == [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    affine = np.array(enhanced["affine"]).reshape(4, 4)
    assert affine @ [0, 0, 1, 1] == pytest.approx([99.5, -301.5, -159.0, 1])


@pytest.mark.torch
def test_enhanced_volume_frames_in_position_order(pydicom_lake: Path) -> None:
    pytest.importorskip("torch")
    from dicomlake.dicom.frames import load_frame
    from dicomlake.ml import SeriesVolumeDataset

    ds = SeriesVolumeDataset(
        str(pydicom_lake), "SELECT * FROM series WHERE n_instances = 1 AND n_frames = 2"
    )
    item = ds[0]
    assert item["image"].shape == (1, 512, 512, 2)
    path = item["meta"]["paths"][0]
    for k, frame in enumerate((1, 0)):
        expected = load_frame(path, frame).values[0]
        np.testing.assert_array_equal(item["image"][0, :, :, k].numpy(), expected)
    assert not np.array_equal(item["image"][0, :, :, 0], item["image"][0, :, :, 1])


def test_frame_records_read_functional_groups() -> None:
    path = sample_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    records = frame_records(
        "x", ds.to_json(), 2, rows=512, columns=512, orientation=None, pixel_spacing=None
    )
    assert [r.position for r in records] == [(99.5, -301.5, -159.0), (99.5, -301.5, -149.0)]
    assert records[0].orientation == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert records[1].pixel_spacing == (0.388672, 0.388672)
    bare = frame_records("y", None, 3, rows=2, columns=2, orientation=AXIAL, pixel_spacing=(1, 1))
    assert [r.position for r in bare] == [None, None, None]
    assert bare[2].orientation == AXIAL and bare[2].frame == 2


# --------------------------------------------------------------------------- CLI


def test_cli_volumes_prints_one_summary_line(corpus: Corpus, tmp_path: Path) -> None:
    result = runner.invoke(app, ["volumes", "--lake", str(corpus.lake)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "volumes: 7 series, 2 volumes ok, 5 rejected (duplicate_position 1, missing_slices 1, "
        "orientation_differs 1, sheared 1, size_differs 1) in "
    )
    result = runner.invoke(
        app, ["volumes", "--lake", str(corpus.lake), "--where", "Modality = 'MR'", "--quiet"]
    )
    assert result.exit_code == 0 and result.stdout == ""
    result = runner.invoke(app, ["volumes", "--lake", str(corpus.lake), "--where", "true"])
    assert result.stdout.startswith("volumes: 7 series, 2 volumes ok")


@pytest.mark.parametrize(
    "args",
    [["--where", "NoSuchColumn = 1"], ["--where", "Modality = "], ["--lake-missing"]],
    ids=["unknown-column", "syntax", "no-lake"],
)
def test_cli_volumes_errors_are_one_line(corpus: Corpus, tmp_path: Path, args: list[str]) -> None:
    lake = str(tmp_path / "nothing") if args == ["--lake-missing"] else str(corpus.lake)
    extra = [] if args == ["--lake-missing"] else args
    result = runner.invoke(app, ["volumes", "--lake", lake, *extra])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("dicomlake: error: ")
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_dicom_window_is_one_window_for_the_whole_volume(dataset: Any, corpus: Corpus) -> None:
    from dicomlake.ml import SeriesVolumeDataset

    shown = SeriesVolumeDataset(
        str(corpus.lake), "SELECT * FROM series ORDER BY n_instances", window="dicom"
    )
    physical = dataset[1]["image"].numpy()  # CT_small has no window of its own
    image = shown[1]["image"].numpy()
    low, high = np.percentile(physical, (0.5, 99.5))
    np.testing.assert_allclose(image, np.clip((physical - low) / (high - low), 0, 1), atol=1e-5)
    # a value has one brightness on every slice, whatever else the slice holds
    value = physical[0, 64, 64, 0]
    for k in range(1, physical.shape[-1]):
        hits = np.argwhere(physical[0, :, :, k] == value)
        if len(hits):
            r, c = hits[0]
            assert image[0, r, c, k] == pytest.approx(image[0, 64, 64, 0])
