"""telemetry/sql_tables: DuckDB views over a local lake return the rows written (before and after
the first file lands); Glue tables on a moto server describe every tier."""

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa

from assets.telemetry.spark.process_hour import PROCESSED_COLUMNS, SUMMARY_COLUMNS
from assets.telemetry.sql_catalog import (
    PARQUET_SERDE,
    processed_schema,
    sql_tables,
    sql_tables_asset,
    summary_schema,
)
from resources.lake import LakePartition, Tier
from resources.warehouse import DuckDBWarehouse
from services.telemetry_api.sink import RAW_SCHEMA

VIEWS = {
    "raw_telemetry_readings",
    "processed_telemetry_readings",
    "curated_telemetry_hourly_summary",
    "archived_telemetry_raw_readings",
    "archived_telemetry_processed_readings",
    "archived_telemetry_curated_hourly_summary",
}


def raw_rows(start: datetime, n: int) -> pa.Table:
    times = [start + timedelta(seconds=37 * i) for i in range(n)]
    return pa.table(
        {
            "device_id": [f"dev-{i % 3}" for i in range(n)],
            "timestamp": times,
            "temperature": [20.0 + i for i in range(n)],
            "humidity": [50.0] * n,
            "pressure": [1000.0] * n,
            "latitude": [37.5] * n,
            "longitude": [127.0] * n,
            "metadata_version": ["1"] * n,
            "metadata_source": ["test"] * n,
            "received_at": times,
            "batch_id": [f"b{i}" for i in range(n)],
        },
        schema=RAW_SCHEMA,
    )


def processed_rows(start: datetime, n: int) -> pa.Table:
    temps = [10.0 + i for i in range(n)]
    return pa.table(
        {
            "device_id": [f"dev-{i}" for i in range(n)],
            "temperature": temps,
            "humidity": [40.0] * n,
            "pressure": [1001.0] * n,
            "timestamp": [start + timedelta(minutes=i) for i in range(n)],
            "temperature_fahrenheit": [t * 9 / 5 + 32 for t in temps],
            "anomaly_flag": [i == 0 for i in range(n)],
            "anomaly_score": [4.5] + [0.1] * (n - 1),
            "hour": [start.hour] * n,
            "day_of_week": [start.isoweekday()] * n,
            "is_weekend": [start.isoweekday() >= 6] * n,
            "is_late": [False] * n,
        },
        schema=processed_schema(),
    )


def summary_rows(start: datetime, n: int) -> pa.Table:
    return pa.table(
        {
            "device_id": [f"dev-{i}" for i in range(n)],
            "hour": [start] * n,
            "record_count": [60] * n,
            "avg_temperature": [21.5] * n,
            "min_temperature": [19.0] * n,
            "max_temperature": [24.0] * n,
            "temp_stddev": [1.25] * n,
            "anomaly_count": [1] * n,
            "data_quality_score": [0.98] * n,
            "late_count": [0] * n,
            "duplicate_count": [2] * n,
        },
        schema=summary_schema(),
    )


def test_schemas_are_the_spark_jobs_columns():
    assert processed_schema().names == list(PROCESSED_COLUMNS)
    assert summary_schema().names == list(SUMMARY_COLUMNS)


