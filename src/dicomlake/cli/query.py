"""``dicomlake sql`` and ``dicomlake info``: asking the lake."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    LakeOption,
    OutputFormat,
    StorageOptionOption,
    fail,
    storage_config,
)
from dicomlake.cli.render import Rows, print_info, state_rows, write_result
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    import pyarrow as pa


def sql(
    query: Annotated[str, typer.Argument(help="SQL over instances, series, studies.")],
    lake: LakeOption,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Run a SQL query (DuckDB) against the lake."""
    import duckdb

    from dicomlake.lake.sql import connect

    if output_format is OutputFormat.parquet and output is None:
        raise fail("--format parquet needs --output FILE")
    storage = storage_config(anon, storage_option)
    try:
        con = connect(lake, storage_options=storage)
        relation = con.sql(query)
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    except duckdb.Error as exc:
        raise fail(f"query failed: {str(exc).splitlines()[0]}") from None
    if relation is None:  # a statement with no result set
        return
    try:
        if output_format in (OutputFormat.csv, OutputFormat.parquet):
            result: pa.Table | Rows = relation.to_arrow_table()
        else:
            result = Rows(relation.columns, relation.fetchall())
    except duckdb.Error as exc:
        raise fail(f"query failed: {str(exc).splitlines()[0]}") from None
    write_result(result, output_format, output)


def info(
    lake: LakeOption, anon: AnonOption = False, storage_option: StorageOptionOption = None
) -> None:
    """Show what the lake holds: files, statuses, errors, studies, series, modalities."""
    from dicomlake.lake.maintenance import table_state
    from dicomlake.lake.sql import connect, lake_summary

    storage = storage_config(anon, storage_option)
    try:
        summary = lake_summary(connect(lake, storage_options=storage))
        summary.update(state_rows(table_state(lake, storage_options=storage)))
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    print_info(lake, summary)
