"""Patches: an exact tiling of every frame, tissue fractions, the patches table, PatchDataset."""

from __future__ import annotations

import gc
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.errors import QueryError
from dicomlake.kernels.patches import PatchOptions, grid, otsu_threshold, tissue_fractions
from dicomlake.ml.patches import DicomPatcher
from dicomlake.sample import image_dataset, sample_file

FILES = {
    "ct.dcm": "CT_small.dcm",  # CT 128 x 128, rescaled to HU
    "mr.dcm": "MR_small.dcm",  # 64 x 64
    "emri.dcm": "emri_small.dcm",  # MR, 10 frames of 64 x 64
    "rgb.dcm": "SC_rgb.dcm",  # RGB 100 x 100
    "truncated.dcm": "MR_truncated.dcm",  # pixel data shorter than Rows x Columns
    "rtstruct.dcm": "rtstruct.dcm",  # no pixel data
}

#: The bright rectangle of the synthetic image: rows 50..150, columns 40..170 of 200 x 300.
REGION = (50, 150, 40, 170)


def region_file(path: Path, photometric: str = "MONOCHROME2") -> Path:
    """A 200 x 300 image: 100 everywhere, 3000 in :data:`REGION` (swapped for MONOCHROME1).

    Either way the region is what a viewer shows bright.
    """
    low, high = (100, 3000) if photometric == "MONOCHROME2" else (3000, 100)
    pixels = np.full((200, 300), low, np.uint16)
    top, bottom, left, right = REGION
    pixels[top:bottom, left:right] = high
    ds = image_dataset(pixels, 12, photometric)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def copy_sources(folder: Path, names: dict[str, str] = FILES) -> Path:
    folder.mkdir(parents=True)
    for name, original in names.items():
        shutil.copyfile(sample_file(original), folder / name)
    region_file(folder / "region.dcm")
    region_file(folder / "region_mono1.dcm", "MONOCHROME1")
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sources(tmp_path_factory.mktemp("patch-src") / "src")


@pytest.fixture
def lake(sources: Path, tmp_path: Path) -> str:
    """A fresh lake of :data:`FILES` and the region images (the patcher writes to it)."""
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(sources)], lake, workers=0)
    return lake


def where(name: str) -> str:
    return f"SELECT path FROM instances WHERE path LIKE '%/{name}'"


def patch_rows(lake: str, where_sql: str = "TRUE") -> list[dict[str, Any]]:
    con = dicomlake.connect(lake)
    try:
        return (
            con.sql(
                "SELECT path, frame, x, y, width, height, tissue_fraction, status, error, pixels, "
                f"channels FROM patches WHERE {where_sql} ORDER BY path, frame, y, x"
            )
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()


def assert_exact_cover(
    boxes: list[tuple[int, int, int, int]], width: int, height: int, size: int, stride: int
) -> None:
    """Every pixel is in a patch, no patch leaves the frame, positions are the grid's."""
    covered = np.zeros((height, width), dtype=np.int32)
    for x, y, w, h in boxes:
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert (w, h) == (min(size, width), min(size, height))
        covered[y : y + h, x : x + w] += 1
    assert covered.min() >= 1, "some pixels are in no patch"
    if stride == size and width % size == 0 and height % size == 0:
        assert covered.max() == 1, "a tiling without overlap covers each pixel once"
    xs = sorted({x for x, _, _, _ in boxes})
    ys = sorted({y for _, y, _, _ in boxes})
    assert xs == expected_starts(width, size, stride)
    assert ys == expected_starts(height, size, stride)
    assert len(boxes) == len(xs) * len(ys)


def expected_starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = [s for s in range(0, length, stride) if s + size <= length]
    return starts if starts[-1] == length - size else [*starts, length - size]


# --------------------------------------------------------------------------- the grid


@pytest.mark.parametrize(
    ("width", "height", "size", "stride"),
    [
        (128, 128, 32, 32),  # exact fit
        (300, 200, 32, 32),  # last patch flush with the edge, overlapping its neighbour
        (100, 100, 48, 20),  # stride < size: overlap
        (97, 61, 16, 7),  # odd everything
        (20, 300, 64, 64),  # narrower than a patch: one column of width 20
        (10, 10, 64, 32),  # smaller than a patch on both sides
        (65, 65, 64, 1),  # stride 1
        (256, 64, 64, 64),  # a side equal to the size
    ],
)
def test_the_grid_covers_the_frame_exactly(width: int, height: int, size: int, stride: int) -> None:
    xs, ys = grid(width, size, stride), grid(height, size, stride)
    boxes = [(x, y, min(size, width), min(size, height)) for y in ys for x in xs]
    assert_exact_cover(boxes, width, height, size, stride)


def test_grid_positions_as_documented() -> None:
    assert grid(300, 32, 32) == [0, 32, 64, 96, 128, 160, 192, 224, 256, 268]
    assert grid(128, 32, 32) == [0, 32, 64, 96]
    assert grid(100, 48, 20) == [0, 20, 40, 52]
    assert grid(20, 64, 64) == [0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 32, "stride": 33}, "stride must be 1..size"),  # gaps: not a tiling
        ({"size": 32, "stride": 0}, "stride must be 1..size"),
        ({"size": 0}, "size must be a positive"),
        ({"size": True}, "size must be a positive"),
        ({"min_tissue": 1.5}, "min_tissue must be a fraction"),
        ({"frames": "last"}, "frames must be"),
        ({"frames": -1}, "frames must be"),
    ],
)
def test_options_out_of_range_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatchOptions(**options)
    with pytest.raises(ValueError, match=message):
        DicomPatcher(**options)


