"""A user function's returned values as typed Arrow columns, and the widening rule.

``dicomlake.apply`` writes whatever dict a user's function returns, one column per
key, with a type inferred from the values, so SQL sees numbers as numbers:

- ``bool`` → boolean; ``int`` → bigint; ``float`` → double; ``str`` → string;
  ``bytes`` → binary; a list (or tuple, or 1-D numpy array) of those → a list of that
  type; numpy scalars and arrays count as the Python values they hold (``.tolist()``),
  as do torch tensors; ``None`` is null in any column.
- Where rows disagree, the type widens only from integer to floating point
  (``int64`` → ``double``, also inside lists, and an empty or all-null list takes
  any type); any other disagreement (a string where others returned numbers) is not
  guessed at: that row becomes an error row (``TypeError: ...`` naming the key and
  both types) and the others keep the column's type.

The same rule joins one task's columns to the next task's and to the table's: a
column may appear in any task (earlier rows get null), and an ``int64`` column of the
table becomes ``double`` when a later task returns fractions
(:func:`widen`). Nothing here raises for a user's value: :func:`typed_columns`
reports the rows it could not type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

#: Largest nesting of lists a value may have (a 2-D array is a list of lists).
MAX_DEPTH: Final = 4


class ValueTypeError(TypeError):
    """A returned value has no column type (a dict, an object, a 5-D array)."""


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain Python: numpy/torch scalars and arrays through ``tolist()``.

    Raises:
        ValueTypeError: The value is not a number, string, bytes, None or a list of
            them (nested at most :data:`MAX_DEPTH` deep).
    """
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, list | tuple):
        return plain(tolist(), depth)
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise ValueTypeError(f"lists nest more than {MAX_DEPTH} deep")
        return [plain(v, depth + 1) for v in value]
    raise ValueTypeError(
        f"a value of type {type(value).__name__} has no column type: return numbers, "
        "strings, bytes or lists of them"
    )


def widen(old: pa.DataType, new: pa.DataType) -> pa.DataType | None:
    """The type that holds values of both ``old`` and ``new``, or None if none may.

    Null takes the other type; an integer and a floating-point type give ``double``;
    lists widen by their items. Everything else must be equal.

    Example:
        >>> widen(pa.int64(), pa.float64()), widen(pa.string(), pa.int64())
        (DataType(double), None)
    """
    if old == new:
        return old
    if pa.types.is_null(old):
        return new
    if pa.types.is_null(new):
        return old
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(f(old) for f in numeric) and any(f(new) for f in numeric):
        return pa.float64()
    if pa.types.is_list(old) and pa.types.is_list(new):
        inner = widen(old.value_type, new.value_type)
        return None if inner is None else pa.list_(inner)
    return None


def undecided(kind: pa.DataType) -> bool:
    """Whether ``kind`` still waits for a value to say it: null, or a list of nulls.

    Such a column (only None or empty lists so far) has no type a table can store:
    the local job adds it when a value comes, Spark asks for it to be declared.
    """
    if pa.types.is_null(kind):
        return True
    return pa.types.is_list(kind) and undecided(kind.value_type)


def value_type(value: Any) -> pa.DataType:
    """The Arrow type of one plain value (null for None and empty lists).

    Raises:
        ValueTypeError: The items of a list disagree beyond :func:`widen`.
    """
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, bytes):
        return pa.binary()
    inner: pa.DataType = pa.null()
    for item in value:
        joined = widen(inner, value_type(item))
        if joined is None:
            raise ValueTypeError("the items of a list have different types")
        inner = joined
    return pa.list_(inner)


def typed_columns(
    rows: Sequence[Mapping[str, Any]], order: Sequence[str]
) -> tuple[dict[str, pa.Array], dict[int, str]]:
    """One Arrow array per key of ``order`` over ``rows``, and the rows that do not fit.

    Args:
        rows: Plain values (see :func:`plain`) by key; a row may lack a key (null).
        order: The keys, in column order.

    Returns:
        key → array (a key with only nulls gives a null-typed array), and row index →
        the error text of each row whose value disagrees with its column's type
        (that row's values are null in every column).
    """
    bad: dict[int, str] = {}
    types: dict[str, pa.DataType] = {}
    for key in order:
        column: pa.DataType = pa.null()
        for i, row in enumerate(rows):
            if i in bad:
                continue
            try:
                found = value_type(row.get(key))
            except ValueTypeError as exc:
                bad[i] = f"TypeError: {key!r}: {exc}"
                continue
            joined = widen(column, found)
            if joined is None:
                bad[i] = (
                    f"TypeError: {key!r} is {found} here but {column} in other rows of "
                    "the run; return one type per key (integers widen to float, "
                    "nothing else does)"
                )
                continue
            column = joined
        types[key] = column
    arrays = {
        key: pa.array(
            [None if i in bad else row.get(key) for i, row in enumerate(rows)], type=types[key]
        )
        for key in order
    }
    return arrays, bad
