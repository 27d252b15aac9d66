"""The CDC listing sensor: one draining run of every table when files land, and new files given to
a CDC run that is queued and not started yet instead of a run of their own."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
from dms_files import Change, write_cdc

from assets.cdc.factory import DRAIN, LOAD_OP, current_key, load_keys
from assets.cdc.mapping import load_mapping
from assets.cdc.sensors import listing_sensor
from resources.lake import LocalLake
from resources.ledger import FileLedger
from resources.warehouse import DuckDBWarehouse


def _mapping(write_mapping, sources):
    tables = [
        {"cluster": "main", "table": "a", "primary_key": ["id"]},
        {"cluster": "main", "table": "b", "primary_key": ["id"]},
        {"cluster": "main", "table": "c", "primary_key": ["id"]},
    ]
    return load_mapping(write_mapping({"main": sources["main"]}, tables))


def _tick(sensor, instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return sensor(context)


def test_one_run_for_all_tables_and_new_files_join_a_queued_run(sources, write_mapping, tmp_path):
    mapping = _mapping(write_mapping, sources)
    a, b, c = mapping.enabled
    lake = LocalLake(root=str(tmp_path / "lake"))
    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    resources = {"lake": lake, "warehouse": warehouse}
    sensor = listing_sensor(mapping)
    now = datetime.now(UTC)  # a day the landed assets' partitions hold
    write_cdc(lake, a, [Change("I", 1, {"id": 1, "name": "x", "qty": 1}, now)], at=now)
    write_cdc(lake, b, [Change("I", 2, {"id": 2, "name": "y", "qty": 2}, now)], at=now)
    with dg.instance_for_test() as instance:
        first = _tick(sensor, instance, resources)
        assert len(first.run_requests) == 1
        request = first.run_requests[0]
        # Every table, c (no new files) too: the run drains whatever lands while it runs.
        assert set(request.asset_selection) == {k for t in (a, b, c) for k in load_keys(t)}
        assert request.run_config == {"ops": {LOAD_OP: {"config": DRAIN}}}
        assert request.tags["cdc/new_files_for"] == "2"
        assert {e.asset_key.path[-1] for e in first.asset_events} == {"landed"}

        # The daemon queues that run; it has not started when table a's next file lands.
        queued = dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id="0" * 8 + "-queued-cdc-run",
            status=dg.DagsterRunStatus.NOT_STARTED,  # created by the daemon, not launched (QUEUED too)
            tags={**request.tags, "dagster/run_key": request.run_key},
            asset_selection=frozenset(request.asset_selection),
        )
        instance.add_run(queued)
        late = write_cdc(
            lake, a, [Change("I", 3, {"id": 3, "name": "z", "qty": 3})], name="20991231-2359590000.parquet"
        )
        second = _tick(sensor, instance, resources, cursor=first.cursor)
        assert second.run_requests == []  # no process started for what the queued run will apply
        claims = FileLedger(warehouse).claims(a.target, [f"{late}@{lake.etag(lake.list_objects(late)[0])}"])
        assert [c.run_key for c in claims.values()] == [request.run_key]
        assert json.loads(second.cursor)["listing"]
        assert current_key(a) in request.asset_selection
