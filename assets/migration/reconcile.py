"""Reconciliation of the raw tier with the source: count and checksum per partition, and repair.

The source's figures come from one query (count and sum of row hashes, grouped by
partition); the lake's from DuckDB over the partition's files. Every load checks
its own partitions and re-checks the table's `recheck_partitions` earlier ones, so
a row that arrived after its partition was loaded is found on a later load.

A partition that differs is compared row by row (assets.migration.diff, by key or
by row hash) and repaired where the load mode allows: rows missing from the lake
are added (every mode); rows the source no longer has, or has changed, are
replaced by an overwrite or upsert table but not by an append table, which keeps
what it loaded: there the partition fails, naming what differs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from assets.migration import DOMAIN
from assets.migration.extract import conform, read_table, table_ref
from assets.migration.registry import Grain, LoadMode, TableSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import PartitionWriter, partition_end, read_partition_batches
from resources.rowhash import duckdb_session, lake_row_hash, source_row_hash

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.sql_columns import TablePlan
    from resources.sql_source import SqlSource


@dataclass
class PartitionCheck:
    partition: str  # its Dagster key, or "all"
    source_rows: int
    lake_rows: int
    source_checksum: int
    lake_checksum: int
    repaired_rows: int = 0  # rows added (or replaced) by the repair
    missing: int = 0  # rows of the source not in the lake, before the repair
    extra: int = 0  # rows of the lake the source no longer has
    changed: int = 0  # rows whose values differ
    reason: str | None = None  # why the partition fails, with its figures

    @property
    def counts_match(self) -> bool:
        return self.source_rows == self.lake_rows

    @property
    def checksums_match(self) -> bool:
        return self.counts_match and self.source_checksum == self.lake_checksum

    def figures(self) -> dict[str, Any]:
        return {
            "source_rows": self.source_rows,
            "lake_rows": self.lake_rows,
            "source_checksum": f"{self.source_checksum:x}",
            "lake_checksum": f"{self.lake_checksum:x}",
            "missing": self.missing,
            "extra": self.extra,
            "changed": self.changed,
            "repaired_rows": self.repaired_rows,
        }


def _pkey(partition: LakePartition | None) -> str:
    return partition.dagster_key if partition else "all"


def partitions_to_check(
    lake: LakeStorage, spec: TableSpec, dataset: str, run: list[LakePartition] | None
) -> list[LakePartition | None]:
    """The run's partitions and the `recheck_partitions` loaded before the first of them."""
    if not run:
        return [None]
    earlier = [p for p in lake.list_partitions(Tier.RAW, DOMAIN, dataset) if p < min(run)]
    recheck = earlier[-spec.recheck_partitions :] if spec.recheck_partitions else []
    return list(sorted({*recheck, *run}))


def _group_expr(db: SqlSource, spec: TableSpec, plan: TablePlan) -> str:
    """SQL for the partition (its first day) a source row falls in, as the lake files it."""
    assert spec.partition_column
    column = plan.column(spec.partition_column)
    value = column.select
    dialect = db.dialect_name
    month = spec.partition_grain == Grain.MONTH
    if dialect == "postgresql":
        if getattr(column.arrow, "tz", None):
            value = f"(({value}) AT TIME ZONE 'UTC')"
        return f"CAST(date_trunc('month', {value}) AS date)" if month else f"CAST({value} AS date)"
    if dialect in ("mysql", "mariadb"):
        return f"DATE_FORMAT({value}, '%Y-%m-01')" if month else f"DATE({value})"
    if dialect == "oracle":
        return f"TRUNC({value}, 'MM')" if month else f"TRUNC({value})"
    raise ValueError(f"no partition expression for dialect {dialect!r}")


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def window(spec: TableSpec, partitions: list[LakePartition]) -> list[Any]:
    import sqlalchemy as sa

    assert spec.partition_column
    column: Any = sa.column(spec.partition_column)
    return [column >= min(partitions).day, column < partition_end(max(partitions), spec.partition_grain)]


