"""Copy a 10M-row PostgreSQL table to local Parquet: the platform against the bare copy with
the same parallelism (the ceiling) and dlt. Same machine, same table, alternating runs.

    uv sync --group bench && uv run python benchmarks/extract_postgres.py [--rows 10000000] [--rounds 3]

Contenders, each run in a fresh process of its own:

  platform   assets.migration.loads.load_raw, overwrite mode, 2 readers (two connections)
  bare copy  connectorx read_sql(partition_on=txn_id, partition_num=2) into one Arrow table,
             then pyarrow pq.write_table with the platform's Parquet compression: what two
             connections and Arrow's own writer do with no platform in between
  dlt        dlt sql_table (connectorx backend) to filesystem Parquet

Runs alternate (platform, bare, dlt, platform, ...) so a noisy neighbour hurts every
contender alike. Each run's wall time, CPU seconds (ru_utime + ru_stime from wait4: the
process's own, all its threads) and peak RSS (ru_maxrss) are its own. The targets, against
the bare copy's medians: at least 90% of its speed (wall), at most 1.15x its CPU, and peak
memory under 300 MB. Each output is read back (in a process of its own) and checked against
the source: row count, sum(txn_id) and sum(amount).

This process stays small (no pyarrow, no platform import): Linux carries the parent's RSS
high-water mark across fork and exec into the child's ru_maxrss, so a parent that had read
Parquet back at 300-400 MB made every later contender's "peak" at least that. Each run also
shows the child's own VmHWM (/proc/self/status, taken as its script ends) as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DB = "bench_extract"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"
TABLE = "card_transactions"
READERS = 2
TARGET_SPEED = 0.90  # of the bare copy's: platform wall <= bare wall / 0.9
TARGET_CPU = 1.15  # x the bare copy's CPU seconds
TARGET_PEAK_MB = 300

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
                     primary_key=["txn_id"], fetch_size=100_000, parallel_reads={READERS})
    source = SqlSource(url="{URL.replace("postgresql://", "postgresql+psycopg://")}")
    result = load_raw(LocalLake(root=sys.argv[1]), source, spec, "bench__{TABLE}", None)
    print(result.total_rows)
    """
)

# The compression comes as an argument: importing resources.lake would import Dagster, a cost
# (~1.5 CPU-s, ~50 MB) that is the platform's, not the bare copy's.
BARE = textwrap.dedent(
    f"""
    import sys
    import connectorx as cx
    import pyarrow.parquet as pq
    table = cx.read_sql("{URL}", "SELECT * FROM {TABLE}", partition_on="txn_id",
                        partition_num={READERS}, return_type="arrow")
    pq.write_table(table, sys.argv[1] + "/data.parquet", compression=sys.argv[2])
    print(table.num_rows)
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


@dataclass(frozen=True)
class Contender:
    name: str
    code: str
    files: str  # glob of its Parquet output under its directory


CONTENDERS = {
    "platform": Contender(f"platform, {READERS} readers", PLATFORM, f"**/bench__{TABLE}/*.parquet"),
    "bare": Contender(f"bare copy (connectorx x{READERS} + pyarrow)", BARE, "data.parquet"),
    "dlt": Contender("dlt sql_table (connectorx) -> parquet", DLT, f"raw/{TABLE}/*.parquet"),
}

Totals = tuple[int, int, Decimal]  # rows, sum(txn_id), sum(amount)


@dataclass(frozen=True)
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process and its threads
    peak_mb: float  # ru_maxrss
    hwm_mb: float = 0.0  # VmHWM as the script ended
    file_mb: float = 0.0  # the Parquet it wrote
    server_cpu: float | None = None  # PostgreSQL backends that ended during the run (approximate)


# Appended to every contender: its own high-water RSS, as the kernel counts it for its mm.
EPILOGUE = textwrap.dedent(
    """
    with open("/proc/self/status") as _status, open(sys.argv[1] + ".hwm", "w") as _out:
        _out.write(next(line.split()[1] for line in _status if line.startswith("VmHWM:")))
    """
)

READ_BACK = textwrap.dedent(
    """
    import json, sys
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    rows, ids, amount = 0, 0, 0
    for path in sys.argv[1:]:
        for batch in pq.ParquetFile(path).iter_batches(columns=["txn_id", "amount"], batch_size=1 << 20):
            rows += batch.num_rows
            ids += pc.sum(batch.column("txn_id")).as_py() or 0
            amount += pc.sum(batch.column("amount")).as_py() or 0
    print(json.dumps([rows, ids, str(amount)]))
    """
)


def run(code: str, out_dir: Path, *args: str) -> Run:
    """Run code in a fresh Python process; its wall time, CPU seconds and peak RSS."""
    script = out_dir.parent / f"{out_dir.name}.py"
    script.write_text("import sys\n" + code + EPILOGUE)
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out_dir), *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, all its threads
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        script.unlink()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"contender failed:\n{err.read().decode(errors='replace')[-3000:]}")
    hwm = Path(f"{out_dir}.hwm")
    hwm_mb = int(hwm.read_text()) / 1024
    hwm.unlink()
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, hwm_mb)


def totals(files: list[Path]) -> Totals:
    """(rows, sum(txn_id), sum(amount)) of Parquet files, read back in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-c", READ_BACK, *map(str, files)], capture_output=True, text=True, check=True
    ).stdout
    rows, ids, amount = json.loads(out)
    return rows, ids, Decimal(amount)