def test_stride_defaults_to_size() -> None:
    assert PatchOptions(size=64).step == 64
    assert DicomPatcher(size=64, stride=16).options.step == 16


# --------------------------------------------------------------------------- tissue


def test_otsu_splits_two_populations() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(50, 3, 2000)])
    threshold = otsu_threshold(values)
    assert threshold is not None and 17 < threshold < 42
    assert otsu_threshold(np.full(100, 7.0)) is None  # constant: no threshold


@pytest.mark.parametrize(("size", "stride"), [(16, 16), (16, 5), (40, 40), (64, 64)])
def test_tissue_fractions_are_the_mean_of_the_mask_over_each_patch(size: int, stride: int) -> None:
    mask = np.random.default_rng(size + stride).random((57, 83)) > 0.6
    xs, ys = grid(83, size, stride), grid(57, size, stride)
    width, height = min(size, 83), min(size, 57)
    fractions = tissue_fractions(mask, xs, ys, width, height)
    assert fractions.shape == (len(ys), len(xs))
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            assert fractions[j, i] == mask[y : y + height, x : x + width].mean()


def expected_fraction(x: int, y: int, size: int) -> float:
    top, bottom, left, right = REGION
    rows = max(0, min(y + size, bottom) - max(y, top))
    cols = max(0, min(x + size, right) - max(x, left))
    return rows * cols / (size * size)


@pytest.mark.parametrize("name", ["region.dcm", "region_mono1.dcm"])
def test_min_tissue_keeps_exactly_the_patches_mostly_inside_the_bright_region(
    sources: Path, name: str
) -> None:
    everything = DicomPatcher(size=32).patch(str(sources / name)).to_pylist()
    assert len(everything) == len(grid(300, 32, 32)) * len(grid(200, 32, 32))
    for row in everything:  # the foreground is exactly the region, for either photometry
        assert row["tissue_fraction"] == pytest.approx(expected_fraction(row["x"], row["y"], 32))
    kept = DicomPatcher(size=32, min_tissue=0.5).patch(str(sources / name)).to_pylist()
    expected = {
        (x, y)
        for y in grid(200, 32, 32)
        for x in grid(300, 32, 32)
        if expected_fraction(x, y, 32) >= 0.5
    }
    assert {(r["x"], r["y"]) for r in kept} == expected
    assert 0 < len(expected) < len(everything)


def test_ct_tissue_is_the_body_not_the_air(sources: Path) -> None:
    rows = DicomPatcher(size=32).patch(str(sources / "ct.dcm")).to_pylist()
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    fraction = {(r["x"], r["y"]): r["tissue_fraction"] for r in rows}
    assert all(0.0 <= f <= 1.0 for f in fraction.values())
    assert fraction[(64, 64)] > 0.9  # the middle of the body
    assert fraction[(0, 0)] < 0.1  # the top-left corner is air
    kept = DicomPatcher(size=32, min_tissue=0.5).patch(str(sources / "ct.dcm")).to_pylist()
    assert {(r["x"], r["y"]) for r in kept} == {k for k, f in fraction.items() if f >= 0.5}