def source_checksums(
    db: SqlSource, spec: TableSpec, plan: TablePlan, partitions: list[LakePartition | None]
) -> dict[str, tuple[int, int]]:
    """(rows, checksum) per partition key, from one query in the source."""
    import sqlalchemy as sa

    hashed: Any = sa.literal_column(source_row_hash(plan.dialect, plan.columns))
    measures = [sa.func.count(), sa.func.coalesce(sa.func.sum(hashed), 0)]
    parts = [p for p in partitions if p is not None]
    if not parts:
        stmt = sa.select(*measures).select_from(table_ref(plan))
        with db.engine().connect() as conn:
            rows, checksum = conn.execute(stmt).one()
        return {"all": (int(rows), int(checksum))}
    group: Any = sa.literal_column(_group_expr(db, spec, plan))
    stmt = sa.select(group, *measures).select_from(table_ref(plan)).group_by(group)
    for clause in window(spec, parts):
        stmt = stmt.where(clause)
    with db.engine().connect() as conn:
        found = {
            LakePartition(_as_date(day)).dagster_key: (int(n), int(h))
            for day, n, h in conn.execute(stmt)
            if day is not None
        }
    return {p.dagster_key: found.get(p.dagster_key, (0, 0)) for p in parts}


def lake_checksums(
    lake: LakeStorage, dataset: str, plan: TablePlan, partitions: list[LakePartition | None]
) -> dict[str, tuple[int, int]]:
    """(rows, checksum) per partition key, by DuckDB over the raw tier's files."""
    import pyarrow as pa

    con = duckdb_session()
    result = {}
    try:
        for partition in partitions:
            reader = pa.RecordBatchReader.from_batches(
                plan.schema,
                (
                    conform(b, plan.schema)
                    for b in read_partition_batches(lake, Tier.RAW, DOMAIN, dataset, partition)
                ),
            )
            con.register("part_", reader)
            rows, checksum = con.execute(
                f"SELECT count(*), coalesce(sum({lake_row_hash(plan.columns)}), 0) FROM part_"
            ).fetchall()[0]
            con.unregister("part_")
            result[_pkey(partition)] = (int(rows), int(checksum))
    finally:
        con.close()
    return result


def measure(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition | None],
) -> list[PartitionCheck]:
    source = source_checksums(db, spec, plan, partitions)
    ours = lake_checksums(lake, dataset, plan, partitions)
    return [PartitionCheck(k, *source[k][:1], ours[k][0], source[k][1], ours[k][1]) for k in source]


def reconcile(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition | None],
    repair: bool = True,
) -> list[PartitionCheck]:
    """Count and checksum of each partition against the source; differing ones repaired where allowed."""
    checks = measure(lake, db, spec, plan, dataset, partitions)
    by_key = {_pkey(p): p for p in partitions}
    for check in checks:
        if check.checksums_match:
            continue
        partition = by_key[check.partition]
        _compare(lake, db, spec, plan, dataset, partition, check)
        if repair:
            check.repaired_rows = _repair(lake, db, spec, plan, dataset, partition, check)
            if check.repaired_rows:
                [again] = measure(lake, db, spec, plan, dataset, [partition])
                check.lake_rows, check.lake_checksum = again.lake_rows, again.lake_checksum
                check.source_rows, check.source_checksum = again.source_rows, again.source_checksum
        if not check.checksums_match:
            check.reason = _reason(spec, check)
    return checks


def _where(spec: TableSpec, partition: LakePartition | None) -> list[Any]:
    return window(spec, [partition]) if partition is not None else []


def _compare(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partition: LakePartition | None,
    check: PartitionCheck,
) -> Any:
    """Row-by-row difference of a partition (by key, or row hash): fills missing, extra, changed."""
    from assets.migration import diff

    key = list(spec.primary_key)
    found = diff.diff(
        diff.source_hashes(db, plan, key, _where(spec, partition)),
        diff.lake_hashes(lake, DOMAIN, dataset, plan, key, partition),
        key,
        spill_dir=str(lake.scratch_dir()),
    )
    check.missing, check.extra, check.changed = found.missing_count, found.extra_count, found.changed_count
    check._diff = found  # type: ignore[attr-defined]
    return found


