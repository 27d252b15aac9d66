"""Row hashes computed alike in the source's SQL and in DuckDB over the lake's Arrow data.

A row's hash is the MD5 of its columns' canonical texts (NULL as chr(30),
columns joined by chr(31)), cut to 60 bits so that every engine holds it in a
signed 64-bit integer. A table's (or partition's) checksum is the count of its
rows and the exact sum of their hashes: order-independent, and computed in the
source database by one query.

Canonical text per column family (columns.ColumnPlan.kind), the same in every engine:
int and decimal as the engine prints them (scale kept: '12.50'); float from the
shortest text of its double value, rounded to 6 decimal places (15 significant
digits in scientific notation from 1e28; on MySQL such huge floats do not match);
bool '1'/'0'; date 'YYYY-MM-DD'; timestamp 'YYYY-MM-DD HH:MM:SS.ffffff' (in UTC when zoned);
time and duration as
microseconds; binary as lower-case hex; list as its elements' texts joined by
',' (NULL elements chr(30)); string as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resources.sql_columns import FLOAT_DECIMALS, HASH_HEX_DIGITS, ColumnPlan

FLOAT_SCIENTIFIC = "1e28"  # from here on floats hash as 15 significant digits in scientific notation


def _pg(plan: ColumnPlan) -> str:
    e = plan.select
    kind = plan.kind
    if kind in ("int", "decimal", "duration"):
        return f"({e})::text"
    if kind == "float":
        # Via the shortest text of the value as a double, which every engine prints alike.
        return (
            f"CASE WHEN abs(({e})::float8) >= {FLOAT_SCIENTIFIC} THEN ltrim(to_char(({e})::float8,"
            f" '9.99999999999999EEEE')) ELSE round((({e})::float8::text)::numeric, {FLOAT_DECIMALS})::text"
            " END"
        )
    if kind == "bool":
        return f"CASE WHEN ({e}) IS NULL THEN NULL WHEN ({e}) THEN '1' ELSE '0' END"
    if kind == "date":
        return f"to_char({e}, 'YYYY-MM-DD')"
    if kind == "timestamp":
        zoned = getattr(plan.arrow, "tz", None)
        value = f"({e}) AT TIME ZONE 'UTC'" if zoned else e
        return f"to_char({value}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if kind == "time":
        return f"(extract(epoch from {e}) * 1000000)::bigint::text"
    if kind == "binary":
        return f"encode({e}, 'hex')"
    if kind == "list":
        return f"array_to_string({e}, ',', chr(30))"
    if plan.source_type.startswith("character(") or plan.source_type == "character":
        # The server prints character(n) padded, as it was read; a text cast would trim it.
        return f"CASE WHEN ({e}) IS NULL THEN NULL ELSE format('%s', {e}) END"
    return f"({e})::text"


def _mysql(plan: ColumnPlan) -> str:
    e = plan.select
    kind = plan.kind
    if kind in ("int", "decimal"):
        return f"CAST({e} AS CHAR)"
    if kind == "float":
        # Huge values (>= 1e28) keep MySQL's own text, which the lake's hash does not reproduce.
        exact = f"CAST(CAST(CAST({e} AS DOUBLE) AS CHAR) AS DECIMAL(65, 10))"
        fixed = f"CAST({exact} AS DECIMAL(65, {FLOAT_DECIMALS}))"
        return f"CAST(IF(ABS({e}) >= {FLOAT_SCIENTIFIC}, CAST({e} AS CHAR), {fixed}) AS CHAR)"
    if kind == "bool":
        return f"CASE WHEN ({e}) IS NULL THEN NULL WHEN ({e}) THEN '1' ELSE '0' END"
    if kind == "date":
        return f"DATE_FORMAT({e}, '%Y-%m-%d')"
    if kind == "timestamp":  # TIMESTAMP columns are read in a UTC session
        return f"DATE_FORMAT({e}, '%Y-%m-%d %H:%i:%s.%f')"
    if kind == "duration":  # TIME: signed, microseconds kept
        magnitude = f"(HOUR({e}) * 3600 + MINUTE({e}) * 60 + SECOND({e})) * 1000000 + MICROSECOND({e})"
        return f"CAST(IF({e} < 0, -1, 1) * ({magnitude}) AS CHAR)"
    if kind == "binary":
        return f"LOWER(HEX({e}))"
    return f"CAST({e} AS CHAR)"


def _oracle(plan: ColumnPlan) -> str:
    e = plan.select
    kind = plan.kind
    if kind in ("int", "decimal"):
        return f"TO_CHAR({e}, 'TM9')"
    if kind == "float":
        return f"TO_CHAR(ROUND({e}, {FLOAT_DECIMALS}), 'FM99999999999999999999999999990.000000')"
    if kind == "bool":
        return f"CASE WHEN {e} IS NULL THEN NULL WHEN {e} <> 0 THEN '1' ELSE '0' END"
    if kind == "date":
        return f"TO_CHAR({e}, 'YYYY-MM-DD')"
    if kind == "timestamp":
        return f"TO_CHAR(CAST({e} AS TIMESTAMP), 'YYYY-MM-DD HH24:MI:SS.FF6')"
    if kind == "duration":
        return (
            f"TO_CHAR(EXTRACT(DAY FROM {e}) * 86400000000 + EXTRACT(HOUR FROM {e}) * 3600000000"
            f" + EXTRACT(MINUTE FROM {e}) * 60000000 + EXTRACT(SECOND FROM {e}) * 1000000)"
        )
    if kind == "binary":
        return f"LOWER(RAWTOHEX({e}))"
    return f"TO_CHAR({e})"


def source_canon(dialect: str, plan: ColumnPlan) -> str:
    """The column's canonical text in the source's SQL (NULL stays NULL)."""
    if dialect == "postgresql":
        return _pg(plan)
    if dialect in ("mysql", "mariadb"):
        return _mysql(plan)
    if dialect == "oracle":
        return _oracle(plan)
    raise ValueError(f"no row hash for dialect {dialect!r}")


def source_row_hash(dialect: str, columns: Sequence[ColumnPlan]) -> str:
    """A SQL expression for the row's 60-bit hash, in the source's dialect."""
    if dialect == "postgresql":
        parts = ", ".join(f"coalesce({_pg(c)}, chr(30))" for c in columns)
        return f"('x' || substr(md5(concat_ws(chr(31), {parts})), 1, {HASH_HEX_DIGITS}))::bit(60)::bigint"
    if dialect in ("mysql", "mariadb"):
        parts = ", ".join(f"COALESCE({_mysql(c)}, CHAR(30 USING utf8mb4))" for c in columns)
        digest = f"MD5(CONCAT_WS(CHAR(31 USING utf8mb4), {parts}))"
        return f"CAST(CONV(SUBSTR({digest}, 1, {HASH_HEX_DIGITS}), 16, 10) AS SIGNED)"
    if dialect == "oracle":
        parts = " || CHR(31) || ".join(f"NVL({_oracle(c)}, CHR(30))" for c in columns)
        digest = f"RAWTOHEX(STANDARD_HASH({parts}, 'MD5'))"
        return f"TO_NUMBER(SUBSTR({digest}, 1, {HASH_HEX_DIGITS}), 'XXXXXXXXXXXXXXX')"
    raise ValueError(f"no row hash for dialect {dialect!r}")


def lake_canon(plan: ColumnPlan, column: str) -> str:
    """The column's canonical text in DuckDB, over Arrow data of the plan's type.

    `column` is the quoted DuckDB column. DuckDB must run with TimeZone 'UTC'
    (see `duckdb_session`).
    """
    c = column
    kind = plan.kind
    if kind in ("int", "decimal"):
        return f"CAST({c} AS VARCHAR)"
    if kind == "float":
        value = f"CAST({c} AS DOUBLE)"
        fixed = f"round(CAST(CAST({value} AS VARCHAR) AS DECIMAL(38, 10)), {FLOAT_DECIMALS})"
        return (
            f"CASE WHEN abs({value}) >= {FLOAT_SCIENTIFIC} THEN printf('%.14e', {value})"
            f" ELSE CAST(CAST({fixed} AS DECIMAL(38, {FLOAT_DECIMALS})) AS VARCHAR) END"
        )
    if kind == "bool":
        return f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} THEN '1' ELSE '0' END"
    if kind == "date":
        return f"strftime({c}, '%Y-%m-%d')"
    if kind == "timestamp":
        return f"strftime({c}, '%Y-%m-%d %H:%M:%S.%f')"
    if kind == "time":
        return f"CAST(epoch_us({c}) AS VARCHAR)"
    if kind == "duration":  # Arrow durations arrive in DuckDB as INTERVAL
        return f"CAST(epoch_us({c}) AS VARCHAR)"
    if kind == "binary":
        return f"lower(hex({c}))"
    if kind == "list":
        return f"array_to_string(list_transform({c}, lambda x: coalesce(CAST(x AS VARCHAR), chr(30))), ',')"
    return f"CAST({c} AS VARCHAR)"


def lake_row_hash(columns: Sequence[ColumnPlan]) -> str:
    """A DuckDB expression for the row's 60-bit hash (equal to source_row_hash's for equal rows)."""
    from resources.warehouse.sql import quote_identifier

    parts = ", ".join(f"coalesce({lake_canon(c, quote_identifier(c.name))}, chr(30))" for c in columns)
    return f"CAST('0x' || substr(md5(concat_ws(chr(31), {parts})), 1, {HASH_HEX_DIGITS}) AS BIGINT)"


def duckdb_session(memory_limit: str = "512MB", temp_directory: str | None = None) -> Any:
    """A DuckDB connection for hashing and diffs: UTC, bounded memory, spilling to disk."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_directory:
        con.execute(f"SET temp_directory = '{temp_directory}'")
    con.execute("SET preserve_insertion_order = false")
    return con
