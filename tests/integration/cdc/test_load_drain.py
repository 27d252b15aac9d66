"""The CDC load step drains: one run applies files that land while it runs, pass after pass,
and ends once nothing new has come for its idle time. A manual run (no config) makes one pass."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import dagster as dg
from dms_files import Change, write_cdc

from assets.cdc.definitions import build
from assets.cdc.factory import LOAD_OP, current_key, history_key
from assets.cdc.mapping import load_mapping
from resources.lake import LocalLake
from resources.warehouse import DuckDBWarehouse


def _row(n: int, name: str) -> Change:
    return Change("I", n, {"id": n, "name": name, "qty": n}, datetime.now(UTC))


def _ids(warehouse: DuckDBWarehouse, table) -> list[int]:
    if not warehouse.table_exists(table.current_table):
        return []
    return warehouse.query(f"SELECT id FROM {table.current_table} ORDER BY id")["id"].to_pylist()


def _load(defs, selection, instance, resources, run_config=None) -> dg.ExecuteInJobResult:
    assets = [x for x in defs.assets or [] if isinstance(x, dg.AssetsDefinition | dg.AssetSpec)]
    return dg.materialize(
        assets, selection=selection, instance=instance, resources=resources, run_config=run_config
    )


def test_a_run_drains_files_that_land_while_it_runs(sources, write_mapping, local_aws, tmp_path):
    tables = [{"cluster": "main", "table": n, "primary_key": ["id"]} for n in ("a", "b")]
    mapping_dir = write_mapping({"main": sources["main"]}, tables)
    a, b = load_mapping(mapping_dir).enabled
    lake = LocalLake(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    resources = {"lake": lake, "warehouse": warehouse, "aws": local_aws}
    defs = build(str(mapping_dir))
    loads = dg.AssetSelection.assets(current_key(a), history_key(a), current_key(b), history_key(b))
    write_cdc(lake, a, [_row(1, "first")], name="20991231-0000000000.parquet")

    # Files land after the run's first pass: one for a table with files already, one for a table
    # that had none when the run started.
    landed_late = threading.Event()

    def land_later() -> None:
        deadline = time.monotonic() + 60
        while not _ids(warehouse, a) and time.monotonic() < deadline:
            time.sleep(0.2)
        write_cdc(lake, a, [_row(2, "second")], name="20991231-0000010000.parquet")
        write_cdc(lake, b, [_row(3, "third")], name="20991231-0000020000.parquet")
        landed_late.set()

    writer = threading.Thread(target=land_later)
    writer.start()
    started = time.monotonic()
    with dg.instance_for_test() as instance:
        drain = {"drain_seconds": 60, "idle_seconds": 3, "pause_seconds": 0.2}
        result = _load(defs, loads, instance, resources, {"ops": {LOAD_OP: {"config": drain}}})
        writer.join()
        assert result.success and landed_late.is_set()
        assert _ids(warehouse, a) == [1, 2] and _ids(warehouse, b) == [3]
        # a: its output at the first pass, the later pass's logged when the drain ends; b: one.
        per_key = {
            key: len(instance.fetch_materializations(key, limit=10).records)
            for key in (current_key(a), history_key(a), current_key(b))
        }
        assert per_key == {current_key(a): 2, history_key(a): 2, current_key(b): 1}
        latest = instance.fetch_materializations(current_key(a), limit=1).records[0]
        metadata = latest.asset_materialization.metadata
        assert metadata["files_applied"].value == 1 and metadata["inserts"].value == 1
        assert metadata["passes"].value >= 1
        checks = {e.asset_key: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {current_key(a): True, current_key(b): True}
    # One status row a table, its passes summed (written with the materializations' cadence).
    status = warehouse.query(
        "SELECT dataset, outcome, rows FROM platform_status.load_status WHERE domain = 'cdc' ORDER BY dataset"
    ).to_pylist()
    assert status == [
        {"dataset": a.target, "outcome": "loaded", "rows": 2},
        {"dataset": b.target, "outcome": "loaded", "rows": 1},
    ]
    # Ended by its idle time, not by the drain's limit.
    assert time.monotonic() - started < 45

    # Without config (a manual materialization): one pass, a file landing after it waits.
    write_cdc(lake, a, [_row(4, "fourth")], name="20991231-0000030000.parquet")
    with dg.instance_for_test() as instance:
        once = _load(defs, loads, instance, resources)
        assert once.success and _ids(warehouse, a) == [1, 2, 4]
        assert len(instance.fetch_materializations(current_key(a), limit=10).records) == 1
        assert instance.fetch_materializations(current_key(b), limit=10).records == []
