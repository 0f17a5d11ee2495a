"""Benchmark: frames/s into a training loop, FrameDataset vs a naive pydicom loop, one run.

Builds a corpus in a temporary folder and ingests it into a fresh lake:

  ct        512 x 512 CT slices (CT_small.dcm's pixels scaled up, native little endian),
            the commonest training input;
  mr-mf     copies of emri_small.dcm, an MR file of 10 frames (64 x 64);
  j2k       copies of pydicom's JPEG 2000 test files (compressed decoding).

Every contender yields the same tensors: frame in physical units (Modality LUT applied),
float32, resized to 128 x 128 (bilinear, antialiased), in batches of 16:

  naive        the loop people write first: for each frame ``pydicom.dcmread(path)``,
               ``.pixel_array`` (every frame of a multi-frame file), the frame,
               ``apply_modality_lut``, ``torch.from_numpy``, resize; one process;
  dataset      ``FrameDataset(lake, sql, size=128)`` through a DataLoader with 0 and 2
               workers, without a cache, and with ``cache_dir`` (first epoch writes
               the ``.npy`` files, the second reads them).

Segmentation items (``--segmentations``): series of 512 x 512 CT slices (40 by default,
positions along z, file names in reverse order), each with a highdicom BINARY SEG of two
segments; one item is the whole volume [1, rows, columns, slices] and its masks
[2, rows, columns, slices]:

  naive        per item: ``pydicom.dcmread`` of every slice, sorted by position along
               the normal, ``apply_modality_lut``, stacked; ``highdicom.seg.segread`` and
               ``get_pixels_by_source_instance`` in that slice order;
  dataset      ``SegmentationDataset(lake, "SELECT * FROM segments")`` (after
               ``build_segments``) through a DataLoader (batch 1), 0 and 2 workers, no
               cache, cache cold, cache warm.

Prints frames/s per contender and the ratio to the naive loop. Items of both are
compared first (with ``reduced_decode=False``), so the ratio is for the same output;
the timed datasets keep the default ``reduced_decode=True``, which decodes JPEG 2000
frames four or more times larger than the output at a reduced resolution.

    python bench/ml.py [--ct 300] [--multiframe 20] [--j2k 60] [--segmentations 6]
                       [--slices 40] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pydicom
import torch
from corpora import write_ct_slices
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

import dicomlake
from dicomlake.ml import FrameDataset
from dicomlake.sample import pydicom_test_files, sample_file
from dicomlake.storage.locations import local_path as _local_path

SIZE = (128, 128)
BATCH = 16


def copy_files(sources: list[Path], folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        source = sources[index % len(sources)]
        shutil.copyfile(source, folder / f"{source.stem}-{index:05d}.dcm")


def j2k_sources() -> list[Path]:
    """pydicom's JPEG 2000 test files that pydicom decodes (skips the broken ones)."""
    out = []
    for path in pydicom_test_files():
        try:
            ds = pydicom.dcmread(path)
            if (
                ds.file_meta.TransferSyntaxUID
                in (
                    "1.2.840.10008.1.2.4.90",
                    "1.2.840.10008.1.2.4.91",
                )
                and ds.get("SamplesPerPixel", 1) == 1
                and int(ds.get("NumberOfFrames", 1) or 1) == 1
            ):
                ds.pixel_array  # noqa: B018 (decodes, or raises)
                out.append(path)
        except Exception:
            continue
    return out


