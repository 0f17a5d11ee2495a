"""Display pixels: one frame through the standard's grayscale and color pipelines.

The order is PS3.4's: stored values (masked to *Bits Stored*, sign from *Pixel
Representation* — pydicom's decoders do both), Modality LUT (rescale or *Modality LUT
Sequence*), VOI LUT (the first *Window Center*/*Width* with its *VOI LUT Function*,
else the first *VOI LUT Sequence* item, else a robust window from the image's own
percentiles), then *Presentation LUT Shape* / MONOCHROME1 inversion. Color images
come out as RGB: PALETTE COLOR through its LUTs, YBR_* converted, planar
configuration honoured by pydicom.

Large compressed frames are decoded at reduced resolution where the codec allows it
(JPEG baseline DCT scaling, JPEG 2000 resolution levels), so a small thumbnail of a
4000 x 3000 mammogram does not cost a full decode.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

logger = logging.getLogger(__name__)

FrameChoice = Literal["first", "middle", "all"] | int
_JPEG_BASELINE = {"1.2.840.10008.1.2.4.50"}
_JPEG_2000 = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
#: Percentiles of the robust window used when a grayscale image has no VOI.
ROBUST_PERCENTILES = (0.5, 99.5)


@dataclass(slots=True)
class DisplayFrame:
    """A frame ready to show: uint8 ``L`` (H, W) or ``RGB`` (H, W, 3).

    Attributes:
        pixels: The display values.
        mode: ``'L'`` or ``'RGB'``.
        frame: 0-based index of the frame drawn.
        aspect: Physical height / width of one pixel (1.0 when square or unknown).
        decoded_scale: How much smaller than the stored frame the decode was.
    """

    pixels: np.ndarray
    mode: str
    frame: int
    aspect: float = 1.0
    decoded_scale: int = 1


def number_of_frames(ds: Dataset) -> int:
    """Return (0028,0008) *Number of Frames*, 1 when absent or invalid."""
    try:
        value = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def frame_indices(choice: FrameChoice, count: int) -> list[int]:
    """Return the 0-based frames to draw for ``choice`` out of ``count``.

    Raises:
        ValueError: ``choice`` is not first/middle/all or a valid index.
    """
    if choice == "first":
        return [0]
    if choice == "middle":
        return [count // 2]
    if choice == "all":
        return list(range(count))
    if isinstance(choice, int) and 0 <= choice < count:
        return [choice]
    raise ValueError(f"frame must be 'first', 'middle', 'all' or 0..{count - 1}, got {choice!r}")


def pixel_aspect(ds: Dataset) -> float:
    """Physical height / width of a pixel from *Pixel Spacing* or *Pixel Aspect Ratio*."""
    try:
        spacing = ds.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2 and float(spacing[1]) > 0:
            return float(spacing[0]) / float(spacing[1])
        ratio = ds.get("PixelAspectRatio")
        if ratio is not None and len(ratio) == 2 and float(ratio[1]) > 0:
            return float(ratio[0]) / float(ratio[1])
    except (TypeError, ValueError):
        pass
    return 1.0


def read_frame(
    fp: BinaryIO, frame: int, *, max_side: int | None = None
) -> tuple[np.ndarray, Dataset, int]:
    """Decode one frame of the file open in ``fp``: (stored values, dataset, scale).

    Only that frame's bytes are read; the other frames of a multi-frame file are not.

    Args:
        fp: The DICOM file, seekable, at any position.
        frame: 0-based frame index.
        max_side: The largest side the caller needs; allows reduced-resolution
            decoding when the codec supports it.

    Raises:
        Exception: Whatever the decoder raises for data it cannot decode.
    """
    fp.seek(0)
    ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    pixel_start = fp.tell()
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if max_side and rows and cols and max(rows, cols) >= 4 * max_side:
        reduced = _reduced_decode(fp, pixel_start, ds, tsyntax, frame, max(rows, cols) // max_side)
        if reduced is not None:
            return reduced[0], ds, reduced[1]
    fp.seek(0)
    try:
        arr = pixel_array(fp, index=frame)
    except (AttributeError, ValueError) as exc:
        # no file meta, deflated, or pixel data written with a VR switch: pydicom's
        # full reader copes with those where the frame-by-frame reader does not
        logger.debug("frame reader failed (%s); reading the whole dataset", exc)
        fp.seek(0)
        full = pydicom.dcmread(fp, force=True)
        if "TransferSyntaxUID" not in full.file_meta:
            full.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        arr = pixel_array(full, index=frame) if number_of_frames(full) > 1 else full.pixel_array
        ds = full
    return arr, ds, 1


def _reduced_decode(
    fp: BinaryIO, pixel_start: int, ds: Dataset, tsyntax: str, frame: int, factor: int
) -> tuple[np.ndarray, int] | None:
    """Decode a frame at 1/2**k resolution (k <= log2(factor)), or None if we can't."""
    if tsyntax not in _JPEG_BASELINE | _JPEG_2000:
        return None
    level = min(int(math.log2(factor)), 5)
    if level < 1:
        return None
    try:
        from pydicom.encaps import get_frame

        fp.seek(pixel_start + 12)  # (7FE0,0010) OB 0000 FFFFFFFF, then the items
        data = get_frame(fp, frame, number_of_frames=number_of_frames(ds))
        if tsyntax in _JPEG_BASELINE:
            from PIL import Image

            image = Image.open(io.BytesIO(data))
            full_width = image.size[0]
            image.draft(image.mode, (image.size[0] // 2**level, image.size[1] // 2**level))
            arr = np.asarray(image.convert("L" if image.mode == "L" else "RGB"))
            return arr, max(1, round(full_width / arr.shape[1]))
        from openjpeg import decode  # pylibjpeg-openjpeg

        arr = decode(data, reduce=level)
        return arr, 2**level
    except Exception as exc:  # fall back to a full decode through pydicom
        logger.debug("reduced decode failed (%s); decoding in full", exc)
        return None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: map values to [0, 1] with a window."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # LINEAR
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    """The first number of a possibly multi-valued element value, or None."""
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _voi(values: np.ndarray, ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Apply the VOI stage to modality values; return floats in [0, 1]."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window(values, center, width, function)
    if ds.get("VOILUTSequence"):
        try:
            lut_out = apply_voi(stored if not ds.get("ModalityLUTSequence") else values, ds)
            item = ds.VOILUTSequence[0]
            bits = int(item.LUTDescriptor[2])
            top = float(2**bits - 1)
            if bits not in (8, 16):
                top = float(np.max(lut_out)) or 1.0
            return np.clip(lut_out.astype(np.float64) / top, 0.0, 1.0)
        except Exception as exc:  # a broken LUT: fall back to the image's own range
            logger.debug("VOI LUT not applied: %s", exc)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values, dtype=np.float64)
    low, high = np.percentile(finite, ROBUST_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(unit * 255.0).astype(np.uint8)


def _rgb8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """RGB values of any bit depth to uint8."""
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 16) or 16)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        top = float(np.max(arr)) if arr.size else 1.0
        bits = 16 if top > 255 else 8
    scale = 255.0 / float(2**bits - 1)
    return np.clip(np.round(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def display_frame(stored: np.ndarray, ds: Dataset, frame: int = 0) -> DisplayFrame:
    """Run one decoded frame through the display pipeline.

    Args:
        stored: The frame as pydicom decodes it (stored values; RGB for color).
        ds: The dataset the frame belongs to (for LUTs, windows, photometric).
        frame: Which frame this is, recorded in the result.

    Returns:
        The frame as uint8 L or RGB.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    aspect = pixel_aspect(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        return DisplayFrame(_rgb8(rgb, ds), "RGB", frame, aspect)
    if samples == 3 or (stored.ndim == 3 and stored.shape[-1] == 3):
        return DisplayFrame(_rgb8(stored, ds), "RGB", frame, aspect)
    values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)
    unit = _voi(values, ds, stored)
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        unit = 1.0 - unit
    return DisplayFrame(_to_uint8(unit), "L", frame, aspect)


def render(fp: BinaryIO, *, frame: int = 0, max_side: int | None = None) -> DisplayFrame:
    """Decode frame ``frame`` of the file in ``fp`` and return it ready to display.

    Raises:
        Exception: The pixel data cannot be decoded (no decoder, corrupt data).
    """
    stored, ds, scale = read_frame(fp, frame, max_side=max_side)
    result = display_frame(stored, ds, frame)
    result.decoded_scale = scale
    return result
