"""The three load modes into the raw tier, and the cleansing pass into the processed tier.

overwrite  re-extract the run's partitions (or the table) and replace each file atomically
append     extract rows past each partition's watermark, less the table's watermark_lag, into a
           file named after that watermark; rows already in the lake (by key, or by row hash
           for a keyless table) are left out, so a transaction that committed late is loaded
           and a crashed run re-writes the same file
upsert     merge changed rows by key (assets.migration.upsert), found by watermark or row hash

Every load starts with the preflight (assets.migration.preflight): the registry entry is
checked against the live source and gives the read plan, before anything is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from assets.migration import DOMAIN
from assets.migration.extract import conform, read_table, table_ref
from assets.migration.preflight import plan_table
from assets.migration.registry import LoadMode, TableSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import (
    LoadState,
    PartitionWriter,
    partition_schema,
    read_partition_batches,
)
from resources.lake.datasets import partition_end as _grain_end
from resources.lake.paths import PARQUET_COMPRESSION, dataset_prefix, object_key, parse_key
from resources.rowhash import duckdb_session, lake_row_hash
from resources.sql_columns import TablePlan
from resources.sql_source import SqlSource
from resources.warehouse.sql import quote_identifier

if TYPE_CHECKING:
    import pyarrow as pa

DATA_FILE = "data.parquet"


@dataclass
class RawLoad:
    mode: str
    rows: dict[str, int] = field(default_factory=dict)  # partition key ("all") -> rows written
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    watermark: Any = None
    duplicates_skipped: int = 0  # rows read again by the look-back, already in the lake
    plan: TablePlan | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def dataset_name(source: str, table: str) -> str:
    return f"{source}__{table}"


def window(spec: TableSpec, partitions: list[LakePartition] | None) -> list[Any]:
    """SQL predicates selecting the rows of the given (contiguous) partitions."""
    import sqlalchemy as sa

    if not partitions or not spec.partition_column:
        return []
    column: Any = sa.column(spec.partition_column)
    return [column >= min(partitions).day, column < partition_end(spec, max(partitions))]


def partition_end(spec: TableSpec, partition: LakePartition) -> date:
    """The first day after the partition (a day, or a month for monthly tables)."""
    return _grain_end(partition, spec.partition_grain)


def source_max(source: SqlSource, spec: TableSpec, column: str, where: list[Any] | None = None) -> Any:
    """max(column) in the source table, over the rows matching where."""
    import sqlalchemy as sa

    stmt: Any = sa.select(sa.func.max(sa.column(column))).select_from(table_ref(spec.source_table))
    for clause in where or []:
        stmt = stmt.where(clause)
    with source.engine().connect() as conn:
        return conn.execute(stmt).scalar()


def _reader(source: SqlSource, spec: TableSpec, plan: TablePlan, where: list[Any]) -> Any:
    split = spec.primary_key[0] if spec.parallel_reads > 1 and spec.primary_key else None
    return read_table(
        source,
        plan,
        where=where,
        batch_rows=spec.fetch_size,
        parallel=spec.parallel_reads,
        split_column=split,
    )


def _token(value: Any) -> str:
    if value is None:
        return "start"
    if isinstance(value, datetime):
        return value.strftime("%Y%m%dT%H%M%S%f")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    return "".join(ch if ch.isalnum() else "_" for ch in str(value))


def load_raw(
    lake: LakeStorage,
    source: SqlSource,
    spec: TableSpec,
    dataset: str,
    partitions: list[LakePartition] | None,
    registry_file: str = "the migration registry",
) -> RawLoad:
    plan = plan_table(source, spec, registry_file)  # refuses a bad entry before anything is written
    if spec.load_mode == LoadMode.OVERWRITE:
        result = overwrite(lake, source, spec, plan, dataset, partitions)
    elif spec.load_mode == LoadMode.APPEND:
        result = _append(lake, source, spec, plan, dataset, partitions)
    else:
        result = _upsert(lake, source, spec, plan, dataset, partitions)
    result.plan = plan
    apply_retention(lake, spec, dataset)
    return result


def apply_retention(lake: LakeStorage, spec: TableSpec, dataset: str, today: date | None = None) -> list[str]:
    """Delete partitions older than the table's retention from the raw and processed tiers."""
    if not spec.retention_days:
        return []
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=spec.retention_days)
    removed = []
    for tier in (Tier.RAW, Tier.PROCESSED):
        for obj in lake.list_objects(dataset_prefix(tier, DOMAIN, dataset)):
            partition = parse_key(obj.key).partition
            if partition is not None and partition.day < cutoff:
                lake.delete(obj.key)
                removed.append(obj.key)
    return removed


