"""The receiver's rows: a moved instance's old place loses its companion rows too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dicomlake.jobs.store import StoreRows
from dicomlake.rows import row_id
from dicomlake.sample import sample_file
from dicomlake.storage.locations import file_uri
from helpers.instance_tables import INSTANCE_TABLES, row_ids_by_table


def test_a_moved_instance_leaves_no_thumbnail_or_acquisition_row_behind(
    tmp_path: Path,
) -> None:
    """As the C-STORE handler does it: stored, stored again (that row waits), moved."""
    lake, store = str(tmp_path / "lake"), tmp_path / "store"
    old, new = store / "study" / "old" / "sop.dcm", store / "study" / "new" / "sop.dcm"
    for place in (old, new):
        place.parent.mkdir(parents=True)
    shutil.copyfile(sample_file("CT_small.dcm"), old)
    rows = StoreRows(lake, str(store), thumbnails=True)
    try:
        rows.add(str(old))
        rows.flush()
        rows.add(str(old))  # its row waits
        os.replace(old, new)  # moved: the old place goes
        rows.remove(str(old))
        rows.add(str(new))
        rows.commit_if_due()
    finally:
        rows.close()
    moved = row_id(file_uri(str(new)))
    assert row_ids_by_table(lake) == {table: [moved] for table in INSTANCE_TABLES}


def test_a_thumbnail_still_buffered_is_deleted_with_its_instance_row(tmp_path: Path) -> None:
    """Instance rows commit at once, thumbnails not yet: the deletion commits them first."""
    lake, store = str(tmp_path / "lake"), tmp_path / "store"
    old, new = store / "old" / "sop.dcm", store / "new" / "sop.dcm"
    for place in (old, new):
        place.parent.mkdir(parents=True)
    shutil.copyfile(sample_file("CT_small.dcm"), old)
    rows = StoreRows(lake, str(store), thumbnails=True, commit_rows=1, commit_seconds=60)
    try:
        rows.add(str(old))
        os.replace(old, new)  # moved before its rows were handed over
        rows.remove(str(old))
        rows.add(str(new))
        rows.commit_if_due()  # the deletion's tick: both instance rows commit, one by one
    finally:
        rows.close()
    moved = row_id(file_uri(str(new)))
    assert row_ids_by_table(lake) == {table: [moved] for table in INSTANCE_TABLES}
