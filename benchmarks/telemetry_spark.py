"""One hour of fleet telemetry through the Spark job, beside the same computation in DuckDB.

    uv sync --group bench && uv run python benchmarks/telemetry_spark.py [--rows 36000000] [--rounds 2]

1. Data (not timed), under --work (default /tmp/telemetry-bench), in a child process with numpy
   and pyarrow: one hour (2026-11-24 13:00 UTC, a Tuesday) of raw readings in the raw tier's
   schema (services/telemetry_api/sink.py RAW_SCHEMA) as --files Parquet files (snappy, as the
   sink writes them) in raw/telemetry/readings/year=2026/month=11/day=24/hour=13/, --rows rows in
   all (default 36,000,000: one hour at 10,000 readings/s). 2,000 devices, each reading at a fixed
   step with a phase of its own; temperature = the device's level + a daily cycle + N(0, 1)
   noise, with ~0.02% spikes of +20..40 degC and a few readings above the physical range; ~0.3%
   null temperatures, ~0.1% null humidity, ~0.2% missing locations; received_at = timestamp +
   ~0.5 s (exponential), ~1% late (after the hour's end + 5 min); ~0.5% of the rows are
   duplicates (the same reading resent later with another batch_id, in the same file); batch ids
   per 100 readings in arrival order. Files are the hour's arrival-time slices. Baseline: the 24
   previous hours of hourly_summary rows (one file an hour) for 98% of the devices (the other 2%
   are new: no baseline, physical range only).
2. Contenders, each in a fresh process, rounds alternating (spark, duckdb, spark, duckdb, ...):

   spark   `spark-submit --master local[2] assets/telemetry/spark/process_hour.py --hour ...
           --raw ... --baseline ... --processed-out ... --summary-out ...`, the command
           resources/spark.py LocalSparkRunner builds (its conf, plus --driver-memory if given),
           with services/spark_cluster.py spark_env(). The job's metrics JSON (its last stdout
           line) carries its own `seconds` (session start excluded).
   duckdb  the job's computation (its module docstring) in DuckDB SQL, threads=2: the event-hour
           filter; dedup on (device_id, timestamp) keeping the earliest received_at (ties:
           batch_id, then the values); is_late; the derived columns; the pooled 24-hour
           baseline; anomaly score and flag; processed Parquet (zstd, one file, sorted by
           device_id, timestamp) and hourly_summary Parquet (one file, sorted by device_id).
           memory_limit --duckdb-memory (2GB: near Spark's footprint; DuckDB's default, 80% of
           RAM, took 16 GB for 36M rows).

   Per run: wall time (process start to exit, JVM start included for Spark), CPU seconds of the
   process tree (ru_utime + ru_stime from wait4: the JVM, the Python driver, DuckDB's threads),
   peak RSS (the tree's RSS summed, sampled every 0.2 s; and the largest process's ru_maxrss).
3. Checks: both contenders' hourly_summary equal row by row (doubles to 1e-9 relative), the
   processed row counts and anomaly counts equal, the metrics equal; then the medians, the
   ratios, and the speed-up over real time (3,600 s of readings; target Spark >= 20x, i.e. the
   hour processed in under 180 s wall).

--keep-data keeps the generated hour for the next run (it is reused when its manifest matches).
This process stays small (no pyarrow, duckdb or pyspark): children do the work.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from proc_tree import tree_memory_mb

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "assets" / "telemetry" / "spark" / "process_hour.py"
HOUR = "2026-11-24T13:00:00Z"  # a Tuesday
DEVICES = 2000
REAL_TIME_S = 3600.0
TARGET_SPEEDUP = 20.0
RAW_PART = "raw/telemetry/readings/year=2026/month=11/day=24/hour=13"


# --- data (a child process: numpy, pyarrow) ------------------------------------------------------
def generate(work: Path, rows: int, files: int, seed: int = 20261124) -> dict:
    import math
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from services.telemetry_api.sink import RAW_SCHEMA

    rng = np.random.default_rng(seed)
    hour = datetime(2026, 11, 24, 13, tzinfo=UTC)
    h0 = int(hour.timestamp() * 1_000_000)
    hour_us = 3_600_000_000
    late_after = h0 + hour_us + 300_000_000
    unique = round(rows / 1.005)  # ~0.5% of the rows are duplicates
    dups_total = rows - unique
    per_device = math.ceil(unique / DEVICES)
    step = hour_us // per_device
    phase = rng.integers(0, step, DEVICES)
    level = rng.uniform(8.0, 30.0, DEVICES)
    amplitude = rng.uniform(3.0, 7.0, DEVICES)
    peak_hour = rng.uniform(12.0, 16.0, DEVICES)
    lat0 = rng.uniform(35.0, 38.0, DEVICES)
    lon0 = rng.uniform(126.5, 129.0, DEVICES)
    names = pa.array([f"truck-{d:04d}" for d in range(DEVICES)])
    versions = pa.array(["1.4.2", "1.4.3", "1.5.0"])
    sources = pa.array([f"gateway-{g}" for g in range(40)])

    def cycle(d: np.ndarray, hours_of_day: np.ndarray) -> np.ndarray:
        return level[d] + amplitude[d] * np.cos(2 * np.pi * (hours_of_day - peak_hour[d]) / 24)

    raw = work / RAW_PART
    raw.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, unique, files + 1).astype(np.int64)
    dbounds = np.linspace(0, dups_total, files + 1).astype(np.int64)
    batch_no = 0
    made = {"rows": 0, "duplicates": 0, "late": 0, "null_temperature": 0, "files": files}
    for f in range(files):
        i = np.arange(bounds[f], bounds[f + 1], dtype=np.int64)  # arrival order: time-major
        d = (i % DEVICES).astype(np.int32)
        ts = h0 + (i // DEVICES) * step + phase[d]
        hod = 13.0 + (ts - h0) / hour_us
        temp = cycle(d, hod) + rng.normal(0.0, 1.0, len(i))
        spikes = rng.random(len(i)) < 0.0002
        temp[spikes] += rng.uniform(20.0, 40.0, int(spikes.sum()))
        temp[rng.random(len(i)) < 0.00001] = 95.0  # above the physical range
        temp = np.round(temp, 2)
        t_null = rng.random(len(i)) < 0.003
        hum = np.round(np.clip(55 + 10 * rng.standard_normal(len(i)), 0, 100), 1)
        h_null = rng.random(len(i)) < 0.001
        pres = np.round(1013 + 4 * rng.standard_normal(len(i)), 1)
        loc_null = rng.random(len(i)) < 0.002
        lat = np.round(lat0[d] + 0.01 * rng.standard_normal(len(i)), 6)
        lon = np.round(lon0[d] + 0.01 * rng.standard_normal(len(i)), 6)
        recv = ts + (rng.exponential(0.5, len(i)) * 1e6).astype(np.int64) + 20_000
        late = rng.random(len(i)) < 0.01
        recv[late] = late_after + rng.integers(1_000_000, 1_800_000_000, int(late.sum()))
        batches = batch_no + np.arange(len(i)) // 100
        batch_no = int(batches[-1]) + 1
        # Duplicates: readings of this slice resent later (the same values, another batch).
        k = int(dbounds[f + 1] - dbounds[f])
        pick = rng.integers(0, len(i), k)
        dup_recv = recv[pick] + rng.integers(1_000_000, 120_000_000, k)
        dup_batches = batch_no + np.arange(k) // 100
        batch_no = int(dup_batches[-1]) + 1 if k else batch_no

        def both(a: np.ndarray, pick: np.ndarray = pick) -> np.ndarray:
            return np.concatenate([a, a[pick]])

        dd = both(d)
        all_batches = np.concatenate([batches, dup_batches])
        first_batch = int(all_batches.min())
        batch_names = pa.array(
            [f"{seed:08x}{b:024x}" for b in range(first_batch, int(all_batches.max()) + 1)]
        )
        cols = {
            "device_id": pa.DictionaryArray.from_arrays(pa.array(dd), names).dictionary_decode(),
            "timestamp": pa.array(both(ts), pa.timestamp("us", tz="UTC")),
            "temperature": pa.array(both(temp), mask=both(t_null)),
            "humidity": pa.array(both(hum), mask=both(h_null)),
            "pressure": pa.array(both(pres)),
            "latitude": pa.array(both(lat), mask=both(loc_null)),
            "longitude": pa.array(both(lon), mask=both(loc_null)),
            "metadata_version": pa.DictionaryArray.from_arrays(
                pa.array((dd % 3).astype(np.int32)), versions
            ).dictionary_decode(),
            "metadata_source": pa.DictionaryArray.from_arrays(
                pa.array((dd % 40).astype(np.int32)), sources
            ).dictionary_decode(),
            "received_at": pa.array(np.concatenate([recv, dup_recv]), pa.timestamp("us", tz="UTC")),
            "batch_id": pa.DictionaryArray.from_arrays(
                pa.array((all_batches - first_batch).astype(np.int32)), batch_names
            ).dictionary_decode(),
        }
        table = pa.table(cols).cast(RAW_SCHEMA)
        pq.write_table(table, raw / f"part-{f:010d}.parquet", compression="snappy", row_group_size=1 << 20)
        made["rows"] += table.num_rows
        made["duplicates"] += k
        made["late"] += int(late.sum()) + int((dup_recv > late_after).sum())
        made["null_temperature"] += int(both(t_null).sum())
        del cols, table

    # The 24 previous hours' hourly_summary rows, for 98% of the devices.
    base = work / "baseline"
    base.mkdir(parents=True, exist_ok=True)
    known = np.arange(DEVICES)[rng.random(DEVICES) >= 0.02]
    for back in range(1, 25):
        start = hour - timedelta(hours=back)
        hod = start.hour + 0.5
        n = rng.integers(per_device - 60, per_device + 1, len(known))
        mean = cycle(known, np.full(len(known), hod)) + rng.normal(0, 0.02, len(known))
        sd = np.sqrt(1.0 + (amplitude[known] * np.pi / 12) ** 2 / 12) + rng.normal(0, 0.01, len(known))
        table = pa.table(
            {
                "device_id": pa.DictionaryArray.from_arrays(
                    pa.array(known.astype(np.int32)), names
                ).dictionary_decode(),
                "hour": pa.array([start] * len(known), pa.timestamp("us", tz="UTC")),
                "record_count": pa.array(n.astype(np.int64)),
                "avg_temperature": pa.array(mean),
                "min_temperature": pa.array(mean - 3 * sd),
                "max_temperature": pa.array(mean + 3 * sd),
                "temp_stddev": pa.array(sd),
                "anomaly_count": pa.array(np.zeros(len(known), np.int64)),
                "data_quality_score": pa.array(np.full(len(known), 0.98)),
                "late_count": pa.array(np.zeros(len(known), np.int64)),
                "duplicate_count": pa.array(np.zeros(len(known), np.int64)),
            }
        )
        part = base / f"hour={start:%Y%m%d%H}"
        part.mkdir(exist_ok=True)
        pq.write_table(table, part / "part-0000000000.parquet", compression="zstd")
    made["baseline_devices"] = len(known)
    made["raw_mb"] = round(sum(p.stat().st_size for p in raw.glob("*.parquet")) / 1e6, 1)
    return made


# --- the DuckDB contender (a child process) -------------------------------------------------------
DUCKDB_SQL = """
CREATE TEMP TABLE deduped AS
SELECT device_id, timestamp, f.*, duplicates FROM (
    SELECT device_id, timestamp,
           -- earliest arrival wins: batch_id then the values only break exact ties
           min({{'received_at': received_at, 'batch_id': batch_id, 'temperature': temperature,
                'humidity': humidity, 'pressure': pressure, 'latitude': latitude,
                'longitude': longitude, 'metadata_version': metadata_version,
                'metadata_source': metadata_source}}) AS f,
           count(*) - 1 AS duplicates
    FROM read_parquet({raw}, hive_partitioning = false)
    WHERE timestamp >= TIMESTAMPTZ '{h0}' AND timestamp < TIMESTAMPTZ '{h1}'
    GROUP BY device_id, timestamp
);

