"""Source against lake, row by row, without a change column: key and row hash compared in DuckDB.

Each side is reduced to its key columns and a 60-bit row hash (rowhash.py), computed
where the data lives: the source's hashes by one streamed SELECT in its own SQL (split
into key ranges read in parallel when asked), the lake's by DuckDB over the partition's
Arrow batches (not `read_parquet`: duration columns need their Arrow type). The two are
joined by key in a DuckDB database kept in a spill directory, with a memory limit, so
tens of millions of keys stay within a few hundred MB:

    missing   keys in the source, not in the lake
    extra     keys in the lake, not in the source
    changed   keys on both sides whose row hashes differ

A keyless table (key []) compares the multisets of row hashes: a hash the source holds
more often than the lake is missing (once per surplus row), the reverse extra, and
nothing is "changed". Both sides' checksums (row count and sum of hashes) come along.

`diff` returns the three key sets as Arrow tables. `HashDiff` is the same comparison
kept open in its DuckDB session, for callers (the row-hash upsert) that go on to use
the key sets in SQL without bringing them into Python.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assets.migration.extract import conform, key_ranges, read_sqls, select_sql
from resources.lake import LakePartition, LakeStorage, LocalLake, Tier
from resources.lake.paths import dataset_prefix
from resources.rowhash import duckdb_session, lake_row_hash, source_row_hash
from resources.sql_columns import ColumnPlan, TablePlan
from resources.warehouse.sql import quote_identifier

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.sql_source import SqlSource

HASH_COLUMN = "_row_hash"
MISSING, EXTRA, CHANGED = "missing", "extra", "changed"
KIND_COLUMN = "_kind"


# --- the two sides' hashes -----------------------------------------------------------------


def hash_schema(plan: TablePlan, key: Sequence[str]) -> pa.Schema:
    """Key columns (the plan's Arrow types) and the int64 row hash."""
    import pyarrow as pa

    return pa.schema([*(pa.field(k, plan.column(k).arrow) for k in key), pa.field(HASH_COLUMN, pa.int64())])


def hash_plan(plan: TablePlan, key: Sequence[str]) -> TablePlan:
    """A read plan selecting the key columns (as the table plan reads them) and the source row hash."""
    import pyarrow as pa

    digest = ColumnPlan(HASH_COLUMN, "bigint", source_row_hash(plan.dialect, plan.columns), pa.int64(), "int")
    return TablePlan(plan.table, plan.dialect, [*(plan.column(k) for k in key), digest])


def render(db: SqlSource, plan: TablePlan, where: Sequence[Any] = ()) -> str:
    """select_sql's SELECT as the server must receive it.

    SQLAlchemy renders '%' as '%%' for drivers with a format paramstyle (psycopg, PyMySQL);
    ADBC sends the text as it is and SqlSource's text() doubles it again, so a '%' in an
    expression (DATE_FORMAT's '%Y', format('%s')) would reach the server doubled.
    """
    return select_sql(db, plan, where)  # which un-doubles the '%' itself


def source_hash_sqls(
    db: SqlSource, plan: TablePlan, key: list[str], where: Sequence[Any] = (), parallel: int = 1
) -> list[str]:
    """The SELECTs of key columns and row hash: one, or one per key range of the first key column."""
    ranges: list[Any] = [None]
    if parallel > 1 and key:
        ranges = key_ranges(db, plan, key[0], parallel, where)
    selected = hash_plan(plan, key)
    return [render(db, selected, [*where, r] if r is not None else list(where)) for r in ranges]


def source_hashes(
    db: SqlSource,
    plan: TablePlan,
    key: list[str],
    where: Sequence[Any] = (),
    *,
    batch_rows: int = 200_000,
    parallel: int = 1,
) -> Iterator[pa.RecordBatch]:
    """Key columns and `_row_hash` of every source row matching where, hashed by the source.

    One streamed SELECT (with `parallel` > 1, that many ranges of the first key column,
    read at once). Yields at least one batch, empty when no row matches.
    """
    schema = hash_schema(plan, key)
    yield _empty(schema)
    for batch in read_sqls(db, source_hash_sqls(db, plan, key, where, parallel), batch_rows):
        yield conform(batch, schema)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def partition_keys(
    lake: LakeStorage, tier: Tier, domain: str, dataset: str, partition: LakePartition | None
) -> list[str]:
    """The Parquet objects of a partition (of an unpartitioned dataset: the files directly under it)."""
    keys = lake.parquet_keys(tier, domain, dataset, partition)
    if partition is None:
        prefix = dataset_prefix(tier, domain, dataset)
        keys = [k for k in keys if "/" not in k[len(prefix) :]]
    return keys


@contextmanager
def local_files(lake: LakeStorage, keys: list[str]) -> Iterator[list[Path]]:
    """Local paths of lake objects: a local lake's own files, else copies in scratch (removed after)."""
    if isinstance(lake, LocalLake):
        yield [Path(lake.uri(k)) for k in keys]
        return
    paths: list[Path] = []
    try:
        for key in keys:
            path = lake.scratch_dir() / f"read-{uuid.uuid4().hex}.parquet"
            paths.append(path)
            lake.get_file(key, path)
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def lake_reader(
    paths: Sequence[Path],
    plan: TablePlan,
    columns: Sequence[str] | None = None,
    batch_rows: int = 65_536,
) -> pa.RecordBatchReader:
    """The files' rows as the plan's schema (or its `columns`): types cast to the plan's, a
    column the files lack read as NULL, columns the plan does not read left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(columns) if columns is not None else plan.names
    schema = pa.schema([pa.field(n, plan.column(n).arrow) for n in names])

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            # pre_buffer off: on, the reader buffers every row group of the file ahead (its whole size).
            with pq.ParquetFile(path, pre_buffer=False) as file:
                present = set(file.schema_arrow.names)
                wanted = [n for n in names if n in present]
                for batch in file.iter_batches(batch_size=batch_rows, columns=wanted):
                    arrays = [
                        batch.column(f.name) if f.name in present else pa.nulls(batch.num_rows, f.type)
                        for f in schema
                    ]
                    yield conform(pa.RecordBatch.from_arrays(arrays, names=names), schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def lake_hash_sql(plan: TablePlan, key: Sequence[str], relation: str) -> str:
    """DuckDB SELECT of key columns and the lake row hash over a relation of the plan's schema."""
    keys = "".join(f"{quote_identifier(k)}, " for k in key)
    return f"SELECT {keys}{lake_row_hash(plan.columns)} AS {HASH_COLUMN} FROM {relation}"


def lake_hashes(
    lake: LakeStorage,
    domain: str,
    dataset: str,
    plan: TablePlan,
    key: list[str],
    partition: LakePartition | None,
    *,
    tier: Tier = Tier.RAW,
    batch_rows: int = 200_000,
    memory_limit: str = "256MB",
) -> Iterator[pa.RecordBatch]:
    """Key columns and `_row_hash` of the lake partition's rows, hashed by DuckDB over their
    Arrow batches (read as the plan's types). Yields at least one batch."""
    schema = hash_schema(plan, key)
    yield _empty(schema)
    with local_files(lake, partition_keys(lake, tier, domain, dataset, partition)) as paths:
        if not paths:
            return
        con = duckdb_session(memory_limit)
        try:
            rows = lake_reader(paths, plan)
            con.register("lake_rows", rows)
            for batch in con.sql(lake_hash_sql(plan, key, "lake_rows")).to_arrow_reader(batch_rows):
                yield conform(batch, schema)
        finally:
            con.close()


# --- the comparison ------------------------------------------------------------------------


@dataclass
class RowDiff:
    """What differs between source and lake, by key (or, keyless, by row hash)."""

    key: list[str]
    missing: pa.Table  # in the source, not in the lake
    extra: pa.Table  # in the lake, not in the source
    changed: pa.Table  # on both sides, row hashes differ (always empty for a keyless table)
    source_rows: int
    lake_rows: int
    source_checksum: int  # sum of the source's row hashes
    lake_checksum: int

    @property
    def missing_count(self) -> int:
        return self.missing.num_rows

    @property
    def extra_count(self) -> int:
        return self.extra.num_rows

    @property
    def changed_count(self) -> int:
        return self.changed.num_rows

    @property
    def in_sync(self) -> bool:
        return not (self.missing_count or self.extra_count or self.changed_count)


@dataclass(frozen=True)
class DiffCounts:
    missing: int
    extra: int
    changed: int
    source_rows: int
    lake_rows: int
    source_checksum: int
    lake_checksum: int

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.extra or self.changed)


