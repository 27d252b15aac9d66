"""The report snapshot flow on real parts: requests on the moto server's SQS, snapshot state in its
DynamoDB, the report_requests and report_snapshot_sweep sensors through build_sensor_context(),
renders through materialize() on DuckDB and a local lake, and a render worker killed in its own
process. Expected figures come from the rows the test writes through the store-sales domain's own
code, not from the renderer."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.reports.partitions import SNAPSHOT
from assets.reports.runs import snapshot_tag
from assets.reports.versions import NEVER
from resources.aws import AwsClients
from resources.lake import LocalLake
from resources.lake.paths import snapshot_prefix
from resources.settings import PROJECT_ROOT
from resources.warehouse import DuckDBWarehouse
from services.aws_bootstrap import ensure_queue
from services.snapshots.ids import request_id_for_invalid
from services.snapshots.messages import request_body
from services.snapshots.store import FAILED, READY, RENDERING, SnapshotStore
from tests.integration.reports.flow import STORE_SALES, apply, execute, report_defs, snapshots_of
from tests.integration.reports.flow import sensor as sensor_def
from tests.integration.reports.test_render import write_windows
from tests.support.waiting import wait_for

STORES = 50
SLOW_REPORT = """
id: slow_spin
title: A slow query
reads: [store_sales_30min]
sql: |
  SELECT s.n AS spins, count(*) AS counted FROM spin AS s, range(s.n) GROUP BY 1
chart:
  mark: bar
  encoding:
    x: {field: spins, type: nominal}
    y: {field: counted, type: quantitative}
formats: [png, csv]
"""
BROKEN_REPORT = """
id: broken_sales
title: A report whose query names a missing table
reads: [store_sales_30min]
sql: |
  SELECT store_id, net_sales FROM store_sales.no_such_table
chart:
  mark: bar
  encoding:
    x: {field: store_id, type: nominal}
    y: {field: net_sales, type: quantitative}
