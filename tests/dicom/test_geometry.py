"""Series geometry without files: slice order, spacing, affine and every rejection."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dicomlake.dicom.geometry import (
    REASONS,
    GeometryTolerance,
    Rejection,
    SliceRecord,
    VolumeGeometry,
    series_geometry,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal = (-1, 0, 0)


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def oblique(degrees_x: float = 30.0, degrees_z: float = 20.0) -> tuple[float, ...]:
    turn = rotation("z", degrees_z) @ rotation("x", degrees_x)
    row, column = turn @ np.array([1.0, 0, 0]), turn @ np.array([0, 1.0, 0])
    return (*row.tolist(), *column.tolist())


def stack(
    n: int = 6,
    *,
    gap: float = 2.5,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-100.0, -120.0, 30.0),
    pixel: tuple[float, float] = (0.5, 0.75),
    size: tuple[int, int] = (4, 5),
    seed: int = 3,
) -> tuple[list[SliceRecord], list[np.ndarray]]:
    """Slices k = 0..n-1 at origin + k*gap*normal, returned shuffled, plus the positions."""
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [np.asarray(origin) + k * gap * normal for k in range(n)]
    records = [
        SliceRecord(f"slice{k}.dcm", 0, tuple(p.tolist()), orientation, pixel, *size)
        for k, p in enumerate(positions)
    ]
    random.Random(seed).shuffle(records)
    return records, positions


def ok(result: VolumeGeometry | Rejection) -> VolumeGeometry:
    assert isinstance(result, VolumeGeometry), result
    return result


def rejected(result: VolumeGeometry | Rejection, reason: str) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.reason in REASONS
    return result


def test_slices_sorted_by_position_along_the_normal() -> None:
    records, positions = stack()
    assert [r.path for r in records] != [f"slice{k}.dcm" for k in range(6)]
    g = ok(series_geometry(records))
    assert g.paths == tuple(f"slice{k}.dcm" for k in range(6))
    assert [records[i].path for i in g.order] == list(g.paths)
    assert g.spacing == pytest.approx((0.5, 0.75, 2.5))
    assert g.shape == (4, 5, 6)
    assert g.origin == pytest.approx(tuple(positions[0]))
    assert g.normal == pytest.approx((0, 0, 1))


@pytest.mark.parametrize(
    "orientation",
    [AXIAL, SAGITTAL, oblique(), oblique(-50, 110), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0)],
    ids=["axial", "sagittal", "oblique", "oblique2", "flipped-normal"],
)
def test_affine_maps_indices_to_patient_coordinates(orientation: tuple[float, ...]) -> None:
    records, positions = stack(7, gap=3.0, orientation=orientation)
    g = ok(series_geometry(records))
    row_dir, column_dir = np.array(orientation[:3]), np.array(orientation[3:])
    for k, position in enumerate(positions):
        assert g.affine @ [0, 0, k, 1] == pytest.approx([*position, 1])
        # pixel (r, c) of slice k: IPP + c * column spacing * row direction + r * ...
        r, c = 3, 2
        expected = position + c * 0.75 * row_dir + r * 0.5 * column_dir
        assert g.affine @ [r, c, k, 1] == pytest.approx([*expected, 1])
    assert g.affine[3].tolist() == [0, 0, 0, 1]
    # (column, row, normal) is left-handed: row x column = normal
    assert np.linalg.det(g.affine[:3, :3]) == pytest.approx(-0.5 * 0.75 * 3.0)
    assert g.orientation == pytest.approx(orientation)


def test_sagittal_slices_go_along_the_normal_not_along_x() -> None:
    records, positions = stack(5, orientation=SAGITTAL, origin=(10.0, 0.0, 0.0))
    g = ok(series_geometry(records))
    xs = [positions[int(p[5:-4])][0] for p in g.paths]
    assert xs == sorted(xs, reverse=True)  # normal (-1, 0, 0): decreasing x
    assert g.affine[:3, 2] == pytest.approx([-2.5, 0, 0])


def test_jitter_within_tolerance_gives_the_mean_spacing() -> None:
    records, _ = stack(4)
    jitter = [0.0, 0.01, -0.01, 0.0]
    moved = [
        SliceRecord(
            r.path,
            0,
            (r.position[0], r.position[1], r.position[2] + jitter[int(r.path[5])]),
            r.orientation,
            r.pixel_spacing,
            r.rows,
            r.columns,
        )
        for r in records
        if r.position is not None
    ]
    g = ok(series_geometry(moved))
    assert g.spacing[2] == pytest.approx(2.5)
    loose = [
        SliceRecord(
            r.path,
            0,
            (*r.position[:2], r.position[2] + 0.1 * (int(r.path[5]) % 2)),
            r.orientation,
            r.pixel_spacing,
            r.rows,
            r.columns,
        )
        for r in records
        if r.position is not None
    ]
    rejected(series_geometry(loose), "nonuniform_spacing")
    assert ok(series_geometry(loose, 0.1)).n_slices == 4
    assert ok(series_geometry(loose, GeometryTolerance(spacing=0.1))).n_slices == 4


def test_equal_projections_keep_a_stable_order_and_are_duplicates() -> None:
    records, _ = stack(4)
    twin = SliceRecord("twin.dcm", 0, records[0].position, AXIAL, (0.5, 0.75), 4, 5)
    result = rejected(series_geometry([*records, twin]), "duplicate_position")
    assert result.message.startswith("1 of 5 slices share a position")
    assert result.n_slices == 5


def _replace(records: list[SliceRecord], path: str, **changes: object) -> list[SliceRecord]:
    out = []
    for r in records:
        if r.path == path:
            fields = {
                "path": r.path,
                "frame": r.frame,
                "position": r.position,
                "orientation": r.orientation,
                "pixel_spacing": r.pixel_spacing,
                "rows": r.rows,
                "columns": r.columns,
            }
            r = SliceRecord(**{**fields, **changes})  # type: ignore[arg-type]
        out.append(r)
    return out


def test_missing_slices_say_how_many() -> None:
    records, _ = stack(10)
    dropped = [r for r in records if r.path not in ("slice4.dcm", "slice5.dcm", "slice7.dcm")]
    result = rejected(series_geometry(dropped), "missing_slices")
    assert result.message.startswith("3 slice(s) missing: 2 gap(s)")
    three = [r for r in stack(4)[0] if r.path != "slice1.dcm"]  # gaps 2g, g
    assert rejected(series_geometry(three), "missing_slices").message.startswith("1 slice(s)")


def test_a_gap_of_one_and_a_half_spacings_is_nonuniform() -> None:
    records, _ = stack(5)
    moved = _replace(records, "slice4.dcm", position=(-100.0, -120.0, 30.0 + 3 * 2.5 + 3.75))
    result = rejected(series_geometry(moved), "nonuniform_spacing")
    assert "1 of 4 gaps" in result.message


def test_orientation_tilted_on_one_slice() -> None:
    records, _ = stack(6)
    tilted = rotation("x", 2.0)
    row, column = tilted @ [1.0, 0, 0], tilted @ [0, 1.0, 0]
    moved = _replace(records, "slice2.dcm", orientation=(*row.tolist(), *column.tolist()))
    result = rejected(series_geometry(moved), "orientation_differs")
    assert result.message.startswith("1 of 6 slices have an orientation")
    tiny = _replace(records, "slice2.dcm", orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 5e-5))
    assert ok(series_geometry(tiny)).n_slices == 6


def test_gantry_tilt_is_sheared() -> None:
    records, _ = stack(6)
    tilt = np.tan(np.radians(15))
    sheared = [
        SliceRecord(
            r.path,
            0,
            (r.position[0], r.position[1] + tilt * 2.5 * int(r.path[5]), r.position[2]),
            AXIAL,
            (0.5, 0.75),
            4,
            5,
        )
        for r in records
        if r.position is not None
    ]
    result = rejected(series_geometry(sheared), "sheared")
    assert "15.00 degrees" in result.message
    assert ok(series_geometry(sheared, GeometryTolerance(shear=100))).n_slices == 6


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"position": None}, "missing_position"),
        ({"position": (1.0, 2.0)}, "missing_position"),
        ({"orientation": None}, "missing_orientation"),
        ({"pixel_spacing": None}, "missing_pixel_spacing"),
        ({"pixel_spacing": (0.0, 0.5)}, "missing_pixel_spacing"),
        ({"orientation": (2.0, 0.0, 0.0, 0.0, 1.0, 0.0)}, "invalid_orientation"),
        ({"orientation": (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)}, "invalid_orientation"),
        ({"rows": 8}, "size_differs"),
        ({"columns": None}, "size_differs"),
        ({"pixel_spacing": (0.5, 0.8)}, "pixel_spacing_differs"),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_one_bad_slice_rejects_the_series(change: dict[str, object], reason: str) -> None:
    records, _ = stack(5)
    result = rejected(series_geometry(_replace(records, "slice3.dcm", **change)), reason)
    assert result.message.startswith("1 of 5 slices")
    assert str(result).startswith(f"{reason}: 1 of 5")


def test_size_differs_names_the_sizes() -> None:
    records, _ = stack(5)
    result = rejected(series_geometry(_replace(records, "slice3.dcm", rows=8)), "size_differs")
    assert "most common 4x5" in result.message and "8x5" in result.message


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_slices(n: int) -> None:
    records, _ = stack(3)
    result = rejected(series_geometry(records[:n]), "too_few_slices")
    assert result.n_slices == n


def test_enhanced_frames_of_one_file_are_slices() -> None:
    records = [
        SliceRecord("one.dcm", frame, (0.0, 0.0, 10.0 - 2.0 * frame), AXIAL, (1.0, 1.0), 2, 2)
        for frame in range(4)
    ]
    g = ok(series_geometry(records))
    assert g.frames == (3, 2, 1, 0)
    assert g.paths == ("one.dcm",) * 4
    assert g.origin == (0.0, 0.0, 4.0)


def test_tolerance_shorthand_and_validation() -> None:
    assert GeometryTolerance.of(None) == GeometryTolerance()
    assert GeometryTolerance.of(0.05).spacing == 0.05
    custom = GeometryTolerance(orientation=1e-3)
    assert GeometryTolerance.of(custom) is custom
    with pytest.raises(TypeError, match="tolerance must be"):
        GeometryTolerance.of("loose")
    with pytest.raises(TypeError):
        GeometryTolerance.of(True)
    with pytest.raises(ValueError, match=r"below 0\.5"):
        GeometryTolerance.of(0.5)
    with pytest.raises(ValueError, match="shear must be a number >= 0"):
        GeometryTolerance(shear=-1)
    with pytest.raises(ValueError, match="orientation"):
        GeometryTolerance(orientation=float("nan"))
