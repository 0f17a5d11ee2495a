"""What the datasets share: the query's lake, labels, window, transform and frame reader."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.dicom.frames import Window, check_window
from dicomlake.errors import QueryError
from dicomlake.lake.selection import PRIVATE
from dicomlake.ml._torch import require_torch
from dicomlake.ml.frames import FrameCache, FrameReader
from dicomlake.ml.labels import Labels
from dicomlake.ml.selection import LakeLike, lake_location


class SelectedDataset:
    """Base of the datasets: set up once from a query, then pickled to workers.

    Subclasses call :meth:`_setup` first, keep their keys in ``_items`` (a small Arrow
    table, one row per item) and name in ``_per_process`` the attributes that cache
    things per process (decoded rows, open files): those never travel in a pickle.
    """

    _per_process: tuple[str, ...] = ()
    _items: pa.Table
    labels: Labels | None

    def _setup(
        self,
        lake: LakeLike,
        sql: str,
        *,
        label: str | None,
        window: Window,
        transform: Callable[[dict[str, Any]], Any] | None,
        cache_dir: str | os.PathLike[str] | None,
        storage_options: StorageOptions,
    ) -> tuple[str, StorageOptions]:
        """Check the shared arguments; return the lake's path and storage options.

        Raises:
            ImportError: torch is not installed.
            ValueError: ``window`` is not valid.
            QueryError: ``label`` uses the reserved prefix.
        """
        require_torch()
        self.window = check_window(window)
        if label is not None and label.startswith(PRIVATE):
            raise QueryError(
                f"label={label!r}: names starting with {PRIVATE!r} are reserved", sql=sql
            )
        self.sql = sql
        self.transform = transform
        self.labels = None
        path, options = lake_location(lake, storage_options)
        self.lake = path
        self._reader = FrameReader(
            storage_options=options,
            cache=FrameCache(cache_dir) if cache_dir is not None else None,
        )
        return path, options

    @property
    def classes(self) -> tuple[Any, ...] | None:
        """Sorted distinct values of a text/boolean ``label`` column (index = class)."""
        return self.labels.classes if self.labels is not None else None

    @property
    def items(self) -> pa.Table:
        """What was selected: one row per item, with its keys and label."""
        names = [c.removeprefix(PRIVATE) for c in self._items.column_names]
        return self._items.rename_columns(names)

    def __len__(self) -> int:
        return int(self._items.num_rows)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return index % len(self)

    def _finish(self, item: dict[str, Any], label_value: Any) -> Any:
        """Add the label (when there is one) and run the transform."""
        if self.labels is not None:
            item["label"] = self.labels.tensor(label_value)
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._per_process:
            if name in state:
                state[name] = None
        return state