def test_rgb_near_white_is_background(tmp_path: Path) -> None:
    pixels = np.full((64, 96, 3), 245, np.uint8)  # white slide
    pixels[:, 48:] = (180, 90, 150)  # stained tissue on the right half
    ds = image_dataset(pixels, 8, "RGB")
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "slide.dcm", enforce_file_format=True)
    rows = DicomPatcher(size=32, store_pixels=True).patch(str(tmp_path / "slide.dcm")).to_pylist()
    assert {(r["x"], r["y"]): r["tissue_fraction"] for r in rows} == {
        (0, 0): 0.0,
        (32, 0): 0.5,
        (64, 0): 1.0,
        (0, 32): 0.0,
        (32, 32): 0.5,
        (64, 32): 1.0,
    }
    patch = np.frombuffer(rows[2]["pixels"], "<f4").reshape(3, 32, 32)
    np.testing.assert_array_equal(patch, np.moveaxis(pixels[:32, 64:], -1, 0))


def test_a_file_that_cannot_be_decoded_gives_one_error_row(sources: Path) -> None:
    rows = DicomPatcher(size=32).patch(str(sources / "truncated.dcm")).to_pylist()
    assert len(rows) == 1
    assert rows[0]["status"] == "error" and rows[0]["frame"] == 0 and rows[0]["x"] is None
    assert rows[0]["error"]
    missing = DicomPatcher(size=32).patch(str(sources / "gone.dcm")).to_pylist()
    assert [(r["status"], r["frame"]) for r in missing] == [("error", None)]
    assert missing[0]["error"].startswith("FileNotFoundError")
    assert DicomPatcher(size=32).patch(str(sources / "rtstruct.dcm")).num_rows == 0


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("workers", [0, 2])
def test_write_tiles_every_frame_of_every_instance(lake: str, workers: int) -> None:
    summary = DicomPatcher(size=48, stride=40).write(lake, workers=workers)
    rows = patch_rows(lake)
    ok = [r for r in rows if r["status"] == "ok"]
    by_frame: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {}
    for r in ok:
        by_frame.setdefault((r["path"], r["frame"]), []).append(
            (r["x"], r["y"], r["width"], r["height"])
        )
    shapes = {"ct.dcm": (128, 128), "mr.dcm": (64, 64), "emri.dcm": (64, 64)}
    shapes |= {"rgb.dcm": (100, 100), "region.dcm": (300, 200), "region_mono1.dcm": (300, 200)}
    frames = {name: 10 if name == "emri.dcm" else 1 for name in shapes}
    for name, (width, height) in shapes.items():
        mine = {k: v for k, v in by_frame.items() if k[0].endswith(f"/{name}")}
        assert sorted(k[1] for k in mine) == list(range(frames[name])), name
        for boxes in mine.values():
            assert_exact_cover(boxes, width, height, 48, 40)
    errors = [r for r in rows if r["status"] == "error"]
    assert [r["path"].rsplit("/", 1)[-1] for r in errors] == ["truncated.dcm"]
    assert not any(r["path"].endswith("rtstruct.dcm") for r in rows)
    assert all(r["pixels"] is None for r in rows)
    assert {r["channels"] for r in ok} == {1, 3}
    assert summary.instances == 7 and summary.patches == len(ok) and summary.frames == 15
    assert sum(summary.errors.values()) == 1 and summary.skipped == 0


def test_rerun_replaces_the_patches_of_the_instances_it_tiles(lake: str) -> None:
    first = DicomPatcher(size=32, min_tissue=0.0).write(lake, workers=0)
    assert first.replaced == 0
    before = patch_rows(lake, "path LIKE '%/mr.dcm'")
    again = DicomPatcher(size=64, min_tissue=0.5).write(lake, where("ct.dcm"), workers=0)
    assert again.instances == 1 and again.replaced == 1
    ct = patch_rows(lake, "path LIKE '%/ct.dcm'")
    assert {(r["width"], r["height"]) for r in ct} == {(64, 64)}  # no 32-pixel leftovers
    assert all(r["tissue_fraction"] >= 0.5 for r in ct)
    assert again.patches == len(ct) and again.skipped == 4 - len(ct)
    assert patch_rows(lake, "path LIKE '%/mr.dcm'") == before  # not selected: kept


