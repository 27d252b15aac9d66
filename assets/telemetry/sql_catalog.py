"""Every telemetry tier queryable with SQL: DuckDB views over a local lake, Glue tables over S3.

Tables (the same names in both engines), `<tier>_telemetry_<dataset>`:

    raw_telemetry_readings                 partitions year, month, day, hour
    processed_telemetry_readings           partitions year, month, day, hour
    curated_telemetry_hourly_summary       partitions year, month, day
    archived_telemetry_raw_readings        partitions year, month, day  (and the two others
    archived_telemetry_processed_readings   archived datasets alike)
    archived_telemetry_curated_hourly_summary

A partition key that is also a data column is the data column: processed readings carry `hour`
(0-23, the partition's own hour), and the hourly summary's `hour` is the hour's start timestamp,
so its table is partitioned by day (the seed's DDL) and Athena reads the hour directories below.

Local lake (lifecycle.lake_in_s3 decides): DuckDB views in the warehouse over
`<dataset>/**/[!.]*.parquet` (never the lake's in-progress '.tmp-' files), union_by_name, with
the partition keys parsed from the file path (DuckDB's hive partitioning would let the path's
`hour=` overwrite the files' `hour` column). Each dataset gets a typed, empty
`_sql_schema.parquet` (hidden from the lake's listings and from Spark), so a view reads before
the first file lands and always has every column. Views read the files at query time: new
partitions need no refresh.

S3 lake: Glue tables (Parquet SerDe, EXTERNAL_TABLE) at the dataset's s3:// location, with
Athena partition projection, so new partitions need no crawler or MSCK REPAIR.
"""

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.shared.automation import initial_load
from assets.shared.conventions import PARTITIONS_START, domain_asset_args
from assets.telemetry.lifecycle import DOMAIN, TIERED_DATASETS, lake_in_s3, s3_prefix
from resources import settings
from resources.lake import LakeStorage, LocalLake, S3Lake, Tier, dataset_prefix
from resources.warehouse import Warehouse
from resources.warehouse.sql import quote_identifier

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_FILE = "_sql_schema.parquet"
DAY_KEYS = ("year", "month", "day")
HOUR_KEYS = ("year", "month", "day", "hour")
_KEY_DIGITS = {"year": 4, "month": 2, "day": 2, "hour": 2}
_KEY_RANGES = {"month": "1,12", "day": "1,31", "hour": "0,23"}
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


def processed_schema() -> "pa.Schema":
    """processed/telemetry/readings as the Spark job writes it (process_hour.PROCESSED_COLUMNS)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("device_id", pa.string()),
            ("temperature", pa.float64()),
            ("humidity", pa.float64()),
            ("pressure", pa.float64()),
            ("timestamp", ts),
            ("temperature_fahrenheit", pa.float64()),
            ("anomaly_flag", pa.bool_()),
            ("anomaly_score", pa.float64()),
            ("hour", pa.int32()),
            ("day_of_week", pa.int32()),
            ("is_weekend", pa.bool_()),
            ("is_late", pa.bool_()),
        ]
    )


def summary_schema() -> "pa.Schema":
    """curated/telemetry/hourly_summary (process_hour.SUMMARY_COLUMNS)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("device_id", pa.string()),
            ("hour", pa.timestamp("us", tz="UTC")),
            ("record_count", pa.int64()),
            ("avg_temperature", pa.float64()),
            ("min_temperature", pa.float64()),
            ("max_temperature", pa.float64()),
            ("temp_stddev", pa.float64()),
            ("anomaly_count", pa.int64()),
            ("data_quality_score", pa.float64()),
            ("late_count", pa.int64()),
            ("duplicate_count", pa.int64()),
        ]
    )


def raw_schema() -> "pa.Schema":
    from services.telemetry_api.sink import RAW_SCHEMA  # the raw tier's contract

    return RAW_SCHEMA


@dataclass(frozen=True)
class SqlTable:
    name: str
    tier: Tier
    dataset: str
    schema: "pa.Schema"
    partition_keys: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.tier, DOMAIN, self.dataset)

    def key_columns(self) -> list[str]:
        """Partition keys that are not data columns (the data column wins)."""
        return [k for k in self.partition_keys if k not in self.schema.names]


def sql_tables() -> list[SqlTable]:
    schemas = {Tier.RAW: raw_schema(), Tier.PROCESSED: processed_schema(), Tier.CURATED: summary_schema()}
    tables = []
    for ds in TIERED_DATASETS:
        schema = schemas[ds.tier]
        # The summary's `hour` column is a timestamp, not the path's hour: partition it by day.
        keys = DAY_KEYS if ds.tier == Tier.CURATED else HOUR_KEYS
        tables.append(SqlTable(f"{ds.tier.value}_{DOMAIN}_{ds.dataset}", ds.tier, ds.dataset, schema, keys))
    for ds in TIERED_DATASETS:
        name = f"{Tier.ARCHIVED.value}_{DOMAIN}_{ds.archived_dataset}"
        tables.append(SqlTable(name, Tier.ARCHIVED, ds.archived_dataset, schemas[ds.tier], DAY_KEYS))
    return tables


# --- DuckDB views (local lake) ---------------------------------------------------------------
def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_sql(lake: LakeStorage, table: SqlTable) -> str:
    """The SELECT of a table's view over the lake's files."""
    pattern = lake.uri(table.prefix).rstrip("/") + "/**/[!.]*.parquet"  # a local uri drops the slash
    keys = []
    for k in table.key_columns():
        regex = _sql_string("/" + k + r"=(\d+)/")
        keys.append(
            f"CAST(NULLIF(regexp_extract(filename, {regex}, 1), '') AS INTEGER) AS {quote_identifier(k)}"
        )
    select = ", ".join(["* EXCLUDE (filename)", *keys])
    return (
        f"SELECT {select} FROM read_parquet({_sql_string(pattern)},"
        " union_by_name = true, filename = true, hive_partitioning = false)"
    )


