"""Sources nobody here wrote, on real PostgreSQL and MariaDB: late commits, deletes under append,
in-place updates without a change column, odd column types and registry mistakes.

Each scenario ends either with the raw tier and the warehouse equal to the source by count and
checksum, or with a blocking failure that names the cause while nothing is published downstream.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from assets.migration.factory import build_source_defs, table_key
from assets.migration.loads import dataset_name
from assets.migration.preflight import plan_table
from assets.migration.publish import warehouse_table
from assets.migration.reconcile import lake_checksums, source_checksums
from assets.migration.registry import SourceSystem
from resources.lake import LakePartition
from resources.rowhash import duckdb_session, lake_row_hash
from resources.sql_source import SqlSource
from resources.warehouse import DuckDBWarehouse
from resources.warehouse.sql import quote_table

BASE = datetime(2026, 3, 1, 9, 0, 0)
DAY = date(2026, 3, 1)


@pytest.fixture(params=["pg_url", "mariadb_url"])
def url(request) -> str:
    return request.getfixturevalue(request.param)


def _run(db_url: str, sql: str, rows: list[dict] | None = None) -> None:
    with SqlSource(url=db_url).engine().begin() as conn:
        conn.execute(sa.text(sql), rows or {})


def _system(db_url: str, table: dict) -> SourceSystem:
    return SourceSystem.model_validate(
        {
            "name": "outside",
            "description": "an outside schema",
            "url_env": "OUTSIDE_DB_URL",
            "local_url": db_url,
            "tables": [{"description": "an outside table", **table}],
        }
    )


class Pipeline:
    """The registry entry's raw and cleansed assets, run with dg.materialize on a local lake."""

    def __init__(self, db_url: str, table: dict, lake, tmp_path):
        self.source = _system(db_url, table)
        self.spec = self.source.tables[0]
        self.defs = build_source_defs(self.source)
        self.lake = lake
        self.warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
        self.db = SqlSource(url=db_url)
        self.raw = table_key(self.source, self.spec, "raw")
        self.cleansed = table_key(self.source, self.spec, "cleansed")
        self.dataset = dataset_name(self.source.name, self.spec.name)

    def materialize(self, *keys: dg.AssetKey, partition: str | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [a for a in self.defs.assets if isinstance(a, dg.AssetsDefinition)],
            selection=list(keys or (self.raw, self.cleansed)),
            resources={**self.defs.resources, "lake": self.lake, "warehouse": self.warehouse},
            partition_key=partition,
            raise_on_error=False,
        )

    def plan(self):
        return plan_table(self.db, self.spec)

    def partitions(self, partition: str | None) -> list:
        return [LakePartition.from_key(partition) if partition else None]

    def source_figures(self, partition: str | None = None) -> tuple[int, int]:
        parts = self.partitions(partition)
        return next(iter(source_checksums(self.db, self.spec, self.plan(), parts).values()))

    def lake_figures(self, partition: str | None = None) -> tuple[int, int]:
        parts = self.partitions(partition)
        return next(iter(lake_checksums(self.lake, self.dataset, self.plan(), parts).values()))

    def warehouse_figures(self) -> tuple[int, int]:
        """Count and checksum of the warehouse table, hashed like the lake (the cleansed tier
        changes nothing in these tables: no PII, no blanks, no null tokens)."""
        data = self.warehouse.query(
            f"SELECT * FROM {quote_table(warehouse_table('outside', self.spec.name))}"
        )
        plan = self.plan()
        con = duckdb_session()
        con.register("w", data.select(plan.names))  # durations arrive as DuckDB INTERVALs: hashed alike
        rows, checksum = con.execute(
            f"SELECT count(*), coalesce(sum({lake_row_hash(plan.columns)}), 0) FROM w"
        ).fetchone()
        return int(rows), int(checksum)

    def warehouse_rows(self) -> int:
        table = quote_table(warehouse_table("outside", self.spec.name))
        return int(self.warehouse.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py())

    def status(self) -> list[dict]:
        return self.warehouse.query(
            'SELECT stage, "partition", outcome, error FROM platform_status.load_status ORDER BY updated_at'
        ).to_pylist()


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures, "the run was expected to fail"
    return " ".join(f.step_failure_data.error.message for f in failures)


def _materialized(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> bool:
    return any(
        e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key == key
        for e in result.all_events
    )


# --- late commits -------------------------------------------------------------------------


def test_a_transaction_held_open_across_a_load_is_loaded_by_the_next(url, local_lake, tmp_path):
    _run(
        url, "CREATE TABLE events (event_id INT PRIMARY KEY, created_at TIMESTAMP(6) NULL, note VARCHAR(40))"
    )
    insert = "INSERT INTO events VALUES (:i, :t, :n)"
    _run(url, insert, [{"i": i, "t": BASE + timedelta(seconds=i), "n": f"e{i}"} for i in range(1, 101)])
    pipe = Pipeline(
        url,
        {"name": "events", "source_table": "events", "load_mode": "append", "watermark_column": "created_at"},
        local_lake,
        tmp_path,
    )
    held = SqlSource(url=url).engine().connect()
    try:
        tx = held.begin()  # an open transaction writes a row stamped before the next rows
        held.execute(sa.text(insert), {"i": 1000, "t": BASE + timedelta(seconds=150), "n": "late"})
        _run(url, insert, [{"i": i, "t": BASE + timedelta(seconds=i), "n": f"e{i}"} for i in range(101, 201)])
        first = pipe.materialize()
        assert first.success
        assert pipe.lake_figures()[0] == 200  # the open transaction's row is not visible yet
        tx.commit()
    finally:
        held.close()
    _run(url, insert, [{"i": 201, "t": BASE + timedelta(seconds=201), "n": "e201"}])

    second = pipe.materialize()
    assert second.success
    assert pipe.source_figures()[0] == 202
    assert pipe.lake_figures() == pipe.source_figures()
    assert pipe.warehouse_figures() == pipe.source_figures()


def test_a_late_row_in_an_earlier_partition_is_found_and_added_on_a_later_load(url, local_lake, tmp_path):
    _run(url, "CREATE TABLE txns (txn_id INT PRIMARY KEY, txn_date DATE, created_at TIMESTAMP(6) NULL)")
    insert = "INSERT INTO txns VALUES (:i, :d, :t)"
    day2 = DAY + timedelta(days=1)
    _run(url, insert, [{"i": i, "d": DAY, "t": BASE + timedelta(seconds=i)} for i in range(1, 51)])
    pipe = Pipeline(
        url,
        {
            "name": "txns",
            "source_table": "txns",
            "load_mode": "append",
            "primary_key": ["txn_id"],
            "watermark_column": "created_at",
            "watermark_lag": 0,  # no look-back: only the re-check can find the row
            "partition_column": "txn_date",
            "partition_grain": "day",
            "partition_start": "2026-02-01",
        },
        local_lake,
        tmp_path,
    )
    assert pipe.materialize(partition=DAY.isoformat()).success
    # A row of the first day commits after that day was loaded, with an old timestamp.
    _run(url, insert, [{"i": 999, "d": DAY, "t": BASE + timedelta(seconds=10.5)}])
    _run(url, insert, [{"i": i, "d": day2, "t": BASE + timedelta(days=1, seconds=i)} for i in range(51, 81)])

    later = pipe.materialize(pipe.raw, partition=day2.isoformat())
    assert later.success
    assert pipe.lake_figures(DAY.isoformat()) == pipe.source_figures(DAY.isoformat())
    assert pipe.lake_figures(DAY.isoformat())[0] == 51
    checks = {e.check_name: e for e in later.get_asset_check_evaluations()}
    assert checks["source_row_count_matches"].passed
    assert checks["source_row_count_matches"].metadata["repaired_rows"].value == {DAY.isoformat(): 1}
    # The repaired partition is reported as materialized, so its cleansed tier and warehouse follow.
    repaired = [e for e in later.get_asset_materialization_events() if e.partition == DAY.isoformat()]
    assert repaired and repaired[0].materialization.metadata["repaired_rows"].value == 1
    assert pipe.materialize(pipe.cleansed, partition=DAY.isoformat()).success
    assert pipe.warehouse_figures() == pipe.source_figures(DAY.isoformat())


# --- deletes under append -------------------------------------------------------------------


def test_deletes_under_append_block_the_partition_and_publish_nothing(url, local_lake, tmp_path):
    _run(url, "CREATE TABLE orders (order_id INT PRIMARY KEY, order_date DATE, created_at TIMESTAMP(6) NULL)")
    rows = [{"i": i, "d": DAY, "t": BASE + timedelta(seconds=i)} for i in range(1, 101)]
    _run(url, "INSERT INTO orders VALUES (:i, :d, :t)", rows)
    pipe = Pipeline(
        url,
        {
            "name": "orders",
            "source_table": "orders",
            "load_mode": "append",
            "primary_key": ["order_id"],
            "watermark_column": "created_at",
            "partition_column": "order_date",
            "partition_grain": "day",
            "partition_start": "2026-02-01",
        },
        local_lake,
        tmp_path,
    )
    assert pipe.materialize(partition=DAY.isoformat()).success
    assert pipe.warehouse_rows() == 100

    _run(url, "DELETE FROM orders WHERE order_id <= 30")
    failed = pipe.materialize(partition=DAY.isoformat())
    assert not failed.success
    message = _failure_message(failed)
    assert (
        "source 70 rows, lake 100 rows" in message
        and "30 rows in the lake are no longer in the source" in message
    )
    assert not _materialized(failed, pipe.cleansed)  # the blocking check stopped the cleansed step
    assert pipe.warehouse_rows() == 100  # nothing of the bad load was published

    # A later run of the cleansed tier alone is held back too, and says why.
    later = pipe.materialize(pipe.cleansed, partition=DAY.isoformat())
    assert not later.success
    assert "held back" in _failure_message(later) and "source 70 rows" in _failure_message(later)
    assert pipe.warehouse_rows() == 100
    outcomes = [(s["stage"], s["outcome"]) for s in pipe.status()]
    assert ("raw", "check_failed") in outcomes and ("cleansed", "blocked") in outcomes
    failed_raw = next(s for s in pipe.status() if s["outcome"] == "check_failed")
    assert (
        failed_raw["partition"] == DAY.isoformat() and "source 70 rows, lake 100 rows" in failed_raw["error"]
    )


# --- updates in place without a change column -------------------------------------------------


def test_in_place_updates_without_a_change_column_are_found_by_row_hash(url, local_lake, tmp_path):
    _run(url, "CREATE TABLE balances (account_id INT PRIMARY KEY, owner VARCHAR(20), balance NUMERIC(14,2))")
    rows = [{"i": i, "o": f"owner {i}", "b": Decimal(i * 100) / 7} for i in range(1, 501)]
    _run(url, "INSERT INTO balances VALUES (:i, :o, ROUND(:b, 2))", rows)
    pipe = Pipeline(
        url,
        {
            "name": "balances",
            "source_table": "balances",
            "load_mode": "upsert",
            "primary_key": ["account_id"],
        },
        local_lake,
        tmp_path,
    )
    assert pipe.spec.detection.value == "row_hash"
    assert pipe.materialize().success
    assert pipe.lake_figures() == pipe.source_figures()

    _run(url, "UPDATE balances SET balance = balance + 1 WHERE account_id % 50 = 0")  # 10 rows
    _run(url, "DELETE FROM balances WHERE account_id IN (7, 8, 9)")
    _run(url, "INSERT INTO balances VALUES (1001, 'new', 5.00)")
    second = pipe.materialize()
    assert second.success
    meta = next(
        e.materialization.metadata
        for e in second.get_asset_materialization_events()
        if e.asset_key == pipe.raw
    )
    assert (meta["updated"].value, meta["deleted"].value, meta["inserted"].value) == (10, 3, 1)
    assert pipe.source_figures()[0] == 498
    assert pipe.lake_figures() == pipe.source_figures()
    assert pipe.warehouse_figures() == pipe.source_figures()


# --- column types ------------------------------------------------------------------------------

PG_TYPES = """
CREATE TABLE odd (
    id BIGINT PRIMARY KEY, u UUID, n NUMERIC, tz TIMESTAMPTZ, j JSON, jb JSONB, ai INT[], at TEXT[],
    iv INTERVAL, b BYTEA, flag BIT(1), c CHAR(4), r REAL, d DOUBLE PRECISION, t TIME
)"""
PG_ROW = (
    "INSERT INTO odd VALUES (:id, CAST(:u AS uuid), CAST(:n AS numeric), CAST(:tz AS timestamptz),"
    " CAST(:j AS json), CAST(:j AS jsonb), CAST(:ai AS int[]), CAST(:at AS text[]), CAST(:iv AS interval),"
    " CAST(:b AS bytea), CAST(:flag AS bit(1)), :c, :r, :d, CAST(:t AS time))"
)
MARIADB_TYPES = """
CREATE TABLE odd (
    id BIGINT PRIMARY KEY, big BIGINT UNSIGNED, n DECIMAL(50, 12), tz TIMESTAMP(6) NULL, j JSON,
    flag BIT(1), tiny TINYINT(1), e ENUM('a', 'b'), b VARBINARY(16), dur TIME(6), y YEAR, r FLOAT, d DOUBLE
)"""
MARIADB_ROW = "INSERT INTO odd VALUES (:id, :big, :n, :tz, :j, :flag, :tiny, :e, :b, :dur, :y, :r, :d)"


def _odd_rows(dialect: str) -> list[dict]:
    rows = []
    for i in range(1, 41):
        if dialect == "postgresql":
            rows.append(
                {
                    "id": i,
                    "u": f"00000000-0000-4000-8000-{i:012x}",
                    "n": f"{i}12345678901234567890.123456789012{i}" if i % 7 else "NaN" if i == 14 else None,
                    "tz": f"2026-03-01 10:00:{i % 60:02d}.5+09",
                    "j": json.dumps({"i": i, "tags": ["x", "y"]}) if i % 5 else None,
                    "ai": f"{{1,NULL,{i}}}",
                    "at": '{"a b","c,d"}' if i % 3 else None,
                    "iv": f"{i} days 03:04:05.25" if i % 4 else "1 mon",
                    "b": bytes([0, i, 255]),
                    "flag": "1" if i % 2 else "0",
                    "c": "ab",
                    "r": 1.1 * i,
                    "d": 1e30 / i if i % 9 else 0.1 + 0.2,
                    "t": f"12:{i % 60:02d}:56.5",
                }
            )
        else:
            rows.append(
                {
                    "id": i,
                    "big": 18446744073709551615 - i,
                    "n": Decimal(f"{i}1234567890123456789.{i:012d}"),
                    "tz": datetime(2026, 3, 1, 10, 0, i % 60, 500000),
                    "j": json.dumps({"i": i}) if i % 5 else None,
                    "flag": i % 2,
                    "tiny": i % 3,
                    "e": "ab"[i % 2],
                    "b": bytes([0, i, 255]),
                    "dur": timedelta(hours=-i, microseconds=500) if i % 2 else timedelta(hours=800 + i % 30),
                    "y": 2000 + i,
                    "r": 1.1 * i,
                    "d": 1e20 / i,  # MySQL prints floats from 1e28 its own way (README)
                }
            )
    return rows


def test_every_odd_column_type_lands_typed_and_checks_out(url, local_lake, tmp_path):
    dialect = SqlSource(url=url).dialect_name
    _run(url, PG_TYPES if dialect == "postgresql" else MARIADB_TYPES)
    _run(url, PG_ROW if dialect == "postgresql" else MARIADB_ROW, _odd_rows(dialect))
    pipe = Pipeline(
        url,
        {
            "name": "odd",
            "source_table": "odd",
            "load_mode": "overwrite",
            "primary_key": ["id"],
            # The cleansed tier keeps values as they are, so the warehouse can equal the source.
            "string_rules": {"trim": False, "empty_to_null": False, "null_tokens": []},
        },
        local_lake,
        tmp_path,
    )
    result = pipe.materialize()
    assert result.success, _failure_message(result)
    schema = pipe.plan().schema
    if dialect == "postgresql":
        assert schema.field("u").type == pa.string() and schema.field("n").type == pa.string()
        assert schema.field("tz").type == pa.timestamp("us", tz="UTC")
        assert schema.field("ai").type == pa.list_(pa.int32()) and schema.field("iv").type == pa.duration(
            "us"
        )
        assert schema.field("b").type == pa.binary() and schema.field("flag").type == pa.bool_()
    else:
        # DECIMAL(50, 12) is wider than Arrow's decimal128: exact text.
        assert schema.field("big").type == pa.uint64() and schema.field("n").type == pa.string()
        assert (
            schema.field("tz").type == pa.timestamp("us", tz="UTC")
            and schema.field("flag").type == pa.bool_()
        )
        assert schema.field("dur").type == pa.duration("us") and schema.field("j").type == pa.string()
    assert pipe.lake_figures() == pipe.source_figures()
    assert pipe.lake_figures()[0] == 40
    assert pipe.warehouse_figures() == pipe.source_figures()
    # The zone survives: 10:00 at +09 is 01:00 UTC (PostgreSQL), and MariaDB's UTC instant is kept.
    lake_tz = local_lake.read_parquet("raw", "migration", pipe.dataset).column("tz")[0].as_py()
    assert lake_tz.utcoffset() == timedelta(0) and lake_tz.hour == (1 if dialect == "postgresql" else 10)


def test_a_type_without_mapping_is_refused_before_anything_is_written(pg_url, local_lake, tmp_path):
    _run(pg_url, "CREATE TABLE places (id INT PRIMARY KEY, spot POINT)")
    _run(pg_url, "INSERT INTO places VALUES (1, point(1, 2))")
    table = {"name": "places", "source_table": "places", "load_mode": "overwrite", "primary_key": ["id"]}
    pipe = Pipeline(pg_url, table, local_lake, tmp_path)
    failed = pipe.materialize(pipe.raw)
    message = _failure_message(failed)
    assert "'places'" in message and "'spot'" in message and "'point'" in message and "read_as" in message
    assert not local_lake.list_objects("raw/migration/")
    overridden = Pipeline(pg_url, {**table, "columns": {"spot": {"read_as": "string"}}}, local_lake, tmp_path)
    assert overridden.materialize(overridden.raw).success
    assert (
        local_lake.read_parquet("raw", "migration", overridden.dataset).column("spot")[0].as_py() == "(1,2)"
    )


def test_a_registry_naming_a_missing_column_fails_before_loading(url, local_lake, tmp_path):
    _run(url, "CREATE TABLE items (item_id INT PRIMARY KEY, name VARCHAR(20))")
    _run(url, "INSERT INTO items VALUES (1, 'one')")
    table = {"name": "items", "source_table": "items", "load_mode": "overwrite", "primary_key": ["item_no"]}
    pipe = Pipeline(url, table, local_lake, tmp_path)
    failed = pipe.materialize(pipe.raw)
    message = _failure_message(failed)
    assert "'items'" in message and "primary_key" in message and "item_no" in message
    assert "the migration registry" in message  # the file (here: a registry built in the test)
    assert not local_lake.list_objects("raw/migration/")
    assert [s["outcome"] for s in pipe.status()] == ["failed"]


def test_column_selection_reads_only_the_named_columns(url, local_lake, tmp_path):
    _run(url, "CREATE TABLE people (person_id INT PRIMARY KEY, name VARCHAR(20), secret VARCHAR(20))")
    _run(url, "INSERT INTO people VALUES (1, 'a', 'x'), (2, 'b', 'y')")
    table = {
        "name": "people",
        "source_table": "people",
        "load_mode": "overwrite",
        "primary_key": ["person_id"],
        "exclude_columns": ["secret"],
    }
    pipe = Pipeline(url, table, local_lake, tmp_path)
    assert pipe.materialize().success
    assert local_lake.read_parquet("raw", "migration", pipe.dataset).column_names == ["person_id", "name"]
    assert pipe.lake_figures() == pipe.source_figures()
