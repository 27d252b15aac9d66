"""The apply engine: DMS-format change files in the lake -> a table's history and current state, exactly once.

One call (`apply_pending`) takes every change file of one mapped table that
the ledger has not applied and that is not held in quarantine, in apply order,
and applies them in ONE warehouse transaction:

One connection and one transaction a call (a DuckDB connection takes the
file's lock and costs tens of milliseconds; a table's files read in tens):
1. Read the state (on DuckDB in one statement), list, read and validate each
   file (a few at a time), convert its columns to the tables' types
   (assets.cdc.coerce) and compare schemas. A file that fails is quarantined
   (cdc_state.quarantine) and holds nothing back; a file whose schema is
   incompatible blocks the table from that file on.
2. Drop changes already applied under another file (same seq, re-written
   after a capture crash), reduce to the last change per key in Arrow and
   MERGE that into the current table with a sequence guard, append every
   change to the history, complete full loads, and record the files in
   cdc_state.files and in the generic ledger: a crash leaves all or nothing.

On DuckDB the MERGE and the history read the Arrow tables in place
(registered views), and the ledger's rows go in one SQL script. The common
path converts no Python value to Arrow (pyarrow imports pandas, half a second,
on the first one).

Ordering: every change has a 35-digit seq, AR_H_CHANGE_SEQ when the file has
it, else synthesized from the file's name and the row's index (kind digit 0
for full-load files, 1 for CDC files, 18 digits of the name's sort key, 16 of
the row index), so changes of a real DMS task apply in (file, row) order and
its full load before its CDC files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from assets.cdc import state
from assets.cdc.coerce import CoerceError, coerce_array, commit_timestamps, plan_cast, spec_type, storage_type
from assets.cdc.dms import (
    CHANGE_SEQ_COLUMN,
    LOAD_ID_METADATA,
    LOAD_PART_METADATA,
    LOAD_PARTS_METADATA,
    OP_COLUMN,
    OPS,
    SEQ_DIGITS,
    TIMESTAMP_COLUMN,
    DmsFileName,
    parse_file_name,
)
from assets.cdc.state import literal
from resources.lake.paths import DmsKey, LakePathError, dms_prefix, parse_dms_key
from resources.ledger import APPLIED, CLAIMS, FileLedger, FileRef
from resources.warehouse.sql import check_identifier, quote_identifier, quote_table

if TYPE_CHECKING:
    from assets.cdc.mapping import CdcTable
    from resources.lake.storage import LakeObject, LakeStorage
    from resources.warehouse import Warehouse

log = logging.getLogger(__name__)

SEQ_WIDTH = sum(SEQ_DIGITS)
# Columns of the history table before the row's own, in this order; _loaded_at is added on insert.
HISTORY_CONTROL = ("_op", "_commit_ts", "_change_seq", "_file_id", "_row_index")
CURRENT_CONTROL = ("_cdc_seq", "_cdc_commit_ts", "_cdc_loaded_at")
RESERVED = {*HISTORY_CONTROL, "_loaded_at", *CURRENT_CONTROL}
_TS_UTC = pa.timestamp("us", tz="UTC")
_LIST_DAYS_MAX = 45  # beyond this many day folders a listing goes by month
_READ_THREADS = min(8, 2 * (os.cpu_count() or 1))  # files read at once


# --- listing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeFile:
    """One change file of a table, parsed from its key; `invalid` says why DMS would not write it."""

    ref: FileRef
    key: DmsKey | None
    name: DmsFileName | None
    last_modified: datetime
    invalid: str | None = None

    @property
    def kind(self) -> str:
        return self.name.kind if self.name else "invalid"

    @property
    def order(self) -> tuple[int, str, int, str, str]:
        """Apply order: by day folder; in a day, LOAD files before CDC files; then by name."""
        if self.key is None or self.name is None or self.invalid:
            return (1, "", 0, "", self.ref.key)
        return (0, self.key.day.isoformat(), 0 if self.name.is_load else 1, self.name.sort_key, self.ref.key)


def list_change_files(
    lake: LakeStorage, table: CdcTable, *, since: date | None = None, extra_days: Iterable[date] = ()
) -> list[ChangeFile]:
    """Every change file of the table, in apply order; files with names DMS would not write come last,
    marked invalid (the apply quarantines them as bad_name).

    Without `since` every day folder is listed (for reconciliation); with it only the folders from
    that day to tomorrow (UTC), plus `extra_days`, so a listing's cost does not grow with history.
    """
    return _list_prefixes(lake, table, _listing_prefixes(since, extra_days))


def _list_prefixes(lake: LakeStorage, table: CdcTable, subs: list[str]) -> list[ChangeFile]:
    prefix = dms_prefix(table.cluster.name, table.database, table.table)
    objects: dict[str, LakeObject] = {}
    for sub in subs:
        for obj in lake.list_objects(prefix + sub):
            objects[obj.key] = obj
    files = [_change_file(lake, obj) for obj in objects.values()]
    return sorted(files, key=lambda f: f.order)


def _listing_prefixes(since: date | None, extra_days: Iterable[date]) -> list[str]:
    if since is None:
        return [""]
    until = datetime.now(UTC).date() + timedelta(days=1)
    since = min(since, until)
    prefixes: set[str] = set()
    if (until - since).days <= _LIST_DAYS_MAX:
        day = since
        while day <= until:
            prefixes.add(f"{day.year:04d}/{day.month:02d}/{day.day:02d}/")
            day += timedelta(days=1)
    elif (until.year - since.year) * 12 + until.month - since.month <= 36:
        year, month = since.year, since.month
        while (year, month) <= (until.year, until.month):
            prefixes.add(f"{year:04d}/{month:02d}/")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    else:
        return [""]
    prefixes |= {f"{d.year:04d}/{d.month:02d}/{d.day:02d}/" for d in extra_days}
    return sorted(prefixes)


def _change_file(lake: LakeStorage, obj: LakeObject) -> ChangeFile:
    ref = FileRef(obj.key, lake.etag(obj))
    try:
        key = parse_dms_key(obj.key)
    except LakePathError as exc:
        return ChangeFile(ref, None, None, obj.last_modified, str(exc))
    try:
        name = parse_file_name(key.filename)
    except ValueError as exc:
        return ChangeFile(ref, key, None, obj.last_modified, str(exc))
    return ChangeFile(ref, key, name, obj.last_modified)


# --- the result -----------------------------------------------------------------------------
@dataclass
class ApplyResult:
    target: str
    files_applied: int = 0
    files_skipped: int = 0  # already applied
    files_held: int = 0  # in quarantine from an earlier call, not released
    changes: dict[str, int] = field(default_factory=lambda: {"I": 0, "U": 0, "D": 0})
    duplicates_dropped: int = 0
    history_rows: int = 0
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)  # (object_key, cause, reason)
    blocked: str | None = None
    columns_added: list[str] = field(default_factory=list)
    columns_widened: list[str] = field(default_factory=list)
    current: dict[str, int] = field(default_factory=dict)  # MERGE actions, where the engine reports them
    replayed: int = 0  # already-applied later changes re-applied after an out-of-order file
    loads_completed: list[str] = field(default_factory=list)
    last_commit_ts: datetime | None = None
    max_seq: str | None = None
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.changes.values())


# --- reading and validating a file ------------------------------------------------------------
class _Rejected(Exception):
    def __init__(self, cause: str, reason: str):
        super().__init__(reason)
        self.cause, self.reason = cause, reason


@dataclass
class _Parsed:
    """A readable, valid change file: control columns normalized, data columns as the file has them."""

    file: ChangeFile
    data: pa.Table  # data columns, lower-cased names
    op: pa.Array  # 'I' / 'U' / 'D'
    commit_ts: pa.Array  # timestamp[us, UTC]
    seq: pa.Array  # 35-digit strings
    load_id: str | None = None
    load_part: int | None = None
    load_parts: int | None = None

    @property
    def rows(self) -> int:
        return self.data.num_rows


def _read_file(lake: LakeStorage, f: ChangeFile, primary_key: list[str]) -> _Parsed:
    import pyarrow.parquet as pq

    assert f.name is not None
    try:
        # ParquetFile, not read_table: the dataset layer costs per file and imports pandas.
        raw = pq.ParquetFile(pa.BufferReader(lake.get_bytes(f.ref.key))).read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _Rejected("corrupt", f"not a readable Parquet file: {exc}") from None
    meta = raw.schema.metadata or {}
    n = raw.num_rows

    if OP_COLUMN in raw.column_names:
        op = raw.column(OP_COLUMN).combine_chunks()
        if not (
            pa.types.is_string(op.type)
            or pa.types.is_large_string(op.type)
            or pa.types.is_dictionary(op.type)
        ):
            raise _Rejected("bad_op", f"column {OP_COLUMN} is {op.type}, not text")
        op = pc.cast(op.dictionary_decode() if pa.types.is_dictionary(op.type) else op, pa.string())
        allowed = ("I",) if f.name.is_load else OPS
        # The distinct values (nulls included), in order of first appearance: no Python values
        # become Arrow scalars here (pyarrow imports pandas, half a second, on the first one).
        bad = [v for v in pc.value_counts(op).field("values").to_pylist() if v not in allowed]
        if bad:
            raise _Rejected("bad_op", f"{OP_COLUMN} {bad[0]!r} is not one of {'/'.join(allowed)}")
    elif f.name.is_load:
        op = pa.repeat(pa.scalar("I", pa.string()), n)  # a full load without IncludeOpForFullLoad: inserts
    else:
        raise _Rejected(
            "bad_op", f"a CDC file needs an {OP_COLUMN} column (columns: {raw.column_names[:12]})"
        )

    data_columns = [
        c for c in raw.column_names if c not in (OP_COLUMN, TIMESTAMP_COLUMN) and not c.startswith("AR_H_")
    ]
    names = [c.lower() for c in data_columns]
    for original, name in zip(data_columns, names, strict=True):
        try:
            check_identifier(name, "column name")
        except ValueError:
            raise _Rejected(
                "bad_column", f"column {original!r} is not a name the warehouse can hold"
            ) from None
        if name in RESERVED:
            raise _Rejected("bad_column", f"column {original!r} collides with the loader's column {name!r}")
    if len(set(names)) != len(names):
        raise _Rejected("bad_column", f"columns differ only in case: {data_columns}")
    data = raw.select(data_columns).rename_columns(names)
    for key in primary_key:
        if key.lower() not in names:
            raise _Rejected("missing_key", f"primary-key column {key!r} is not in the file")
        if data.column(key.lower()).null_count:
            raise _Rejected(
                "missing_key",
                f"primary-key column {key!r} is null in {data.column(key.lower()).null_count} rows",
            )

    try:
        commit_ts = commit_timestamps(
            raw.column(TIMESTAMP_COLUMN) if TIMESTAMP_COLUMN in raw.column_names else None, n
        )
    except CoerceError as exc:
        raise _Rejected("bad_value", str(exc)) from None
    seq = _seq_column(raw, f) if CHANGE_SEQ_COLUMN in raw.column_names else _synthesized_seq(f, n)

    parsed = _Parsed(f, data, op, commit_ts, seq)
    if f.name.is_load and LOAD_ID_METADATA in meta:
        parsed.load_id = meta[LOAD_ID_METADATA].decode()
        parsed.load_part = int(meta.get(LOAD_PART_METADATA, b"1"))
        parsed.load_parts = int(meta[LOAD_PARTS_METADATA]) if LOAD_PARTS_METADATA in meta else None
        if len(parsed.load_id) != SEQ_WIDTH or not parsed.load_id.isdigit():
            raise _Rejected(
                "bad_value", f"load id {parsed.load_id!r} in the footer is not a {SEQ_WIDTH}-digit seq"
            )
        # Every row of a load is at the snapshot's seq, whatever the file's column says.
        parsed.seq = pa.repeat(pa.scalar(parsed.load_id, pa.string()), n)
    return parsed


_READERS: list[ThreadPoolExecutor] = []  # made on first use, kept for the process


def _read_files(
    lake: LakeStorage, files: list[ChangeFile], primary_key: list[str]
) -> list[_Parsed | _Rejected]:
    """_read_file of each file, in order, a few at a time: a lake's GET waits on the network, and
    Parquet decoding and the checks run in Arrow's C++ (without the GIL) on every core."""

    def read(f: ChangeFile) -> _Parsed | _Rejected:
        try:
            return _read_file(lake, f, primary_key)
        except _Rejected as exc:
            return exc

    if len(files) < 2:
        return [read(f) for f in files]
    if not _READERS:
        _READERS.append(ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="cdc-read"))
    return list(_READERS[0].map(read, files))


