"""Benchmark: ``ingest --thumbnails`` vs the pixels accelerator's two passes, in one run.

Builds a corpus in a temporary folder, on the same files for every contender:

  small native      real files from pydicom's test data in native transfer syntaxes
                    (explicit/implicit little endian, big endian), cycled;
  test compressed   pydicom's compressed test files (JPEG, JPEG-LS, J2K, RLE), cycled;
  large compressed  generated mammography-like 4000 x 3000 frames: JPEG baseline 8-bit,
                    JPEG 2000 lossy and lossless 12-bit (pydicom's encoders).

Only files that both contenders draw are used, so the ratio compares like with like.
Then times, in this one process:

  (a) baseline, the pixels accelerator's two passes over every file, one after the
      other: its DicomMetaExtractor (``dcmread(stop_before_pixels=True,
      defer_size=...)``, ``to_json_dict``, ``json.dumps``), then its
      DicomThumbnailExtractor (``dcmread``, ``ds.pixel_array``, matplotlib
      ``imshow(..., cmap='gray')`` of the full image in ``plt.subplots()``, ``savefig``
      to PNG in a BytesIO, figure closed; Agg backend);
  (b) ``dicomlake.ingest(..., thumbnails=True)`` of the whole corpus into a fresh
      lake with 1 worker process (the headline ratio), then in this process and with
      all cores (headers, typed columns, thumbnails, Delta commits included);
  (c) per class: dicomlake's ``render(fp, frame=middle, max_side=256)`` +
      ``encode_png`` against the matplotlib pass alone.

Prints files/s per contender and the ratios.

    python bench/thumbnails.py [--small 200] [--compressed 100] [--large 2] [--no-classes]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

import dicomlake
from dicomlake.dicom.drawing import encode_png
from dicomlake.dicom.pixels import number_of_frames, render
from dicomlake.sample import image_dataset, pydicom_test_files, synthetic_mammogram

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

NATIVE = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
}
MAMMOGRAM = (3000, 4000)  # rows, columns


# --- contenders -------------------------------------------------------------------


def pixels_meta(path: Path) -> str:
    """The pixels accelerator's header JSON of one file (its first pass)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size="1 KB")
    return json.dumps(ds.to_json_dict())


def pixels_style(path: Path) -> bytes:
    """The pixels accelerator's matplotlib thumbnail of one file."""
    with pydicom.dcmread(path) as ds:
        fig, ax = plt.subplots()
        ax.imshow(ds.pixel_array, cmap="gray")
        out = io.BytesIO()
        fig.savefig(out, format="PNG")
        plt.close(fig)
    return out.getvalue()


