"""User tables are found by listing the lake: Delta folders with a valid, free name."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from dicomlake.lake.location import BUILT_IN_TABLES
from dicomlake.lake.tables import TABLES
from dicomlake.lake.user_tables import check_table_name, user_tables


def test_only_delta_folders_with_a_user_name_count(tmp_path: Path) -> None:
    data = pa.table({"row_id": [1, 2]})
    for name in ("features", "Predictions_2", "instances", "_hidden", "bad-name"):
        write_deltalake(str(tmp_path / name), data)
    (tmp_path / "notes").mkdir()  # a folder without a Delta log
    (tmp_path / "file.txt").write_text("not a table")
    assert user_tables(str(tmp_path)) == ["Predictions_2", "features"]
    assert user_tables(str(tmp_path / "missing")) == []


@pytest.mark.parametrize(
    "name", ["series", "SERIES", "instances", "ct_series", "dicom_keywords", *TABLES]
)
def test_built_in_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="built-in table or view"):
        check_table_name(name)


def test_every_table_with_a_schema_is_a_built_in_name() -> None:
    """The light list the name check reads is the schemas' list, table for table."""
    assert sorted(BUILT_IN_TABLES) == sorted(TABLES)


@pytest.mark.parametrize("name", ["", "1x", "a b", "a-b", "x" * 64, "é"])
def test_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits and _"):
        check_table_name(name)