def _seq_column(raw: pa.Table, f: ChangeFile) -> pa.Array:
    seq = raw.column(CHANGE_SEQ_COLUMN).combine_chunks()
    if pa.types.is_integer(seq.type) or pa.types.is_decimal(seq.type):
        seq = pc.utf8_lpad(pc.cast(seq, pa.string()), SEQ_WIDTH, "0")
    elif not (pa.types.is_string(seq.type) or pa.types.is_large_string(seq.type)):
        raise _Rejected(
            "bad_value", f"column {CHANGE_SEQ_COLUMN!r} is {seq.type}, not a {SEQ_WIDTH}-digit string"
        )
    seq = pc.cast(seq, pa.string())
    if not len(seq):
        return seq
    # Length and digits (a regex over every row costs several times more), by aggregates: no
    # Python value becomes an Arrow scalar on this path (see the Op check).
    lengths = pc.min_max(pc.binary_length(seq)).as_py()
    if not (
        seq.null_count == 0
        and lengths["min"] == lengths["max"] == SEQ_WIDTH
        and pc.all(pc.utf8_is_digit(seq)).as_py()
    ):
        ok = pc.fill_null(pc.and_(pc.equal(pc.binary_length(seq), SEQ_WIDTH), pc.utf8_is_digit(seq)), False)
        example = seq[pc.index(ok, False).as_py()].as_py()
        raise _Rejected(
            "bad_value", f"column {CHANGE_SEQ_COLUMN!r}: value {example!r} is not {SEQ_WIDTH} digits"
        )
    return seq


def _synthesized_seq(f: ChangeFile, rows: int) -> pa.Array:
    assert f.name is not None
    # LOAD: 0 + the counter in 18 digits; CDC: 1 + YYYYMMDDHHMMSSffff (18 digits).
    head = f"0{int(f.name.sort_key, 16):018d}" if f.name.is_load else "1" + f.name.sort_key.replace("-", "")
    index = pc.utf8_lpad(pc.cast(_row_numbers(rows), pa.string()), SEQ_WIDTH - len(head), "0")
    return pc.binary_join_element_wise(head, index, "")


