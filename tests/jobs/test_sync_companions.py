"""``--sync`` deletes a gone file's rows from every table keyed by its instance row."""

from __future__ import annotations

from pathlib import Path

import dicomlake
from helpers.instance_tables import row_ids_by_table, table_row_ids


def test_sync_deletes_a_gone_files_thumbnails_and_acquisition_rows_too(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(small_folder)], lake, workers=0, thumbnails=True)
    before = row_ids_by_table(lake)
    con = dicomlake.connect(lake)
    try:
        ((gone,),) = con.sql(
            "SELECT row_id FROM instances WHERE path LIKE '%/MR_small.dcm'"
        ).fetchall()
    finally:
        con.close()
    assert all(gone in ids for ids in before.values()), before  # a row in each table
    (small_folder / "MR_small.dcm").unlink()
    summary = dicomlake.ingest([str(small_folder)], lake, workers=0, sync=True)
    assert summary.deleted == 1
    after = row_ids_by_table(lake)
    assert after == {table: [i for i in ids if i != gone] for table, ids in before.items()}
    assert table_row_ids(lake, "thumbnails")  # the other files' thumbnails stay
