"""Binlog capture throughput: the platform's capture against a bare mysql-replication decode loop.

    uv run python benchmarks/cdc_capture.py [--changes 200000] [--rounds 3]

1. A fresh MariaDB database (bench_cdc_capture) with 20 tables t01..t20 (bigint key; bit(1),
   tinyint(1), decimal(18,4), datetime(6), date, time, varchar, JSON, nullable columns), made by
   services.generators.cdc_traffic. The binlog position is noted, --changes row changes are made
   (multi-row INSERT / UPDATE ... WHERE id IN / DELETE ... WHERE id IN, 500 rows a statement,
   4 statements a transaction; half inserts, 35% updates, 15% deletes), the end position noted.
2. Contenders read the same binlog range [start, end], each in a fresh process of its own:

   bare      BinLogStreamReader from the start position (the capture's settings: rows events of
             the database only), iterating every row of every rows event (the library decodes
             them into dicts) and nothing else: no conversion, no Arrow, no files. Stops at the
             end position. The ceiling of any capture written on mysql-replication.
   platform  services.cdc.capture.run_capture on a mapping of the 20 tables (history off) into a
             fresh local lake whose checkpoint is set to the start position, with until= the end
             position: it stops once its saved checkpoint reaches the end (every change durable in
             a file). It converts the rows to the lake's types and writes DMS-format Parquet
             change files. Its end of reading is the moment that checkpoint is saved (the capture
             sets its stop event then; a thread waiting on the event notes the time), not the
             process exit, which waits up to a heartbeat (0.5 s) for the reader to notice.

   "Reading" starts once each child has imported what it needs (the platform child also imports
   what the capture imports lazily: mysql-replication, SQLAlchemy, and pandas, which pyarrow pulls
   in on its first pa.array; ~1.5 CPU-s without cached bytecode), so it compares the capture loop
   with the decode loop; the whole-process columns include every import.

   Rounds alternate (bare, platform, bare, ...). Wall time, CPU seconds (ru_utime + ru_stime from
   wait4, the process and its threads) and peak RSS (ru_maxrss) are each child's own; the
   server's CPU (the binlog dump thread) is in neither. Row changes/s = changes / wall, with
   the process start and imports included for both.
3. Checks: every contender saw all the changes (bare: rows decoded; platform: rows in its
   Parquet files, by op), then the target: the platform at least 80% of the bare decode rate.

The database is dropped at the end (the binlog keeps its events until the server expires them).
This process stays small (no pyarrow, no Dagster): Linux carries a parent's RSS high-water mark
into a child's ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = "mysql+pymysql://root@127.0.0.1:3306"
HOST, PORT, USER = "127.0.0.1", 3306, "root"
DB = "bench_cdc_capture"
CLUSTER = "bench"
TABLES = 20
TARGET = 0.80  # of the bare decode rate
SERVER_IDS = {"bare": 4_201_001, "platform": 4_201_002}  # replica ids no other reader uses

PREPARE = textwrap.dedent(
    f"""
    import json, math, sys, pymysql
    from services.generators.cdc_traffic import ensure_bench_schema, run_traffic
    changes = int(sys.argv[2])

    def position():
        conn = pymysql.connect(host="{HOST}", port={PORT}, user="{USER}")
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        conn.close()
        return row[0], int(row[1])

    conn = pymysql.connect(host="{HOST}", port={PORT}, user="{USER}", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS {DB}")
    conn.close()
    tables = ensure_bench_schema("{SERVER}", "{DB}", tables={TABLES})
    start = position()
    stats = run_traffic("{SERVER}", "{DB}", tables, rate=math.inf, changes=changes, statement_rows=500,
                        txn_size=4, mix=(0.5, 0.35, 0.15), seed=42)
    end = position()
    with open(sys.argv[1], "w") as fh:
        json.dump({{"start": start, "end": end, "tables": tables, "seconds": stats.seconds,
                   "ops": {{"I": stats.total("insert"), "U": stats.total("update"),
                            "D": stats.total("delete")}}}}, fh)
    """
)

# argv: result file, range JSON. The stream's settings are the capture's (services/cdc/capture.py):
# same filters, same events, table maps decoded every time, heartbeats.
BARE = textwrap.dedent(
    f"""
    import json, sys, time
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import (GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent,
                                          RotateEvent, XidEvent)
    from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent
    r = json.loads(sys.argv[2])
    end = (int(r["end"][0].rsplit(".", 1)[1]), r["end"][1])
    settings = {{"host": "{HOST}", "port": {PORT}, "user": "{USER}", "passwd": ""}}
    stream = BinLogStreamReader(
        connection_settings=settings, ctl_connection_settings=dict(settings),
        server_id={SERVER_IDS["bare"]}, resume_stream=True, blocking=True,
        log_file=r["start"][0], log_pos=r["start"][1],
        only_schemas=["{DB}"], only_tables=r["tables"],
        only_events=[RotateEvent, GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent, TableMapEvent,
                     WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, HeartbeatLogEvent],
        freeze_schema=False, slave_heartbeat=0.5,
    )
    kinds = {{WriteRowsEvent: "I", UpdateRowsEvent: "U", DeleteRowsEvent: "D"}}
    ops = {{"I": 0, "U": 0, "D": 0}}
    ready = time.time()
    while True:
        event = stream.fetchone()
        kind = kinds.get(type(event))
        if kind is not None:
            n = 0
            for _row in event.rows:
                n += 1
            ops[kind] += n
        if (int(stream.log_file.rsplit(".", 1)[1]), stream.log_pos) >= end:
            break
    done = time.time()
    stream.close()
    with open(sys.argv[1], "w") as fh:
        json.dump({{"ops": ops, "ready": ready, "done": done}}, fh)
    """
)

# argv: result file, range JSON, work directory (the lake goes under it), mapping directory.
# The checkpoint is set to the start; the capture stops itself once its checkpoint reaches the end.
PLATFORM = textwrap.dedent(
    f"""
    import json, logging, sys, threading, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from assets.cdc.dms import binlog_number
    from assets.cdc.mapping import load_mapping
    from resources.lake import LocalLake
    from services.cdc.capture import run_capture
    from assets.cdc.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    r, work = json.loads(sys.argv[2]), Path(sys.argv[3])
    lake = LocalLake(root=str(work / "lake"))
    save_checkpoint(lake, Checkpoint("{CLUSTER}", r["start"][0], r["start"][1]))
    stop, done = threading.Event(), []
    # no CPU while waiting: the capture sets the event when its checkpoint reaches the end
    threading.Thread(target=lambda: (stop.wait(), done.append(time.time())), daemon=True).start()
    # Start-up the capture does lazily, done before the clock starts as the bare loop's import of
    # mysql-replication is: the binlog library, SQLAlchemy's URL parser (connection settings) and
    # pandas, which pyarrow imports on its first pa.array. The whole-process column still counts them.
    import pymysqlreplication.row_event, sqlalchemy.engine, pyarrow
    pyarrow.array([0])
    ready = time.time()
    written = run_capture(load_mapping(Path(sys.argv[4])), lake, ["{CLUSTER}"], stop=stop,
                          until=tuple(r["end"]))
    cp = load_checkpoint(lake, "{CLUSTER}")
    assert (binlog_number(cp.log_file), cp.log_pos) >= (binlog_number(r["end"][0]), r["end"][1]), cp
    with open(sys.argv[1], "w") as fh:
        json.dump({{"written": written, "ready": ready, "done": done[0]}}, fh)
    """
)

# argv: lake root; prints the rows of its change files by Op
READ_BACK = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    ops = {"I": 0, "U": 0, "D": 0}
    files = sorted(Path(sys.argv[1]).glob("landing/cdc/**/*.parquet"))
    for path in files:
        counts = pc.value_counts(pq.read_table(path, columns=["Op"]).column("Op"))
        for item in counts.to_pylist():
            ops[item["values"]] += item["counts"]
    print(json.dumps({"ops": ops, "files": len(files)}))
    """
)


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    peak_mb: float
    started: float = 0.0  # time.time() at the spawn
    reading: float = 0.0  # seconds from the reader's start (imports and set-up done) to the end