def _repair(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partition: LakePartition | None,
    check: PartitionCheck,
) -> int:
    """Add the rows the lake is missing (append), or bring the partition level with the source."""
    found = getattr(check, "_diff", None)
    if found is None:
        return 0
    if spec.load_mode == LoadMode.APPEND:
        if not check.missing:
            return 0
        return _append_missing(lake, db, spec, plan, dataset, partition, found.missing)
    parts = [partition] if partition is not None else None
    if spec.load_mode == LoadMode.OVERWRITE:  # re-extract the partition (it changed during the load)
        from assets.migration.loads import overwrite

        return overwrite(lake, db, spec, plan, dataset, parts).total_rows
    # An upsert table follows the source: merge the partition by row hash, whatever its detection.
    from assets.migration.registry import ChangeDetection
    from assets.migration.upsert import load_upsert

    by_hash = spec.model_copy(update={"change_detection": ChangeDetection.ROW_HASH})
    merged = load_upsert(lake, db, by_hash, plan, dataset, parts)
    return merged.inserted + merged.updated + merged.deleted


def _append_missing(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partition: LakePartition | None,
    missing: pa.Table,
) -> int:
    """Read the missing rows from the source (by key, or by row hash) into a repair file."""
    import sqlalchemy as sa

    where = _where(spec, partition)
    if spec.primary_key:
        key = spec.primary_key
        wanted = [tuple(row[k] for k in key) for row in missing.to_pylist()]
        target: Any = sa.tuple_(*[sa.column(k) for k in key]) if len(key) > 1 else sa.column(key[0])
        values: list[Any] = wanted if len(key) > 1 else [w[0] for w in wanted]
    else:
        target = sa.literal_column(source_row_hash(plan.dialect, plan.columns))
        values = missing.column("_row_hash").to_pylist()
    writer = PartitionWriter(
        lake,
        Tier.RAW,
        DOMAIN,
        dataset,
        plan.schema,
        f"part-repair-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.parquet",
        spec.partition_column,
        spec.partition_grain,
    )
    counts: dict[Any, int] = {}
    if not spec.primary_key:  # a keyless row may be missing more than once
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        values = list(counts)
    try:
        for start in range(0, len(values), 1000):
            chunk = values[start : start + 1000]
            for batch in read_table(db, plan, where=[*where, target.in_(chunk)], batch_rows=spec.fetch_size):
                batch = conform(batch, plan.schema)
                if counts:
                    batch = _take_counted(batch, plan, counts)
                writer.write(batch)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return sum(writer.rows.values())


def _take_counted(batch: pa.RecordBatch, plan: TablePlan, counts: dict[Any, int]) -> pa.RecordBatch:
    """Keep at most counts[hash] rows of each row hash (the copies the lake lacks)."""
    import pyarrow as pa

    con = duckdb_session()
    try:
        con.register("b_", pa.Table.from_batches([batch]))
        hashes = con.execute(f"SELECT {lake_row_hash(plan.columns)} FROM b_").fetchall()
    finally:
        con.close()
    keep = []
    for i, (value,) in enumerate(hashes):
        if counts.get(value, 0) > 0:
            counts[value] -= 1
            keep.append(i)
    return batch.take(pa.array(keep, pa.int64()))


def _reason(spec: TableSpec, check: PartitionCheck) -> str:
    where = f"partition {check.partition}" if check.partition != "all" else "the table"
    text = (
        f"{where}: source {check.source_rows:,} rows, lake {check.lake_rows:,} rows"
        f" (checksum {check.source_checksum:x} against {check.lake_checksum:x});"
        f" {check.extra:,} rows in the lake are no longer in the source,"
        f" {check.changed:,} changed in place, {check.missing:,} missing from the lake"
    )
    if spec.load_mode == LoadMode.APPEND and (check.extra or check.changed):
        text += (
            ". An append table keeps the rows it loaded and does not follow deletes or updates:"
            " load it with load_mode upsert, or re-sync it with `dp migration resync`"
        )
    elif check.repaired_rows:
        text += f"; the repair wrote {check.repaired_rows:,} rows and the partition still differs"
    return text
