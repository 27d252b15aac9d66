"""Upsert into the raw tier: merge by key, partition by partition, with bounded memory.

How an upsert table finds its changes is its registry's `change_detection` (TableSpec.detection):

row_hash   Source and lake are compared by key and row hash (diff.py): keys the lake lacks
           or holds with another hash are read again from the source, by key (IN lists of
           `key_chunk` keys), and keys gone from the source are dropped. No change column is
           needed: in-place updates and deletes are found all the same.
watermark  Rows past the partition's stored watermark (less the table's watermark_lag) are
           read again, and the source's current keys tell which rows were deleted.

Either way the partition's file is rewritten out of core: DuckDB, on a database in a spill
directory under a memory limit, streams the old file's rows (as Arrow batches of the plan's
types) less the dropped keys, followed by the new rows, into a scratch Parquet file of exactly
the plan's schema, which then replaces `data.parquet` atomically. A partition that did not
change is left as it is. A partition without a file yet, or whose changed rows are more than
`reload_ratio` of the source's, is read whole from the source instead.

A partitioned table is merged partition by partition over the run's partitions: a row whose
partition column moved is deleted from its old partition (its key is gone from that
partition's source rows) and inserted in its new one (its key is new there).

A crash at any point leaves every partition with its old file or its new one: files are
written in scratch and moved into place; the watermark is saved after the partition's file.
A re-run compares again (row_hash) or re-reads past the saved watermark (watermark), and
converges either way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assets.migration import DOMAIN
from assets.migration.diff import (
    CHANGED,
    EXTRA,
    KIND_COLUMN,
    MISSING,
    HashDiff,
    ingest,
    lake_reader,
    local_files,
    partition_keys,
    render,
    session,
    source_hashes,
)
from assets.migration.extract import conform, read_sqls, read_table, table_ref
from assets.migration.registry import ChangeDetection, LoadMode, TableSpec
from resources.lake import LakePartition, LakeStorage, LoadState, Tier
from resources.lake.datasets import partition_end
from resources.lake.paths import PARQUET_COMPRESSION, object_key
from resources.rowhash import lake_row_hash
from resources.sql_columns import TablePlan
from resources.warehouse.sql import quote_identifier

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.sql_source import SqlSource

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"  # an upsert partition's one file (as overwrite names it)
LAKE_BATCH_ROWS = 32_768  # rows of the old file handed to DuckDB at a time
OUTPUT_BATCH_ROWS = 65_536
# Row groups of up to 1Mi rows, or fewer when their Arrow data passes GROUP_BYTES first.
GROUP_ROWS = 1 << 20
GROUP_BYTES = 64 << 20


@dataclass
class UpsertResult:
    detection: str  # "row_hash" or "watermark"
    rows: dict[str, int] = field(default_factory=dict)  # partition key ("all") -> rows after the load
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    watermark: Any = None  # the highest watermark loaded (watermark detection)
    rewritten: list[str] = field(default_factory=list)  # partitions whose file was merged and replaced
    reloaded: list[str] = field(default_factory=list)  # partitions read whole from the source

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def load_upsert(
    lake: LakeStorage,
    db: SqlSource,
    spec: TableSpec,
    plan: TablePlan,
    dataset: str,
    partitions: Sequence[LakePartition] | None,
    *,
    memory_limit: str = "256MB",
    key_chunk: int = 5_000,
    reload_ratio: float = 0.25,
) -> UpsertResult:
    """Merge the source into the lake's raw tier for the run's partitions (the whole table when
    unpartitioned), by the table's change detection.

    Memory does not grow with the table: DuckDB works under memory_limit on disk in the lake's
    scratch area, and Python holds a few batches (fetch_size rows, or a row group being written).
    Changed and missing rows are read again key_chunk keys a query; a partition with more than
    reload_ratio of its source rows to read again is read whole instead.
    """
    if spec.load_mode != LoadMode.UPSERT:
        raise ValueError(f"table {spec.name!r}: load_mode is {spec.load_mode}, not upsert")
    if spec.partitioned and not partitions:
        raise ValueError(f"table {spec.name!r} is partitioned: an upsert needs the run's partitions")
    run = _Run(lake, db, spec, plan, dataset, memory_limit, key_chunk, reload_ratio)
    targets: list[LakePartition | None] = list(partitions or []) if spec.partitioned else [None]
    detection = spec.detection or ChangeDetection.ROW_HASH
    result = UpsertResult(detection.value)
    try:
        state = LoadState(lake, DOMAIN, dataset)
        for partition in targets:
            if detection == ChangeDetection.ROW_HASH:
                outcome = run.by_row_hash(partition)
            else:
                outcome = run.by_watermark(partition, state)
            name = partition.dagster_key if partition else "all"
            result.rows[name] = outcome.rows
            result.inserted += outcome.inserted
            result.updated += outcome.updated
            result.deleted += outcome.deleted
            if outcome.how == "rewritten":
                result.rewritten.append(name)
            elif outcome.how == "reloaded":
                result.reloaded.append(name)
            if outcome.watermark is not None and (
                result.watermark is None or outcome.watermark > result.watermark
            ):
                result.watermark = outcome.watermark
    finally:
        run.close()
    return result


@dataclass
class _Outcome:
    rows: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    how: str = "unchanged"  # unchanged, rewritten or reloaded
    watermark: Any = None


class _Run:
    """One upsert: the table, its plan, and a scratch directory for DuckDB (removed at the end)."""

    def __init__(
        self,
        lake: LakeStorage,
        db: SqlSource,
        spec: TableSpec,
        plan: TablePlan,
        dataset: str,
        memory_limit: str,
        key_chunk: int,
        reload_ratio: float,
    ):
        self.lake, self.db, self.spec, self.plan, self.dataset = lake, db, spec, plan, dataset
        self.memory_limit, self.key_chunk, self.reload_ratio = memory_limit, key_chunk, reload_ratio
        self.key = list(spec.primary_key)
        self.scratch = Path(tempfile.mkdtemp(prefix="upsert-", dir=lake.scratch_dir()))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- where the partition's rows are ----------------------------------------------------
    def window(self, partition: LakePartition | None) -> list[Any]:
        import sqlalchemy as sa

        if partition is None or not self.spec.partition_column:
            return []
        column: Any = sa.column(self.spec.partition_column)
        return [column >= partition.day, column < partition_end(partition, self.spec.partition_grain)]

    def files(self, partition: LakePartition | None) -> list[str]:
        return partition_keys(self.lake, Tier.RAW, DOMAIN, self.dataset, partition)

    def _clean(self, keys: list[str], paths: list[Path]) -> bool:
        """The partition is one data.parquet of exactly the plan's schema: when no row changed,
        there is nothing to tidy (other files to merge, columns to bring to the plan's types)."""
        import pyarrow.parquet as pq

        if len(keys) != 1 or keys[0].rsplit("/", 1)[-1] != DATA_FILE:
            return False
        return bool(pq.read_schema(paths[0]).equals(self.plan.schema, check_metadata=False))

    # --- reading the source ----------------------------------------------------------------
    def _read(self, plan: TablePlan, where: list[Any], batch_rows: int) -> Iterator[pa.RecordBatch]:
        split = self.key[0] if self.spec.parallel_reads > 1 and self.key else None
        batches = read_table(
            self.db,
            plan,
            where=where,
            batch_rows=batch_rows,
            parallel=self.spec.parallel_reads,
            split_column=split,
        )
        for batch in batches:
            yield conform(batch, plan.schema)

    def read(self, where: list[Any]) -> Iterator[pa.RecordBatch]:
        """The plan's columns of the source rows matching where (as overwrite reads them: in
        parallel key ranges when the table has parallel_reads)."""
        return self._read(self.plan, where, self.spec.fetch_size)

    def read_keys(self, where: list[Any]) -> Iterator[pa.RecordBatch]:
        """The key columns of the source rows matching where."""
        keys = TablePlan(self.plan.table, self.plan.dialect, [self.plan.column(k) for k in self.key])
        return self._read(keys, where, max(self.spec.fetch_size, 200_000))

    def fetch(self, keys: pa.Table, where: list[Any]) -> Iterator[pa.RecordBatch]:
        """The source rows of the given keys (that still match where), key_chunk keys a query,
        parallel_reads queries at once. Rendered by diff.render: a key's text may hold a '%'."""
        sqls = [
            render(self.db, self.plan, [*where, self._key_predicate(keys.slice(start, self.key_chunk))])
            for start in range(0, keys.num_rows, self.key_chunk)
        ]
        step = max(1, self.spec.parallel_reads)
        for start in range(0, len(sqls), step):
            for batch in read_sqls(self.db, sqls[start : start + step], self.spec.fetch_size):
                yield conform(batch, self.plan.schema)

    def _key_predicate(self, chunk: pa.Table) -> Any:
        import pyarrow as pa
        import sqlalchemy as sa

        columns: list[Any] = [sa.column(k) for k in self.key]
        if len(self.key) == 1:
            values = chunk.column(0)
            present = values.drop_null()
            if pa.types.is_integer(values.type):  # plain integers: no literal rendering per value
                quoted = self.db.engine().dialect.identifier_preparer.quote(self.key[0])
                listed = ",".join(str(v) for v in present.to_pylist()) or "NULL"
                predicate: Any = sa.text(f"{quoted} IN ({listed})")
            else:
                predicate = columns[0].in_(present.to_pylist())
            return sa.or_(predicate, columns[0].is_(None)) if values.null_count else predicate
        rows = list(zip(*(chunk.column(k).to_pylist() for k in self.key), strict=True))
        whole = [r for r in rows if None not in r]
        clauses: list[Any] = [sa.tuple_(*columns).in_(whole)] if whole else []
        for row in (r for r in rows if None in r):
            clauses.append(
                sa.and_(*(c.is_(None) if v is None else c == v for c, v in zip(columns, row, strict=True)))
            )
        return sa.or_(*clauses)

    def source_max(self, column: str, where: list[Any]) -> Any:
        import sqlalchemy as sa

        stmt: Any = sa.select(sa.func.max(sa.column(column))).select_from(table_ref(self.plan))
        for clause in where:
            stmt = stmt.where(clause)
        with self.db.engine().connect() as conn:
            return conn.execute(stmt).scalar()

    # --- writing the lake ------------------------------------------------------------------
    def _write(
        self, partition: LakePartition | None, batches: Iterator[pa.RecordBatch], old: list[str]
    ) -> int:
        """The partition's new file from batches of the plan's schema: written in scratch, moved
        into place as data.parquet, then any other file the partition had is dropped."""
        target = object_key(Tier.RAW, DOMAIN, self.dataset, DATA_FILE, partition)
        writer = _FileWriter(self.lake, target, self.plan.schema)
        try:
            for batch in batches:
                writer.write(batch)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        for key in old:
            if key != target:
                self.lake.delete(key)
        return writer.rows

    def reload(self, partition: LakePartition | None, where: list[Any], old: list[str]) -> int:
        """The partition read whole from the source into its new file."""
        return self._write(partition, self.read(where), old)

    def rewrite(
        self, con: Any, partition: LakePartition | None, paths: list[Path], old: list[str], sql: str
    ) -> int:
        """The partition's new file from a DuckDB SELECT over `old_rows` (the old file's rows)."""
        name = "old_rows"
        con.register(name, lake_reader(paths, self.plan, batch_rows=LAKE_BATCH_ROWS))
        try:
            output = con.sql(sql).to_arrow_reader(OUTPUT_BATCH_ROWS)
            return self._write(partition, (conform(b, self.plan.schema) for b in output), old)
        finally:
            con.unregister(name)

    def _changed_in_place(self, con: Any, paths: list[Path]) -> int:
        """Rows of `live` whose values differ from the lake's row of the same key: the look-back
        re-reads rows that did not change, and those are not updates."""
        keys = ", ".join(quote_identifier(k) for k in self.key)
        hashed = lake_row_hash(self.plan.columns)
        con.register("old_for_hash", lake_reader(paths, self.plan, batch_rows=LAKE_BATCH_ROWS))
        try:
            [(count,)] = con.execute(
                f"""SELECT count(*) FROM (SELECT {keys}, {hashed} AS h_ FROM live) l
                    JOIN (SELECT {keys}, {hashed} AS h_ FROM (
                        SELECT * FROM old_for_hash f SEMI JOIN live v ON {self._match("f", "v")})
                    ) o ON {self._match("l", "o")}
                    WHERE l.h_ <> o.h_"""
            ).fetchall()
        finally:
            con.unregister("old_for_hash")
        return int(count)

    def output_columns(self, alias: str = "") -> str:
        """The plan's columns as DuckDB gives them back in the plan's Arrow types (a duration
        comes out of DuckDB as an INTERVAL: as microseconds, cast back by conform)."""
        prefix = f"{alias}." if alias else ""
        parts = []
        for column in self.plan.columns:
            q = quote_identifier(column.name)
            parts.append(f"epoch_us({prefix}{q}) AS {q}" if column.kind == "duration" else f"{prefix}{q}")
        return ", ".join(parts)

    def _match(self, left: str, right: str) -> str:
        return " AND ".join(
            f"{left}.{quote_identifier(k)} IS NOT DISTINCT FROM {right}.{quote_identifier(k)}"
            for k in self.key
        )

    def _session_dir(self) -> Path:
        path = self.scratch / uuid.uuid4().hex
        path.mkdir()
        return path

    # --- row_hash ----------------------------------------------------------------------------
    def by_row_hash(self, partition: LakePartition | None) -> _Outcome:
        where = self.window(partition)
        old = self.files(partition)
        if not old:
            rows = self.reload(partition, where, old)
            return _Outcome(rows, inserted=rows, how="reloaded")
        started = time.perf_counter()
        with (
            local_files(self.lake, old) as paths,
            HashDiff(self.key, memory_limit=self.memory_limit, spill_dir=self.scratch) as hd,
        ):
            hd.add_source(
                source_hashes(
                    self.db,
                    self.plan,
                    self.key,
                    where,
                    batch_rows=max(self.spec.fetch_size, 200_000),
                    parallel=self.spec.parallel_reads,
                )
            )
            hd.add_lake_rows(lake_reader(paths, self.plan, batch_rows=LAKE_BATCH_ROWS), self.plan)
            counts = hd.compare(unique=len(old) == 1)
            log.info(
                "%s %s: %d source rows, %d lake rows; %d missing, %d changed, %d extra (%.1f s)",
                self.spec.name,
                partition.dagster_key if partition else "all",
                counts.source_rows,
                counts.lake_rows,
                counts.missing,
                counts.changed,
                counts.extra,
                time.perf_counter() - started,
            )
            if counts.in_sync and self._clean(old, paths):
                return _Outcome(counts.lake_rows)
            if counts.missing + counts.changed > self.reload_ratio * max(counts.source_rows, 1):
                rows = self.reload(partition, where, old)
                return _Outcome(rows, counts.missing, counts.changed, counts.extra, how="reloaded")
            hd.release()
            keys = hd.keys(MISSING, CHANGED, order=True)
            ingest(hd.con, "new_rows", self.fetch(keys, where), self.plan.schema)
            found = dict(
                hd.con.sql(
                    f"SELECT d.{KIND_COLUMN}, count(*) FROM diff d"
                    f" SEMI JOIN new_rows n ON {self._match('d', 'n')} GROUP BY ALL"
                ).fetchall()
            )
            inserted, updated = found.get(MISSING, 0), found.get(CHANGED, 0)
            log.info(
                "%s: %d rows read again by key (%.1f s)",
                self.spec.name,
                inserted + updated,
                time.perf_counter() - started,
            )
            # Changed keys the source no longer holds by the time they were read are deleted too.
            deleted = counts.extra + counts.changed - updated
            dropped = hd.keys_sql(CHANGED, EXTRA)
            rows = self.rewrite(
                hd.con,
                partition,
                paths,
                old,
                f"""SELECT {self.output_columns()} FROM (
                        SELECT o.* FROM old_rows o ANTI JOIN ({dropped}) d ON {self._match("o", "d")})
                    UNION ALL
                    SELECT {self.output_columns()} FROM new_rows""",
            )
            log.info("%s: %d rows rewritten (%.1f s)", self.spec.name, rows, time.perf_counter() - started)
            return _Outcome(rows, inserted, updated, deleted, how="rewritten")

    # --- watermark ---------------------------------------------------------------------------
    def by_watermark(self, partition: LakePartition | None, state: LoadState) -> _Outcome:
        import sqlalchemy as sa

        assert self.spec.watermark_column
        where = self.window(partition)
        old = self.files(partition)
        low = state.watermark(partition)
        high = self.source_max(self.spec.watermark_column, where)
        if not old or low is None:
            # No file yet, or no watermark to start from: the partition is read whole.
            rows = self.reload(partition, where, old)
            outcome = _Outcome(rows, inserted=rows if not old else 0, how="reloaded", watermark=high)
        else:
            column: Any = sa.column(self.spec.watermark_column)
            since = _minus(low, self.spec.watermark_lag)
            changed_where = [*where, column > since] + ([column <= high] if high is not None else [])
            outcome = self._merge_changed(partition, where, changed_where, old)
            outcome.watermark = high if high is not None else low
        if high is not None and (low is None or high > low):
            state.set_watermark(partition, high)
            state.save()  # after the partition's file: a crash before re-reads the same rows
        return outcome

    def _merge_changed(
        self, partition: LakePartition | None, where: list[Any], changed_where: list[Any], old: list[str]
    ) -> _Outcome:
        directory = self._session_dir()
        con = session(directory, self.memory_limit)
        try:
            with local_files(self.lake, old) as paths:
                key_schema = TablePlan(
                    self.plan.table, self.plan.dialect, [self.plan.column(k) for k in self.key]
                ).schema
                ingest(con, "chg", self.read(changed_where), self.plan.schema)
                ingest(con, "keys", self.read_keys(where), key_schema)
                ingest(con, "old_keys", lake_reader(paths, self.plan, columns=self.key), key_schema)
                con.execute(
                    f"CREATE TABLE live AS SELECT c.* FROM chg c SEMI JOIN keys k ON {self._match('c', 'k')}"
                )
                (inserted, deleted, kept) = con.execute(
                    f"""SELECT
                        (SELECT count(*) FROM live l ANTI JOIN old_keys o ON {self._match("l", "o")}),
                        (SELECT count(*) FROM old_keys o ANTI JOIN keys k ON {self._match("o", "k")}),
                        (SELECT count(*) FROM old_keys)"""
                ).fetchall()[0]
                updated = self._changed_in_place(con, paths)
                if not (inserted or updated or deleted) and self._clean(old, paths):
                    return _Outcome(int(kept))
                rows = self.rewrite(
                    con,
                    partition,
                    paths,
                    old,
                    f"""SELECT {self.output_columns()} FROM (
                            SELECT o.* FROM old_rows o SEMI JOIN keys k ON {self._match("o", "k")}
                            ANTI JOIN live l ON {self._match("o", "l")})
                        UNION ALL
                        SELECT {self.output_columns()} FROM live""",
                )
                return _Outcome(rows, int(inserted), int(updated), int(deleted), how="rewritten")
        finally:
            con.close()
            shutil.rmtree(directory, ignore_errors=True)


class _FileWriter:
    """One Parquet file in the lake's scratch area, moved to `key` on commit."""

    def __init__(self, lake: LakeStorage, key: str, schema: pa.Schema):
        import pyarrow.parquet as pq

        self.lake, self.key, self.schema = lake, key, schema
        self.path = lake.scratch_dir() / f"{uuid.uuid4().hex}.parquet"
        self.writer = pq.ParquetWriter(self.path, schema, compression=PARQUET_COMPRESSION)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = self.pending_bytes = self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.pending_rows >= GROUP_ROWS or self.pending_bytes >= GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            table = pa.Table.from_batches(self.pending, schema=self.schema)
            self.writer.write_table(table, row_group_size=max(GROUP_ROWS, table.num_rows))
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0

    def commit(self) -> None:
        self._flush()
        self.writer.close()
        self.lake.put_file(self.key, self.path)

    def abort(self) -> None:
        self.pending = []
        try:
            self.writer.close()
        finally:
            self.path.unlink(missing_ok=True)


def _minus(value: Any, lag: timedelta) -> Any:
    """The watermark less the lag (datetimes and dates, by whole days; a number has no lag)."""
    if isinstance(value, datetime):
        return value - lag
    if isinstance(value, date):
        return value - timedelta(days=-(-lag.total_seconds() // 86400))
    return value