def naive_item(path: str, frame: int) -> torch.Tensor:
    """What a first training loop does for one frame."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[frame]
    values = apply_modality_lut(arr, ds).astype(np.float32)
    image = torch.from_numpy(values)[None, None]
    return torch.nn.functional.interpolate(
        image, size=SIZE, mode="bilinear", antialias=True, align_corners=False
    )[0]


def naive_batches(keys: list[tuple[str, int]]) -> Iterable[torch.Tensor]:
    for start in range(0, len(keys), BATCH):
        yield torch.stack([naive_item(p, f) for p, f in keys[start : start + BATCH]])


def timed(batches: Callable[[], Iterable[object]], frames: int) -> float:
    started = time.perf_counter()
    for _ in batches():
        pass
    return frames / (time.perf_counter() - started)


def write_segmented_series(folder: Path, slices: int) -> None:
    """A 512 x 512 CT series (slices 2.5 mm apart) and a two-segment SEG of it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    folder.mkdir(parents=True)
    template = pydicom.dcmread(sample_file("CT_small.dcm"))
    big = np.kron(template.pixel_array, np.ones((4, 4), dtype=template.pixel_array.dtype))
    series, sources = generate_uid(), []
    for k in range(slices):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.Rows, ds.Columns = big.shape
        ds.PixelSpacing = [float(v) / 4 for v in ds.PixelSpacing]
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = slices - k
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelData = np.roll(big, k, axis=0).tobytes()
        ds.save_as(folder / f"ct{slices - k:04d}.dcm", enforce_file_format=True)
        sources.append(ds)
    masks = np.zeros((slices, *big.shape, 2), np.uint8)
    masks[slices // 4 : slices // 2, 100:300, 150:350, 0] = 1
    masks[slices // 3 : 3 * slices // 4, 250:400, 50:200, 1] = 1
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="MANUAL",
        )
        for n, label in ((1, "one"), (2, "two"))
    ]
    seg = hd.seg.Segmentation(
        sources,
        masks,
        "BINARY",
        descriptions,
        generate_uid(),
        2,
        generate_uid(),
        1,
        "bench",
        "bench",
        "1",
        "1",
    )
    seg.save_as(folder / "seg.dcm")


