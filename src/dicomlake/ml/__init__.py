"""Deep learning on the lake: PyTorch datasets of frames, volumes, patches, segmentations.

Pick data with SQL, get tensors::

    from dicomlake.ml import FrameDataset
    ds = FrameDataset("lake", "SELECT path, Modality FROM instances", label="Modality")
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4)

Every dataset runs its query once, keeps only a small Arrow table of keys, and decodes
pixels in ``__getitem__`` (optionally through a ``.npy`` cache), so it pickles cheaply
to DataLoader workers. torch is needed only by the datasets (``pip install
'dicomlake[ml]'``); volumes and patches tables are written without it.

Names load on first use, so ``import dicomlake.ml`` imports neither torch nor pydicom.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomlake.dicom.frames import PhysicalFrame, load_frame
    from dicomlake.jobs.volumes import build_volumes
    from dicomlake.ml.frame_dataset import FrameDataset
    from dicomlake.ml.frames import FrameCache
    from dicomlake.ml.patch_dataset import PatchDataset
    from dicomlake.ml.patches import DicomPatcher
    from dicomlake.ml.segmentation_dataset import SegmentationDataset
    from dicomlake.ml.volume_dataset import SeriesVolumeDataset

_EXPORTS = {
    "DicomPatcher": "dicomlake.ml.patches",
    "FrameCache": "dicomlake.ml.frames",
    "FrameDataset": "dicomlake.ml.frame_dataset",
    "PatchDataset": "dicomlake.ml.patch_dataset",
    "PhysicalFrame": "dicomlake.dicom.frames",
    "SegmentationDataset": "dicomlake.ml.segmentation_dataset",
    "SeriesVolumeDataset": "dicomlake.ml.volume_dataset",
    "build_volumes": "dicomlake.ml.volumes",
    "load_frame": "dicomlake.dicom.frames",
}

__all__ = [
    "DicomPatcher",
    "FrameCache",
    "FrameDataset",
    "PatchDataset",
    "PhysicalFrame",
    "SegmentationDataset",
    "SeriesVolumeDataset",
    "build_volumes",
    "load_frame",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dicomlake.ml' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
