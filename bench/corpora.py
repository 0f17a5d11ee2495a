"""Corpora the benchmarks write: shared, so that two benchmarks time the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dicomlake.sample import sample_file


def write_ct_slices(folder: Path, count: int) -> None:
    """``count`` 512 x 512 CT slices: CT_small's pixels, each one shifted a little."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    big = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))
    ds.Rows, ds.Columns = big.shape
    ds.PixelSpacing = [float(v) / 4 for v in ds.PixelSpacing]
    series = generate_uid()
    for index in range(count):
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.PixelData = np.roll(big, index, axis=1).tobytes()
        ds.save_as(folder / f"ct{index:05d}.dcm", enforce_file_format=True)
