"""The warehouse interface: DuckDB on this machine, BigQuery in production.

SQL handed to a warehouse is written in DuckDB's dialect; the BigQuery
implementation transpiles it (resources.warehouse.sql), so assets hold one
version of every query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg

from resources.warehouse.sql import check_identifier

if TYPE_CHECKING:
    import pyarrow as pa

LoadMode = Literal["append", "replace"]


class Warehouse(dg.ConfigurableResource, ABC):
    """A SQL warehouse that takes and returns Arrow tables."""

    @property
    @abstractmethod
    def dialect(self) -> str:
        """The engine's sqlglot dialect name."""

    @abstractmethod
    def query(self, sql: str) -> pa.Table:
        """Run a DuckDB-dialect query and return its result."""

    @abstractmethod
    def execute(self, sql: str) -> None:
        """Run DuckDB-dialect statements for their effect."""

    @abstractmethod
    def table_exists(self, table: str) -> bool: ...

    @abstractmethod
    def load(self, table: str, data: pa.Table, mode: LoadMode = "append", job_id: str | None = None) -> int:
        """Append data to table, or replace its contents (and schema); create it if missing.

        `job_id` names the load so the engine runs it at most once (BigQuery
        load job ids; see resources.ledger); engines with transactions ignore
        it and rely on the ledger row committed with the load. Returns the
        number of rows loaded.
        """

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """An object with query/execute/load/merge/replace_where whose effects commit together.

        This default runs each operation on its own (BigQuery: a load job is
        not part of a multi-statement transaction), so callers make each step
        idempotent; DuckDB overrides it with one real transaction.
        """
        yield self

    @contextmanager
    def transactions(self) -> Iterator[Callable[[], AbstractContextManager[Any]]]:
        """A factory of transactions that share one connection while this context is open.

        For many short transactions in a row (a CDC pass over every table): DuckDB takes its
        file lock per connection, so one connection costs one lock and one catalog load instead
        of one per transaction. This default opens each transaction on its own.
        """
        yield self.transaction

    def replace_where(self, table: str, data: pa.Table, predicate: str) -> int:
        """Replace the rows matching a DuckDB-dialect predicate (a partition) with data.

        This default deletes then appends; engines with transactions override it
        so readers never see the partition empty.
        """
        if self.table_exists(table):
            self.execute(f"DELETE FROM {table} WHERE {predicate}")
        return self.load(table, data, "append")

    @abstractmethod
    def merge(
        self, table: str, data: pa.Table, keys: list[str], delete_column: str | None = None
    ) -> dict[str, int]:
        """Upsert data into table by keys; rows whose delete_column is true delete their key.

        Rows sharing a key are reduced to the last one in input order, so a
        batch of changes lands as its final state. The delete column is a
        control column and is not stored. The table is created from the
        data's schema if missing. Returns counts ("inserted", "updated",
        "deleted") as far as the engine reports them.
        """


def merge_batch(data: pa.Table, keys: list[str], delete_column: str | None = None) -> pa.Table:
    """The rows a merge applies: one per key (the last in input order), in input order.

    Null keys are refused: they never match in a MERGE, so every load would
    insert them again. A null or integer delete flag becomes a boolean (null
    means not deleted), so the MERGE's `NOT flag` behaves in every engine.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not keys:
        raise ValueError("merge needs at least one key column")
    for name in [*keys, *([delete_column] if delete_column else [])]:
        check_identifier(name, "column name")
        if name not in data.column_names:
            raise ValueError(f"column {name!r} is not in the data (columns: {data.column_names})")
    for key in keys:
        if data.column(key).null_count:
            raise ValueError(f"key column {key!r} has {data.column(key).null_count} null values")

    if delete_column:
        flag = pc.fill_null(pc.cast(data.column(delete_column), pa.bool_()), False)
        data = data.set_column(data.column_names.index(delete_column), delete_column, flag)

    if data.num_rows == 0:
        return data
    position = "__merge_position"
    while position in data.column_names:
        position += "_"
    numbered = data.append_column(position, pa.array(range(data.num_rows), pa.int64()))
    last = numbered.group_by(keys, use_threads=False).aggregate([(position, "max")])[f"{position}_max"]
    # Each key's last position, ascending: the surviving rows keep their input order.
    return data.take(pc.take(last, pc.array_sort_indices(last)))
