"""Apply throughput of CDC change files into DuckDB: the platform against dlt's merge and a bare MERGE.

    uv sync --group bench && uv run python benchmarks/cdc_apply.py [--changes 1000000] [--rounds 3]

1. DMS-format change files in a temporary local lake (landing/cdc/bench/bench_cdc_apply/<table>/
   YYYY/MM/DD/<time>.parquet): 20 tables t01..t20, --changes changes in all, 10 files a table
   (200 files). Columns as the capture writes them: Op, dms_commit_ts, AR_H_CHANGE_SEQ, then id
   (int64), flag and active (bool, from bit(1) and tinyint(1)), amount and fee (decimal(18,4)),
   happened_at (timestamp), due_on (date), opens_at (duration: MySQL TIME), code, note and attrs
   (strings: varchar and JSON), counter (int32); nullable columns hold NULLs. Per table: 50%
   inserts (1 in 10 re-inserting a deleted key), 35% updates of live keys (the same keys many
   times: ~3 updates a key), 15% deletes; changes of all tables interleaved in one sequence.
   The mapping has history disabled: every contender builds the current state only.
2. Contenders, each on a fresh DuckDB file, each run in a fresh process of its own:

   platform  assets.cdc.apply.apply_tables(lake, DuckDBWarehouse, tables) once for the 20
             tables (one connection, one transaction a table, as the Dagster load step):
             listing, the ledger (idempotent loads keyed by file), ordering by
             AR_H_CHANGE_SEQ, type checks, the MERGE into cdc_bench.<table>.
   dlt       dlt (duckdb destination), write_disposition merge (delete-insert) of a resource per
             table reading the same Parquet files as Arrow tables: primary_key id, a `deleted`
             column (Op = 'D') with the hard_delete hint, dedup_sort desc on AR_H_CHANGE_SEQ so
             the last change of a key wins.
   bare      DuckDB alone, one connection, doing the platform's logical work per table in one
             transaction: the ledger's rows decide which files are new; read_parquet of the
             files into a temporary table, minus changes inside an applied file's seq range;
             the last change per key (QUALIFY row_number() OVER (PARTITION BY id ORDER BY
             AR_H_CHANGE_SEQ DESC) = 1); one MERGE INTO the table (no key constraint, as the
             platform's) with the sequence guard (s.seq > t._cdc_seq) and the _cdc_seq,
             _cdc_commit_ts and _cdc_loaded_at columns; a ledger row and a seq-range row per
             file. The ceiling: no validation, no type coercion, no quarantine, no drift checks.

   Rounds alternate (platform, dlt, bare, platform, ...). Wall time, CPU seconds (ru_utime +
   ru_stime from wait4: the process and its threads) and peak RSS (ru_maxrss) are each child's;
   besides, each child times its apply phase alone (wall and process CPU from just before the
   first table's apply to just after the last: imports and process start excluded, as in a
   Dagster run, whose process has imported everything before the step starts). The targets are
   judged by the apply-phase ratios; the ratios with process start are printed for reference.
   Children write and reuse compiled bytecode (in a cache under the work directory, warmed
   before the first round), as a deployed image has it, even where PYTHONDONTWRITEBYTECODE is
   set: otherwise every child compiles Dagster's, pandas' and dlt's sources anew (seconds of
   start-up that are no part of an apply). --cold-imports keeps the environment's setting.
3. Before any figure: the three end with the same current state, table by table (row count and
   a checksum over every column), and that state equals the one computed from the change
   sequence when it was generated (row counts). Targets: the platform faster than dlt, and at least 80% of
   the bare MERGE's speed.

This process stays small (no pyarrow, duckdb, dlt or Dagster): Linux carries a parent's RSS
high-water mark into a child's ru_maxrss.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "bench"
DB = "bench_cdc_apply"
TABLES = 20
FILES_PER_TABLE = 10
TARGET_BARE = 0.80

# argv: lake root, mapping dir, changes, result JSON, history (true/false)
GENERATE = textwrap.dedent(
    f"""
    import json, random, sys
    from datetime import UTC, date, datetime, timedelta
    from decimal import Decimal
    from pathlib import Path
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from assets.cdc.dms import CHANGE_SEQ_COLUMN, OP_COLUMN, TIMESTAMP_COLUMN, cdc_file_name, change_seq
    from resources.lake.paths import PARQUET_COMPRESSION, dms_object_key

    lake, mapping, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    tables = [f"t{{i:02d}}" for i in range(1, {TABLES} + 1)]
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    # the interleaved change sequence: which table each change is on, then per table its ops and keys
    order = nrng.integers(0, len(tables), total)
    start = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    expected = {{}}
    schema = pa.schema([
        (OP_COLUMN, pa.string()), (TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        (CHANGE_SEQ_COLUMN, pa.string()), ("id", pa.int64()), ("flag", pa.bool_()), ("active", pa.bool_()),
        ("amount", pa.decimal128(18, 4)), ("fee", pa.decimal128(18, 4)), ("happened_at", pa.timestamp("us")),
        ("due_on", pa.date32()), ("opens_at", pa.duration("us")), ("code", pa.string()),
        ("note", pa.string()), ("attrs", pa.string()), ("counter", pa.int32()),
    ])
    files = 0
    for t_index, table in enumerate(tables):
        seqs = np.flatnonzero(order == t_index)
        n = len(seqs)
        live, index, deleted, ops, ids = [], {{}}, [], [], []
        next_id = 1
        for _ in range(n):
            r = rng.random()
            if not live or r < 0.5:
                if deleted and rng.random() < 0.1:
                    key = deleted.pop(rng.randrange(len(deleted)))
                else:
                    key, next_id = next_id, next_id + 1
                index[key] = len(live)
                live.append(key)
                ops.append("I")
            elif r < 0.85:
                key = live[rng.randrange(len(live))]
                ops.append("U")
            else:
                pos = rng.randrange(len(live))
                key = live[pos]
                last = live.pop()
                if pos < len(live):
                    live[pos] = last
                    index[last] = pos
                del index[key]
                deleted.append(key)
                ops.append("D")
            ids.append(key)
        nulls = nrng.random((4, n)) < 0.12
        amount = nrng.integers(-10**9, 10**11, n)
        fee = nrng.integers(0, 10**7, n)
        words = np.array(["fast", "blue", "quiet", "red", "early", "late", "small", "large"])
        data = {{
            OP_COLUMN: pa.array(ops),
            TIMESTAMP_COLUMN: pa.array([start + timedelta(microseconds=int(s) * 20) for s in seqs],
                                       pa.timestamp("us", tz="UTC")),
            CHANGE_SEQ_COLUMN: pa.array([change_seq(1, 4 + int(s) * 200, 0) for s in seqs]),
            "id": pa.array(ids, pa.int64()),
            "flag": pa.array(nrng.random(n) < 0.5),
            "active": pa.array(nrng.random(n) < 0.7),
            "amount": pa.array([Decimal(int(x)).scaleb(-4) for x in amount], pa.decimal128(18, 4)),
            "fee": pa.array([None if null else Decimal(int(x)).scaleb(-4) for x, null in zip(fee, nulls[0])],
                            pa.decimal128(18, 4)),
            "happened_at": pa.array(
                (np.datetime64("2025-01-01T00:00:00", "us")
                 + nrng.integers(0, 400 * 86400 * 10**6, n).astype("timedelta64[us]")),
                pa.timestamp("us")),
            "due_on": pa.array(
                np.datetime64("2020-01-01") + nrng.integers(0, 3000, n).astype("timedelta64[D]"),
                pa.date32(), mask=nulls[1]),
            "opens_at": pa.array(nrng.integers(0, 86400 * 10**6, n).astype("timedelta64[us]"),
                                 pa.duration("us"), mask=nulls[2]),
            "code": pa.array([f"CODE-{{x:08d}}" for x in nrng.integers(0, 10**8, n)]),
            "note": pa.array([" ".join(words[nrng.integers(0, 8, 3)]) for _ in range(n)], mask=nulls[3]),
            "attrs": pa.array([json.dumps({{"tier": int(x % 3), "score": float(x % 1000) / 10}},
                                          separators=(",", ":"), sort_keys=True)
                               for x in nrng.integers(0, 10**6, n)]),
            "counter": pa.array(nrng.integers(0, 10**6, n).astype(np.int32), mask=nrng.random(n) < 0.12),
        }}
        whole = pa.table(data, schema=schema)
        for f, chunk in enumerate(np.array_split(np.arange(n), {FILES_PER_TABLE})):
            at = start + timedelta(seconds=2 * f, microseconds=t_index)
            key = dms_object_key("{CLUSTER}", "{DB}", table, at.date(), cdc_file_name(at))
            path = lake / key
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(whole.slice(int(chunk[0]), len(chunk)), path, compression=PARQUET_COMPRESSION)
            files += 1
        # the expected current state: each live key's last change
        last = {{}}
        for i, key in enumerate(ids):
            last[key] = i
        keep = sorted(i for key, i in last.items() if ops[i] != "D")
        expected[table] = len(keep)
    mapping.mkdir(parents=True, exist_ok=True)
    lines = ["description: benchmarks/cdc_apply.py",
             f"defaults: {{{{history: {{sys.argv[5]}}}}}}", "clusters:",
             "  - {{name: {CLUSTER}, local_url: 'mysql+pymysql://root@127.0.0.1:3306', server_id: 4201003}}",
             "tables:"]
    lines += [f"  - {{{{cluster: {CLUSTER}, database: {DB}, table: {{t}}, primary_key: [id]}}}}"
              for t in tables]
    (mapping / "bench.yaml").write_text("\\n".join(lines) + "\\n")
    with open(sys.argv[4], "w") as fh:
        json.dump({{"files": files, "tables": tables, "rows": expected}}, fh)
    """
)

# The apply phase of a child: wall and CPU seconds (every thread of the process) from just before
# the first table's apply to just after the last, imports and process start excluded (a Dagster
# run process has imported everything before the step starts). Written to <out>/phase.json.
PHASE = textwrap.dedent(
    """
    import json as _json
    import time


    def phase(out, wall, cpu):
        (out / "phase.json").write_text(
            _json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
        )
    """
)

# argv: out dir (DuckDB file inside), lake root, mapping dir
PLATFORM = PHASE + textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from assets.cdc.apply import apply_tables
    from assets.cdc.mapping import load_mapping
    from resources.lake import LocalLake
    from resources.warehouse.duckdb import DuckDBWarehouse
    out = Path(sys.argv[1])
    lake = LocalLake(root=sys.argv[2])
    warehouse = DuckDBWarehouse(path=str(out / "warehouse.duckdb"))
    tables = load_mapping(Path(sys.argv[3])).enabled
    wall, cpu = time.perf_counter(), time.process_time()
    # One pass over every table on one connection, one transaction a table (the Dagster load step's call).
    results = apply_tables(lake, warehouse, tables, run_id="bench")
    failed = {t: r for t, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise SystemExit(f"apply failed: {failed}")
    phase(out, wall, cpu)
    """
)