# --- schemas: what the tables hold and what a batch needs --------------------------------------
@dataclass
class _Plan:
    """Files converted to the tables' types, and the schema changes they bring."""

    types: dict[str, pa.DataType]  # data columns of the tables after this batch, in order
    tables: list[tuple[_Parsed, pa.Table]] = field(default_factory=list)  # (file, converted data)
    quarantined: list[tuple[ChangeFile, str, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    widened: dict[str, pa.DataType] = field(default_factory=dict)
    readded: list[str] = field(default_factory=list)  # columns accepted as dropped that came back
    block: tuple[_Parsed, str, list[dict[str, str]]] | None = None


def _plan(
    parsed: Sequence[_Parsed],
    existing: dict[str, pa.DataType] | None,
    table: CdcTable,
    dropped: set[str],
    newest_applied: str | None = None,
) -> _Plan:
    types = dict(existing or {})
    plan = _Plan(types)
    overrides = {name.lower(): spec for name, spec in table.spec.columns.items()}
    dropped = set(dropped)
    for p in parsed:
        file_types = {name: p.data.schema.field(name).type for name in p.data.column_names}
        changes: list[dict[str, str]] = []
        # A late file (released from quarantine, say) wholly older than what is applied may lack
        # columns added since it was written: they are null in it, not dropped at the source.
        # (By key: day folders and DMS names sort in write order, whichever tool wrote the file.)
        late = newest_applied is not None and p.file.ref.key < newest_applied
        for name, old in types.items():
            if name not in file_types and name not in dropped and not late:
                changes.append({"column": name, "change": "dropped", "old": str(old), "new": "absent"})
        targets: dict[str, pa.DataType] = {}
        widen: dict[str, pa.DataType] = {}
        for name, new in file_types.items():
            if name not in types:
                targets[name] = spec_type(overrides[name], new) if name in overrides else storage_type(new)
                continue
            how = plan_cast(new, types[name])
            if name in overrides and how != "retype":
                # The mapping asks for a wider type than the tables have (an operator's fix for
                # values that did not fit): widen the tables to it.
                wanted = spec_type(overrides[name], new)
                if plan_cast(wanted, types[name]) == "widen":
                    widen[name] = wanted
            if how == "retype":
                changes.append({"column": name, "change": "retype", "old": str(types[name]), "new": str(new)})
            elif how == "widen":
                widen[name] = storage_type(new)
            targets[name] = widen.get(name, types[name])
        if changes:
            detail = "; ".join(
                f"column {c['column']!r} {'dropped' if c['change'] == 'dropped' else 'retyped'}:"
                f" {c['old']} -> {c['new']}"
                for c in changes
            )
            plan.block = (p, f"{p.file.ref.key}: schema incompatible with the tables: {detail}", changes)
            break
        try:
            converted = pa.table(
                {name: coerce_array(p.data.column(name), targets[name], name) for name in file_types}
            )
        except CoerceError as exc:
            plan.quarantined.append((p.file, "bad_value", str(exc)))
            continue
        for name, target in targets.items():
            if name not in types:
                types[name] = target
                if existing is not None or plan.tables:
                    plan.added.append(name)
            elif name in widen:
                types[name] = target
                plan.widened[name] = target
            if name in dropped:
                dropped.discard(name)
                plan.readded.append(name)
        plan.tables.append((p, converted))
    return plan


def _batch_table(
    p: _Parsed,
    data: pa.Table,
    types: dict[str, pa.DataType],
    keep: pa.Array | None,
    history: bool = True,
) -> pa.Table:
    """One file's changes as the history table's columns (without _loaded_at); without `history`,
    without _file_id and _row_index too (only the history holds them)."""
    n = p.rows
    columns: dict[str, pa.Array] = {"_op": p.op, "_commit_ts": p.commit_ts, "_change_seq": p.seq}
    if history:
        columns["_file_id"] = _repeated(p.file.ref.identity, n)
        columns["_row_index"] = _row_numbers(n)
    for name, kind in types.items():
        if name in data.column_names:
            column = data.column(name)
            columns[name] = column if column.type == kind else column.cast(kind)  # widened: lossless
        else:
            columns[name] = pa.nulls(n, kind)  # a column added by a later file, or accepted as dropped
    batch = pa.table(columns)
    return batch if keep is None else batch.filter(keep)


# Arrays made from buffers, not from Python values: pyarrow imports pandas (half a second) the
# first time it converts a Python value or a NumPy array (pa.array, pa.scalar), and the apply of
# ordinary change files needs nothing else that would.
def _row_numbers(n: int) -> pa.Array:
    """0 .. n-1 as int64 (a C loop: pa.array(range(n)) builds n Python ints)."""
    import numpy as np

    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])


def _repeated(text: str, n: int) -> pa.Array:
    """n copies of a string."""
    import numpy as np

    data = text.encode()
    one = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(np.array([0, len(data)], dtype=np.int32)), pa.py_buffer(data)]
    )
    return one.take(pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(np.zeros(n, dtype=np.int32))]))


def sql_type(kind: pa.DataType) -> str:
    """The DuckDB-dialect SQL type of an Arrow type (for ALTER TABLE)."""
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    if pa.types.is_integer(kind):
        names = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}
        return ("U" if pa.types.is_unsigned_integer(kind) else "") + names[kind.bit_width]
    if pa.types.is_floating(kind):
        return "DOUBLE" if kind.bit_width == 64 else "FLOAT"
    if pa.types.is_decimal(kind):
        return f"DECIMAL({kind.precision}, {kind.scale})"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "VARCHAR"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "BLOB"
    if pa.types.is_date(kind):
        return "DATE"
    if pa.types.is_time(kind):
        return "TIME"
    if pa.types.is_duration(kind):
        return "INTERVAL"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    raise ValueError(f"no warehouse column type for Arrow type {kind}")


def _table_types(db: Any, table: CdcTable) -> dict[str, pa.DataType] | None:
    """The data columns of the current table and their types, or None before the first apply."""
    if not _exists(db, table.current_table):
        return None
    schema = db.query(f"SELECT * FROM {quote_table(table.current_table)} LIMIT 0").schema
    # DuckDB returns an INTERVAL column (made from a TIME's duration) as month_day_nano.
    return {
        f.name: pa.duration("us") if pa.types.is_interval(f.type) else f.type
        for f in schema
        if f.name not in CURRENT_CONTROL
    }


def _fetch(db: Any, sql: str) -> list[dict[str, Any]]:
    """state.rows; on a DuckDB session fetched as Python values, without an Arrow result (a third
    cheaper for the few rows the apply's own reads return). For text, numbers and lists only."""
    if _is_duckdb(db):
        cursor = db.con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return state.rows(db, sql)


# Tables known to exist, per open session: DuckDB answers an information_schema query in
# milliseconds, and an apply asks about the same few tables several times.
_CATALOG: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _is_duckdb(db: Any) -> bool:
    return getattr(db, "dialect", None) == "duckdb" and hasattr(db, "con")


def _exists(db: Any, name: str) -> bool:
    if _is_duckdb(db):
        try:
            known = _CATALOG.get(db)
        except TypeError:  # not weakly referenceable
            known = None
        if known is None:
            known = {
                f"{r['s']}.{r['t']}"
                for r in state.rows(
                    db, "SELECT schema_name AS s, table_name AS t FROM duckdb_tables() WHERE NOT temporary"
                )
            }
            with contextlib.suppress(TypeError):
                _CATALOG[db] = known
        return name in known
    schema, table = name.split(".")
    found = db.query(
        "SELECT count(*) AS n FROM information_schema.tables"
        f" WHERE table_schema = {literal(schema)} AND table_name = {literal(table)}"
    )
    return bool(found.column("n")[0].as_py())