CREATE TEMP TABLE baseline AS
WITH rows AS (
    SELECT DISTINCT ON (device_id, hour) device_id, record_count::DOUBLE AS n,
           avg_temperature AS m, coalesce(temp_stddev, 0.0) AS s
    FROM read_parquet({base}, hive_partitioning = false)
    WHERE hour >= TIMESTAMPTZ '{b0}' AND hour < TIMESTAMPTZ '{h0}'
      AND avg_temperature IS NOT NULL AND record_count > 0
), means AS (
    SELECT device_id, sum(n) AS baseline_readings, sum(n * m) / sum(n) AS baseline_mean
    FROM rows GROUP BY device_id
)
SELECT means.device_id, baseline_mean,
       sqrt(greatest(sum((n - 1) * s * s + n * (m - baseline_mean) * (m - baseline_mean)), 0.0)
            / (baseline_readings - 1)) AS baseline_stddev
FROM rows JOIN means USING (device_id)
GROUP BY means.device_id, baseline_mean, baseline_readings
HAVING baseline_readings >= {min_readings};

CREATE TEMP TABLE enriched AS
SELECT *,
       coalesce(anomaly_score >= {threshold}, false) OR temperature < {pmin} OR temperature > {pmax}
           AS flag_raw
FROM (
    SELECT d.*, b.baseline_mean,
           CASE WHEN temperature IS NOT NULL AND b.baseline_mean IS NOT NULL
                THEN abs(temperature - b.baseline_mean)
                     / greatest(coalesce(b.baseline_stddev, {min_sd}), {min_sd}) END AS anomaly_score,
           temperature * 9.0 / 5.0 + 32.0 AS temperature_fahrenheit,
           hour(timestamp)::INTEGER AS hour,
           isodow(timestamp)::INTEGER AS day_of_week,
           received_at > TIMESTAMPTZ '{late}' AS is_late,
           temperature IS NOT NULL AND humidity IS NOT NULL AND pressure IS NOT NULL
               AND latitude IS NOT NULL AND longitude IS NOT NULL AS is_complete
    FROM deduped d LEFT JOIN baseline b USING (device_id)
);