def _write(writer: PartitionWriter, batches: Any, schema: pa.Schema) -> dict[LakePartition | None, str]:
    try:
        for batch in batches:
            writer.write(conform(batch, schema))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def overwrite(
    lake: LakeStorage,
    source: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition] | None,
) -> RawLoad:
    schema = plan.schema
    writer = PartitionWriter(
        lake, Tier.RAW, DOMAIN, dataset, schema, DATA_FILE, spec.partition_column, spec.partition_grain
    )
    writer.ensure(list(partitions) if partitions else [None])  # an empty source partition empties ours
    _write(writer, _reader(source, spec, plan, window(spec, partitions)), schema)
    return RawLoad("overwrite", rows={_key(p): n for p, n in writer.rows.items()})


def _append(
    lake: LakeStorage,
    source: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition] | None,
) -> RawLoad:
    import sqlalchemy as sa

    assert spec.watermark_column
    state = LoadState(lake, DOMAIN, dataset)
    targets: list[LakePartition | None] = list(partitions) if partitions else [None]
    bounds = window(spec, partitions)
    high = source_max(source, spec, spec.watermark_column, bounds)
    result = RawLoad("append", watermark=high)
    if high is None:
        return result  # nothing in the source for these partitions yet
    schema = plan.schema
    column: Any = sa.column(spec.watermark_column)
    # Partitions that share a watermark are read together; usually that is all of them.
    groups: dict[Any, list[LakePartition | None]] = {}
    for partition in targets:
        groups.setdefault(state.watermark(partition), []).append(partition)
    for low, members in groups.items():
        # Look back by the lag: a row whose transaction committed after the last load, with a
        # watermark below it, is read now; rows the lake already holds are left out below.
        since = _minus(low, spec.watermark_lag) if low is not None else None
        where = window(spec, [p for p in members if p is not None]) if partitions else []
        where += [column <= high] + ([column > since] if since is not None else [])
        filename = f"part-after-{_token(low)}.parquet"
        seen = _seen(lake, spec, plan, dataset, members, since, exclude=filename)
        writer = PartitionWriter(
            lake,
            Tier.RAW,
            DOMAIN,
            dataset,
            schema,
            filename,
            spec.partition_column,
            spec.partition_grain,
        )
        fresh = _Unseen(_reader(source, spec, plan, where), schema, spec, plan, seen)
        _write(writer, fresh, schema)
        result.duplicates_skipped += fresh.skipped
        result.rows.update({_key(p): n for p, n in writer.rows.items()})
        for partition in members:
            if low is None or high > low:
                state.set_watermark(partition, high)
        state.save()  # after the files: a crash in between re-writes the same files
    return result