def _created(db: Any, name: str) -> None:
    """Tell _exists's cache that this session created the table."""
    with contextlib.suppress(TypeError):
        if (known := _CATALOG.get(db)) is not None:
            known.add(name)


def _same_types(a: dict[str, pa.DataType] | None, b: dict[str, pa.DataType] | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a) == list(b) and all(plan_cast(a[k], b[k]) == "same" or _tz_only(a[k], b[k]) for k in a)


def _tz_only(a: pa.DataType, b: pa.DataType) -> bool:
    # DuckDB reports TIMESTAMPTZ in the session's zone: the same column whatever the zone's name.
    return (
        pa.types.is_timestamp(a)
        and pa.types.is_timestamp(b)
        and a.unit == b.unit
        and bool(a.tz) == bool(b.tz)
    )


# --- apply -------------------------------------------------------------------------------------
def apply_pending(
    lake: LakeStorage,
    warehouse: Warehouse,
    table: CdcTable,
    *,
    run_id: str | None = None,
    files: list[ChangeFile] | None = None,
    full_listing: bool = False,
    arrow_views: bool | None = None,
) -> ApplyResult:
    """Apply every pending change file of `table` (see the module docstring); returns what happened.

    `files` skips the listing (a sensor that already listed); `full_listing` lists every day folder
    (reconciliation). `arrow_views` forces (True) or disables (False) the DuckDB fast path of
    registering Arrow tables on the connection; by default it is used whenever the engine is DuckDB.

    One warehouse connection a call (each DuckDB connection takes the file's lock anew and costs
    tens of milliseconds): the state reads, the listing, the file reads and the writes share one
    transaction, so nothing can change between what is read and what is written.
    """
    state.ensure_state(warehouse)
    return _apply(lake, warehouse, warehouse.transaction, table, run_id, files, full_listing, arrow_views)


def apply_tables(
    lake: LakeStorage, warehouse: Warehouse, tables: Sequence[CdcTable], *, run_id: str | None = None
) -> dict[str, ApplyResult | Exception]:
    """apply_pending for each table, one transaction a table, all on one warehouse connection.

    One connection takes DuckDB's file lock and loads its catalog once for the whole pass
    instead of once a table. A table that fails rolls back alone: its exception is its
    entry in the result, and the tables after it are applied.
    """
    results: dict[str, ApplyResult | Exception] = {}
    with warehouse.transactions() as begin:
        state.ensure_state(warehouse, begin)  # on the pass's connection: no connection of its own
        for table in tables:
            try:
                results[table.target] = _apply(lake, warehouse, begin, table, run_id, None, False, None)
            except Exception as exc:
                log.exception("%s: apply failed", table.target)
                results[table.target] = exc
    return results


def _apply(
    lake: LakeStorage,
    warehouse: Warehouse,
    begin: Callable[[], contextlib.AbstractContextManager[Any]],
    table: CdcTable,
    run_id: str | None,
    files: list[ChangeFile] | None,
    full_listing: bool,
    arrow_views: bool | None,
) -> ApplyResult:
    started = time.monotonic()
    result = ApplyResult(table.target)
    target = table.target
    ledger = FileLedger(warehouse)
    with begin() as session:
        reads: dict[str, Any] | None = None
        if _is_duckdb(session):
            reads = state.apply_reads(session, target)
            with contextlib.suppress(TypeError):
                _CATALOG[session] = set(reads["tables"])
            reason, newest = reads["block"], reads["newest"]
            released_keys, held_all, dropped = reads["released"], set(reads["held"]), set(reads["dropped"])
        else:
            block = state.active_block(session, target)
            reason = block["reason"] if block is not None else None
            newest = state.last_applied_key(session, target) if reason is None else None
            released_keys, held_all, dropped = None, None, None
        if reason is not None:
            result.blocked = reason
            return _done(result, started)
        if files is None:
            last = None if full_listing else newest
            if released_keys is None:
                released_keys = state.released_keys(session, target) if last else []
            released = released_keys if last else []
            subs = _listing_prefixes(*_listing_window(last, released))
            # What is applied in the folders the listing covers (keys sort by day folder).
            prefix = dms_prefix(table.cluster.name, table.database, table.table)
            applied = _applied_from(session, target, prefix + min(subs))
            held = held_all if held_all is not None else state.held_identities(session, target, None)
            files = _list_prefixes(lake, table, subs)
        else:
            ids = [f.ref.identity for f in files]
            applied = _applied_in(session, target, ids)
            held = held_all if held_all is not None else state.held_identities(session, target, ids)
        files = sorted(files, key=lambda f: f.order)
        todo = [f for f in files if f.ref.identity not in applied and f.ref.identity not in held]
        result.files_skipped = sum(1 for f in files if f.ref.identity in applied)
        result.files_held = sum(1 for f in files if f.ref.identity in held and f.ref.identity not in applied)
        if not todo:
            return _done(result, started)
        existing = _table_types(session, table)
        if dropped is None:
            dropped = state.dropped_columns(session, target)

        # Read and validate (nothing written yet: a file that fails is quarantined below).
        parsed: list[_Parsed] = []
        rejected: list[tuple[ChangeFile, str, str]] = []
        named = [f for f in todo if not (f.invalid or f.name is None)]
        outcome = dict(zip((id(f) for f in named), _read_files(lake, named, table.primary_key), strict=True))
        for f in todo:
            read = outcome.get(id(f))
            if read is None:
                rejected.append((f, "bad_name", f.invalid or "not a DMS file name"))
            elif isinstance(read, _Rejected):
                rejected.append((f, read.cause, read.reason))
            else:
                parsed.append(read)
        plan = _plan(parsed, existing, table, dropped, newest)

        now = datetime.now(UTC)
        _quarantine(session, table, rejected + plan.quarantined, run_id, now, result)
        if plan.tables:
            _apply_plan(lake, ledger, session, table, plan, existing, run_id, now, result, arrow_views, reads)
        if plan.block is not None:
            _block(session, table, plan.block, now)
            result.blocked = plan.block[1]
    return _done(result, started)


def _done(result: ApplyResult, started: float) -> ApplyResult:
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _listing_window(last: str | None, released: list[str]) -> tuple[date | None, list[date]]:
    """The listing an apply needs: from the day before the last applied file's, plus released files' days."""
    if last is None:
        return None, []
    since = parse_dms_key(last).day - timedelta(days=1)  # a file may land just after midnight in the old day
    extra = []
    for key in released:
        try:
            extra.append(parse_dms_key(key).day)
        except LakePathError:
            continue  # a bad name stays quarantined: releasing it cannot make it a DMS file
    return since, extra


def _applied_from(session: Any, target: str, lowest_key: str) -> set[str]:
    """Identities of the target's applied files whose keys sort at or after lowest_key."""
    if not _exists(session, APPLIED):
        return set()
    return {
        r["identity"]
        for r in _fetch(
            session,
            f"SELECT identity FROM {APPLIED} WHERE target = {literal(target)}"
            f" AND object_key >= {literal(lowest_key)}",
        )
    }


def _applied_in(session: Any, target: str, identities: list[str]) -> set[str]:
    if not _exists(session, APPLIED):
        return set()
    found: set[str] = set()
    for start in range(0, len(identities), 500):
        chunk = identities[start : start + 500]
        found |= {
            r["identity"]
            for r in _fetch(
                session,
                f"SELECT identity FROM {APPLIED} WHERE target = {literal(target)}"
                f" AND identity IN ({state.in_list(chunk)})",
            )
        }
    return found


