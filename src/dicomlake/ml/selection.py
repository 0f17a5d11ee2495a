"""Where a dataset's lake is: a path, or a :class:`~dicomlake.Lake` with its settings.

The SQL that picks a dataset's rows is :mod:`dicomlake.lake.selection`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

from dicomlake._types import StorageOptions

if TYPE_CHECKING:
    from dicomlake.client import Lake

LakeLike: TypeAlias = "str | os.PathLike[str] | Lake"


def lake_location(
    lake: LakeLike, storage_options: StorageOptions = None
) -> tuple[str, StorageOptions]:
    """The lake's path and storage options, from a path or a :class:`~dicomlake.Lake`.

    The options stay as given (a :class:`~dicomlake.storage.StorageConfig` or a dict):
    they travel to DataLoader workers with the dataset and open its files there.
    """
    from dicomlake.client import Lake

    if isinstance(lake, Lake):
        options = storage_options if storage_options is not None else lake.storage_options
        return lake.path, options or None
    return os.fspath(lake), storage_options or None
