"""Closed polygons to pixel masks: scanline even-odd fill, sampled at pixel centres.

RT structure sets draw a hole as a second contour inside the first, on the same
slice, so the fill rule must be even-odd over every contour of a slice together: a
pixel is inside when a ray from its centre crosses the contours' edges an odd number
of times. Pixel ``(row, column)`` is sampled at its centre, the point ``(row,
column)`` in index units, as DICOM places pixel centres.

An edge counts on a row when the row lies in its half-open span ``[low, high)`` of row
coordinates, and a centre counts as inside when it lies at or right of an odd
crossing and left of the next; so two polygons that share an edge never both take
the pixels on it, and a horizontal edge crosses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The even-odd fill of ``polygons`` on a ``shape`` grid of pixel centres.

    Args:
        polygons: Closed polygons, each an ``(n, 2)`` array of ``(row, column)``
            vertices in pixel-index units (float); the last vertex joins the first.
            Polygons with fewer than 3 vertices fill nothing.
        shape: ``(rows, columns)`` of the mask.

    Returns:
        A bool array of ``shape``: True where the pixel centre is inside.

    Example:
        >>> square = np.array([[0.5, 0.5], [0.5, 3.5], [3.5, 3.5], [3.5, 0.5]])
        >>> fill_polygons([square], (5, 5)).astype(int)[:, :4].tolist()
        [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]]
    """
    rows, columns = shape
    starts, ends = [], []
    for polygon in polygons:
        points = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(points) < 3:
            continue
        starts.append(points)
        ends.append(np.roll(points, -1, axis=0))
    if not starts or rows <= 0 or columns <= 0:
        return np.zeros((max(rows, 0), max(columns, 0)), bool)
    a, b = np.concatenate(starts), np.concatenate(ends)
    low, high = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    # the rows whose centre lies in [low, high), clipped to the grid
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    if not counts.sum():
        return np.zeros(shape, bool)
    edge = np.repeat(np.arange(len(a)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first[edge] + offsets
    y0, x0, y1, x1 = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
    crossing = x0 + (row - y0) * (x1 - x0) / (y1 - y0)
    # a crossing at x toggles every centre at column >= x: count them per row, then
    # a running sum along the row says how many crossings lie at or left of a centre
    column = np.clip(np.ceil(crossing), 0, columns).astype(np.int64)
    toggles = np.zeros((rows, columns + 1), np.int32)
    np.add.at(toggles, (row, column), 1)
    return (np.cumsum(toggles[:, :columns], axis=1) & 1).astype(bool)
