"""``SegmentationDataset``: one series volume and its segmentation masks per item."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from dicomlake.dicom.frames import Window
from dicomlake.dicom.geometry import GeometryTolerance
from dicomlake.dicom.segments import Problem, TargetVolume
from dicomlake.jobs.labels import (
    ReferencedVolume,
    RejectedSegmentation,
    SelectedSegmentation,
    label_array,
    referenced_volumes,
    select_segmentations,
)
from dicomlake.ml._base import SelectedDataset
from dicomlake.ml._torch import require_torch
from dicomlake.ml.selection import LakeLike
from dicomlake.ml.volume_dataset import VolumeSource, read_volume, volume_item

log = logging.getLogger(__name__)

#: Version of the label cache layout; part of every key.
_LABEL_CACHE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class _Item:
    """One item: the segmentation, its volume, and where its frames lie."""

    segmentation: SelectedSegmentation
    volume: VolumeSource
    target: TargetVolume


def _label_key(item: _Item, labelmap: bool) -> str:
    seg = item.segmentation
    stamp = seg.modification_time.isoformat() if seg.modification_time else ""
    text = "\0".join(
        [
            str(_LABEL_CACHE_FORMAT),
            seg.path,
            str(seg.size),
            stamp,
            seg.series_uid,
            ",".join(map(str, seg.numbers)),
            str(labelmap),
            *item.volume.geometry.paths,
            ",".join(map(str, item.volume.geometry.frames)),
        ]
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _save_atomic(target: Path, array: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".label-")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def to_metatensors(item: dict[str, Any], keys: tuple[str, ...] = ("image", "label")) -> None:
    """Make ``item``'s arrays MONAI MetaTensors that carry the volume's affine (LPS).

    MONAI's spatial transforms (``Spacingd``, ``Orientationd``) read the geometry from
    the tensor itself; ``space: LPS`` tells them the affine is DICOM's, not NIfTI's RAS.

    Raises:
        ImportError: MONAI is not installed.
    """
    try:
        from monai.data.meta_tensor import MetaTensor
    except ImportError as exc:
        raise ImportError("metatensor=True needs MONAI: pip install monai") from exc
    meta = item["meta"]
    for key in keys:
        tensor = item[key]
        item[key] = MetaTensor(
            tensor,
            affine=meta["affine"].clone(),
            meta={
                "space": "LPS",
                "original_affine": meta["affine"].clone(),
                "spatial_shape": np.asarray(tensor.shape[1:]),
                "original_channel_dim": 0,
                "filename_or_obj": meta["segmentation_path"]
                if key == "label"
                else meta["paths"][0],
            },
        )


class SegmentationDataset(SelectedDataset):
    """One item per segmentation (SEG or RTSTRUCT) a query selects, with its volume.

    Items are dicts, as MONAI's dictionary transforms expect::

        {"image": tensor[C, rows, columns, slices],   # as SeriesVolumeDataset gives it
         "label": uint8 tensor[K, rows, columns, slices],  # one channel per segment
         "meta": {... SeriesVolumeDataset's meta (affine, spacing, origin, paths) ...,
                  "segments": list[str],           # labels, in channel order
                  "segment_numbers": list[int],
                  "SOPInstanceUID": str,           # of the segmentation
                  "segmentation_path": str}}

    With ``labelmap=True`` the label is one channel of segment numbers (where
    segments overlap, the higher channel wins). With ``metatensor=True`` the image and
    label are MONAI ``MetaTensor`` objects carrying the affine (``space`` LPS), so
    ``Spacingd``, ``Orientationd`` and ``RandCropByPosNegLabeld`` take items as they
    are.

    The segmentations come from the ``segments`` table (``dicomlake labels``), their
    series' geometry from the lake, as :class:`SeriesVolumeDataset` checks it; a
    segmentation whose segments all failed to place, or whose series is not one
    regular volume, is left out and listed in :attr:`rejected`. Masks are read from
    the segmentation file in ``__getitem__`` (and kept in ``cache_dir`` as ``.npy``
    when given, beside the decoded frames).

    Args:
        lake: Lake path or :class:`~dicomlake.Lake`.
        sql: A query that returns ``path`` or ``SOPInstanceUID`` of segmentations:
            ``SELECT * FROM segments WHERE label = 'liver'`` (with ``segment_number``
            only those segments become channels) or a query over ``instances``.
        labelmap: One channel of segment numbers instead of one per segment.
        window: As :class:`SeriesVolumeDataset`'s.
        transform: Called with each item dict; returns the item to yield.
        cache_dir: Folder for decoded frames and masks (``.npy``).
        storage_options: Options for an object-store lake and its files.
        tolerance: How far slices may be from a regular grid.
        metatensor: Give ``image`` and ``label`` as MONAI MetaTensors.

    Raises:
        QueryError: The query fails or returns neither ``path`` nor ``SOPInstanceUID``.
        TableNotFound: The lake has no ``segments`` table or no instances.
        ValueError: ``window`` or ``tolerance`` is not valid.
        ImportError: torch (or, with ``metatensor``, MONAI) is not installed.

    Example:
        >>> ds = SegmentationDataset("lake", "SELECT * FROM segments")  # doctest: +SKIP
        >>> ds[0]["label"].shape, ds[0]["meta"]["segments"]  # doctest: +SKIP
        (torch.Size([2, 512, 512, 120]), ['liver', 'spleen'])
    """

    def __init__(
        self,
        lake: LakeLike,
        sql: str,
        *,
        labelmap: bool = False,
        window: Window = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        tolerance: GeometryTolerance | float | None = None,
        metatensor: bool = False,
    ) -> None:
        self.tolerance = GeometryTolerance.of(tolerance)
        path, options = self._setup(
            lake,
            sql,
            label=None,
            window=window,
            transform=transform,
            cache_dir=cache_dir,
            storage_options=storage_options,
        )
        if metatensor:  # fail here, not in a DataLoader worker
            try:
                import monai  # noqa: F401
            except ImportError as exc:
                raise ImportError("metatensor=True needs MONAI: pip install monai") from exc
        self.labelmap = labelmap
        self.metatensor = metatensor
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._storage = options
        chosen, rejected = select_segmentations(path, sql, storage_options=options)
        #: Selected segmentations that give no item, with the reason.
        self.rejected: list[RejectedSegmentation] = list(rejected)
        volumes = referenced_volumes(
            path,
            {s.series_uid for s in chosen},
            tolerance=self.tolerance,
            storage_options=options,
        )
        self._cases: list[_Item] = []
        for segmentation in chosen:
            found = volumes[segmentation.series_uid]
            if isinstance(found, Problem):
                self.rejected.append(
                    RejectedSegmentation(
                        segmentation.path, segmentation.series_uid, found.reason, found.message
                    )
                )
                continue
            self._cases.append(_Item(segmentation, _source(found), found.target))
        if self.rejected:
            log.info("%d selected segmentations give no item", len(self.rejected))
        self._items = pa.table(
            {
                "path": pa.array([c.segmentation.path for c in self._cases], pa.string()),
                "SeriesInstanceUID": pa.array(
                    [c.segmentation.series_uid for c in self._cases], pa.string()
                ),
                "n_segments": pa.array(
                    [len(c.segmentation.numbers) for c in self._cases], pa.int32()
                ),
            }
        )

    # -- what was selected

    @property
    def segmentations(self) -> list[SelectedSegmentation]:
        """Each item's segmentation: path, series, channels."""
        return [c.segmentation for c in self._cases]

    # -- reading

    def volume(self, index: int) -> np.ndarray:
        """Item ``index``'s image as float32 (C, rows, columns, slices), no torch.

        Raises:
            IndexError: ``index`` is out of range.
            ExtractError: A slice cannot be decoded.
        """
        case = self._cases[self._check_index(index)]
        return read_volume(case.volume, self._reader, self.window)

    def label(self, index: int) -> np.ndarray:
        """Item ``index``'s masks as uint8 (K or 1, rows, columns, slices), no torch.

        Raises:
            IndexError: ``index`` is out of range.
            ExtractError: The segmentation cannot be read or placed.
        """
        case = self._cases[self._check_index(index)]
        cached = None
        if self.cache_dir is not None:
            key = _label_key(case, self.labelmap)
            cached = self.cache_dir / "labels" / key[:2] / f"{key}.npy"
            try:
                array: np.ndarray = np.load(cached, allow_pickle=False)
                return array
            except (OSError, ValueError):
                pass
        seg = case.segmentation
        array, _ = label_array(
            seg.path,
            seg.sop_class,
            seg.modality,
            seg.series_uid,
            case.target,
            seg.numbers,
            labelmap=self.labelmap,
            storage_options=self._storage,
        )
        if cached is not None:
            _save_atomic(cached, array)
        return array

    def __getitem__(self, index: int) -> Any:
        torch = require_torch()
        case = self._cases[self._check_index(index)]
        seg = case.segmentation
        item = volume_item(case.volume, self.volume(index))
        item["label"] = torch.from_numpy(np.ascontiguousarray(self.label(index)))
        item["meta"].update(
            segments=list(seg.labels),
            segment_numbers=list(seg.numbers),
            SOPInstanceUID=seg.sop_instance_uid,
            segmentation_path=seg.path,
        )
        if self.metatensor:
            to_metatensors(item)
        return self._finish(item, None)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.lake!r}, {len(self)} segmentations, "
            f"{len(self.rejected)} rejected, labelmap={self.labelmap})"
        )


def _source(found: ReferencedVolume) -> VolumeSource:
    geometry = found.geometry
    files = tuple(found.series.files[p] for p in geometry.paths)
    return VolumeSource(found.series.SeriesInstanceUID, geometry, files)