DLT = PHASE + textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    import dlt
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    out, lake = Path(sys.argv[1]), Path(sys.argv[2])
    base = lake / "landing/cdc/{CLUSTER}/{DB}"

    def changes(table):
        for path in sorted((base / table).rglob("*.parquet")):
            data = pq.read_table(path)
            # dlt has no Arrow duration (MySQL TIME as the capture writes it): a time of day instead
            at = data.schema.get_field_index("opens_at")
            chunks = [c.cast(pa.int64()).view(pa.time64("us")) for c in data.column(at).chunks]
            data = data.set_column(at, "opens_at", pa.chunked_array(chunks, pa.time64("us")))
            yield data.append_column("deleted", pc.equal(data.column("Op"), "D"))

    resources = [
        dlt.resource(changes(t.name), name=t.name, write_disposition={{"disposition": "merge",
                     "strategy": "delete-insert"}}, primary_key="id",
                     columns={{"deleted": {{"hard_delete": True}},
                              "AR_H_CHANGE_SEQ": {{"dedup_sort": "desc"}}}})
        for t in sorted(base.iterdir())
    ]
    wall, cpu = time.perf_counter(), time.process_time()
    pipeline = dlt.pipeline(pipeline_name="bench_cdc_apply", pipelines_dir=str(out / ".dlt"),
                            destination=dlt.destinations.duckdb(str(out / "warehouse.duckdb")),
                            dataset_name="cdc_{CLUSTER}")
    pipeline.run(resources, loader_file_format="parquet")
    phase(out, wall, cpu)
    """
)

BARE = PHASE + textwrap.dedent(
    f"""
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    import duckdb
    out, lake = Path(sys.argv[1]), Path(sys.argv[2])
    base = lake / "landing/cdc/{CLUSTER}/{DB}"
    wall, cpu = time.perf_counter(), time.process_time()
    con = duckdb.connect(str(out / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA cdc_{CLUSTER}")
    con.execute("CREATE SCHEMA ledger")
    con.execute("CREATE TABLE ledger.applied (target VARCHAR, identity VARCHAR, rows BIGINT,"
                " applied_at TIMESTAMP, PRIMARY KEY (target, identity))")
    con.execute("CREATE TABLE ledger.files (target VARCHAR, identity VARCHAR, min_seq VARCHAR,"
                " max_seq VARCHAR, rows BIGINT, inserts BIGINT, updates BIGINT, deletes BIGINT)")
    control = ("Op", "dms_commit_ts", "AR_H_CHANGE_SEQ", "filename")
    for folder in sorted(base.iterdir()):
        target = f"cdc_{CLUSTER}.{{folder.name}}"
        files = sorted(str(p) for p in folder.rglob("*.parquet"))
        # One transaction per table, as the platform's apply: the ledger decides which files are new.
        con.begin()
        done = {{r[0] for r in con.execute(
            "SELECT identity FROM ledger.applied WHERE target = ?", [target]).fetchall()}}
        files = [f for f in files if f not in done]
        # Changes inside an applied file's seq range were applied already (re-written changes).
        con.execute(
            f"CREATE TEMP TABLE changes AS SELECT * FROM read_parquet({{files!r}}, filename = true) c"
            f" WHERE NOT EXISTS (SELECT 1 FROM ledger.files f WHERE f.target = '{{target}}'"
            "  AND c.AR_H_CHANGE_SEQ BETWEEN f.min_seq AND f.max_seq)"
        )
        described = con.execute("DESCRIBE SELECT * FROM changes").fetchall()
        columns = [(name, kind) for name, kind, *_ in described if name not in control]
        body = ", ".join(f'"{{name}}" {{kind}}' for name, kind in columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {{target}} ({{body}}, _cdc_seq VARCHAR,"
                    " _cdc_commit_ts TIMESTAMPTZ, _cdc_loaded_at TIMESTAMPTZ)")
        now = f"TIMESTAMPTZ '{{datetime.now(UTC).isoformat(sep=' ')}}'"
        names = ", ".join(f'"{{name}}"' for name, _ in columns)
        values = ", ".join(f's."{{name}}"' for name, _ in columns)
        sets = ", ".join(f'"{{name}}" = s."{{name}}"' for name, _ in columns if name != "id")
        # The last change per key, the sequence guard, the _cdc_* columns.
        con.execute(
            f"MERGE INTO {{target}} AS t"
            " USING (SELECT * FROM changes"
            "  QUALIFY row_number() OVER (PARTITION BY id ORDER BY AR_H_CHANGE_SEQ DESC) = 1) AS s"
            " ON t.id = s.id"
            " WHEN MATCHED AND s.AR_H_CHANGE_SEQ > t._cdc_seq AND s.Op = 'D' THEN DELETE"
            f" WHEN MATCHED AND s.AR_H_CHANGE_SEQ > t._cdc_seq THEN UPDATE SET {{sets}},"
            f"  _cdc_seq = s.AR_H_CHANGE_SEQ, _cdc_commit_ts = s.dms_commit_ts, _cdc_loaded_at = {{now}}"
            " WHEN NOT MATCHED AND s.Op <> 'D' THEN"
            f"  INSERT ({{names}}, _cdc_seq, _cdc_commit_ts, _cdc_loaded_at)"
            f"  VALUES ({{values}}, s.AR_H_CHANGE_SEQ, s.dms_commit_ts, {{now}})"
        )
        # The ledger rows, in the same transaction: one per file, with its seq range and counts.
        con.execute(
            f"INSERT INTO ledger.files SELECT '{{target}}', filename, min(AR_H_CHANGE_SEQ),"
            " max(AR_H_CHANGE_SEQ), count(*), count_if(Op = 'I'), count_if(Op = 'U'), count_if(Op = 'D')"
            " FROM changes GROUP BY filename"
        )
        con.execute(
            f"INSERT INTO ledger.applied SELECT '{{target}}', filename, count(*), now() FROM changes"
            " GROUP BY filename"
        )
        con.execute("DROP TABLE changes")
        con.commit()
    con.close()
    phase(out, wall, cpu)
    """
)

# Imports every contender's modules once, to fill the bytecode cache.
WARM = """
import duckdb, pyarrow.parquet, pyarrow.compute, pandas, dlt
import dlt.destinations, dlt.pipeline, dlt.extract, dlt.normalize, dlt.load
import assets.cdc.apply, assets.cdc.mapping, resources.lake, resources.warehouse.duckdb
"""

# argv: DuckDB file, schema; prints per table [rows, checksum] over every data column, each
# normalised by its type (contenders may keep a decimal, a TIME or a JSON text in different types)
CHECKSUM = textwrap.dedent(
    """
    import json, sys
    import duckdb
    COLUMNS = ["id", "flag", "active", "amount", "fee", "happened_at", "due_on", "opens_at", "code",
               "note", "attrs", "counter"]

    def norm(name, kind):
        q = f'"{name}"'
        if kind.startswith(("DECIMAL", "DOUBLE", "FLOAT")):
            return f"round({q} * 10000)::HUGEINT"
        if kind.startswith("TIMESTAMP"):
            return f"epoch_us({q})"
        if kind.startswith("TIME"):  # a time of day
            return f"round(epoch({q}) * 1000000)::BIGINT"
        if kind == "INTERVAL":
            return f"round(epoch({q}) * 1000000)::BIGINT"
        if kind == "DATE":
            return f"({q} - DATE '1970-01-01')"
        if kind == "BOOLEAN":
            return f"{q}::INT"
        if kind in ("VARCHAR", "JSON"):
            return f"{q}::VARCHAR"
        return f"{q}::BIGINT"

    con = duckdb.connect(sys.argv[1], read_only=True)
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name LIKE 't%'"
        " AND NOT ends_with(table_name, '__history')",  # --history: the current state only
        [sys.argv[2]]).fetchall()]
    result = {}
    for t in sorted(tables):
        kinds = dict(con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ?", [sys.argv[2], t]).fetchall())
        missing = [c for c in COLUMNS if c not in kinds]
        if missing:
            raise SystemExit(f"{sys.argv[2]}.{t} lacks columns {missing}: {kinds}")
        parts = ", ".join(norm(c, kinds[c]) for c in COLUMNS)
        sql = f'SELECT count(*), sum(hash({parts})::HUGEINT) FROM "{sys.argv[2]}"."{t}"'
        row = con.execute(sql).fetchone()
        result[t] = [int(row[0]), str(row[1])]
    print(json.dumps(result))
    """
)


@dataclass(frozen=True)
class Contender:
    name: str
    code: str
    schema: str  # where its tables are in its DuckDB file


CONTENDERS = {
    "platform": Contender("platform apply_tables", PLATFORM, f"cdc_{CLUSTER}"),
    "dlt": Contender("dlt merge (delete-insert)", DLT, f"cdc_{CLUSTER}"),
    "bare": Contender("bare DuckDB MERGE", BARE, f"cdc_{CLUSTER}"),
}


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    peak_mb: float
    apply_wall: float = 0.0  # the apply phase alone (see PHASE)
    apply_cpu: float = 0.0


FIELDS = ("wall", "cpu", "peak_mb", "apply_wall", "apply_cpu")


def child(code: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """Run code in a fresh Python process; its wall time, CPU seconds and peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, fh.name, *args],
            cwd=ROOT,
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        os.unlink(fh.name)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"child failed:\n{err.read().decode(errors='replace')[-4000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def checksum(database: Path, schema: str) -> dict[str, list]:
    out = subprocess.run(
        [sys.executable, "-c", CHECKSUM, str(database), schema], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"checksum of {database} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument(
        "--history", action="store_true", help="the platform also appends history (the others do not)"
    )
    parser.add_argument(
        "--cold-imports", action="store_true", help="no bytecode cache: children compile what they import"
    )
    args = parser.parse_args()

    base = ROOT / "var" if (ROOT / "var").is_dir() else None
    runs: dict[str, list[Run]] = {key: [] for key in args.only}
    states: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-cdc-apply-") as tmp:
        work = Path(tmp)
        lake, mapping = work / "lake", work / "mapping"
        started = time.perf_counter()
        history = "true" if args.history else "false"
        child(GENERATE, str(lake), str(mapping), str(args.changes), str(work / "made.json"), history)
        made = json.loads((work / "made.json").read_text())
        size = sum(p.stat().st_size for p in lake.rglob("*.parquet")) / 1e6
        print(
            f"{args.changes:,} changes on {TABLES} tables in {made['files']} DMS files ({size:.0f} MB),"
            f" made in {time.perf_counter() - started:.0f} s; {sum(made['rows'].values()):,} rows in the"
            f" current state; history {'enabled (platform only)' if args.history else 'disabled'};"
            f" {os.cpu_count()} cores, {args.rounds} rounds"
            f"{'; cold imports' if args.cold_imports else ''}",
            flush=True,
        )
        pyc: dict[str, str] = {}
        if not args.cold_imports:
            pyc = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(work / "pycache")}
            child(WARM, env=pyc)
        for round_no in range(1, args.rounds + 1):
            for key in args.only:
                contender = CONTENDERS[key]
                out = work / f"{key}-{round_no}"
                out.mkdir()
                run = child(
                    contender.code,
                    str(out),
                    str(lake),
                    str(mapping),
                    env={"PLATFORM_VAR_DIR": str(out / "var"), **pyc},
                )
                phase = json.loads((out / "phase.json").read_text())
                run = Run(run.wall, run.cpu, run.peak_mb, phase["wall"], phase["cpu"])
                state = checksum(out / "warehouse.duckdb", contender.schema)
                counts = {t: v[0] for t, v in state.items()}
                if counts != made["rows"]:
                    raise SystemExit(f"{contender.name}: row counts {counts}, expected {made['rows']}")
                reference = states.setdefault("first", state)
                same = "same state as the others" if state == reference else "DIFFERENT CHECKSUM"
                states[key] = state
                runs[key].append(run)
                print(
                    f"  round {round_no}  {contender.name:<28}{run.wall:>7.2f} s wall{run.cpu:>7.2f} CPU-s"
                    f"{run.peak_mb:>6.0f} MB peak{args.changes / run.wall:>10,.0f} changes/s;"
                    f"  apply phase{run.apply_wall:>7.2f} s{run.apply_cpu:>7.2f} CPU-s"
                    f"{args.changes / run.apply_wall:>10,.0f} changes/s  {same}",
                    flush=True,
                )
                shutil.rmtree(out)
    differing = [k for k in args.only if states[k] != states["first"]]
    if differing:
        for key in args.only:
            print(f"  {key}: {json.dumps(states[key])[:300]}")
        raise SystemExit(f"current states differ: {differing}; no figures")

    med = {
        key: Run(*(statistics.median(getattr(r, f) for r in rs) for f in FIELDS)) for key, rs in runs.items()
    }
    print(f"\nmedians of {args.rounds} runs each ({args.changes:,} changes);")
    print("all contenders end with the same current state (per table: row count and checksum)")
    print(f"{'':<30}{'--- process start included ---':^36}  {'--- apply phase alone ---':^28}")
    print(
        f"{'contender':<30}{'wall s':>8}{'CPU-s':>8}{'peak MB':>9}{'changes/s':>11}"
        f"  {'wall s':>8}{'CPU-s':>8}{'changes/s':>12}"
    )
    for key, m in med.items():
        print(
            f"{CONTENDERS[key].name:<30}{m.wall:>8.2f}{m.cpu:>8.2f}{m.peak_mb:>9.0f}"
            f"{args.changes / m.wall:>11,.0f}  {m.apply_wall:>8.2f}{m.apply_cpu:>8.2f}"
            f"{args.changes / m.apply_wall:>12,.0f}"
        )
    platform = med.get("platform")
    checks = []
    for what, attr in (("apply phase", "apply_wall"), ("process start included", "wall")):
        judged = " (judged)" if attr == "apply_wall" else " (for reference)"
        if platform and "dlt" in med:
            ratio = getattr(med["dlt"], attr) / getattr(platform, attr)
            checks.append((ratio > 1, f"{what}{judged}: platform {ratio:.2f}x dlt's speed (target: faster)"))
        if platform and "bare" in med:
            share = getattr(med["bare"], attr) / getattr(platform, attr)
            checks.append(
                (
                    share >= TARGET_BARE,
                    f"{what}{judged}: platform at {share:.0%} of the bare MERGE's speed (target >= 80%)",
                )
            )
    if checks:
        print()
        print(
            "The targets are about apply throughput: judge them by the apply-phase ratios (a Dagster run"
            " process has imported everything before the step starts); the ratios with process start"
            " are for reference."
        )
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
