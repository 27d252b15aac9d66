"""Source versus current state, per table: row counts, an order-independent checksum, a ratio.

The source is read with one query in a consistent snapshot that also gives
the binlog position it reflects (MariaDB's binlog_snapshot_file/position),
returning each row's primary key and 60-bit row hash (the migration domain's
canonical texts, so the hash is computed alike in MySQL and DuckDB). Before
comparing, the check waits until the capture has passed that position and
the table has no file left to apply, so a change in flight is not counted
as a difference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from assets.cdc.mapping import CdcTable, cluster_url

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.lake import LakeStorage
    from resources.warehouse import Warehouse

CONTROL_PREFIX = "_cdc_"


@dataclass(frozen=True)
class Reconciliation:
    source_rows: int
    current_rows: int
    matching: int
    differing: int
    missing: int  # in the source, not in the current state
    extra: int  # in the current state, not in the source
    source_checksum: int
    current_checksum: int
    snapshot: str  # binlog file:position the source read reflects
    caught_up: bool  # the capture and the loads had passed that position when compared

    @property
    def ratio(self) -> float:
        keys = self.matching + self.differing + self.missing + self.extra
        return 1.0 if keys == 0 else self.matching / keys

    def metadata(self) -> dict[str, Any]:
        return {
            "consistency_ratio": round(self.ratio, 6),
            "consistency": f"{self.ratio * 100:.3f}%",
            "source_rows": self.source_rows,
            "current_rows": self.current_rows,
            "rows_differing": self.differing,
            "rows_missing": self.missing,
            "rows_extra": self.extra,
            "source_checksum": str(self.source_checksum),
            "current_checksum": str(self.current_checksum),
            "source_snapshot": self.snapshot,
            "caught_up": self.caught_up,
        }


def _plans(table: CdcTable, current_types: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """Column plans for the source side and for the warehouse side (same canonical text)."""
    from resources.sql_columns import describe, plan_column
    from resources.sql_source import SqlSource

    source = SqlSource(url=_database_url(table))
    columns = {c.name: c for c in describe(source, table.table)}
    source_plans, current_plans = [], []
    for name in sorted(current_types):
        if name.startswith(CONTROL_PREFIX) or name not in columns:
            continue  # control columns, and columns dropped at the source (a schema check's business)
        plan = plan_column("mysql", columns[name], f"`{name}`")
        source_plans.append(plan)
        # A tinyint(1) converted to boolean hashes as '1'/'0' on both sides, like an integer 1/0.
        lake_kind = "bool" if current_types[name] == "BOOLEAN" else plan.kind
        current_plans.append(replace(plan, kind=lake_kind))
    return source_plans, current_plans


def _database_url(table: CdcTable) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(cluster_url(table.cluster))
        .set(database=table.database)
        .render_as_string(hide_password=False)
    )


def _source_hashes(table: CdcTable, plans: list[Any]) -> tuple[pa.Table, str]:
    """(key columns + hash of every source row, 'file:position') in one consistent snapshot."""
    import pyarrow as pa
    import pymysql
    from sqlalchemy.engine import make_url

    from resources.rowhash import source_row_hash

    url = make_url(cluster_url(table.cluster))
    keys = ", ".join(f"`{k}`" for k in table.primary_key)
    sql = f"SELECT {keys}, {source_row_hash('mysql', plans)} AS h FROM `{table.database}`.`{table.table}`"
    con = pymysql.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", init_command="SET time_zone = '+00:00'", autocommit=False,
    )  # fmt: skip
    try:
        with con.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = dict(cur.fetchall())
            cur.execute(sql)
            rows = cur.fetchall()
        con.commit()
    finally:
        con.close()
    snapshot = f"{status.get('Binlog_snapshot_file', '')}:{status.get('Binlog_snapshot_position', '')}"
    names = [*table.primary_key, "h"]
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    data = pa.table(
        {
            n: pa.array([str(v) for v in col], pa.string())
            for n, col in zip(names[:-1], columns[:-1], strict=True)
        }
    )
    data = data.append_column("h", pa.array(columns[-1], pa.int64()))
    return data, snapshot


def _caught_up(lake: LakeStorage, warehouse: Warehouse, table: CdcTable, snapshot: str) -> bool:
    """The capture's checkpoint is at or past the snapshot, and no file of the table waits."""
    from assets.cdc.apply import list_change_files
    from assets.cdc.checkpoint import load_checkpoint
    from assets.cdc.dms import binlog_number
    from assets.cdc.state import ensure_state, held_identities
    from resources.ledger import FileLedger

    file, _, pos = snapshot.partition(":")
    if not file or not pos:
        return False
    checkpoint = load_checkpoint(lake, table.cluster.name)
    if checkpoint is None:
        return False
    at = (binlog_number(checkpoint.log_file), checkpoint.log_pos)
    if at < (binlog_number(file), int(pos)):
        return False
    files = list_change_files(lake, table)
    pending = FileLedger(warehouse).pending(table.target, [f.ref for f in files])
    if not pending:
        return True
    # Quarantined files wait for an operator, not for the loads: they are differences to report.
    ensure_state(warehouse)
    held = held_identities(warehouse, table.target, [r.identity for r in pending])
    return all(r.identity in held for r in pending)


