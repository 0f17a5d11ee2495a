"""Hand-made ``instances`` rows for the lake tests (no DICOM parsing involved)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dicomlake.schema import INSTANCES_SCHEMA


def make_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Rows in INSTANCES_SCHEMA; unnamed columns are null, path/status get defaults."""
    columns: dict[str, list[Any]] = {name: [] for name in INSTANCES_SCHEMA.names}
    for row in rows:
        row = {"path": f"file:///data/{row['row_id']}.dcm", "status": "ok", **row}
        for name in INSTANCES_SCHEMA.names:
            columns[name].append(row.get(name))
    return pa.RecordBatch.from_pydict(columns, schema=INSTANCES_SCHEMA)