def _quarantine(
    session: Any,
    table: CdcTable,
    rejected: list[tuple[ChangeFile, str, str]],
    run_id: str | None,
    now: datetime,
    result: ApplyResult,
) -> None:
    if not rejected:
        return
    at = now.replace(tzinfo=None)
    session.load(
        state.QUARANTINE,
        pa.table(
            {
                "target": pa.array([table.target] * len(rejected), pa.string()),
                "identity": pa.array([f.ref.identity for f, _, _ in rejected], pa.string()),
                "object_key": pa.array([f.ref.key for f, _, _ in rejected], pa.string()),
                "cause": pa.array([c for _, c, _ in rejected], pa.string()),
                "reason": pa.array([r for _, _, r in rejected], pa.string()),
                "quarantined_at": pa.array([at] * len(rejected), pa.timestamp("us")),
                "released_at": pa.nulls(len(rejected), pa.timestamp("us")),
                "run_id": pa.array([run_id] * len(rejected), pa.string()),
            }
        ),
        "append",
    )
    for f, cause, reason in rejected:
        log.warning("%s: quarantined %s (%s): %s", table.target, f.ref.key, cause, reason)
        result.quarantined.append((f.ref.key, cause, reason))


def _block(
    session: Any, table: CdcTable, block: tuple[_Parsed, str, list[dict[str, str]]], now: datetime
) -> None:
    p, reason, changes = block
    log.error("%s: blocked: %s", table.target, reason)
    session.load(
        state.BLOCKS,
        pa.table(
            {
                "target": [table.target],
                "check": ["schema_compatible"],
                "reason": [reason],
                "object_key": [p.file.ref.key],
                "identity": [p.file.ref.identity],
                "changes": [json.dumps(changes)],
                "since": pa.array([now.replace(tzinfo=None)], pa.timestamp("us")),
                "lifted_at": pa.nulls(1, pa.timestamp("us")),
            }
        ),
        "append",
    )


def _ensure_tables(
    session: Any, table: CdcTable, plan: _Plan, existing: dict[str, pa.DataType] | None
) -> None:
    """Create the tables on the first apply; add and widen columns the batch brings."""
    data_schema = [pa.field(n, t) for n, t in plan.types.items()]
    history_schema = pa.schema(
        [
            pa.field("_op", pa.string()),
            pa.field("_commit_ts", _TS_UTC),
            pa.field("_change_seq", pa.string()),
            pa.field("_file_id", pa.string()),
            pa.field("_row_index", pa.int64()),
            pa.field("_loaded_at", _TS_UTC),
            *data_schema,
        ]
    )
    current_schema = pa.schema(
        [
            *data_schema,
            pa.field("_cdc_seq", pa.string()),
            pa.field("_cdc_commit_ts", _TS_UTC),
            pa.field("_cdc_loaded_at", _TS_UTC),
        ]
    )
    targets = [(table.current_table, current_schema)]
    if table.history:
        targets.append((table.history_table, history_schema))
    for name, schema in targets:
        if not _exists(session, name):
            _create_table(session, name, schema)
            _created(session, name)
            continue
        if name == table.current_table and existing is not None:
            have = set(existing)  # read at the start of this transaction
        else:
            have = set(session.query(f"SELECT * FROM {quote_table(name)} LIMIT 0").schema.names)
        for column in plan.types:
            if column not in have:
                session.execute(
                    f"ALTER TABLE {quote_table(name)} ADD COLUMN {quote_identifier(column)}"
                    f" {sql_type(plan.types[column])}"
                )
        for column, kind in plan.widened.items():
            session.execute(
                f"ALTER TABLE {quote_table(name)} ALTER COLUMN {quote_identifier(column)}"
                f" TYPE {sql_type(kind)}"
            )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time_range(ts: pa.Array) -> tuple[datetime | None, datetime | None]:
    """The first and last of timestamp[us, UTC] values, as aware datetimes (None if all null):
    from the integers (a zoned Arrow timestamp's as_py imports pandas)."""
    micros = pc.min_max(ts.view(pa.int64())).as_py()
    low, high = micros["min"], micros["max"]
    return (
        None if low is None else _EPOCH + timedelta(microseconds=low),
        None if high is None else _EPOCH + timedelta(microseconds=high),
    )


def _create_table(session: Any, name: str, schema: pa.Schema) -> None:
    """A table with the columns of an Arrow schema, made from an empty Arrow table (as a load makes
    it: the same column types); on DuckDB in one script."""
    empty = pa.Table.from_batches([], schema=schema)  # (schema.empty_table() imports pandas)
    if not _is_duckdb(session):
        session.load(name, empty, "append")
        return
    view = f"_cdc_empty_{uuid.uuid4().hex[:12]}"
    con = session.con
    con.register(view, empty)
    try:
        parts = quote_table(name).split(".")  # validated, quoted parts
        create = f"CREATE TABLE {'.'.join(parts)} AS SELECT * FROM {view}"
        if len(parts) > 1:
            create = f"CREATE SCHEMA IF NOT EXISTS {'.'.join(parts[:-1])}; {create}"
        con.execute(create)
    finally:
        con.unregister(view)


