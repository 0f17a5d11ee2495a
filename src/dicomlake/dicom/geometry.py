"""Series geometry: which slices make a regular 3D volume, in which order, where.

Pure numpy, no I/O and no torch: :func:`series_geometry` takes one
:class:`SliceRecord` per 2D slice (a single-frame instance, or one frame of an
enhanced multi-frame instance) and returns a :class:`VolumeGeometry` or a
:class:`Rejection` that says, with a short reason code and a message, why the slices
are not one regular volume.

Slices are sorted by their position along the slice normal: the projection of
(0020,0032) *Image Position (Patient)* on the cross product of the row and column
direction cosines of (0020,0037) *Image Orientation (Patient)*, never by
*Instance Number*, which scanners and anonymisers number in any order.

Checks, in this order (the first that fails is the reason):

=========================  ===============================================================
``too_few_slices``         fewer than 2 slices
``missing_position``       a slice has no *Image Position (Patient)*
``missing_orientation``    a slice has no *Image Orientation (Patient)*
``missing_pixel_spacing``  a slice has no *Pixel Spacing*
``invalid_orientation``    direction cosines that are not two orthogonal unit vectors
``size_differs``           *Rows*/*Columns* differ between slices
``orientation_differs``    a direction cosine differs from the first slice's by more
                           than :attr:`GeometryTolerance.orientation`
``pixel_spacing_differs``  *Pixel Spacing* differs by more than
                           :attr:`GeometryTolerance.pixel_spacing` (relative)
``duplicate_position``     two slices closer than :attr:`GeometryTolerance.duplicate` mm
                           along the normal
``missing_slices``         a gap is k >= 2 times the slice spacing (k - 1 slices missing)
``nonuniform_spacing``     a gap differs from the slice spacing by more than
                           :attr:`GeometryTolerance.spacing` (relative) and is no multiple
``sheared``                a slice lies off the line through the first slice along the
                           normal by more than :attr:`GeometryTolerance.shear` pixels
                           (gantry tilt, or a series that is not stacked straight)
=========================  ===============================================================

The slice spacing is measured, not read from *Slice Thickness* or *Spacing Between
Slices*: a first guess is the median of the gaps within tolerance of the smallest one,
refined to the mean step of the gaps that are a whole number of steps of it; for a
volume, the slice spacing is the distance from the first to the last slice divided by
the number of gaps. Each gap
must be within tolerance of its number of steps times that spacing; a gap of k >= 2
steps means k - 1 missing slices. So small jitter neither accumulates in the affine nor
rejects a series, and a series with a missing slice is found even when it has only
three slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

TOO_FEW_SLICES: Final = "too_few_slices"
MISSING_POSITION: Final = "missing_position"
MISSING_ORIENTATION: Final = "missing_orientation"
MISSING_PIXEL_SPACING: Final = "missing_pixel_spacing"
INVALID_ORIENTATION: Final = "invalid_orientation"
SIZE_DIFFERS: Final = "size_differs"
ORIENTATION_DIFFERS: Final = "orientation_differs"
PIXEL_SPACING_DIFFERS: Final = "pixel_spacing_differs"
DUPLICATE_POSITION: Final = "duplicate_position"
MISSING_SLICES: Final = "missing_slices"
NONUNIFORM_SPACING: Final = "nonuniform_spacing"
SHEARED: Final = "sheared"

#: Every reason code, in the order the checks run.
REASONS: Final = (
    TOO_FEW_SLICES,
    MISSING_POSITION,
    MISSING_ORIENTATION,
    MISSING_PIXEL_SPACING,
    INVALID_ORIENTATION,
    SIZE_DIFFERS,
    ORIENTATION_DIFFERS,
    PIXEL_SPACING_DIFFERS,
    DUPLICATE_POSITION,
    MISSING_SLICES,
    NONUNIFORM_SPACING,
    SHEARED,
)

#: How far direction cosines may be from unit length and orthogonality.
_UNIT_TOLERANCE: Final = 1e-3


@dataclass(frozen=True, slots=True)
class GeometryTolerance:
    """How far real slices may be from a perfect grid and still make a volume.

    Args:
        spacing: Relative tolerance on each gap between consecutive slices, against
            the series' slice spacing (0.01: a 2.5 mm series accepts 2.475..2.525).
        orientation: Absolute tolerance on each direction cosine, against the first
            slice's.
        pixel_spacing: Relative tolerance on *Pixel Spacing*, against the first
            slice's.
        duplicate: Slices closer than this along the normal (mm) are at one position.
        shear: How far (in pixels of the smallest pixel spacing) a slice's position
            may lie off the line from the first slice along the normal.

    Raises:
        ValueError: A tolerance is negative or not a number, or ``spacing`` is 0.5 or
            more (gaps of 1 and 2 spacings would then be indistinguishable).
    """

    spacing: float = 0.01
    orientation: float = 1e-4
    pixel_spacing: float = 1e-3
    duplicate: float = 0.01
    shear: float = 0.5

    def __post_init__(self) -> None:
        for name in ("spacing", "orientation", "pixel_spacing", "duplicate", "shear"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"tolerance {name} must be a number >= 0, got {value!r}")
        if self.spacing >= 0.5:
            raise ValueError(
                f"tolerance spacing is relative and must be below 0.5, got {self.spacing}"
            )

    @classmethod
    def of(cls, value: Any) -> GeometryTolerance:
        """Normalise a ``tolerance`` argument: None, a number (spacing) or an object.

        Raises:
            TypeError: ``value`` is none of these.
            ValueError: The number is not a valid relative spacing tolerance.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(spacing=float(value))
        raise TypeError(
            "tolerance must be None, a relative slice-spacing tolerance (0.01) or a "
            f"GeometryTolerance, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """What geometry needs of one 2D slice; no pixels.

    Attributes:
        path: The file's path in the lake.
        frame: 0-based frame index in the file (0 for single-frame files).
        position: (0020,0032) *Image Position (Patient)*, mm, or None.
        orientation: (0020,0037) *Image Orientation (Patient)* (6 cosines), or None.
        pixel_spacing: (0028,0030) *Pixel Spacing* (row, column) mm, or None.
        rows: (0028,0010) *Rows*.
        columns: (0028,0011) *Columns*.
    """

    path: str
    frame: int = 0
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None


@dataclass(frozen=True, slots=True)
class VolumeGeometry:
    """A series that is one regular volume: slice order and where voxels lie.

    Attributes:
        order: Indices into the records given to :func:`series_geometry`, in slice
            order (increasing position along :attr:`normal`).
        paths: File path of each slice, in slice order.
        frames: Frame index of each slice, in slice order.
        rows: Rows of each slice.
        columns: Columns of each slice.
        spacing: (row, column, slice) spacing in mm, for axes (rows, columns, slices).
        orientation: The six direction cosines (row direction, then column
            direction), unit length.
        normal: Slice normal, cross(row direction, column direction).
        origin: Position of the first slice's first pixel centre (mm, LPS).
        affine: 4x4 float64 mapping (row index, column index, slice index, 1) to
            DICOM patient coordinates (x, y, z, 1) in mm (LPS).
    """

    order: tuple[int, ...]
    paths: tuple[str, ...]
    frames: tuple[int, ...]
    rows: int
    columns: int
    spacing: tuple[float, float, float]
    orientation: tuple[float, ...]
    normal: tuple[float, float, float]
    origin: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return len(self.order)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, columns, slices)."""
        return self.rows, self.columns, len(self.order)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a series is not one regular volume.

    Attributes:
        reason: A code of :data:`REASONS`, for SQL and for counting.
        message: What was found, for a person.
        n_slices: How many slices the series has.
    """

    reason: str
    message: str
    n_slices: int

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _some(count: int, total: int, what: str) -> str:
    return f"{count} of {total} slices {what}"


def _missing(records: Sequence[SliceRecord]) -> Rejection | None:
    n = len(records)
    checks = (
        (MISSING_POSITION, "position", "have no Image Position (Patient)"),
        (MISSING_ORIENTATION, "orientation", "have no Image Orientation (Patient)"),
        (MISSING_PIXEL_SPACING, "pixel_spacing", "have no Pixel Spacing"),
    )
    lengths = {"position": 3, "orientation": 6, "pixel_spacing": 2}
    for reason, name, what in checks:
        bad = 0
        for record in records:
            value = getattr(record, name)
            if value is None or len(value) != lengths[name] or not np.all(np.isfinite(value)):
                bad += 1
        if bad:
            return Rejection(reason, _some(bad, n, what), n)
    spacing = np.array([r.pixel_spacing for r in records], np.float64)
    if np.any(spacing <= 0):
        bad = int(np.any(spacing <= 0, axis=1).sum())
        return Rejection(MISSING_PIXEL_SPACING, _some(bad, n, "have a Pixel Spacing <= 0"), n)
    return None


def _cosines(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit row and column cosines, or None when they are not orthonormal."""
    row, column = orientation[:3], orientation[3:]
    row_norm, column_norm = np.linalg.norm(row), np.linalg.norm(column)
    if abs(row_norm - 1) > _UNIT_TOLERANCE or abs(column_norm - 1) > _UNIT_TOLERANCE:
        return None
    row, column = row / row_norm, column / column_norm
    if abs(float(row @ column)) > _UNIT_TOLERANCE:
        return None
    return row, column


def _size(records: Sequence[SliceRecord]) -> Rejection | None:
    sizes = [(r.rows, r.columns) for r in records]
    n = len(records)
    if any(rows is None or columns is None for rows, columns in sizes):
        bad = sum(rows is None or columns is None for rows, columns in sizes)
        return Rejection(SIZE_DIFFERS, _some(bad, n, "have no Rows/Columns"), n)
    distinct = sorted(set(sizes), key=lambda s: (-sizes.count(s), s))
    if len(distinct) > 1:
        common = distinct[0]
        bad = sum(size != common for size in sizes)
        shown = ", ".join(f"{r}x{c}" for r, c in distinct[:4])
        return Rejection(
            SIZE_DIFFERS,
            _some(
                bad,
                n,
                f"differ in Rows x Columns from the most common {common[0]}x"
                f"{common[1]} (sizes: {shown})",
            ),
            n,
        )
    return None


def _orientation(records: Sequence[SliceRecord], tol: GeometryTolerance) -> Rejection | None:
    n = len(records)
    orientations = np.array([r.orientation for r in records], np.float64)
    invalid = sum(_cosines(o) is None for o in orientations)
    if invalid:
        return Rejection(
            INVALID_ORIENTATION,
            _some(invalid, n, "have direction cosines that are not two orthogonal unit vectors"),
            n,
        )
    deviation = np.abs(orientations - orientations[0]).max(axis=1)
    bad = int((deviation > tol.orientation).sum())
    if bad:
        return Rejection(
            ORIENTATION_DIFFERS,
            _some(
                bad,
                n,
                f"have an orientation that differs from the first slice's by up "
                f"to {deviation.max():.4g} (tolerance {tol.orientation:g}); a localizer "
                "or a multi-planar series",
            ),
            n,
        )
    spacing = np.array([r.pixel_spacing for r in records], np.float64)
    relative = np.abs(spacing / spacing[0] - 1).max(axis=1)
    bad = int((relative > tol.pixel_spacing).sum())
    if bad:
        return Rejection(
            PIXEL_SPACING_DIFFERS,
            _some(
                bad,
                n,
                f"have a Pixel Spacing that differs from the first slice's "
                f"{tuple(float(v) for v in spacing[0])} by up to {relative.max():.2%}",
            ),
            n,
        )
    return None


def _base_gap(gaps: np.ndarray, tol: GeometryTolerance) -> float:
    """A first guess of the regular gap: the median of the gaps near the smallest."""
    smallest = float(gaps.min())
    near = gaps[gaps <= smallest * (1 + 2 * tol.spacing)]
    return float(np.median(near))


def _spacing(projections: np.ndarray, tol: GeometryTolerance, n: int) -> float | Rejection:
    """The slice spacing of sorted projections, or why there is none."""
    gaps = np.diff(projections)
    duplicates = gaps < tol.duplicate
    if duplicates.any():
        at = projections[1:][duplicates]
        return Rejection(
            DUPLICATE_POSITION,
            f"{int(duplicates.sum())} of {n} slices share a position along the normal "
            f"with another slice (first at {at[0]:.3f} mm); two acquisitions, echoes or "
            "phases in one series",
            n,
        )
    rough = _base_gap(gaps, tol)
    multiple = np.maximum(np.rint(gaps / rough), 1)
    fits = np.abs(gaps - multiple * rough) <= 2 * tol.spacing * rough * multiple
    base = float(gaps[fits].sum() / multiple[fits].sum()) if fits.any() else rough
    multiple = np.maximum(np.rint(gaps / base), 1)
    off = np.abs(gaps - multiple * base) > tol.spacing * base * multiple
    if off.any():
        worst = float(gaps[off][np.argmax(np.abs(gaps[off] / base - 1))])
        return Rejection(
            NONUNIFORM_SPACING,
            f"{int(off.sum())} of {len(gaps)} gaps between slices differ from the slice "
            f"spacing {base:.4g} mm by more than {tol.spacing:.1%} (one is {worst:.4g} mm)",
            n,
        )
    if (multiple > 1).any():
        missing = int((multiple[multiple > 1] - 1).sum())
        return Rejection(
            MISSING_SLICES,
            f"{missing} slice(s) missing: {int((multiple > 1).sum())} gap(s) of up to "
            f"{int(multiple.max())} times the slice spacing {base:.4g} mm",
            n,
        )
    return float((projections[-1] - projections[0]) / (n - 1))


def _shear(
    positions: np.ndarray, normal: np.ndarray, pixel: float, tol: GeometryTolerance
) -> Rejection | None:
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    distance = np.linalg.norm(in_plane, axis=1)
    limit = tol.shear * pixel
    bad = int((distance > limit).sum())
    if not bad:
        return None
    n = len(positions)
    along = float(np.abs(offsets @ normal).max())
    angle = float(np.degrees(np.arctan2(distance.max(), along))) if along > 0 else 90.0
    return Rejection(
        SHEARED,
        _some(
            bad,
            n,
            f"lie off the line along the normal by up to {distance.max():.3g} mm "
            f"(more than {tol.shear:g} pixel); a gantry tilt or shear of about "
            f"{angle:.2f} degrees",
        ),
        n,
    )


def series_geometry(
    records: Sequence[SliceRecord], tolerance: GeometryTolerance | float | None = None
) -> VolumeGeometry | Rejection:
    """Check that ``records`` are one regular volume and find its order and affine.

    Args:
        records: One record per slice of the series, in any order.
        tolerance: A :class:`GeometryTolerance`, or a number for its ``spacing``
            (relative slice-gap tolerance); None for the defaults.

    Returns:
        The volume's geometry, or the first check that fails (see the module docs).

    Raises:
        TypeError: ``tolerance`` is not a tolerance.
        ValueError: ``tolerance`` is an invalid number.

    Example:
        >>> axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        >>> slices = [SliceRecord(f"{z}.dcm", 0, (0.0, 0.0, float(z)), axial, (0.5, 0.5),
        ...                       4, 4) for z in (5, 0, 10)]
        >>> g = series_geometry(slices)
        >>> g.paths, g.spacing
        (('0.dcm', '5.dcm', '10.dcm'), (0.5, 0.5, 5.0))
    """
    tol = GeometryTolerance.of(tolerance)
    n = len(records)
    if n < 2:
        return Rejection(TOO_FEW_SLICES, f"{n} slice(s); a volume needs at least 2", n)
    found = _missing(records) or _size(records) or _orientation(records, tol)
    if found is not None:
        return found
    first = records[0]
    row, column = _cosines(np.asarray(first.orientation, np.float64))  # type: ignore[misc]
    normal = np.cross(row, column)
    positions = np.array([r.position for r in records], np.float64)
    projections = positions @ normal
    order = np.lexsort((np.arange(n), projections))
    spacing = _spacing(projections[order], tol, n)
    if isinstance(spacing, Rejection):
        return spacing
    pixel = (float(first.pixel_spacing[0]), float(first.pixel_spacing[1]))  # type: ignore[index]
    sheared = _shear(positions[order], normal, min(pixel), tol)
    if sheared is not None:
        return sheared
    origin = positions[order[0]]
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = column * pixel[0]
    affine[:3, 1] = row * pixel[1]
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = origin
    sorted_records = [records[i] for i in order]
    return VolumeGeometry(
        order=tuple(int(i) for i in order),
        paths=tuple(r.path for r in sorted_records),
        frames=tuple(int(r.frame) for r in sorted_records),
        rows=int(first.rows),  # type: ignore[arg-type]
        columns=int(first.columns),  # type: ignore[arg-type]
        spacing=(pixel[0], pixel[1], spacing),
        orientation=(*(float(v) for v in row), *(float(v) for v in column)),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        affine=affine,
    )
