"""``--sync`` deletes what was made from a gone file: its patches, its segments."""

from __future__ import annotations

from pathlib import Path

import dicomlake
from dicomlake.jobs.labels import build_segments
from dicomlake.jobs.patches import write_patches
from dicomlake.kernels.patches import PatchOptions
from dicomlake.lake.location import PATCHES_TABLE, SEGMENTS_TABLE
from helpers.instance_tables import table_row_ids


def _row_id(lake: str, name: str) -> int:
    con = dicomlake.connect(lake)
    try:
        ((found,),) = con.sql(
            "SELECT row_id FROM instances WHERE path LIKE '%/' || ?", params=[name]
        ).fetchall()
    finally:
        con.close()
    return int(found)


def test_sync_deletes_a_gone_images_patches_and_a_gone_segmentations_segments(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(small_folder)], lake, workers=0)
    assert build_segments(lake).segmentations == 1  # rtstruct.dcm (its series is absent)
    assert write_patches(lake, PatchOptions(size=32), workers=0).instances == 3
    image, structures = _row_id(lake, "MR_small.dcm"), _row_id(lake, "rtstruct.dcm")
    patches, segments = table_row_ids(lake, PATCHES_TABLE), table_row_ids(lake, SEGMENTS_TABLE)
    assert image in patches and set(segments) == {structures}
    (small_folder / "MR_small.dcm").unlink()
    (small_folder / "rtstruct.dcm").unlink()
    assert dicomlake.ingest([str(small_folder)], lake, workers=0, sync=True).deleted == 2
    assert table_row_ids(lake, PATCHES_TABLE) == [i for i in patches if i != image]
    assert table_row_ids(lake, SEGMENTS_TABLE) == []
    con = dicomlake.connect(lake)
    try:  # what PatchDataset reads: only patches of files still there
        paths = [p for (p,) in con.sql("SELECT DISTINCT path FROM patches").fetchall()]
    finally:
        con.close()
    assert paths and all(Path(p.removeprefix("file://")).exists() for p in paths)
