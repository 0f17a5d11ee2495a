"""The items a user's function gets from ``dicomlake.apply``: the datasets' dicts, in numpy.

Each item is shaped as :class:`~dicomlake.ml.FrameDataset` and
:class:`~dicomlake.ml.SeriesVolumeDataset` give theirs, with numpy arrays instead of
tensors, so a function written against a dataset runs here unchanged (call
``torch.from_numpy`` inside it when it wants tensors):

- frame: ``{"image": float32 (C, H, W), "meta": {"path", "SOPInstanceUID", "frame",
  "spacing": float64 (2,) (row, column) mm, NaN when unknown, "row_id"}}``;
- instance: ``{"image": float32 (F, C, H, W)`` (every frame, in frame order),
  ``"meta": {"path", "SOPInstanceUID", "frames": F, "spacing", "row_id"}}``;
- series: ``{"image": float32 (C, rows, columns, slices)`` in slice order,
  ``"meta": {"SeriesInstanceUID", "paths", "spacing": (row, column, slice) mm,
  "affine": float64 (4, 4) voxel → patient (LPS) mm, "origin": (3,)}}``.

Values are physical (Modality LUT applied: CT in Hounsfield units; color frames RGB
0..255), unless a ``window`` maps them to display brightness in [0, 1]; ``size``
resizes every frame in plane (bilinear, antialiased) and scales ``spacing`` to match
(frame and instance units only: a series keeps its grid, so its affine stays true).
Decoding is :func:`dicomlake.dicom.frames.load_frame`, the datasets' own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomlake.dicom.frames import PhysicalFrame, Window, load_frame, load_frames
from dicomlake.errors import ExtractError
from dicomlake.rows import error_text

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions
    from dicomlake.dicom.geometry import VolumeGeometry


def resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``values`` (C, H, W) resized to ``size`` (height, width), bilinear, antialiased.

    Pillow's float mode resamples each channel (it widens the filter when shrinking,
    as torch's ``antialias=True`` does); no torch is needed.
    """
    from PIL import Image

    height, width = size
    if values.shape[1:] == (height, width):
        return values
    out = np.empty((values.shape[0], height, width), dtype=np.float32)
    for c, channel in enumerate(values):
        image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
        out[c] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return out


@dataclass(frozen=True, slots=True)
class Decoder:
    """Decodes frames for items: window, size and storage settings (picklable)."""

    window: Window = None
    size: tuple[int, int] | None = None
    storage_options: StorageOptions = None

    def frame(self, path: str, index: int) -> tuple[np.ndarray, tuple[float, float], PhysicalFrame]:
        """One frame as an item's image (C, H, W), its spacing, and the decoded frame.

        Raises:
            OSError: The file cannot be read.
            Exception: The frame cannot be decoded.
        """
        max_side = max(self.size) if self.size is not None else None
        loaded = load_frame(path, index, max_side=max_side, storage_options=self.storage_options)
        return self.shape(loaded)

    def frames(
        self, path: str, indices: Sequence[int]
    ) -> Iterator[tuple[int, tuple[np.ndarray, tuple[float, float]] | Exception]]:
        """Several frames of one file, the file opened and its header parsed once.

        Yields:
            (frame, its image and spacing, or the exception its decoding raised).

        Raises:
            OSError: The file cannot be read.
            Exception: Its header cannot be parsed.
        """
        max_side = max(self.size) if self.size is not None else None
        for index, loaded in load_frames(
            path, indices, max_side=max_side, storage_options=self.storage_options
        ):
            if isinstance(loaded, Exception):
                yield index, loaded
            else:
                image, spacing, _ = self.shape(loaded)
                yield index, (image, spacing)

    def shape(self, loaded: PhysicalFrame) -> tuple[np.ndarray, tuple[float, float], PhysicalFrame]:
        """A decoded frame through the window and size (the spacing scaled with it)."""
        values = loaded.windowed(self.window)
        spacing = loaded.spacing or (np.nan, np.nan)
        if self.size is not None:
            height, width = values.shape[1:]
            values = resize(values, self.size)
            spacing = (spacing[0] * height / self.size[0], spacing[1] * width / self.size[1])
        return values, spacing, loaded


def frame_item(
    image: np.ndarray,
    spacing: tuple[float, float],
    path: str,
    index: int,
    sop: str | None,
    rid: int,
) -> dict[str, Any]:
    """The item of one decoded frame (see the module docstring)."""
    return {
        "image": image,
        "meta": {
            "path": path,
            "SOPInstanceUID": sop or "",
            "frame": index,
            "spacing": np.asarray(spacing, dtype=np.float64),
            "row_id": rid,
        },
    }


def instance_item(
    decoder: Decoder, path: str, frames: int, sop: str | None, rid: int
) -> dict[str, Any]:
    """The item of one instance: its frames stacked (F, C, H, W) in one array.

    Raises:
        OSError: The file cannot be read.
        ExtractError: A frame decodes to another shape than the first.
        Exception: A frame cannot be decoded.
    """
    image: np.ndarray | None = None
    spacing: tuple[float, float] = (np.nan, np.nan)
    for index, decoded in decoder.frames(path, range(frames)):
        if isinstance(decoded, Exception):
            raise decoded
        values, found = decoded
        if image is None:
            image = np.empty((frames, *values.shape), dtype=np.float32)
            spacing = found
        elif values.shape != image.shape[1:]:
            raise ExtractError(
                f"frame {index} of {path} decodes to shape {values.shape}, frame 0 to "
                f"{image.shape[1:]}",
                path=path,
            )
        image[index] = values
    assert image is not None  # frames >= 1
    return {
        "image": image,
        "meta": {
            "path": path,
            "SOPInstanceUID": sop or "",
            "frames": frames,
            "spacing": np.asarray(spacing, dtype=np.float64),
            "row_id": rid,
        },
    }


def series_item(decoder: Decoder, uid: str, geometry: VolumeGeometry) -> dict[str, Any]:
    """The item of one series: its slices streamed into one preallocated array.

    Only the volume and one decoded slice are in memory at a time; the volume is
    allocated when the first slice says how many channels it has.

    Raises:
        ExtractError: A slice cannot be decoded or decodes to another size.
    """
    from dicomlake.ml.volume_dataset import window_volume

    volume: np.ndarray | None = None
    first: PhysicalFrame | None = None
    plain = Decoder(None, None, decoder.storage_options)  # one window for the whole volume
    n = geometry.n_slices
    for k, (path, frame) in enumerate(zip(geometry.paths, geometry.frames, strict=True)):
        try:
            values, _, loaded = plain.frame(path, frame)
        except Exception as exc:
            raise ExtractError(
                f"cannot decode frame {frame} of {path} (slice {k} of a {n}-slice series): "
                f"{error_text(exc)}",
                path=path,
            ) from exc
        if volume is None:
            first = loaded
            shape = (values.shape[0], geometry.rows, geometry.columns, n)
            volume = np.empty(shape, dtype=np.float32)
        if values.shape != volume.shape[:3]:
            raise ExtractError(
                f"frame {frame} of {path} decodes to shape {values.shape}, expected "
                f"{volume.shape[:3]} as the lake's Rows/Columns say",
                path=path,
            )
        volume[..., k] = values
    assert volume is not None and first is not None  # a volume has slices
    return {
        "image": window_volume(volume, first, decoder.window),
        "meta": {
            "SeriesInstanceUID": uid,
            "paths": list(geometry.paths),
            "spacing": np.asarray(geometry.spacing, dtype=np.float64),
            "affine": geometry.affine.copy(),
            "origin": np.asarray(geometry.origin, dtype=np.float64),
        },
    }