def parquet_compression() -> str:
    """resources.lake.paths.PARQUET_COMPRESSION, asked of a child: importing it imports Dagster."""
    code = "from resources.lake.paths import PARQUET_COMPRESSION; print(PARQUET_COMPRESSION)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def ensure_table(rows: int, keep: bool) -> tuple[float, Totals]:
    """Create (or with keep, reuse) the table; its heap MB and (count, sum(txn_id), sum(amount))."""
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            admin.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={DB}"), autocommit=True) as conn:
        have = conn.execute(f"SELECT to_regclass('{TABLE}') IS NOT NULL").fetchone()
        count = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone() if have and have[0] else None
        if not keep or count is None or count[0] != rows:
            started = time.perf_counter()
            conn.execute(CREATE.replace("%(rows)s", str(rows)))  # type: ignore[arg-type]
            print(f"made {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
        size = conn.execute(f"SELECT pg_relation_size('{TABLE}')").fetchone()
        truth = conn.execute(f"SELECT count(*), sum(txn_id), sum(amount) FROM {TABLE}").fetchone()
    assert size is not None and truth is not None
    return size[0] / 1e6, (int(truth[0]), int(truth[1]), Decimal(truth[2]))


def median_run(runs: list[Run]) -> Run:
    fields = ("wall", "cpu", "peak_mb", "hwm_mb", "file_mb")
    server = [r.server_cpu for r in runs if r.server_cpu is not None]
    return Run(
        *(statistics.median(getattr(r, f) for r in runs) for f in fields),
        statistics.median(server) if server else None,
    )


def postmaster_pid() -> int | None:
    """The PostgreSQL postmaster's pid (a backend's parent) when it runs here and /proc shows it."""
    try:
        with psycopg.connect(ADMIN) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            with open(f"/proc/{row[0] if row else 0}/stat") as fh:
                return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, psycopg.Error):
        return None


