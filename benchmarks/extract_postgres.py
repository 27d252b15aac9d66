"""Copy a 10M-row PostgreSQL table to the lake's raw tier: the platform against dlt, with
connectorx's raw read (no write) as the ceiling. One run, same machine, same table.

    uv sync --group bench && uv run python benchmarks/extract_postgres.py [--rows 10000000]

Each contender runs in its own process, so its peak memory (ru_maxrss from
wait4) is its own. Throughput counts the source table's rows and its
PostgreSQL heap size.
"""

from __future__ import annotations

import argparse
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
DB = "bench_extract"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"
TABLE = "card_transactions"

CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE UNLOGGED TABLE {TABLE} AS
SELECT g::bigint AS txn_id,
       (g * 7919 % 1500000)::bigint AS card_id,
       (g * 104729 % 100000)::int AS merchant_id,
       timestamp '2026-01-01' + (g % 2592000) * interval '1 second' AS txn_at,
       (date '2026-01-01' + (g % 30)::int) AS txn_date,
       round(((g * 2654435761) % 50000000) / 100.0, 2)::numeric(12,2) AS amount,
       'KRW'::char(3) AS currency,
       (ARRAY['approved','approved','approved','declined','refunded'])[1 + g % 5]::varchar(10) AS status,
       (g % 12)::smallint AS installment_months,
       timestamp '2026-01-01' + g * interval '250 milliseconds' AS created_at
FROM generate_series(1::bigint, %(rows)s) g;
ALTER TABLE {TABLE} ADD PRIMARY KEY (txn_id);
ANALYZE {TABLE};
"""

PLATFORM = textwrap.dedent(
    f"""
    import sys
    from assets.migration.loads import load_raw
    from assets.migration.registry import TableSpec
    from resources.lake import LocalLake
    from resources.sql_source import SqlSource
    spec = TableSpec(name="{TABLE}", description="bench", source_table="{TABLE}", load_mode="overwrite",
                     primary_key=["txn_id"], fetch_size=100_000, parallel_reads=int(sys.argv[2]))
    result = load_raw(LocalLake(root=sys.argv[1]), SqlSource(url="{URL.replace("postgresql://", "postgresql+psycopg://")}"),
                      spec, "bench__{TABLE}", None)
    print(result.total_rows)
    """
)

DLT = textwrap.dedent(
    f"""
    import sys, dlt
    from dlt.sources.sql_database import sql_table
    resource = sql_table(credentials="{URL}", table="{TABLE}", backend="connectorx", chunk_size=100_000)
    destination = dlt.destinations.filesystem(bucket_url=sys.argv[1])
    pipeline = dlt.pipeline(pipeline_name="bench", destination=destination,
                            dataset_name="raw", pipelines_dir=sys.argv[1] + "/.dlt")
    pipeline.run(resource, loader_file_format="parquet")
    print(pipeline.last_trace.last_normalize_info.row_counts.get("{TABLE}"))
    """
)

CONNECTORX = textwrap.dedent(
    f"""
    import connectorx as cx
    table = cx.read_sql("{URL}", "SELECT * FROM {TABLE}", return_type="arrow")
    print(table.num_rows)
    """
)


def run(code: str, *args: str) -> tuple[float, float, str]:
    """(seconds, peak MB, stdout) of a fresh Python process running code."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, fh.name, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    os.unlink(fh.name)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"contender failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse the table if it has the rows")
    args = parser.parse_args()

    with psycopg.connect(ADMIN, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            admin.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(f"{ADMIN.replace('dbname=postgres', 'dbname=' + DB)}", autocommit=True) as conn:
        have = conn.execute(f"SELECT to_regclass('{TABLE}') IS NOT NULL").fetchone()[0]
        rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if have else 0
        if rows != args.rows or not args.keep:
            started = time.perf_counter()
            conn.execute(CREATE.replace("%(rows)s", str(args.rows)))
            print(f"made {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        size_mb = conn.execute(f"SELECT pg_relation_size('{TABLE}')").fetchone()[0] / 1e6

    results = {}
    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").exists() else None) as tmp:
        for name, code, extra in [
            ("connectorx read (ceiling)", CONNECTORX, []),
            ("platform, 1 reader", PLATFORM, [f"{tmp}/p1", "1"]),
            ("platform, 2 readers", PLATFORM, [f"{tmp}/p2", "2"]),
            ("dlt sql_table (connectorx) -> parquet", DLT, [f"{tmp}/dlt"]),
        ]:
            seconds, peak, out = run(code, *extra)
            results[name] = (seconds, peak)
            print(f"  {name}: {seconds:.1f} s, {peak:.0f} MB peak, rows {out}", flush=True)

    ceiling = results["connectorx read (ceiling)"][0]
    dlt_s = results["dlt sql_table (connectorx) -> parquet"][0]
    print(f"\n{args.rows:,} rows, {size_mb:,.0f} MB heap, {os.cpu_count()} cores")
    print(f"{'contender':<40}{'s':>7}{'rows/s':>12}{'MB/s':>8}{'peak MB':>9}{'vs ceiling':>11}{'vs dlt':>8}")
    for name, (seconds, peak) in results.items():
        print(
            f"{name:<40}{seconds:>7.1f}{args.rows / seconds:>12,.0f}{size_mb / seconds:>8.1f}{peak:>9.0f}"
            f"{ceiling / seconds:>10.0%}{dlt_s / seconds:>7.2f}x"
        )


if __name__ == "__main__":
    main()
