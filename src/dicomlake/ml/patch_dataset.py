"""``PatchDataset``: one item per patch row a SQL query returns, as float32 tensors.

Where the pixels come from:

- the query returns no ``pixels`` column, or only nulls (a table written without
  ``store_pixels``): each item reads its frame from the file (through ``cache_dir``
  when given) and crops it; consecutive patches of one frame decode it once per
  worker;
- the query returns ``pixels`` (written with ``store_pixels=True``): they are streamed
  once, when the dataset is made, into an Arrow IPC file (in ``cache_dir``, else a
  temporary folder removed with the dataset), which every DataLoader worker
  memory-maps. The object never holds the pixels, so it pickles as small as without
  them, and the workers share one copy through the page cache. A row whose
  ``pixels`` is null is cropped from its file.

The keys are kept compact (int32 positions, paths and UIDs dictionary-encoded): 783
patches pickle in 44 KB, about 57 bytes a patch, with or without stored pixels (the
tests bound it), so a million patches pickle in about 60 MB.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.dicom.frames import PhysicalFrame, Window
from dicomlake.errors import ExtractError, QueryError
from dicomlake.lake.selection import PRIVATE, query_columns, require_columns, strip_query
from dicomlake.ml._base import SelectedDataset
from dicomlake.ml._torch import require_torch
from dicomlake.ml.labels import labels_for
from dicomlake.ml.selection import LakeLike

log = logging.getLogger(__name__)

#: The query a :class:`PatchDataset` runs when given none.
DEFAULT_SQL: Final = "SELECT * FROM patches WHERE status = 'ok'"

#: Columns the query must return, non-null on every row.
KEY_COLUMNS: Final = ("path", "frame", "x", "y", "width", "height")

#: Instance columns joined to each row (alias -> SQL over the instances view ``i``).
_JOINED: Final = {
    f"{PRIVATE}size": 'i."size"',
    f"{PRIVATE}mtime": 'i."modification_time"',
    f"{PRIVATE}sop": 'i."SOPInstanceUID"',
    f"{PRIVATE}photometric": 'i."PhotometricInterpretation"',
    f"{PRIVATE}plut": "tag(i.meta, 'PresentationLUTShape')",
}

_PIXELS: Final = "pixels"


def _statement(sql: str, columns: list[str], keep: list[str]) -> str:
    """The user's query joined to the instances it names, in the query's order."""
    picked = ", ".join(f'{expr} AS "{alias}"' for alias, expr in _JOINED.items())
    users = ", ".join(f's."{c}"' for c in keep)
    pixels = f', s."{_PIXELS}"' if _PIXELS in columns else ""
    return (
        f"SELECT {users}, {picked}{pixels} FROM (SELECT *, row_number() OVER () AS "
        f"{PRIVATE}order FROM ({strip_query(sql)})) s JOIN instances i ON i.path = s.path "
        f"WHERE i.status = 'ok' AND i.has_pixel_data ORDER BY s.{PRIVATE}order"
    )


def _select(
    lake: str,
    sql: str,
    options: StorageOptions,
    label: str | None,
    spool: Callable[[], Path],
) -> tuple[pa.Table, Path | None]:
    """Run the query: (keys table, the file ``pixels`` were spooled to, or None).

    ``spool`` makes that file's path, called only when the query returns ``pixels``;
    when every row's ``pixels`` is null (a table written without them) the spool is
    not used and None comes back.

    Raises:
        QueryError: The query fails or lacks a key column.
        TableNotFound: Nothing has been ingested into the lake.
    """
    import duckdb

    from dicomlake.lake.sql import connect

    con = connect(lake, storage_options=options)
    try:
        columns = query_columns(con, sql)
        require_columns(columns, KEY_COLUMNS, sql, "where each patch is")
        reserved = [c for c in columns if c.startswith(PRIVATE)]
        if reserved:
            raise QueryError(
                f"column names starting with {PRIVATE!r} are reserved: {reserved}", sql=sql
            )
        keep = list(KEY_COLUMNS)
        if label is not None and label in columns and label not in keep:
            keep.append(label)
        target = spool() if _PIXELS in columns else None
        try:
            reader = con.sql(_statement(sql, columns, keep))
            keys, stored = _drain(reader.to_arrow_reader(4096), target)
            return keys, target if stored else None
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {exc}", sql=sql) from exc
    finally:
        con.close()


def _drain(batches: pa.RecordBatchReader, spool: Path | None) -> tuple[pa.Table, int]:
    """Collect the key columns; write the ``pixels`` column to ``spool`` as it streams.

    Returns:
        The keys, and how many rows have pixels (not null).
    """
    keys: list[pa.RecordBatch] = []
    stored = 0
    schema = pa.schema([(_PIXELS, pa.binary())])
    writer = pa.ipc.new_file(str(spool), schema) if spool is not None else None
    try:
        for batch in batches:
            if writer is not None:
                column = batch.column(_PIXELS).cast(pa.binary())
                stored += len(column) - column.null_count
                writer.write_batch(pa.RecordBatch.from_arrays([column], schema=schema))
                batch = batch.drop_columns([_PIXELS])
            keys.append(batch)
    finally:
        if writer is not None:
            writer.close()
    if keys:
        return pa.Table.from_batches(keys), stored
    empty = batches.schema
    if spool is not None:
        empty = empty.remove(empty.get_field_index(_PIXELS))
    return empty.empty_table(), stored


def _check_keys(table: pa.Table, sql: str) -> pa.Table:
    """The keys, compact: int32 positions and dictionary-encoded text.

    A path per patch would otherwise dominate the pickle. Rows with a null key are
    refused.
    """
    nulls = [c for c in KEY_COLUMNS if table.column(c).null_count]
    if nulls:
        raise QueryError(
            f"the columns {nulls} are null in some rows (error rows of the patches "
            "table have no position): add WHERE status = 'ok'",
            sql=sql,
        )
    for index, field in enumerate(table.schema):
        column = table.column(index)
        if field.name in KEY_COLUMNS[1:]:
            column = column.cast(pa.int32())
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = column.combine_chunks().dictionary_encode()
        elif pa.types.is_string_view(field.type):
            column = column.cast(pa.string()).combine_chunks().dictionary_encode()
        table = table.set_column(index, field.name, column)
    return table


def _remove(folder: str, owner: int) -> None:
    """Delete the spool folder, only in the process that made it (not a forked worker)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class PatchDataset(SelectedDataset):
    """One item per patch row of ``sql``, as float32 tensors cropped from the frame.

    Items are dicts, as MONAI's dictionary transforms expect::

        {"image": tensor[C, height, width],  # C = 1 (grayscale) or 3 (RGB)
         "label": tensor,                    # only when ``label`` is given
         "meta": {"path": str, "frame": int, "x": int, "y": int,
                  "SOPInstanceUID": str}}

    Values are physical (CT in Hounsfield units), or display brightness in [0, 1]
    with a ``window`` (MONOCHROME1 inverted). Patches of different sizes (a frame
    smaller than the patch size) do not stack into one batch.

    Args:
        lake: Lake path or :class:`~dicomlake.Lake`.
        sql: A query over the lake's views returning ``path``, ``frame``, ``x``, ``y``,
            ``width`` and ``height`` (the ``patches`` table's columns), and optionally
            ``pixels``. Rows whose file is no longer an ``ok`` instance are dropped.
        label: A column of the query to return as ``label`` (text and booleans as
            class indices, numbers as regression targets).
        window: None (physical values), ``(center, width)``, or ``'dicom'`` (the
            file's first window, else the frame's 0.5/99.5 percentiles; only when
            reading from files, since it needs the whole frame).
        transform: Called with each item dict; returns the item to yield.
        cache_dir: Folder for decoded frames (``.npy``) and for the spooled
            ``pixels``; None decodes every time and spools to a temporary folder.
        storage_options: Options for an object-store lake and its files.

    Raises:
        QueryError: The query fails, lacks a key column, has null keys, or the label
            column is unusable.
        TableNotFound: Nothing has been ingested into the lake.
        ValueError: ``window`` is invalid, or ``'dicom'`` with a ``pixels`` column.

    Example:
        >>> ds = PatchDataset("lake", "SELECT * FROM patches WHERE tissue_fraction > 0.5",
        ...                   window=(40, 400))  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        torch.Size([1, 256, 256])
    """

    _per_process = ("_rows", "_pixels", "_last")

    def __init__(
        self,
        lake: LakeLike,
        sql: str = DEFAULT_SQL,
        *,
        label: str | None = None,
        window: Window = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        path, options = self._setup(
            lake,
            sql,
            label=label,
            window=window,
            transform=transform,
            cache_dir=cache_dir,
            storage_options=storage_options,
        )
        self._spool_finalizer: weakref.finalize[Any, Any] | None = None
        try:
            keys, spooled = _select(path, sql, options, label, lambda: self._spool(cache_dir))
            if spooled is not None and self.window == "dicom":
                raise ValueError(
                    "window='dicom' needs the whole frame: leave the pixels column out of "
                    "the query (patches are then cropped from the files), or give "
                    "(center, width)"
                )
        except BaseException:
            if self._spool_finalizer is not None:
                self._spool_finalizer()
            raise
        if spooled is None and self._spool_finalizer is not None:
            self._spool_finalizer()  # the pixels column was all null: nothing to keep
        self._pixels_file = str(spooled) if spooled is not None else None
        self.labels = labels_for(keys, label, sql)
        self._items = _check_keys(keys, sql)
        self._rows: list[tuple[Any, ...]] | None = None
        self._pixels: pa.ChunkedArray | None = None
        self._last: tuple[tuple[str, int], np.ndarray] | None = None

    def _spool(self, cache_dir: str | os.PathLike[str] | None) -> Path:
        """The file to spool pixels to, in a fresh folder removed with this object."""
        if cache_dir is not None:
            folder = Path(cache_dir) / f"patch-pixels-{uuid.uuid4().hex}"
            folder.mkdir(parents=True)
        else:
            folder = Path(tempfile.mkdtemp(prefix="dicomlake-patches-"))
        self._spool_finalizer = weakref.finalize(self, _remove, str(folder), os.getpid())
        return folder / "pixels.arrow"

    # -- what was selected

    @property
    def pixels_from_table(self) -> bool:
        """Whether the pixels come from the table's ``pixels`` column, not the files."""
        return self._pixels_file is not None

    # -- reading

    def _row(self, index: int) -> dict[str, Any]:
        if self._rows is None:  # built once per process, never pickled
            names = self._items.column_names
            columns = [self._items.column(n).to_pylist() for n in names]
            self._rows = [tuple(r) for r in zip(*columns, strict=True)]
        return dict(zip(self._items.column_names, self._rows[index], strict=True))

    def __getitem__(self, index: int) -> Any:
        index = self._check_index(index)
        row = self._row(index)
        stored = self._pixels_file is not None
        values = self._stored(index, row) if stored else self._cropped(row)
        return self._item(row, values)

    def _stored(self, index: int, row: dict[str, Any]) -> np.ndarray:
        """The patch's values from the spooled ``pixels`` column, windowed.

        A row whose ``pixels`` is null is cropped from its file instead.
        """
        if self._pixels is None:
            assert self._pixels_file is not None
            source = pa.memory_map(self._pixels_file)
            self._pixels = pa.ipc.open_file(source).read_all().column(_PIXELS)
        data = self._pixels[index].as_py()
        if data is None:
            return self._cropped(row)
        height, width = row["height"], row["width"]
        if not data or len(data) % (4 * height * width):
            raise ExtractError(
                f"the pixels of patch ({row['x']}, {row['y']}) of frame {row['frame']} of "
                f"{row['path']} are not {width} x {height} float32 values (the patches "
                "table's pixels column holds them): leave pixels out of the query to crop "
                "from the files",
                path=row["path"],
            )
        values = np.frombuffer(data, dtype="<f4").reshape(-1, height, width).astype(np.float32)
        if self.window is None:
            return values
        photometric = str(row[f"{PRIVATE}photometric"] or "").upper()
        inverse = str(row[f"{PRIVATE}plut"] or "").upper() == "INVERSE"
        patch = PhysicalFrame(
            values=values,
            spacing=None,
            window=None,
            inverted=photometric == "MONOCHROME1" or inverse,
            photometric=photometric,
        )
        return patch.windowed(self.window)

    def _cropped(self, row: dict[str, Any]) -> np.ndarray:
        """The patch cropped from its frame, read from the file (or the cache), windowed."""
        path, frame = row["path"], row["frame"]
        if self._last is not None and self._last[0] == (path, frame):
            values = self._last[1]
        else:
            try:
                loaded = self._reader.read(
                    path, frame, size=row[f"{PRIVATE}size"], mtime=row[f"{PRIVATE}mtime"]
                )
            except Exception as exc:
                from dicomlake.rows import error_text

                raise ExtractError(
                    f"cannot decode frame {frame} of {path}: {error_text(exc)}", path=path
                ) from exc
            values = loaded.windowed(self.window)
            self._last = ((path, frame), values)
        x, y, width, height = row["x"], row["y"], row["width"], row["height"]
        _, rows, cols = values.shape
        if x < 0 or y < 0 or x + width > cols or y + height > rows:
            raise ExtractError(
                f"patch ({x}, {y}, {width} x {height}) lies outside frame {frame} of {path} "
                f"({cols} x {rows}): the file changed since the patches were written; "
                "run the patcher again",
                path=path,
            )
        return values[:, y : y + height, x : x + width]

    def _item(self, row: dict[str, Any], values: np.ndarray) -> Any:
        torch = require_torch()
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.array(values, dtype=np.float32, copy=True)),
            "meta": {
                "path": row["path"],
                "frame": row["frame"],
                "x": row["x"],
                "y": row["y"],
                "SOPInstanceUID": row[f"{PRIVATE}sop"] or "",
            },
        }
        return self._finish(item, row[self.labels.column] if self.labels is not None else None)

    # -- pickling: keys only

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_spool_finalizer", None)  # the spool belongs to the original
        return state

    def __repr__(self) -> str:
        label = f", label={self.labels.column!r}" if self.labels is not None else ""
        source = "table" if self.pixels_from_table else "files"
        return (
            f"PatchDataset({self.lake!r}, {len(self)} patches{label}, "
            f"window={self.window!r}, pixels from {source})"
        )
