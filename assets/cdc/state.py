"""The CDC loader's own state in the warehouse (schema cdc_state), and the reads made of it.

    cdc_state.files            every applied change file: kind, seq range, counts, commit times, load part
    cdc_state.quarantine       files refused (cause, reason); released_at set when an operator releases one
    cdc_state.blocks           a table stopped on an incompatible schema; lifted_at set by accept_schema
    cdc_state.loads            full loads (LOAD sets) all of whose parts are applied
    cdc_state.dropped_columns  columns accepted as dropped at the source: files may lack them

The generic ledger (platform_ledger.applied_files) says *whether* a file was
applied; these tables say what it held, so a re-written change can be
recognised by its seq and a table's status read without scanning its data.
Timestamps of these tables are UTC without a zone, as the ledger's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from assets.cdc.mapping import CdcTable
    from resources.warehouse import Warehouse

SCHEMA = "cdc_state"
FILES = f"{SCHEMA}.files"
QUARANTINE = f"{SCHEMA}.quarantine"
BLOCKS = f"{SCHEMA}.blocks"
LOADS = f"{SCHEMA}.loads"
DROPPED = f"{SCHEMA}.dropped_columns"

CAUSES = ("bad_name", "corrupt", "bad_op", "missing_key", "bad_value", "bad_column")

_DDL = {
    FILES: "target VARCHAR, identity VARCHAR, object_key VARCHAR, kind VARCHAR, min_seq VARCHAR,"
    " max_seq VARCHAR, rows BIGINT, inserts BIGINT, updates BIGINT, deletes BIGINT, duplicates BIGINT,"
    " first_commit_ts TIMESTAMP, last_commit_ts TIMESTAMP, load_id VARCHAR, load_part INTEGER,"
    " load_parts INTEGER, applied_at TIMESTAMP, run_id VARCHAR",
    QUARANTINE: "target VARCHAR, identity VARCHAR, object_key VARCHAR, cause VARCHAR, reason VARCHAR,"
    " quarantined_at TIMESTAMP, released_at TIMESTAMP, run_id VARCHAR",
    BLOCKS: 'target VARCHAR, "check" VARCHAR, reason VARCHAR, object_key VARCHAR, identity VARCHAR,'
    " changes VARCHAR, since TIMESTAMP, lifted_at TIMESTAMP",
    LOADS: "target VARCHAR, load_id VARCHAR, parts INTEGER, completed_at TIMESTAMP",
    DROPPED: "target VARCHAR, column_name VARCHAR, accepted_at TIMESTAMP",
}


def now_utc() -> datetime:
    """Now, UTC, without a zone (the convention of the platform's state tables)."""
    return datetime.now(UTC).replace(tzinfo=None)


def literal(value: Any) -> str:
    """A DuckDB-dialect SQL literal for a string, number, datetime or None."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat(sep=' ')}'"
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    return "'" + str(value).replace("'", "''") + "'"


def in_list(values: list[str]) -> str:
    return ", ".join(literal(v) for v in values)


def create_state(db: Any) -> None:
    """Create the state tables if missing (db: a warehouse or a transaction session)."""
    db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for table, columns in _DDL.items():
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")


_READY: set[str] = set()


def ensure_state(
    warehouse: Warehouse, begin: Callable[[], AbstractContextManager[Any]] | None = None
) -> None:
    """create_state (and the ledger's tables) in a transaction of its own, once per warehouse and process.

    `begin`: a transaction factory of warehouse.transactions() to use (its connection) instead of
    warehouse.transaction() (a connection of its own).
    """
    key = f"{type(warehouse).__name__}:{getattr(warehouse, 'path', None) or id(warehouse)}"
    if key in _READY:
        return
    # Two writers may race to create the schema.
    from resources.ledger import FileLedger, _retry_conflicts

    def create() -> None:
        with (begin or warehouse.transaction)() as db:
            create_state(db)
            FileLedger(warehouse)._create(db)  # the apply writes the ledger's rows in its transaction

    _retry_conflicts(create)
    _READY.add(key)


def rows(db: Any, sql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = db.query(sql).to_pylist()
    return result


# --- reads used by the apply engine --------------------------------------------------
def active_block(db: Any, target: str) -> dict[str, Any] | None:
    found = rows(
        db,
        f"SELECT * FROM {BLOCKS} WHERE target = {literal(target)} AND lifted_at IS NULL"
        " ORDER BY since LIMIT 1",
    )
    return found[0] if found else None


def held_identities(db: Any, target: str, identities: list[str] | None) -> set[str]:
    """Identities with a quarantine entry not released (of those given; None: all of the target's)."""
    if identities is None:
        return {
            r["identity"]
            for r in rows(
                db,
                f"SELECT DISTINCT identity FROM {QUARANTINE} WHERE target = {literal(target)}"
                " AND released_at IS NULL",
            )
        }
    held: set[str] = set()
    for start in range(0, len(identities), 500):
        chunk = identities[start : start + 500]
        held |= {
            r["identity"]
            for r in rows(
                db,
                f"SELECT identity FROM {QUARANTINE} WHERE target = {literal(target)}"
                f" AND released_at IS NULL AND identity IN ({in_list(chunk)})",
            )
        }
    return held


def released_keys(db: Any, target: str) -> list[str]:
    """Object keys released from quarantine (to list their day folders again)."""
    return [
        r["object_key"]
        for r in rows(
            db,
            f"SELECT DISTINCT object_key FROM {QUARANTINE} WHERE target = {literal(target)}"
            " AND released_at IS NOT NULL",
        )
    ]


def last_applied_key(db: Any, target: str) -> str | None:
    # Keys hold YYYY/MM/DD after the table's prefix, so the largest key is in the latest day.
    found = rows(db, f"SELECT max(object_key) AS k FROM {FILES} WHERE target = {literal(target)}")
    return found[0]["k"] if found else None


def apply_reads(db: Any, target: str) -> dict[str, Any]:
    """What an apply reads first, in one DuckDB query: the active block's reason, the last applied
    key, released keys, held identities, columns accepted as dropped, the tables that exist, the
    highest applied seq, the latest complete snapshot and whether the target holds claims.

    One statement instead of nine (on DuckDB each costs milliseconds whatever it reads), a row
    per read (a list): as scalar subqueries of one SELECT they are cross-joined, and DuckDB's
    planner takes tens of milliseconds over nine. `db` is a DuckDB session (it has `con`).
    """
    from resources.ledger import CLAIMS

    t = literal(target)
    found = dict(
        db.con.execute(
            f"SELECT 'block', list(reason ORDER BY since)[1:1] FROM {BLOCKS}"
            f" WHERE target = {t} AND lifted_at IS NULL"
            f" UNION ALL SELECT 'newest', [max(object_key)] FROM {FILES} WHERE target = {t}"
            f" UNION ALL SELECT 'applied_max', [max(max_seq)] FROM {FILES} WHERE target = {t}"
            f" UNION ALL SELECT 'released', list(DISTINCT object_key) FROM {QUARANTINE}"
            f" WHERE target = {t} AND released_at IS NOT NULL"
            f" UNION ALL SELECT 'held', list(DISTINCT identity) FROM {QUARANTINE}"
            f" WHERE target = {t} AND released_at IS NULL"
            f" UNION ALL SELECT 'dropped', list(column_name) FROM {DROPPED} WHERE target = {t}"
            " UNION ALL SELECT 'tables', list(schema_name || '.' || table_name) FROM duckdb_tables()"
            " WHERE NOT temporary"
            f" UNION ALL SELECT 'snapshot', [max(load_id)] FROM {LOADS} WHERE target = {t}"
            f" UNION ALL SELECT 'claims', list(identity)[1:1] FROM {CLAIMS} WHERE target = {t}"
        ).fetchall()
    )
    one = ("block", "newest", "applied_max", "snapshot")
    reads: dict[str, Any] = {key: (found[key] or [None])[0] for key in one}
    reads.update({key: found[key] or [] for key in ("released", "held", "dropped", "tables")})
    reads["claims"] = bool(found["claims"])
    return reads


def dropped_columns(db: Any, target: str) -> set[str]:
    return {
        r["column_name"]
        for r in rows(db, f"SELECT column_name FROM {DROPPED} WHERE target = {literal(target)}")
    }


# --- operator and dashboard functions ------------------------------------------------
def release_quarantined(
    warehouse: Warehouse, table: CdcTable | None = None, key: str | None = None
) -> list[str]:
    """Mark quarantined files released; the next apply takes them (out of order). Returns their keys."""
    ensure_state(warehouse)
    where = "released_at IS NULL"
    if table is not None:
        where += f" AND target = {literal(table.target)}"
    if key is not None:
        where += f" AND object_key = {literal(key)}"
    with warehouse.transaction() as db:
        keys = sorted(
            {r["object_key"] for r in rows(db, f"SELECT object_key FROM {QUARANTINE} WHERE {where}")}
        )
        if keys:
            db.execute(f"UPDATE {QUARANTINE} SET released_at = {literal(now_utc())} WHERE {where}")
    return keys


def quarantine_counts(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Files held in quarantine now, per target and cause: [{target, cause, files}]."""
    ensure_state(warehouse)
    return rows(
        warehouse,
        f"SELECT target, cause, count(DISTINCT identity) AS files FROM {QUARANTINE}"
        " WHERE released_at IS NULL GROUP BY target, cause ORDER BY target, cause",
    )


def quarantined(warehouse: Warehouse, table: CdcTable | None = None) -> list[dict[str, Any]]:
    """The quarantine entries not released (oldest first)."""
    ensure_state(warehouse)
    where = "released_at IS NULL" + (f" AND target = {literal(table.target)}" if table is not None else "")
    return rows(warehouse, f"SELECT * FROM {QUARANTINE} WHERE {where} ORDER BY quarantined_at, object_key")


def table_stats(warehouse: Warehouse, table: CdcTable) -> dict[str, Any]:
    """For a dashboard: last commit and apply times, changes applied in the last hour and day
    (by commit time, counted per file), files in quarantine, and the block if any."""
    ensure_state(warehouse)
    target = literal(table.target)
    now = now_utc()
    hour, day = literal(now - timedelta(hours=1)), literal(now - timedelta(days=1))
    at = "coalesce(last_commit_ts, applied_at)"
    stats = rows(
        warehouse,
        f"SELECT max(last_commit_ts) AS last_commit_ts, max(applied_at) AS last_applied_at,"
        f" coalesce(sum(CASE WHEN {at} >= {hour} THEN inserts + updates + deletes END), 0) AS rows_last_hour,"
        f" coalesce(sum(CASE WHEN {at} >= {day} THEN inserts + updates + deletes END), 0) AS rows_last_day,"
        f" count(*) AS files_applied"
        f" FROM {FILES} WHERE target = {target}",
    )[0]
    held = rows(
        warehouse,
        f"SELECT count(DISTINCT identity) AS n FROM {QUARANTINE} WHERE target = {target}"
        " AND released_at IS NULL",
    )[0]["n"]
    block = active_block(warehouse, table.target)
    return {
        "target": table.target,
        **stats,
        "quarantined": held,
        "blocked": block["reason"] if block else None,
    }
