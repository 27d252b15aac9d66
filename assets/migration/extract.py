"""Read a source table as a stream of Arrow record batches, with bounded memory.

PostgreSQL goes through ADBC (COPY in binary, decoded in C++); MariaDB, MySQL
and Oracle through SqlSource's server-side cursor. Large tables can be read as
several primary-key ranges in parallel threads that feed one bounded queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from resources.sql_columns import TablePlan
from resources.sql_source import SqlSource

if TYPE_CHECKING:
    import pyarrow as pa

_DONE = object()


def table_ref(table: str | TablePlan) -> Any:
    """A SQLAlchemy reference to a registry table name ('table' or 'schema.table')."""
    import sqlalchemy as sa

    if isinstance(table, TablePlan):
        table = table.table
    schema, _, name = table.rpartition(".")
    return sa.table(name, schema=schema or None)


def select_sql(source: SqlSource, table: str | TablePlan, where: Sequence[Any] = ()) -> str:
    """SELECT <columns> FROM table WHERE ..., rendered for the source's dialect with literal values.

    With a TablePlan, each planned column is read by its own expression under its name;
    with a plain name, every column as the driver gives it.
    """
    import sqlalchemy as sa

    if isinstance(table, TablePlan):
        columns: list[Any] = [sa.literal_column(c.select).label(c.name) for c in table.columns]
        stmt = sa.select(*columns).select_from(table_ref(table))
    else:
        stmt = sa.select(sa.text("*")).select_from(table_ref(table))
    for clause in where:
        stmt = stmt.where(clause)
    dialect = source.engine().dialect
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    # The text as the server must receive it: SQLAlchemy doubles '%' for drivers with a format
    # paramstyle, but ADBC sends the text as it is and SqlSource's text() escapes it again.
    return sql.replace("%%", "%") if dialect.paramstyle in ("format", "pyformat") else sql


def _numeric_type(field: pa.Field) -> pa.DataType:
    """PostgreSQL NUMERIC(p, s) from the typmod ADBC reports; unconstrained NUMERIC as (38, 9)."""
    import pyarrow as pa

    typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
    if typmod < 4:
        return pa.decimal128(38, 9)
    return pa.decimal128(((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF)


def normalize(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Plain Arrow types without driver metadata (ADBC hands NUMERIC over as an opaque string)."""
    import pyarrow as pa

    columns, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(field.type, pa.ExtensionType) or isinstance(column, pa.ExtensionArray):
            target = _numeric_type(field) if "numeric" in str(field.type) else pa.string()
            column = column.storage.cast(target)
        columns.append(column)
        fields.append(pa.field(field.name, column.type))
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


# The driver cuts a batch once it has read this many bytes of COPY data: batch_rows at ~100
# bytes a row, but at most 4 MiB. Every reader holds a batch or two and the queue a few more,
# so batch size is the read side's memory; the driver's CPU is the same from 3 MB to 14 MB.
_MAX_BATCH_BYTES = 4 << 20


def _hint_bytes(batch_rows: int) -> int:
    return max(1 << 20, min(batch_rows * 100, _MAX_BATCH_BYTES))


def _adbc_batches(source: SqlSource, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    # ADBC's low-level API, not its DB-API module: that one imports pyarrow.dataset and with
    # it pandas, about 1 s of CPU and 50 MB of every process that reads PostgreSQL.
    import adbc_driver_manager as adbc
    import adbc_driver_postgresql
    import pyarrow as pa
    from sqlalchemy.engine import make_url

    uri = make_url(source.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with (
        adbc_driver_postgresql.connect(uri) as database,
        adbc.AdbcConnection(database) as conn,
        adbc.AdbcStatement(conn) as statement,
    ):
        statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_hint_bytes(batch_rows))})
        statement.set_sql_query(sql)
        handle, _ = statement.execute_query()
        with pa.RecordBatchReader.from_stream(handle) as reader:  # released before the statement
            for batch in reader:
                yield normalize(batch)