def write_schema_file(lake: LakeStorage, table: SqlTable) -> str:
    """The dataset's empty, typed Parquet file that keeps its view readable with no data."""
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table.schema.empty_table(), buffer)
    key = table.prefix + SCHEMA_FILE  # hidden ('_'): not data to the lake's listings or Spark
    lake.put_bytes(key, buffer.getvalue())
    return key


def create_duckdb_views(lake: LakeStorage, warehouse: Warehouse) -> dict[str, int]:
    """(Re)create every table's view; returns each view's row count."""
    counts = {}
    for table in sql_tables():
        write_schema_file(lake, table)
        name = quote_identifier(table.name)
        warehouse.execute(f"CREATE OR REPLACE VIEW {name} AS {view_sql(lake, table)}")
        counts[table.name] = int(warehouse.query(f"SELECT count(*) AS n FROM {name}").column("n")[0].as_py())
    return counts


# --- Glue tables (S3 lake) -------------------------------------------------------------------
def hive_type(arrow_type: "pa.DataType") -> str:
    import pyarrow as pa

    checks = [
        (pa.types.is_string, "string"),
        (pa.types.is_large_string, "string"),
        (pa.types.is_float64, "double"),
        (pa.types.is_float32, "float"),
        (pa.types.is_int64, "bigint"),
        (pa.types.is_int32, "int"),
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_timestamp, "timestamp"),
        (pa.types.is_date32, "date"),
    ]
    for check, name in checks:
        if check(arrow_type):
            return name
    raise ValueError(f"no Glue/Hive type for Arrow type {arrow_type}")


def glue_table_input(lake: S3Lake, table: SqlTable, last_year: int) -> dict[str, Any]:
    """The Glue TableInput of a table: Parquet at its s3:// location, projected partitions."""
    location = f"s3://{lake.bucket_name}/{s3_prefix(lake, table.prefix)}"
    first_year = int(PARTITIONS_START[:4]) - 1  # a year of backfill before the platform's start
    params = {
        "classification": "parquet",
        "EXTERNAL": "TRUE",
        "parquet.compression": "ZSTD",
        "projection.enabled": "true",
        "storage.location.template": location + "/".join(f"{k}=${{{k}}}" for k in table.partition_keys) + "/",
    }
    for key in table.partition_keys:
        params[f"projection.{key}.type"] = "integer"
        params[f"projection.{key}.range"] = _KEY_RANGES.get(key, f"{first_year},{last_year}")
        params[f"projection.{key}.digits"] = str(_KEY_DIGITS[key])
    return {
        "Name": table.name,
        "Description": f"{table.tier.value}/{DOMAIN}/{table.dataset} (Parquet, zstd)",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": params,
        "PartitionKeys": [{"Name": k, "Type": "int"} for k in table.partition_keys],
        "StorageDescriptor": {
            "Columns": [
                {"Name": f.name, "Type": hive_type(f.type)}
                for f in table.schema
                if f.name not in table.partition_keys
            ],
            "Location": location,
            "InputFormat": PARQUET_INPUT,
            "OutputFormat": PARQUET_OUTPUT,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
        },
    }


def register_glue_tables(lake: S3Lake, database: str | None = None) -> list[str]:
    """Create or update the Glue database and every table; returns the table names."""
    glue = lake.aws.client("glue")
    database = database or settings.telemetry_glue_database()
    with contextlib.suppress(glue.exceptions.AlreadyExistsException):
        glue.create_database(DatabaseInput={"Name": database, "Description": "fleet telemetry tiers"})
    last_year = datetime.now(UTC).year + 1  # the asset runs daily, so the range keeps up
    names = []
    for table in sql_tables():
        table_input = glue_table_input(lake, table, last_year)
        try:
            glue.create_table(DatabaseName=database, TableInput=table_input)
        except glue.exceptions.AlreadyExistsException:
            glue.update_table(DatabaseName=database, TableInput=table_input)
        names.append(table.name)
    return names


@dg.asset(
    key=[DOMAIN, "sql_tables"],
    description=(
        "Every telemetry tier as a SQL table: DuckDB views in the warehouse over a local lake,"
        " Glue catalog tables (Athena, partition projection) over an S3 lake."
    ),
    automation_condition=initial_load() | dg.AutomationCondition.on_cron("0 4 * * *"),
    **domain_asset_args(DOMAIN),
)
def sql_tables_asset(
    context: dg.AssetExecutionContext, lake: LakeStorage, warehouse: Warehouse
) -> dg.MaterializeResult:
    if lake_in_s3(lake):
        assert isinstance(lake, S3Lake)
        database = settings.telemetry_glue_database()
        names = register_glue_tables(lake, database)
        context.log.info(f"Glue database {database}: {len(names)} tables")
        return dg.MaterializeResult(
            metadata={"engine": "glue", "database": database, "tables": dg.MetadataValue.json(names)}
        )
    if not isinstance(lake, LocalLake):
        raise TypeError(f"telemetry/sql_tables supports LocalLake and S3Lake, not {type(lake).__name__}")
    counts = create_duckdb_views(lake, warehouse)
    context.log.info(f"DuckDB views: {counts}")
    return dg.MaterializeResult(
        metadata={
            "engine": "duckdb",
            "tables": dg.MetadataValue.json(sorted(counts)),
            "rows": dg.MetadataValue.json(counts),
        }
    )


ASSETS = [sql_tables_asset]
