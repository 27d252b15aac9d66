"""Process one hour of fleet telemetry: raw readings -> processed readings + hourly_summary.

Run it with spark-submit (it needs nothing but pyspark, and dagster_pipes when it is launched
through Dagster Pipes):

    spark-submit process_hour.py --hour 2026-11-24T13:00:00Z \\
        --raw <dir or s3a:// uri of the hour's raw files> \\
        [--baseline <dir of previous hourly_summary files> ...] \\
        --processed-out <the hour's processed dir> --summary-out <the hour's hourly_summary dir> \\
        [--asset-key telemetry/hourly_summary]

or import it: `run(spark, hour, raw, baseline, processed_out, summary_out) -> dict` of metrics.
The caller builds every lake path (resources/lake/paths.py); this job only reads and writes the
directories it is given. `--processed-out` and `--summary-out` are the hour's own directories and
are overwritten whole, so re-running an hour replaces exactly that hour. Output: Parquet (zstd),
one file per directory, rows sorted, so a re-run writes the same rows in the same order.

Under Dagster Pipes (`dagster_pipes.is_dagster_pipes_process()`), logs go to Dagster and one
materialization of `--asset-key` carries the metrics. In every case the metrics are printed as
one JSON object on the last stdout line.

The computation, all in Spark DataFrame operations (no Python UDFs):

1. Read the raw Parquet files (recursively) and keep the readings whose event hour (`timestamp`)
   is this hour; readings of other hours are counted (`rows_other_hours`) and left out.
2. Deduplicate on (device_id, timestamp), keeping the earliest `received_at` (ties broken by
   batch_id, then by the values); `duplicate_count` counts the copies removed, per device.
3. `is_late`: received_at later than the end of the hour + 5 minutes.
4. Derived columns: temperature_fahrenheit, hour (0-23), day_of_week (ISO, Monday=1),
   is_weekend (Saturday or Sunday). All times are UTC.
5. Anomalies. Baseline per device: the pooled mean and sample standard deviation of temperature
   over the device's hourly_summary rows of the 24 hours before this one (from `--baseline`;
   rows of other hours in those files are ignored), combined exactly from each row's
   record_count, avg_temperature and temp_stddev:
       N = sum(n_i), M = sum(n_i * m_i) / N,
       S^2 = sum((n_i - 1) * s_i^2 + n_i * (m_i - M)^2) / (N - 1).
   A device needs at least MIN_BASELINE_READINGS readings in that window to have a baseline.
   anomaly_score = |temperature - M| / max(S, 0.5) (null without a baseline or a temperature);
   anomaly_flag = anomaly_score >= 4, or temperature outside -40..85 degC (the physical range,
   the only test for a device without a baseline); a null temperature is never an anomaly.
   (No rolling window: a 60-row window per device costs a sort per device on a shuffle.)
   The summary's record_count includes readings whose temperature was null (a sensor fault),
   so a baseline built on hours with faults weighs those hours slightly more than their
   temperatures; this job's own summaries are its baseline.
6. hourly_summary, one row per device: device_id, hour (timestamp of the hour's start),
   record_count (readings after deduplication), avg/min/max_temperature, temp_stddev (sample;
   null with fewer than two temperatures), anomaly_count, data_quality_score, late_count,
   duplicate_count.

data_quality_score, in [0, 1], rounded to 4 places, is the product of three shares:
    completeness  = readings with temperature, humidity, pressure and location (latitude and
                    longitude) all present / readings (after deduplication)
    timeliness    = 1 - late readings / readings (after deduplication)
    uniqueness    = 1 - duplicates removed / arrivals (readings before deduplication)
A device whose every reading arrived complete, on time and once scores 1.0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

# Thresholds of the anomaly model and of lateness.
SCORE_THRESHOLD = 4.0
MIN_STDDEV = 0.5
PHYSICAL_MIN_C = -40.0
PHYSICAL_MAX_C = 85.0
MIN_BASELINE_READINGS = 30
BASELINE_HOURS = 24
LATE_AFTER = timedelta(minutes=5)
HOUR = timedelta(hours=1)
DEFAULT_ASSET_KEY = "telemetry/hourly_summary"
# The metrics a Pipes materialization carries as metadata.
PIPES_METADATA = (
    "rows_in",
    "rows_out",
    "duplicates",
    "late",
    "anomalies",
    "devices",
    "devices_with_baseline",
    "rows_other_hours",
    "seconds",
)

PROCESSED_COLUMNS = (
    "device_id",
    "temperature",
    "humidity",
    "pressure",
    "timestamp",
    "temperature_fahrenheit",
    "anomaly_flag",
    "anomaly_score",
    "hour",
    "day_of_week",
    "is_weekend",
    "is_late",
)
SUMMARY_COLUMNS = (
    "device_id",
    "hour",
    "record_count",
    "avg_temperature",
    "min_temperature",
    "max_temperature",
    "temp_stddev",
    "anomaly_count",
    "data_quality_score",
    "late_count",
    "duplicate_count",
)

# Spark settings for a small machine; a spark-submit --conf or a cluster default wins.
LOCAL_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
}
# Set on every run, whatever session it gets: the job's meaning depends on them.
RUN_SPARK_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
}


class JobInputError(ValueError):
    """An argument or input the job cannot process; the message names it."""


# --- pure helpers (plain Python values, or Spark Columns through their operators) --------------
def parse_hour(value: str) -> datetime:
    """The UTC start of the hour `value` names: RFC 3339 with an offset, on the hour."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise JobInputError(f"--hour: {value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise JobInputError(f"--hour: {value!r} has no UTC offset (write e.g. 2026-11-24T13:00:00Z)")
    parsed = parsed.astimezone(UTC)
    if (parsed.minute, parsed.second, parsed.microsecond) != (0, 0, 0):
        raise JobInputError(f"--hour: {value!r} is not the start of an hour")
    return parsed


def late_cutoff(hour_start: datetime) -> datetime:
    """A reading received after this instant is late for the hour starting at `hour_start`."""
    return hour_start + HOUR + LATE_AFTER


def baseline_window(hour_start: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the summary hours that form the baseline of `hour_start`."""
    return hour_start - BASELINE_HOURS * HOUR, hour_start


def celsius_to_fahrenheit(celsius: Any) -> Any:
    return celsius * 9.0 / 5.0 + 32.0


def pooled_m2_term(count: Any, mean: Any, stddev: Any, grand_mean: Any) -> Any:
    """One summary row's share of the pooled sum of squared deviations from `grand_mean`:
    (n - 1) * s^2 + n * (m - M)^2. The pooled sample variance is sum(terms) / (sum(n) - 1)."""
    return (count - 1) * stddev * stddev + count * (mean - grand_mean) * (mean - grand_mean)


def quality_score(arrivals: Any, readings: Any, complete: Any, late: Any, duplicates: Any) -> Any:
    """data_quality_score before rounding: completeness x timeliness x uniqueness (see the module
    docstring). `readings` = arrivals - duplicates, and must be > 0."""
    return (complete / readings) * (1 - late / readings) * (1 - duplicates / arrivals)


# --- Spark --------------------------------------------------------------------------------------
def raw_schema() -> Any:
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("device_id", T.StringType()),
            T.StructField("timestamp", T.TimestampType()),
            T.StructField("temperature", T.DoubleType()),
            T.StructField("humidity", T.DoubleType()),
            T.StructField("pressure", T.DoubleType()),
            T.StructField("latitude", T.DoubleType()),
            T.StructField("longitude", T.DoubleType()),
            T.StructField("metadata_version", T.StringType()),
            T.StructField("metadata_source", T.StringType()),
            T.StructField("received_at", T.TimestampType()),
            T.StructField("batch_id", T.StringType()),
        ]
    )


def summary_schema() -> Any:
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("device_id", T.StringType()),
            T.StructField("hour", T.TimestampType()),
            T.StructField("record_count", T.LongType()),
            T.StructField("avg_temperature", T.DoubleType()),
            T.StructField("temp_stddev", T.DoubleType()),
        ]
    )


def build_session(app_name: str = "telemetry-process-hour") -> Any:
    """A SparkSession: the submitter's master and settings, or local[2] with small-machine ones.

    Under spark-submit the JVM already holds the master and every --conf (PySpark's SparkConf()
    cannot see them before the session exists), so the master is only set when this runs in a
    plain Python process; the small-machine settings fill only what the submitter left unset.
    """
    import os

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # set by spark-submit for the Python driver
    if not submitted:
        builder = builder.master("local[2]")
        for key, value in LOCAL_SPARK_CONF.items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if submitted:
        given = spark.sparkContext.getConf()
        for key, value in LOCAL_SPARK_CONF.items():
            if key.startswith("spark.sql.") and not given.contains(key):
                spark.conf.set(key, value)  # runtime settings; the rest are the submitter's
    return spark


def _path_exists(spark: Any, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(fs.exists(jpath))


def _read_parquet(spark: Any, paths: Sequence[str], schema: Any) -> Any:
    return (
        spark.read.schema(schema)
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
        .parquet(*paths)
    )


def baseline_frame(spark: Any, baseline: Sequence[str], hour_start: datetime) -> Any:
    """Per device: baseline_mean, baseline_stddev, baseline_readings (see the module docstring);
    None when no baseline path exists."""
    from pyspark.sql import functions as F

    paths = [p for p in baseline if _path_exists(spark, p)]
    if not paths:
        return None
    start, end = baseline_window(hour_start)
    rows = (
        _read_parquet(spark, paths, summary_schema())
        .where((F.col("hour") >= F.lit(start)) & (F.col("hour") < F.lit(end)))
        .where(F.col("avg_temperature").isNotNull() & (F.col("record_count") > 0))
        # A summary hour written twice (e.g. copied) counts once.
        .dropDuplicates(["device_id", "hour"])
        .select(
            "device_id",
            F.col("record_count").cast("double").alias("n"),
            F.col("avg_temperature").alias("m"),
            F.coalesce(F.col("temp_stddev"), F.lit(0.0)).alias("s"),
        )
    )
    means = rows.groupBy("device_id").agg(
        F.sum("n").alias("baseline_readings"),
        (F.sum(F.col("n") * F.col("m")) / F.sum("n")).alias("baseline_mean"),
    )
    m2 = (
        rows.join(means, "device_id")
        .groupBy("device_id")
        .agg(
            F.sum(pooled_m2_term(F.col("n"), F.col("m"), F.col("s"), F.col("baseline_mean"))).alias("m2"),
        )
    )
    return (
        means.join(m2, "device_id")
        .where(F.col("baseline_readings") >= MIN_BASELINE_READINGS)
        .select(
            "device_id",
            "baseline_mean",
            F.sqrt(F.greatest(F.col("m2"), F.lit(0.0)) / (F.col("baseline_readings") - 1)).alias(
                "baseline_stddev"
            ),
            F.col("baseline_readings").cast("long").alias("baseline_readings"),
        )
    )


def run(
    spark: Any,
    hour: str | datetime,
    raw: str | Sequence[str],
    baseline: str | Sequence[str] | None,
    processed_out: str,
    summary_out: str,
) -> dict[str, Any]:
    """Process one hour; returns the metrics (also what a Pipes materialization reports)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.monotonic()
    hour_start = parse_hour(hour) if isinstance(hour, str) else parse_hour(hour.isoformat())
    hour_end = hour_start + HOUR
    raw_paths = [raw] if isinstance(raw, str) else list(raw)
    baseline_paths = [baseline] if isinstance(baseline, str) else list(baseline or [])
    for key, value in RUN_SPARK_CONF.items():
        spark.conf.set(key, value)

    missing = [p for p in raw_paths if not _path_exists(spark, p)]
    if missing:
        raise JobInputError(f"--raw: {', '.join(missing)} does not exist")

    raw_df = _read_parquet(spark, raw_paths, raw_schema())
    in_hour = (F.col("timestamp") >= F.lit(hour_start)) & (F.col("timestamp") < F.lit(hour_end))
    read_counts = raw_df.agg(
        F.count(F.lit(1)).alias("rows_read"),
        F.count(F.when(in_hour, 1)).alias("rows_in"),
        F.count(F.when(in_hour & F.col("device_id").isNull(), 1)).alias("no_device"),
    ).first()
    if read_counts["no_device"]:
        raise JobInputError(f"--raw: {read_counts['no_device']} readings of this hour have no device_id")

    # Earliest arrival wins: received_at leads the struct; batch_id, then the values, only break
    # exact ties deterministically.
    value_cols = ["received_at", "batch_id"] + [
        c for c in raw_df.columns if c not in ("device_id", "timestamp", "received_at", "batch_id")
    ]
    in_rows = raw_df.where(in_hour).withColumn("_key", F.xxhash64("device_id", "timestamp"))
    # Duplicates are rare, so only the rows whose key hash occurs more than once are grouped: the
    # one full shuffle carries a long per row, not whole rows, and no per-row aggregation buffer
    # (a struct min over every row is a sort-based aggregate of all rows). A hash collision only
    # sends a few unique readings through the exact grouping below, which keeps them as they are.
    repeated = (
        in_rows.groupBy("_key")
        .agg(F.count(F.lit(1)).alias("_copies"))
        .where(F.col("_copies") > 1)
        .select("_key")
        .persist(StorageLevel.MEMORY_AND_DISK)  # small; read by both branches and both outputs
    )
    singles = in_rows.join(F.broadcast(repeated), "_key", "left_anti").select(
        "device_id", "timestamp", *value_cols, F.lit(0).cast("long").alias("duplicates")
    )
    first = F.min(F.struct(*[F.col(c) for c in value_cols])).alias("first")
    grouped = (
        in_rows.join(F.broadcast(repeated), "_key", "left_semi")
        .groupBy("device_id", "timestamp")
        .agg(first, (F.count(F.lit(1)) - 1).alias("duplicates"))
        .select("device_id", "timestamp", *[F.col(f"first.{c}").alias(c) for c in value_cols], "duplicates")
    )
    deduped = singles.unionByName(grouped)

    base = baseline_frame(spark, baseline_paths, hour_start)
    if base is not None:
        deduped = deduped.join(F.broadcast(base), "device_id", "left")
    else:
        deduped = (
            deduped.withColumn("baseline_mean", F.lit(None).cast("double"))
            .withColumn("baseline_stddev", F.lit(None).cast("double"))
            .withColumn("baseline_readings", F.lit(None).cast("long"))
        )

    temp = F.col("temperature")
    score = F.when(
        temp.isNotNull() & F.col("baseline_mean").isNotNull(),
        F.abs(temp - F.col("baseline_mean"))
        / F.greatest(F.coalesce(F.col("baseline_stddev"), F.lit(MIN_STDDEV)), F.lit(MIN_STDDEV)),
    )
    physical = (temp < PHYSICAL_MIN_C) | (temp > PHYSICAL_MAX_C)
    dow = F.weekday("timestamp") + 1  # weekday(): Monday = 0
    # Not persisted: caching every reading (36M rows an hour at 10,000/s) costs more than reading
    # the raw files again for the summary, and ran out of a 1 GB driver's memory.
    enriched = (
        deduped.withColumn("anomaly_score", score)
        .withColumn(
            "anomaly_flag",
            F.when(temp.isNull(), F.lit(False)).otherwise(
                F.coalesce(F.col("anomaly_score") >= SCORE_THRESHOLD, F.lit(False)) | physical
            ),
        )
        .withColumn("temperature_fahrenheit", celsius_to_fahrenheit(temp))
        .withColumn("hour", F.hour("timestamp"))
        .withColumn("day_of_week", dow)
        .withColumn("is_weekend", dow >= 6)
        .withColumn("is_late", F.col("received_at") > F.lit(late_cutoff(hour_start)))
        .withColumn(
            "is_complete",
            temp.isNotNull()
            & F.col("humidity").isNotNull()
            & F.col("pressure").isNotNull()
            & F.col("latitude").isNotNull()
            & F.col("longitude").isNotNull(),
        )
    )
    try:
        (
            enriched.select(*PROCESSED_COLUMNS)
            .repartition(1)
            .sortWithinPartitions("device_id", "timestamp")
            .write.mode("overwrite")
            .parquet(processed_out)
        )

        arrivals = F.count(F.lit(1)) + F.sum("duplicates")
        readings = F.count(F.lit(1))
        summary = (
            enriched.groupBy("device_id")
            .agg(
                readings.alias("record_count"),
                F.avg(temp).alias("avg_temperature"),
                F.min(temp).alias("min_temperature"),
                F.max(temp).alias("max_temperature"),
                F.stddev_samp(temp).alias("temp_stddev"),
                F.count(F.when(F.col("anomaly_flag"), 1)).alias("anomaly_count"),
                F.round(
                    quality_score(
                        arrivals,
                        readings,
                        F.count(F.when(F.col("is_complete"), 1)),
                        F.count(F.when(F.col("is_late"), 1)),
                        F.sum("duplicates"),
                    ),
                    4,
                ).alias("data_quality_score"),
                F.count(F.when(F.col("is_late"), 1)).alias("late_count"),
                F.sum("duplicates").cast("long").alias("duplicate_count"),
                F.max(F.col("baseline_mean").isNotNull()).alias("has_baseline"),
            )
            .withColumn("hour", F.lit(hour_start).cast("timestamp"))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        (
            summary.select(*SUMMARY_COLUMNS)
            .repartition(1)
            .sortWithinPartitions("device_id")
            .write.mode("overwrite")
            .parquet(summary_out)
        )
        totals = summary.agg(
            F.count(F.lit(1)).alias("devices"),
            F.coalesce(F.sum("record_count"), F.lit(0)).alias("rows_out"),
            F.coalesce(F.sum("duplicate_count"), F.lit(0)).alias("duplicates"),
            F.coalesce(F.sum("late_count"), F.lit(0)).alias("late"),
            F.coalesce(F.sum("anomaly_count"), F.lit(0)).alias("anomalies"),
            F.count(F.when(F.col("has_baseline"), 1)).alias("devices_with_baseline"),
            F.min("data_quality_score").alias("min_data_quality_score"),
        ).first()
        summary.unpersist()
    finally:
        repeated.unpersist()

    return {
        "hour": hour_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows_read": int(read_counts["rows_read"]),
        "rows_other_hours": int(read_counts["rows_read"] - read_counts["rows_in"]),
        "rows_in": int(read_counts["rows_in"]),
        "duplicates": int(totals["duplicates"]),
        "rows_out": int(totals["rows_out"]),
        "late": int(totals["late"]),
        "anomalies": int(totals["anomalies"]),
        "devices": int(totals["devices"]),
        "devices_with_baseline": int(totals["devices_with_baseline"]),
        "min_data_quality_score": totals["min_data_quality_score"],
        "seconds": round(time.monotonic() - started, 3),
    }


# --- command line -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="process_hour.py",
        description="Process one hour of fleet telemetry (raw -> processed + hourly_summary).",
    )
    parser.add_argument("--hour", required=True, help="the hour's start, RFC 3339: 2026-11-24T13:00:00Z")
    parser.add_argument(
        "--raw", required=True, action="append", help="dir or s3a:// uri of the hour's raw files (repeatable)"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="dir of previous hourly_summary files (repeatable, optional; missing dirs are skipped)",
    )
    parser.add_argument("--processed-out", required=True, help="the hour's processed dir (overwritten)")
    parser.add_argument("--summary-out", required=True, help="the hour's hourly_summary dir (overwritten)")
    parser.add_argument("--asset-key", default=DEFAULT_ASSET_KEY, help="asset key reported to Pipes")
    args = parser.parse_args(argv)
    try:
        parse_hour(args.hour)
    except JobInputError as exc:
        parser.error(str(exc))
    return args


def _pipes_context() -> Any:
    try:
        import dagster_pipes
    except ImportError:
        return None
    if not dagster_pipes.PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return None
    return dagster_pipes.open_dagster_pipes()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        pipes = _pipes_context()
        if pipes is not None:
            stack.enter_context(pipes)  # closing it reports an exception to Dagster
            pipes.log.info(f"processing telemetry hour {args.hour} from {', '.join(args.raw)}")
        spark = build_session()
        metrics = run(spark, args.hour, args.raw, args.baseline, args.processed_out, args.summary_out)
        if pipes is not None:
            pipes.log.info(f"telemetry hour {metrics['hour']}: {json.dumps(metrics)}")
            pipes.report_asset_materialization(
                asset_key=args.asset_key,
                metadata={
                    name: {"raw_value": metrics[name], "type": "float" if name == "seconds" else "int"}
                    for name in PIPES_METADATA
                },
            )
    print(json.dumps(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
