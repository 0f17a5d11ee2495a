"""Built-in sample data: real DICOM files that installed packages ship, plus bad ones.

The demo, the tests and the benchmarks all start from here: pydicom's own test files,
the ``pydicom-data`` package's larger files, a zip archive read in place, and a folder
of files that are not clean DICOM, so a first run already shows error rows.
"""

from __future__ import annotations

import importlib.util
import io
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

#: Files of pydicom's test data used for the zip archive and the bad-file cases.
_ZIPPED = ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm", "JPEG2000.dcm")


def pydicom_test_files() -> list[Path]:
    """Return every file of pydicom's test data and of the pydicom-data package."""
    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package
    if spec is not None and spec.origin is not None:
        roots.append(Path(spec.origin).parent / "data")
    files: list[Path] = []
    for root in roots:
        files.extend(sorted(p for p in root.rglob("*") if p.is_file() and p.name != "__init__.py"))
    return files


def sample_file(name: str) -> Path:
    """Return the path of one of pydicom's test files by name.

    Raises:
        FileNotFoundError: No test file has that name.
    """
    for path in pydicom_test_files():
        if path.name == name:
            return path
    raise FileNotFoundError(f"no pydicom test file named {name!r}")


def private_blob_file(dest: Path, size: int = 6 * 1024 * 1024) -> Path:
    """Write a small CT-like file carrying a ``size``-byte private OB value."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    block = ds.private_block(0x0099, "DICOMLAKE TEST", create=True)
    block.add_new(
        0x01, "OB", bytes(random.Random(7).getrandbits(8) for _ in range(256)) * (size // 256)
    )
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(dest, enforce_file_format=True)
    return dest


def no_preamble_file(dest: Path) -> Path:
    """Write a valid dataset with no 128-byte preamble and no DICM prefix."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)  # dataset only
    dest.write_bytes(buffer.getvalue())
    return dest


def no_pixel_file(dest: Path) -> Path:
    """Write a Basic Text SR-like instance with no pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "SR-0001"
    ds.PatientName = "Report^Only"
    ds.StudyDate = "20240102"
    ds.save_as(dest, enforce_file_format=True)
    return dest


def write_bad_files(dest: Path) -> dict[str, str]:
    """Write files that are not clean DICOM; return {relative name: expected status}."""
    dest.mkdir(parents=True, exist_ok=True)
    ct = sample_file("CT_small.dcm").read_bytes()
    rng = random.Random(42)
    (dest / "empty.dcm").write_bytes(b"")
    (dest / "random-bytes.dcm").write_bytes(bytes(rng.getrandbits(8) for _ in range(4096)))
    (dest / "notes.txt").write_text("This is not a DICOM file.\n" * 20)
    garbage = bytes(rng.getrandbits(8) for _ in range(2048))
    (dest / "dicm-then-garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + garbage)
    (dest / "truncated-header.dcm").write_bytes(ct[:200])
    return {
        "empty.dcm": "not_dicom",
        "random-bytes.dcm": "not_dicom",
        "notes.txt": "not_dicom",
        "dicm-then-garbage.dcm": "error",
        "truncated-header.dcm": "error",
    }


def write_broken_zip(dest: Path) -> Path:
    """Write a zip whose second member's compressed bytes are corrupted (bad CRC)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(sample_file("CT_small.dcm"), "good/CT_small.dcm")
        archive.write(sample_file("MR_small.dcm"), "broken/MR_small.dcm")
    data = bytearray(dest.read_bytes())
    with zipfile.ZipFile(dest) as archive:
        info = archive.getinfo("broken/MR_small.dcm")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 100, start + 160):
        data[i] ^= 0x5A
    dest.write_bytes(bytes(data))
    return dest


def write_sample_corpus(dest: Path | str, *, include_pydicom_data: bool = True) -> Path:
    """Write the demo corpus under ``dest`` and return its folder.

    Layout: ``pydicom/`` (pydicom's test files, DICOM or not, as shipped),
    ``pydicom-data/`` (the larger files of the pydicom-data package), ``archive.zip``
    (members read in place), ``broken-member.zip``, ``bad/`` (files that are not clean
    DICOM), ``special/`` (a 6 MB private tag, no preamble, no pixel data, a file name
    with spaces, unicode and brackets).
    """
    root = Path(dest)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for path in pydicom_test_files():
        is_pydicom = "test_files" in path.parts
        if not is_pydicom and not include_pydicom_data:
            continue
        base = Path(pydicom.__file__).parent / "data" / "test_files"
        target = (
            root / "pydicom" / path.relative_to(base)
            if is_pydicom
            else (root / "pydicom-data" / path.name)
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    with zipfile.ZipFile(root / "archive.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in _ZIPPED:
            archive.write(sample_file(name), f"series/{name}")
    write_broken_zip(root / "broken-member.zip")
    write_bad_files(root / "bad")
    special = root / "special"
    special.mkdir()
    private_blob_file(special / "private-6MB-blob.dcm")
    no_preamble_file(special / "no-preamble.dcm")
    no_pixel_file(special / "report-no-pixels.dcm")
    shutil.copyfile(sample_file("MR_small.dcm"), special / "MR scan ü [1]")
    return root


def sample_lake(lake: Path | str, data: Path | str) -> str | None:
    """Ingest the demo corpus (written to ``data``) into ``lake``, unless it has rows.

    For the examples, which each start from the same lake.

    Returns:
        The ingest's summary line, or None when the lake was there already.
    """
    import dicomlake

    if (Path(lake) / "instances").exists():
        return None
    corpus = write_sample_corpus(data)
    summary = dicomlake.ingest([str(corpus)], str(lake))
    return f"ingested {summary.done} files into {lake} ({summary.ok} ok)"


#: Rows, columns of a mammogram-sized frame.
MAMMOGRAM_SHAPE = (3072, 4096)


def synthetic_mammogram(
    bits: int, seed: int = 0, shape: tuple[int, int] = MAMMOGRAM_SHAPE
) -> np.ndarray:
    """A smooth gradient, a breast-shaped ellipse and noise, in ``bits`` bits.

    Large frames to check reduced-resolution decoding and to benchmark with; no real
    mammogram ships in a package we can install.
    """
    rows, cols = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    top = 2.0**bits - 1
    inside = ((x / (0.8 * cols)) ** 2 + ((y - rows / 2) / (0.45 * rows)) ** 2) < 1
    image = 0.05 * top + 0.5 * top * inside * (1 - x / cols) + 0.1 * top * np.sin(y / 97)
    image += rng.normal(0, 0.01 * top, shape).astype(np.float32)
    pixels: np.ndarray = np.clip(image, 0, top).astype(np.uint16 if bits > 8 else np.uint8)
    return pixels


def image_dataset(pixels: np.ndarray, bits: int, photometric: str = "MONOCHROME2") -> Dataset:
    """A minimal mammography image dataset (explicit VR LE) for ``pixels``' shape."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelSpacing = [0.07, 0.07]
    return ds
