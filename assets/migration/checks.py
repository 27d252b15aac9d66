"""Checks on the migrated tables: reconciliation with the source, keys, retention, PII."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets.migration import DOMAIN
from assets.migration.extract import table_ref
from assets.migration.loads import each_partition, window
from assets.migration.registry import LoadMode, TableSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import LoadState, read_partition_batches
from resources.sql_source import SqlSource
from resources.warehouse.sql import quote_identifier

PII_SAMPLE = 2000


def _source_count(db: SqlSource, table: TableSpec, where: list[Any]) -> int:
    import sqlalchemy as sa

    stmt = sa.select(sa.func.count()).select_from(table_ref(table.source_table))
    for clause in where:
        stmt = stmt.where(clause)
    with db.engine().connect() as conn:
        return int(conn.execute(stmt).scalar() or 0)


def lake_row_count(lake: LakeStorage, tier: Tier, dataset: str, partition: LakePartition | None) -> int:
    return sum(b.num_rows for b in read_partition_batches(lake, tier, DOMAIN, dataset, partition))


def raw_check_specs(key: dg.AssetKey, table: TableSpec) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(
            "source_row_count_matches",
            asset=key,
            blocking=True,
            description="Rows per partition in the raw tier equal the source's rows "
            "(up to the loaded watermark).",
        )
    ]
    if table.primary_key:
        specs.append(
            dg.AssetCheckSpec("primary_key_unique", asset=key, description="No duplicate primary keys.")
        )
    if table.retention_days:
        specs.append(
            dg.AssetCheckSpec(
                "retention_respected",
                asset=key,
                description=f"No partition older than {table.retention_days} days.",
            )
        )
    return specs


def cleansed_check_specs(key: dg.AssetKey, table: TableSpec) -> list[dg.AssetCheckSpec]:
    if not table.pii:
        return []
    return [
        dg.AssetCheckSpec(
            "no_plaintext_pii",
            asset=key,
            blocking=True,
            description="No source value of a PII column appears in any column of the cleansed tier.",
        )
    ]


def raw_checks(
    lake: LakeStorage,
    db: SqlSource,
    table: TableSpec,
    dataset: str,
    partitions: list[LakePartition] | None,
    key: dg.AssetKey,
) -> Iterator[dg.AssetCheckResult]:
    import sqlalchemy as sa

    state = LoadState(lake, DOMAIN, dataset)
    mismatches, counts = {}, {}
    for partition in each_partition(partitions):
        where = window(table, [partition] if partition else None)
        if table.load_mode == LoadMode.APPEND and table.watermark_column:
            loaded = state.watermark(partition)
            # Only rows up to the watermark the load reached; later ones belong to the next run.
            where.append(sa.column(table.watermark_column) <= loaded if loaded is not None else sa.false())
        source_rows = _source_count(db, table, where)
        lake_rows = lake_row_count(lake, Tier.RAW, dataset, partition)
        label = partition.dagster_key if partition else "all"
        counts[label] = {"source": source_rows, "lake": lake_rows}
        if source_rows != lake_rows:
            mismatches[label] = counts[label]
    yield dg.AssetCheckResult(
        asset_key=key,
        check_name="source_row_count_matches",
        passed=not mismatches,
        metadata={
            "partitions": len(counts),
            "mismatches": dg.MetadataValue.json(mismatches),
            "counts": dg.MetadataValue.json(dict(list(counts.items())[:50])),
        },
    )
    if table.primary_key:
        duplicates = _duplicate_keys(lake, table, dataset, partitions)
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="primary_key_unique",
            passed=duplicates == 0,
            metadata={"duplicate_keys": duplicates},
        )
    if table.retention_days:
        cutoff = (datetime.now(UTC) - timedelta(days=table.retention_days)).date()
        expired = [p.dagster_key for p in lake.list_partitions(Tier.RAW, DOMAIN, dataset) if p.day < cutoff]
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="retention_respected",
            passed=not expired,
            metadata={
                "cutoff": cutoff.isoformat(),
                "expired_partitions": dg.MetadataValue.json(expired[:50]),
            },
        )


def _duplicate_keys(
    lake: LakeStorage, table: TableSpec, dataset: str, partitions: list[LakePartition] | None
) -> int:
    import duckdb
    import pyarrow as pa

    batches = [
        b.select(table.primary_key)
        for p in each_partition(partitions)
        for b in read_partition_batches(lake, Tier.RAW, DOMAIN, dataset, p)
    ]
    if not batches:
        return 0
    keys = pa.Table.from_batches(batches)
    cols = ", ".join(quote_identifier(c) for c in table.primary_key)
    with duckdb.connect() as con:
        con.register("k", keys)
        row = con.execute(
            f"SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT {cols} FROM k)) FROM k"
        ).fetchall()[0]
    return int(row[0]) if row else 0


def cleansed_checks(
    lake: LakeStorage,
    db: SqlSource,
    table: TableSpec,
    dataset: str,
    partitions: list[LakePartition] | None,
    key: dg.AssetKey,
) -> Iterator[dg.AssetCheckResult]:
    if not table.pii:
        return
    import pyarrow as pa
    import pyarrow.compute as pc
    import sqlalchemy as sa

    samples: set[str] = set()
    with db.engine().connect() as conn:
        for column in table.pii:
            col: Any = sa.column(column)
            stmt = (
                sa.select(col)
                .distinct()
                .select_from(table_ref(table.source_table))
                .where(col.is_not(None))
                .limit(PII_SAMPLE)
            )
            # Very short values ('M', '1') would match by chance; they identify no one.
            samples |= {str(v).strip() for (v,) in conn.execute(stmt) if len(str(v).strip()) >= 4}
    needles = pa.array(sorted(samples), pa.string())
    found: dict[str, int] = {}
    for partition in each_partition(partitions):
        for batch in read_partition_batches(lake, Tier.PROCESSED, DOMAIN, dataset, partition):
            for field, column in zip(batch.schema, batch.columns, strict=True):
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                    hits = pc.sum(pc.is_in(column, value_set=needles)).as_py() or 0
                    if hits:
                        found[field.name] = found.get(field.name, 0) + hits
    yield dg.AssetCheckResult(
        asset_key=key,
        check_name="no_plaintext_pii",
        passed=not found,
        metadata={"sampled_source_values": len(samples), "plaintext_hits": dg.MetadataValue.json(found)},
    )
