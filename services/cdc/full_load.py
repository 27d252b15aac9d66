"""Full load of one mapped table: a consistent snapshot -> DMS LOAD files in the table's folder.

The snapshot's binlog coordinates are its AR_H_CHANGE_SEQ (the same on every
row): every change committed after the snapshot has a larger one, so the
loader can apply the LOAD rows and then only the changes after them.

    landing/cdc/<cluster>/<schema>/<table>/YYYY/MM/DD/LOAD0000000A.parquet

Files are numbered after the highest LOAD counter already in the table's
folders (a second load never overwrites the first). Footer metadata says
which load (dp.load_id = the snapshot's seq), the part (dp.load_part) and, on
the last part, how many there are (dp.load_parts); an empty table writes one
empty part.

    python -m services.cdc.full_load TARGET [--mapping DIR] [--rows-per-file N]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from assets.cdc import dms
from assets.cdc.mapping import CdcMapping, CdcTable, load_mapping
from assets.cdc.types import ColumnConversion
from resources.lake.paths import dms_object_key, dms_prefix
from resources.lake.storage import LakeStorage
from services.cdc.source import CdcSourceError, connect, table_conversions
from services.cdc.writer import dms_schema, encode_parquet

log = logging.getLogger("services.cdc.full_load")
FETCH_ROWS = 10_000


def full_load(
    mapping: CdcMapping, lake: LakeStorage, target: str, *, rows_per_file: int = 500_000
) -> list[str]:
    """Snapshot the table `target` ('cluster.name' or a bare name) into LOAD files; return their keys."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    try:
        table = mapping.by_target(target)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    import pymysql.cursors

    conn = connect(table.cluster, autocommit=False)
    try:
        log_file, log_pos, taken_at = _snapshot(conn, table)
        seq = dms.change_seq(dms.binlog_number(log_file), log_pos, 0)
        names, convs = table_conversions(table, conn)
        if not names:
            raise CdcSourceError(
                f"{table.cluster.name}.{table.database}.{table.table} does not exist at the source"
            )
        schema = dms_schema(names, convs)
        counter = _next_load_counter(lake, table)
        keys: list[str] = []
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(_select_sql(table, names))
            parts = _parts(_batches(cur, schema, convs, taken_at, seq), rows_per_file)
            held = next(parts, None)
            part_no = 1
            while True:
                following = next(parts, None)
                last = following is None
                metadata = {dms.LOAD_ID_METADATA: seq.encode(), dms.LOAD_PART_METADATA: str(part_no).encode()}
                if last:
                    metadata[dms.LOAD_PARTS_METADATA] = str(part_no).encode()
                data = pa.Table.from_batches(held or [], schema=schema)
                key = dms_object_key(
                    table.cluster.name,
                    table.database,
                    table.table,
                    taken_at.date(),
                    dms.load_file_name(counter),
                )
                lake.put_bytes(key, encode_parquet(data, metadata))
                keys.append(key)
                log.info("full load %s: part %d, %d rows -> %s", table.target, part_no, data.num_rows, key)
                if last:
                    break
                held, counter, part_no = following, counter + 1, part_no + 1
        conn.rollback()  # a read-only snapshot: nothing to commit
        return keys
    finally:
        conn.close()


def _snapshot(conn: Any, table: CdcTable) -> tuple[str, int, datetime]:
    """Open a consistent-snapshot transaction; its binlog file, position and time (UTC)."""
    where = f"cluster {table.cluster.name!r}"
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")  # TIMESTAMP values arrive as UTC
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT VERSION()")
        mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
        if mariadb:
            # MariaDB reports the binlog position consistent with the snapshot, without a lock.
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(k).lower(): v for k, v in cur.fetchall()}
            log_file, log_pos = status.get("binlog_snapshot_file"), status.get("binlog_snapshot_position")
        else:
            # MySQL: no writes commit while the snapshot opens and the position is read.
            cur.execute("FLUSH TABLES WITH READ LOCK")
            try:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
            finally:
                cur.execute("UNLOCK TABLES")
            log_file, log_pos = (row[0], row[1]) if row else (None, None)
        cur.execute("SELECT UTC_TIMESTAMP(6)")
        taken_at = cur.fetchone()[0].replace(tzinfo=UTC)
    if not log_file or log_pos is None:
        raise CdcSourceError(f"{where}: the server has no binlog position for a snapshot (binlog off?)")
    log.info("full load %s: snapshot at %s:%s", table.target, log_file, log_pos)
    return str(log_file), int(log_pos), taken_at


def _select_sql(table: CdcTable, names: list[str]) -> str:
    def q(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    columns = ", ".join(q(n) for n in names)
    order = ", ".join(q(k) for k in table.primary_key)
    return f"SELECT {columns} FROM {q(table.database)}.{q(table.table)} ORDER BY {order}"


def _batches(
    cur: Any, schema: pa.Schema, convs: list[ColumnConversion], taken_at: datetime, seq: str
) -> Iterator[pa.RecordBatch]:
    while rows := cur.fetchmany(FETCH_ROWS):
        n = len(rows)
        arrays = [
            pa.array(["I"] * n, pa.string()),
            pa.array([taken_at] * n, pa.timestamp("us", tz="UTC")),
            pa.array([seq] * n, pa.string()),
        ] + [c.array([c.convert(r[i]) for r in rows]) for i, c in enumerate(convs)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _parts(batches: Iterator[pa.RecordBatch], rows_per_file: int) -> Iterator[list[pa.RecordBatch]]:
    """Batches regrouped into parts of exactly rows_per_file rows (the last may be shorter)."""
    part: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        while batch.num_rows:
            take = min(batch.num_rows, rows_per_file - size)
            part.append(batch.slice(0, take))
            size += take
            batch = batch.slice(take)
            if size == rows_per_file:
                yield part
                part, size = [], 0
    if part:
        yield part


def _next_load_counter(lake: LakeStorage, table: CdcTable) -> int:
    highest = 0
    for obj in lake.list_objects(dms_prefix(table.cluster.name, table.database, table.table)):
        try:
            name = dms.parse_file_name(obj.key.rsplit("/", 1)[-1])
        except ValueError:
            continue
        if name.is_load:
            highest = max(highest, int(name.sort_key, 16))
    return highest + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dp cdc full-load", description="Snapshot one mapped table into DMS LOAD files."
    )
    parser.add_argument(
        "target", metavar="TARGET", help="the table: 'cluster.name', or a bare name mapped once"
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=None,
        help="mapping directory (default: $PLATFORM_CDC_MAPPING)",
    )
    parser.add_argument("--rows-per-file", type=int, default=500_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from resources.profiles import build_resources

    try:
        keys = full_load(
            load_mapping(args.mapping),
            build_resources()["lake"],
            args.target,
            rows_per_file=args.rows_per_file,
        )
    except Exception as exc:
        print(f"dp cdc full-load: {exc}", file=sys.stderr)
        return 1
    for key in keys:
        print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