def child(code: str, *args: str) -> tuple[Run, str]:
    """Run code in a fresh Python process; its wall time, CPU seconds, peak RSS and stderr tail."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks
        spawned, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, fh.name, *args],
            cwd=ROOT,
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        os.unlink(fh.name)
        err.seek(0)
        text = err.read().decode(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"child failed:\n{text[-4000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, spawned), text


def write_mapping(directory: Path, tables: list[str], flush_seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "description: benchmarks/cdc_capture.py",
        f"defaults: {{history: false, flush_seconds: {flush_seconds}, flush_rows: 50000}}",
        "clusters:",
        f"  - {{name: {CLUSTER}, local_url: '{SERVER}', server_id: {SERVER_IDS['platform']}}}",
        "tables:",
        *[f"  - {{cluster: {CLUSTER}, database: {DB}, table: {t}, primary_key: [id]}}" for t in tables],
    ]
    (directory / "bench.yaml").write_text("\n".join(lines) + "\n")


def drop_database() -> None:
    import pymysql

    conn = pymysql.connect(host=HOST, port=PORT, user=USER, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=1.0,
        help="the mapping's flush_seconds: the capture's checkpoint reaches the end position up to this"
        " long after it has read the last change (the demo mapping's: 2)",
    )
    parser.add_argument("--only", nargs="+", choices=["bare", "platform"], default=["bare", "platform"])
    args = parser.parse_args()

    base = ROOT / "var" if (ROOT / "var").is_dir() else None
    runs: dict[str, list[Run]] = {key: [] for key in args.only}
    seen: dict[str, dict[str, int]] = {}
    try:
        with tempfile.TemporaryDirectory(dir=base, prefix="bench-cdc-capture-") as tmp:
            work = Path(tmp)
            child(PREPARE, str(work / "range.json"), str(args.changes))
            made = json.loads((work / "range.json").read_text())
            total = sum(made["ops"].values())
            print(
                f"{total:,} row changes {made['ops']} on {TABLES} tables in {made['seconds']:.1f} s"
                f" ({total / made['seconds']:,.0f}/s made); binlog {made['start']} -> {made['end']};"
                f" {os.cpu_count()} cores, {args.rounds} rounds",
                flush=True,
            )
            range_json = json.dumps({"start": made["start"], "end": made["end"], "tables": made["tables"]})
            write_mapping(work / "mapping", made["tables"], args.flush_seconds)
            for round_no in range(1, args.rounds + 1):
                for key in args.only:
                    out = work / f"{key}-{round_no}"
                    out.mkdir()
                    if key == "bare":
                        run, _ = child(BARE, str(out / "result.json"), range_json)
                        result = json.loads((out / "result.json").read_text())
                        ops, files = result["ops"], ""
                    else:
                        run, _ = child(
                            PLATFORM, str(out / "result.json"), range_json, str(out), str(work / "mapping")
                        )
                        back = json.loads(
                            subprocess.run(
                                [sys.executable, "-c", READ_BACK, str(out / "lake")],
                                capture_output=True,
                                text=True,
                                check=True,
                            ).stdout
                        )
                        result = json.loads((out / "result.json").read_text())
                        ops, files = back["ops"], f", {back['files']} files"
                    if ops != made["ops"]:
                        raise SystemExit(f"{key}: saw {ops}, the traffic made {made['ops']}")
                    seen[key] = ops
                    run = replace(run, reading=result["done"] - result["ready"])
                    runs[key].append(run)
                    print(
                        f"  round {round_no}  {key:<9}{run.wall:>7.2f} s wall{run.cpu:>7.2f} CPU-s"
                        f"{run.peak_mb:>6.0f} MB peak{total / run.wall:>10,.0f} changes/s"
                        f" ({total / run.reading:,.0f}/s after start-up)"
                        f"  all {total:,} changes seen{files}",
                        flush=True,
                    )
                    subprocess.run(["rm", "-rf", str(out)], check=True)
    finally:
        drop_database()

    fields = ("wall", "cpu", "peak_mb", "started", "reading")
    med = {
        key: Run(*(statistics.median(getattr(r, f) for r in rs) for f in fields)) for key, rs in runs.items()
    }
    print(
        f"\nmedians of {args.rounds} runs each ({total:,} row changes; flush_seconds {args.flush_seconds:g})"
    )
    print(
        f"{'contender':<12}{'wall s':>8}{'CPU-s':>8}{'peak MB':>9}{'changes/s':>11}{'x bare':>8}"
        f"{'reading s':>11}{'changes/s':>11}{'x bare':>8}"
    )
    print(f"{'':<12}{'(whole process, start-up included)':<44}{'(from the reader start)':>30}")
    bare = med.get("bare")
    for key, m in med.items():
        whole = f"{bare.wall / m.wall:>8.0%}" if bare else f"{'-':>8}"
        reading = f"{bare.reading / m.reading:>8.0%}" if bare else f"{'-':>8}"
        print(
            f"{key:<12}{m.wall:>8.2f}{m.cpu:>8.2f}{m.peak_mb:>9.0f}{total / m.wall:>11,.0f}{whole}"
            f"{m.reading:>11.2f}{total / m.reading:>11,.0f}{reading}"
        )
    platform = med.get("platform")
    if platform and bare:
        share = bare.reading / platform.reading
        print(
            f"\n{'PASS' if share >= TARGET else 'FAIL'}  platform capture at {share:.0%} of the bare decode"
            f" rate from the reader's start (target >= {TARGET:.0%});"
            f" whole process {bare.wall / platform.wall:.0%};"
            f" CPU {platform.cpu / bare.cpu:.2f}x the bare loop's"
        )


if __name__ == "__main__":
    main()