def _minus(value: Any, lag: timedelta) -> Any:
    """The watermark less the lag (datetimes and dates; a numeric watermark has no lag)."""
    if isinstance(value, datetime):
        return value - lag
    if isinstance(value, date):
        return value - timedelta(days=-(-lag.total_seconds() // 86400))
    return value


def dedup_key(spec: TableSpec) -> list[str]:
    """The columns that identify a row: the (declared) key, or its row hash for a keyless table."""
    return list(spec.primary_key) or ["_row_hash"]


def _seen(
    lake: LakeStorage,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition | None],
    since: Any,
    exclude: str,
) -> pa.Table:
    """Identities (key or row hash) of lake rows past `since` in the partitions, other files than exclude."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    assert spec.watermark_column
    key = dedup_key(spec)
    parts = []
    con = duckdb_session()
    try:
        for partition in partitions:
            keys = [
                k for k in lake.parquet_keys(Tier.RAW, DOMAIN, dataset, partition) if not k.endswith(exclude)
            ]
            if partition is None:
                prefix = dataset_prefix(Tier.RAW, DOMAIN, dataset)
                keys = [k for k in keys if "/" not in k[len(prefix) :]]
            for key_name in keys:
                path = lake.scratch_dir() / f"seen-{uuid.uuid4().hex}.parquet"
                lake.get_file(key_name, path)
                try:
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                        if since is not None:
                            marks = batch.column(spec.watermark_column)
                            batch = batch.filter(pc.greater(marks, pa.scalar(since, marks.type)))
                        if batch.num_rows:
                            parts.append(_identities(con, batch, spec, plan))
                finally:
                    path.unlink(missing_ok=True)
    finally:
        con.close()
    if not parts:
        schema = pa.schema([plan.schema.field(k) for k in key]) if spec.primary_key else None
        return (schema or pa.schema([pa.field("_row_hash", pa.int64())])).empty_table()
    return pa.concat_tables(parts)


def _identities(con: Any, batch: pa.RecordBatch, spec: TableSpec, plan: TablePlan) -> pa.Table:
    import pyarrow as pa

    if spec.primary_key:
        return pa.Table.from_batches([batch.select(spec.primary_key)])
    con.register("rows_", pa.Table.from_batches([batch]))
    try:
        return con.execute(f"SELECT {lake_row_hash(plan.columns)} AS _row_hash FROM rows_").to_arrow_table()
    finally:
        con.unregister("rows_")


class _Unseen:
    """The batches without the rows whose identity is in `seen`; counts what it left out."""

    def __init__(self, batches: Any, schema: pa.Schema, spec: TableSpec, plan: TablePlan, seen: pa.Table):
        self.batches, self.schema, self.spec, self.plan, self.seen = batches, schema, spec, plan, seen
        self.skipped = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        if self.seen.num_rows == 0:
            yield from self.batches
            return
        key = dedup_key(self.spec)
        using = ", ".join(quote_identifier(k) for k in key)
        con = duckdb_session()
        try:
            con.register("seen", self.seen)
            for batch in self.batches:
                batch = conform(batch, self.schema)
                ids = _identities(con, batch, self.spec, self.plan)
                ids = ids.append_column("__i", pa.array(range(batch.num_rows), pa.int64()))
                con.register("ids", ids)
                keep = con.execute(f"SELECT __i FROM ids ANTI JOIN seen USING ({using}) ORDER BY __i")
                indices = keep.to_arrow_table().column("__i").combine_chunks()
                con.unregister("ids")
                self.skipped += batch.num_rows - len(indices)
                if len(indices) == batch.num_rows:
                    yield batch
                elif len(indices):
                    yield batch.take(indices)
        finally:
            con.close()


def _upsert(
    lake: LakeStorage,
    source: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: list[LakePartition] | None,
) -> RawLoad:
    from assets.migration.upsert import load_upsert

    merged = load_upsert(lake, source, spec, plan, dataset, partitions)
    return RawLoad(
        f"upsert ({merged.detection})",
        rows=merged.rows,
        inserted=merged.inserted,
        updated=merged.updated,
        deleted=merged.deleted,
        watermark=merged.watermark,
    )


def each_partition(partitions: list[LakePartition] | None) -> list[LakePartition | None]:
    """The run's partitions, or [None] for an unpartitioned table."""
    return list(partitions) if partitions else [None]


def _key(partition: LakePartition | None) -> str:
    return partition.dagster_key if partition else "all"


@dataclass
class CleansedLoad:
    rows: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)


def load_cleansed(
    lake: LakeStorage, spec: TableSpec, dataset: str, partitions: list[LakePartition] | None
) -> CleansedLoad:
    """Apply the table's cleansing rules and PII actions to raw partitions, one file per partition."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from assets.migration.cleansing import cleanse
    from assets.migration.pii import protect

    result = CleansedLoad()
    raw_schema = partition_schema(lake, Tier.RAW, DOMAIN, dataset)
    if raw_schema is None:
        raise FileNotFoundError(f"{dataset}: the raw tier is empty; materialize the raw asset first")

    def transform(table: pa.Table) -> pa.Table:
        cleansed = cleanse(table, spec)
        for column, count in cleansed.invalid_counts.items():
            result.invalid[column] = result.invalid.get(column, 0) + count
        return protect(cleansed.table, spec.pii)

    for partition in each_partition(partitions):
        path = lake.scratch_dir() / f"{uuid.uuid4().hex}.parquet"
        writer = None
        rows = 0
        try:
            for batch in read_partition_batches(lake, Tier.RAW, DOMAIN, dataset, partition):
                out = transform(pa.Table.from_batches([batch]))
                writer = writer or pq.ParquetWriter(path, out.schema, compression=PARQUET_COMPRESSION)
                writer.write_table(out)
                rows += out.num_rows
            if writer is None:  # an empty partition stays an empty file with the right schema
                out = transform(raw_schema.empty_table())
                writer = pq.ParquetWriter(path, out.schema, compression=PARQUET_COMPRESSION)
            writer.close()
            lake.put_file(object_key(Tier.PROCESSED, DOMAIN, dataset, DATA_FILE, partition), path)
        finally:
            path.unlink(missing_ok=True)
        result.rows[_key(partition)] = rows
    return result
