"""`dp cdc full-load` files, as the loader takes them: an empty table, a first load, and a reload
(the seed's "DMS full load" reprocessing) that removes rows the source no longer has while keeping
changes captured after the snapshot."""

from __future__ import annotations

import threading
import time

from assets.cdc.apply import apply_pending
from assets.cdc.checkpoint import load_checkpoint
from assets.cdc.mapping import load_mapping
from resources.lake import LocalLake
from resources.warehouse import DuckDBWarehouse
from services.cdc.capture import run_capture
from services.cdc.full_load import full_load


def _rows(warehouse: DuckDBWarehouse, table: str) -> list[tuple]:
    return [
        tuple(r.values()) for r in warehouse.query(f"SELECT id, name FROM {table} ORDER BY id").to_pylist()
    ]


def _settle(lake, source) -> None:
    with source.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    deadline = time.monotonic() + 30
    while not ((cp := load_checkpoint(lake, "main")) and (cp.log_file, cp.log_pos) >= (file, pos)):
        assert time.monotonic() < deadline, f"capture at {cp}, server at {file}:{pos}"
        time.sleep(0.2)


def test_full_loads_then_changes_then_a_reload(sources, write_mapping, tmp_path):
    main = sources["main"]
    main.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR(20))")
    mapping = load_mapping(
        write_mapping({"main": main}, [{"cluster": "main", "table": "t", "primary_key": ["id"]}])
    )
    table = mapping.enabled[0]
    lake = LocalLake(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))

    # An empty table loads as an empty current state (one empty LOAD part).
    assert len(full_load(mapping, lake, table.target)) == 1
    result = apply_pending(lake, warehouse, table)
    assert (result.files_applied, result.quarantined, result.blocked) == (1, [], None)
    assert _rows(warehouse, table.current_table) == []

    main.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
    full_load(mapping, lake, table.target, rows_per_file=3)  # two parts
    apply_pending(lake, warehouse, table)
    assert _rows(warehouse, table.current_table) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]

    # Rows change while nobody captures (the capture starts later, at the server's position):
    # only a reload can bring them, and it must remove row 4, which the source no longer has.
    main.execute("DELETE FROM t WHERE id = 4", "UPDATE t SET name = 'b2' WHERE id = 2")
    stop = threading.Event()
    capture = threading.Thread(target=run_capture, args=(mapping, lake), kwargs={"stop": stop})
    capture.start()
    try:
        deadline = time.monotonic() + 30
        while load_checkpoint(lake, "main") is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        full_load(mapping, lake, table.target)
        main.execute(
            "INSERT INTO t VALUES (5, 'e')", "UPDATE t SET name = 'c2' WHERE id = 3"
        )  # after the snapshot
        _settle(lake, main)
    finally:
        stop.set()
        capture.join(30)
    result = apply_pending(lake, warehouse, table)
    assert result.quarantined == [] and result.blocked is None
    assert _rows(warehouse, table.current_table) == [(1, "a"), (2, "b2"), (3, "c2"), (5, "e")]
    again = apply_pending(lake, warehouse, table)
    assert again.files_applied == 0 and _rows(warehouse, table.current_table) == [
        (1, "a"),
        (2, "b2"),
        (3, "c2"),
        (5, "e"),
    ]
