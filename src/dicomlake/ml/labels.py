"""Labels from a query column: class indices for text, numbers for numbers.

A text (or boolean) column is a classification target: its distinct values, sorted,
become ``classes`` and each item carries the index of its value, as torchvision's
``ImageFolder`` does, so ``CrossEntropyLoss`` takes it as is. A numeric column is a
regression target (int64 or float32); a list of numbers becomes a float32 vector.
Nulls are refused when the dataset is made, not halfway through an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dicomlake.errors import QueryError


@dataclass(frozen=True, slots=True)
class Labels:
    """How one query column becomes each item's ``label``.

    Attributes:
        column: The column's name.
        kind: ``'class'`` (index into :attr:`classes`), ``'int'``, ``'float'`` or
            ``'vector'``.
        classes: The sorted distinct values of a ``'class'`` column, else None.
    """

    column: str
    kind: str
    classes: tuple[Any, ...] | None = None

    @property
    def class_to_idx(self) -> dict[Any, int]:
        """Value → class index (empty unless :attr:`kind` is ``'class'``)."""
        return {value: index for index, value in enumerate(self.classes or ())}

    def encode(self, value: Any) -> Any:
        """The label of one raw column value: an int, a float, or a list of floats."""
        if self.kind == "class":
            return self.class_to_idx[value]
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return [float(v) for v in value]

    def tensor(self, value: Any) -> Any:
        """:meth:`encode`'s result as a torch tensor (int64 for classes and ints)."""
        import torch

        encoded = self.encode(value)
        dtype = torch.int64 if self.kind in ("class", "int") else torch.float32
        return torch.tensor(encoded, dtype=dtype)


def labels_for(table: pa.Table, column: str | None, sql: str) -> Labels | None:
    """The :class:`Labels` of ``column`` in the selected rows, None for no label.

    Raises:
        QueryError: The column is missing, has nulls, or has a type that is not a
            label (binary, nested, temporal).
    """
    if column is None:
        return None
    if column not in table.column_names:
        raise QueryError(
            f"label={column!r} is not a column of the query; it returns "
            f"{[c for c in table.column_names if not c.startswith('__dl_')]}",
            sql=sql,
        )
    values = table.column(column)
    nulls = values.null_count
    if nulls:
        raise QueryError(
            f"the label column {column!r} is null in {nulls} of {len(values)} rows; "
            f'filter them in the query (WHERE "{column}" IS NOT NULL)',
            sql=sql,
        )
    kind_of = values.type
    if pa.types.is_dictionary(kind_of):
        kind_of = kind_of.value_type
    if (
        pa.types.is_string(kind_of)
        or pa.types.is_large_string(kind_of)
        or pa.types.is_boolean(kind_of)
        or pa.types.is_string_view(kind_of)
    ):
        distinct = pc.unique(values.cast(kind_of) if kind_of != values.type else values)
        return Labels(column, "class", tuple(sorted(distinct.to_pylist())))
    if pa.types.is_integer(kind_of):
        return Labels(column, "int")
    if pa.types.is_floating(kind_of) or pa.types.is_decimal(kind_of):
        return Labels(column, "float")
    if (pa.types.is_list(kind_of) or pa.types.is_large_list(kind_of)) and (
        pa.types.is_integer(kind_of.value_type) or pa.types.is_floating(kind_of.value_type)
    ):
        return Labels(column, "vector")
    raise QueryError(
        f"the label column {column!r} has type {values.type}, which is not a label: "
        "use text or booleans for classes, numbers for regression",
        sql=sql,
    )
