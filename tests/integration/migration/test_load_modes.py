"""Each load mode against real PostgreSQL and MariaDB: the lake compared with the source row by row."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from assets.migration import DOMAIN
from assets.migration.loads import load_raw
from assets.migration.registry import TableSpec
from resources.lake import LakePartition, Tier
from resources.sql_source import SqlSource

DAY1, DAY2, DAY3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


@pytest.fixture(params=["pg_url", "mariadb_url"])
def db(request) -> SqlSource:
    return SqlSource(url=request.getfixturevalue(request.param))


def _exec(db: SqlSource, *statements: str, rows: list[dict] | None = None, insert: str | None = None) -> None:
    with db.engine().begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
        if insert and rows:
            conn.execute(sa.text(insert), rows)


def _source_rows(db: SqlSource, table: str, key: str) -> list[dict]:
    with db.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {key}"))]


def _lake_rows(lake, dataset: str, key: str) -> list[dict]:
    rows = [
        {k: _naive_utc(v) for k, v in r.items()}
        for r in lake.read_parquet(Tier.RAW, DOMAIN, dataset).to_pylist()
    ]
    return sorted(rows, key=lambda r: r[key])


def _naive_utc(value):
    """MariaDB TIMESTAMP lands zoned (UTC); the source session (UTC) reads it naive."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def test_overwrite_replaces_the_table(db, lake):
    _exec(
        db,
        "CREATE TABLE merchants (merchant_id INT PRIMARY KEY, name VARCHAR(50), fee NUMERIC(5,2))",
        insert="INSERT INTO merchants VALUES (:i, :n, :f)",
        rows=[{"i": i, "n": f"상점 {i}", "f": Decimal(i) / 10} for i in range(1, 301)],
    )
    spec = TableSpec(
        name="merchants",
        description="m",
        source_table="merchants",
        load_mode="overwrite",
        primary_key=["merchant_id"],
        parallel_reads=3,
        fetch_size=50,
    )
    first = load_raw(lake, db, spec, "t__merchants", None)
    assert first.total_rows == 300
    assert _lake_rows(lake, "t__merchants", "merchant_id") == _source_rows(db, "merchants", "merchant_id")

    _exec(
        db,
        "DELETE FROM merchants WHERE merchant_id <= 100",
        "UPDATE merchants SET name = 'changed' WHERE merchant_id = 150",
        "INSERT INTO merchants VALUES (999, NULL, NULL)",
    )
    second = load_raw(lake, db, spec, "t__merchants", None)
    assert second.total_rows == 201
    assert _lake_rows(lake, "t__merchants", "merchant_id") == _source_rows(db, "merchants", "merchant_id")
    assert len(lake.parquet_keys(Tier.RAW, DOMAIN, "t__merchants")) == 1  # replaced, not added


def _txn_rows(start_id: int, day: date, n: int) -> list[dict]:
    return [
        {
            "i": start_id + k,
            "d": day,
            "ts": datetime.combine(day, datetime.min.time()) + timedelta(minutes=k),
            "a": Decimal(f"{k}.25"),
        }
        for k in range(n)
    ]


def test_append_adds_only_rows_past_the_watermark(db, lake):
    _exec(
        db,
        "CREATE TABLE txns (txn_id BIGINT PRIMARY KEY, txn_date DATE, txn_at TIMESTAMP, amount NUMERIC(12,2))",
        insert="INSERT INTO txns VALUES (:i, :d, :ts, :a)",
        rows=_txn_rows(1, DAY1, 50) + _txn_rows(51, DAY2, 70),
    )
    spec = TableSpec(
        name="txns",
        description="t",
        source_table="txns",
        load_mode="append",
        primary_key=["txn_id"],
        watermark_column="txn_id",
        partition_column="txn_date",
        partition_grain="day",
        partition_start=date(2026, 1, 1),
        parallel_reads=2,
    )
    days = [LakePartition(DAY1), LakePartition(DAY2), LakePartition(DAY3)]  # one backfill run, three days
    first = load_raw(lake, db, spec, "t__txns", days)
    assert first.rows == {"2026-03-01": 50, "2026-03-02": 70}

    _exec(
        db,
        insert="INSERT INTO txns VALUES (:i, :d, :ts, :a)",
        rows=_txn_rows(121, DAY2, 5) + _txn_rows(126, DAY3, 9),
    )
    second = load_raw(lake, db, spec, "t__txns", days)
    assert second.rows == {"2026-03-02": 5, "2026-03-03": 9}
    again = load_raw(lake, db, spec, "t__txns", days)
    assert again.total_rows == 0  # a re-run is a no-op
    assert _lake_rows(lake, "t__txns", "txn_id") == _source_rows(db, "txns", "txn_id")
    assert lake.list_partitions(Tier.RAW, DOMAIN, "t__txns") == days


