"""The CDC apply engine against a DuckDB warehouse file and the lake in both modes (local, S3 on moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from dms_files import (
    T0,
    Change,
    cdc_table,
    put_raw,
    seq,
    write_cdc,
    write_load,
    write_real_dms_cdc,
    write_real_dms_load,
)

from assets.cdc import apply as apply_module
from assets.cdc.apply import (
    accept_schema,
    apply_pending,
    apply_tables,
    list_change_files,
    quarantine_counts,
    release_quarantined,
    table_stats,
)
from assets.cdc.mapping import CdcTable
from resources.lake import LakeStorage
from resources.ledger import APPLIED
from resources.warehouse.duckdb import DuckDBWarehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))


def current(wh: DuckDBWarehouse, table: CdcTable, columns: str = "id, name, qty") -> list[dict[str, Any]]:
    return wh.query(f"SELECT {columns} FROM {table.current_table} ORDER BY id").to_pylist()


def history(wh: DuckDBWarehouse, table: CdcTable) -> list[tuple[str, str, int]]:
    rows = wh.query(
        f"SELECT _op, _change_seq, id FROM {table.history_table} ORDER BY _change_seq"
    ).to_pylist()
    return [(r["_op"], r["_change_seq"], r["id"]) for r in rows]


def I(n: int, id_: int, name: str, qty: int = 0) -> Change:  # noqa: E743 - reads as the Op
    return Change("I", n, {"id": id_, "name": name, "qty": qty})


def U(n: int, id_: int, name: str, qty: int = 0) -> Change:
    return Change("U", n, {"id": id_, "name": name, "qty": qty})


def D(n: int, id_: int) -> Change:
    return Change("D", n, {"id": id_, "name": None, "qty": None})


def test_current_and_history_exact_once(lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table()
    same_second = T0 + timedelta(seconds=30)
    write_cdc(lake, t, [I(1, 1, "a", 1), I(2, 2, "b", 2), I(3, 3, "c", 3)], at=T0 + timedelta(seconds=10))
    # Three changes of key 2 in one file and one commit second: file order decides.
    write_cdc(
        lake,
        t,
        [
            Change("U", 4, {"id": 2, "name": "b1", "qty": 20}, same_second),
            Change("U", 5, {"id": 2, "name": "b2", "qty": 21}, same_second),
            Change("D", 6, {"id": 3, "name": "c", "qty": 3}, same_second),
            Change("U", 7, {"id": 2, "name": "b3", "qty": 22}, same_second),
            Change("I", 8, {"id": 3, "name": "c-again", "qty": 30}, same_second),
        ],
        at=same_second,
    )
    write_cdc(lake, t, [D(9, 1), I(10, 4, "d", 4)], at=T0 + timedelta(seconds=40))

    result = apply_pending(lake, warehouse, t, run_id="run-1")
    assert (result.files_applied, result.files_skipped, result.quarantined, result.blocked) == (
        3,
        0,
        [],
        None,
    )
    assert result.changes == {"I": 5, "U": 3, "D": 2}
    assert result.history_rows == 10 and result.max_seq == seq(10)
    assert current(warehouse, t) == [
        {"id": 2, "name": "b3", "qty": 22},
        {"id": 3, "name": "c-again", "qty": 30},
        {"id": 4, "name": "d", "qty": 4},
    ]
    assert [s for _, s, _ in history(warehouse, t)] == [seq(n) for n in range(1, 11)]
    control = warehouse.query(
        f"SELECT _cdc_seq, _cdc_commit_ts FROM {t.current_table} WHERE id = 2"
    ).to_pylist()
    assert control == [{"_cdc_seq": seq(7), "_cdc_commit_ts": same_second}]

    # The same files listed again, and the same changes re-written in a new file (a capture crash).
    again = apply_pending(lake, warehouse, t)
    assert (again.files_applied, again.files_skipped, again.rows) == (0, 3, 0)
    write_cdc(
        lake,
        t,
        [U(7, 2, "b3", 22), I(8, 3, "c-again", 30), D(9, 1), U(11, 4, "d2", 5)],
        name="20260302-1001000000.parquet",
    )
    rewritten = apply_pending(lake, warehouse, t)
    assert (rewritten.files_applied, rewritten.duplicates_dropped, rewritten.changes["U"]) == (1, 3, 1)
    assert current(warehouse, t)[-1] == {"id": 4, "name": "d2", "qty": 5}
    seqs = [s for _, s, _ in history(warehouse, t)]
    assert seqs == [seq(n) for n in range(1, 12)]  # every change exactly once
    files = warehouse.query("SELECT count(*) AS n, sum(duplicates) AS d FROM cdc_state.files").to_pylist()
    ledger = warehouse.query(f"SELECT count(*) AS n FROM {APPLIED} WHERE target = '{t.target}'").to_pylist()
    assert files == [{"n": 4, "d": 3}] and ledger == [{"n": 4}]


def test_real_dms_task_files(lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    """A real DMS task: LOAD without Op, CDC without AR_H_CHANGE_SEQ, bit(1) as bytes, DECIMAL as text,
    timestamps without a zone; the mapping says which columns are booleans and decimals."""
    t = cdc_table(
        "accounts",
        columns={"active": {"type": "boolean"}, "balance": {"type": "decimal", "precision": 12, "scale": 2}},
    )
    schema = pa.schema(
        [
            ("id", pa.int32()),
            ("active", pa.binary()),
            ("balance", pa.string()),
            ("opened", pa.timestamp("us")),
        ]
    )
    day = T0.date()
    opened = datetime(2025, 1, 2, 3, 4, 5)
    write_real_dms_load(
        lake,
        t,
        [
            {"id": i, "active": b"\x01" if i % 2 else b"\x00", "balance": f"{i}.50", "opened": opened}
            for i in (1, 2, 3)
        ],
        counter=1,
        schema=schema,
        day=day,
    )
    write_real_dms_load(
        lake,
        t,
        [{"id": 4, "active": b"\x01", "balance": "4.00", "opened": None}],
        counter=2,
        schema=schema,
        day=day,
    )
    at = T0 + timedelta(minutes=5)
    write_real_dms_cdc(
        lake,
        t,
        [
            ("U", {"id": 1, "active": b"\x00", "balance": "10.25", "opened": opened}),
            (
                "U",
                {"id": 1, "active": b"\x01", "balance": "11.75", "opened": opened},
            ),  # same file, same second
            ("D", {"id": 2, "active": b"\x00", "balance": "2.50", "opened": opened}),
            ("I", {"id": 5, "active": b"\x00", "balance": "-0.01", "opened": opened}),
        ],
        at=at,
        schema=schema,
    )
    result = apply_pending(lake, warehouse, t)
    assert (result.files_applied, result.quarantined) == (3, [])
    rows = warehouse.query(
        f"SELECT id, active, balance, opened FROM {t.current_table} ORDER BY id"
    ).to_pylist()
    assert rows == [
        {"id": 1, "active": True, "balance": Decimal("11.75"), "opened": opened},
        {"id": 3, "active": True, "balance": Decimal("3.50"), "opened": opened},
        {"id": 4, "active": True, "balance": Decimal("4.00"), "opened": None},
        {"id": 5, "active": False, "balance": Decimal("-0.01"), "opened": opened},
    ]
    described = warehouse.query(f"DESCRIBE {t.current_table}").to_pylist()
    types = {r["column_name"]: r["column_type"] for r in described}
    assert (types["active"], types["balance"], types["_cdc_commit_ts"]) == (
        "BOOLEAN",
        "DECIMAL(12,2)",
        "TIMESTAMP WITH TIME ZONE",
    )
    commit = warehouse.query(f"SELECT _cdc_commit_ts AS c FROM {t.current_table} WHERE id = 5").to_pylist()
    assert commit == [{"c": at}]  # the zone-less commit time is UTC
    assert warehouse.query(f"SELECT count(*) AS n FROM {t.history_table}").to_pylist() == [{"n": 8}]


def test_bad_files_are_quarantined_and_others_apply(lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table()
    other = cdc_table("others")
    write_cdc(lake, t, [I(1, 1, "a"), I(2, 2, "b")], at=T0 + timedelta(seconds=1))
    corrupt = put_raw(lake, t, "20260302-1000020000.parquet", b"PAR1 this is not parquet")
    bad_op = write_cdc(
        lake,
        t,
        [I(3, 3, "c"), Change("X", 4, {"id": 3, "name": "c", "qty": 0})],
        at=T0 + timedelta(seconds=3),
    )
    no_key = write_cdc(
        lake, t, [Change("I", 5, {"id": None, "name": "?", "qty": 0})], at=T0 + timedelta(seconds=4)
    )
    bad_name = put_raw(lake, t, "changes-today.parquet", b"x")
    write_cdc(lake, t, [U(6, 1, "a2"), I(7, 9, "z")], at=T0 + timedelta(seconds=6))
    write_cdc(lake, other, [I(1, 1, "o")], at=T0 + timedelta(seconds=1))

    result = apply_pending(lake, warehouse, t)
    causes = {key: cause for key, cause, _ in result.quarantined}
    assert causes == {corrupt: "corrupt", bad_op: "bad_op", no_key: "missing_key", bad_name: "bad_name"}
    reasons = {key: reason for key, _, reason in result.quarantined}
    assert "'X'" in reasons[bad_op] and "'id'" in reasons[no_key]
    assert result.files_applied == 2
    assert current(warehouse, t) == [
        {"id": 1, "name": "a2", "qty": 0},
        {"id": 2, "name": "b", "qty": 0},
        {"id": 9, "name": "z", "qty": 0},
    ]
    assert apply_pending(lake, warehouse, other).files_applied == 1  # another table is not held back
    # Left where they are, held on the next call, counted for the dashboard.
    assert lake.exists(corrupt) and lake.exists(bad_op)
    again = apply_pending(lake, warehouse, t)
    assert (again.files_applied, again.files_held, again.quarantined) == (0, 4, [])
    counts = {(r["target"], r["cause"]): r["files"] for r in quarantine_counts(warehouse)}
    assert counts == {(t.target, c): 1 for c in ("bad_name", "bad_op", "corrupt", "missing_key")}
    stats = table_stats(warehouse, t)
    assert (
        stats["quarantined"] == 4
        and stats["blocked"] is None
        and stats["last_commit_ts"] == (T0 + timedelta(seconds=7)).replace(tzinfo=None)
    )
    # Released, a file still bad is quarantined again (a new entry), not lost.
    assert release_quarantined(warehouse, t, key=corrupt) == [corrupt]
    retried = apply_pending(lake, warehouse, t)
    assert [(k, c) for k, c, _ in retried.quarantined] == [(corrupt, "corrupt")]


def test_apply_tables_one_connection_a_failing_table_rolls_back_alone(
    lake: LakeStorage, warehouse: DuckDBWarehouse
) -> None:
    first, broken, last = cdc_table("first"), cdc_table("broken"), cdc_table("last")
    for t in (first, broken, last):
        write_cdc(lake, t, [I(1, 1, "a"), I(2, 2, "b")], at=T0 + timedelta(seconds=1))
    # The broken table's current state is a view someone made by hand: its MERGE fails.
    schema = broken.current_table.split(".")[0]
    warehouse.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    warehouse.execute(
        f"CREATE VIEW {broken.current_table} AS SELECT 1::BIGINT AS id, 'x' AS name, 0::BIGINT AS qty,"
        " '' AS _cdc_seq, now() AS _cdc_commit_ts, now() AS _cdc_loaded_at"
    )

    results = apply_tables(lake, warehouse, [first, broken, last], run_id="pass-1")
    assert list(results) == [first.target, broken.target, last.target]
    assert isinstance(results[broken.target], Exception)
    for t in (first, last):
        done = results[t.target]
        assert not isinstance(done, Exception) and done.files_applied == 1
        assert current(warehouse, t) == [{"id": 1, "name": "a", "qty": 0}, {"id": 2, "name": "b", "qty": 0}]
    # Rolled back alone: neither its history nor its ledger rows were kept, so a later pass retries it.
    applied = warehouse.query(f"SELECT target FROM {APPLIED} ORDER BY target")["target"].to_pylist()
    assert applied == sorted([first.target, last.target])
    assert not warehouse.table_exists(broken.history_table)
    warehouse.execute(f"DROP VIEW {broken.current_table}")
    again = apply_tables(lake, warehouse, [first, broken, last])
    assert [getattr(r, "files_applied", r) for r in again.values()] == [0, 1, 0]


def test_bad_value_names_column_and_example(local_lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table(columns={"qty": {"type": "boolean"}})
    bad = write_cdc(local_lake, t, [I(1, 1, "a", 1), I(2, 2, "b", 7)], at=T0 + timedelta(seconds=2))
    write_cdc(local_lake, t, [I(3, 3, "c", 0)], at=T0 + timedelta(seconds=3))
    result = apply_pending(local_lake, warehouse, t)
    assert [(k, c) for k, c, _ in result.quarantined] == [(bad, "bad_value")]
    assert "column 'qty'" in result.quarantined[0][2] and "7" in result.quarantined[0][2]
    assert current(warehouse, t) == [{"id": 3, "name": "c", "qty": False}]


@pytest.mark.parametrize("keep_history", [True, False])
def test_released_file_applies_out_of_order_without_resurrecting(
    lake: LakeStorage, warehouse: DuckDBWarehouse, keep_history: bool
) -> None:
    t = cdc_table(history=keep_history, columns={"qty": {"type": "decimal", "precision": 5, "scale": 2}})
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("qty", pa.string())])
    first = write_cdc(
        lake, t, [I(1, 1, "a", "1.00"), I(2, 2, "b", "2.00")], at=T0 + timedelta(seconds=2), schema=schema
    )
    # seq 3-5: key 1 updated, key 3 inserted and updated; qty 1234.50 does not fit decimal(5,2).
    late = write_cdc(
        lake, t, [U(3, 1, "a-late", "1234.50"), I(4, 3, "c", "3.00"), U(5, 3, "c-late", "3.50")],
        at=T0 + timedelta(seconds=5), schema=schema,
    )  # fmt: skip
    # seq 6-8, applied first: key 3 deleted, key 1 updated.
    write_cdc(
        lake,
        t,
        [D(6, 3), U(7, 1, "a-new", "7.00"), I(8, 4, "d", "8.00")],
        at=T0 + timedelta(seconds=8),
        schema=schema,
    )
    result = apply_pending(lake, warehouse, t)
    assert [(k, c) for k, c, _ in result.quarantined] == [(late, "bad_value")]
    assert result.files_applied == 2
    # The operator widens the column and releases the file: it applies after later changes.
    for name in [t.current_table] + ([t.history_table] if keep_history else []):
        warehouse.execute(f"ALTER TABLE {name} ALTER COLUMN qty TYPE DECIMAL(10, 2)")
    assert release_quarantined(warehouse, t) == [late]
    replay = apply_pending(lake, warehouse, t)
    assert (replay.files_applied, replay.quarantined) == (1, [])
    assert replay.replayed >= 2  # key 1's and key 3's later changes
    assert current(warehouse, t) == [
        {"id": 1, "name": "a-new", "qty": Decimal("7.00")},
        {"id": 2, "name": "b", "qty": Decimal("2.00")},
        {"id": 4, "name": "d", "qty": Decimal("8.00")},
    ]
    if keep_history:
        assert [s for _, s, _ in history(warehouse, t)] == [seq(n) for n in range(1, 9)]
    assert lake.exists(first)


def test_late_file_never_overwrites_newer_change(local_lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table(history=False)
    write_cdc(local_lake, t, [I(1, 1, "a"), I(2, 2, "b")], at=T0 + timedelta(seconds=2))
    newer = write_cdc(local_lake, t, [U(6, 1, "a6"), D(7, 2)], at=T0 + timedelta(seconds=7))
    older = write_cdc(
        local_lake, t, [U(3, 1, "a3"), U(4, 2, "b4"), I(5, 7, "g")], at=T0 + timedelta(seconds=5)
    )
    files = list_change_files(local_lake, t)
    assert [f.ref.key for f in files][1:] == [older, newer]  # listed in name order
    apply_pending(local_lake, warehouse, t, files=[f for f in files if f.ref.key != older])
    result = apply_pending(local_lake, warehouse, t)
    assert result.files_applied == 1
    assert current(warehouse, t) == [{"id": 1, "name": "a6", "qty": 0}, {"id": 7, "name": "g", "qty": 0}]


def test_schema_drift(lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t, other = cdc_table(), cdc_table("others")
    wide = pa.schema([*cdc_table_schema(), ("color", pa.string())])
    write_cdc(lake, t, [I(1, 1, "a", 1)], at=T0 + timedelta(seconds=1))
    write_cdc(
        lake,
        t,
        [Change("I", 2, {"id": 2, "name": "b", "qty": 2, "color": "red"})],
        at=T0 + timedelta(seconds=2),
        schema=wide,
    )
    added = apply_pending(lake, warehouse, t)
    assert added.columns_added == ["color"] and added.files_applied == 2
    assert current(warehouse, t, "id, color") == [{"id": 1, "color": None}, {"id": 2, "color": "red"}]
    hist = warehouse.query(f"SELECT id, color FROM {t.history_table} ORDER BY id").to_pylist()
    assert hist == [{"id": 1, "color": None}, {"id": 2, "color": "red"}]

    # qty retyped int -> varchar at the source: the table blocks at that file, the other table goes on.
    retyped = pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("qty", pa.string()), ("color", pa.string())]
    )
    write_cdc(
        lake,
        t,
        [Change("U", 3, {"id": 1, "name": "a", "qty": "12 pcs", "color": "blue"})],
        at=T0 + timedelta(seconds=3),
        schema=retyped,
    )
    write_cdc(
        lake,
        t,
        [Change("I", 4, {"id": 5, "name": "e", "qty": "5", "color": None})],
        at=T0 + timedelta(seconds=4),
        schema=retyped,
    )
    write_cdc(lake, other, [I(1, 1, "o", 1)], at=T0 + timedelta(seconds=3))
    blocked = apply_pending(lake, warehouse, t)
    assert blocked.files_applied == 0 and blocked.blocked is not None
    assert "'qty'" in blocked.blocked and "int32" in blocked.blocked and "string" in blocked.blocked
    assert "20260302-1000030000.parquet" in blocked.blocked
    assert apply_pending(lake, warehouse, t).blocked == blocked.blocked  # refused while blocked
    assert apply_pending(lake, warehouse, other).files_applied == 1
    assert table_stats(warehouse, t)["blocked"] == blocked.blocked
    assert current(warehouse, t, "id, qty") == [{"id": 1, "qty": 1}, {"id": 2, "qty": 2}]

    assert accept_schema(warehouse, t) == ["qty: int32 -> string"]
    resumed = apply_pending(lake, warehouse, t)
    assert (resumed.files_applied, resumed.blocked) == (2, None)
    assert current(warehouse, t, "id, qty, color") == [
        {"id": 1, "qty": "12 pcs", "color": "blue"},
        {"id": 2, "qty": "2", "color": "red"},
        {"id": 5, "qty": "5", "color": None},
    ]

    # color dropped at the source: blocks; accepted, it stays, null from now on.
    dropped = pa.schema([("id", pa.int64()), ("name", pa.string()), ("qty", pa.string())])
    write_cdc(
        lake,
        t,
        [Change("U", 5, {"id": 2, "name": "b2", "qty": "3"})],
        at=T0 + timedelta(seconds=5),
        schema=dropped,
    )
    assert "'color' dropped" in (apply_pending(lake, warehouse, t).blocked or "")
    assert accept_schema(warehouse, t) == ["color: dropped at the source, kept (null from now on)"]
    assert apply_pending(lake, warehouse, t).files_applied == 1
    assert current(warehouse, t, "id, name, color")[1] == {"id": 2, "name": "b2", "color": None}


def cdc_table_schema() -> list[tuple[str, pa.DataType]]:
    return [("id", pa.int64()), ("name", pa.string()), ("qty", pa.int32())]


def test_widening_is_applied_without_a_block(local_lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table()
    write_cdc(local_lake, t, [I(1, 1, "a", 1)], at=T0 + timedelta(seconds=1))
    wider = pa.schema([("id", pa.int64()), ("name", pa.string()), ("qty", pa.int64())])
    write_cdc(local_lake, t, [I(2, 2, "b", 2**40)], at=T0 + timedelta(seconds=2), schema=wider)
    result = apply_pending(local_lake, warehouse, t)
    assert (result.blocked, result.columns_widened) == (None, ["qty"])
    assert current(warehouse, t, "id, qty") == [{"id": 1, "qty": 1}, {"id": 2, "qty": 2**40}]


def test_crash_inside_the_transaction_leaves_nothing(
    lake: LakeStorage, warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = cdc_table()
    write_cdc(lake, t, [I(1, 1, "a"), I(2, 2, "b")], at=T0 + timedelta(seconds=2))
    write_cdc(lake, t, [U(3, 1, "a3"), D(4, 2)], at=T0 + timedelta(seconds=4))

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed after history and MERGE, before the ledger")

    with monkeypatch.context() as patched:  # not monkeypatch.undo(): the lake fixture's settings stay
        patched.setattr(apply_module, "_record", crash)
        with pytest.raises(RuntimeError, match="killed"):
            apply_pending(lake, warehouse, t)
    for name in (t.current_table, t.history_table):
        assert not warehouse.table_exists(name)  # created in the rolled-back transaction
    assert warehouse.query("SELECT count(*) AS n FROM cdc_state.files").to_pylist() == [{"n": 0}]
    assert not warehouse.table_exists(APPLIED) or warehouse.query(
        f"SELECT count(*) AS n FROM {APPLIED}"
    ).to_pylist() == [{"n": 0}]

    result = apply_pending(lake, warehouse, t)
    assert (result.files_applied, result.history_rows) == (2, 4)
    assert current(warehouse, t) == [{"id": 1, "name": "a3", "qty": 0}]
    assert [s for _, s, _ in history(warehouse, t)] == [seq(n) for n in (1, 2, 3, 4)]


def test_load_set_deletes_absent_keys_once_complete(lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table()
    write_cdc(lake, t, [I(1, 1, "a"), I(2, 2, "b"), I(3, 3, "c")], at=T0 + timedelta(seconds=3))
    apply_pending(lake, warehouse, t)
    # A backfill at seq 10 (key 2 no longer exists at the source, a delete the capture missed);
    # meanwhile key 1 changed at seq 12 and key 5 was inserted at seq 13.
    write_cdc(lake, t, [U(12, 1, "a12"), I(13, 5, "e")], at=T0 + timedelta(seconds=13))
    apply_pending(lake, warehouse, t)
    write_load(lake, t, [{"id": 1, "name": "a-snap", "qty": 1}], counter=1, snapshot=10, part=1, parts=None)
    first = apply_pending(lake, warehouse, t)
    assert first.loads_completed == []
    assert [r["id"] for r in current(warehouse, t)] == [1, 2, 3, 5]  # incomplete: nothing deleted
    write_load(
        lake,
        t,
        [{"id": 3, "name": "c-snap", "qty": 3}, {"id": 4, "name": "d", "qty": 4}],
        counter=2,
        snapshot=10,
        part=2,
        parts=2,
    )
    done = apply_pending(lake, warehouse, t)
    assert done.loads_completed == [seq(10)]
    assert current(warehouse, t) == [
        {"id": 1, "name": "a12", "qty": 0},  # the newer change wins over the snapshot
        {"id": 3, "name": "c-snap", "qty": 3},
        {"id": 4, "name": "d", "qty": 4},
        {"id": 5, "name": "e", "qty": 0},  # inserted after the snapshot: kept
    ]
    assert warehouse.query("SELECT count(*) AS n FROM cdc_state.loads").to_pylist() == [{"n": 1}]


def test_generic_path_matches_duckdb_path(local_lake: LakeStorage, tmp_path: Path) -> None:
    t = cdc_table()
    write_cdc(local_lake, t, [I(1, 1, "a"), I(2, 2, "b"), U(3, 1, "a3")], at=T0 + timedelta(seconds=3))
    write_cdc(local_lake, t, [D(4, 2), I(5, 3, "c")], at=T0 + timedelta(seconds=5))
    results = []
    for views in (True, False):
        wh = DuckDBWarehouse(path=str(tmp_path / f"w{views}.duckdb"))
        r = apply_pending(local_lake, wh, t, arrow_views=views)
        results.append((r.files_applied, r.history_rows, current(wh, t), history(wh, t)))
        assert not [
            n
            for n in wh.query(
                "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '_cdc_%'"
            )
            .column(0)
            .to_pylist()
        ]
    assert results[0] == results[1] and results[0][0] == 2


def test_listing_order_and_bounded_days(local_lake: LakeStorage) -> None:
    t = cdc_table()
    # Near today: a bounded listing reads day folders (month folders beyond 45 days).
    day2 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    day1 = day2 - timedelta(days=3)
    c2 = write_cdc(local_lake, t, [I(5, 2, "b")], at=day2)
    c1 = write_cdc(local_lake, t, [I(1, 1, "a")], at=day1)
    load = write_load(
        local_lake,
        t,
        [{"id": 1, "name": "a", "qty": 0}],
        counter=10,
        snapshot=3,
        part=1,
        parts=1,
        day=day2.date(),
    )
    odd = put_raw(local_lake, t, "notes.txt", b"x", day=day2.date())
    files = list_change_files(local_lake, t)
    assert [f.ref.key for f in files] == [c1, load, c2, odd]
    assert files[-1].invalid and "notes.txt" in files[-1].invalid
    assert [f.kind for f in files] == ["cdc", "load", "cdc", "invalid"]
    recent = list_change_files(local_lake, t, since=day2.date() - timedelta(days=1))
    assert [f.ref.key for f in recent] == [load, c2, odd]


def test_table_stats_counts_recent_changes(local_lake: LakeStorage, warehouse: DuckDBWarehouse) -> None:
    t = cdc_table()
    now = datetime.now(UTC).replace(microsecond=0)
    write_cdc(
        local_lake,
        t,
        [Change("I", 1, {"id": 1, "name": "a", "qty": 0}, now - timedelta(hours=5))],
        at=now - timedelta(hours=5),
    )
    write_cdc(
        local_lake,
        t,
        [
            Change("I", 2, {"id": 2, "name": "b", "qty": 0}, now - timedelta(minutes=5)),
            Change("U", 3, {"id": 2, "name": "c", "qty": 0}, now - timedelta(minutes=4)),
        ],
        at=now - timedelta(minutes=4),
    )
    apply_pending(local_lake, warehouse, t)
    stats = table_stats(warehouse, t)
    assert (stats["rows_last_hour"], stats["rows_last_day"]) == (2, 3)
    assert stats["last_commit_ts"] == (now - timedelta(minutes=4)).replace(tzinfo=None)


def test_last_change_per_key_by_seq_not_row_order(
    local_lake: LakeStorage, warehouse: DuckDBWarehouse
) -> None:
    t = cdc_table(history=False)  # without history the batch is reduced in Arrow before staging
    write_cdc(
        local_lake,
        t,
        [U(5, 1, "a5"), I(2, 1, "a"), I(3, 2, "b"), U(4, 1, "a4"), D(6, 2), I(7, 3, "c")],
        at=T0 + timedelta(seconds=2),
    )
    result = apply_pending(local_lake, warehouse, t)
    assert result.changes == {"I": 3, "U": 2, "D": 1}
    assert current(warehouse, t) == [{"id": 1, "name": "a5", "qty": 0}, {"id": 3, "name": "c", "qty": 0}]


def test_last_change_per_key_with_history_and_a_compound_key(
    local_lake: LakeStorage, warehouse: DuckDBWarehouse
) -> None:
    """With history the MERGE also reads the batch reduced in Arrow; the history gets every row."""
    t = cdc_table(primary_key=["id", "name"], history=True)
    write_cdc(
        local_lake,
        t,
        [
            U(5, 1, "x", 5),
            I(2, 1, "x", 2),
            I(3, 1, "y", 3),
            U(4, 1, "y", 4),
            Change("D", 6, {"id": 1, "name": "y", "qty": 4}),
            I(7, 2, "x", 7),
        ],
        at=T0 + timedelta(seconds=2),
    )
    result = apply_pending(local_lake, warehouse, t)
    assert (result.changes, result.history_rows) == ({"I": 3, "U": 2, "D": 1}, 6)
    assert result.current == {"inserted": 2, "updated": 0, "deleted": 0}
    assert current(warehouse, t) == [{"id": 1, "name": "x", "qty": 5}, {"id": 2, "name": "x", "qty": 7}]
    assert [s for _, s, _ in history(warehouse, t)] == [seq(n) for n in range(2, 8)]


def test_last_per_key_ties_and_order() -> None:
    """The Arrow reduce: the highest seq of each key wins; of two rows of a key at one seq, the later."""
    changes = pa.table(
        {
            "_op": ["I", "U", "U", "I", "U", "D"],
            "_change_seq": [seq(1), seq(3), seq(3), seq(2), seq(9), seq(4)],
            "id": [1, 1, 1, 2, 2, 3],
            "name": ["a", "b", "c", "d", "e", "f"],
        }
    )
    last = apply_module._last_per_key(changes, ["id"])
    assert sorted(zip(last["id"].to_pylist(), last["name"].to_pylist(), strict=True)) == [
        (1, "c"),
        (2, "e"),
        (3, "f"),
    ]
    in_order = changes.sort_by([("_change_seq", "ascending")])  # the monotonic path: sort by key only
    last = apply_module._last_per_key(in_order, ["id"])
    assert sorted(zip(last["id"].to_pylist(), last["name"].to_pylist(), strict=True)) == [
        (1, "c"),
        (2, "e"),
        (3, "f"),
    ]
    assert apply_module._last_per_key(changes.slice(0, 1), ["id"]).num_rows == 1


@pytest.mark.parametrize("keep_history", [True, False])
def test_generic_session_matches_duckdb_session(
    local_lake: LakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_history: bool
) -> None:
    """The DuckDB fast paths (the first reads in one query, Arrow views, the files' and ledger's rows
    in one SQL script, tables made in one script) and the generic ones a BigQuery session takes
    leave the same tables, state rows, ledger rows and claims, through duplicates, a complete load
    set, claims and a late file."""
    from resources.ledger import CLAIMS, FileLedger

    t = cdc_table(history=keep_history)
    write_cdc(local_lake, t, [I(1, 1, "a"), I(2, 2, "b"), U(3, 1, "a3")], at=T0 + timedelta(seconds=3))
    write_cdc(local_lake, t, [D(4, 2), I(5, 3, "c"), I(6, 4, "d")], at=T0 + timedelta(seconds=6))
    # Pass 2: changes 5-6 re-written with 8 (a capture crash), a load set at 11; pass 3: a late file
    # (9-10, held back in pass 2) whose key 1 changed later (the load): replayed, and its key 6,
    # older than the complete snapshot, removed again.
    rewritten = [I(5, 3, "c"), I(6, 4, "d"), U(8, 3, "c8")]
    late = [U(9, 1, "a9"), I(10, 6, "f")]
    load = [{"id": 1, "name": "a-snap", "qty": 1}, {"id": 3, "name": "c-snap", "qty": 3}]

    def run(generic: bool) -> list[Any]:
        lake_root = tmp_path / f"lake-{generic}"
        lake = type(local_lake)(root=str(lake_root))
        for source in Path(local_lake.root).rglob("*.parquet"):
            target = lake_root / source.relative_to(local_lake.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
        wh = DuckDBWarehouse(path=str(tmp_path / f"w{generic}.duckdb"))
        seen: list[Any] = []

        def apply(**kw: Any) -> None:
            with monkeypatch.context() as patched:
                if generic:
                    patched.setattr(apply_module, "_is_duckdb", lambda db: False)
                r = apply_pending(lake, wh, t, run_id="r", arrow_views=not generic, **kw)
            seen.append(
                [
                    r.files_applied,
                    r.changes,
                    r.duplicates_dropped,
                    r.history_rows,
                    r.replayed,
                    r.loads_completed,
                    r.current,
                    r.max_seq,
                    r.last_commit_ts,
                ]
            )

        apply()
        write_cdc(lake, t, rewritten, name="20260302-1000080000.parquet")
        late_key = write_cdc(lake, t, late, name="20260302-1000090000.parquet")
        write_load(lake, t, load, counter=1, snapshot=11, part=1, parts=1)
        claimed = [f.ref for f in list_change_files(lake, t) if f.ref.key == late_key]
        FileLedger(wh).hold(t.target, [(claimed[0], None, "run-key")], "test")
        apply(files=[f for f in list_change_files(lake, t) if f.ref.key != late_key])
        apply()
        seen.append(current(wh, t))
        if keep_history:
            seen.append(history(wh, t))
        seen.append(
            wh.query("SELECT * EXCLUDE (applied_at) FROM cdc_state.files ORDER BY object_key").to_pylist()
        )
        seen.append(wh.query(f"SELECT * EXCLUDE (applied_at) FROM {APPLIED} ORDER BY identity").to_pylist())
        seen.append(wh.query(f"SELECT count(*) AS n FROM {CLAIMS}").to_pylist())
        seen.append(wh.query("SELECT * EXCLUDE (completed_at) FROM cdc_state.loads").to_pylist())
        return seen

    fast, generic = run(False), run(True)
    assert fast == generic
    assert fast[1][:3] == [2, {"I": 2, "U": 1, "D": 0}, 2]  # duplicates dropped; 2 load rows
    assert fast[1][5] == [seq(11)]  # the load set completed
    assert fast[2][0] == 1 and fast[2][4] >= 1  # the late file replays key 1's later change
    assert fast[3] == [{"id": 1, "name": "a-snap", "qty": 1}, {"id": 3, "name": "c-snap", "qty": 3}]
    assert fast[-2] == [{"n": 0}]  # the claim went with the apply


def test_apply_imports_no_pandas(local_lake: LakeStorage, tmp_path: Path) -> None:
    """pyarrow imports pandas (half a second) on a first Python scalar, Acero or a zoned timestamp's
    as_py: an apply of ordinary files, with history and without, needs none of them."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("pandas")  # else the test proves nothing
    tables = {"with_history": True, "without_history": False}
    for name, keep in tables.items():
        t = cdc_table(name, history=keep)
        write_cdc(local_lake, t, [I(1, 1, "a"), I(2, 2, "b"), U(3, 1, "a3")], at=T0 + timedelta(seconds=3))
        write_cdc(local_lake, t, [D(4, 2), I(5, 3, "c")], at=T0 + timedelta(seconds=5))
    code = f"""
import json, sys
from dms_files import cdc_table
from assets.cdc.apply import apply_tables
from resources.lake import LocalLake
from resources.warehouse.duckdb import DuckDBWarehouse
tables = [cdc_table(name, history=keep) for name, keep in {tables!r}.items()]
results = apply_tables(LocalLake(root={local_lake.root!r}), DuckDBWarehouse(path={str(tmp_path / "w.duckdb")!r}),
                       tables)
print(json.dumps({{"applied": [r.files_applied for r in results.values()],
                  "pandas": "pandas" in sys.modules, "acero": "pyarrow.acero" in sys.modules}}))
"""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "applied": [2, 2],
        "pandas": False,
        "acero": False,
    }