def reconcile(
    lake: LakeStorage, warehouse: Warehouse, table: CdcTable, wait_seconds: float = 60
) -> Reconciliation:
    import pyarrow as pa

    from resources.rowhash import duckdb_session, lake_row_hash

    described = warehouse.query(f"DESCRIBE {table.current_table}")
    current_types = dict(
        zip(described["column_name"].to_pylist(), described["column_type"].to_pylist(), strict=True)
    )
    source_plans, current_plans = _plans(table, current_types)
    source, snapshot = _source_hashes(table, source_plans)
    deadline = time.monotonic() + wait_seconds
    caught_up = _caught_up(lake, warehouse, table, snapshot)
    while not caught_up and time.monotonic() < deadline:
        time.sleep(1)
        caught_up = _caught_up(lake, warehouse, table, snapshot)
    keys = ", ".join(f'CAST("{k}" AS VARCHAR) AS "{k}"' for k in table.primary_key)
    current = warehouse.query(
        f"SELECT {keys}, {lake_row_hash(current_plans)} AS h FROM {table.current_table}"
    )
    con = duckdb_session()
    try:
        con.register("s", source)
        con.register(
            "c",
            current.cast(
                pa.schema([*(pa.field(k, pa.string()) for k in table.primary_key), pa.field("h", pa.int64())])
            ),
        )
        on = " AND ".join(f's."{k}" = c."{k}"' for k in table.primary_key)
        row = con.execute(
            "SELECT count(*) FILTER (WHERE s.h = c.h), count(*) FILTER (WHERE s.h <> c.h),"
            f" count(*) FILTER (WHERE c.h IS NULL), count(*) FILTER (WHERE s.h IS NULL)"
            f" FROM s FULL OUTER JOIN c ON {on}"
        ).fetchone()
        sums = con.execute(
            "SELECT (SELECT count(*) FROM s), (SELECT coalesce(sum(h::HUGEINT), 0) FROM s),"
            " (SELECT count(*) FROM c), (SELECT coalesce(sum(h::HUGEINT), 0) FROM c)"
        ).fetchone()
    finally:
        con.close()
    assert row is not None and sums is not None
    return Reconciliation(
        source_rows=int(sums[0]), current_rows=int(sums[2]), matching=int(row[0]), differing=int(row[1]),
        missing=int(row[2]), extra=int(row[3]), source_checksum=int(sums[1]), current_checksum=int(sums[3]),
        snapshot=snapshot, caught_up=caught_up,
    )  # fmt: skip
