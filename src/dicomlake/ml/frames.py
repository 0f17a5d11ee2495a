"""Frames as numbers for training: physical units, optional window, optional disk cache.

Training wants what the scanner measured, not display bytes: a CT frame comes out in
Hounsfield units (the Modality LUT applied: *Rescale Slope*/*Intercept* or the
*Modality LUT Sequence*, per frame for enhanced multi-frame images), an MR frame in
its stored intensities, a color frame as RGB 0..255. A window, when asked for, maps
those values to display brightness in [0, 1] (0 black), so MONOCHROME1 (and a
*Presentation LUT Shape* of INVERSE) is inverted there, never in the physical values.

This module needs no torch: the datasets in :mod:`dicomlake.ml.datasets` turn its
arrays into tensors, and :mod:`dicomlake.ml.patches` tiles them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
from pydicom.pixels import apply_color_lut, apply_modality_lut

from dicomlake.catalog import open_ref
from dicomlake.dicom.pixels import apply_window, frame_view, read_frame, robust_range
from dicomlake.dicom.quiet import quiet
from dicomlake.storage import StorageOptionsLike

Window: TypeAlias = tuple[float, float] | Literal["dicom"] | None
"""``None`` (physical values), ``(center, width)`` (a linear window), or ``'dicom'``
(the file's own first window, else the 0.5/99.5 percentiles of the frame)."""

#: Version of the cache layout; part of every key, so a change never reads old files.
_CACHE_FORMAT = 1


def check_window(window: Any) -> Window:
    """Normalise a window argument once, or say what is accepted.

    Raises:
        ValueError: ``window`` is not None, ``'dicom'`` or a (center, width) pair
            with a positive width.
    """
    if window is None or window == "dicom":
        return window
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
    storage_options: StorageOptionsLike = None,
) -> PhysicalFrame:
    """Decode frame ``frame`` of the file at ``path`` into physical units.

    Args:
        path: A path from the lake (local URI, ``zip://`` member, object-store URL).
        frame: 0-based frame index.
        max_side: The largest side the caller will resize to. A JPEG or JPEG 2000
            frame at least four times larger is then decoded at reduced resolution
            (never below twice ``max_side``), as thumbnails are; the spacing says so.
            None decodes in full.
        storage_options: fsspec options for object storage.

    Raises:
        OSError: The file cannot be read.
        Exception: The pixel data cannot be decoded (what pydicom's decoder raises).
    """
    with open_ref(path, storage_options=storage_options) as fp:
        stored, ds, scale = read_frame(fp, frame, max_side=max_side)
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
        values = apply_modality_lut(stored, view).astype(np.float32, copy=False)[np.newaxis]
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


def _stamp(mtime: datetime | int | float | None) -> str:
    if isinstance(mtime, datetime):
        return mtime.isoformat()
    return "" if mtime is None else repr(mtime)


class FrameCache:
    """Decoded frames kept on disk as ``.npy`` (plus a small ``.json``), by content key.

    The key is the file's path, size and modification time and the frame index, so a
    changed file is decoded again, never served stale. Writes go to a temporary name
    and are renamed into place, so DataLoader workers sharing one folder never read a
    half-written array. The object holds only the folder name: it pickles to workers.

    Args:
        directory: The cache folder (created on first write).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def key(
        self,
        path: str,
        frame: int,
        size: int | None,
        mtime: datetime | int | float | None,
        max_side: int | None = None,
    ) -> str:
        """The file name stem for one frame of one version of a file (and decode size)."""
        text = f"{_CACHE_FORMAT}\0{path}\0{frame}\0{size}\0{_stamp(mtime)}"
        if max_side is not None:
            text += f"\0{max_side}"
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.directory / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def get(self, key: str) -> PhysicalFrame | None:
        """The cached frame, or None when it is not (completely) there."""
        array_path, info_path = self._paths(key)
        try:
            info = json.loads(info_path.read_text())
            values = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return PhysicalFrame(
            values=values,
            spacing=tuple(info["spacing"]) if info["spacing"] else None,
            window=tuple(info["window"]) if info["window"] else None,
            inverted=bool(info["inverted"]),
            photometric=str(info["photometric"]),
        )

    def put(self, key: str, frame: PhysicalFrame) -> None:
        """Store ``frame``; the array is renamed into place last, so it marks completion."""
        array_path, info_path = self._paths(key)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "spacing": frame.spacing,
            "window": frame.window,
            "inverted": frame.inverted,
            "photometric": frame.photometric,
        }
        self._atomic(info_path, lambda f: f.write(json.dumps(info).encode()))
        self._atomic(array_path, lambda f: np.save(f, frame.values, allow_pickle=False))

    def _atomic(self, target: Path, write: Any) -> None:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{uuid.uuid4().hex}")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"FrameCache({str(self.directory)!r})"


@dataclass(frozen=True, slots=True)
class FrameReader:
    """Reads frames for a dataset: from the cache when it has them, else the file.

    Holds only strings and options, so datasets that carry one pickle cheaply.
    """

    storage_options: StorageOptionsLike = None
    cache: FrameCache | None = None

    def read(
        self,
        path: str,
        frame: int,
        *,
        size: int | None = None,
        mtime: datetime | int | float | None = None,
        max_side: int | None = None,
    ) -> PhysicalFrame:
        """Frame ``frame`` of ``path`` in physical units (see :func:`load_frame`).

        Raises:
            OSError: The file cannot be read.
            Exception: The pixel data cannot be decoded.
        """
        options = self.storage_options
        if self.cache is None:
            return load_frame(path, frame, max_side=max_side, storage_options=options)
        key = self.cache.key(path, frame, size, mtime, max_side)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        loaded = load_frame(path, frame, max_side=max_side, storage_options=options)
        self.cache.put(key, loaded)
        return loaded