def test_an_instance_with_no_patch_left_loses_its_old_rows(lake: str) -> None:
    DicomPatcher(size=32).write(lake, where("region.dcm"), workers=0)
    assert len(patch_rows(lake)) == 70
    summary = DicomPatcher(size=32, min_tissue=1.0).write(lake, where("mr.dcm"), workers=0)
    assert summary.patches == 0 and summary.skipped == 4
    summary = DicomPatcher(size=400, min_tissue=0.9).write(lake, where("region.dcm"), workers=0)
    assert summary.patches == 0 and summary.skipped == 1 and summary.replaced == 1
    assert patch_rows(lake) == []


def test_stored_pixels_are_the_physical_values_of_the_crop(lake: str) -> None:
    DicomPatcher(size=48, stride=40, store_pixels=True).write(lake, where("ct.dcm"), workers=0)
    reference = pydicom.dcmread(sample_file("CT_small.dcm"))
    hu = apply_modality_lut(reference.pixel_array, reference).astype(np.float32)
    rows = patch_rows(lake)
    assert len(rows) == 9
    for r in rows:
        stored = np.frombuffer(r["pixels"], "<f4").reshape(r["channels"], r["height"], r["width"])
        expected = hu[r["y"] : r["y"] + r["height"], r["x"] : r["x"] + r["width"]]
        np.testing.assert_array_equal(stored[0], expected)


def test_write_with_a_query_without_path_is_a_query_error(lake: str) -> None:
    with pytest.raises(QueryError, match="path"):
        DicomPatcher().write(lake, "SELECT Modality FROM instances", workers=0)


# --------------------------------------------------------------------------- the CLI


