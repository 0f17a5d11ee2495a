"""Frames as numbers for training: physical units, optional window, optional disk cache.

Training wants what the scanner measured, not display bytes: a CT frame comes out in
Hounsfield units (the Modality LUT applied: *Rescale Slope*/*Intercept* or the
*Modality LUT Sequence*, per frame for enhanced multi-frame images), an MR frame in
its stored intensities, a color frame as RGB 0..255. A window, when asked for, maps
those values to display brightness in [0, 1] (0 black), so MONOCHROME1 (and a
*Presentation LUT Shape* of INVERSE) is inverted there, never in the physical values.

This module needs no torch: the datasets in :mod:`dicomlake.ml` turn its arrays into
tensors, and :mod:`dicomlake.kernels.patches` tiles them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

from dicomlake._types import StorageOptions
from dicomlake.catalog import open_ref
from dicomlake.dicom.pixels import (
    PixelSource,
    apply_window,
    frame_independent,
    frame_view,
    pixel_source,
    read_frame,
    robust_range,
)
from dicomlake.dicom.quiet import quiet
from dicomlake.errors import DicomLakeError

Window: TypeAlias = tuple[float, float] | Literal["dicom"] | None
"""``None`` (physical values), ``(center, width)`` (a linear window), or ``'dicom'``
(the file's own first window, else the 0.5/99.5 percentiles of the frame)."""


def check_window(window: Any) -> Window:
    """Normalise a window argument once, or say what is accepted.

    Raises:
        ValueError: ``window`` is not None, ``'dicom'`` or a (center, width) pair
            with a positive width.
    """
    if window is None:
        return None
    if window == "dicom":
        return "dicom"
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(
            f"window must be None, 'dicom' or (center, width), got {window!r}"
        ) from None
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    return center, width


@dataclass(frozen=True, slots=True)
class PhysicalFrame:
    """One decoded frame in physical units, with what windowing and geometry need.

    Attributes:
        values: float32, channels first: (1, H, W) grayscale (Modality LUT applied),
            or (3, H, W) RGB 0..255.
        spacing: (row, column) pixel spacing in mm from *Pixel Spacing* (per frame for
            enhanced images), else *Imager Pixel Spacing*; None when the file has none.
        window: The file's first (center, width, VOI LUT function), or None.
        inverted: MONOCHROME1 or an INVERSE *Presentation LUT Shape*: brighter
            display for lower values.
        photometric: (0028,0004) *Photometric Interpretation*.
    """

    values: np.ndarray
    spacing: tuple[float, float] | None
    window: tuple[float, float, str] | None
    inverted: bool
    photometric: str

    def windowed(self, window: Window) -> np.ndarray:
        """The values through ``window``: the physical values when it is None.

        Grayscale values are mapped to display brightness in [0, 1] (LINEAR for an
        explicit window, the file's VOI LUT function for ``'dicom'``), inverted for
        MONOCHROME1. RGB values are divided by 255 for ``'dicom'``.

        Returns:
            float32 array shaped like :attr:`values`.
        """
        if window is None:
            return self.values
        values = self.values
        if values.shape[0] == 3:
            if window == "dicom":
                return values / np.float32(255.0)
            center, width = window
            return apply_window(values, center, width, "LINEAR").astype(np.float32)
        if window == "dicom":
            if self.window is not None:
                unit = apply_window(values, *self.window)
            else:
                found = robust_range(values[0])
                if found is None:
                    unit = np.zeros_like(values)
                else:
                    low, high = found
                    unit = np.clip((values - low) / (high - low), 0.0, 1.0)
        else:
            unit = apply_window(values, window[0], window[1], "LINEAR")
        if self.inverted:
            unit = 1.0 - unit
        return unit.astype(np.float32, copy=False)


def _pair(value: Any) -> tuple[float, float] | None:
    try:
        if value is not None and len(value) == 2:
            pair = (float(value[0]), float(value[1]))
            if pair[0] > 0 and pair[1] > 0:
                return pair
    except (TypeError, ValueError):
        pass
    return None


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | bytes | int | float):
        try:
            value = value[0] if len(value) else None
        except TypeError:
            return None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@quiet
def load_frame(
    path: str,
    frame: int = 0,
    *,
    max_side: int | None = None,
    storage_options: StorageOptions = None,
) -> PhysicalFrame:
    """Decode frame ``frame`` of the file at ``path`` into physical units.

    Args:
        path: A path from the lake (local URI, ``zip://`` member, object-store URL).
        frame: 0-based frame index.
        max_side: The largest side the caller will resize to. A JPEG or JPEG 2000
            frame at least four times larger is then decoded at reduced resolution
            (never below twice ``max_side``), as thumbnails are; the spacing says so.
            None decodes in full.
        storage_options: Settings for object storage.

    Raises:
        OSError: The file cannot be read.
        Exception: The pixel data cannot be decoded (what pydicom's decoder raises).
    """
    with open_ref(path, storage_options=storage_options) as fp:
        stored, ds, scale = read_frame(fp, frame, max_side=max_side)
    return physical_frame(stored, ds, frame, scale)