def _seq_ranges(session: Any, target: str, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Seq ranges of applied CDC files of target overlapping any of the (min, max) ranges given."""
    found: list[tuple[str, str]] = []
    for start in range(0, len(files), 200):
        chunk = files[start : start + 200]
        overlap = " OR ".join(f"(max_seq >= {literal(lo)} AND min_seq <= {literal(hi)})" for lo, hi in chunk)
        found += [
            (r["min_seq"], r["max_seq"])
            for r in _fetch(
                session,
                f"SELECT DISTINCT min_seq, max_seq FROM {state.FILES} WHERE target = {literal(target)}"
                f" AND kind = 'cdc' AND ({overlap})",
            )
        ]
    return found


def _outside(seq: pa.Array, ranges: list[tuple[str, str]]) -> pa.Array | None:
    """A mask of the seqs outside every range, or None when no seq is inside one."""
    inside = None
    for lo, hi in ranges:
        hit = pc.and_(pc.greater_equal(seq, lo), pc.less_equal(seq, hi))
        inside = hit if inside is None else pc.or_(inside, hit)
    if inside is None or not pc.any(inside).as_py():
        return None
    return pc.invert(inside)


def _apply_plan(
    lake: LakeStorage,
    ledger: FileLedger,
    session: Any,
    table: CdcTable,
    plan: _Plan,
    existing: dict[str, pa.DataType] | None,
    run_id: str | None,
    now: datetime,
    result: ApplyResult,
    arrow_views: bool | None,
    reads: dict[str, Any] | None = None,
) -> None:
    """`reads`: what state.apply_reads read at the start of this transaction (on DuckDB), else None."""
    target = table.target
    _ensure_tables(session, table, plan, existing)
    if plan.readded:
        session.execute(
            f"DELETE FROM {state.DROPPED} WHERE target = {literal(target)}"
            f" AND column_name IN ({state.in_list(plan.readded)})"
        )
    result.columns_added = list(plan.added)
    result.columns_widened = list(plan.widened)

    # Dedup: a CDC row whose seq lies inside an applied (or earlier in this batch) CDC file's range
    # was applied already: the capture writes a table's changes in binlog order, so a file holds
    # every change of its table between its first and last seq.
    bounds: list[tuple[str | None, str | None]] = []
    for p, _ in plan.tables:
        seq_range = pc.min_max(p.seq).as_py() if p.rows else {"min": None, "max": None}
        bounds.append((seq_range["min"], seq_range["max"]))
    cdc_ranges = [
        (lo, hi)
        for (p, _), (lo, hi) in zip(plan.tables, bounds, strict=True)
        if p.file.kind == "cdc" and lo is not None and hi is not None
    ]
    if reads is not None:
        applied_max = reads["applied_max"]
    else:
        applied_max = state.rows(
            session, f"SELECT max(max_seq) AS m FROM {state.FILES} WHERE target = {literal(target)}"
        )[0]["m"]
    # An applied file's range can reach into the batch only if the highest applied seq does.
    reach = applied_max is not None and any(lo <= applied_max for lo, _ in cdc_ranges)
    applied_ranges = _seq_ranges(session, target, cdc_ranges) if reach else []
    earlier: list[tuple[str, str]] = []
    batches: list[tuple[_Parsed, pa.Table]] = []
    file_rows = []
    at = now.replace(tzinfo=None)
    for (p, data), (lo, hi) in zip(plan.tables, bounds, strict=True):
        keep = None
        if p.file.kind == "cdc" and lo is not None and hi is not None:
            overlapping = [(a, b) for a, b in applied_ranges + earlier if a <= hi and b >= lo]
            keep = _outside(p.seq, overlapping) if overlapping else None
            earlier.append((lo, hi))
        batch = _batch_table(p, data, plan.types, keep, history=table.history)
        batches.append((p, batch))
        counts = {o["values"]: o["counts"] for o in pc.value_counts(batch.column("_op")).to_pylist()}
        for op in OPS:
            result.changes[op] += counts.get(op, 0)
        duplicates = p.rows - batch.num_rows
        result.duplicates_dropped += duplicates
        first, last = _time_range(p.commit_ts)
        file_rows.append(
            {
                "target": target,
                "identity": p.file.ref.identity,
                "object_key": p.file.ref.key,
                "kind": p.file.kind,
                "min_seq": lo,
                "max_seq": hi,
                "rows": p.rows,
                "inserts": counts.get("I", 0),
                "updates": counts.get("U", 0),
                "deletes": counts.get("D", 0),
                "duplicates": duplicates,
                "first_commit_ts": first.astimezone(UTC).replace(tzinfo=None) if first else None,
                "last_commit_ts": last.astimezone(UTC).replace(tzinfo=None) if last else None,
                "load_id": p.load_id,
                "load_part": p.load_part,
                "load_parts": p.load_parts,
                "applied_at": at,
                "run_id": run_id,
            }
        )
        if last and (result.last_commit_ts is None or last > result.last_commit_ts):
            result.last_commit_ts = last
        if hi and (result.max_seq is None or hi > result.max_seq):
            result.max_seq = hi

    changes = pa.concat_tables([b for _, b in batches]) if batches else None
    use_views = arrow_views if arrow_views is not None else getattr(session, "dialect", None) == "duckdb"
    use_views = use_views and hasattr(session, "con")
    batch_min = None
    if changes is not None and changes.num_rows:
        batch_min = pc.min(changes.column("_change_seq")).as_py()
        late = applied_max is not None and batch_min <= applied_max
        staged = _Staged(session, use_views)
        # Only the last change of a key can reach the current table: the database merges a
        # fraction of the rows (a re-applied key's later changes come by replay_sql). The history
        # takes every row, from the whole batch.
        current = changes.drop_columns(["_file_id", "_row_index"]) if table.history else changes
        current = _last_per_key(current, [k.lower() for k in table.primary_key])
        try:
            source = staged.put("changes", current)
            replay_sql = None
            if late:
                replay_sql = _replay_source(
                    lake, session, table, plan, staged, source, batch_min, applied_max
                )
            result.current = _merge_current(session, table, plan, source, replay_sql, now, reduced=True)
            if replay_sql is not None:
                result.replayed = _fetch(session, f"SELECT count(*) AS n FROM ({replay_sql})")[0]["n"]
            if table.history:
                result.history_rows = _append_history(
                    session, table, batches, staged, changes, use_views, now
                )
        finally:
            staged.drop()

    if any(p.load_id for p, _ in plan.tables):  # _complete_loads counts the parts in cdc_state.files
        _insert_files(session, file_rows)
        file_rows = []
    _complete_loads(session, table, [p for p, _ in plan.tables], batch_min, result, reads)
    refs = [p.file.ref for p, _ in plan.tables]
    _record(
        ledger,
        session,
        target,
        refs,
        run_id,
        {p.file.ref.identity: p.rows for p, _ in plan.tables},
        file_rows,
        claims=reads["claims"] if reads is not None else None,
        at=at,
    )
    result.files_applied = len(refs)


def _record(
    ledger: FileLedger,
    session: Any,
    target: str,
    refs: list[FileRef],
    run_id: str | None,
    rows: dict[str, int],
    file_rows: list[dict[str, Any]] | None = None,
    claims: bool | None = None,
    at: datetime | None = None,
) -> None:
    """The files' rows in cdc_state.files and the ledger's rows, in the apply's transaction (a crash
    leaves all or none); the target's claims on the files deleted (`claims`: whether it holds any,
    None when not known).

    The ledger's rows are written here rather than by FileLedger.record, which asks the warehouse
    again, per file, whether each is recorded: this transaction has already found every one of
    these files unapplied (and on DuckDB the ledger's key refuses a second row for a file). On
    DuckDB as one script of INSERT ... VALUES statements: no Arrow tables to build and register.
    """
    if not refs and not file_rows:
        return
    fresh = sorted(set(refs))
    if _is_duckdb(session):
        script = [_files_insert(file_rows)] if file_rows else []
        if fresh:
            if not _exists(session, APPLIED):
                ledger._create(session)
                _created(session, APPLIED)
            at = at or state.now_utc()
            values = ", ".join(
                f"({literal(target)}, {literal(r.identity)}, {literal(r.key)}, {literal(r.etag)}, NULL,"
                f" {literal(run_id)}, {literal(rows.get(r.identity))}, {literal(at)})"
                for r in fresh
            )
            script.append(
                f"INSERT INTO {APPLIED} (target, identity, object_key, etag, partition_key, run_id, rows,"
                f" applied_at) VALUES {values}"
            )
            if claims or (claims is None and _exists(session, CLAIMS)):
                script += _claims_deletes(target, fresh)
        session.con.execute(";\n".join(script))
        return
    if file_rows:
        _insert_files(session, file_rows)
    if not fresh:
        return
    if not _exists(session, APPLIED):
        ledger._create(session)
        _created(session, APPLIED)
    session.load(APPLIED, FileLedger._applied_rows(target, fresh, run_id, None, rows), "append")
    if _exists(session, CLAIMS):
        for statement in _claims_deletes(target, fresh):
            session.execute(statement)


def _insert_files(session: Any, file_rows: list[dict[str, Any]]) -> None:
    """The applied files' rows in cdc_state.files."""
    if not file_rows:
        return
    if _is_duckdb(session):
        session.con.execute(_files_insert(file_rows))
    else:
        session.load(state.FILES, pa.Table.from_pylist(file_rows, schema=_FILES_SCHEMA), "append")


def _files_insert(file_rows: list[dict[str, Any]]) -> str:
    names = _FILES_SCHEMA.names
    values = ", ".join(f"({', '.join(literal(r[n]) for n in names)})" for r in file_rows)
    return f"INSERT INTO {state.FILES} ({', '.join(names)}) VALUES {values}"


def _claims_deletes(target: str, refs: list[FileRef]) -> list[str]:
    ids = [r.identity for r in refs]
    return [
        f"DELETE FROM {CLAIMS} WHERE target = {literal(target)}"
        f" AND identity IN ({state.in_list(ids[start : start + 500])})"
        for start in range(0, len(ids), 500)
    ]


_FILES_SCHEMA = pa.schema(
    [
        ("target", pa.string()),
        ("identity", pa.string()),
        ("object_key", pa.string()),
        ("kind", pa.string()),
        ("min_seq", pa.string()),
        ("max_seq", pa.string()),
        ("rows", pa.int64()),
        ("inserts", pa.int64()),
        ("updates", pa.int64()),
        ("deletes", pa.int64()),
        ("duplicates", pa.int64()),
        ("first_commit_ts", pa.timestamp("us")),
        ("last_commit_ts", pa.timestamp("us")),
        ("load_id", pa.string()),
        ("load_part", pa.int32()),
        ("load_parts", pa.int32()),
        ("applied_at", pa.timestamp("us")),
        ("run_id", pa.string()),
    ]
)


class _Staged:
    """Arrow tables made visible to SQL: on DuckDB, a registered view of the Arrow table (read in
    place: a statement that reads the rows once reads it as fast as a copy); elsewhere loaded into
    staging tables."""

    def __init__(self, session: Any, views: bool):
        self.session, self.views = session, views
        self.names: list[str] = []

    def put(self, what: str, data: pa.Table) -> str:
        name = f"_cdc_{what}_{uuid.uuid4().hex[:12]}"
        if self.views:
            self.session.con.register(name, data)
            self.names.append(name)
            return name
        name = f"{state.SCHEMA}.{name}"
        self.session.load(name, data, "replace")
        self.names.append(name)
        return quote_table(name)

    def drop(self) -> None:
        for name in self.names:
            if self.views:
                self.session.con.unregister(name)
            else:
                self.session.execute(f"DROP TABLE IF EXISTS {quote_table(name)}")


def _key_match(left: str, right: str, keys: list[str]) -> str:
    return " AND ".join(f"{left}.{quote_identifier(k)} = {right}.{quote_identifier(k)}" for k in keys)


def _replay_source(
    lake: LakeStorage,
    session: Any,
    table: CdcTable,
    plan: _Plan,
    staged: _Staged,
    source: str,
    batch_min: str,
    applied_max: str,
) -> str | None:
    """SQL of the already-applied changes later than this batch's oldest, for the keys the batch's
    out-of-order rows touch: reduced together with the batch, a key deleted later stays deleted."""
    keys = [k.lower() for k in table.primary_key]
    columns = ["_op", "_change_seq", "_commit_ts", *plan.types]
    select = ", ".join(f"h.{quote_identifier(c)}" for c in columns)
    touched = (
        f"EXISTS (SELECT 1 FROM {source} b WHERE b._change_seq <= {literal(applied_max)}"
        f" AND {_key_match('b', 'h', keys)})"
    )
    if table.history and _exists(session, table.history_table):
        return (
            f"SELECT {select} FROM {quote_table(table.history_table)} h"
            f" WHERE h._change_seq > {literal(batch_min)} AND {touched}"
        )
    # No history: read the applied files again (a rare path: a released or late file).
    later = state.rows(
        session,
        f"SELECT identity, object_key, kind FROM {state.FILES} WHERE target = {literal(table.target)}"
        f" AND max_seq > {literal(batch_min)} ORDER BY object_key",
    )
    tables = []
    for row in later:
        ref = FileRef(row["object_key"], row["identity"].rsplit("@", 1)[1])
        f = _change_file_of(ref)
        try:
            p = _read_file(lake, f, table.primary_key)
        except (_Rejected, OSError) as exc:
            raise RuntimeError(
                f"{table.target}: cannot re-read applied file {ref.key} to replay it: {exc}"
            ) from exc
        data = pa.table(
            {
                n: coerce_array(p.data.column(n), t, n)
                for n, t in plan.types.items()
                if n in p.data.column_names
            }
        )
        tables.append(_batch_table(p, data, plan.types, None, history=False))
    if not tables:
        return None
    name = staged.put("replay", pa.concat_tables(tables))
    return f"SELECT {select} FROM {name} h WHERE h._change_seq > {literal(batch_min)} AND {touched}"


def _change_file_of(ref: FileRef) -> ChangeFile:
    key = parse_dms_key(ref.key)
    return ChangeFile(ref, key, parse_file_name(key.filename), datetime.now(UTC))


def _last_per_key(changes: pa.Table, keys: list[str]) -> pa.Table:
    """The change with the highest seq of each key (in Arrow: no database work for the others);
    of two changes of a key at one seq, the later row.

    A stable sort by key (and by seq, unless the batch is in seq order already, as a table's files
    are) and the last row of each key's run. No hash aggregation: pyarrow's group_by imports Acero
    and, with it, pandas (half a second).
    """
    n = changes.num_rows
    if n < 2:
        return changes
    seq = changes.column("_change_seq").combine_chunks()
    columns = {k: changes.column(k).combine_chunks() for k in keys}
    sort_keys = [(k, "ascending") for k in keys]
    if not pc.all(pc.less_equal(seq.slice(0, n - 1), seq.slice(1))).as_py():
        columns["_change_seq"] = seq
        sort_keys.append(("_change_seq", "ascending"))
    order = pc.sort_indices(pa.table(columns), sort_keys=sort_keys)
    boundary = None  # row i of the sorted rows is the last of its key: its key differs from row i+1's
    for k in keys:
        column = columns[k].take(order)
        differs = pc.not_equal(column.slice(0, n - 1), column.slice(1))
        boundary = differs if boundary is None else pc.or_(boundary, differs)
    last = pa.concat_arrays([pc.filter(order.slice(0, n - 1), boundary), order.slice(n - 1)])
    # In row order: a gather in order reads the table's columns front to back (faster).
    return changes.take(last.take(pc.array_sort_indices(last)))


def _merge_current(
    session: Any,
    table: CdcTable,
    plan: _Plan,
    source: str,
    replay_sql: str | None,
    now: datetime,
    reduced: bool = False,
) -> dict[str, int]:
    keys = [k.lower() for k in table.primary_key]
    columns = ["_op", "_change_seq", "_commit_ts", *plan.types]
    select = ", ".join(quote_identifier(c) for c in columns)
    changes = f"SELECT {select} FROM {source}"
    if replay_sql is not None:
        changes = f"{changes} UNION ALL {replay_sql}"
    partition = ", ".join(quote_identifier(k) for k in keys)
    if reduced and replay_sql is None:  # one change a key already
        last = changes
    else:
        last = (
            f"SELECT * FROM ({changes}) c"
            f" QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY _change_seq DESC) = 1"
        )
    loaded = literal(now)
    data = [c for c in plan.types if c not in keys]
    sets = ", ".join(f"{quote_identifier(c)} = s.{quote_identifier(c)}" for c in data)
    sets = (
        sets + ", " if sets else ""
    ) + f"_cdc_seq = s._change_seq, _cdc_commit_ts = s._commit_ts, _cdc_loaded_at = {loaded}"
    insert_columns = ", ".join([*(quote_identifier(c) for c in plan.types), *CURRENT_CONTROL])
    insert_values = ", ".join(
        [*(f"s.{quote_identifier(c)}" for c in plan.types), "s._change_seq", "s._commit_ts", loaded]
    )
    # The guard: an older change never overwrites (or deletes) a newer one, whatever the order of files.
    statement = (
        f"MERGE INTO {quote_table(table.current_table)} AS t USING ({last}) AS s"
        f" ON {_key_match('t', 's', keys)}"
        " WHEN MATCHED AND s._change_seq > t._cdc_seq AND s._op = 'D' THEN DELETE"
        f" WHEN MATCHED AND s._change_seq > t._cdc_seq THEN UPDATE SET {sets}"
        f" WHEN NOT MATCHED AND s._op <> 'D' THEN INSERT ({insert_columns}) VALUES ({insert_values})"
    )
    if getattr(session, "dialect", None) != "duckdb":
        session.execute(statement)
        return {}
    actions = session.query(f"{statement} RETURNING merge_action").column("merge_action")
    names = {"INSERT": "inserted", "UPDATE": "updated", "DELETE": "deleted"}
    counts = {"inserted": 0, "updated": 0, "deleted": 0}
    for entry in pc.value_counts(actions).to_pylist():
        counts[names[entry["values"]]] += entry["counts"]
    return counts


def _append_history(
    session: Any,
    table: CdcTable,
    batches: list[tuple[_Parsed, pa.Table]],
    staged: _Staged,
    changes: pa.Table,
    views: bool,
    now: datetime,
) -> int:
    history = quote_table(table.history_table)
    if views:
        source = staged.put("history", changes)
        session.execute(f"INSERT INTO {history} BY NAME SELECT *, {literal(now)} AS _loaded_at FROM {source}")
        return changes.num_rows
    # Per file, with the ledger's job id: on BigQuery a second load of the same file is refused.
    total = 0
    for p, batch in batches:
        if batch.num_rows:
            stamped = batch.append_column("_loaded_at", pa.array([now] * batch.num_rows, _TS_UTC))
            total += session.load(
                table.history_table, stamped, "append", job_id=FileLedger.job_id(table.target, p.file.ref)
            )
    return total


def _complete_loads(
    session: Any,
    table: CdcTable,
    applied: list[_Parsed],
    batch_min: str | None,
    result: ApplyResult,
    reads: dict[str, Any] | None = None,
) -> None:
    """Mark full loads all of whose parts are applied; delete current rows older than the latest
    complete snapshot (their keys are not in it: every key in it is at the snapshot's seq or newer).

    `reads` (state.apply_reads of this transaction) holds the latest complete snapshot: a batch
    without load files and not older than it has nothing to do here, and asks nothing.
    """
    load_ids = sorted({p.load_id for p in applied if p.load_id})
    if not load_ids and reads is not None:
        known = reads["snapshot"]
        if known is None or batch_min is None or batch_min >= known:
            result.loads_completed = []
            return
    target = literal(table.target)
    fresh = []
    for load_id in load_ids:
        parts = _fetch(
            session,
            f"SELECT load_part, load_parts FROM {state.FILES} WHERE target = {target}"
            f" AND load_id = {literal(load_id)}",
        )
        total = max((r["load_parts"] or 0 for r in parts), default=0)
        have = {r["load_part"] for r in parts}
        done = _fetch(
            session,
            f"SELECT count(*) AS n FROM {state.LOADS} WHERE target = {target}"
            f" AND load_id = {literal(load_id)}",
        )[0]["n"]
        if total and have >= set(range(1, total + 1)) and not done:
            session.execute(
                f"INSERT INTO {state.LOADS} VALUES ({target}, {literal(load_id)}, {total},"
                f" {literal(state.now_utc())})"
            )
            fresh.append(load_id)
    result.loads_completed = fresh
    snapshot = _fetch(session, f"SELECT max(load_id) AS s FROM {state.LOADS} WHERE target = {target}")[0]["s"]
    # Also after a late file (a change older than the snapshot can only re-create a key the snapshot lacks).
    if snapshot is not None and (fresh or (batch_min is not None and batch_min < snapshot)):
        session.execute(
            f"DELETE FROM {quote_table(table.current_table)} WHERE _cdc_seq < {literal(snapshot)}"
        )


# --- operator commands -------------------------------------------------------------------------
def accept_schema(warehouse: Warehouse, table: CdcTable) -> list[str]:
    """Change the tables to the blocking file's schema where the data can be cast, and lift the block.

    A retyped column is altered to the file's type (an error names the column if the values do
    not cast, and the block stays); a dropped column is kept, null from now on. Returns what was done.
    """
    state.ensure_state(warehouse)
    done: list[str] = []
    with warehouse.transaction() as session:
        block = state.active_block(session, table.target)
        if block is None:
            return done
        names = [table.current_table] + ([table.history_table] if table.history else [])
        now = literal(state.now_utc())
        for change in json.loads(block["changes"] or "[]"):
            column = change["column"]
            if change["change"] == "dropped":
                session.execute(
                    f"INSERT INTO {state.DROPPED} VALUES ({literal(table.target)}, {literal(column)}, {now})"
                )
                done.append(f"{column}: dropped at the source, kept (null from now on)")
                continue
            kind = _parse_arrow_type(change["new"])
            for name in names:
                if not _exists(session, name):
                    continue
                try:
                    session.execute(
                        f"ALTER TABLE {quote_table(name)} ALTER COLUMN {quote_identifier(column)}"
                        f" TYPE {sql_type(kind)}"
                    )
                except Exception as exc:
                    raise ValueError(
                        f"{table.target}: column {column!r} cannot change from {change['old']}"
                        f" to {change['new']}"
                        f" in {name}: {exc}"
                    ) from exc
            done.append(f"{column}: {change['old']} -> {change['new']}")
        session.execute(
            f"UPDATE {state.BLOCKS} SET lifted_at = {now} WHERE target = {literal(table.target)}"
            " AND lifted_at IS NULL"
        )
    return done


def _parse_arrow_type(text: str) -> pa.DataType:
    """An Arrow type from its str() (the forms a change file's columns take)."""
    import re

    simple = {
        "bool": pa.bool_(),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "uint8": pa.uint8(),
        "uint16": pa.uint16(),
        "uint32": pa.uint32(),
        "uint64": pa.uint64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "string": pa.string(),
        "large_string": pa.string(),
        "binary": pa.binary(),
        "large_binary": pa.binary(),
        "date32[day]": pa.date32(),
        "extension<arrow.json>": pa.string(),
    }
    if text in simple:
        return simple[text]
    if m := re.fullmatch(r"decimal(?:128|256)\((\d+), (\d+)\)", text):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"timestamp\[(\w+)(?:, tz=(.+))?\]", text):
        return pa.timestamp("us", tz=m.group(2))
    if m := re.fullmatch(r"time(?:32|64)\[(\w+)\]", text):
        return pa.time64("us")
    if m := re.fullmatch(r"duration\[(\w+)\]", text):
        return pa.duration("us")
    raise ValueError(f"cannot turn the file's column type {text!r} into a warehouse type")


release_quarantined = state.release_quarantined
quarantine_counts = state.quarantine_counts
table_stats = state.table_stats

__all__ = [
    "ApplyResult",
    "ChangeFile",
    "accept_schema",
    "apply_pending",
    "apply_tables",
    "list_change_files",
    "quarantine_counts",
    "release_quarantined",
    "table_stats",
]