def test_cli_patches(lake: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            *("patches", "--lake", lake, "--size", "32", "--min-tissue", "0.5"),
            *("--where", "Modality = 'CT'", "--workers", "0", "--pixels"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "patches: 1 instances" in result.output
    rows = patch_rows(lake)
    assert rows and all(r["pixels"] is not None and r["tissue_fraction"] >= 0.5 for r in rows)
    assert {r["path"].rsplit("/", 1)[-1] for r in rows} == {"ct.dcm"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "32", "--stride", "64"], "stride must be 1..size"),
        (["--min-tissue", "2"], "min-tissue"),
        (["--where", "NoSuchColumn = 1"], "NoSuchColumn"),
    ],
)
def test_cli_patches_refuses_bad_values_without_a_traceback(
    lake: str, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["patches", "--lake", lake, "--workers", "0", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_patches_on_a_missing_lake(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["patches", "--lake", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "dicomlake: error:" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- PatchDataset


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def reference_crops(name: str) -> np.ndarray:
    """pydicom's own physical values of the file (frames first)."""
    ds = pydicom.dcmread(sample_file(name))
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    return values if values.ndim == 3 else values[np.newaxis]


@pytest.mark.torch
@pytest.mark.parametrize("store_pixels", [False, True], ids=["from-files", "from-table"])
def test_dataset_items_are_pydicoms_values_cropped(
    lake: str, torch: Any, store_pixels: bool, tmp_path: Path
) -> None:
    from dicomlake.ml import PatchDataset

    sql = "SELECT path FROM instances WHERE path LIKE '%/ct.dcm' OR path LIKE '%/emri.dcm'"
    DicomPatcher(size=48, stride=40, store_pixels=store_pixels).write(lake, sql, workers=0)
    ds = PatchDataset(lake, cache_dir=tmp_path / "cache")
    assert ds.pixels_from_table is store_pixels
    assert len(ds) == 9 + 10 * 4
    frames = {
        "ct.dcm": reference_crops("CT_small.dcm"),
        "emri.dcm": reference_crops("emri_small.dcm"),
    }
    uids = {
        n: pydicom.dcmread(sample_file(o)).SOPInstanceUID for n, o in FILES.items() if n in frames
    }
    for i in range(len(ds)):
        item = ds[i]
        meta = item["meta"]
        name = meta["path"].rsplit("/", 1)[-1]
        x, y = meta["x"], meta["y"]
        expected = frames[name][meta["frame"], y : y + 48, x : x + 48]
        assert item["image"].dtype == torch.float32
        assert tuple(item["image"].shape) == (1, 48, 48)
        np.testing.assert_array_equal(item["image"][0].numpy(), expected)
        assert meta["SOPInstanceUID"] == uids[name]
        assert "label" not in item
    spools = list((tmp_path / "cache").glob("patch-pixels-*"))
    assert len(spools) == (1 if store_pixels else 0)
    del ds, item
    gc.collect()
    assert not any(p.exists() for p in spools)  # the spool goes with the dataset


@pytest.mark.torch
def test_dataset_windows_and_labels(lake: str, torch: Any) -> None:
    from dicomlake.ml import PatchDataset

    DicomPatcher(size=32).write(lake, workers=0)
    sql = (
        "SELECT p.*, i.Modality FROM patches p JOIN instances i USING (path) "
        "WHERE p.status = 'ok' AND i.Modality IN ('CT', 'MR') ORDER BY path, frame, y, x"
    )
    ds = PatchDataset(lake, sql, label="Modality", window=(40, 400))
    assert ds.classes == ("CT", "MR")
    item = ds[0]
    assert item["meta"]["path"].endswith("/ct.dcm") and int(item["label"]) == 0
    hu = reference_crops("CT_small.dcm")[0, :32, :32]
    expected = np.clip((hu - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
    seen = {ds[i]["meta"]["path"].rsplit("/", 1)[-1]: int(ds[i]["label"]) for i in range(len(ds))}
    assert seen == {"ct.dcm": 0, "mr.dcm": 1, "emri.dcm": 1}


@pytest.mark.torch
def test_dataset_transform_gets_the_item_dict(lake: str, torch: Any) -> None:
    from dicomlake.ml import PatchDataset

    DicomPatcher(size=32).write(lake, where("mr.dcm"), workers=0)
    ds = PatchDataset(lake, transform=lambda item: {**item, "image": item["image"] * 0 + 1})
    assert len(ds) == 4 and float(ds[3]["image"].sum()) == 32 * 32


@pytest.mark.torch
def test_dataset_query_errors(lake: str, torch: Any) -> None:
    from dicomlake.ml import PatchDataset

    DicomPatcher(size=32).write(lake, workers=0)
    with pytest.raises(QueryError, match=r"status = 'ok'"):
        PatchDataset(lake, "SELECT * FROM patches")  # the truncated file's error row
    with pytest.raises(QueryError, match=r"\['x', 'y', 'width', 'height'\]"):
        PatchDataset(lake, "SELECT path, frame FROM patches")
    DicomPatcher(size=32, store_pixels=True).write(lake, where("ct.dcm"), workers=0)
    with pytest.raises(ValueError, match="whole frame"):
        PatchDataset(lake, "SELECT * FROM patches WHERE status = 'ok'", window="dicom")


@pytest.mark.torch
@pytest.mark.parametrize("store_pixels", [False, True], ids=["from-files", "from-table"])
def test_dataset_pickles_small_and_loads_the_same_in_worker_processes(
    lake: str, torch: Any, store_pixels: bool
) -> None:
    from dicomlake.ml import PatchDataset

    DicomPatcher(size=16, store_pixels=store_pixels).write(lake, workers=0)
    ds = PatchDataset(lake, "SELECT * FROM patches WHERE status = 'ok' AND channels = 1")
    assert len(ds) > 200
    ds[0]  # reading must not make the pickle bigger
    blob = pickle.dumps(ds)
    # measured: 44 KB for 783 patches (57 bytes each), with or without stored pixels
    assert len(blob) < 4_000 + 100 * len(ds)
    assert b"DuckDBPyConnection" not in blob

    def collect(workers: int) -> list[tuple[str, int, int, int, Any]]:
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=16,
            num_workers=workers,
            multiprocessing_context="spawn" if workers else None,
        )
        out = []
        for batch in loader:
            meta = batch["meta"]
            for i, path in enumerate(meta["path"]):
                key = (path, int(meta["frame"][i]), int(meta["x"][i]), int(meta["y"][i]))
                out.append((*key, batch["image"][i]))
        return out

    serial, parallel = collect(0), collect(2)
    assert [k[:4] for k in serial] == [k[:4] for k in parallel]
    assert all(torch.equal(a[4], b[4]) for a, b in zip(serial, parallel, strict=True))
