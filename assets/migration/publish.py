"""The cleansed tier in the warehouse (one table per registered table) and the analyst views over it."""

from __future__ import annotations

from assets.migration import DOMAIN
from assets.migration.loads import partition_end
from assets.migration.registry import SourceSystem, TableSpec, ViewSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import partition_schema, read_partition_batches
from resources.warehouse import Warehouse
from resources.warehouse.sql import quote_identifier, quote_table


def warehouse_table(source: str, table: str) -> str:
    return f"{DOMAIN}_{source}.{table}"


def view_name(source: str, view: str) -> str:
    return f"{DOMAIN}_{source}_views.{view}"


def _predicate(spec: TableSpec, partition: LakePartition) -> str:
    assert spec.partition_column  # only partitioned tables are published by partition
    start, end = partition.day, partition_end(spec, partition)
    column = f"CAST({quote_identifier(spec.partition_column)} AS DATE)"
    return f"{column} >= DATE '{start.isoformat()}' AND {column} < DATE '{end.isoformat()}'"


def publish(
    warehouse: Warehouse,
    lake: LakeStorage,
    source: str,
    spec: TableSpec,
    dataset: str,
    partitions: list[LakePartition] | None,
) -> int:
    """Replace the warehouse copy of the given cleansed partitions (or of the whole table)."""
    import pyarrow as pa

    schema = partition_schema(lake, Tier.PROCESSED, DOMAIN, dataset)
    if schema is None:
        raise FileNotFoundError(f"{dataset}: nothing in the cleansed tier to publish")
    target = warehouse_table(source, spec.name)
    if not partitions:
        data = pa.Table.from_batches(
            list(read_partition_batches(lake, Tier.PROCESSED, DOMAIN, dataset, None)), schema
        )
        return warehouse.load(target, data, "replace")
    rows = 0
    for partition in partitions:
        batches = list(read_partition_batches(lake, Tier.PROCESSED, DOMAIN, dataset, partition))
        rows += warehouse.replace_where(
            target, pa.Table.from_batches(batches, schema), _predicate(spec, partition)
        )
    return rows


def create_view(warehouse: Warehouse, source: SourceSystem, view: ViewSpec) -> int:
    """(Re)create an analyst view; returns its row count."""
    sql = view.sql.format(**{t: warehouse_table(source.name, t) for t in view.tables})
    name = quote_table(view_name(source.name, view.name))
    warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(f'{DOMAIN}_{source.name}_views')}")
    warehouse.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    return int(warehouse.query(f"SELECT count(*) AS n FROM {name}").column("n")[0].as_py())
