"""NIfTI-1 images of series volumes, laid out and scaled as dcm2niix writes them.

Tools that read NIfTI (FSL, ANTs, nnU-Net, MONAI's loaders) are used to dcm2niix's
output, so an exported volume matches it voxel for voxel, not only in world space:

* axes: ``i`` along a row (the DICOM column index), ``j`` up the image (the DICOM row
  index reversed: dcm2niix flips rows so the first stored row is the image's bottom),
  ``k`` the slices in increasing position along the slice normal, whatever their
  *Instance Number*;
* affine: the volume's voxel → LPS affine (:class:`~dicomlake.dicom.geometry.VolumeGeometry`)
  through that axis change, then LPS → RAS (x and y negated), as both the qform and
  the sform with code 1 (scanner anatomical), units mm and seconds;
* values: the stored integers with (0028,1053) *Rescale Slope* and (0028,1052)
  *Rescale Intercept* as ``scl_slope``/``scl_inter`` when every slice has the same
  pair; float32 rescaled values (``scl_slope`` 1, ``scl_inter`` 0) when they vary.

nibabel is imported inside the functions that need it (the ``ml`` extra).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

if TYPE_CHECKING:
    from dicomlake.dicom.geometry import VolumeGeometry

#: NIfTI form code of a scanner-based anatomical affine (qform and sform).
SCANNER_ANAT: Final = 1

#: LPS (DICOM patient coordinates) to RAS (NIfTI world coordinates).
_LPS_TO_RAS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])


def require_nibabel() -> Any:
    """Return the ``nibabel`` module.

    Raises:
        ImportError: nibabel is not installed; the message names the extra to install.
    """
    try:
        import nibabel
    except ImportError as exc:
        raise ImportError(
            "NIfTI export needs nibabel: pip install 'dicomlake[ml]' (nibabel==5.4.2)"
        ) from exc
    return nibabel


def nifti_affine(geometry: VolumeGeometry) -> np.ndarray:
    """The RAS affine of the volume in the NIfTI voxel layout (see the module docs).

    ``affine @ (i, j, k, 1)`` is the centre of voxel ``(i, j, k)`` of
    :func:`nifti_voxels`'s array, in mm, RAS.
    """
    rows = geometry.rows
    # (i, j, k) -> (row = rows - 1 - j, column = i, slice = k)
    layout = np.array(
        [
            [0.0, -1.0, 0.0, rows - 1.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    affine: np.ndarray = _LPS_TO_RAS @ geometry.affine @ layout
    return affine


def nifti_voxels(volume: np.ndarray) -> np.ndarray:
    """A ``(rows, columns, slices, ...)`` array in the NIfTI voxel layout.

    Returns:
        A view shaped ``(columns, rows, slices, ...)``, rows reversed.
    """
    return np.swapaxes(volume, 0, 1)[:, ::-1]


def empty_voxels(geometry: VolumeGeometry, dtype: np.dtype[Any] | type) -> np.ndarray:
    """An uninitialised ``(columns, rows, slices)`` array to fill with :func:`put_slice`.

    It is in Fortran order, as NIfTI stores voxels, so each slice is one contiguous
    block and writing it out needs no reordering copy.
    """
    return np.empty((geometry.columns, geometry.rows, geometry.n_slices), dtype, order="F")


def put_slice(voxels: np.ndarray, k: int, frame: np.ndarray) -> None:
    """Put a ``(rows, columns)`` frame at slice ``k`` of an :func:`empty_voxels` array."""
    voxels[:, :, k] = frame[::-1].T


def nifti_image(
    voxels: np.ndarray,
    geometry: VolumeGeometry,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Any:
    """A ``nibabel.Nifti1Image`` of ``voxels`` placed by ``geometry``.

    Args:
        voxels: Voxels in the NIfTI layout, ``(columns, rows, slices)`` (see
            :func:`empty_voxels`, :func:`nifti_voxels`), or with more trailing axes
            (a 4D image).
        geometry: The series' geometry.
        slope: ``scl_slope``: what the stored values are multiplied by.
        intercept: ``scl_inter``: what is then added.

    Returns:
        The image, not yet written.

    Raises:
        ValueError: ``voxels`` is not shaped like ``geometry``.
        ImportError: nibabel is not installed.
    """
    nibabel = require_nibabel()
    expected = (geometry.columns, geometry.rows, geometry.n_slices)
    if voxels.shape[:3] != expected:
        raise ValueError(
            f"the voxels are shaped {voxels.shape}, the geometry says {expected} "
            "(columns, rows, slices)"
        )
    affine = nifti_affine(geometry)
    image = nibabel.Nifti1Image(voxels, affine)
    header = image.header
    header.set_data_dtype(voxels.dtype)
    header.set_qform(affine, code=SCANNER_ANAT)
    header.set_sform(affine, code=SCANNER_ANAT)
    header.set_xyzt_units("mm", "sec")
    header.set_slope_inter(float(slope), float(intercept))
    return image


def write_nifti(image: Any, path: str | os.PathLike[str]) -> int:
    """Write ``image`` to ``path`` (``.nii.gz`` compresses) all at once or not at all.

    The file is written beside ``path`` under a temporary name and renamed over it,
    so a reader never sees half a file and an interrupted export leaves none. Its
    mode is the process's default (the umask applies).

    Returns:
        The file's size in bytes.

    Raises:
        OSError: The folder cannot be written.
        ImportError: nibabel is not installed.
    """
    nibabel = require_nibabel()
    target = Path(path)
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
    try:
        nibabel.save(image, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target.stat().st_size
