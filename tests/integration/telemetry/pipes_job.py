"""A tiny PySpark job for the runner tests: per device, count and mean temperature.

    spark-submit pipes_job.py --input <parquet dir> --output <dir>

It reports through dagster_pipes (a log line and the materialization's metadata,
including the Spark master and application id it ran under).
"""

from __future__ import annotations

import argparse

from dagster_pipes import open_dagster_pipes
from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    with open_dagster_pipes() as pipes:
        spark = SparkSession.builder.appName("pipes_job").getOrCreate()
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        readings = spark.read.parquet(args.input)
        rows_in = readings.count()
        pipes.log.info(f"pipes_job: read {rows_in} rows from {args.input}")
        summary = readings.groupBy("device_id").agg(
            F.count(F.lit(1)).alias("record_count"),
            F.round(F.avg("temperature"), 6).alias("avg_temperature"),
        )
        summary.coalesce(1).write.mode("overwrite").parquet(args.output)
        devices = summary.count()
        sc = spark.sparkContext
        pipes.report_asset_materialization(
            metadata={
                "rows_in": rows_in,
                "devices": devices,
                "spark_master": sc.master,
                "spark_app_id": sc.applicationId,
            }
        )
        spark.stop()


if __name__ == "__main__":
    main()