def test_duckdb_views_read_every_tier_before_and_after_data(local_lake, tmp_path):
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    resources = {"lake": local_lake, "warehouse": warehouse}

    # No files yet: the views exist, are empty and have their columns and types.
    result = dg.materialize([sql_tables_asset], resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node(sql_tables_asset.op.name)[0].metadata
    assert meta["engine"].value == "duckdb"
    assert meta["rows"].value == dict.fromkeys(VIEWS, 0)
    described = {
        r["column_name"]: r["column_type"]
        for r in warehouse.query("DESCRIBE processed_telemetry_readings").to_pylist()
    }
    assert list(described) == [*PROCESSED_COLUMNS, "year", "month", "day"]
    assert described["hour"] == "INTEGER" and described["anomaly_flag"] == "BOOLEAN"
    raw_columns = [r["column_name"] for r in warehouse.query("DESCRIBE raw_telemetry_readings").to_pylist()]
    assert raw_columns == [*RAW_SCHEMA.names, "year", "month", "day", "hour"]

    # Files land after the views were made: the views read them with no refresh.
    h13 = datetime.now(UTC).replace(hour=13, minute=0, second=0, microsecond=0) - timedelta(days=2)
    h14 = h13 + timedelta(hours=1)
    raw13, raw14 = raw_rows(h13, 5), raw_rows(h14, 3)
    local_lake.write_parquet(raw13, Tier.RAW, "telemetry", "readings", LakePartition(h13.date(), 13))
    local_lake.write_parquet(raw14, Tier.RAW, "telemetry", "readings", LakePartition(h14.date(), 14))
    processed = processed_rows(h13, 4)
    local_lake.write_parquet(
        processed,
        Tier.PROCESSED,
        "telemetry",
        "readings",
        LakePartition(h13.date(), 13),
        "part-00000.parquet",
    )
    summary = summary_rows(h13, 2)
    local_lake.write_parquet(
        summary,
        Tier.CURATED,
        "telemetry",
        "hourly_summary",
        LakePartition(h13.date(), 13),
        "part-00000.parquet",
    )
    # A file being written (the lake's hidden temporary name) is not read.
    (
        tmp_path
        / "lake"
        / "raw/telemetry/readings"
        / LakePartition(h13.date(), 13).path
        / ".tmp-x-part.parquet"
    ).write_bytes(b"half a file")

    by_hour = warehouse.query(
        "SELECT year, month, day, hour, count(*) AS n, sum(temperature) AS t"
        " FROM raw_telemetry_readings GROUP BY ALL ORDER BY hour"
    ).to_pylist()
    assert by_hour == [
        {
            "year": h13.year,
            "month": h13.month,
            "day": h13.day,
            "hour": 13,
            "n": 5,
            "t": 20 + 21 + 22 + 23 + 24.0,
        },
        {"year": h14.year, "month": h14.month, "day": h14.day, "hour": 14, "n": 3, "t": 20 + 21 + 22.0},
    ]
    got = warehouse.query(
        "SELECT * EXCLUDE (year, month, day) FROM processed_telemetry_readings ORDER BY device_id"
    )
    assert got.cast(processed.schema).to_pylist() == processed.to_pylist()
    # The summary's `hour` stays the hour's start timestamp (not the path's hour=13).
    curated = warehouse.query(
        "SELECT device_id, hour, record_count, temp_stddev, day FROM curated_telemetry_hourly_summary"
        " ORDER BY device_id"
    ).to_pylist()
    assert [r["hour"].astimezone(UTC) for r in curated] == [h13, h13]
    assert [(r["device_id"], r["record_count"], r["temp_stddev"], r["day"]) for r in curated] == [
        ("dev-0", 60, 1.25, h13.day),
        ("dev-1", 60, 1.25, h13.day),
    ]
    # The lake's own listings do not see the views' schema files as data.
    assert len(local_lake.parquet_keys(Tier.RAW, "telemetry", "readings")) == 2


def test_glue_tables_describe_every_tier(s3_lake, tmp_path, monkeypatch):
    database = f"telemetry_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PLATFORM_TELEMETRY_GLUE_DATABASE", database)
    resources = {"lake": s3_lake, "warehouse": DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))}
    assert dg.materialize([sql_tables_asset], resources=resources).success
    # A second run updates the tables in place.
    result = dg.materialize([sql_tables_asset], resources=resources)
    assert (
        result.asset_materializations_for_node(sql_tables_asset.op.name)[0].metadata["engine"].value == "glue"
    )

    glue = s3_lake.aws.client("glue")
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=database)["TableList"]}
    assert set(tables) == VIEWS
    assert not (tmp_path / "wh.duckdb").exists()  # S3 lake: no DuckDB views

    processed = tables["processed_telemetry_readings"]
    sd = processed["StorageDescriptor"]
    assert sd["Location"] == f"s3://{s3_lake.bucket_name}/lake/processed/telemetry/readings/"
    # `hour` is the partition key (the same value as the job's column), never a column twice.
    assert [c["Name"] for c in sd["Columns"]] == [c for c in PROCESSED_COLUMNS if c != "hour"]
    assert {c["Name"]: c["Type"] for c in sd["Columns"]}["timestamp"] == "timestamp"
    assert [(k["Name"], k["Type"]) for k in processed["PartitionKeys"]] == [
        ("year", "int"),
        ("month", "int"),
        ("day", "int"),
        ("hour", "int"),
    ]
    assert sd["SerdeInfo"]["SerializationLibrary"] == PARQUET_SERDE
    assert processed["Parameters"]["storage.location.template"] == (
        f"s3://{s3_lake.bucket_name}/lake/processed/telemetry/readings/"
        "year=${year}/month=${month}/day=${day}/hour=${hour}/"
    )
    assert processed["Parameters"]["projection.month.digits"] == "2"

    curated = tables["curated_telemetry_hourly_summary"]
    assert [k["Name"] for k in curated["PartitionKeys"]] == ["year", "month", "day"]
    columns = {c["Name"]: c["Type"] for c in curated["StorageDescriptor"]["Columns"]}
    assert columns["hour"] == "timestamp" and columns["record_count"] == "bigint"

    archived = tables["archived_telemetry_raw_readings"]
    assert archived["StorageDescriptor"]["Location"].endswith("/lake/archived/telemetry/raw_readings/")
    assert [c["Name"] for c in archived["StorageDescriptor"]["Columns"]] == RAW_SCHEMA.names
    assert {t.name for t in sql_tables()} == VIEWS
