"""The telemetry domain's names and its hourly partitions (by the readings' event hour)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from assets.shared.conventions import PARTITIONS_START
from resources.lake import LakeKey, LakePartition, LakePathError

DOMAIN = "telemetry"
RAW_DATASET = "readings"  # raw/telemetry/readings (written by services/telemetry_api)
PROCESSED_DATASET = "readings"  # processed/telemetry/readings
SUMMARY_DATASET = "hourly_summary"  # curated/telemetry/hourly_summary
# The Spark job writes one file per hour directory; a fixed name makes a re-run replace it.
OUTPUT_FILE = "part-00000.parquet"

# end_offset=1: the current hour is a partition, so readings are processed while it is open.
HOURLY = dg.HourlyPartitionsDefinition(start_date=f"{PARTITIONS_START}-00:00", end_offset=1)


def hour_of(partition_key: str) -> LakePartition:
    return LakePartition.from_key(partition_key, HOURLY)


def open_hour_key(lake_key: LakeKey) -> str:
    """The partition of a raw file's event hour; an hour that has not begun yet (a device clock up
    to 5 minutes fast) is refused, and the sensor's next full listing finds the file once it has."""
    if lake_key.partition is None or lake_key.partition.hour is None:
        raise LakePathError(f"{lake_key.key} has no hour=HH in its path")
    start = lake_key.partition.start
    if start > datetime.now(UTC):
        raise LakePathError(f"{lake_key.key}: hour {start:%Y-%m-%dT%H:00Z} has not begun")
    return lake_key.partition.dagster_key
