"""Change files written by hand, in the DMS S3-target format: as our capture writes them, and as a
real AWS DMS task does (no AR_H_CHANGE_SEQ, full-load files without Op, bit(1) as bytes,
timestamps without a zone)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from assets.cdc.dms import (
    CHANGE_SEQ_COLUMN,
    LOAD_ID_METADATA,
    LOAD_PART_METADATA,
    LOAD_PARTS_METADATA,
    OP_COLUMN,
    TIMESTAMP_COLUMN,
    cdc_file_name,
    change_seq,
    load_file_name,
)
from assets.cdc.mapping import CdcTable, ClusterSpec, ColumnSpec, TableSpec
from resources.lake import LakeStorage
from resources.lake.paths import dms_object_key

T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
DEFAULT_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("qty", pa.int32())])


def cdc_table(
    name: str = "items",
    *,
    primary_key: list[str] | None = None,
    history: bool = True,
    columns: dict[str, dict[str, Any]] | None = None,
    database: str = "shop",
    cluster: str = "main",
) -> CdcTable:
    cluster_spec = ClusterSpec(name=cluster, local_url="mysql+pymysql://root@127.0.0.1:3306", server_id=101)
    spec = TableSpec(
        cluster=cluster,
        database=database,
        table=name,
        primary_key=primary_key or ["id"],
        history=history,
        columns={k: ColumnSpec(**v) for k, v in (columns or {}).items()},
    )
    return CdcTable(cluster_spec, spec, history, Path("tests/cdc.yaml"))


def seq(n: int) -> str:
    """The n-th change of the test binlog: AR_H_CHANGE_SEQ of mysql-bin.000001 at position n."""
    return change_seq(1, n, 0)


@dataclass(frozen=True)
class Change:
    op: str  # I, U, D
    seq: int  # position in the test binlog
    row: dict[str, Any]
    at: datetime | None = None  # commit time; default T0 + seq seconds


def key_of(table: CdcTable, name: str, day: date | None = None) -> str:
    return dms_object_key(table.cluster.name, table.database, table.table, day or T0.date(), name)


def _parquet(data: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    if metadata:
        data = data.replace_schema_metadata({**(data.schema.metadata or {}), **metadata})
    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression="zstd")
    return buffer.getvalue()


def _rows(rows: list[dict[str, Any]], schema: pa.Schema) -> dict[str, pa.Array]:
    return {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}


def write_cdc(
    lake: LakeStorage,
    table: CdcTable,
    changes: list[Change],
    *,
    at: datetime | None = None,
    schema: pa.Schema = DEFAULT_SCHEMA,
    name: str | None = None,
) -> str:
    """A CDC file as our capture writes it: Op, dms_commit_ts (UTC), AR_H_CHANGE_SEQ, the row."""
    at = at or (T0 + timedelta(seconds=max(c.seq for c in changes)))
    columns = {
        OP_COLUMN: pa.array([c.op for c in changes], pa.string()),
        TIMESTAMP_COLUMN: pa.array(
            [c.at or T0 + timedelta(seconds=c.seq) for c in changes], pa.timestamp("us", tz="UTC")
        ),
        CHANGE_SEQ_COLUMN: pa.array([seq(c.seq) for c in changes], pa.string()),
        **_rows([c.row for c in changes], schema),
    }
    key = key_of(table, name or cdc_file_name(at), at.date())
    lake.put_bytes(key, _parquet(pa.table(columns)))
    return key


def write_load(
    lake: LakeStorage,
    table: CdcTable,
    rows: list[dict[str, Any]],
    *,
    counter: int,
    snapshot: int,
    part: int,
    parts: int | None,
    schema: pa.Schema = DEFAULT_SCHEMA,
    day: date | None = None,
) -> str:
    """A full-load part as our capture writes it: Op 'I', the snapshot's seq, LOAD footer metadata."""
    n = len(rows)
    columns = {
        OP_COLUMN: pa.array(["I"] * n, pa.string()),
        TIMESTAMP_COLUMN: pa.array([T0 + timedelta(seconds=snapshot)] * n, pa.timestamp("us", tz="UTC")),
        CHANGE_SEQ_COLUMN: pa.array([seq(snapshot)] * n, pa.string()),
        **_rows(rows, schema),
    }
    metadata = {LOAD_ID_METADATA: seq(snapshot).encode(), LOAD_PART_METADATA: str(part).encode()}
    if parts is not None:
        metadata[LOAD_PARTS_METADATA] = str(parts).encode()
    key = key_of(table, load_file_name(counter), day)
    lake.put_bytes(key, _parquet(pa.table(columns), metadata))
    return key


# --- as a real AWS DMS task writes them ------------------------------------------------------
def write_real_dms_cdc(
    lake: LakeStorage,
    table: CdcTable,
    changes: list[tuple[str, dict[str, Any]]],
    *,
    at: datetime,
    schema: pa.Schema,
    commit: datetime | None = None,
) -> str:
    """A real DMS CDC file: Op first, the commit time without a zone, no AR_H_CHANGE_SEQ; the row's
    columns as `schema` says (bit(1) as one-byte binary, timestamps without a zone)."""
    n = len(changes)
    commit = commit or at
    columns = {
        OP_COLUMN: pa.array([op for op, _ in changes], pa.string()),
        TIMESTAMP_COLUMN: pa.array([commit.replace(tzinfo=None)] * n, pa.timestamp("us")),
        **_rows([r for _, r in changes], schema),
    }
    key = key_of(table, cdc_file_name(at), at.date())
    lake.put_bytes(key, _parquet(pa.table(columns)))
    return key


def write_real_dms_load(
    lake: LakeStorage,
    table: CdcTable,
    rows: list[dict[str, Any]],
    *,
    counter: int,
    schema: pa.Schema,
    day: date,
) -> str:
    """A real DMS full-load file: no Op (IncludeOpForFullLoad off), no seq, no footer metadata."""
    key = key_of(table, load_file_name(counter), day)
    lake.put_bytes(key, _parquet(pa.table(_rows(rows, schema))))
    return key


def put_raw(lake: LakeStorage, table: CdcTable, name: str, data: bytes, day: date | None = None) -> str:
    key = key_of(table, name, day)
    lake.put_bytes(key, data)
    return key