def stream(source: SqlSource, sql: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    if source.dialect_name == "postgresql":
        yield from _adbc_batches(source, sql, batch_rows)
    else:
        yield from source.stream_batches(sql, batch_rows=batch_rows)


def key_ranges(
    source: SqlSource, table: str | TablePlan, column: str, parts: int, where: Sequence[Any] = ()
) -> list[Any]:
    """Range predicates splitting table on an integer column into `parts` (at least one)."""
    import sqlalchemy as sa

    col: Any = sa.column(column)
    stmt = sa.select(sa.func.min(col), sa.func.max(col)).select_from(table_ref(table))
    for clause in where:
        stmt = stmt.where(clause)
    with source.engine().connect() as conn:
        low, high = conn.execute(stmt).one()
    if low is None or parts <= 1 or not isinstance(low, int):
        return [sa.true()]
    step = max(1, -(-(high - low + 1) // parts))
    bounds = [*range(low, high + 1, step), high + 1]
    return [sa.and_(col >= lo, col < hi) for lo, hi in itertools.pairwise(bounds)]


# PostgreSQL NUMERIC(p, s) up to 18 digits travels as bigint: value * 10^s, exact, since the
# column holds at most p digits with s of them after the point. ADBC would hand NUMERIC over
# as text, decoded to text in the driver and parsed again here: on a 10-column table with one
# NUMERIC(12,2) that was half of the client's CPU for the whole read.
_SCALED_MAX_PRECISION = 18


def _transport(source: SqlSource, table: str | TablePlan) -> tuple[str | TablePlan, dict[str, Any]]:
    """The plan as read over the wire, and the decimal types of the columns read scaled."""
    import dataclasses

    import pyarrow as pa

    if not isinstance(table, TablePlan) or source.dialect_name != "postgresql":
        return table, {}
    columns, scaled = [], {}
    for column in table.columns:
        t = column.arrow
        if pa.types.is_decimal128(t) and 0 <= t.scale <= t.precision <= _SCALED_MAX_PRECISION:
            factor = f" * 1{'0' * t.scale}" if t.scale else ""
            column = dataclasses.replace(
                column, select=f"(({column.select}){factor})::int8", arrow=pa.int64()
            )
            scaled[column.name] = t
        columns.append(column)
    return dataclasses.replace(table, columns=columns), scaled


def _unscale(batch: pa.RecordBatch, scaled: dict[str, Any]) -> pa.RecordBatch:
    """Scaled bigint columns back to their decimal128(p, s): the same integer, read with scale s."""
    import pyarrow as pa

    if not scaled:
        return batch
    columns, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        target = scaled.get(field.name)
        if target is not None:
            wide = column.cast(pa.decimal128(19, 0))  # every int64 fits; a 16-byte integer
            column = pa.Array.from_buffers(target, len(wide), wide.buffers(), wide.null_count, wide.offset)
            field = pa.field(field.name, target)
        columns.append(column)
        fields.append(field)
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


def read_table(
    source: SqlSource,
    table: str | TablePlan,
    *,
    where: Sequence[Any] = (),
    batch_rows: int = 50_000,
    parallel: int = 1,
    split_column: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every row of table matching where, as batches; `parallel` readers split on split_column."""
    wire, scaled = _transport(source, table)
    if parallel <= 1 or split_column is None:
        for batch in stream(source, select_sql(source, wire, where), batch_rows):
            yield _unscale(batch, scaled)
        return
    ranges = key_ranges(source, table, split_column, parallel, where)
    sqls = [select_sql(source, wire, [*where, r]) for r in ranges]
    for batch in read_sqls(source, sqls, batch_rows):
        yield _unscale(batch, scaled)


def read_sqls(source: SqlSource, sqls: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of several SELECTs, read at once (one thread and connection each) into one
    stream, in no particular order."""
    if len(sqls) == 1:
        yield from stream(source, sqls[0], batch_rows)
        return
    # Bounded: a reader blocks once a batch of its own waits, so memory stays flat.
    buffer: queue.Queue = queue.Queue(maxsize=len(sqls))
    stop = threading.Event()

    def reader(sql: str) -> None:
        try:
            for batch in stream(source, sql, batch_rows):
                while not stop.is_set():
                    try:
                        buffer.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(exc)

    threads = [threading.Thread(target=reader, args=(sql,), daemon=True) for sql in sqls]
    for thread in threads:
        thread.start()
    finished = 0
    try:
        while finished < len(threads):
            item = buffer.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        while True:  # unblock readers waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                break
        for thread in threads:
            thread.join(timeout=5)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to the table's schema (column by name), naming the column that does not fit."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        column = batch.column(field.name)
        try:
            arrays.append(column if column.type == field.type else column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TypeError(
                f"column {field.name!r}: cannot read {column.type} as {field.type}: {exc}"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
