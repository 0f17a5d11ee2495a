"""``FrameDataset``: one item per frame of the instances a SQL query selects."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.dicom.frames import PhysicalFrame, Window
from dicomlake.errors import ExtractError
from dicomlake.lake.selection import PRIVATE, select_pixel_instances
from dicomlake.ml._base import SelectedDataset
from dicomlake.ml._torch import require_torch
from dicomlake.ml.labels import labels_for
from dicomlake.ml.selection import LakeLike
from dicomlake.rows import error_text

log = logging.getLogger(__name__)

Frames = Literal["all", "first", "middle"]
Size = int | tuple[int, int] | None


def check_size(size: Any) -> tuple[int, int] | None:
    """Normalise ``size`` to (height, width), or say what is accepted.

    Raises:
        ValueError: ``size`` is not None, a positive int or a pair of positive ints.
    """
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    try:
        height, width = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"size must be None, an int or (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


#: ITU-R BT.601 luma weights, for ``channels=1`` on color frames.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32).reshape(3, 1, 1)


def match_channels(values: np.ndarray, channels: int | None) -> np.ndarray:
    """``values`` (C, H, W) with ``channels`` channels: luma of RGB, or gray repeated.

    Raises:
        ValueError: ``channels`` is not None, 1 or 3.
    """
    if channels is None or values.shape[0] == channels:
        return values
    if channels == 1:
        luma: np.ndarray = (values * _LUMA).sum(axis=0, keepdims=True, dtype=np.float32)
        return luma
    if channels == 3:
        return np.repeat(values, 3, axis=0)
    raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")


def expand_frames(table: pa.Table, frames: Frames) -> pa.Table:
    """One row per frame to read: ``frames`` of each instance, unless the query chose.

    A query that returns a ``frame`` column (0-based) picks its frames itself; otherwise
    each instance gives all its frames, its first, or its middle one.

    Raises:
        ValueError: ``frames`` is not one of 'all', 'first', 'middle'.
    """
    if frames not in ("all", "first", "middle"):
        raise ValueError(f"frames must be 'all', 'first' or 'middle', got {frames!r}")
    counts = table.column(f"{PRIVATE}frames").to_numpy(zero_copy_only=False)
    counts = np.where(np.isnan(counts.astype(np.float64)), 1, counts).astype(np.int64)
    counts = np.maximum(counts, 1)
    if "frame" in table.column_names:
        chosen = table.column("frame").cast(pa.int32())
        return table.append_column(f"{PRIVATE}frame", chosen)
    if frames == "all":
        take = np.repeat(np.arange(table.num_rows), counts)
        starts = np.cumsum(counts) - counts
        index = np.arange(take.size) - np.repeat(starts, counts)
        table = table.take(pa.array(take))
    else:
        index = np.zeros(table.num_rows, np.int64) if frames == "first" else counts // 2
    return table.append_column(f"{PRIVATE}frame", pa.array(index, pa.int32()))


class FrameDataset(SelectedDataset):
    """One item per frame of the instances ``sql`` selects, as float32 tensors.

    Items are dicts, as MONAI's dictionary transforms expect::

        {"image": tensor[C, H, W],          # C = 1 (grayscale) or 3 (RGB)
         "label": tensor,                   # only when ``label`` is given
         "meta": {"path": str, "SOPInstanceUID": str, "frame": int,
                  "spacing": tensor[2],      # (row, column) mm of the tensor's pixels
                  "row_id": int}}

    Values are physical: the Modality LUT is applied, so CT is in Hounsfield units.
    With a ``window`` they are display brightness in [0, 1] instead (MONOCHROME1
    inverted). Frames of different sizes do not stack into one batch: give ``size``
    or use ``batch_size=1``.

    The query runs once, here; the object keeps only a small Arrow table of keys and
    labels, so it pickles cheaply to DataLoader workers, which decode in
    ``__getitem__`` (through ``cache_dir`` when given: decoded frames are kept there
    as ``.npy``, keyed by path, size, modification time and frame, so the second
    epoch reads them instead of decoding again).

    Args:
        lake: Lake path or :class:`~dicomlake.Lake`.
        sql: A query over the lake's views that returns ``path`` (of instances); a
            ``frame`` column (0-based), when present, picks the frames. Rows whose
            file is not an ``ok`` instance with pixel data are dropped.
        label: A column of the query to return as ``label``: text and booleans become
            class indices (see :attr:`classes`), numbers regression targets.
        window: None (physical values), ``(center, width)`` or ``'dicom'`` (the
            file's own first window, else its 0.5/99.5 percentiles).
        size: Resize every frame to ``size`` x ``size`` or (height, width), bilinear
            with antialiasing; None keeps each frame's size.
        transform: Called with each item dict; returns the item to yield.
        frames: Without a ``frame`` column: 'all' frames of each instance, the
            'first' or the 'middle' one.
        channels: 1 (color frames become their luma) or 3 (grayscale repeated, for
            networks pretrained on RGB); None keeps each frame's own, so grayscale and
            color frames do not stack into one batch.
        on_error: What a frame that cannot be decoded (a corrupt or truncated file)
            does in ``__getitem__``: 'raise' an :class:`~dicomlake.errors.ExtractError`
            naming the file, or 'skip' to the next item that decodes (logged as a
            warning), so one bad file does not end an epoch.
        reduced_decode: With ``size``, decode JPEG and JPEG 2000 frames four or more
            times larger than it at a reduced resolution (at least twice ``size``; the
            codec's own DCT scaling or wavelet levels), then resize: a 4000 x 3000
            mammogram for a 512 x 512 input costs a fraction of a full decode. False
            decodes every frame in full.
        cache_dir: Folder for decoded frames (``.npy``); None decodes every time.
        storage_options: Options for an object-store lake and its files.

    Raises:
        QueryError: The query fails, lacks ``path``, or the label column is unusable.
        TableNotFound: Nothing has been ingested into the lake.
        ValueError: ``window``, ``size``, ``frames``, ``channels`` or ``on_error`` is
            not valid.

    Example:
        >>> ds = FrameDataset("lake", "SELECT path, Modality FROM instances",
        ...                   label="Modality", window="dicom", size=128)  # doctest: +SKIP
        >>> ds[0]["image"].shape, ds.classes  # doctest: +SKIP
        (torch.Size([1, 128, 128]), ('CT', 'MR'))
    """

    _per_process = ("_rows",)

    def __init__(
        self,
        lake: LakeLike,
        sql: str,
        label: str | None = None,
        window: Window = None,
        size: Size = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        frames: Frames = "all",
        channels: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        reduced_decode: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        storage_options: StorageOptions = None,
    ) -> None:
        self.size = check_size(size)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        self.channels = channels
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        path, options = self._setup(
            lake,
            sql,
            label=label,
            window=window,
            transform=transform,
            cache_dir=cache_dir,
            storage_options=storage_options,
        )
        selected = select_pixel_instances(path, sql, storage_options=options)
        self.labels = labels_for(selected, label, sql)
        items = expand_frames(selected, frames)
        keep = [f"{PRIVATE}{c}" for c in ("path", "frame", "size", "mtime", "sop", "row_id")]
        if label is not None:
            keep.append(label)
        items = items.select(keep)
        # a path per frame would dominate the pickle of a multi-frame selection
        paths = items.column(f"{PRIVATE}path").dictionary_encode()
        self._items = items.set_column(0, f"{PRIVATE}path", paths)
        self._rows: list[tuple[Any, ...]] | None = None  # per process, see _row
        #: Decode large JPEG / JPEG 2000 frames at reduced resolution (``size`` given).
        self._max_side = max(self.size) if self.size is not None and reduced_decode else None

    # -- reading

    def _row(self, index: int) -> tuple[Any, ...]:
        if self._rows is None:  # built once per process, never pickled
            columns = [self._items.column(i).to_pylist() for i in range(self._items.num_columns)]
            self._rows = list(zip(*columns, strict=True))
        return self._rows[index]

    def __getitem__(self, index: int) -> Any:
        index = self._check_index(index)
        for attempt in range(len(self)):
            row = self._row((index + attempt) % len(self))
            try:
                loaded = self._reader.read(
                    row[0], row[1], size=row[2], mtime=row[3], max_side=self._max_side
                )
            except Exception as exc:
                message = f"cannot decode frame {row[1]} of {row[0]}: {error_text(exc)}"
                if self.on_error == "raise":
                    raise ExtractError(
                        f"{message} (on_error='skip' goes on with the next item)", path=row[0]
                    ) from exc
                log.warning("skipped: %s", message)
                continue
            return self._item(row, loaded)
        raise ExtractError(f"no frame of the {len(self)} selected decodes", path=self.lake)

    def _item(self, row: tuple[Any, ...], loaded: PhysicalFrame) -> Any:
        torch = require_torch()
        path, frame, _, _, sop, row_id = row[:6]
        values = match_channels(loaded.windowed(self.window), self.channels)
        image = torch.from_numpy(np.ascontiguousarray(values))
        spacing = loaded.spacing or (math.nan, math.nan)
        if self.size is not None and tuple(image.shape[1:]) != self.size:
            height, width = image.shape[1:]
            image = torch.nn.functional.interpolate(
                image[None], size=self.size, mode="bilinear", antialias=True, align_corners=False
            )[0]
            spacing = (spacing[0] * height / self.size[0], spacing[1] * width / self.size[1])
        item: dict[str, Any] = {
            "image": image,
            "meta": {
                "path": path,
                "SOPInstanceUID": sop or "",
                "frame": frame,
                "spacing": torch.tensor(spacing, dtype=torch.float64),
                "row_id": row_id,
            },
        }
        return self._finish(item, row[6] if self.labels is not None else None)

    def __repr__(self) -> str:
        label = f", label={self.labels.column!r}" if self.labels is not None else ""
        return f"FrameDataset({self.lake!r}, {len(self)} frames{label}, window={self.window!r})"