def load_frames(
    path: str,
    frames: Sequence[int],
    *,
    max_side: int | None = None,
    storage_options: StorageOptions = None,
) -> Iterator[tuple[int, PhysicalFrame | Exception]]:
    """Decode several frames of one file, opening it and parsing its header once.

    For a multi-frame file, :func:`load_frame` per frame would parse the whole header
    (per-frame functional groups included) again for every frame; here the header's
    DICOM JSON is read once and each frame's decode starts from it (as thumbnails do).
    (A generator, so not under :func:`quiet` itself: each step it calls is.)

    Yields:
        (frame, its :class:`PhysicalFrame` or the exception its decoding raised), in
        the order of ``frames``.

    Raises:
        OSError: The file cannot be opened or its header read.
        Exception: The header cannot be parsed.
    """
    with open_ref(path, storage_options=storage_options) as fp:
        header = _header_json(fp, path, several=len(frames) > 1)
        # without per-frame functional groups every frame decodes from one small
        # dataset: built once (about 0.2 ms), not per frame
        reuse = header is not None and frame_independent(header)
        source: PixelSource | None = None
        for frame in frames:
            try:
                if reuse and source is None and header is not None:
                    source = pixel_source(header, fp, frame)
                    reuse = source is not None
                stored, ds, scale = read_frame(
                    fp, frame, max_side=max_side, header=header, source=source
                )
                loaded = physical_frame(stored, ds, frame, scale)
            except Exception as exc:  # one frame's failure is the caller's to report
                yield frame, exc
                continue
            yield frame, loaded


def _header_json(fp: Any, path: str, *, several: bool) -> dict[str, Any] | None:
    """The file's header as DICOM JSON, for decoding its frames without pydicom's parse.

    A local file goes through the native parser (about a tenth of pydicom's time);
    where that declines, pydicom's header is worth it only for several frames (one
    frame is decoded from pydicom's own parse at no extra cost). None: decode as
    :func:`load_frame` does.

    Raises:
        OSError: The file cannot be read.
        Exception: pydicom cannot parse the header.
    """
    from dicomlake.dicom import native
    from dicomlake.storage.locations import local_path

    local = local_path(path)
    if local is not None and native.available():
        try:
            parsed = native.parse_file(local, uri=path)
        except (OSError, ValueError, DicomLakeError):
            parsed = "declined"
        if not isinstance(parsed, str):
            return parsed.meta
    if not several:
        return None
    from dicomlake.dicom.header import read_header

    return read_header(fp, uri=path).meta


#: Elements a float64 rescale works through at a time: its scratch stays in cache.
_RESCALE_BLOCK = 16384


def modality_float32(stored: np.ndarray, ds: Any) -> np.ndarray:
    """``apply_modality_lut(stored, ds)`` as float32, the same values to the bit, faster.

    pydicom rescales in float64 over the whole frame (two full-size float64 arrays)
    and the caller then converts to float32: at 512 x 512 that memory costs more than
    the arithmetic (a CT frame's physical_frame took 0.37 ms that way, 0.12 ms now). A
    rescale of integers by an integer slope and intercept whose results stay below
    2**24 is exact in float32 too (every CT in Hounsfield units), so it is done there;
    any other rescale is done in float64 a block at a time, with pydicom's operations
    in pydicom's order, and rounded to float32 once, as before. A Modality LUT
    Sequence (or a value that is not one number) is pydicom's.
    """
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if (
        ds.get("ModalityLUTSequence")
        or not isinstance(slope, int | float)
        or not isinstance(intercept, int | float)
        or stored.dtype.kind not in "iuf"
    ):
        return apply_modality_lut(stored, ds).astype(np.float32, copy=False)
    slope, intercept = float(slope), float(intercept)
    if (
        stored.dtype.kind in "iu"
        and stored.dtype.itemsize <= 2
        and slope.is_integer()
        and intercept.is_integer()
        and 65536 * abs(slope) + abs(intercept) < 2**24
    ):
        out = stored.astype(np.float32)
        if slope != 1.0:
            out *= np.float32(slope)
        out += np.float32(intercept)  # also when 0: -0.0 + 0.0 is +0.0, as in float64
        return out
    out = np.empty(stored.shape, dtype=np.float32)
    source, target = stored.reshape(-1), out.reshape(-1)
    scratch = np.empty(min(_RESCALE_BLOCK, source.size), dtype=np.float64)
    for start in range(0, source.size, _RESCALE_BLOCK):
        part = source[start : start + _RESCALE_BLOCK]
        block = scratch[: part.size]
        np.multiply(part, slope, out=block, dtype=np.float64)
        block += intercept
        target[start : start + part.size] = block
    return out


@quiet
def physical_frame(stored: np.ndarray, ds: Any, frame: int, scale: int) -> PhysicalFrame:
    """A decoded frame's stored values in physical units, with its window and spacing.

    Args:
        stored: The frame as :func:`~dicomlake.dicom.pixels.read_frame` decoded it.
        ds: The dataset it came with.
        frame: Its 0-based index (for per-frame functional groups).
        scale: How much smaller than the full frame it was decoded.
    """
    view = frame_view(ds, frame)
    photometric = str(view.get("PhotometricInterpretation", "MONOCHROME2") or "").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, view).astype(np.float32)
        if float(rgb.max(initial=0)) > 255:  # 16-bit palette entries
            rgb *= np.float32(255.0 / 65535.0)
        values = np.moveaxis(rgb, -1, 0)
    elif stored.ndim == 3 and stored.shape[-1] == 3:
        values = np.moveaxis(stored.astype(np.float32), -1, 0)
    else:
        values = modality_float32(stored, view)[np.newaxis]
    center = _first_number(view.get("WindowCenter"))
    width = _first_number(view.get("WindowWidth"))
    window = None
    if center is not None and width is not None and width > 0:
        function = str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        window = (center, width, function)
    shape = str(view.get("PresentationLUTShape", "") or "").upper()
    spacing = _pair(view.get("PixelSpacing")) or _pair(view.get("ImagerPixelSpacing"))
    if spacing is not None and scale > 1:
        spacing = (spacing[0] * scale, spacing[1] * scale)
    return PhysicalFrame(
        values=np.ascontiguousarray(values),
        spacing=spacing,
        window=window,
        inverted=photometric == "MONOCHROME1" or shape == "INVERSE",
        photometric=photometric,
    )
