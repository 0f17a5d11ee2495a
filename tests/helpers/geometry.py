"""Slice orientations for test series: axial, and turned about the x and z axes."""

from __future__ import annotations

import numpy as np

#: ImageOrientationPatient of an axial slice.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def turned(degrees_x: float, degrees_z: float) -> tuple[float, ...]:
    """ImageOrientationPatient of an axial slice turned about x, then about z."""
    ax, az = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    turn = rz @ rx
    return (*(turn @ [1.0, 0, 0]).round(6).tolist(), *(turn @ [0, 1.0, 0]).round(6).tolist())


#: An oblique orientation: 30 degrees about x, then 20 about z.
OBLIQUE = turned(30, 20)
