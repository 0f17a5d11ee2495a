"""``SeriesVolumeDataset``: one 3D volume per series a SQL query selects."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from dicomlake.dicom.frames import PhysicalFrame, Window
from dicomlake.dicom.geometry import TOO_FEW_SLICES, GeometryTolerance, Rejection, VolumeGeometry
from dicomlake.dicom.pixels import robust_range
from dicomlake.errors import ExtractError
from dicomlake.jobs.volumes import RejectedSeries, select_series
from dicomlake.ml._base import SelectedDataset
from dicomlake.ml._torch import require_torch
from dicomlake.ml.frames import FrameReader
from dicomlake.ml.labels import labels_for
from dicomlake.ml.selection import LakeLike
from dicomlake.rows import error_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VolumeSource:
    """What one volume item needs: geometry, cache keys of its files, raw label value."""

    series_uid: str
    geometry: VolumeGeometry
    files: tuple[tuple[int | None, datetime | None], ...]
    label: Any = None


def _stack_windowed(slices: list[PhysicalFrame], window: Window) -> np.ndarray:
    """Stack slices along the last axis, through one window for the whole volume.

    ``'dicom'`` takes the first slice's window for every slice (or, when the file has
    none, the 0.5/99.5 percentiles of the whole volume), so one tissue has one
    brightness on every slice.
    """
    return window_volume(np.stack([s.values for s in slices], axis=-1), slices[0], window)


def window_volume(physical: np.ndarray, first: PhysicalFrame, window: Window) -> np.ndarray:
    """A (C, rows, columns, slices) volume through one window (see :func:`_stack_windowed`).

    ``first`` is the first slice as decoded: its window and inversion hold for all.
    """
    if window is None:
        return physical
    if window == "dicom" and first.window is None and physical.shape[0] == 1:
        step = max(1, physical.size // 2_000_000)
        found = robust_range(physical.reshape(1, -1)[:, ::step])
        if found is None:
            return np.zeros_like(physical)
        low, high = found
        unit = np.clip((physical - low) / (high - low), 0.0, 1.0)
        return (1.0 - unit if first.inverted else unit).astype(np.float32)
    return replace(first, values=physical).windowed(window).astype(np.float32, copy=False)


def read_volume(source: VolumeSource, reader: FrameReader, window: Window) -> np.ndarray:
    """Decode a volume's slices in slice order: float32 (C, rows, columns, slices).

    Raises:
        ExtractError: A slice cannot be decoded, or decodes to another size.
    """
    geometry = source.geometry
    slices: list[PhysicalFrame] = []
    for k, (path, frame, (size, mtime)) in enumerate(
        zip(geometry.paths, geometry.frames, source.files, strict=True)
    ):
        try:
            loaded = reader.read(path, frame, size=size, mtime=mtime)
        except Exception as exc:
            raise ExtractError(
                f"cannot decode frame {frame} of {path} (slice {k} of a "
                f"{geometry.n_slices}-slice series): {error_text(exc)}",
                path=path,
            ) from exc
        values = loaded.values
        if values.shape[1:] != (geometry.rows, geometry.columns) or (
            slices and values.shape[0] != slices[0].values.shape[0]
        ):
            raise ExtractError(
                f"frame {frame} of {path} decodes to shape {values.shape}, expected "
                f"({slices[0].values.shape[0] if slices else 'C'}, {geometry.rows}, "
                f"{geometry.columns}) as the lake's Rows/Columns say",
                path=path,
            )
        slices.append(loaded)
    return _stack_windowed(slices, window)


def volume_item(source: VolumeSource, image: np.ndarray) -> dict[str, Any]:
    """The item dict of a decoded volume: ``image`` and ``meta`` (see the dataset)."""
    torch = require_torch()
    geometry = source.geometry
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image)),
        "meta": {
            "SeriesInstanceUID": source.series_uid,
            "paths": list(geometry.paths),
            "spacing": torch.tensor(geometry.spacing, dtype=torch.float64),
            "affine": torch.from_numpy(geometry.affine.copy()),
            "origin": torch.tensor(geometry.origin, dtype=torch.float64),
        },
    }


class SeriesVolumeDataset(SelectedDataset):
    """One item per series that ``sql`` selects, as a float32 volume with its affine.

    Items are dicts, as MONAI's dictionary transforms expect::

        {"image": tensor[C, rows, columns, slices],   # C = 1 grayscale, 3 RGB
         "label": tensor,                            # only when ``label`` is given
         "meta": {"SeriesInstanceUID": str,
                  "paths": list[str],                # one per slice, in slice order
                  "spacing": tensor[3],              # (row, column, slice) mm, float64
                  "affine": tensor[4, 4],            # float64, voxel -> patient (LPS) mm
                  "origin": tensor[3]}}              # first voxel's centre, mm

    Slices are ordered by position along the slice normal (never by *Instance
    Number*), and ``affine @ (row, column, slice, 1)`` is that voxel's centre in DICOM
    patient coordinates. Values are physical (CT in Hounsfield units) unless a
    ``window`` maps them to [0, 1].

    Every series is checked before it becomes an item (one orientation, one size, no
    duplicate or missing positions, uniform spacing: see
    :mod:`dicomlake.dicom.geometry`); a series that fails is left out and listed in
    :attr:`rejected` with its reason. Geometry comes from the lake's columns, so
    making the dataset reads no pixels.

    The query runs once, here; the object keeps only the slice paths and geometry,
    so it pickles cheaply to DataLoader workers, which decode in ``__getitem__``
    (through ``cache_dir`` when given: decoded frames are kept there as ``.npy``).
    Volumes of different shapes do not stack: use ``batch_size=1`` or a transform
    that resizes (``paths`` stack only when every volume has as many slices).

    Args:
        lake: Lake path or :class:`~dicomlake.Lake`.
        sql: A query over the lake's views that returns ``SeriesInstanceUID``. When
            it also returns ``path``, only those instances form each series;
            otherwise every ``ok`` instance with pixel data of the series does, so
            ``SELECT * FROM series WHERE Modality = 'CT'`` works.
        label: A column of the query to return as ``label`` (the same on every row
            of a series): text and booleans become class indices (see
            :attr:`classes`), numbers regression targets.
        window: None (physical values), ``(center, width)`` or ``'dicom'`` (the first
            slice's own first window, else the 0.5/99.5 percentiles of the whole
            volume: one window for every slice).
        transform: Called with each item dict; returns the item to yield.
        cache_dir: Folder for decoded frames (``.npy``); None decodes every time.
        storage_options: Options for an object-store lake and its files.
        tolerance: How far slices may be from a regular grid: a
            :class:`~dicomlake.dicom.geometry.GeometryTolerance`, or a number for the
            relative slice-spacing tolerance (default 1%).

    Raises:
        QueryError: The query fails, lacks ``SeriesInstanceUID``, or the label column
            is unusable.
        TableNotFound: Nothing has been ingested into the lake.
        ValueError: ``window`` or ``tolerance`` is not valid.
        TypeError: ``tolerance`` is not a tolerance.
        ImportError: torch is not installed.

    Example:
        >>> ds = SeriesVolumeDataset("lake", "SELECT * FROM series WHERE Modality = 'CT'",
        ...                          window=(40, 400))  # doctest: +SKIP
        >>> ds[0]["image"].shape, ds.rejected[:1]  # doctest: +SKIP
        (torch.Size([1, 512, 512, 120]), [RejectedSeries(..., 'missing_slices', ...)])
    """

    def __init__(
        self,
        lake: LakeLike,
        sql: str,
        *,
        label: str | None = None,
        window: Window = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        tolerance: GeometryTolerance | float | None = None,
    ) -> None:
        self.tolerance = GeometryTolerance.of(tolerance)
        path, options = self._setup(
            lake,
            sql,
            label=label,
            window=window,
            transform=transform,
            cache_dir=cache_dir,
            storage_options=storage_options,
        )
        selected, slices = select_series(path, sql, label=label, storage_options=options)
        self.labels = labels_for(selected, label, sql)
        uids = selected.column("SeriesInstanceUID").to_pylist()
        values = selected.column(label).to_pylist() if label is not None else [None] * len(uids)
        self._volumes: list[VolumeSource] = []
        #: Selected series that are not one regular volume, with the reason.
        self.rejected: list[RejectedSeries] = []
        for uid, value in zip(uids, values, strict=True):
            series = slices.get(uid)
            if series is None:
                message = "no ok instance with pixel data"
                self.rejected.append(RejectedSeries(uid, TOO_FEW_SLICES, message))
                continue
            result = series.geometry(self.tolerance)
            if isinstance(result, Rejection):
                self.rejected.append(RejectedSeries(uid, result.reason, result.message))
                continue
            files = tuple(series.files[p] for p in result.paths)
            self._volumes.append(VolumeSource(uid, result, files, value))
        if self.rejected:
            log.info("%d of %d series rejected", len(self.rejected), len(uids))
        items = {
            "SeriesInstanceUID": pa.array([v.series_uid for v in self._volumes], pa.string()),
            "n_slices": pa.array([v.geometry.n_slices for v in self._volumes], pa.int32()),
        }
        if label is not None:
            items[label] = pa.array(
                [v.label for v in self._volumes], selected.schema.field(label).type
            )
        self._items = pa.table(items)

    # -- what was selected

    @property
    def series_uids(self) -> list[str]:
        """SeriesInstanceUID of each item, in item order."""
        return [v.series_uid for v in self._volumes]

    @property
    def geometries(self) -> list[VolumeGeometry]:
        """Geometry of each item, in item order: slice order, spacing, affine."""
        return [v.geometry for v in self._volumes]

    # -- reading

    def volume(self, index: int) -> np.ndarray:
        """The volume of item ``index`` as float32 (C, rows, columns, slices), no torch.

        Raises:
            IndexError: ``index`` is out of range.
            ExtractError: A slice cannot be decoded, or decodes to another size.
        """
        return read_volume(self._volumes[self._check_index(index)], self._reader, self.window)

    def __getitem__(self, index: int) -> Any:
        volume = self._volumes[self._check_index(index)]
        return self._finish(volume_item(volume, self.volume(index)), volume.label)

    def __repr__(self) -> str:
        label = f", label={self.labels.column!r}" if self.labels is not None else ""
        return (
            f"SeriesVolumeDataset({self.lake!r}, {len(self)} volumes, "
            f"{len(self.rejected)} rejected{label}, window={self.window!r})"
        )
