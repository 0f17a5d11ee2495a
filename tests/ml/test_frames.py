"""FrameDataset: frames picked by SQL, in physical units, checked against pydicom's own."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import dicomlake
from dicomlake.errors import ExtractError, QueryError
from dicomlake.sample import sample_file

torch = pytest.importorskip("torch")

from dicomlake.ml import FrameCache, FrameDataset  # noqa: E402

pytestmark = pytest.mark.torch

FILES = {
    "ct.dcm": "CT_small.dcm",  # CT, rescaled to HU, 128 x 128
    "mr.dcm": "MR_small.dcm",
    "emri.dcm": "emri_small.dcm",  # MR, 10 frames
    "ect.dcm": "eCT_Supplemental.dcm",  # enhanced CT: rescale in functional groups
    "cr_mono1.dcm": "6154",  # CR, MONOCHROME1, slope 0.684, window 1600
    "rgb.dcm": "SC_rgb_rle.dcm",  # RGB, RLE
    "truncated.dcm": "MR_truncated.dcm",  # pixel data shorter than Rows x Columns
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("ml-frames")
    src = root / "src"
    src.mkdir()
    for name, original in FILES.items():
        shutil.copyfile(sample_file(original), src / name)
    with zipfile.ZipFile(src / "archive.zip", "w") as zf:
        zf.write(sample_file("CT_small.dcm"), "inside/ct.dcm")
    lake = str(root / "lake")
    dicomlake.ingest([str(src)], lake, workers=0)
    return lake


def where(name: str) -> str:
    return f"SELECT path FROM instances WHERE path LIKE '%/{name}'"


def test_ct_in_hounsfield_units_as_pydicom_rescales_them(lake: str) -> None:
    ds = FrameDataset(lake, where("ct.dcm"))
    assert len(ds) == 1
    item = ds[0]
    reference = pydicom.dcmread(sample_file("CT_small.dcm"))
    expected = apply_modality_lut(reference.pixel_array, reference)
    image = item["image"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (1, 128, 128)
    np.testing.assert_array_equal(image[0].numpy(), expected.astype(np.float32))
    # one known pixel: stored value * slope + intercept
    stored = int(reference.pixel_array[64, 64])
    assert float(image[0, 64, 64]) == stored * float(reference.RescaleSlope) + float(
        reference.RescaleIntercept
    )
    assert float(image.min()) < -500  # air is negative HU: the intercept was applied
    assert item["meta"]["SOPInstanceUID"] == reference.SOPInstanceUID
    assert item["meta"]["frame"] == 0
    assert item["meta"]["spacing"].tolist() == [float(v) for v in reference.PixelSpacing]
    assert "label" not in item


def test_enhanced_ct_rescale_comes_from_functional_groups(lake: str) -> None:
    ds = FrameDataset(lake, where("ect.dcm"))
    assert len(ds) == 2
    reference = pydicom.dcmread(sample_file("eCT_Supplemental.dcm"))
    shared = reference.SharedFunctionalGroupsSequence[0]
    transform = shared.PixelValueTransformationSequence[0]
    slope, intercept = float(transform.RescaleSlope), float(transform.RescaleIntercept)
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    for frame in range(2):
        item = ds[frame]
        expected = reference.pixel_array[frame] * slope + intercept
        np.testing.assert_array_equal(item["image"][0].numpy(), expected.astype(np.float32))
        assert item["meta"]["frame"] == frame
        assert item["meta"]["spacing"].tolist() == spacing


def test_every_frame_of_a_multiframe_file_in_order(lake: str) -> None:
    ds = FrameDataset(lake, where("emri.dcm"))
    expected = pydicom.dcmread(sample_file("emri_small.dcm")).pixel_array
    assert len(ds) == expected.shape[0] == 10
    for index in range(10):
        item = ds[index]
        assert item["meta"]["frame"] == index
        np.testing.assert_array_equal(item["image"][0].numpy(), expected[index])


def test_first_middle_and_a_frame_column(lake: str) -> None:
    expected = pydicom.dcmread(sample_file("emri_small.dcm")).pixel_array
    first = FrameDataset(lake, where("emri.dcm"), frames="first")
    middle = FrameDataset(lake, where("emri.dcm"), frames="middle")
    assert [len(first), len(middle)] == [1, 1]
    assert middle[0]["meta"]["frame"] == 5
    np.testing.assert_array_equal(middle[0]["image"][0].numpy(), expected[5])
    chosen = FrameDataset(
        lake,
        "SELECT path, unnest([7, 2]) AS frame FROM instances WHERE path LIKE '%/emri.dcm'",
    )
    assert [chosen[i]["meta"]["frame"] for i in range(len(chosen))] == [7, 2]
    np.testing.assert_array_equal(chosen[1]["image"][0].numpy(), expected[2])


def test_windows_map_to_display_brightness(lake: str) -> None:
    physical = FrameDataset(lake, where("ct.dcm"))[0]["image"]
    lung = FrameDataset(lake, where("ct.dcm"), window=(-600, 1500))[0]["image"]
    # PS3.3 C.11.2.1.2.1, LINEAR: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
    expected = np.clip((physical.numpy() - (-600 - 0.5)) / (1500 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(lung.numpy(), expected, atol=1e-6)
    assert float(lung.min()) >= 0.0 and float(lung.max()) <= 1.0


def test_monochrome1_is_inverted_by_a_window_never_in_physical_values(lake: str) -> None:
    reference = pydicom.dcmread(sample_file("6154"))
    hu = apply_modality_lut(reference.pixel_array, reference).astype(np.float32)
    physical = FrameDataset(lake, where("cr_mono1.dcm"))[0]["image"][0].numpy()
    np.testing.assert_allclose(physical, hu, rtol=1e-6)
    shown = FrameDataset(lake, where("cr_mono1.dcm"), window="dicom")[0]["image"][0].numpy()
    center, width = float(reference.WindowCenter), float(reference.WindowWidth)
    unit = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(shown, 1.0 - unit, atol=1e-6)
    # the highest value is the darkest on screen
    assert shown.ravel()[np.argmax(hu)] == shown.min()


def test_color_frames_and_channel_matching(lake: str) -> None:
    reference = pydicom.dcmread(sample_file("SC_rgb_rle.dcm")).pixel_array
    item = FrameDataset(lake, where("rgb.dcm"))[0]
    assert tuple(item["image"].shape) == (3, 100, 100)
    np.testing.assert_array_equal(item["image"].numpy(), np.moveaxis(reference, -1, 0))
    gray = FrameDataset(lake, where("rgb.dcm"), channels=1)[0]["image"]
    r, g, b = (float(v) for v in reference[10, 20])
    assert float(gray[0, 10, 20]) == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, rel=1e-5)
    three = FrameDataset(lake, where("ct.dcm"), channels=3)[0]["image"]
    assert tuple(three.shape) == (3, 128, 128)
    assert torch.equal(three[0], three[2])


def test_resize_scales_the_spacing(lake: str) -> None:
    item = FrameDataset(lake, where("ct.dcm"), size=(32, 64))[0]
    assert tuple(item["image"].shape) == (1, 32, 64)
    spacing = pydicom.dcmread(sample_file("CT_small.dcm")).PixelSpacing
    assert item["meta"]["spacing"].tolist() == pytest.approx(
        [float(spacing[0]) * 4, float(spacing[1]) * 2]
    )
    big = FrameDataset(lake, where("ct.dcm"))[0]["image"]
    # antialiased downsampling keeps the mean
    assert float(item["image"].mean()) == pytest.approx(float(big.mean()), rel=0.02)


def test_labels_are_class_indices_for_text_and_numbers_for_numbers(lake: str) -> None:
    sql = (
        "SELECT path, Modality, Rows FROM instances "
        "WHERE Modality IN ('CT', 'MR') AND path NOT LIKE '%truncated%' ORDER BY path"
    )
    ds = FrameDataset(lake, sql, label="Modality", frames="first")
    assert ds.classes == ("CT", "MR")
    items = ds.items.to_pylist()
    for index, row in enumerate(items):
        assert int(ds[index]["label"]) == ds.classes.index(row["Modality"])
        assert ds[index]["label"].dtype == torch.int64
    rows = FrameDataset(lake, sql, label="Rows", frames="first")
    assert rows.classes is None
    assert rows[0]["label"].dtype == torch.int64
    assert int(rows[0]["label"]) == rows.items.column("Rows")[0].as_py() > 0


def test_query_order_is_kept(lake: str) -> None:
    up = FrameDataset(lake, "SELECT path FROM instances ORDER BY path", frames="first")
    down = FrameDataset(lake, "SELECT path FROM instances ORDER BY path DESC", frames="first")
    paths = up.items.column("path").to_pylist()
    assert paths == sorted(paths)
    assert down.items.column("path").to_pylist() == paths[::-1]
    con = dicomlake.connect(lake)
    expected = con.sql("SELECT path FROM instances WHERE status = 'ok' AND has_pixel_data")
    assert set(paths) == {row[0] for row in expected.fetchall()}


def test_zip_members_and_a_lake_object(lake: str) -> None:
    with dicomlake.Lake(lake) as handle:
        ds = FrameDataset(handle, "SELECT path FROM instances WHERE path LIKE 'zip://%'")
    assert len(ds) == 1
    direct = FrameDataset(lake, where("ct.dcm"))[0]["image"]
    assert torch.equal(ds[0]["image"], direct)


def test_bad_queries_and_labels_are_clear_errors(lake: str) -> None:
    with pytest.raises(QueryError, match="path"):
        FrameDataset(lake, "SELECT Modality FROM instances")
    with pytest.raises(QueryError, match="query failed"):
        FrameDataset(lake, "SELECT path FROM no_such_table")
    with pytest.raises(QueryError, match="not a column"):
        FrameDataset(lake, "SELECT path FROM instances", label="Nope")
    with pytest.raises(QueryError, match="null"):
        FrameDataset(lake, "SELECT path, BodyPartExamined FROM instances", label="BodyPartExamined")
    with pytest.raises(ValueError, match="window"):
        FrameDataset(lake, where("ct.dcm"), window=(40, 0))
    with pytest.raises(ValueError, match="size"):
        FrameDataset(lake, where("ct.dcm"), size=(0, 3))
    with pytest.raises(ValueError, match="frames"):
        FrameDataset(lake, where("ct.dcm"), frames="last")  # type: ignore[arg-type]


def test_a_frame_that_cannot_be_decoded_raises_or_is_skipped(lake: str) -> None:
    sql = (
        "SELECT path FROM instances WHERE path LIKE '%/truncated.dcm' "
        "OR path LIKE '%/mr.dcm' ORDER BY path DESC"
    )
    strict = FrameDataset(lake, sql)
    assert strict.items.column("path").to_pylist()[0].endswith("truncated.dcm")
    with pytest.raises(ExtractError, match=r"truncated\.dcm") as info:
        strict[0]
    assert info.value.path.endswith("truncated.dcm")
    lenient = FrameDataset(lake, sql, on_error="skip")
    assert lenient[0]["meta"]["path"].endswith("mr.dcm")


def test_pickles_small_and_loads_the_same_in_worker_processes(lake: str, tmp_path: Path) -> None:
    sql = "SELECT path, Modality FROM instances WHERE Modality IN ('CT', 'MR') ORDER BY path"
    ds = FrameDataset(lake, sql, label="Modality", size=32, on_error="skip")
    ds[0]  # reading must not make the pickle bigger
    blob = pickle.dumps(ds)
    assert len(blob) < 2_000 + 400 * len(ds)
    assert b"duckdb" not in blob.lower() and b"DuckDBPyConnection" not in blob

    def collect(workers: int) -> list[tuple[str, int, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        out = []
        for batch in loader:
            for i, path in enumerate(batch["meta"]["path"]):
                out.append((path, int(batch["meta"]["frame"][i]), batch["image"][i]))
        return out

    serial, parallel = collect(0), collect(2)
    assert [(p, f) for p, f, _ in serial] == [(p, f) for p, f, _ in parallel]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(serial, parallel, strict=True))


def test_the_cache_serves_the_second_epoch_without_the_files(lake: str, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("emri_small.dcm"), folder / "emri.dcm")
    own_lake = str(tmp_path / "lake")
    dicomlake.ingest([str(folder)], own_lake, workers=0)
    cache = tmp_path / "cache"
    ds = FrameDataset(own_lake, "SELECT path FROM instances", cache_dir=cache)
    first = [ds[i]["image"] for i in range(len(ds))]
    assert len(list(cache.rglob("*.npy"))) == 10
    (folder / "emri.dcm").unlink()  # from now on only the cache can answer
    again = FrameDataset(own_lake, "SELECT path FROM instances", cache_dir=cache)
    assert all(torch.equal(a, again[i]["image"]) for i, a in enumerate(first))
    uncached = FrameDataset(own_lake, "SELECT path FROM instances", on_error="raise")
    with pytest.raises(ExtractError, match=r"emri\.dcm"):
        uncached[0]


def test_cache_keys_change_with_the_file(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    base = cache.key("file:///x.dcm", 0, 100, 1.0)
    assert base != cache.key("file:///x.dcm", 1, 100, 1.0)
    assert base != cache.key("file:///x.dcm", 0, 101, 1.0)
    assert base != cache.key("file:///x.dcm", 0, 100, 2.0)
    assert base == cache.key("file:///x.dcm", 0, 100, 1.0)


def test_large_jpeg2000_frames_decode_small_when_the_size_is_small(tmp_path: Path) -> None:
    from pydicom.uid import JPEG2000

    from dicomlake.sample import image_dataset, synthetic_mammogram

    pixels = synthetic_mammogram(12, seed=3, shape=(2048, 1536))
    ds = image_dataset(pixels, 12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.compress(JPEG2000, pixels, j2k_cr=[20])
    folder = tmp_path / "src"
    folder.mkdir()
    ds.save_as(folder / "mg.dcm", enforce_file_format=True)
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(folder)], lake, workers=0)
    sql = "SELECT path FROM instances"
    fast = FrameDataset(lake, sql, size=128)[0]
    full = FrameDataset(lake, sql, size=128, reduced_decode=False)[0]
    # 2048 -> 256 decoded (resolution level 3: twice the size asked), then resized:
    # the same picture, the same HU scale
    a, b = fast["image"].flatten().numpy(), full["image"].flatten().numpy()
    assert np.corrcoef(a, b)[0, 1] > 0.999
    assert abs(float(a.mean()) - float(b.mean())) < 0.01 * float(b.std())
    assert fast["meta"]["spacing"].tolist() == pytest.approx(full["meta"]["spacing"].tolist())
    assert full["meta"]["spacing"].tolist() == pytest.approx([0.07 * 2048 / 128, 0.07 * 1536 / 128])
    # what the dataset decoded before resizing: an eighth of each side, spacing to match
    from dicomlake.ml import load_frame

    decoded = load_frame(fast["meta"]["path"], 0, max_side=128)
    assert decoded.values.shape == (1, 256, 192)
    assert decoded.spacing == pytest.approx((0.56, 0.56))
    assert load_frame(fast["meta"]["path"], 0).values.shape == (1, 2048, 1536)