def test_append_crash_before_state_is_safe_to_rerun(db, lake):
    _exec(
        db,
        "CREATE TABLE txns (txn_id BIGINT PRIMARY KEY, txn_date DATE, txn_at TIMESTAMP, amount NUMERIC(12,2))",
        insert="INSERT INTO txns VALUES (:i, :d, :ts, :a)",
        rows=_txn_rows(1, DAY1, 20),
    )
    spec = TableSpec(
        name="txns",
        description="t",
        source_table="txns",
        load_mode="append",
        watermark_column="txn_id",
        partition_column="txn_date",
        partition_grain="day",
        partition_start=date(2026, 1, 1),
    )
    load_raw(lake, db, spec, "t__txns", [LakePartition(DAY1)])
    lake.delete("raw/migration/t__txns/_state.json")  # as if the run died after writing its files
    _exec(db, insert="INSERT INTO txns VALUES (:i, :d, :ts, :a)", rows=_txn_rows(21, DAY1, 3))
    load_raw(lake, db, spec, "t__txns", [LakePartition(DAY1)])
    assert _lake_rows(lake, "t__txns", "txn_id") == _source_rows(db, "txns", "txn_id")


def test_upsert_merges_updates_inserts_and_deletes(db, lake):
    t0 = datetime(2026, 3, 1, 9, 0, 0)
    _exec(
        db,
        "CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, grade VARCHAR(10), updated_at TIMESTAMP)",
        insert="INSERT INTO customers VALUES (:i, :g, :u)",
        rows=[{"i": i, "g": "BASIC", "u": t0} for i in range(1, 201)],
    )
    spec = TableSpec(
        name="customers",
        description="c",
        source_table="customers",
        load_mode="upsert",
        primary_key=["customer_id"],
        watermark_column="updated_at",
        parallel_reads=2,
    )
    first = load_raw(lake, db, spec, "t__customers", None)
    assert (first.inserted, first.updated, first.deleted) == (200, 0, 0)

    t1 = t0 + timedelta(days=1)
    _exec(
        db,
        f"UPDATE customers SET grade = 'VIP', updated_at = '{t1:%Y-%m-%d %H:%M:%S}' WHERE customer_id <= 30",
        "DELETE FROM customers WHERE customer_id > 190",
        insert="INSERT INTO customers VALUES (:i, :g, :u)",
        rows=[{"i": i, "g": "NEW", "u": t1} for i in range(1001, 1016)],
    )
    second = load_raw(lake, db, spec, "t__customers", None)
    assert (second.inserted, second.updated, second.deleted) == (15, 30, 10)
    assert _lake_rows(lake, "t__customers", "customer_id") == _source_rows(db, "customers", "customer_id")

    third = load_raw(lake, db, spec, "t__customers", None)
    assert (third.inserted, third.updated, third.deleted) == (0, 0, 0)
    keys = [r["customer_id"] for r in _lake_rows(lake, "t__customers", "customer_id")]
    assert len(keys) == len(set(keys)) == 205


def test_retention_removes_expired_partitions_from_raw_and_cleansed(db, lake):
    from assets.migration.loads import apply_retention

    today = datetime.now().date()
    old, recent = today - timedelta(days=10), today - timedelta(days=1)
    _exec(
        db,
        "CREATE TABLE txns (txn_id BIGINT PRIMARY KEY, txn_date DATE, txn_at TIMESTAMP, amount NUMERIC(12,2))",
        insert="INSERT INTO txns VALUES (:i, :d, :ts, :a)",
        rows=_txn_rows(1, old, 4) + _txn_rows(5, recent, 6),
    )
    spec = TableSpec(
        name="txns",
        description="t",
        source_table="txns",
        load_mode="overwrite",
        retention_days=5,
        partition_column="txn_date",
        partition_grain="day",
        partition_start=date(2026, 1, 1),
    )
    result = load_raw(lake, db, spec, "t__txns", [LakePartition(old), LakePartition(recent)])
    assert result.rows == {old.isoformat(): 4, recent.isoformat(): 6}
    # The load applied the retention: the expired day is gone from the raw tier.
    assert lake.list_partitions(Tier.RAW, DOMAIN, "t__txns") == [LakePartition(recent)]

    lake.write_parquet(
        pa.table({"x": [1]}), Tier.PROCESSED, DOMAIN, "t__txns", LakePartition(old), "data.parquet"
    )
    lake.write_parquet(
        pa.table({"x": [1]}), Tier.PROCESSED, DOMAIN, "t__txns", LakePartition(recent), "data.parquet"
    )
    removed = apply_retention(lake, spec, "t__txns")
    assert removed == [f"processed/migration/t__txns/{LakePartition(old).path}/data.parquet"]
    assert lake.list_partitions(Tier.PROCESSED, DOMAIN, "t__txns") == [LakePartition(recent)]
