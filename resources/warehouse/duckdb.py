"""The warehouse in a local DuckDB file (the embedded default for BigQuery)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resources import settings
from resources.warehouse.base import LoadMode, Warehouse, merge_batch
from resources.warehouse.sql import merge_sql, quote_identifier, quote_table, table_parts

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


_CONNECT_LOCK = threading.Lock()


class DuckDBWarehouse(Warehouse):
    """A DuckDB database file; `path` defaults to settings.warehouse_path() (read at use time).

    Every operation opens and closes its own connection: DuckDB lets one
    process write a file at a time, and Dagster runs are separate processes,
    so nobody keeps the lock longer than one operation. A process that finds
    the file locked retries for up to `lock_timeout` seconds.
    """

    path: str | None = None
    lock_timeout: float = 60.0

    @property
    def dialect(self) -> str:
        return "duckdb"

    def database_path(self) -> Path:
        return Path(self.path) if self.path else settings.warehouse_path()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        import duckdb  # lazy: keeps duckdb out of the code location's import

        path = self.database_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                # Threads of one process (a code server evaluating sensors) share DuckDB's database
                # instance; two first connects racing for it fail with "Unique file handle conflict".
                with _CONNECT_LOCK:
                    con = duckdb.connect(str(path))
                break
            except duckdb.Error as exc:  # IOException (a lock) and file handle conflicts
                # Another process holds the write lock; it lets go when its operation ends.
                text = str(exc).lower()
                if (
                    "lock" not in text and "file handle conflict" not in text
                ) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                # Capped low: a draining CDC load frees the lock for a second between passes,
                # and a waiter polling once a second could miss that gap pass after pass.
                delay = min(delay * 2, 0.2)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    # --- SQL ---------------------------------------------------------------
    def query(self, sql: str) -> pa.Table:
        import pyarrow as pa

        with self.connect() as con:
            # con.sql gives a relation whose Arrow output needs no extra copy
            # (DuckDB warns about Arrow from a DB-API cursor).
            relation = con.sql(sql)
            return relation.to_arrow_table() if relation is not None else pa.table({})

    def execute(self, sql: str) -> None:
        with self.connect() as con:
            con.execute(sql)

    def table_exists(self, table: str) -> bool:
        table_parts(table)  # refuse a bad name before looking
        if not self.database_path().exists():
            return False  # don't create a database file just to look into it
        with self.connect() as con:
            return _table_exists(con, table)

    # --- loading -----------------------------------------------------------
    def load(self, table: str, data: pa.Table, mode: LoadMode = "append", job_id: str | None = None) -> int:
        table_parts(table)  # refuse a bad name before a database file is created
        with self._transaction() as con:
            return _load(con, table, data, mode)

    def replace_where(self, table: str, data: pa.Table, predicate: str) -> int:
        table_parts(table)
        with self._transaction() as con:  # one transaction: the partition is never seen empty
            return _replace_where(con, table, data, predicate)

    def merge(
        self, table: str, data: pa.Table, keys: list[str], delete_column: str | None = None
    ) -> dict[str, int]:
        batch = merge_batch(data, keys, delete_column)
        merge_sql(table, "staging", keys, batch.column_names, delete_column)  # validates every name first
        with self._transaction() as con:
            return _merge_prepared(con, table, batch, keys, delete_column)

    @contextmanager
    def transaction(self) -> Iterator[DuckDBSession]:
        """Several operations on one connection, committed together or not at all."""
        with self._transaction() as con:
            yield DuckDBSession(con)

    @contextmanager
    def transactions(self) -> Iterator[Callable[[], AbstractContextManager[DuckDBSession]]]:
        """Transactions one after another on one connection (one lock, one catalog load)."""
        with self.connect() as con:

            @contextmanager
            def begin() -> Iterator[DuckDBSession]:
                con.begin()
                try:
                    yield DuckDBSession(con)
                except BaseException:
                    con.rollback()
                    raise
                con.commit()

            yield begin

    @staticmethod
    def _ensure_schema(con: Any, table: str) -> None:
        parts = table_parts(table)
        if len(parts) > 1:
            schema = ".".join(f'"{part}"' for part in parts[:-1])  # parts are validated
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")


class DuckDBSession:
    """The warehouse operations, inside one open transaction (see DuckDBWarehouse.transaction)."""

    dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def query(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def table_exists(self, table: str) -> bool:
        return _table_exists(self.con, table)

    def execute(self, sql: str) -> None:
        self.con.execute(sql)

    def load(self, table: str, data: pa.Table, mode: LoadMode = "append", job_id: str | None = None) -> int:
        return _load(self.con, table, data, mode)

    def replace_where(self, table: str, data: pa.Table, predicate: str) -> int:
        return _replace_where(self.con, table, data, predicate)

    def merge(
        self, table: str, data: pa.Table, keys: list[str], delete_column: str | None = None
    ) -> dict[str, int]:
        return _merge(self.con, table, data, keys, delete_column)


def _ensure_schema(con: Any, table: str) -> None:
    parts = table_parts(table)
    if len(parts) > 1:
        schema = ".".join(f'"{part}"' for part in parts[:-1])  # parts are validated
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")


def _load(con: Any, table: str, data: pa.Table, mode: LoadMode) -> int:
    if mode not in ("append", "replace"):
        raise ValueError(f"load mode must be 'append' or 'replace', not {mode!r}")
    target = quote_table(table)
    _ensure_schema(con, table)
    incoming = _register(con, data)
    if mode == "replace":
        con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {incoming}")
    else:
        con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM {incoming} LIMIT 0")
        # BY NAME: columns match by name, so column order in the batch doesn't matter.
        con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {incoming}")
    return data.num_rows


def _replace_where(con: Any, table: str, data: pa.Table, predicate: str) -> int:
    target = quote_table(table)
    _ensure_schema(con, table)
    incoming = _register(con, data)
    con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM {incoming} LIMIT 0")
    con.execute(f"DELETE FROM {target} WHERE {predicate}")
    con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {incoming}")
    return data.num_rows


def _merge(
    con: Any, table: str, data: pa.Table, keys: list[str], delete_column: str | None
) -> dict[str, int]:
    return _merge_prepared(con, table, merge_batch(data, keys, delete_column), keys, delete_column)


def _merge_prepared(
    con: Any, table: str, batch: pa.Table, keys: list[str], delete_column: str | None
) -> dict[str, int]:
    """MERGE a batch that merge_batch already reduced to one row per key."""
    import pyarrow.compute as pc

    columns = [c for c in batch.column_names if c != delete_column]
    staging = _fresh_name()
    statement = merge_sql(table, staging, keys, columns, delete_column)  # validates every name first
    target = quote_table(table)
    select = ", ".join(quote_identifier(c) for c in columns)
    _ensure_schema(con, table)
    con.register(staging, batch)
    con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT {select} FROM {staging} LIMIT 0")
    # RETURNING merge_action gives one row per row the MERGE touched: exact counts.
    actions = con.sql(f"{statement}\nRETURNING merge_action").to_arrow_table()["merge_action"]
    counts = {"inserted": 0, "updated": 0, "deleted": 0}
    names = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}
    for entry in pc.value_counts(actions).to_pylist():
        counts[names[entry["values"]]] += entry["counts"]
    return counts


def _fresh_name() -> str:
    return f"_incoming_{uuid.uuid4().hex}"


def _register(con: Any, data: pa.Table) -> str:
    """Expose an Arrow table to this connection under a fresh name (a temporary view)."""
    name = _fresh_name()
    con.register(name, data)
    return name


def _table_exists(con: Any, table: str) -> bool:
    parts = table_parts(table)
    schema = parts[-2] if len(parts) > 1 else None
    catalog = parts[0] if len(parts) == 3 else None
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE lower(table_name) = lower($table)"
        " AND lower(table_schema) = lower(coalesce($schema, current_schema()))"
        " AND lower(table_catalog) = lower(coalesce($catalog, current_database()))",
        {"table": parts[-1], "schema": schema, "catalog": catalog},
    ).fetchall()  # all of it: a half-read result blocks the connection's next statement
    return bool(row and row[0][0])
