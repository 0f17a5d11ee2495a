"""The contour rasterizer against an independent one, and RT structure sets as read.

The reference is matplotlib's ``Path.contains_points`` on pixel centres (one contour
at a time, XOR); pixel centres within 1e-6 of an edge are left out of the comparison.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicomlake.dicom.rasterize import fill_polygons
from dicomlake.dicom.rtstruct import read_rtstruct
from dicomlake.sample import sample_file
from helpers.segmentations import near_edges, reference_fill, star

SHAPE = (96, 80)


def compare(polygons: list[np.ndarray], shape: tuple[int, int] = SHAPE) -> None:
    ours = fill_polygons(polygons, shape)
    theirs, name = reference_fill(polygons, shape)
    differ = (ours != theirs) & ~near_edges(polygons, shape, 1e-6)
    assert not differ.any(), f"{int(differ.sum())} pixels differ from {name}"
    assert ours.sum() > 0 or theirs.sum() == 0


@pytest.mark.parametrize("seed", range(12))
def test_random_stars_with_holes_and_islands(seed: int) -> None:
    rng = np.random.default_rng(seed)
    outer = star((48 + rng.uniform(-5, 5), 40), 35, int(rng.integers(5, 30)), seed)
    hole = star((48, 40 + rng.uniform(-3, 3)), 12, int(rng.integers(3, 12)), seed + 100)
    island = star((10, 70), 8, 6, seed + 200) + rng.uniform(0, 1, 2)
    compare([outer + rng.uniform(0, 1, 2), hole + rng.uniform(0, 1, 2), island])


def test_hole_stays_a_hole_and_nested_island_is_filled() -> None:
    square = lambda c, r: np.array([[c - r, c - r], [c - r, c + r], [c + r, c + r], [c + r, c - r]])  # noqa: E731
    rings = [square(40.5, 30), square(40.5, 20), square(40.5, 10)]
    mask = fill_polygons(rings, SHAPE)
    assert mask[40, 12] and not mask[40, 25] and mask[40, 40]
    compare(rings)


def test_shared_edges_fill_each_centre_once() -> None:
    left = np.array([[10.5, 10.5], [10.5, 20.0], [30.5, 20.0], [30.5, 10.5]])
    right = np.array([[10.5, 20.0], [10.5, 30.5], [30.5, 30.5], [30.5, 20.0]])
    both = fill_polygons([left], SHAPE) | fill_polygons([right], SHAPE)
    overlap = fill_polygons([left], SHAPE) & fill_polygons([right], SHAPE)
    assert not overlap.any()
    assert both[11:31, 11:31].all() and both.sum() == 20 * 20


def test_degenerate_and_clipped_polygons() -> None:
    assert not fill_polygons([], SHAPE).any()
    assert not fill_polygons([np.array([[1.0, 1.0], [5.0, 5.0]])], SHAPE).any()
    assert not fill_polygons([np.array([[-50.0, -50], [-50, -10], [-10, -30]])], SHAPE).any()
    beyond = np.array([[-20.3, -20.3], [-20.3, 200.7], [200.7, 200.7], [200.7, -20.3]])
    assert fill_polygons([beyond], SHAPE).all()
    compare([np.array([[-10.2, 40.3], [50.1, 120.6], [110.4, 20.2]])])


def test_pydicom_rtstruct_sample_reads() -> None:
    structure = read_rtstruct(pydicom.dcmread(sample_file("rtstruct.dcm"), force=True))
    assert structure.rois and all(r.info.number > 0 for r in structure.rois)
    for roi in structure.rois:
        for contour in roi.contours:
            assert contour.ndim == 2 and contour.shape[1] == 3
