"""First-order features of every CT series, inside a body mask, into a ``features`` table.

    python examples/features.py                      # builds ./demo-lake from sample data
    python examples/features.py --lake my-lake --workers 8

:func:`features` is an ordinary function of one item, as the datasets give it: the
series' volume in Hounsfield units (the Modality LUT applied) and its ``meta`` with the
voxel spacing. ``dicomlake.apply`` runs it on all cores, one series at a time, and writes
one row per series to the lake's ``features`` table: its numbers as typed columns
beside ``SeriesInstanceUID``, ``status`` and ``error``. SQL joins that table to
``series`` like any other view.

The body mask is every voxel above :data:`BODY_HU` (air is about -1000 HU, fat about
-100), which keeps the patient and the table they lie on. With scipy installed the mask
is narrowed to its largest 3D connected component, which drops the table and stray
noise; this project does not depend on scipy, so without it the threshold alone is
the mask. The tests compute the same numbers by hand with pydicom and numpy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

import dicomlake
from dicomlake.sample import sample_lake

#: Voxels above this many Hounsfield units are inside the body (air is -1000 HU).
BODY_HU = -500.0

#: The series to measure: every CT series of the lake.
DEFAULT_SQL = "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels of ``hu`` (rows, columns, slices) inside the body, as a boolean array.

    A threshold at :data:`BODY_HU`; with scipy, only its largest connected component.
    """
    mask: np.ndarray = hu > BODY_HU
    try:
        from scipy import ndimage
    except ImportError:
        return mask
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    largest: np.ndarray = labels == int(sizes.argmax())
    return largest


def features(item: dict[str, Any]) -> dict[str, Any]:
    """Mean, spread, percentiles and volume of the voxels inside the body mask.

    Args:
        item: ``image`` (C, rows, columns, slices) in Hounsfield units, ``meta`` with
            ``spacing`` (row, column, slice) in mm.

    Returns:
        ``voxels`` (inside the mask), ``volume_ml``, ``mean_hu``, ``std_hu``,
        ``p10_hu``, ``p50_hu``, ``p90_hu``; NaN where the mask is empty, so every
        row has the same column types.
    """
    hu = np.asarray(item["image"], dtype=np.float32)[0]
    mask = body_mask(hu)
    values = hu[mask].astype(np.float64)
    spacing = np.asarray(item["meta"]["spacing"], dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> ml
    if values.size == 0:
        nan = math.nan
        stats = {"mean_hu": nan, "std_hu": nan, "p10_hu": nan, "p50_hu": nan, "p90_hu": nan}
    else:
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        stats = {
            "mean_hu": float(values.mean()),
            "std_hu": float(values.std()),
            "p10_hu": float(p10),
            "p50_hu": float(p50),
            "p90_hu": float(p90),
        }
    return {"voxels": int(values.size), "volume_ml": values.size * voxel_ml, **stats}


def build_lake(lake: Path, data: Path) -> None:
    """Ingest the built-in sample data into ``lake`` unless it is there already."""
    done = sample_lake(lake, data)
    if done:
        print(done)


#: The report: one line per measured series, with what ``series`` knows of it.
REPORT_SQL = """
SELECT s.SeriesInstanceUID, s.SeriesDescription, f.status,
       round(f.volume_ml, 2) AS volume_ml, round(f.mean_hu, 1) AS mean_hu,
       round(f.std_hu, 1) AS std_hu, f.p10_hu, f.p50_hu, f.p90_hu, f.error
FROM features AS f JOIN series AS s USING (SeriesInstanceUID)
ORDER BY f.status DESC, s.SeriesInstanceUID
"""


def main() -> None:
    """Parse the options, build the lake if needed, measure every series, print the join."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("demo-lake"))
    parser.add_argument("--data", type=Path, default=Path("demo-data"))
    parser.add_argument("--sql", default=DEFAULT_SQL)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    build_lake(args.lake, args.data)
    summary = dicomlake.apply(
        str(args.lake), args.sql, features, unit="series", table="features", workers=args.workers
    )
    print(summary)
    with dicomlake.Lake(str(args.lake)) as lake:
        relation = lake.sql(REPORT_SQL)
        print("\t".join(relation.columns))
        for row in relation.fetchall():
            print("\t".join("" if v is None else str(v) for v in row))


if __name__ == "__main__":
    main()