COPY (
    SELECT device_id, temperature, humidity, pressure, timestamp, temperature_fahrenheit,
           CASE WHEN temperature IS NULL THEN false ELSE flag_raw END AS anomaly_flag,
           anomaly_score, hour, day_of_week, day_of_week >= 6 AS is_weekend, is_late
    FROM enriched ORDER BY device_id, timestamp
) TO '{processed}' (FORMAT parquet, COMPRESSION zstd);

COPY (
    SELECT device_id, TIMESTAMPTZ '{h0}' AS hour, count(*) AS record_count,
           avg(temperature) AS avg_temperature, min(temperature) AS min_temperature,
           max(temperature) AS max_temperature, stddev_samp(temperature) AS temp_stddev,
           count(*) FILTER (WHERE temperature IS NOT NULL AND flag_raw) AS anomaly_count,
           round((count(*) FILTER (WHERE is_complete) / count(*))
                 * (1 - count(*) FILTER (WHERE is_late) / count(*))
                 * (1 - sum(duplicates) / (count(*) + sum(duplicates))), 4) AS data_quality_score,
           count(*) FILTER (WHERE is_late) AS late_count,
           sum(duplicates)::BIGINT AS duplicate_count
    FROM enriched GROUP BY device_id ORDER BY device_id
) TO '{summary}' (FORMAT parquet, COMPRESSION zstd);
"""


def duckdb_run(work: Path, out: Path, threads: int, memory: str) -> dict:
    from datetime import datetime

    import duckdb

    sys.path.insert(0, str(JOB.parent))
    import process_hour as job

    started = time.monotonic()
    h0 = datetime.fromisoformat(HOUR)
    raw = sorted(str(p) for p in (work / RAW_PART).glob("*.parquet"))
    base = sorted(str(p) for p in (work / "baseline").rglob("*.parquet"))
    (out / "processed").mkdir(parents=True)
    (out / "summary").mkdir(parents=True)
    # A memory limit near Spark's footprint (1 GB heap, ~1.7 GB process tree): DuckDB's default
    # (80% of RAM) took 16 GB here, on a machine shared with other jobs. It spills beyond it.
    con = duckdb.connect(
        config={"threads": threads, "memory_limit": memory, "preserve_insertion_order": False}
    )
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = '{out / 'duckdb.tmp'}'")
    fmt = "%Y-%m-%d %H:%M:%S+00"
    rows_in = con.execute(
        f"SELECT count(*) FROM read_parquet({raw}, hive_partitioning = false)"
        f" WHERE timestamp >= TIMESTAMPTZ '{h0:{fmt}}' AND timestamp < TIMESTAMPTZ '{h0 + job.HOUR:{fmt}}'"
    ).fetchone()[0]
    sql = DUCKDB_SQL.format(
        raw=raw,
        base=base,
        h0=f"{h0:{fmt}}",
        h1=f"{h0 + job.HOUR:{fmt}}",
        b0=f"{h0 - job.BASELINE_HOURS * job.HOUR:{fmt}}",
        late=f"{job.late_cutoff(h0):{fmt}}",
        min_readings=job.MIN_BASELINE_READINGS,
        threshold=job.SCORE_THRESHOLD,
        pmin=job.PHYSICAL_MIN_C,
        pmax=job.PHYSICAL_MAX_C,
        min_sd=job.MIN_STDDEV,
        processed=out / "processed" / "part-0.parquet",
        summary=out / "summary" / "part-0.parquet",
    )
    for statement in sql.split(";"):
        if statement.strip():
            con.execute(statement)
    totals = con.execute(
        f"SELECT count(*), sum(record_count), sum(duplicate_count), sum(late_count), sum(anomaly_count),"
        f" count(*) FILTER (WHERE device_id IN (SELECT device_id FROM baseline))"
        f" FROM read_parquet('{out / 'summary' / 'part-0.parquet'}')"
    ).fetchone()
    return {
        "rows_in": int(rows_in),
        "duplicates": int(totals[2]),
        "rows_out": int(totals[1]),
        "late": int(totals[3]),
        "anomalies": int(totals[4]),
        "devices": int(totals[0]),
        "devices_with_baseline": int(totals[5]),
        "seconds": round(time.monotonic() - started, 3),
    }


# --- comparing the outputs (a child process: duckdb) ------------------------------------------
def compare(a: Path, b: Path) -> dict:
    """hourly_summary of two runs row by row (doubles to 1e-9 relative); processed counts."""
    import math

    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def summary(out: Path) -> list[tuple]:
        return con.execute(
            "SELECT device_id, epoch_us(hour), record_count, avg_temperature, min_temperature,"
            " max_temperature, temp_stddev, anomaly_count, data_quality_score, late_count,"
            f" duplicate_count FROM read_parquet('{out}/summary/*.parquet') ORDER BY device_id"
        ).fetchall()

    def processed(out: Path) -> tuple:
        return con.execute(
            "SELECT count(*), count(*) FILTER (WHERE anomaly_flag), count(anomaly_score),"
            " count(*) FILTER (WHERE is_late), count(*) FILTER (WHERE is_weekend),"
            " sum(temperature_fahrenheit), sum(anomaly_score), min(day_of_week), max(hour)"
            f" FROM read_parquet('{out}/processed/*.parquet')"
        ).fetchone()

    def close(x: object, y: object) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        return x == y

    sa, sb = summary(a), summary(b)
    bad = [(ra, rb) for ra, rb in zip(sa, sb, strict=False) if not all(map(close, ra, rb))]
    pa_, pb = processed(a), processed(b)
    return {
        "summary_rows": [len(sa), len(sb)],
        "summary_equal": len(sa) == len(sb) and not bad,
        "summary_differing": len(bad),
        "first_differences": [[list(ra), list(rb)] for ra, rb in bad[:3]],
        "processed": [list(pa_), list(pb)],
        "processed_equal": all(map(close, pa_, pb)),
    }


# --- timing a process tree ------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    tree_peak_mb: float  # the tree's RSS summed, sampled
    max_rss_mb: float  # the largest process's ru_maxrss
    inner: float  # the job's own seconds (its session/connection start excluded)


FIELDS = ("wall", "cpu", "tree_peak_mb", "max_rss_mb", "inner")


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float, float, str]:
    """Run command; its wall, tree CPU seconds, sampled tree peak RSS, largest ru_maxrss, stdout."""
    peak = [0.0]
    with open(log, "wb") as err, tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_memory_mb(proc.pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(errors="replace")[-4000:]
        code = os.waitstatus_to_exitcode(status)
        raise SystemExit(f"{command[0]} failed ({code}):\n{tail}\n{stdout[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, peak[0], usage.ru_maxrss / 1024, stdout


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def spark_command(work: Path, out: Path, driver_memory: str | None) -> tuple[list[str], dict[str, str]]:
    """The command LocalSparkRunner builds, and spark_env(): in a child (imports dagster, pyspark)."""
    code = (
        "import json, sys\n"
        "from resources.spark import LocalSparkRunner\n"
        "from services.spark_cluster import spark_env\n"
        "conf = json.loads(sys.argv[1])\n"
        "runner = LocalSparkRunner(conf=conf)\n"
        "env = spark_env()\n"
        "print(json.dumps({'command': runner.command(sys.argv[2], sys.argv[3:]),"
        " 'env': {k: env[k] for k in ('SPARK_HOME', 'SPARK_LOCAL_IP', 'PYSPARK_PYTHON')}}))\n"
    )
    # Shuffle and spill files under the work dir: /tmp is shared, and a cleaner there once took a
    # running job's shuffle files.
    conf = {"spark.local.dir": str(out / "spark-local")}
    if driver_memory:
        conf["spark.driver.memory"] = driver_memory
    args = [
        "--hour", HOUR,
        "--raw", str(work / RAW_PART),
        "--baseline", str(work / "baseline"),
        "--processed-out", str(out / "processed"),
        "--summary-out", str(out / "summary"),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(conf), str(JOB), *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(done.stdout.strip().splitlines()[-1])
    return spec["command"], {**os.environ, **spec["env"]}


def run_child(mode: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=36_000_000)
    ap.add_argument("--files", type=int, default=0, help="raw files (default: one per 3M rows, >= 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="Spark local[N] is fixed at 2 by the runner")
    ap.add_argument("--driver-memory", default=None, help="spark.driver.memory (default: Spark's 1g)")
    ap.add_argument("--duckdb-memory", default="2GB", help="DuckDB's memory_limit (its default: 80%% of RAM)")
    ap.add_argument("--only", nargs="+", choices=("spark", "duckdb"), default=["spark", "duckdb"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/telemetry-bench"))
    ap.add_argument("--keep-data", action="store_true", help="keep the generated hour for the next run")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, rest = args.child[0], args.child[1:]
        if mode == "generate":
            result = generate(Path(rest[0]), int(rest[1]), int(rest[2]))
        elif mode == "duckdb":
            result = duckdb_run(Path(rest[0]), Path(rest[1]), int(rest[2]), rest[3])
        else:
            result = compare(Path(rest[0]), Path(rest[1]))
        print(json.dumps(result))
        return

    files = args.files or max(2, round(args.rows / 3_000_000))
    work: Path = args.work
    manifest = work / "manifest.json"
    wanted = {"rows": args.rows, "files": files}
    made = None
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("wanted") == wanted:
            made = saved["made"]
            print(f"reusing the generated hour in {work}", flush=True)
    if made is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        made = run_child("generate", str(work), str(args.rows), str(files))
        manifest.write_text(json.dumps({"wanted": wanted, "made": made}))
        print(f"generated in {time.perf_counter() - t:.0f} s (not timed below)", flush=True)
    print(
        f"hour {HOUR}: {made['rows']:,} raw rows ({made['rows'] / REAL_TIME_S:,.0f} readings/s for"
        f" an hour) from {DEVICES:,} devices in {made['files']} Parquet files ({made['raw_mb']:,} MB"
        f" snappy); {made['duplicates']:,} duplicates, {made['late']:,} late arrivals,"
        f" {made['null_temperature']:,} null temperatures; baseline: 24 hourly_summary hours for"
        f" {made['baseline_devices']:,} devices; {os.cpu_count()} cores; Spark local[2] vs DuckDB"
        f" threads={args.threads}; driver memory {args.driver_memory or 'default (1g)'}; DuckDB memory_limit"
        f" {args.duckdb_memory}",
        flush=True,
    )

    runs: dict[str, list[Run]] = {k: [] for k in args.only}
    metrics: dict[str, dict] = {}
    outs: dict[str, Path] = {}
    (work / "runs").mkdir(exist_ok=True)
    try:
        for rnd in range(1, args.rounds + 1):
            for key in args.only:
                out = work / "runs" / f"{key}-{rnd}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if key == "spark":
                    command, env = spark_command(work, out, args.driver_memory)
                else:
                    command = [sys.executable, __file__, "--child", "duckdb", str(work), str(out)]
                    command += [str(args.threads), args.duckdb_memory]
                    env = child_env()
                wall, cpu, peak, maxrss, stdout = timed(command, env, out / "stderr.log")
                m = json.loads(stdout.strip().splitlines()[-1])
                metrics[key] = m
                run = Run(wall, cpu, peak, maxrss, float(m["seconds"]))
                runs[key].append(run)
                print(
                    f"  round {rnd}  {key:<7}{run.wall:>8.1f} s wall{run.cpu:>8.1f} CPU-s"
                    f" ({100 * run.cpu / run.wall:3.0f}% of a core){run.tree_peak_mb:>7.0f} MB tree peak"
                    f"{run.max_rss_mb:>7.0f} MB largest process; job alone {run.inner:7.1f} s;"
                    f" {REAL_TIME_S / run.wall:6.1f}x real time; {made['rows'] / run.wall:>10,.0f} rows/s",
                    flush=True,
                )
                if key in outs:
                    shutil.rmtree(outs[key], ignore_errors=True)
                outs[key] = out

        print("\nmetrics of the last runs (the job's JSON; DuckDB's computed alike):")
        for key, m in metrics.items():
            shown = {k: m.get(k) for k in ("rows_in", "duplicates", "rows_out", "late", "anomalies",
                                           "devices", "devices_with_baseline")}  # fmt: skip
            print(f"  {key:<7}{json.dumps(shown)}")
        same_metrics = True
        if len(outs) == 2:
            keys = ("rows_in", "duplicates", "rows_out", "late", "anomalies", "devices")
            keys += ("devices_with_baseline",)
            same_metrics = all(metrics["spark"][k] == metrics["duckdb"][k] for k in keys)
            cmp = run_child("compare", str(outs["spark"]), str(outs["duckdb"]))
            differing = "" if cmp["summary_equal"] else f", {cmp['summary_differing']} rows differ"
            print(
                f"hourly_summary: {cmp['summary_rows'][0]:,} rows (spark) vs {cmp['summary_rows'][1]:,}"
                f" (duckdb): {'EQUAL (doubles to 1e-9)' if cmp['summary_equal'] else 'DIFFERENT'}"
                f"{differing}"
            )
            for ra, rb in cmp["first_differences"]:
                print(f"    spark  {ra}\n    duckdb {rb}")
            print(
                "processed (rows, anomaly flags, scores, late, weekend, sum F, sum score, min dow, max hour):"
                f" {'EQUAL' if cmp['processed_equal'] else 'DIFFERENT'}\n    spark  {cmp['processed'][0]}"
                f"\n    duckdb {cmp['processed'][1]}"
            )
            print(f"metrics: {'EQUAL' if same_metrics else 'DIFFERENT'}")
            if not (cmp["summary_equal"] and cmp["processed_equal"] and same_metrics):
                raise SystemExit("the contenders' outputs differ; no figures")
    finally:
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: Run(*(statistics.median(getattr(r, f) for r in rs) for f in FIELDS)) for k, rs in runs.items()}
    print(f"\nmedians of {args.rounds} runs each ({made['rows']:,} rows; one hour of readings = 3,600 s)")
    print(
        f"{'contender':<10}{'wall s':>8}{'CPU-s':>8}{'tree peak MB':>14}{'largest MB':>12}"
        f"{'job alone s':>13}{'x real time':>13}{'rows/s':>12}"
    )
    for key, m in med.items():
        print(
            f"{key:<10}{m.wall:>8.1f}{m.cpu:>8.1f}{m.tree_peak_mb:>14.0f}{m.max_rss_mb:>12.0f}"
            f"{m.inner:>13.1f}{REAL_TIME_S / m.wall:>13.1f}{made['rows'] / m.wall:>12,.0f}"
        )
    if len(med) == 2:
        s, d = med["spark"], med["duckdb"]
        print(
            f"ratios spark/duckdb: wall {s.wall / d.wall:.2f}x, CPU {s.cpu / d.cpu:.2f}x,"
            f" tree peak memory {s.tree_peak_mb / d.tree_peak_mb:.2f}x, job alone {s.inner / d.inner:.2f}x"
        )
    if "spark" in med:
        speedup = REAL_TIME_S / med["spark"].wall
        ok = speedup >= TARGET_SPEEDUP
        print(
            f"{'PASS' if ok else 'FAIL'}  Spark {speedup:.1f}x real time (wall {med['spark'].wall:.1f} s,"
            f" JVM start included; target >= {TARGET_SPEEDUP:g}x, under {REAL_TIME_S / TARGET_SPEEDUP:g} s)"
            f" at {made['rows']:,} rows"
        )


if __name__ == "__main__":
    main()
