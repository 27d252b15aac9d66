"""Change buffers of the capture and the DMS-format Parquet files they become.

A table's buffer holds converted rows column by column. Rows of the open
transaction are "pending" until its commit; only committed rows are ever
written, so a file never holds part of a transaction and the checkpoint saved
after a flush is always a transaction boundary.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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


@dataclass
class TableBuffer:
    """One table's buffered changes, with the column list and conversions they were converted with."""

    table: CdcTable
    names: list[str]
    conversions: list[ColumnConversion]
    ops: list[str] = field(default_factory=list)
    commit_ts: list[datetime | None] = field(default_factory=list)  # None until the commit is seen
    seqs: list[str] = field(default_factory=list)
    columns: list[list[Any]] = field(default_factory=list)
    committed: int = 0  # rows [0, committed) belong to committed transactions
    committed_bytes: int = 0
    pending_bytes: int = 0
    first_committed_at: float | None = None  # monotonic time the first committed row arrived

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = [[] for _ in self.names]

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: str, seq: str, values: dict[str, Any], size: int) -> None:
        """Append one change of the open transaction; values keyed by column name (the binlog's)."""
        for column, name, conv in zip(self.columns, self.names, self.conversions, strict=True):
            column.append(conv.convert(values.get(name)))
        self.ops.append(op)
        self.seqs.append(seq)
        self.commit_ts.append(None)
        self.pending_bytes += size

    def commit(self, at: datetime, now: float) -> None:
        """The open transaction committed at `at`: its rows become writable."""
        if self.committed == len(self.ops):
            return
        for i in range(self.committed, len(self.ops)):
            self.commit_ts[i] = at
        self.committed = len(self.ops)
        self.committed_bytes += self.pending_bytes
        self.pending_bytes = 0
        if self.first_committed_at is None:
            self.first_committed_at = now

    def rollback(self) -> None:
        """Drop the open transaction's rows (they are read again after a restart)."""
        n = self.committed
        del self.ops[n:], self.seqs[n:], self.commit_ts[n:]
        for column in self.columns:
            del column[n:]
        self.pending_bytes = 0

    def take_committed(self) -> pa.Table:
        """The committed rows as a DMS change table; they leave the buffer."""
        n = self.committed
        schema = dms_schema(self.names, self.conversions)
        arrays = [
            pa.array(self.ops[:n], pa.string()),
            pa.array(self.commit_ts[:n], pa.timestamp("us", tz="UTC")),
            pa.array(self.seqs[:n], pa.string()),
        ] + [conv.array(column[:n]) for column, conv in zip(self.columns, self.conversions, strict=True)]
        table = pa.Table.from_arrays(arrays, schema=schema)
        del self.ops[:n], self.seqs[:n], self.commit_ts[:n]
        for column in self.columns:
            del column[:n]
        self.committed = 0
        self.committed_bytes = 0
        self.first_committed_at = None
        return table


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
