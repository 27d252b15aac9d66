"""Upsert of a 20M-row PostgreSQL table without a change column: 1% of rows changed in place.

    uv sync --group bench && uv run python benchmarks/upsert_rowhash.py [--rows 20000000]

1. An `accounts` table of --rows rows (generate_series: bigint key, numeric balances, text,
   char(3), dates, timestamps, booleans; ten columns) and no change column.
2. Its first load into a LocalLake in a temporary directory (assets.migration.upsert.load_upsert,
   which reads a table without a lake file whole).
3. In the source, in place: --changed of the rows updated (spread over the whole key range),
   a few rows deleted and a few inserted.
4. The timed run: load_upsert again, change detection row_hash, in a fresh process. Its wall
   time, CPU seconds (ru_utime + ru_stime from wait4: the process and all its threads) and
   peak RSS (ru_maxrss); PostgreSQL's own CPU (the backends hashing and reading) is not in them.
5. The check: the changes it found equal the ones made, and the lake's checksum (row count
   and sum of row hashes, by DuckDB over the lake's Arrow data) equals the source's (by
   PostgreSQL in its SQL).

The target: peak memory under 1 GB. The database (bench_upsert) is dropped at the end: the run
changed its table, so it is made again each time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DB = "bench_upsert"
DSN = ADMIN.replace("dbname=postgres", f"dbname={DB}")
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
TABLE = "accounts"
DATASET = "bench__accounts"
TARGET_PEAK_MB = 1024

CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE UNLOGGED TABLE {TABLE} AS
SELECT g::bigint AS account_id,
       (g * 7919 % 1500000)::bigint AS customer_id,
       'ACC-' || lpad(g::text, 10, '0') AS account_no,
       (ARRAY['checking','savings','loan','card'])[1 + g % 4]::varchar(10) AS product,
       round(((g * 2654435761) % 1000000000) / 100.0, 2)::numeric(14,2) AS balance,
       ((g % 500) / 100.0)::numeric(6,3) AS rate,
       'KRW'::char(3) AS currency,
       date '2015-01-01' + (g % 3650)::int AS opened_on,
       timestamp '2026-01-01' + (g % 2592000) * interval '1 second' AS last_activity_at,
       (g % 10 <> 0) AS active
FROM generate_series(1::bigint, %(rows)s) g;
ALTER TABLE {TABLE} ADD PRIMARY KEY (account_id);
VACUUM ANALYZE {TABLE};
"""

# The spec and the load, as the child process runs them (argv: lake root, result file).
CHILD = textwrap.dedent(
    f"""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from assets.migration.preflight import plan_table
    from assets.migration.registry import TableSpec
    from assets.migration.upsert import load_upsert
    from resources.lake import LocalLake
    from resources.sql_source import SqlSource
    spec = TableSpec(name="{TABLE}", description="bench", source_table="{TABLE}", load_mode="upsert",
                     primary_key=["account_id"], fetch_size=100_000, parallel_reads=2)
    assert spec.detection == "row_hash"
    source = SqlSource(url="{URL}")
    plan = plan_table(source, spec)
    result = load_upsert(LocalLake(root=sys.argv[1]), source, spec, plan, "{DATASET}", None)
    with open(sys.argv[2], "w") as fh:
        json.dump({{"rows": result.rows, "inserted": result.inserted, "updated": result.updated,
                   "deleted": result.deleted, "rewritten": result.rewritten,
                   "reloaded": result.reloaded}}, fh)
    """
)