def session(directory: Path, memory_limit: str) -> Any:
    """A DuckDB database in `directory` (its tables and spills on disk there), UTC, bounded memory."""
    import duckdb

    con = duckdb.connect(str(directory / "diff.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{directory / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def ingest(con: Any, table: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> None:
    """CREATE TABLE table from a stream of batches (cast to schema, or to the first batch's).

    An exception raised while producing the batches is raised as itself, not as DuckDB's
    error about the stream.
    """
    import duckdb
    import pyarrow as pa

    iterator = iter(batches)
    if schema is None:
        first = next(iterator, None)
        if first is None:
            raise ValueError(f"{table}: no batches and no schema")
        schema = first.schema
        iterator = _chain([first], iterator)
    failure: list[BaseException] = []
    target = schema

    def guarded() -> Iterator[pa.RecordBatch]:
        try:
            for batch in iterator:
                yield conform(batch, target)
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(schema, guarded())
    name = f"_in_{uuid.uuid4().hex}"
    con.register(name, reader)
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM {name}")
    except duckdb.Error:
        if failure:
            raise failure[0] from None
        raise
    finally:
        con.unregister(name)


def _chain(first: list[pa.RecordBatch], rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield from first
    yield from rest


class HashDiff:
    """A source/lake comparison in a DuckDB database of its own (in a temporary directory
    under spill_dir, removed on close). Tables: src and lk (key columns, _row_hash), and
    after compare() diff (key columns or _row_hash, _kind)."""

    def __init__(self, key: list[str], *, memory_limit: str = "256MB", spill_dir: Path | str | None = None):
        self.key = list(key)
        self.directory = Path(tempfile.mkdtemp(prefix="diff-", dir=spill_dir))
        self.con = session(self.directory, memory_limit)
        self.key_schema: pa.Schema | None = None
        self.counts: DiffCounts | None = None

    def __enter__(self) -> HashDiff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def add_source(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> None:
        ingest(self.con, "src", batches, schema)
        self._note_schema("src")

    def add_lake(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> None:
        ingest(self.con, "lk", batches, schema)
        self._note_schema("lk")

    def add_lake_rows(self, rows: pa.RecordBatchReader, plan: TablePlan) -> None:
        """The lake side hashed right here, from the lake's rows (of the plan's schema)."""
        name = f"_rows_{uuid.uuid4().hex}"
        self.con.register(name, rows)
        try:
            self.con.execute(f"CREATE TABLE lk AS {lake_hash_sql(plan, self.key, name)}")
        finally:
            self.con.unregister(name)
        if self.key_schema is None:
            self.key_schema = hash_schema(plan, self.key)

    def _note_schema(self, table: str) -> None:
        if self.key_schema is None:
            self.key_schema = self.con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema

    def compare(self, *, unique: bool = True) -> DiffCounts:
        """Join the two sides; `unique=False` when a key may repeat on either side (a repeated
        key whose rows are not exactly the other side's is reported changed)."""
        con = self.con
        if self.key:
            keys = [quote_identifier(k) for k in self.key]
            on = " AND ".join(f"s.{k} IS NOT DISTINCT FROM l.{k}" for k in keys)
            picked = ", ".join(f"coalesce(s.{k}, l.{k}) AS {k}" for k in keys)
            if unique:
                s, lk, differs = "src", "lk", f"s.{HASH_COLUMN} IS DISTINCT FROM l.{HASH_COLUMN}"
            else:
                grouped = "SELECT {keys}, count(*) AS _n, min({h}) AS {h} FROM {t} GROUP BY ALL"
                s = f"({grouped.format(keys=', '.join(keys), h=HASH_COLUMN, t='src')})"
                lk = f"({grouped.format(keys=', '.join(keys), h=HASH_COLUMN, t='lk')})"
                # A repeated key on either side is changed: the rewrite keeps one row per source row.
                differs = f"s.{HASH_COLUMN} IS DISTINCT FROM l.{HASH_COLUMN} OR s._n > 1 OR l._n > 1"
            con.execute(
                f"""CREATE TABLE diff AS
                SELECT {picked},
                       CASE WHEN l.{HASH_COLUMN} IS NULL THEN '{MISSING}'
                            WHEN s.{HASH_COLUMN} IS NULL THEN '{EXTRA}'
                            ELSE '{CHANGED}' END AS {KIND_COLUMN}
                FROM {s} s FULL OUTER JOIN {lk} l ON {on}
                WHERE {differs}"""
            )
        else:
            h = HASH_COLUMN
            con.execute(
                f"""CREATE TABLE diff AS
                WITH s AS (SELECT {h}, count(*) AS n FROM src GROUP BY ALL),
                     l AS (SELECT {h}, count(*) AS n FROM lk GROUP BY ALL),
                     d AS (SELECT coalesce(s.{h}, l.{h}) AS {h}, coalesce(s.n, 0) - coalesce(l.n, 0) AS delta
                           FROM s FULL OUTER JOIN l ON s.{h} = l.{h} WHERE s.n IS DISTINCT FROM l.n)
                SELECT {h}, CASE WHEN delta > 0 THEN '{MISSING}' ELSE '{EXTRA}' END AS {KIND_COLUMN}
                FROM (SELECT {h}, delta, unnest(range(abs(delta))) FROM d)"""
            )
        by_kind = dict(con.execute(f"SELECT {KIND_COLUMN}, count(*) FROM diff GROUP BY ALL").fetchall())
        (src_rows, src_sum), (lake_rows, lake_sum) = (
            con.execute(f"SELECT count(*), coalesce(sum({HASH_COLUMN}), 0) FROM {t}").fetchall()[0]
            for t in ("src", "lk")
        )
        self.counts = DiffCounts(
            by_kind.get(MISSING, 0),
            by_kind.get(EXTRA, 0),
            by_kind.get(CHANGED, 0),
            int(src_rows),
            int(lake_rows),
            int(src_sum),
            int(lake_sum),
        )
        return self.counts

    def release(self) -> None:
        """Drop the two sides once compared (the diff stays): their memory goes to what follows."""
        self.con.execute("DROP TABLE IF EXISTS src")
        self.con.execute("DROP TABLE IF EXISTS lk")

    def columns(self) -> list[str]:
        return self.key or [HASH_COLUMN]

    def keys_sql(self, *kinds: str) -> str:
        """SELECT of the diff's keys (or row hashes) of the given kinds."""
        wanted = ", ".join(f"'{k}'" for k in kinds)
        cols = ", ".join(quote_identifier(c) for c in self.columns())
        return f"SELECT {cols} FROM diff WHERE {KIND_COLUMN} IN ({wanted})"

    def keys(self, *kinds: str, order: bool = False) -> pa.Table:
        """The keys (keyless: row hashes) of the given kinds, in the sides' Arrow types."""
        import pyarrow as pa

        sql = self.keys_sql(*kinds)
        if order:
            sql += " ORDER BY " + ", ".join(quote_identifier(c) for c in self.columns())
        table = self.con.sql(sql).to_arrow_table()
        if self.key_schema is not None:
            schema = pa.schema([self.key_schema.field(c) for c in self.columns()])
            table = pa.Table.from_batches([conform(b, schema) for b in table.to_batches()], schema=schema)
        return table


def diff(
    source_batches: Iterable[pa.RecordBatch],
    lake_batches: Iterable[pa.RecordBatch],
    key: list[str],
    *,
    memory_limit: str = "256MB",
    spill_dir: Path | str | None = None,
    unique: bool = True,
) -> RowDiff:
    """Compare (key columns, _row_hash) batches of the source with the lake's.

    Runs in DuckDB under memory_limit, spilling to a temporary directory under spill_dir
    (the system's temporary directory by default). `unique=False` when a key may repeat.
    """
    with HashDiff(key, memory_limit=memory_limit, spill_dir=spill_dir) as hd:
        source = iter(source_batches)
        lake = iter(lake_batches)
        first_source, first_lake = next(source, None), next(lake, None)
        known = first_source if first_source is not None else first_lake
        schema = known.schema if known is not None else _null_schema(key)
        hd.add_source(_chain([] if first_source is None else [first_source], source), schema)
        hd.add_lake(_chain([] if first_lake is None else [first_lake], lake), schema)
        counts = hd.compare(unique=unique)
        return RowDiff(
            key=list(key),
            missing=hd.keys(MISSING, order=True),
            extra=hd.keys(EXTRA, order=True),
            changed=hd.keys(CHANGED, order=True),
            source_rows=counts.source_rows,
            lake_rows=counts.lake_rows,
            source_checksum=counts.source_checksum,
            lake_checksum=counts.lake_checksum,
        )


def _null_schema(key: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([*(pa.field(k, pa.int64()) for k in key), pa.field(HASH_COLUMN, pa.int64())])
