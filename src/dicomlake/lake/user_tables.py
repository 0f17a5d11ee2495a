"""Tables a user names (``dicomlake apply --table NAME``): valid names, and finding them.

A user's table is a Delta table in a folder of the lake like any built-in one
(``<lake>/<NAME>``). There is no registry to keep in step: :func:`user_tables` finds
them by listing the lake's folders, and :func:`dicomlake.lake.sql.connect` makes each
a view of its name. A folder counts when its name is a valid table name that is no
built-in table or view and it holds a ``_delta_log``; so a table copied into a lake,
or written by Spark's ``Catalog(..., table=NAME).save``, shows up as well, and a
deleted folder simply is gone.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final

from dicomlake.lake.location import BUILT_IN_TABLES, lake_root
from dicomlake.storage.locations import local_path

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Views and helper tables :func:`dicomlake.lake.sql.connect` defines itself.
BUILT_IN_VIEWS: Final = frozenset(
    {
        "series",
        "studies",
        "ct_series",
        "mr_series",
        "pt_series",
        "sm_series",
        "contrast",
        "dicom_keywords",
    }
)


def check_table_name(name: str) -> str:
    """``name`` if it may name a user's table, else a ValueError saying what may.

    Raises:
        ValueError: Not an identifier of at most 63 characters (letters, digits,
            ``_``, not starting with a digit), or the name of a built-in table or view.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"a table name is letters, digits and _ (not starting with a digit, at most "
            f"63 characters), got {name!r}"
        )
    taken = {n.lower() for n in (*BUILT_IN_TABLES, *BUILT_IN_VIEWS)}
    if name.lower() in taken or name.startswith("_"):
        raise ValueError(
            f"{name!r} is a built-in table or view of the lake (or starts with _): choose "
            f"another name; taken: {', '.join(sorted(taken))}"
        )
    return name


def _is_user_name(name: str) -> bool:
    try:
        check_table_name(name)
    except ValueError:
        return False
    return True


def user_tables(lake: str, *, storage_options: StorageOptions = None) -> list[str]:
    """The user tables of a lake, sorted by name (see the module docstring).

    Args:
        lake: Lake folder or object-store URI prefix.
        storage_options: Options for object storage.

    Returns:
        Names of the lake's folders that hold a Delta table and may name a user table.
    """
    root = lake_root(lake)
    local = local_path(root)
    if local is not None:
        try:
            entries = [e.name for e in os.scandir(local) if e.is_dir()]
        except OSError:
            return []
        return sorted(
            name
            for name in entries
            if _is_user_name(name) and os.path.isdir(os.path.join(local, name, "_delta_log"))
        )
    import fsspec.core

    from dicomlake.storage.settings import fsspec_options

    try:
        fs, path = fsspec.core.url_to_fs(root, **fsspec_options(storage_options))
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        return sorted(
            name for name in names if _is_user_name(name) and fs.exists(f"{path}/{name}/_delta_log")
        )
    except (OSError, ValueError, ImportError):
        return []