formats: [png]
"""


@pytest.fixture
def flow(tmp_path: Path, local_aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:10]
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(PROJECT_ROOT / "platform" / "reports" / "store_sales_windows.yaml", reports)
    (reports / "slow_spin.yaml").write_text(SLOW_REPORT)
    (reports / "broken_sales.yaml").write_text(BROKEN_REPORT)
    env = {
        "PLATFORM_SNAPSHOT_QUEUE": f"snapshot-requests-{suffix}",
        "PLATFORM_SNAPSHOT_TABLE": f"snapshots-{suffix}",
        "PLATFORM_REPORTS_DIR": str(reports),
        "PLATFORM_SNAPSHOT_LEASE_SECONDS": "3",
        "PLATFORM_SNAPSHOT_MAX_ATTEMPTS": "3",
        "PLATFORM_SNAPSHOT_BACKOFF_SECONDS": "0.2",
        "PLATFORM_SNAPSHOT_BATCH_SIZE": "8",
        "PLATFORM_SNAPSHOT_LISTEN_SECONDS": "0",  # one receive per tick (listening: its own test)
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    queue_url = ensure_queue(local_aws, env["PLATFORM_SNAPSHOT_QUEUE"])
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    resources = {"aws": local_aws, "lake": LocalLake(root=str(tmp_path / "lake")), "warehouse": warehouse}
    store = SnapshotStore.from_resources(local_aws)
    store.ensure_table()
    return {"resources": resources, "queue_url": queue_url, "store": store, "defs": report_defs()}


def _send(aws: AwsClients, queue_url: str, body: str) -> str:
    return aws.client("sqs").send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"]


def _tick(flow: dict[str, Any], instance: dg.DagsterInstance, sensor: str) -> dg.SensorResult | dg.SkipReason:
    definition = sensor_def(flow["defs"], sensor)
    context = dg.build_sensor_context(instance=instance, resources={"aws": flow["resources"]["aws"]})
    return definition(context)


def _drain(flow: dict[str, Any], instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """Tick report_requests until the queue is empty; the run requests, one per run key (as the
    daemon launches a run key once)."""
    runs: dict[str, dg.RunRequest] = {}
    for _ in range(20):
        result = _tick(flow, instance, "report_requests")
        if isinstance(result, dg.SkipReason) and "no messages" in (result.skip_message or ""):
            return list(runs.values())
        for request in apply(instance, result):
            runs.setdefault(request.run_key or "", request)
    raise AssertionError("the request queue did not drain in 20 ticks")


def _snapshot_files(flow: dict[str, Any], snapshot_id: str) -> dict[str, bytes]:
    snap = flow["store"].get(snapshot_id)
    assert snap is not None and snap.state == READY, snap
    lake: LocalLake = flow["resources"]["lake"]
    prefix = snapshot_prefix(snap.report_id, snapshot_id)
    assert snap.uri == lake.uri(prefix)
    return {o.key.rsplit("/", 1)[1]: lake.get_bytes(o.key) for o in lake.list_objects(prefix)}


def money(value: float) -> str:
    return f"{value:.2f}"


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def _materializations(instance: dg.DagsterInstance) -> list[str]:
    records = instance.fetch_materializations(SNAPSHOT, limit=10_000).records
    return [r.partition_key or "" for r in records]


def test_200_concurrent_requests_for_50_snapshots_render_50_then_reuse_and_rerender_on_new_data(flow):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    warehouse: DuckDBWarehouse = resources["warehouse"]
    day = datetime.now(UTC).date() - timedelta(days=1)
    window = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    net = {store_id: money(100 + store_id * 3) for store_id in range(1, STORES + 1)}
    write_windows(warehouse, window, {s: (net[s], "0", 2) for s in net})

    # 200 requests, 4 per store, sent from 16 threads: the parameters spelled differently (int or
    # string, keys in either order) and the first request of each store carrying its own id.
    def body(store_id: int, copy: int) -> str:
        params: dict[str, Any] = {"day": day.isoformat(), "store_id": store_id if copy % 2 else str(store_id)}
        if copy == 0:
            return request_body("store_sales_windows", params, request_id=f"client-{store_id}")
        ordered = dict(reversed(list(params.items()))) if copy == 3 else params
        return json.dumps({"params": ordered, "report": "store_sales_windows"})

    sent = [(s, c) for c in range(4) for s in range(1, STORES + 1)]
    with ThreadPoolExecutor(16) as pool:
        message_ids = list(pool.map(lambda sc: _send(aws, flow["queue_url"], body(*sc)), sent))
    request_ids = [f"client-{s}" if c == 0 else mid for (s, c), mid in zip(sent, message_ids, strict=True)]

    with dg.instance_for_test() as instance:
        runs = _drain(flow, instance)
        # Every distinct snapshot in exactly one run, whatever the duplicates; the 50 in runs of at
        # most 8 (PLATFORM_SNAPSHOT_BATCH_SIZE): 7 runs, of 8 and 7.
        in_runs = [s for request in runs for s in snapshots_of(request)]
        assert len(in_runs) == len(set(in_runs)) == STORES
        assert sorted(len(snapshots_of(r)) for r in runs) == [7] * 6 + [8]
        for request in runs:
            assert all(request.tags[snapshot_tag(s)] == "render" for s in snapshots_of(request))
            result = execute(flow["defs"], instance, request, resources)
            assert result.success
            events = result.get_asset_materialization_events()
            # One materialization per snapshot of the run, each of its own partition.
            assert sorted(e.partition or "" for e in events) == sorted(snapshots_of(request))
            for event in events:
                meta = {k: v.value for k, v in event.materialization.metadata.items()}
                assert meta["snapshot_id"] == event.partition
                assert meta["data_changed_since_request"] is False
                assert (
                    meta["data_versions_at_render"] == meta["data_versions"] == {"store_sales_30min": NEVER}
                )
        # A duplicate run of a READY snapshot renders nothing and succeeds.
        again = execute(flow["defs"], instance, runs[0], resources)
        assert again.success and not again.get_asset_materialization_events()
        assert Counter(_materializations(instance)) == dict.fromkeys(in_runs, 1)

        snapshots: dict[int, str] = {}
        for (store_id, _), request_id in zip(sent, request_ids, strict=True):
            item = store.get_request(request_id)
            assert item is not None and item["state"] == READY, (request_id, item)
            assert snapshots.setdefault(store_id, item["snapshot_id"]) == item["snapshot_id"]
        assert len(set(snapshots.values())) == STORES
        for store_id, snapshot_id in snapshots.items():
            snap = store.get(snapshot_id)
            assert snap is not None and snap.attempts == 1 and snap.rows == 1
            [row] = _csv_rows(_snapshot_files(flow, snapshot_id)["store_sales_windows.csv"])
            assert (int(row["store_id"]), row["net_sales"]) == (store_id, net[store_id])

        # The same request over unchanged data is answered by reuse: no run.
        _send(
            aws,
            flow["queue_url"],
            request_body("store_sales_windows", {"day": day, "store_id": 7}, "reuse-7"),
        )
        assert _drain(flow, instance) == []
        assert store.get_request("reuse-7")["snapshot_id"] == snapshots[7]

        # Through the HTTP API with the platform's instance, the same request is answered at once
        # (200 READY, no message sent) once the sweep has published what the report reads.
        from fastapi.testclient import TestClient

        from services.snapshots.api import create_app

        api = TestClient(create_app(aws, "t0ken", instance=instance))
        auth = {"Authorization": "Bearer t0ken"}
        post = {"report": "store_sales_windows", "params": {"day": day.isoformat(), "store_id": 7}}
        assert api.post("/v1/snapshots", json=post, headers=auth).status_code == 202  # reads unknown yet
        assert _drain(flow, instance) == []  # (that one was queued and answered by the sensor)
        _tick(flow, instance, "report_snapshot_sweep")
        answer = api.post("/v1/snapshots", json={**post, "request_id": "api-7"}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == READY and answer.json()["snapshot_id"] == snapshots[7]
        assert answer.json()["files"]["png"].endswith("/store_sales_windows.png")
        assert store.get_request("api-7")["state"] == READY
        # The answer (built from the write, not read back) is what a poll of the request reads.
        polled = api.get("/v1/requests/api-7", headers=auth).json()
        assert {k: v for k, v in answer.json().items() if k != "poll"} == {
            k: v for k, v in polled.items() if k in answer.json()
        }
        assert set(answer.json()) - {"poll"} <= set(polled)
        assert _drain(flow, instance) == []  # nothing was queued for it

        # New data upstream (a late refund re-aggregates the window; store_sales_30min materialized
        # again): the same request renders a new snapshot with the new figures.
        write_windows(warehouse, window, {s: (net[s], "10.00" if s == 7 else "0", 2) for s in net})
        instance.report_runless_asset_event(
            dg.AssetMaterialization(STORE_SALES, partition=window.strftime("%Y-%m-%d-%H:%M"))
        )
        _send(
            aws, flow["queue_url"], request_body("store_sales_windows", {"day": day, "store_id": 7}, "new-7")
        )
        queued = api.post("/v1/snapshots", json={**post, "request_id": "api-new-7"}, headers=auth)
        assert queued.status_code == 202  # the data changed: not READY, so queued
        [rerun] = _drain(flow, instance)
        assert rerun.partition_key != snapshots[7]
        # Another materialization lands between the request and its render: the snapshot keeps the
        # versions its id names, and its metadata says the render read newer data.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(STORE_SALES, partition=window.strftime("%Y-%m-%d-%H:%M"))
        )
        rendered = execute(flow["defs"], instance, rerun, resources)
        assert rendered.success
        [event] = rendered.get_asset_materialization_events()
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        assert meta["data_changed_since_request"] is True
        assert int(meta["data_versions_at_render"]["store_sales_30min"]) > int(
            meta["data_versions"]["store_sales_30min"]
        )
        for request_id in ("new-7", "api-new-7"):
            item = store.get_request(request_id)
            assert item["state"] == READY and item["snapshot_id"] == rerun.partition_key
        [row] = _csv_rows(_snapshot_files(flow, rerun.partition_key)["store_sales_windows.csv"])
        assert row["net_sales"] == money(100 + 7 * 3 - 10)
        assert len(_materializations(instance)) == STORES + 1


def test_unusable_requests_are_answered_failed_with_the_reason(flow):
    aws, store = flow["resources"]["aws"], flow["store"]
    not_json = "{report: fleet"
    _send(aws, flow["queue_url"], not_json)
    _send(aws, flow["queue_url"], request_body("no_such_report", {}, "r-unknown"))
    _send(aws, flow["queue_url"], request_body("store_sales_windows", {"day": "yesterday"}, "r-bad-day"))
    _send(aws, flow["queue_url"], request_body("store_sales_windows", {"store_id": 3}, "r-no-day"))
    with dg.instance_for_test() as instance:
        assert _drain(flow, instance) == []
    reasons = {
        "not json": store.get_request(request_id_for_invalid(not_json)),
        "unknown": store.get_request("r-unknown"),
        "bad day": store.get_request("r-bad-day"),
        "no day": store.get_request("r-no-day"),
    }
    assert all(r is not None and r["state"] == FAILED for r in reasons.values()), reasons
    assert "not JSON" in reasons["not json"]["error"]
    assert "unknown report 'no_such_report'" in reasons["unknown"]["error"]
    assert "'day'" in reasons["bad day"]["error"] and "yesterday" in reasons["bad day"]["error"]
    assert "'day' is required" in reasons["no day"]["error"]
    # Answered, so deleted: nothing left on the queue or moved to its dead-letter queue.
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=flow["queue_url"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"


def test_a_broken_query_retries_with_backoff_then_stays_failed_with_its_reason(flow):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    _send(aws, flow["queue_url"], request_body("broken_sales", {}, "r-broken"))
    with dg.instance_for_test() as instance:
        [first] = _drain(flow, instance)
        snapshot_id = first.partition_key
        outcomes, retries_at = [execute(flow["defs"], instance, first, resources)], []
        for _ in range(5):
            snap = store.get(snapshot_id)
            if snap.state == FAILED:
                break
            retries_at.append(snap.retry_at - snap.updated_at)  # the backoff chosen at the failure
            time.sleep(max(0.0, (snap.retry_at - datetime.now(UTC)).total_seconds()) + 0.05)
            runs = apply(instance, _tick(flow, instance, "report_snapshot_sweep"))
            assert [r.partition_key for r in runs] == [snapshot_id]
            outcomes.append(execute(flow["defs"], instance, runs[0], resources))
        assert [o.success for o in outcomes] == [False, False, False]
        snap = store.get(snapshot_id)
        assert snap.state == FAILED and snap.attempts == 3
        assert "no_such_table" in snap.error and "broken_sales" in snap.error
        # The backoff doubles (0.2 s, then 0.4 s), measured from each failure, not from run times.
        assert [round(b.total_seconds(), 2) for b in retries_at] == [0.2, 0.4]
        request = store.get_request("r-broken")
        assert request["state"] == FAILED and "no_such_table" in request["error"]
        assert isinstance(_tick(flow, instance, "report_snapshot_sweep"), dg.SkipReason)
        assert _materializations(instance) == []


def test_a_render_worker_killed_mid_render_is_taken_over_after_its_lease(flow, tmp_path):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    warehouse: DuckDBWarehouse = resources["warehouse"]
    warehouse.execute("CREATE TABLE spin AS SELECT 2000000000::BIGINT AS n")  # minutes of counting
    _send(aws, flow["queue_url"], request_body("slow_spin", {}, "r-slow"))
    with dg.instance_for_test() as instance:
        [run] = _drain(flow, instance)
        snapshot_id = run.partition_key
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.reports.worker", snapshot_id,
             str(tmp_path / "lake"), warehouse.path or ""],
            cwd=PROJECT_ROOT,
        )  # fmt: skip
        try:
            wait_for(
                lambda: store.get(snapshot_id).state == RENDERING, timeout=120, what="the worker's claim"
            )
            held = store.get(snapshot_id)
            # While the worker holds the lease, another run of the snapshot leaves it alone.
            other = execute(flow["defs"], instance, run, resources)
            assert other.success and not other.get_asset_materialization_events()
            assert isinstance(_tick(flow, instance, "report_snapshot_sweep"), dg.SkipReason)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
        killed_at = datetime.now(UTC)
        assert store.get(snapshot_id).state == RENDERING  # the dead worker still "holds" it...

        warehouse.execute("UPDATE spin SET n = 1000")  # (the next attempt's query is quick)
        runs: list[dg.RunRequest] = []
        deadline = time.monotonic() + 60
        while not runs and time.monotonic() < deadline:  # ...until its lease runs out
            runs = apply(instance, _tick(flow, instance, "report_snapshot_sweep"))
            time.sleep(0.5)
        assert [r.partition_key for r in runs] == [snapshot_id]
        assert datetime.now(UTC) >= held.lease_until and held.lease_until > killed_at - timedelta(seconds=3)
        result = execute(flow["defs"], instance, runs[0], resources)
        assert result.success
        snap = store.get(snapshot_id)
        assert snap.state == READY and snap.attempts == 2 and snap.lease_owner is None
        [row] = _csv_rows(_snapshot_files(flow, snapshot_id)["slow_spin.csv"])
        assert row == {"spins": "1000", "counted": "1000"}
        assert Counter(_materializations(instance)) == {snapshot_id: 1}
        assert store.get_request("r-slow")["state"] == READY


def test_one_failed_snapshot_of_a_run_does_not_stop_the_others(flow):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    day = datetime.now(UTC).date() - timedelta(days=1)
    window = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    write_windows(resources["warehouse"], window, {1: ("10.00", "0", 1), 2: ("20.00", "0", 1)})
    _send(aws, flow["queue_url"], request_body("broken_sales", {}, "r-broken"))
    for store_id in (1, 2):
        _send(
            aws,
            flow["queue_url"],
            request_body("store_sales_windows", {"day": day, "store_id": store_id}, f"r-{store_id}"),
        )
    with dg.instance_for_test() as instance:
        [run] = _drain(flow, instance)  # three snapshots, one run
        batch = snapshots_of(run)
        broken = store.get_request("r-broken")["snapshot_id"]
        assert len(batch) == 3 and broken in batch
        result = execute(flow["defs"], instance, run, resources)
        assert not result.success  # the run says a snapshot failed...
        failure = result.failure_data_for_node("reports__report_snapshot")
        assert failure is not None and "1 of 3 snapshots failed" in failure.error.message
        assert broken in failure.error.message and "no_such_table" in failure.error.message
        # ...and the other two were rendered and materialized all the same.
        assert sorted(_materializations(instance)) == sorted(set(batch) - {broken})
        for store_id in (1, 2):
            request = store.get_request(f"r-{store_id}")
            assert request["state"] == READY
            [row] = _csv_rows(_snapshot_files(flow, request["snapshot_id"])["store_sales_windows.csv"])
            assert row["net_sales"] == money(10 * store_id)
        snap = store.get(broken)
        assert snap.state == "REQUESTED" and snap.attempts == 1 and "no_such_table" in (snap.last_error or "")
        # The sweep asks for the failed one alone once its backoff is over.
        time.sleep(max(0.0, (snap.retry_at - datetime.now(UTC)).total_seconds()) + 0.05)
        runs = apply(instance, _tick(flow, instance, "report_snapshot_sweep"))
        assert [snapshots_of(r) for r in runs] == [[broken]]


def test_a_listening_tick_answers_reuse_as_requests_arrive_and_ends_soon_after_new_work(flow, monkeypatch):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    day = datetime.now(UTC).date() - timedelta(days=1)
    window = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    write_windows(resources["warehouse"], window, {1: ("10.00", "0", 1), 2: ("20.00", "0", 1)})
    _send(aws, flow["queue_url"], request_body("store_sales_windows", {"day": day, "store_id": 1}, "first"))
    with dg.instance_for_test() as instance:
        [run] = _drain(flow, instance)
        assert execute(flow["defs"], instance, run, resources).success
        monkeypatch.setenv("PLATFORM_SNAPSHOT_LISTEN_SECONDS", "20")
        answered: dict[str, float] = {}

        def send_later() -> None:
            """During the tick: a request for the READY snapshot, then one for a new snapshot."""
            time.sleep(1.0)
            _send(
                aws,
                flow["queue_url"],
                request_body("store_sales_windows", {"day": day, "store_id": 1}, "again"),
            )
            sent = time.monotonic()
            wait_for(
                lambda: (store.get_request("again") or {}).get("state") == READY, timeout=10, what="reuse"
            )
            answered["again"] = time.monotonic() - sent
            _send(
                aws,
                flow["queue_url"],
                request_body("store_sales_windows", {"day": day, "store_id": 2}, "new"),
            )

        with ThreadPoolExecutor(1) as pool:
            later = pool.submit(send_later)
            started = time.monotonic()
            result = _tick(flow, instance, "report_requests")
            ended = time.monotonic()
            later.result()
        # The reuse was answered while the tick listened, before it returned...
        assert store.get_request("again")["snapshot_id"] == store.get_request("first")["snapshot_id"]
        assert answered["again"] < ended
        # ...and the new snapshot, which needs a run, ended the tick long before its 20 s were up.
        runs = apply(instance, result)
        assert [snapshots_of(r) for r in runs] == [[store.get_request("new")["snapshot_id"]]]
        assert ended - started < 20
        # An empty queue: the tick listens for its whole window, then skips.
        monkeypatch.setenv("PLATFORM_SNAPSHOT_LISTEN_SECONDS", "2")
        started = time.monotonic()
        assert isinstance(_tick(flow, instance, "report_requests"), dg.SkipReason)
        assert time.monotonic() - started >= 2


def test_an_edited_report_is_rendered_again_over_unchanged_data(flow, tmp_path):
    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    day = datetime.now(UTC).date() - timedelta(days=1)
    window = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    write_windows(resources["warehouse"], window, {3: ("30.00", "0", 1)})
    params = {"day": day, "store_id": 3}
    _send(aws, flow["queue_url"], request_body("store_sales_windows", params, "before-edit"))
    with dg.instance_for_test() as instance:
        [run] = _drain(flow, instance)
        assert execute(flow["defs"], instance, run, resources).success
        before = store.get_request("before-edit")["snapshot_id"]
        _send(aws, flow["queue_url"], request_body("store_sales_windows", params, "unchanged"))
        assert _drain(flow, instance) == []  # the same definition: reused
        assert store.get_request("unchanged")["snapshot_id"] == before

        # The report's chart is edited (the code location reloads its catalog): same data, same
        # parameters, but a new snapshot is rendered, and the old one stays READY as it was.
        path = Path(os.environ["PLATFORM_REPORTS_DIR"]) / "store_sales_windows.yaml"
        path.write_text(
            path.read_text().replace("title: Store sales per 30-minute window", "title: Net sales")
        )
        flow["defs"] = report_defs()
        _send(aws, flow["queue_url"], request_body("store_sales_windows", params, "after-edit"))
        [rerun] = _drain(flow, instance)
        assert execute(flow["defs"], instance, rerun, resources).success
        after = store.get_request("after-edit")
        assert after["state"] == READY and after["snapshot_id"] != before
        assert store.get(before).state == READY
        assert Counter(_materializations(instance)) == {before: 1, after["snapshot_id"]: 1}


def test_a_render_run_that_died_mid_batch_is_made_good_by_the_sweep(flow, monkeypatch):
    from dagster._core.test_utils import create_run_for_test

    aws, store, resources = flow["resources"]["aws"], flow["store"], flow["resources"]
    monkeypatch.setenv("PLATFORM_SNAPSHOT_REQUEST_GRACE_SECONDS", "1")
    day = datetime.now(UTC).date() - timedelta(days=1)
    window = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    write_windows(resources["warehouse"], window, {s: (f"{s}0.00", "0", 1) for s in (1, 2, 3)})
    for store_id in (1, 2, 3):
        _send(
            aws,
            flow["queue_url"],
            request_body("store_sales_windows", {"day": day, "store_id": store_id}, f"r{store_id}"),
        )
    with dg.instance_for_test() as instance:
        [run] = _drain(flow, instance)
        first, *rest = snapshots_of(run)
        assert len(rest) == 2
        # The run started, claimed its first snapshot, and its process died (the record stays STARTED
        # until run monitoring fails it); the other two were never claimed.
        dead = create_run_for_test(
            instance, job_name="__ASSET_JOB", tags=dict(run.tags), status=dg.DagsterRunStatus.STARTED
        )
        assert store.claim(first, dead.run_id, lease_seconds=3).won
        time.sleep(1.2)  # past the grace a fresh request gets before the sweep may think its run lost
        assert isinstance(_tick(flow, instance, "report_snapshot_sweep"), dg.SkipReason)  # live: left alone
        instance.report_run_failed(dead)  # what run monitoring records for a run whose process died
        runs = apply(instance, _tick(flow, instance, "report_snapshot_sweep"))
        assert sorted(s for r in runs for s in snapshots_of(r)) == sorted(rest)  # the claimed one: leased
        for request in runs:
            assert execute(flow["defs"], instance, request, resources).success
        assert all(store.get(s).state == READY for s in rest)
        assert store.get(first).state == RENDERING
        time.sleep(max(0.0, (store.get(first).lease_until - datetime.now(UTC)).total_seconds()) + 0.1)
        [retaken] = apply(instance, _tick(flow, instance, "report_snapshot_sweep"))
        assert snapshots_of(retaken) == [first]
        assert execute(flow["defs"], instance, retaken, resources).success
        snap = store.get(first)
        assert snap.state == READY and snap.attempts == 2
        assert Counter(_materializations(instance)) == dict.fromkeys([first, *rest], 1)
        for store_id in (1, 2, 3):
            request = store.get_request(f"r{store_id}")
            assert request["state"] == READY
            [row] = _csv_rows(_snapshot_files(flow, request["snapshot_id"])["store_sales_windows.csv"])
            assert row["net_sales"] == money(10 * store_id)