def dicomlake_style(path: Path, size: int = 256) -> bytes:
    """dicomlake's thumbnail of one file: the middle frame through the display pipeline."""
    with path.open("rb") as fp:
        header = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        display = render(fp, frame=number_of_frames(header) // 2, max_side=size)
    return encode_png(display, size)[0]


def timed(draw: Callable[[Path], bytes | str], files: list[Path]) -> float:
    """Seconds to draw every file in ``files``."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            assert draw(path)
    return time.perf_counter() - start


# --- corpus -----------------------------------------------------------------------


def drawable_by_both(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels_style(path)
            dicomlake_style(path)
    except Exception:
        return False
    return True


def test_files(native: bool) -> list[Path]:
    """pydicom's test files with pixel data that both contenders draw."""
    chosen = []
    for path in pydicom_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds:
            continue
        meta = getattr(ds, "file_meta", None) or {}
        tsyntax = str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        if (tsyntax in NATIVE) == native and drawable_by_both(path):
            chosen.append(path)
    return chosen


def mammogram_like(bits: int, seed: int) -> np.ndarray:
    return synthetic_mammogram(bits, seed, MAMMOGRAM)


def mammogram_dataset(rows: int, cols: int, bits: int) -> Dataset:
    return image_dataset(np.zeros((rows, cols), np.uint8 if bits <= 8 else np.uint16), bits)


def write_mammograms(folder: Path, count: int) -> list[Path]:
    """``count`` each of JPEG baseline, JPEG 2000 lossy and JPEG 2000 lossless."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        pixels = mammogram_like(8, seed=i)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        ds = mammogram_dataset(*pixels.shape, bits=8)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        files.append(folder / f"mg-jpeg-{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
        for syntax, options, name in (
            (JPEG2000, {"j2k_cr": [20]}, "j2k"),
            (JPEG2000Lossless, {}, "j2k-lossless"),
        ):
            pixels = mammogram_like(12, seed=i)
            ds = mammogram_dataset(*pixels.shape, bits=12)
            ds.WindowCenter, ds.WindowWidth = 1400, 2600
            ds.compress(syntax, pixels, **options)
            files.append(folder / f"mg-{name}-{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
    return files


def cycled(sources: list[Path], count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        source = sources[i % len(sources)]
        target = folder / f"{i:05d}_{source.name}"
        shutil.copyfile(source, target)
        files.append(target)
    return files


# --- run --------------------------------------------------------------------------


def ingest_seconds(root: Path, workers: int, size: int) -> tuple[float, int]:
    """Seconds for ``dicomlake.ingest --thumbnails`` of the corpus; thumbnails drawn."""
    lake = root / f"lake-{workers}"
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = dicomlake.ingest(
            [str(root / c) for c in ("small", "compressed", "large")],
            str(lake),
            workers=workers,
            thumbnails=dicomlake.ThumbnailOptions(size=size),
        )
    seconds = time.perf_counter() - start
    shutil.rmtree(lake, ignore_errors=True)
    return seconds, summary.thumbnails


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=200, help="small native thumbnails")
    parser.add_argument("--compressed", type=int, default=100, help="compressed test files")
    parser.add_argument("--large", type=int, default=2, help="mammograms of each codec")
    parser.add_argument("--size", type=int, default=256, help="thumbnail size (ours)")
    parser.add_argument("--no-classes", action="store_true", help="skip the per-class table")
    parser.add_argument("--keep", action="store_true", help="keep the corpus folder")
    args = parser.parse_args()
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # "Clipping input data ..."

    root = Path(tempfile.mkdtemp(prefix="dicomlake-bench-thumbs-"))
    try:
        print(f"building the corpus in {root} ...", file=sys.stderr)
        classes = {
            "small native": cycled(test_files(native=True), args.small, root / "small"),
            "test compressed": cycled(
                test_files(native=False), args.compressed, root / "compressed"
            ),
            "large compressed": write_mammograms(root / "large", args.large),
        }
        files = [path for paths in classes.values() for path in paths]
        for path in files:
            path.read_bytes()  # every contender starts from a warm page cache

        meta = timed(pixels_meta, files)
        draw = timed(pixels_style, files)
        base = meta + draw
        print(
            f"\nbaseline, pixels-style two passes: {len(files)} files, {len(files) / base:.1f}/s "
            f"(JSON {len(files) / meta:.1f}/s, then matplotlib {len(files) / draw:.1f}/s)"
        )
        for workers in (1, 0, os.cpu_count() or 1):
            seconds, drawn = ingest_seconds(root, workers, args.size)
            assert drawn == len(files), f"{drawn} thumbnails of {len(files)} files"
            label = {0: "in this process", 1: "1 worker"}.get(workers, f"{workers} workers")
            print(
                f"ingest --thumbnails ({label}): {len(files) / seconds:.1f} files/s, "
                f"{base / seconds:.1f}x the two passes"
            )

        if not args.no_classes:
            print(f"\n{'class':18} {'files':>6} {'pixels/s':>10} {'ours/s':>10} {'ratio':>8}")
            total_ours = total_base = 0.0
            count = 0
            for name, paths in classes.items():
                base = timed(pixels_style, paths)
                ours = timed(lambda p: dicomlake_style(p, args.size), paths)
                total_base, total_ours = total_base + base, total_ours + ours
                count += len(paths)
                print(
                    f"{name:18} {len(paths):6d} {len(paths) / base:10.1f} "
                    f"{len(paths) / ours:10.1f} {base / ours:7.1f}x"
                )
            print(
                f"{'all':18} {count:6d} {count / total_base:10.1f} "
                f"{count / total_ours:10.1f} {total_base / total_ours:7.1f}x"
            )
    finally:
        if args.keep:
            print(f"corpus kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
