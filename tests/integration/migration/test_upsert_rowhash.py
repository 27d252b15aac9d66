"""Upsert without a change column (row hash) and out of core, on real PostgreSQL and MariaDB.

After every load the lake must equal the source: full sorted contents read through the same
plan, the plan's exact Arrow schema, and the checksum (row count and sum of row hashes)
computed by the source in its SQL and by DuckDB over the lake's rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from assets.migration import DOMAIN
from assets.migration.diff import diff, lake_hashes, source_hashes
from assets.migration.extract import conform, read_table
from assets.migration.preflight import plan_table
from assets.migration.registry import TableSpec
from assets.migration.upsert import load_upsert
from resources.lake import LakePartition, LocalLake, Tier
from resources.lake.datasets import LoadState
from resources.rowhash import duckdb_session, lake_row_hash, source_row_hash
from resources.sql_source import SqlSource

DAY1, DAY2, DAY3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
T0 = datetime(2026, 3, 1, 9, 0, 0)


@pytest.fixture(params=["pg_url", "mariadb_url"])
def db(request) -> SqlSource:
    source = SqlSource(url=request.getfixturevalue(request.param))
    yield source
    source.engine().dispose()


def _pg(db: SqlSource) -> bool:
    return db.dialect_name == "postgresql"


def _exec(db: SqlSource, *statements: str, insert: str | None = None, rows: list[dict] | None = None) -> None:
    with db.engine().begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
        if insert and rows:
            conn.execute(sa.text(insert), rows)


def _source(db: SqlSource, plan) -> pa.Table:
    batches = [conform(b, plan.schema) for b in read_table(db, plan)]
    return pa.Table.from_batches(batches, schema=plan.schema)


def _lake(lake, dataset: str) -> pa.Table:
    return lake.read_parquet(Tier.RAW, DOMAIN, dataset)


def _sorted(table: pa.Table, key: list[str]) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in key]).to_pylist()


def _source_checksum(db: SqlSource, plan, where: str = "") -> tuple[int, int]:
    sql = f"SELECT count(*), sum({source_row_hash(plan.dialect, plan.columns)}) FROM {plan.table} {where}"
    with db.engine().connect() as conn:
        count, total = conn.execute(sa.text(sql)).one()
    return int(count), int(total or 0)


def _lake_checksum(table: pa.Table, plan) -> tuple[int, int]:
    con = duckdb_session()
    try:
        con.register("rows_", table)
        count, total = con.sql(f"SELECT count(*), sum({lake_row_hash(plan.columns)}) FROM rows_").fetchall()[
            0
        ]
    finally:
        con.close()
    return int(count), int(total or 0)


def _assert_lake_equals_source(db: SqlSource, lake, dataset: str, plan, key: list[str]) -> None:
    lake_rows = _lake(lake, dataset)
    assert lake_rows.schema.equals(plan.schema), f"{lake_rows.schema}\n!=\n{plan.schema}"
    assert _sorted(lake_rows, key) == _sorted(_source(db, plan), key)
    assert _lake_checksum(lake_rows, plan) == _source_checksum(db, plan)


def _scratch_leftovers(lake) -> list[str]:
    return sorted(p.name for p in Path(lake.scratch_dir()).iterdir())


# --- account balances: no change column ------------------------------------------------------

ACCOUNTS_PG = """CREATE TABLE accounts (
    account_id BIGINT PRIMARY KEY, owner VARCHAR(40), balance NUMERIC(14,2), rate DOUBLE PRECISION,
    opened DATE, last_seen TIMESTAMP, seen_utc TIMESTAMPTZ, hold INTERVAL, active BOOLEAN)"""
ACCOUNTS_MARIADB = """CREATE TABLE accounts (
    account_id BIGINT PRIMARY KEY, owner VARCHAR(40), balance DECIMAL(14,2), rate DOUBLE,
    opened DATE, last_seen DATETIME(6), seen_utc TIMESTAMP(6) NULL, hold TIME(6), active BOOLEAN)"""
INSERT_ACCOUNT = "INSERT INTO accounts VALUES (:i, :o, :b, :r, :d, :ls, :su, :h, :a)"


def _accounts(db: SqlSource, ids: range) -> list[dict]:
    zoned = _pg(db)
    return [
        {
            "i": i,
            "o": f"고객 {i}" if i % 7 else None,
            "b": Decimal(i * 1013 % 100_000) / 100,
            "r": i / 7,
            "d": date(2020, 1, 1) + timedelta(days=i),
            "ls": T0 + timedelta(seconds=i, microseconds=i),
            "su": (T0 + timedelta(minutes=i)).replace(tzinfo=UTC if zoned else None),
            "h": timedelta(hours=i % 30, microseconds=i),
            "a": i % 3 == 0,
        }
        for i in ids
    ]


def _accounts_table(db: SqlSource, n: int = 300) -> TableSpec:
    _exec(
        db,
        ACCOUNTS_PG if _pg(db) else ACCOUNTS_MARIADB,
        insert=INSERT_ACCOUNT,
        rows=_accounts(db, range(1, n + 1)),
    )
    return TableSpec(
        name="accounts",
        description="account balances, changed in place without a timestamp",
        source_table="accounts",
        load_mode="upsert",
        primary_key=["account_id"],
        fetch_size=64,
        parallel_reads=2,
    )


def test_row_hash_upsert_finds_in_place_updates_deletes_and_inserts(db, lake):  # local and S3 lakes
    spec = _accounts_table(db)
    assert spec.detection == "row_hash"  # no watermark column: the registry's default
    plan = plan_table(db, spec)
    dataset = "t__accounts"

    first = load_upsert(lake, db, spec, plan, dataset, None, key_chunk=7)
    assert (first.rows, first.inserted, first.reloaded) == ({"all": 300}, 300, ["all"])
    _assert_lake_equals_source(db, lake, dataset, plan, ["account_id"])
    data_key = "raw/migration/t__accounts/data.parquet"
    before = lake.get_bytes(data_key)

    unchanged = load_upsert(lake, db, spec, plan, dataset, None, key_chunk=7)
    assert (unchanged.inserted, unchanged.updated, unchanged.deleted) == (0, 0, 0)
    assert unchanged.rewritten == unchanged.reloaded == []
    assert lake.get_bytes(data_key) == before  # an unchanged table is not rewritten

    _exec(
        db,
        "UPDATE accounts SET balance = balance + 10.01 WHERE account_id IN (3, 50, 51, 150, 299)",
        "UPDATE accounts SET owner = NULL WHERE account_id = 8",
        "UPDATE accounts SET active = NOT active WHERE account_id = 200",
        "UPDATE accounts SET opened = opened + 1 WHERE account_id = 201"
        if _pg(db)
        else "UPDATE accounts SET opened = DATE_ADD(opened, INTERVAL 1 DAY) WHERE account_id = 201",
        "UPDATE accounts SET hold = NULL WHERE account_id = 202",
        "DELETE FROM accounts WHERE account_id IN (1, 100, 101, 250, 300)",
        insert=INSERT_ACCOUNT,
        rows=_accounts(db, range(1000, 1004)),
    )
    third = load_upsert(lake, db, spec, plan, dataset, None, key_chunk=3)
    assert (third.inserted, third.updated, third.deleted) == (4, 9, 5)
    assert third.rows == {"all": 299} and third.rewritten == ["all"]
    _assert_lake_equals_source(db, lake, dataset, plan, ["account_id"])
    assert lake.parquet_keys(Tier.RAW, DOMAIN, dataset) == [data_key]
    assert _scratch_leftovers(lake) == []


def test_a_lake_file_of_other_types_is_rewritten_to_the_plans_schema(db, local_lake):
    spec = _accounts_table(db, 30)
    plan = plan_table(db, spec)
    # The same values under other types (an earlier load's): every row hashes the same.
    older = pa.schema(
        [
            f.with_type(pa.int32() if f.name == "account_id" else pa.decimal128(20, 2))
            if f.name in ("account_id", "balance")
            else f
            for f in plan.schema
        ]
    )
    local_lake.write_parquet(
        _source(db, plan).cast(older), Tier.RAW, DOMAIN, "t__accounts", filename="data.parquet"
    )
    result = load_upsert(local_lake, db, spec, plan, "t__accounts", None)
    assert (result.inserted, result.updated, result.deleted) == (0, 0, 0)
    assert result.rewritten == ["all"]
    _assert_lake_equals_source(db, local_lake, "t__accounts", plan, ["account_id"])  # plan's schema


def test_a_composite_text_key_with_quotes_and_percent_signs_is_read_again_by_key(db, local_lake):
    odd = ["50%-off", "O'Brien", "back\\slash", "%%", "plain"]
    _exec(
        db,
        "CREATE TABLE balances (branch VARCHAR(10), account_no VARCHAR(20), balance NUMERIC(12,2),"
        " PRIMARY KEY (branch, account_no))",
        insert="INSERT INTO balances VALUES (:b, :a, :m)",
        rows=[{"b": b, "a": a, "m": Decimal(i)} for i, (b, a) in enumerate((b, a) for b in odd for a in odd)],
    )
    spec = TableSpec(
        name="balances",
        description="b",
        source_table="balances",
        load_mode="upsert",
        primary_key=["branch", "account_no"],
    )
    plan = plan_table(db, spec)
    load_upsert(local_lake, db, spec, plan, "t__balances", None)
    with db.engine().begin() as conn:
        conn.execute(sa.text("UPDATE balances SET balance = balance + 1 WHERE account_no <> 'plain'"))
        conn.execute(
            sa.text("DELETE FROM balances WHERE branch = :b AND account_no = :a"), {"b": "plain", "a": "%%"}
        )
        conn.execute(sa.text("INSERT INTO balances VALUES (:b, :a, 7)"), {"b": "new%", "a": "x'y"})
    result = load_upsert(local_lake, db, spec, plan, "t__balances", None, key_chunk=4, reload_ratio=1.0)
    assert (result.inserted, result.updated, result.deleted) == (
        1,
        19,
        1,
    )  # (plain, %%) updated, then deleted
    _assert_lake_equals_source(db, local_lake, "t__balances", plan, ["branch", "account_no"])


def test_many_changes_reload_the_table_whole(db, local_lake):
    spec = _accounts_table(db, 100)
    plan = plan_table(db, spec)
    load_upsert(local_lake, db, spec, plan, "t__accounts", None)
    _exec(db, "UPDATE accounts SET balance = balance + 1 WHERE account_id <= 60")
    result = load_upsert(local_lake, db, spec, plan, "t__accounts", None, reload_ratio=0.5)
    assert result.reloaded == ["all"] and result.updated == 60
    _assert_lake_equals_source(db, local_lake, "t__accounts", plan, ["account_id"])


# --- keyless diff ------------------------------------------------------------------------------


def test_keyless_diff_compares_the_multiset_of_row_hashes(db, local_lake):
    _exec(
        db,
        "CREATE TABLE ledger (entry_day DATE, account VARCHAR(10), amount NUMERIC(10,2), note VARCHAR(20))",
        insert="INSERT INTO ledger VALUES (:d, :a, :m, :n)",
        rows=[{"d": DAY1, "a": f"A{i % 4}", "m": Decimal(i), "n": "x"} for i in range(1, 21)]
        + [{"d": DAY2, "a": "DUP", "m": Decimal("5.00"), "n": "same"}] * 3,  # three identical rows
    )
    spec = TableSpec(name="ledger", description="l", source_table="ledger", load_mode="overwrite")
    plan = plan_table(db, spec)
    local_lake.write_parquet(_source(db, plan), Tier.RAW, DOMAIN, "t__ledger", filename="data.parquet")

    def compare():
        return diff(
            source_hashes(db, plan, []),
            lake_hashes(local_lake, DOMAIN, "t__ledger", plan, [], None),
            [],
            spill_dir=local_lake.scratch_dir(),
        )

    same = compare()
    assert same.in_sync and same.source_rows == same.lake_rows == 23
    assert same.source_checksum == same.lake_checksum

    one_duplicate = (
        "DELETE FROM ledger WHERE ctid IN (SELECT ctid FROM ledger WHERE note = 'same' LIMIT 1)"
        if _pg(db)
        else "DELETE FROM ledger WHERE note = 'same' LIMIT 1"
    )
    _exec(
        db,
        one_duplicate,
        "UPDATE ledger SET amount = 99.99, note = 'edited' WHERE account = 'A1' AND amount = 5",
        "INSERT INTO ledger VALUES ('2026-03-03', 'NEW', 1.50, 'new')",
    )
    found = compare()
    assert found.changed_count == 0 and found.changed.column_names == ["_row_hash"]
    assert (found.missing_count, found.extra_count) == (2, 2)

    def hashes(where: str) -> list[int]:
        batches = source_hashes(db, plan, [], [sa.text(where)])
        return sorted(pa.Table.from_batches(list(batches)).column("_row_hash").to_pylist())

    assert sorted(found.missing.column("_row_hash").to_pylist()) == hashes("note IN ('edited', 'new')")
    # The lake's extra rows: one of the three identical rows (two remain on both sides), and the
    # edited row's old version.
    dup = hashes("note = 'same'")
    assert len(dup) == 2 and dup[0] in found.extra.column("_row_hash").to_pylist()
    assert found.source_rows == 23 and found.lake_rows == 23
    assert found.source_checksum != found.lake_checksum


def test_diff_by_key_names_missing_extra_and_changed_keys(db, local_lake):
    spec = _accounts_table(db, 50)
    plan = plan_table(db, spec)
    load_upsert(local_lake, db, spec, plan, "t__accounts", None)
    _exec(
        db,
        "UPDATE accounts SET rate = rate * 2 WHERE account_id IN (10, 20)",
        "DELETE FROM accounts WHERE account_id = 30",
        insert=INSERT_ACCOUNT,
        rows=_accounts(db, range(77, 78)),
    )
    found = diff(
        source_hashes(db, plan, ["account_id"], parallel=2),
        lake_hashes(local_lake, DOMAIN, "t__accounts", plan, ["account_id"], None),
        ["account_id"],
        memory_limit="64MB",
        spill_dir=local_lake.scratch_dir(),
    )
    assert found.missing.to_pylist() == [{"account_id": 77}]
    assert found.extra.to_pylist() == [{"account_id": 30}]
    assert found.changed.to_pylist() == [{"account_id": 10}, {"account_id": 20}]
    assert found.missing.schema.field("account_id").type == pa.int64()
    assert (found.source_rows, found.lake_rows) == (50, 50)


# --- partitioned upsert: a row moves partitions ------------------------------------------------


def _txns_table(db: SqlSource, detection: str) -> TableSpec:
    _exec(
        db,
        "CREATE TABLE txns (txn_id BIGINT PRIMARY KEY, txn_date DATE NOT NULL, amount NUMERIC(12,2),"
        " memo VARCHAR(20), updated_at TIMESTAMP NULL)",
        insert="INSERT INTO txns VALUES (:i, :d, :a, :m, :u)",
        rows=[
            {"i": i, "d": [DAY1, DAY2, DAY3][i % 3], "a": Decimal(i) / 4, "m": f"m{i}", "u": T0}
            for i in range(1, 61)
        ],
    )
    return TableSpec(
        name="txns",
        description="t",
        source_table="txns",
        load_mode="upsert",
        primary_key=["txn_id"],
        watermark_column="updated_at" if detection == "watermark" else None,
        watermark_lag=timedelta(0),
        change_detection=detection,
        partition_column="txn_date",
        partition_grain="day",
        partition_start=date(2026, 1, 1),
        fetch_size=16,
    )


DAYS = [LakePartition(DAY1), LakePartition(DAY2), LakePartition(DAY3)]


def _partition_rows(lake, dataset: str, partition: LakePartition) -> list[int]:
    table = lake.read_parquet(Tier.RAW, DOMAIN, dataset, partition)
    return sorted(table.column("txn_id").to_pylist())


@pytest.mark.parametrize("detection", ["row_hash", "watermark"])
def test_partitioned_upsert_moves_a_row_between_partitions(db, local_lake, detection):
    spec = _txns_table(db, detection)
    plan = plan_table(db, spec)
    dataset = "t__txns"
    first = load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    assert first.rows == {"2026-03-01": 20, "2026-03-02": 20, "2026-03-03": 20}
    assert 3 in _partition_rows(local_lake, dataset, LakePartition(DAY1))  # 3 % 3 == 0: day 1

    t1 = f"{T0 + timedelta(hours=1):%Y-%m-%d %H:%M:%S}"
    _exec(
        db,
        f"UPDATE txns SET txn_date = '2026-03-03', updated_at = '{t1}' WHERE txn_id = 3",  # day 1 -> day 3
        f"UPDATE txns SET amount = 1000, updated_at = '{t1}' WHERE txn_id = 4",  # day 2, in place
        "DELETE FROM txns WHERE txn_id = 7",  # day 2
        insert="INSERT INTO txns VALUES (:i, :d, :a, :m, :u)",
        rows=[{"i": 500, "d": DAY1, "a": Decimal("0.01"), "m": "new", "u": t1}],
    )
    second = load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    assert second.rows == {"2026-03-01": 20, "2026-03-02": 19, "2026-03-03": 21}
    # day 1: 3 out, 500 in; day 2: 4 updated, 7 deleted; day 3: 3 in.
    assert (second.inserted, second.updated, second.deleted) == (2, 1, 2)
    assert second.rewritten == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert 3 not in _partition_rows(local_lake, dataset, LakePartition(DAY1))
    assert 3 in _partition_rows(local_lake, dataset, LakePartition(DAY3))
    _assert_lake_equals_source(db, local_lake, dataset, plan, ["txn_id"])
    for day in DAYS:  # every partition holds exactly the source's rows of its day
        with db.engine().connect() as conn:
            ids = conn.execute(
                sa.text("SELECT txn_id FROM txns WHERE txn_date = :d ORDER BY txn_id"), {"d": day.day}
            ).scalars()
            assert _partition_rows(local_lake, dataset, day) == list(ids)
    if detection == "watermark":
        assert second.watermark == T0 + timedelta(hours=1)
        assert LoadState(local_lake, DOMAIN, dataset).watermark(DAYS[0]) == T0 + timedelta(hours=1)


# --- a crash mid-rewrite -----------------------------------------------------------------------


@pytest.mark.parametrize("detection", ["row_hash", "watermark"])
def test_a_crash_after_the_scratch_file_leaves_the_lake_as_it_was_and_a_rerun_converges(
    db, local_lake, detection, monkeypatch
):
    spec = _txns_table(db, detection)
    plan = plan_table(db, spec)
    dataset = "t__txns"
    load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    t1 = f"{T0 + timedelta(hours=2):%Y-%m-%d %H:%M:%S}"
    _exec(
        db,
        f"UPDATE txns SET amount = amount + 1, updated_at = '{t1}' WHERE txn_id IN (1, 2, 3)",  # every day
        f"UPDATE txns SET txn_date = '2026-03-01', updated_at = '{t1}' WHERE txn_id = 5",  # day 3 -> day 1
        "DELETE FROM txns WHERE txn_id IN (6, 10)",
    )
    root = Path(local_lake.root)
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".scratch" not in p.parts}
    assert any(p.name == "_state.json" for p in files) == (detection == "watermark")
    original = LocalLake.put_file
    written: list[pa.Table] = []

    def crash_on_second_partition(self, key: str, path: Path) -> None:
        written.append(pq.read_table(path))  # the scratch file is complete ...
        if len(written) == 2:
            raise RuntimeError("killed while moving the file into place")  # ... but never moved
        original(self, key, path)

    monkeypatch.setattr(LocalLake, "put_file", crash_on_second_partition)
    with pytest.raises(RuntimeError, match="killed"):
        load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    monkeypatch.setattr(LocalLake, "put_file", original)
    assert written[1].schema.equals(plan.schema)

    now = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".scratch" not in p.parts}
    day1 = root / "raw/migration/t__txns" / DAYS[0].path / "data.parquet"
    day2 = root / "raw/migration/t__txns" / DAYS[1].path / "data.parquet"
    assert now[day1] != files[day1]  # the first partition was merged and moved into place
    assert now[day2] == files[day2]  # the second one is exactly as before the run
    if detection == "watermark":  # saved after day 1's file only
        state = LoadState(local_lake, DOMAIN, dataset)
        assert state.watermark(DAYS[0]) == T0 + timedelta(hours=2)
        assert state.watermark(DAYS[1]) == T0
    assert _scratch_leftovers(local_lake) == []

    rerun = load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    assert rerun.rows == {"2026-03-01": 20, "2026-03-02": 19, "2026-03-03": 19}
    _assert_lake_equals_source(db, local_lake, dataset, plan, ["txn_id"])
    again = load_upsert(local_lake, db, spec, plan, dataset, DAYS)
    assert (again.inserted, again.deleted) == (0, 0) and again.rows == rerun.rows
    if detection == "row_hash":
        assert again.updated == 0 and again.rewritten == []


def test_a_failure_while_fetching_changed_rows_changes_nothing(db, local_lake, monkeypatch):
    import assets.migration.upsert as upsert

    spec = _accounts_table(db, 40)
    plan = plan_table(db, spec)
    load_upsert(local_lake, db, spec, plan, "t__accounts", None)
    data = Path(local_lake.root) / "raw/migration/t__accounts/data.parquet"
    before = data.read_bytes()
    _exec(db, "UPDATE accounts SET balance = 0 WHERE account_id IN (5, 6, 7, 8, 9, 10)")

    real_fetch = upsert._Run.fetch

    def failing_fetch(self, keys, where):
        yield from list(real_fetch(self, keys.slice(0, 2), where))
        raise ConnectionError("source went away")

    monkeypatch.setattr(upsert._Run, "fetch", failing_fetch)
    with pytest.raises(ConnectionError, match="went away"):
        load_upsert(local_lake, db, spec, plan, "t__accounts", None, key_chunk=2)
    assert data.read_bytes() == before
    assert _scratch_leftovers(local_lake) == []
    monkeypatch.undo()
    result = load_upsert(local_lake, db, spec, plan, "t__accounts", None, key_chunk=2)
    assert result.updated == 6
    _assert_lake_equals_source(db, local_lake, "t__accounts", plan, ["account_id"])
