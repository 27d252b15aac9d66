"""Preflight: a registry entry checked against the live source schema before any data moves.

The table must exist; its key, watermark, partition, selected, excluded and
overridden columns must exist; every column read must have a type mapping
(columns.py). The result is the table's read plan: which columns, read how,
landing as which Arrow types. Errors name the registry file, the table and
the column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resources.sql_columns import TablePlan, UnsupportedColumn, describe, plan_column

if TYPE_CHECKING:
    from assets.migration.registry import TableSpec
    from resources.sql_source import SqlSource


class PreflightError(ValueError):
    """The registry entry does not fit the live source; names file, table and column."""


def plan_table(db: SqlSource, spec: TableSpec, registry_file: str = "the migration registry") -> TablePlan:
    """The table's read plan, after checking its registry entry against the source's catalog."""
    where = f"{registry_file}: table {spec.name!r} (source table {spec.source_table!r} in {db.safe_url()})"
    live = describe(db, spec.source_table)
    if not live:
        raise PreflightError(f"{where}: the source table does not exist")
    by_name = {c.name: c for c in live}
    named = {
        "primary_key": spec.primary_key,
        "watermark_column": [spec.watermark_column] if spec.watermark_column else [],
        "partition_column": [spec.partition_column] if spec.partition_column else [],
        "select_columns": spec.select_columns,
        "exclude_columns": spec.exclude_columns,
        "columns": list(spec.columns),
        "pii": list(spec.pii),
    }
    for field, columns in named.items():
        missing = [c for c in columns if c not in by_name]
        if missing:
            raise PreflightError(
                f"{where}: {field} names column(s) {missing} that the source table does not have"
                f" (it has {sorted(by_name)})"
            )
    chosen = [c for c in live if (not spec.select_columns or c.name in spec.select_columns)]
    chosen = [c for c in chosen if c.name not in spec.exclude_columns]
    quote = db.engine().dialect.identifier_preparer.quote
    plans = []
    for column in chosen:
        rule = spec.columns.get(column.name)
        try:
            plans.append(
                plan_column(db.dialect_name, column, quote(column.name), rule.read_as if rule else None)
            )
        except UnsupportedColumn as exc:
            raise PreflightError(f"{where}: {exc}") from None
    return TablePlan(spec.source_table, db.dialect_name, plans)