def reaped_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of the postmaster's ended children (its backends), from /proc cutime + cstime."""
    if postmaster is None:
        return None
    try:
        with open(f"/proc/{postmaster}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse the table if it has the rows")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    args = parser.parse_args()

    size_mb, truth = ensure_table(args.rows, args.keep)
    compression = parquet_compression()
    print(
        f"{args.rows:,} rows, {size_mb:,.0f} MB heap, {os.cpu_count()} cores, {args.rounds} rounds,"
        f" Parquet {compression}; source count/sum(txn_id)/sum(amount) = {truth}",
        flush=True,
    )
    postmaster = postmaster_pid()
    runs: dict[str, list[Run]] = {key: [] for key in args.only}
    read_back: dict[str, Totals] = {}
    base = ROOT / "var" if (ROOT / "var").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-extract-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for key in args.only:
                contender = CONTENDERS[key]
                out = Path(tmp) / f"{key}-{round_no}"
                out.mkdir()
                server_before = reaped_cpu(postmaster)
                result = run(contender.code, out, *([compression] if key == "bare" else []))
                time.sleep(1)  # for the postmaster to reap the contender's backends
                server_after = reaped_cpu(postmaster)
                server = (
                    None if server_before is None or server_after is None else server_after - server_before
                )
                files = sorted(out.glob(contender.files))
                got = totals(files)
                file_mb = sum(f.stat().st_size for f in files) / 1e6
                result = Run(result.wall, result.cpu, result.peak_mb, result.hwm_mb, file_mb, server)
                shutil.rmtree(out)
                if got != truth:
                    raise SystemExit(f"{contender.name}: read back {got}, the source has {truth}")
                read_back[key] = got
                runs[key].append(result)
                print(
                    f"  round {round_no}  {contender.name:<42}{result.wall:>7.1f} s wall"
                    f"{result.cpu:>7.1f} CPU-s{result.peak_mb:>7.0f} MB peak (VmHWM {result.hwm_mb:.0f})"
                    f"{result.file_mb:>6.0f} MB Parquet  server {_seconds(result.server_cpu)} CPU-s"
                    "  rows and sums match",
                    flush=True,
                )

    med = {key: median_run(rs) for key, rs in runs.items()}
    print(f"\nmedians of {args.rounds} runs each")
    print(
        f"{'contender':<44}{'wall s':>8}{'CPU-s':>8}{'peak MB':>9}{'VmHWM':>7}{'file MB':>9}{'server':>8}"
        f"{'rows/s':>12}"
        f"{'% bare speed':>14}{'CPU x bare':>12}"
    )
    bare = med.get("bare")
    for key, m in med.items():
        speed = f"{bare.wall / m.wall:>13.0%}" if bare else f"{'-':>13}"
        cpu = f"{m.cpu / bare.cpu:>11.2f}x" if bare else f"{'-':>12}"
        print(
            f"{CONTENDERS[key].name:<44}{m.wall:>8.1f}{m.cpu:>8.1f}{m.peak_mb:>9.0f}{m.hwm_mb:>7.0f}"
            f"{m.file_mb:>9.0f}{_seconds(m.server_cpu):>8}"
            f"{args.rows / m.wall:>12,.0f} {speed}{cpu}"
        )
    platform = med.get("platform")
    if platform and bare:
        speed, cpu = bare.wall / platform.wall, platform.cpu / bare.cpu
        same = read_back["platform"] == read_back["bare"]
        print(
            f"\nplatform vs bare copy, read back: {'same' if same else 'DIFFERENT'}"
            " rows, sum(txn_id), sum(amount)"
        )
        for ok, text in [
            (speed >= TARGET_SPEED, f"speed: {speed:.0%} of the bare copy's (target >= {TARGET_SPEED:.0%})"),
            (cpu <= TARGET_CPU, f"CPU: {cpu:.2f}x the bare copy's (target <= {TARGET_CPU:.2f}x)"),
            (
                platform.peak_mb < TARGET_PEAK_MB,
                f"memory: {platform.peak_mb:.0f} MB peak (target < {TARGET_PEAK_MB})",
            ),
        ]:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(
        "\nCPU-s is each contender's own process (all its threads): PostgreSQL's server-side CPU (the"
        "\nbackend running each connection's COPY) is not in it, nor in the targets. Every contender"
        f"\nreads over binary COPY, the platform and the bare copy on {READERS} connections; the platform"
        "\nasks the server for NUMERIC(p<=18, s) as bigint value * 10^s. 'server' is the CPU of the"
        "\nbackends that ended during the run (the postmaster's reaped children, when it runs on this"
        "\nmachine): approximate, as any other client's backend ending meanwhile counts too."
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
