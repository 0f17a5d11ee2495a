"""``delete_instances``: an instance's rows go from every table of the lake keyed by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import dicomlake
from dicomlake.lake import delete_instances
from dicomlake.lake.location import THUMBNAILS_TABLE, table_exists
from helpers.instance_tables import table_row_ids


def test_a_lake_without_thumbnails_loses_the_instance_and_acquisition_rows(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(small_folder)], lake, workers=0)
    instances, acquisition = table_row_ids(lake, "instances"), table_row_ids(lake, "acquisition")
    gone = acquisition[0]  # an ok instance, with an acquisition row
    ids = np.array([gone, gone, 12345], dtype=np.int64)  # duplicates, an unknown id
    assert delete_instances(lake, ids) == 1
    assert table_row_ids(lake, "instances") == [i for i in instances if i != gone]
    assert table_row_ids(lake, "acquisition") == [i for i in acquisition if i != gone]
    assert not table_exists(lake, THUMBNAILS_TABLE)
    assert delete_instances(str(tmp_path / "nolake"), ids) == 0
