"""Erase one data subject (a customer) from every tier and warehouse table of a source system.

Each Parquet file holding the subject's rows is rewritten without them and
moved into place atomically; the warehouse copies lose the same rows (and so
the views over them). Every removal is recorded in an audit log, in the lake
and in the warehouse, with the subject's id kept only as a keyed hash.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from assets.migration import DOMAIN
from assets.migration.loads import dataset_name
from assets.migration.publish import warehouse_table
from assets.migration.registry import SourceSystem, TableSpec
from resources.lake import LakePartition, LakeStorage, Tier
from resources.lake.datasets import read_parquet_object
from resources.lake.paths import PARQUET_COMPRESSION, PARQUET_SUFFIX, dataset_prefix
from resources.warehouse import Warehouse
from resources.warehouse.sql import quote_identifier, quote_table

AUDIT_DATASET = "erasure_audit"
AUDIT_TABLE = "migration_status.erasure_audit"
TIERS = (Tier.RAW, Tier.PROCESSED)


@dataclass(frozen=True)
class Removal:
    table: str
    location: str  # a lake URI or a warehouse table
    rows: int


def _matches(column: Any, ids: list[Any]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    # Compare as strings: a mart table's raw tier holds ids as text.
    as_text = pc.cast(column, pa.string())
    return pc.fill_null(pc.is_in(as_text, value_set=pa.array([str(i) for i in ids], pa.string())), False)


def _files(lake: LakeStorage, tier: Tier, dataset: str) -> list[str]:
    prefix = dataset_prefix(tier, DOMAIN, dataset)
    return [o.key for o in lake.list_objects(prefix) if o.key.endswith(PARQUET_SUFFIX)]


def _subject_ids(lake: LakeStorage, source: SourceSystem, table: TableSpec, subject: Any) -> list[Any]:
    """The ids that tie the table's rows to the subject (looked up in the raw tier)."""
    import pyarrow.compute as pc

    link = table.erasure
    assert link is not None
    if link.lookup_table is None:
        return [subject]
    lookup = source.table(link.lookup_table)
    assert lookup.erasure and link.lookup_column
    ids: set[Any] = set()
    for key in _files(lake, Tier.RAW, dataset_name(source.name, lookup.name)):
        data = read_parquet_object(lake, key, columns=[lookup.erasure.column, link.lookup_column])
        mine = data.filter(_matches(data.column(lookup.erasure.column), [subject]))
        ids |= set(pc.unique(mine.column(link.lookup_column)).to_pylist())
    return sorted(ids)


def _erase_files(lake: LakeStorage, table: TableSpec, dataset: str, ids: list[Any]) -> list[Removal]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    assert table.erasure is not None
    removals = []
    for tier in TIERS:
        for key in _files(lake, tier, dataset):
            data = read_parquet_object(lake, key)
            if table.erasure.column not in data.column_names:
                continue
            hit = _matches(data.column(table.erasure.column), ids)
            removed = pc.sum(hit).as_py() or 0
            if not removed:
                continue
            kept = data.filter(pc.invert(hit))
            out = lake.scratch_dir() / f"erased-{uuid.uuid4().hex}.parquet"
            pq.write_table(kept, out, compression=PARQUET_COMPRESSION)
            lake.put_file(key, out)  # atomic replace of the same object
            removals.append(Removal(table.name, lake.uri(key), removed))
    return removals


def _erase_warehouse(warehouse: Warehouse, source: str, table: TableSpec, ids: list[Any]) -> list[Removal]:
    assert table.erasure is not None
    target = warehouse_table(source, table.name)
    if not ids or not warehouse.table_exists(target):
        return []
    values = ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)
    where = f"CAST({quote_identifier(table.erasure.column)} AS VARCHAR) IN ({values})"
    quoted = quote_table(target)
    count = warehouse.query(f"SELECT count(*) AS n FROM {quoted} WHERE {where}").column("n")[0].as_py()
    if count:
        warehouse.execute(f"DELETE FROM {quoted} WHERE {where}")
    return [Removal(table.name, target, int(count))] if count else []


def erase_subject(
    lake: LakeStorage,
    warehouse: Warehouse,
    source: SourceSystem,
    subject: Any,
    requested_by: str,
    subject_hash: str,
) -> list[Removal]:
    """Remove every row of the subject from this source's lake tiers and warehouse tables."""
    import pyarrow as pa

    if not source.subject_column:
        raise ValueError(f"source {source.name!r} declares no subject_column; nothing can be erased by id")
    tables = [t for t in source.tables if t.erasure]
    # Resolve linked ids before any file changes: the lookup tables are erased too.
    ids = {t.name: _subject_ids(lake, source, t, subject) for t in tables}
    removals: list[Removal] = []
    for table in tables:
        removals += _erase_files(lake, table, dataset_name(source.name, table.name), ids[table.name])
        removals += _erase_warehouse(warehouse, source.name, table, ids[table.name])

    now = datetime.now(UTC).replace(tzinfo=None)
    request = uuid.uuid4().hex
    audit = pa.table(
        {
            "request_id": [request] * max(1, len(removals)),
            "source": [source.name] * max(1, len(removals)),
            "subject_hash": [subject_hash] * max(1, len(removals)),
            "table_name": pa.array([r.table for r in removals] if removals else [None], pa.string()),
            "location": pa.array([r.location for r in removals] if removals else [None], pa.string()),
            "rows_removed": pa.array([r.rows for r in removals] or [0], pa.int64()),
            "requested_by": [requested_by] * max(1, len(removals)),
            "erased_at": [now] * max(1, len(removals)),
        }
    )
    lake.write_parquet(
        audit, Tier.CURATED, DOMAIN, AUDIT_DATASET, LakePartition(now.date()), f"erasure-{request}.parquet"
    )
    warehouse.load(AUDIT_TABLE, audit, "append")
    return removals