def naive_segmentation(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What a first loop does for one segmentation: read, sort, stack, highdicom."""
    import highdicom as hd

    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("ct*.dcm"))]
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    image = np.stack(
        [apply_modality_lut(ds.pixel_array, ds).astype(np.float32) for ds in slices], -1
    )
    seg = hd.seg.segread(folder / "seg.dcm")
    label = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in slices], segment_numbers=[1, 2]
    )
    # (slices, rows, columns, segments) -> (segments, rows, columns, slices)
    return torch.from_numpy(image[None]), torch.from_numpy(label.transpose(3, 1, 2, 0).copy())


def segmentation_bench(root: Path, count: int, slices: int) -> None:
    """Items/s of SegmentationDataset against the naive loop (see the module docstring)."""
    from dicomlake.jobs.labels import build_segments
    from dicomlake.ml import SegmentationDataset

    corpus = root / "segmented"
    folders = [corpus / f"case{i:03d}" for i in range(count)]
    for folder in folders:
        write_segmented_series(folder, slices)
    lake = str(root / "seg-lake")
    dicomlake.ingest([str(corpus)], lake)
    started = time.perf_counter()
    summary = build_segments(lake)
    labels_seconds = time.perf_counter() - started
    sql = "SELECT * FROM segments ORDER BY path"
    ds = SegmentationDataset(lake, sql)
    for index in (0, count - 1):  # the same output, or no comparison
        item = ds[index]
        folder = Path(_local_path(ds.segmentations[index].path)).parent
        image, label = naive_segmentation(folder)
        torch.testing.assert_close(item["image"], image)
        assert torch.equal(item["label"], label.to(torch.uint8))
    print(
        f"segmentations: {count} series of {slices} CT slices 512x512, a two-segment SEG "
        f"each; {summary} ({labels_seconds:.1f} s); items of image [1, 512, 512, {slices}] "
        f"and label [2, 512, 512, {slices}]"
    )

    def loader(data: SegmentationDataset, workers: int) -> Callable[[], Iterable[object]]:
        return lambda: torch.utils.data.DataLoader(data, batch_size=1, num_workers=workers)

    results = [
        (
            "naive loop (pydicom + highdicom per item)",
            timed(lambda: (naive_segmentation(f) for f in folders), count),
        )
    ]
    for workers in (0, 2):
        results.append(
            (f"SegmentationDataset, {workers} workers, no cache", timed(loader(ds, workers), count))
        )
    for workers in (0, 2):
        cached = SegmentationDataset(lake, sql, cache_dir=root / f"seg-cache{workers}")
        results.append(
            (
                f"SegmentationDataset, {workers} workers, cache cold",
                timed(loader(cached, workers), count),
            )
        )
        results.append(
            (
                f"SegmentationDataset, {workers} workers, cache warm",
                timed(loader(cached, workers), count),
            )
        )
    naive = results[0][1]
    width = max(len(name) for name, _ in results)
    for name, rate in results:
        print(f"  {name:<{width}}  {rate:8.2f} items/s  {rate / naive:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ct", type=int, default=300, help="512 x 512 CT slices")
    parser.add_argument("--multiframe", type=int, default=20, help="10-frame MR files")
    parser.add_argument("--j2k", type=int, default=60, help="JPEG 2000 files")
    parser.add_argument(
        "--segmentations", type=int, default=6, help="series with a SEG (0: skip that part)"
    )
    parser.add_argument("--slices", type=int, default=40, help="slices of each SEG's series")
    parser.add_argument("--keep", action="store_true", help="keep the corpus folder")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dicomlake-bench-ml-"))
    try:
        corpus = root / "corpus"
        write_ct_slices(corpus / "ct", args.ct)
        copy_files([sample_file("emri_small.dcm")], corpus / "mr-mf", args.multiframe)
        copy_files(j2k_sources(), corpus / "j2k", args.j2k)
        lake = str(root / "lake")
        dicomlake.ingest([str(corpus)], lake)
        sql = "SELECT path FROM instances ORDER BY path"

        def dataset(cache: Path | None = None) -> FrameDataset:
            return FrameDataset(lake, sql, size=SIZE, cache_dir=cache)

        ds = dataset()
        exact = FrameDataset(lake, sql, size=SIZE, reduced_decode=False)
        keys = [
            (_local_path(p), f)
            for p, f in zip(*ds.items.select(["path", "frame"]).to_pydict().values(), strict=True)
        ]
        frames = len(keys)
        for index in (0, frames // 2, frames - 1):  # the same output, or no comparison
            ours = exact[index]["image"]
            theirs = naive_item(*keys[index])
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)

        def loader(data: FrameDataset, workers: int) -> Callable[[], Iterable[object]]:
            return lambda: torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=workers)

        print(
            f"corpus: {frames} frames ({args.ct} CT 512x512, {args.multiframe} x 10-frame MR, "
            f"{args.j2k} JPEG 2000); output {SIZE[0]}x{SIZE[1]} float32, batches of {BATCH}"
        )
        results: list[tuple[str, float]] = []
        results.append(
            ("naive loop (dcmread + pixel_array)", timed(lambda: naive_batches(keys), frames))
        )
        for workers in (0, 2):
            results.append(
                (f"FrameDataset, {workers} workers, no cache", timed(loader(ds, workers), frames))
            )
        for workers in (0, 2):
            cache = root / f"cache{workers}"
            cached = dataset(cache)
            results.append(
                (
                    f"FrameDataset, {workers} workers, cache cold (writes .npy)",
                    timed(loader(cached, workers), frames),
                )
            )
            results.append(
                (
                    f"FrameDataset, {workers} workers, cache warm",
                    timed(loader(cached, workers), frames),
                )
            )
        naive = results[0][1]
        width = max(len(name) for name, _ in results)
        for name, rate in results:
            print(f"  {name:<{width}}  {rate:8.1f} frames/s  {rate / naive:5.2f}x")
        if args.segmentations:
            segmentation_bench(root, args.segmentations, args.slices)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
