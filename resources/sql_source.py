"""A relational source (Oracle on-prem; PostgreSQL and MariaDB here) read through SQLAlchemy.

One code path for every dialect: plain SQL text in, Arrow record batches out,
read with a server-side cursor so memory stays bounded by the batch size
however large the table. Column types are inferred by pyarrow from the Python
values the driver returns. The URL carries the password, so only the masked
form (`safe_url()`) ever appears in messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Connection, Engine


class SqlSourceError(RuntimeError):
    """A connection or query failure; the message names the masked URL (and the SQL)."""


class SqlSource(dg.ConfigurableResource):
    """A database reached by a SQLAlchemy URL: postgresql+psycopg://, mysql+pymysql://, oracle+oracledb://."""

    url: str
    _engine: Any = PrivateAttr(default=None)

    def safe_url(self) -> str:
        """The URL with its password masked, for messages and logs."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            return "<unparsable SQLAlchemy URL>"  # never echo the raw string: it may hold the password

    def engine(self) -> Engine:
        """The resource's engine, created on first use."""
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            try:
                # pre_ping: a long asset run outlives idle connections the server or a firewall dropped.
                self._engine = create_engine(self.url, pool_pre_ping=True, connect_args=self._connect_args())
            except (ArgumentError, NoSuchModuleError) as exc:
                raise SqlSourceError(f"invalid source URL {self.safe_url()}: {exc}") from None
        return self._engine

    def _connect_args(self) -> dict[str, Any]:
        from sqlalchemy.engine import make_url

        if make_url(self.url).get_backend_name() in ("mysql", "mariadb"):
            # A UTC session: TIMESTAMP columns are read (and hashed) as their stored UTC instants,
            # whatever the server's or the account's time zone.
            return {"init_command": "SET time_zone = '+00:00'"}
        return {}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def dialect_name(self) -> str:
        """'postgresql', 'mysql' (also for MariaDB) or 'oracle'."""
        return self.engine().dialect.name

    # --- queries ------------------------------------------------------------
    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        with self._connect() as conn:
            try:
                return conn.execute(text(sql), params or {}).scalar()
            except SQLAlchemyError as exc:
                raise self._failure(sql, exc) from exc

    def stream_batches(
        self, sql: str, params: dict[str, Any] | None = None, batch_rows: int = 50_000
    ) -> Iterator[pa.RecordBatch]:
        """The result as Arrow record batches of at most `batch_rows` rows, fetched as they are consumed.

        No batch is yielded for an empty result. A column's type is inferred
        from its values; once known, later batches keep it (so a batch of
        only NULLs does not turn the column into type null).
        """
        with self._streaming(sql, params, batch_rows) as (names, partitions):
            types: list[pa.DataType | None] = [None] * len(names)
            for rows in partitions:
                yield _record_batch(names, rows, types)

    def read_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """The whole result as one table; an empty result gives the column names, typed null."""
        import pyarrow as pa

        with self._streaming(sql, params, 50_000) as (names, partitions):
            types: list[pa.DataType | None] = [None] * len(names)
            tables = [pa.Table.from_batches([_record_batch(names, rows, types)]) for rows in partitions]
        if not tables:
            return pa.table([pa.array([], type=pa.null()) for _ in names], names=names)
        # "permissive" unifies what per-batch inference can leave different:
        # a column that was all NULL in the first batch, a Decimal scale that grew.
        return pa.concat_tables(tables, promote_options="permissive")

    def table_row_count(self, table: str, schema: str | None = None) -> int:
        """COUNT(*) of a table; the names are quoted by the dialect as it requires."""
        preparer = self.engine().dialect.identifier_preparer
        # quote() quotes only when needed (reserved words, mixed case, odd characters),
        # so a plain lower-case name still matches Oracle's upper-case catalog names.
        name = preparer.quote(table)
        if schema:
            name = f"{preparer.quote_schema(schema)}.{name}"
        return int(self.scalar(f"SELECT COUNT(*) FROM {name}"))

    # --- plumbing -------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            conn = self.engine().connect()
        except SQLAlchemyError as exc:
            raise SqlSourceError(f"cannot connect to {self.safe_url()}: {_reason(exc)}") from exc
        with conn:
            yield conn

    @contextmanager
    def _streaming(
        self, sql: str, params: dict[str, Any] | None, batch_rows: int
    ) -> Iterator[tuple[list[str], Iterator[Sequence[Any]]]]:
        """Column names and an iterator of row lists, from a server-side cursor."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
        with self._connect() as conn:
            try:
                # yield_per = stream_results (a server-side cursor: psycopg named cursor,
                # PyMySQL SSCursor, oracledb's fetch-as-you-go) + max_row_buffer, so the
                # driver never holds more than one batch of rows.
                result = conn.execution_options(yield_per=batch_rows).execute(text(sql), params or {})
            except SQLAlchemyError as exc:
                raise self._failure(sql, exc) from exc
            try:
                yield list(result.keys()), result.partitions(batch_rows)
            except SQLAlchemyError as exc:
                raise self._failure(sql, exc) from exc
            except BaseException:
                # Abandoned midway (the consumer stopped or failed). PyMySQL would read
                # the rest of an unbuffered result before reusing the connection, which
                # for a large table takes as long as the full read: drop the connection,
                # and tell PyMySQL's pending result not to drain the closed socket.
                pending = getattr(result.cursor, "_result", None)
                conn.invalidate()
                if pending is not None and getattr(pending, "unbuffered_active", False):
                    pending.unbuffered_active = False
                raise

    def _failure(self, sql: str, exc: Exception) -> SqlSourceError:
        return SqlSourceError(f"query failed on {self.safe_url()}: {_reason(exc)}\nSQL: {sql.strip()}")


def _reason(exc: Exception) -> str:
    """The driver's own message, without SQLAlchemy's repeated SQL and help link."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip()


def _record_batch(names: list[str], rows: Sequence[Any], types: list[pa.DataType | None]) -> pa.RecordBatch:
    """One record batch from driver rows; `types` carries each column's type across batches."""
    import pyarrow as pa

    arrays = []
    for i, (name, values) in enumerate(zip(names, zip(*rows, strict=True), strict=True)):
        try:
            arrays.append(_column(list(values), types[i]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise SqlSourceError(f"column {name!r}: cannot convert to Arrow: {exc}") from exc
        if not pa.types.is_null(arrays[-1].type):
            types[i] = arrays[-1].type
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _column(values: list[Any], known: pa.DataType | None) -> pa.Array:
    import pyarrow as pa

    if known is not None:
        try:
            return pa.array(values, type=known)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass  # the values outgrew the type (say a Decimal with more scale): infer again
    try:
        array = pa.array(values)
    except OverflowError:
        # an integer past int64: MySQL's BIGINT UNSIGNED still fits uint64.
        array = pa.array(values, type=pa.uint64())
    if pa.types.is_decimal128(array.type):
        # pyarrow sizes a Decimal column's precision to the batch's widest value;
        # widening to 38 keeps one type across batches of a NUMERIC(p, s) column.
        array = array.cast(pa.decimal128(38, array.type.scale))
    return array
