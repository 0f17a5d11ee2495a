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


def write_study_rows(lake: str, *, study: str, n: int) -> None:
    """One study of ``n`` one-frame instances, each with a small header in ``meta``,
    written straight to Delta (no DICOM parsing): a big study in seconds."""
    from dicomlake.lake import TableWriter

    columns: dict[str, pa.Array] = {
        "row_id": pa.array(range(1, n + 1), pa.int64()),
        "path": pa.array([f"file:///big/{i}.dcm" for i in range(n)]),
        "status": pa.array(["ok"] * n),
        "StudyInstanceUID": pa.array([study] * n),
        "SeriesInstanceUID": pa.array([f"{study}.{i // 1000}" for i in range(n)]),
        "SOPInstanceUID": pa.array([f"{study}.{i // 1000}.{i}" for i in range(n)]),
        "InstanceNumber": pa.array(range(n), pa.int64()),
        "Modality": pa.array(["CT"] * n),
        "has_pixel_data": pa.array([True] * n),
        "meta": pa.array(
            [
                f'{{"00080018": {{"vr": "UI", "Value": ["{study}.{i // 1000}.{i}"]}}, '
                f'"00200013": {{"vr": "IS", "Value": [{i}]}}}}'
                for i in range(n)
            ]
        ),
    }
    table = pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in INSTANCES_SCHEMA},
        schema=INSTANCES_SCHEMA,
    )
    with TableWriter(lake, max_rows=n + 1) as writer:
        writer.write(table)