def run_child(lake_root: Path, work: Path, label: str) -> tuple[float, float, float, dict, str]:
    """load_upsert in a fresh process: wall s, CPU s, peak RSS MB, its result, its log."""
    script, out, log = work / f"{label}.py", work / f"{label}.json", work / f"{label}.log"
    script.write_text(CHILD)
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(lake_root), str(out)],
            cwd=ROOT,
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed:\n{text[-4000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, json.loads(out.read_text()), text


def make_table(rows: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(DSN, autocommit=True) as conn:
        started = time.perf_counter()
        for statement in filter(str.strip, CREATE.replace("%(rows)s", str(rows)).split(";")):
            conn.execute(statement)  # type: ignore[arg-type]  # VACUUM: one statement at a time
        print(f"made {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)


def drop_database() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def change_source(rows: int, changed: float) -> dict[str, int]:
    """Update `changed` of the rows in place (every 1/changed-th key), delete and insert a few."""
    every = round(1 / changed)
    with psycopg.connect(DSN, autocommit=True) as conn:
        cur = conn.execute(
            f"UPDATE {TABLE} SET balance = balance + 1.00, active = NOT active"
            f" WHERE account_id % {every} = 37"
        )
        updated = cur.rowcount
        # Deleted: 0.0005% of the keys, spread out, none of them among the updated.
        cur = conn.execute(
            f"DELETE FROM {TABLE} WHERE account_id % 200003 = 11 AND account_id % {every} <> 37"
        )
        deleted = cur.rowcount
        cur = conn.execute(
            f"""INSERT INTO {TABLE}
                SELECT account_id + {rows}, customer_id, account_no || '-N', product, balance, rate,
                       currency, opened_on, last_activity_at, active
                FROM {TABLE} WHERE account_id <= 1000"""
        )
        inserted = cur.rowcount
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return {"updated": updated, "deleted": deleted, "inserted": inserted}


def source_checksum() -> tuple[int, int]:
    sys.path.insert(0, str(ROOT))
    from assets.migration.preflight import plan_table
    from assets.migration.registry import TableSpec
    from resources.rowhash import source_row_hash
    from resources.sql_source import SqlSource

    spec = TableSpec(
        name=TABLE, description="bench", source_table=TABLE, load_mode="upsert", primary_key=["account_id"]
    )
    plan = plan_table(SqlSource(url=URL), spec)
    with psycopg.connect(DSN) as conn:
        row = conn.execute(
            f"SELECT count(*), sum({source_row_hash('postgresql', plan.columns)}) FROM {TABLE}"
        )
        count, total = row.fetchone() or (0, 0)
    return int(count), int(total)


def lake_checksum(lake_root: Path) -> tuple[int, int]:
    """count and sum of row hashes over the lake's rows as Arrow batches of the plan's types."""
    from assets.migration.diff import lake_reader, partition_keys
    from assets.migration.preflight import plan_table
    from assets.migration.registry import TableSpec
    from resources.lake import LocalLake, Tier
    from resources.rowhash import duckdb_session, lake_row_hash
    from resources.sql_source import SqlSource

    spec = TableSpec(
        name=TABLE, description="bench", source_table=TABLE, load_mode="upsert", primary_key=["account_id"]
    )
    plan = plan_table(SqlSource(url=URL), spec)
    lake = LocalLake(root=str(lake_root))
    paths = [Path(lake.uri(k)) for k in partition_keys(lake, Tier.RAW, "migration", DATASET, None)]
    con = duckdb_session("1GB")
    con.register("lake_rows", lake_reader(paths, plan))
    count, total = con.sql(f"SELECT count(*), sum({lake_row_hash(plan.columns)}) FROM lake_rows").fetchall()[
        0
    ]
    con.close()
    return int(count), int(total)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows updated in place")
    args = parser.parse_args()

    try:
        make_table(args.rows)
        with psycopg.connect(DSN) as conn:
            size = conn.execute(f"SELECT pg_relation_size('{TABLE}')").fetchone()
        heap = (size or [0])[0] / 1e6
        print(f"{args.rows:,} rows, {heap:,.0f} MB heap, {os.cpu_count()} cores", flush=True)
        base = ROOT / "var" if (ROOT / "var").is_dir() else None
        with tempfile.TemporaryDirectory(dir=base, prefix="bench-upsert-") as tmp:
            work = Path(tmp)
            lake_root = work / "lake"
            wall, cpu, peak, first, _ = run_child(lake_root, work, "first")
            data = next(lake_root.rglob("data.parquet"))
            print(
                f"first load (whole table):  {wall:7.1f} s wall {cpu:7.1f} CPU-s {peak:7.0f} MB peak"
                f"  {first['rows']['all']:,} rows, {data.stat().st_size / 1e6:,.0f} MB Parquet",
                flush=True,
            )

            made = change_source(args.rows, args.changed)
            print(
                f"source changed in place: {made['updated']:,} updated, {made['deleted']:,} deleted,"
                f" {made['inserted']:,} inserted",
                flush=True,
            )

            wall, cpu, peak, result, log = run_child(lake_root, work, "upsert")
            found = {k: result[k] for k in ("updated", "deleted", "inserted")}
            print("\nrow-hash upsert (fresh process):")
            for line in log.strip().splitlines():
                print(f"  | {line}")
            print(f"  wall        {wall:8.1f} s")
            print(f"  CPU         {cpu:8.1f} s (user + system, this process and its threads)")
            print(f"  peak RSS    {peak:8.0f} MB")
            print(
                f"  found       {found['updated']:,} updated, {found['deleted']:,} deleted,"
                f" {found['inserted']:,} inserted; {result['rows']['all']:,} rows after"
            )

            started = time.perf_counter()
            src, lk = source_checksum(), lake_checksum(lake_root)
            took = time.perf_counter() - started
            print(f"\nchecksums (count, sum of row hashes), {took:.0f} s to compute:")
            print(f"  source  {src[0]:,}  {src[1]}")
            print(f"  lake    {lk[0]:,}  {lk[1]}")

    finally:
        drop_database()

    checks = [
        (f"changes found equal the changes made ({made})", found == made),
        ("lake checksum equals the source's", src == lk),
        (f"peak memory {peak:.0f} MB (target < {TARGET_PEAK_MB} MB)", peak < TARGET_PEAK_MB),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if not all(ok for _, ok in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
