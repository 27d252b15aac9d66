"""Warehouse SQL, written once in DuckDB's dialect and transpiled for BigQuery.

Pure functions: nothing here touches an engine. Identifiers are validated
before they are quoted, so a name can never carry SQL into a statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

SOURCE_DIALECT = "duckdb"

# Letters, digits and underscores, not starting with a digit: what BigQuery
# allows for dataset, table and column names, and safe to quote in any engine.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The first part of a three-part name is a BigQuery project (or a DuckDB catalog);
# project ids may contain hyphens.
_PROJECT = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return name if it is a plain identifier, else raise ValueError naming it."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits and underscores, not starting with a digit"
        )
    return name


def table_parts(table: str) -> tuple[str, ...]:
    """Split and validate `table`, `dataset.table` or `project.dataset.table`."""
    parts = tuple(table.split(".")) if isinstance(table, str) else ()
    if not 1 <= len(parts) <= 3:
        raise ValueError(
            f"invalid table name {table!r}: expected table, dataset.table or project.dataset.table"
        )
    if len(parts) == 3 and not _PROJECT.fullmatch(parts[0]):
        raise ValueError(f"invalid table name {table!r}: bad project {parts[0]!r}")
    for part in parts[-2:]:
        if not _IDENTIFIER.fullmatch(part):
            raise ValueError(f"invalid table name {table!r}: {part!r} is not letters, digits and underscores")
    return parts


def quote_identifier(name: str) -> str:
    """A validated identifier, double-quoted (DuckDB; transpiles to backticks)."""
    return f'"{check_identifier(name, "column name")}"'


def quote_table(table: str) -> str:
    """A validated, possibly qualified table name, each part double-quoted."""
    return ".".join(f'"{part}"' for part in table_parts(table))


def to_dialect(sql: str, dialect: str) -> str:
    """Transpile DuckDB-dialect SQL (one or more statements) to `dialect`.

    DuckDB SQL is returned unchanged, so the local engine runs exactly what
    was written. Constructs sqlglot cannot translate are logged by sqlglot as
    warnings (for example DuckDB's NULLS LAST default in window ORDER BY).
    """
    import sqlglot  # lazy: only needed when SQL actually goes to an engine

    target = sqlglot.Dialect.get_or_raise(dialect)  # ValueError for an unknown dialect
    if target == SOURCE_DIALECT:
        return sql
    statements = sqlglot.transpile(sql, read=SOURCE_DIALECT, write=target)
    return ";\n".join(s for s in statements if s)


def merge_sql(
    target: str,
    staging: str,
    keys: Sequence[str],
    columns: Sequence[str],
    delete_column: str | None = None,
) -> str:
    """One MERGE statement (DuckDB dialect) upserting `staging` into `target` by `keys`.

    `columns` are the columns written to the target; keys are always inserted
    and never updated. `delete_column` is a boolean control column of the
    staging table: a matched row with it true is deleted, an unmatched one is
    not inserted, and it is never written to the target. Staging must hold at
    most one row per key (engines reject or mis-apply several).
    """
    if not keys:
        raise ValueError("merge needs at least one key column")
    key_list = _unique(check_identifier(k, "key column") for k in keys)
    column_list = _unique(check_identifier(c, "column name") for c in columns)
    if delete_column is not None:
        check_identifier(delete_column, "delete column")
        if delete_column in key_list:
            raise ValueError(f"delete column {delete_column!r} cannot also be a key")
    written = key_list + [c for c in column_list if c not in key_list and c != delete_column]
    updated = [c for c in written if c not in key_list]

    on = " AND ".join(f"t.{quote_identifier(k)} = s.{quote_identifier(k)}" for k in key_list)
    lines = [f"MERGE INTO {quote_table(target)} AS t", f"USING {quote_table(staging)} AS s", f"ON {on}"]
    flag = quote_identifier(delete_column) if delete_column is not None else None
    if flag:
        lines.append(f"WHEN MATCHED AND s.{flag} THEN DELETE")
    if updated:
        assignments = ", ".join(f"{quote_identifier(c)} = s.{quote_identifier(c)}" for c in updated)
        lines.append(f"WHEN MATCHED THEN UPDATE SET {assignments}")
    insert_columns = ", ".join(quote_identifier(c) for c in written)
    insert_values = ", ".join(f"s.{quote_identifier(c)}" for c in written)
    condition = f" AND NOT s.{flag}" if flag else ""
    lines.append(f"WHEN NOT MATCHED{condition} THEN INSERT ({insert_columns}) VALUES ({insert_values})")
    return "\n".join(lines)


def _unique(names: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen
