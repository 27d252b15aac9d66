"""DuckDBWarehouse against a real DuckDB file: loads, merges, queries, schemas, locking."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from resources.warehouse import DuckDBWarehouse, Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "wh" / "warehouse.duckdb"))


def _rows(warehouse: Warehouse, table: str, order_by: str) -> list[dict[str, Any]]:
    return warehouse.query(f"SELECT * FROM {table} ORDER BY {order_by}").to_pylist()


def _count(warehouse: Warehouse, table: str) -> int:
    return warehouse.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def _apply(
    state: dict[tuple, dict[str, Any]], changes: list[dict[str, Any]], keys: list[str], flag: str
) -> tuple[dict[tuple, dict[str, Any]], dict[str, int]]:
    """The expected result of a merge, by replaying the changes one by one on plain dicts."""
    final = dict(state)
    last: dict[tuple, dict[str, Any]] = {}
    for change in changes:
        key = tuple(change[k] for k in keys)
        last[key] = change
        if change[flag]:
            final.pop(key, None)
        else:
            final[key] = {c: v for c, v in change.items() if c != flag}
    counts = {"inserted": 0, "updated": 0, "deleted": 0}
    for key, change in last.items():
        if key in state:
            counts["deleted" if change[flag] else "updated"] += 1
        elif not change[flag]:
            counts["inserted"] += 1
    return final, counts


# --- load ------------------------------------------------------------------------
def test_load_append_and_replace_report_and_store_rows(warehouse: DuckDBWarehouse) -> None:
    assert not warehouse.table_exists("readings")

    assert warehouse.load("readings", pa.table({"id": [1, 2, 3], "temp": [20.5, 21.0, 19.5]})) == 3
    assert warehouse.table_exists("readings")
    # columns match by name, not position
    assert warehouse.load("readings", pa.table({"temp": [18.0, 17.5], "id": [4, 5]}), mode="append") == 2
    assert _count(warehouse, "readings") == 5
    assert _rows(warehouse, "readings", "id")[3:] == [{"id": 4, "temp": 18.0}, {"id": 5, "temp": 17.5}]

    assert warehouse.load("readings", pa.table({"id": [9], "temp": [1.0]}), mode="replace") == 1
    assert _rows(warehouse, "readings", "id") == [{"id": 9, "temp": 1.0}]

    assert (
        warehouse.load(
            "readings", pa.table({"id": pa.array([], pa.int64()), "temp": pa.array([], pa.float64())})
        )
        == 0
    )
    assert _count(warehouse, "readings") == 1


def test_load_replace_creates_missing_table_with_the_new_schema(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("t", pa.table({"a": [1]}))
    assert warehouse.load("t", pa.table({"b": ["x", "y"]}), mode="replace") == 2
    assert warehouse.query("SELECT * FROM t ORDER BY b").to_pylist() == [{"b": "x"}, {"b": "y"}]
    assert warehouse.load("brand_new", pa.table({"a": [1, 2]}), mode="replace") == 2
    assert _count(warehouse, "brand_new") == 2
    with pytest.raises(ValueError, match="upsert"):
        warehouse.load("t", pa.table({"a": [1]}), mode="upsert")  # type: ignore[arg-type]


# --- merge -----------------------------------------------------------------------
def test_merge_inserts_updates_and_deletes_row_by_row(warehouse: DuckDBWarehouse) -> None:
    initial = [{"id": i, "status": "new", "amount": 10.0 * i} for i in range(1, 7)]
    warehouse.load("cdc.orders", pa.Table.from_pylist(initial))
    changes = [
        {"id": 2, "status": "paid", "amount": 20.5, "_deleted": False},  # update
        {"id": 3, "status": "new", "amount": 30.0, "_deleted": True},  # delete
        {"id": 7, "status": "new", "amount": 70.0, "_deleted": False},  # insert
        {"id": 8, "status": "new", "amount": 80.0, "_deleted": True},  # delete of an unknown key: nothing
        {"id": 5, "status": "shipped", "amount": 55.0, "_deleted": False},  # update
    ]

    counts = warehouse.merge("cdc.orders", pa.Table.from_pylist(changes), ["id"], delete_column="_deleted")

    expected, expected_counts = _apply({(r["id"],): r for r in initial}, changes, ["id"], "_deleted")
    assert counts == expected_counts == {"inserted": 1, "updated": 2, "deleted": 1}
    assert _rows(warehouse, "cdc.orders", "id") == [expected[k] for k in sorted(expected)]
    # the delete flag is a control column, not stored
    assert warehouse.query("SELECT * FROM cdc.orders LIMIT 0").column_names == ["id", "status", "amount"]


def test_merge_random_batches_with_composite_keys_match_a_replay(warehouse: DuckDBWarehouse) -> None:
    rng = random.Random(20240611)
    keys = ["store_id", "order_id"]
    state: dict[tuple, dict[str, Any]] = {}
    for batch_no in range(5):
        changes = [
            {
                "store_id": rng.randint(1, 4),
                "order_id": rng.randint(1, 60),
                "total": rng.randint(0, 10_000) / 100,
                "note": f"batch {batch_no} change {i}",
                "op_delete": rng.random() < 0.25,
            }
            for i in range(300)  # 240 possible keys: plenty of repeats within a batch
        ]
        counts = warehouse.merge(
            "sales.orders", pa.Table.from_pylist(changes), keys, delete_column="op_delete"
        )

        state, expected_counts = _apply(state, changes, keys, "op_delete")
        assert counts == expected_counts, f"batch {batch_no}"
        actual = _rows(warehouse, "sales.orders", "store_id, order_id")
        assert actual == [state[k] for k in sorted(state)], f"batch {batch_no}"


def test_merge_same_key_twice_in_a_batch_keeps_the_last(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("devices", pa.table({"device": ["a", "b", "c"], "state": ["on", "on", "on"]}))
    changes = pa.table(
        {
            "device": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "state": ["off", "idle", "gone", "back", "x", "gone", "new", "gone"],
            "deleted": [False, False, True, False, False, True, False, True],
        }
    )

    counts = warehouse.merge("devices", changes, ["device"], delete_column="deleted")

    # a: updated twice -> last value; b: deleted then re-sent -> kept with last value;
    # c: updated then deleted -> gone; d: inserted then deleted in the same batch -> never there
    assert _rows(warehouse, "devices", "device") == [
        {"device": "a", "state": "idle"},
        {"device": "b", "state": "back"},
    ]
    assert counts == {"inserted": 0, "updated": 2, "deleted": 1}


def test_merge_twice_with_the_same_batch_is_idempotent(warehouse: DuckDBWarehouse) -> None:
    batch = pa.table({"id": [1, 2, 3, 2], "v": ["a", "b", "c", "b2"], "del": [False, False, True, False]})

    first = warehouse.merge("t", batch, ["id"], delete_column="del")
    after_first = _rows(warehouse, "t", "id")
    second = warehouse.merge("t", batch, ["id"], delete_column="del")

    assert first == {"inserted": 2, "updated": 0, "deleted": 0}
    assert second == {"inserted": 0, "updated": 2, "deleted": 0}
    assert _rows(warehouse, "t", "id") == after_first == [{"id": 1, "v": "a"}, {"id": 2, "v": "b2"}]
    assert warehouse.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM t").to_pylist() == [
        {"n": 2, "d": 2}
    ]


def test_merge_without_delete_column_upserts_and_creates_target(warehouse: DuckDBWarehouse) -> None:
    assert not warehouse.table_exists("mart.customers")
    first = warehouse.merge("mart.customers", pa.table({"id": [1, 2], "name": ["Ann", "Bo"]}), ["id"])
    second = warehouse.merge("mart.customers", pa.table({"id": [2, 3], "name": ["Bob", "Cy"]}), ["id"])

    assert first == {"inserted": 2, "updated": 0, "deleted": 0}
    assert second == {"inserted": 1, "updated": 1, "deleted": 0}
    assert _rows(warehouse, "mart.customers", "id") == [
        {"id": 1, "name": "Ann"},
        {"id": 2, "name": "Bob"},
        {"id": 3, "name": "Cy"},
    ]


def test_merge_refuses_null_keys_and_leaves_the_table_alone(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("t", pa.table({"id": [1], "v": ["a"]}))
    with pytest.raises(ValueError, match=r"'id'.*null"):
        warehouse.merge("t", pa.table({"id": [None, 2], "v": ["x", "y"]}), ["id"])
    assert _rows(warehouse, "t", "id") == [{"id": 1, "v": "a"}]


# --- query, execute, schemas ------------------------------------------------------
def test_query_returns_arrow_with_engine_types(warehouse: DuckDBWarehouse) -> None:
    # naive timestamps (DuckDB TIMESTAMP, BigQuery DATETIME): truncation can't depend on the session zone
    at = datetime(2024, 6, 1, 12, 30)
    warehouse.load("events", pa.table({"id": [1, 2], "ts": pa.array([at, at], pa.timestamp("us"))}))

    result = warehouse.query(
        "SELECT id, date_trunc('hour', ts) AS hour, CAST(id AS VARCHAR) AS label FROM events ORDER BY id"
    )

    assert isinstance(result, pa.Table)
    assert result.schema.field("id").type == pa.int64()
    assert pa.types.is_timestamp(result.schema.field("hour").type)
    assert result.schema.field("label").type in (pa.string(), pa.large_string())
    assert result.column("label").to_pylist() == ["1", "2"]
    assert result.column("hour").to_pylist() == [datetime(2024, 6, 1, 12)] * 2


def test_execute_runs_statements_and_their_effects_persist(warehouse: DuckDBWarehouse) -> None:
    warehouse.execute(
        "CREATE SCHEMA ops; CREATE TABLE ops.log (n INTEGER); INSERT INTO ops.log VALUES (1), (2)"
    )
    assert warehouse.table_exists("ops.log")
    # a fresh instance opens its own connection to the same file
    again = DuckDBWarehouse(path=warehouse.path)
    assert again.query("SELECT sum(n) AS s FROM ops.log").to_pylist() == [{"s": 3}]


def test_qualified_names_create_schemas_and_stay_separate(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("cdc.orders", pa.table({"id": [1, 2]}))
    warehouse.load("orders", pa.table({"id": [10]}))
    warehouse.merge("history.orders", pa.table({"id": [5], "gone": [False]}), ["id"], delete_column="gone")

    schemas = warehouse.query("SELECT schema_name FROM information_schema.schemata").column("schema_name")
    assert {"cdc", "history", "main"} <= set(schemas.to_pylist())
    assert _rows(warehouse, "cdc.orders", "id") == [{"id": 1}, {"id": 2}]
    assert _rows(warehouse, "main.orders", "id") == [{"id": 10}]
    assert _rows(warehouse, "history.orders", "id") == [{"id": 5}]
    assert warehouse.table_exists("cdc.orders") and warehouse.table_exists("main.orders")
    assert not warehouse.table_exists("cdc.missing") and not warehouse.table_exists("nope.orders")


def test_bad_table_names_are_refused_before_sql_runs(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(ValueError, match=re.escape("'x; DROP TABLE y'")):
        warehouse.load("x; DROP TABLE y", pa.table({"a": [1]}))
    with pytest.raises(ValueError, match="'a-b'"):
        warehouse.merge("cdc.a-b", pa.table({"a": [1]}), ["a"])
    assert not Path(warehouse.database_path()).exists()


# --- where the file lives, and sharing it between processes -------------------------
def test_default_path_comes_from_settings_at_use_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = DuckDBWarehouse()  # built before the variable is set, as a code location would
    target = tmp_path / "elsewhere" / "deep" / "wh.duckdb"
    monkeypatch.setenv("PLATFORM_WAREHOUSE_PATH", str(target))

    warehouse.load("t", pa.table({"a": [1, 2]}))

    assert target.exists()
    with duckdb.connect(str(target)) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding DuckDB's write lock on path, as a concurrent Dagster run would."""
    code = (
        "import duckdb, sys, time\n"
        f"con = duckdb.connect({str(path)!r})\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "con.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_waits_for_another_process_to_release_the_file(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("t", pa.table({"a": [1]}))
    proc = _hold_lock(warehouse.database_path(), 1.5)
    try:
        started = time.monotonic()
        assert warehouse.load("t", pa.table({"a": [2]})) == 1
        waited = time.monotonic() - started
    finally:
        proc.wait(timeout=30)
    assert waited > 0.5
    assert _count(warehouse, "t") == 2


def test_gives_up_on_a_lock_after_lock_timeout(warehouse: DuckDBWarehouse) -> None:
    warehouse.load("t", pa.table({"a": [1]}))
    impatient = DuckDBWarehouse(path=warehouse.path, lock_timeout=0.3)
    proc = _hold_lock(warehouse.database_path(), 3)
    try:
        started = time.monotonic()
        with pytest.raises(duckdb.IOException, match="lock"):
            impatient.query("SELECT * FROM t")
        assert time.monotonic() - started < 2.5
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_asset_typed_with_the_interface_gets_the_duckdb_warehouse(warehouse: DuckDBWarehouse) -> None:
    @dg.asset
    def current_orders(warehouse: Warehouse) -> dg.MaterializeResult:
        changes = pa.table({"id": [1, 2, 1], "v": ["a", "b", "c"]})
        return dg.MaterializeResult(metadata=warehouse.merge("cdc.current_orders", changes, ["id"]))

    result = dg.materialize([current_orders], resources={"warehouse": warehouse})

    assert result.success
    metadata = result.asset_materializations_for_node("current_orders")[0].metadata
    assert {k: v.value for k, v in metadata.items()} == {"inserted": 2, "updated": 0, "deleted": 0}
    assert _rows(warehouse, "cdc.current_orders", "id") == [{"id": 1, "v": "c"}, {"id": 2, "v": "b"}]


def test_bad_column_names_in_merged_data_are_refused(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(ValueError, match=re.escape("""'v" INTEGER, "x'""")):
        warehouse.merge("t", pa.table({"id": [1], 'v" INTEGER, "x': [2]}), ["id"])
    assert not warehouse.table_exists("t")
