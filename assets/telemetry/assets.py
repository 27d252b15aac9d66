"""The telemetry lake's hourly assets: raw readings as they land, and the Spark job's processed
readings and hourly summary for the same hour.

raw_readings is materialized by the lake sensor (sensors.py) when files land in an hour; each new
materialization makes processed_readings and hourly_summary due for that hour (any hour, not only
the latest: a late reading lands in its event hour), and one Spark run makes both.
"""

import io
import uuid
from pathlib import Path
from typing import Any

import dagster as dg

from assets.shared.automation import after_parent_updates
from assets.shared.conventions import domain_asset_args
from assets.telemetry.hour_files import job_files, parquet_objects, previous_hours_objects
from assets.telemetry.partitions import (
    DOMAIN,
    HOURLY,
    PROCESSED_DATASET,
    RAW_DATASET,
    SUMMARY_DATASET,
    hour_of,
)
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.paths import partition_prefix
from resources.ledger import FileLedger, FileRef
from resources.spark import SparkJobRunner
from resources.warehouse import Warehouse

RAW = dg.AssetKey([DOMAIN, "raw_readings"])
PROCESSED = dg.AssetKey([DOMAIN, "processed_readings"])
SUMMARY = dg.AssetKey([DOMAIN, "hourly_summary"])
SCRIPT = Path(__file__).parent / "spark" / "process_hour.py"


@dg.asset(
    key=RAW,
    partitions_def=HOURLY,
    description=(
        "Raw readings of one event hour as the ingest API (or the Kinesis consumer) wrote them:"
        " raw/telemetry/readings/year=/month=/day=/hour=HH/part-*.parquet. Materialized by the"
        " telemetry_raw_listing sensor as files land; records which files the hour holds."
    ),
    kinds={"parquet"},
    **domain_asset_args(DOMAIN),
)
def raw_readings(
    context: dg.AssetExecutionContext, lake: LakeStorage, warehouse: Warehouse
) -> dg.MaterializeResult:
    import pyarrow.parquet as pq

    hour = hour_of(context.partition_key)
    objects = parquet_objects(lake, Tier.RAW, RAW_DATASET, hour)
    rows, unreadable = 0, []
    for obj in objects:
        try:
            rows += pq.ParquetFile(io.BytesIO(lake.get_bytes(obj.key))).metadata.num_rows
        except Exception as exc:  # a file another tool wrote badly: named, and left for the job to refuse
            unreadable.append(f"{obj.key}: {exc}")
    if unreadable:
        context.log.warning(f"{len(unreadable)} raw files are not readable Parquet: {unreadable[:5]}")
    FileLedger(warehouse).record(
        context.asset_key.to_user_string(),
        [FileRef(o.key, lake.etag(o)) for o in objects],
        run_id=context.run.run_id,
        partition_key=context.partition_key,
    )
    return dg.MaterializeResult(
        metadata={
            "files": len(objects),
            "rows": rows,
            "bytes": sum(o.size for o in objects),
            "unreadable_files": len(unreadable),
            "last_file_at": dg.MetadataValue.timestamp(max(o.last_modified for o in objects))
            if objects
            else dg.MetadataValue.null(),
            "path": dg.MetadataValue.path(lake.uri(parquet_prefix(hour))),
        }
    )


def parquet_prefix(hour: LakePartition) -> str:
    return partition_prefix(Tier.RAW, DOMAIN, RAW_DATASET, hour)


_PROCESSED_DESCRIPTION = (
    "Readings of the hour after Spark (assets/telemetry/spark/process_hour.py): duplicates"
    " removed (first arrival kept), late readings in their event hour and flagged, temperature in"
    " Fahrenheit, hour, day_of_week, is_weekend, anomaly_score and anomaly_flag against each"
    " device's baseline from the previous 24 hourly summaries."
)
_SUMMARY_DESCRIPTION = (
    "Per device and hour: record_count, avg/min/max/stddev temperature, anomaly_count, late_count,"
    " duplicate_count and data_quality_score = completeness x timeliness x uniqueness (defined in"
    " process_hour.py and the README)."
)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            PROCESSED,
            deps=[RAW],
            description=_PROCESSED_DESCRIPTION,
            automation_condition=after_parent_updates(),
            kinds={"spark", "parquet"},
            **domain_asset_args(DOMAIN),
        ),
        dg.AssetSpec(
            SUMMARY,
            deps=[PROCESSED],
            description=_SUMMARY_DESCRIPTION,
            kinds={"spark", "parquet"},
            **domain_asset_args(DOMAIN),
        ),
    ],
    partitions_def=HOURLY,
    can_subset=False,  # one Spark run writes both
)
def processed_and_summary(context: dg.AssetExecutionContext, lake: LakeStorage, spark: SparkJobRunner) -> Any:
    hour = hour_of(context.partition_key)
    raw = parquet_objects(lake, Tier.RAW, RAW_DATASET, hour)
    if not raw:
        raise dg.Failure(
            f"no raw readings for {context.partition_key} under {lake.uri(parquet_prefix(hour))}"
        )
    baseline = previous_hours_objects(lake, Tier.CURATED, SUMMARY_DATASET, hour)
    # The job's paths: a local work dir, or a lake staging prefix when the job runs elsewhere (EMR).
    in_lake = spark.stages_in_lake()
    files = job_files(lake, in_lake, f"telemetry-{context.run.run_id[:8]}-{uuid.uuid4().hex[:8]}")
    try:
        args = [
            "--hour", hour.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "--raw", files.input("raw", raw),
            "--baseline", files.input("baseline", baseline),
            "--processed-out", files.output("processed"),
            "--summary-out", files.output("summary"),
            "--asset-key", SUMMARY.to_user_string(),
        ]  # fmt: skip
        invocation = spark.run(context, SCRIPT, args)
        reported = _reported_metadata(invocation)
        processed_key = files.publish("processed", Tier.PROCESSED, PROCESSED_DATASET, hour)
        summary_key = files.publish("summary", Tier.CURATED, SUMMARY_DATASET, hour)
    finally:
        files.cleanup()

    counts = {
        "late_count": reported.get("late", 0),
        "duplicate_count": reported.get("duplicates", 0),
        "raw_files": len(raw),
        "baseline_files": len(baseline),
        "staged_in": "lake" if in_lake else "local",
    }
    yield dg.MaterializeResult(
        asset_key=PROCESSED,
        metadata={
            **counts,
            "rows_in": reported.get("rows_in", 0),
            "rows": reported.get("rows_out", 0),
            "anomalies": reported.get("anomalies", 0),
            "path": dg.MetadataValue.path(lake.uri(processed_key)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=SUMMARY,
        metadata={
            **counts,
            **{k: v for k, v in reported.items() if k not in ("late", "duplicates")},
            "path": dg.MetadataValue.path(lake.uri(summary_key)),
        },
    )


def _reported_metadata(invocation: dg.PipesClientCompletedInvocation) -> dict[str, Any]:
    """The metrics the job reported through Pipes, as plain values. Pipes lists a materialization
    of each selected asset even when the job reported nothing, so the job's figures are required."""
    for result in invocation.get_results():
        if isinstance(result, dg.MaterializeResult) and result.asset_key == SUMMARY:
            reported = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}
            if "rows_in" in reported:
                return reported
    raise RuntimeError(
        "the Spark job reported no materialization of telemetry/hourly_summary through Pipes"
        " (no rows_in figure): it did not run, or its Pipes messages did not arrive"
    )
