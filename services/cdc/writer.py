"""Change buffers of the capture and the DMS-format Parquet files they become.

A table's buffer holds the source values column by column, converted (in
bulk, a column at a time) when committed rows are taken for a file. Rows of the open
transaction are "pending" until its commit; only committed rows are ever
written, so a file never holds part of a transaction and the checkpoint saved
after a flush is always a transaction boundary.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from assets.cdc import dms
from assets.cdc.mapping import CdcTable
from assets.cdc.types import ColumnConversion
from resources.lake.paths import PARQUET_COMPRESSION

CONTROL_FIELDS = [
    pa.field(dms.OP_COLUMN, pa.string(), nullable=False),
    pa.field(dms.TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(dms.CHANGE_SEQ_COLUMN, pa.string(), nullable=False),
]


def dms_schema(names: list[str], conversions: list[ColumnConversion]) -> pa.Schema:
    """Op first, the commit time, the change sequence, then the table's columns."""
    return pa.schema(
        CONTROL_FIELDS + [pa.field(n, c.arrow_type) for n, c in zip(names, conversions, strict=True)]
    )


def encode_parquet(table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=PARQUET_COMPRESSION)
    return buffer.getvalue()


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MAX_EVENT_ROWS = 10 ** dms.SEQ_DIGITS[2]  # the row index has 5 digits in AR_H_CHANGE_SEQ
_row_suffixes: list[str] = [f"{i:05d}" for i in range(1024)]  # grown on demand, up to MAX_EVENT_ROWS


def row_suffixes(n: int) -> list[str]:
    """The row-index parts of AR_H_CHANGE_SEQ of an event's first n rows (dms.change_seq)."""
    if n > MAX_EVENT_ROWS:
        raise ValueError(f"{n} rows in one binlog event: the change sequence has room for {MAX_EVENT_ROWS}")
    if n > len(_row_suffixes):
        _row_suffixes.extend(f"{i:05d}" for i in range(len(_row_suffixes), n))
    return _row_suffixes[:n]


def commit_micros(at: datetime) -> int:
    """A commit time as microseconds since the epoch (UTC; a naive time is UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH_UTC) // _MICROSECOND


@dataclass
class ChangeBatch:
    """Committed changes taken from a buffer, still as source values: to_table() converts them."""

    names: list[str]
    conversions: list[ColumnConversion]
    ops: list[str]
    commit_us: list[int]
    seqs: list[str]
    columns: list[list[Any]]

    def __len__(self) -> int:
        return len(self.ops)

    def first_commit_day(self) -> date:
        return (_EPOCH_UTC + self.commit_us[0] * _MICROSECOND).date()

    def to_table(self) -> pa.Table:
        """The DMS change table: each column converted in bulk where its values allow (assets.cdc.types)."""
        arrays = [
            pa.array(self.ops, pa.string()),
            pa.array(self.commit_us, pa.timestamp("us", tz="UTC")),
            pa.array(self.seqs, pa.string()),
        ] + [conv.to_array(column) for column, conv in zip(self.columns, self.conversions, strict=True)]
        return pa.Table.from_arrays(arrays, schema=dms_schema(self.names, self.conversions))


@dataclass
class TableBuffer:
    """One table's buffered changes (source values, column by column), with the column list and conversions.

    Values are converted when the committed rows are taken (ChangeBatch.to_table), a column at a time.
    """

    table: CdcTable
    names: list[str]
    conversions: list[ColumnConversion]
    ops: list[str] = field(default_factory=list)
    commit_us: list[int] = field(default_factory=list)  # one per committed row (microseconds, UTC)
    seqs: list[str] = field(default_factory=list)
    columns: list[list[Any]] = field(default_factory=list)
    committed: int = 0  # rows [0, committed) belong to committed transactions
    committed_bytes: int = 0
    pending_bytes: int = 0
    first_committed_at: float | None = None  # monotonic time the first committed row arrived

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = [[] for _ in self.names]
        self._getters = [itemgetter(n) for n in self.names]

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: str, seq: str, values: dict[str, Any], size: int) -> None:
        """Append one change of the open transaction; values keyed by column name (the binlog's)."""
        for column, name in zip(self.columns, self.names, strict=True):
            column.append(values.get(name))
        self.ops.append(op)
        self.seqs.append(seq)
        self.pending_bytes += size

    def add_rows(self, op: str, seq_prefix: str, rows: list[dict[str, Any]], size: int) -> None:
        """Append one rows event's changes: row i gets AR_H_CHANGE_SEQ seq_prefix + its 5-digit index."""
        n = len(rows)
        suffixes = row_suffixes(n)
        for column, getter, name in zip(self.columns, self._getters, self.names, strict=True):
            before = len(column)
            try:
                column.extend(map(getter, rows))
            except KeyError:  # a column the event lacks: null, as add() does
                del column[before:]
                column.extend([r.get(name) for r in rows])
        self.ops.extend(repeat(op, n))
        self.seqs.extend(map(seq_prefix.__add__, suffixes))
        self.pending_bytes += size * n

    def commit(self, at: datetime, now: float) -> None:
        """The open transaction committed at `at`: its rows become writable."""
        pending = len(self.ops) - self.committed
        if not pending:
            return
        self.commit_us.extend(repeat(commit_micros(at), pending))
        self.committed = len(self.ops)
        self.committed_bytes += self.pending_bytes
        self.pending_bytes = 0
        if self.first_committed_at is None:
            self.first_committed_at = now

    def rollback(self) -> None:
        """Drop the open transaction's rows (they are read again after a restart)."""
        n = self.committed
        del self.ops[n:], self.seqs[n:]
        for column in self.columns:
            del column[n:]
        self.pending_bytes = 0

    def take(self) -> ChangeBatch:
        """The committed rows, unconverted; they leave the buffer."""
        n = self.committed
        if n == len(self.ops):  # nothing pending (a flush happens between transactions): hand the lists over
            batch = ChangeBatch(
                self.names, self.conversions, self.ops, self.commit_us, self.seqs, self.columns
            )
            self.ops, self.commit_us, self.seqs = [], [], []
            self.columns = [[] for _ in self.names]
        else:
            batch = ChangeBatch(
                self.names,
                self.conversions,
                self.ops[:n],
                self.commit_us,
                self.seqs[:n],
                [column[:n] for column in self.columns],
            )
            del self.ops[:n], self.seqs[:n]
            for column in self.columns:
                del column[:n]
            self.commit_us = []
        self.committed = 0
        self.committed_bytes = 0
        self.first_committed_at = None
        return batch

    def take_committed(self) -> pa.Table:
        """The committed rows as a DMS change table; they leave the buffer."""
        return self.take().to_table()


class FileNamer:
    """DMS CDC file names strictly increasing per table (the name has 1/10000 s resolution)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], datetime] = {}

    def next(self, database: str, table: str, now: datetime | None = None) -> str:
        at = (now or datetime.now(UTC)).astimezone(UTC)
        at = at.replace(microsecond=at.microsecond - at.microsecond % 100)
        last = self._last.get((database, table))
        if last is not None and at <= last:
            at = last + timedelta(microseconds=100)
        self._last[(database, table)] = at
        return dms.cdc_file_name(at)


def first_commit_day(table: pa.Table) -> date:
    first = table.column(dms.TIMESTAMP_COLUMN)[0].as_py()
    return first.astimezone(UTC).date()
