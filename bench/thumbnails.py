"""Benchmark: thumbnails, dicomlake vs the pixels accelerator's way, in one run.

Builds a corpus in a temporary folder, on the same files for every contender:

  small native      real files from pydicom's test data in native transfer syntaxes
                    (explicit/implicit little endian, big endian), cycled;
  test compressed   pydicom's compressed test files (JPEG, JPEG-LS, J2K, RLE), cycled;
  large compressed  generated mammography-like 4000 x 3000 frames: JPEG baseline 8-bit,
                    JPEG 2000 lossy and lossless 12-bit (pydicom's encoders).

Only files that both contenders draw are used, so the ratio compares like with like.
Then times, in this one process:

  (a) baseline, as the pixels accelerator's DicomThumbnailExtractor does it:
      ``dcmread``, ``ds.pixel_array``, matplotlib ``imshow(..., cmap='gray')`` of the
      full image in ``plt.subplots()``, ``savefig`` to PNG in a BytesIO, figure closed
      (Agg backend);
  (b) dicomlake: ``render(fp, frame=middle, max_side=256)`` + ``encode_png`` (window,
      LUTs, reduced-resolution decoding, aspect ratio), one process;
  (c) optionally ``dicomlake.ingest(..., thumbnails=True)`` of the whole corpus into a
      fresh lake, one worker and all cores (headers, Delta commits included).

Prints thumbnails/s per contender and class, and the ratios.

    python bench/thumbnails.py [--small 200] [--compressed 100] [--large 2] [--no-ingest]
"""

from __future__ import annotations

import argparse
import io
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


def timed(draw: Callable[[Path], bytes], files: list[Path]) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=200, help="small native thumbnails")
    parser.add_argument("--compressed", type=int, default=100, help="compressed test files")
    parser.add_argument("--large", type=int, default=2, help="mammograms of each codec")
    parser.add_argument("--size", type=int, default=256, help="thumbnail size (ours)")
    parser.add_argument("--no-ingest", action="store_true", help="skip dicomlake.ingest")
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
        for files in classes.values():
            for path in files:
                path.read_bytes()  # both contenders start from a warm page cache

        print(f"\n{'class':18} {'files':>6} {'pixels/s':>10} {'ours/s':>10} {'ratio':>8}")
        total_ours = total_base = 0.0
        count = 0
        for name, files in classes.items():
            base = timed(pixels_style, files)
            ours = timed(lambda p: dicomlake_style(p, args.size), files)
            total_base, total_ours, count = total_base + base, total_ours + ours, count + len(files)
            print(
                f"{name:18} {len(files):6d} {len(files) / base:10.1f} "
                f"{len(files) / ours:10.1f} {base / ours:7.1f}x"
            )
        print(
            f"{'all':18} {count:6d} {count / total_base:10.1f} "
            f"{count / total_ours:10.1f} {total_base / total_ours:7.1f}x"
        )

        if not args.no_ingest:
            print()
            for workers in (0, os.cpu_count() or 1):
                lake = root / f"lake-{workers}"
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    summary = dicomlake.ingest(
                        [str(root / c) for c in ("small", "compressed", "large")],
                        str(lake),
                        workers=workers,
                        thumbnails=dicomlake.ThumbnailOptions(size=args.size),
                    )
                seconds = time.perf_counter() - start
                label = "in process" if workers == 0 else f"{workers} workers"
                rate = summary.thumbnails / seconds
                print(
                    f"ingest with thumbnails ({label}): {summary.thumbnails} thumbnails, "
                    f"{rate:.1f}/s, {rate / (count / total_base):.1f}x the baseline "
                    "(headers, JSON and Delta commits included)"
                )
    finally:
        if args.keep:
            print(f"corpus kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
