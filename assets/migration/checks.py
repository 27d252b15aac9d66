"""Checks on the migrated tables: reconciliation with the source, keys, retention, PII."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets.migration import DOMAIN
from assets.migration.extract import table_ref
from assets.migration.loads import each_partition
from assets.migration.reconcile import PartitionCheck, partitions_to_check, reconcile
from assets.migration.registry import TableSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import read_partition_batches
from resources.sql_columns import TablePlan
from resources.sql_source import SqlSource
from resources.warehouse.sql import quote_identifier

PII_SAMPLE = 2000


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


def raw_check_specs(key: dg.AssetKey, table: TableSpec) -> list[dg.AssetCheckSpec]:
    rechecked = (
        f" and the {table.recheck_partitions} partitions loaded before them" if table.partitioned else ""
    )
    specs = [
        dg.AssetCheckSpec(
            "source_row_count_matches",
            asset=key,
            blocking=True,
            description=f"Rows in the raw tier equal the source's, for the run's partitions{rechecked};"
            " rows the lake lacks are added first. A failure holds back the cleansed tier and the"
            " warehouse for that partition until it is loaded clean.",
        ),
        dg.AssetCheckSpec(
            "source_checksum_matches",
            asset=key,
            blocking=True,
            description="An order-independent checksum (count and sum of 60-bit row hashes over every"
            " column read) is equal in the source, computed there by one query, and in the raw tier.",
        ),
    ]
    if table.primary_key:
        specs.append(
            dg.AssetCheckSpec(
                "primary_key_unique", asset=key, blocking=True, description="No duplicate primary keys."
            )
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


@dataclass
class RawVerdict:
    results: list[dg.AssetCheckResult]
    # partition key ("all") -> (check, reason, figures) of a failed blocking check
    failures: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)  # partition keys that passed every check
    checks: list[PartitionCheck] = field(default_factory=list)


def raw_checks(
    lake: LakeStorage,
    db: SqlSource,
    table: TableSpec,
    dataset: str,
    partitions: list[LakePartition] | None,
    key: dg.AssetKey,
    plan: TablePlan,
) -> RawVerdict:
    checked = partitions_to_check(lake, table, dataset, partitions)
    found = reconcile(lake, db, table, plan, dataset, checked)
    verdict = RawVerdict(results=[], checks=found)
    count_fail = {c.partition: c.figures() for c in found if not c.counts_match}
    sum_fail = {c.partition: c.figures() for c in found if not c.checksums_match}
    figures = {c.partition: c.figures() for c in found}
    repaired = {c.partition: c.repaired_rows for c in found if c.repaired_rows}
    for check in found:
        if check.reason:
            name = "source_row_count_matches" if not check.counts_match else "source_checksum_matches"
            verdict.failures[check.partition] = (name, check.reason, check.figures())
    verdict.results.append(
        dg.AssetCheckResult(
            asset_key=key,
            check_name="source_row_count_matches",
            passed=not count_fail,
            description=_describe(found, "counts"),
            metadata={
                "partitions_checked": len(found),
                "source_rows": sum(c.source_rows for c in found),
                "lake_rows": sum(c.lake_rows for c in found),
                "mismatches": dg.MetadataValue.json(count_fail),
                "repaired_rows": dg.MetadataValue.json(repaired),
            },
        )
    )
    verdict.results.append(
        dg.AssetCheckResult(
            asset_key=key,
            check_name="source_checksum_matches",
            passed=not sum_fail,
            description=_describe(found, "checksums"),
            metadata={
                "partitions_checked": len(found),
                "mismatches": dg.MetadataValue.json(sum_fail),
                "by_partition": dg.MetadataValue.json(dict(list(figures.items())[:50])),
            },
        )
    )
    if table.primary_key:
        duplicates = _duplicate_keys(lake, table, dataset, partitions)
        verdict.results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name="primary_key_unique",
                passed=duplicates == 0,
                metadata={"duplicate_keys": duplicates},
            )
        )
        if duplicates:
            label = ",".join(p.dagster_key for p in partitions) if partitions else "all"
            reason = f"{duplicates:,} duplicate values of the primary key {table.primary_key} in the raw tier"
            verdict.failures.setdefault(label, ("primary_key_unique", reason, {"duplicate_keys": duplicates}))
    verdict.passed = [c.partition for c in found if c.partition not in verdict.failures]
    if table.retention_days:
        cutoff = (datetime.now(UTC) - timedelta(days=table.retention_days)).date()
        expired = [p.dagster_key for p in lake.list_partitions(Tier.RAW, DOMAIN, dataset) if p.day < cutoff]
        verdict.results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name="retention_respected",
                passed=not expired,
                metadata={
                    "cutoff": cutoff.isoformat(),
                    "expired_partitions": dg.MetadataValue.json(expired[:50]),
                },
            )
        )
    return verdict


def _describe(found: list[PartitionCheck], what: str) -> str:
    bad = [c for c in found if (not c.counts_match if what == "counts" else not c.checksums_match)]
    if not bad:
        return f"{len(found)} partition(s): source and lake {what} equal."
    return "; ".join(c.reason or c.partition for c in bad[:5])


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
            for fld, column in zip(batch.schema, batch.columns, strict=True):
                if pa.types.is_string(fld.type) or pa.types.is_large_string(fld.type):
                    hits = pc.sum(pc.is_in(column, value_set=needles)).as_py() or 0
                    if hits:
                        found[fld.name] = found.get(fld.name, 0) + hits
    yield dg.AssetCheckResult(
        asset_key=key,
        check_name="no_plaintext_pii",
        passed=not found,
        metadata={"sampled_source_values": len(samples), "plaintext_hits": dg.MetadataValue.json(found)},
    )
