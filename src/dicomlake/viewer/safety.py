"""Checking the gallery's advanced filter: a user-written SQL ``WHERE`` clause.

The clause is the one piece of user text that becomes SQL, so it passes two guards:

1. :func:`check_where` parses ``SELECT * FROM instances WHERE (<clause>)`` with DuckDB's
   own parser (``json_serialize_sql``) and accepts it only when that text is exactly one
   plain SELECT whose single addition is the WHERE expression: no second statement, no
   LIMIT/ORDER/UNION smuggled after a closing parenthesis, no parameters, no table
   function but ``unnest``, no table but the lake's views, no function that reads
   files or settings. The caller embeds the very same checked text, verbatim, as a
   subquery (:func:`filtered_instances`), so what runs is what was parsed.
2. The connection it runs on cannot reach the outside world anyway:
   ``enable_external_access`` is off, only the lake's own folder is readable, and the
   configuration is locked (see :mod:`dicomlake.search.connection`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

#: Tables and views a clause may read (in subqueries).
ALLOWED_TABLES = frozenset({"instances", "series", "studies", "thumbnails", "dicom_keywords"})

#: Table functions a clause may call (``EXISTS (SELECT 1 FROM unnest(path_tags) ...)``).
ALLOWED_TABLE_FUNCTIONS = frozenset({"unnest"})

#: Kinds of FROM items that are harmless.
_ALLOWED_TABLE_REFS = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "TABLE_FUNCTION"}
)

#: Scalar functions that are refused: they read settings, files or serialized SQL.
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "getenv",
        "glob",
        "json_deserialize_sql",
        "json_execute_serialized_sql",
        "json_serialize_sql",
        "query",
        "query_table",
        "sniff_csv",
    }
)
_DENIED_PREFIXES = ("read_", "parquet_", "duckdb_", "pragma_", "iceberg_", "delta_")

#: Longest clause accepted, in characters.
MAX_CLAUSE_LENGTH = 4000


class UnsafeClause(ValueError):
    """The WHERE clause is not a single, safe SQL expression; the message says why."""


def _template(clause: str) -> str:
    # The newlines end a trailing ``--`` comment before the closing parenthesis.
    return f"SELECT * FROM instances WHERE (\n{clause}\n)"


def check_where(con: duckdb.DuckDBPyConnection, clause: str) -> str:
    """Check a user's WHERE clause and return the subquery that applies it.

    Args:
        con: Any DuckDB connection (only its parser is used).
        clause: The text after ``WHERE``, e.g. ``Rows > 256 AND tag(meta, 'EchoTime') = '5'``.

    Returns:
        ``SELECT * FROM instances WHERE (<clause>)``, the exact text that was checked.

    Raises:
        UnsafeClause: If the clause is empty, too long, does not parse, is more than one
            expression, or uses a table, table function or function that is not allowed.
    """
    clause = clause.strip()
    if not clause:
        raise UnsafeClause("the WHERE clause is empty")
    if len(clause) > MAX_CLAUSE_LENGTH:
        raise UnsafeClause(f"the WHERE clause is longer than {MAX_CLAUSE_LENGTH} characters")
    if "\x00" in clause:
        raise UnsafeClause("the WHERE clause contains a NUL character")
    sql = _template(clause)
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UnsafeClause(f"the WHERE clause does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise UnsafeClause("the WHERE clause must be one expression, not several statements")
    try:
        rows = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
    except duckdb.Error as exc:
        raise UnsafeClause(f"the WHERE clause does not parse: {_first_line(exc)}") from None
    tree = json.loads(rows[0][0])
    if tree.get("error"):
        raise UnsafeClause(f"the WHERE clause does not parse: {tree.get('error_message', '')}")
    if len(tree["statements"]) != 1:
        raise UnsafeClause("the WHERE clause must be one expression, not several statements")
    statement = tree["statements"][0]
    if statement.get("named_param_map"):
        raise UnsafeClause("the WHERE clause may not contain parameters (? or $name)")
    _check_shape(statement)
    for node in _walk(statement["node"]["where_clause"]):
        _check_node(node)
    return sql


def _check_shape(statement: dict[str, Any]) -> None:
    """The parsed template must still be ``SELECT * FROM instances WHERE <expr>``."""
    node = statement["node"]
    star = node.get("select_list") or []
    source = node.get("from_table") or {}
    plain = (
        node.get("type") == "SELECT_NODE"
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and len(star) == 1
        and star[0].get("class") == "STAR"
        and not star[0].get("exclude_list")
        and not star[0].get("replace_list")
        and not star[0].get("rename_list")
        and not star[0].get("expr")
        and source.get("type") == "BASE_TABLE"
        and source.get("table_name") == "instances"
        and not source.get("alias")
        and not source.get("schema_name")
        and not source.get("catalog_name")
        and not source.get("sample")
        and node.get("where_clause") is not None
        and not node.get("group_expressions")
        and not node.get("group_sets")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
    )
    if not plain:
        raise UnsafeClause(
            "the WHERE clause must be one boolean expression; it may not close the "
            "parenthesis around it or add ORDER BY, LIMIT, GROUP BY, UNION or a second query"
        )


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the parse tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_node(node: dict[str, Any]) -> None:
    kind = node.get("type")
    cls = node.get("class")
    if cls == "PARAMETER" or kind == "VALUE_PARAMETER":
        raise UnsafeClause("the WHERE clause may not contain parameters (? or $1)")
    if cls == "FUNCTION" or kind == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name in DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES):
            raise UnsafeClause(f"the WHERE clause may not call {name}()")
        if node.get("schema") or node.get("catalog"):
            raise UnsafeClause("the WHERE clause may not call schema-qualified functions")
    # FROM items inside subqueries: they carry a "sample" key, expressions do not.
    if "sample" in node and "alias" in node and kind not in (None, "SELECT_NODE"):
        if kind not in _ALLOWED_TABLE_REFS:
            raise UnsafeClause(f"the WHERE clause may not read from a {kind} item")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if node.get("schema_name") or node.get("catalog_name") or name not in ALLOWED_TABLES:
                allowed = ", ".join(sorted(ALLOWED_TABLES))
                raise UnsafeClause(
                    f"the WHERE clause may only read the lake's views ({allowed}), not {name!r}"
                )
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise UnsafeClause(
                    f"the WHERE clause may not call the table function {name}(); only "
                    + ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
                )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
