"""The whole flow: `dp up` starts moto, Dagster (UI + daemon), the demo feed and the CDC capture;
the landing sensor turns demo files into materializations, the CDC sensors turn source changes into
current-state tables; shop sales become 30-minute windows served by the store API, and a late
refund reaches the API within one automation cycle; `dp down` stops every process it started."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import pytest

from services.moto import free_port
from services.stack import dagster_pg_env, drop_dagster_db

ROOT = Path(__file__).resolve().parents[1].parent
SHOP_URL = "mysql+pymysql://root@127.0.0.1:3306"
DP = Path(sys.executable).parent / "dp"
pytestmark = pytest.mark.e2e


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dp up exited early with {proc.returncode}"
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _children(pid: int) -> set[int]:
    """Every descendant of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture
def cdc_source(tmp_path):
    """A MariaDB database with one table and a shop database of its own, and a CDC mapping of both
    (the shop's six tables as platform/catalogs/cdc/shop.yaml maps them; a replica id of its own)."""
    import pymysql
    import yaml

    from services.shop.schema import ensure_shop_schema

    database = f"e2e_cdc_{uuid.uuid4().hex[:10]}"
    shop = f"e2e_shop_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(f"CREATE TABLE `{database}`.items (id INT PRIMARY KEY, name VARCHAR(20), paid BIT(1))")
    ensure_shop_schema(SHOP_URL, shop, stores=12, products=60)
    shop_tables = yaml.safe_load((ROOT / "platform/catalogs/cdc/shop.yaml").read_text())["tables"]
    mapping = tmp_path / "cdc-mapping"
    mapping.mkdir()
    (mapping / "e2e.yaml").write_text(
        yaml.safe_dump(
            {
                "defaults": {"flush_seconds": 1},
                "clusters": [
                    {"name": "main", "local_url": "mysql+pymysql://root@127.0.0.1:3306",
                     "server_id": 50_000 + uuid.uuid4().int % 10_000}
                ],
                "tables": [{"cluster": "main", "database": database, "table": "items", "primary_key": ["id"]}]
                + [{**t, "database": shop} for t in shop_tables],
            }
        )
    )  # fmt: skip
    try:
        yield database, mapping, shop
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            cur.execute(f"DROP DATABASE IF EXISTS `{shop}`")
        admin.close()


@pytest.fixture
def instance_db(monkeypatch):
    """A database of its own for the stack's Dagster instance, dropped afterwards."""
    name = f"dagster_e2e_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DAGSTER_PG_DB", name)  # for `dp up` and this process's DagsterInstance
    yield name
    drop_dagster_db(name)


def test_stack_runs_sensors_and_stops_cleanly(tmp_path, instance_db, cdc_source, monkeypatch):
    var = tmp_path / "var"
    ui_port, moto_port, api_port = free_port(), free_port(), free_port()
    database, mapping, shop = cdc_source
    # The sample source databases live on the machine's servers, not under var: leave them alone.
    # A Redis database of the test's own: the windows an earlier stack served (same key prefix, 48 h
    # TTL) would otherwise answer for this stack's.
    import redis

    redis_url = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "PLATFORM_REDIS_URL": redis_url,
        "PLATFORM_VAR_DIR": str(var),
        "PLATFORM_DEMO_SOURCES": "0",
        "PLATFORM_CDC_MAPPING": str(mapping),
    }
    assert env["DAGSTER_PG_DB"] == instance_db
    args = [str(DP), "up", "--port", str(ui_port), "--moto-port", str(moto_port), "--demo-interval", "3",
            "--store-api-port", str(api_port)]  # fmt: skip
    log = open(tmp_path / "stack.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    started: set[int] = set()
    try:
        _wait(lambda: _port_open(ui_port), 180, "the Dagster UI", proc)
        assets = _graphql(ui_port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
        assert ["lake_ops", "landing_arrivals"] in [a["assetKey"]["path"] for a in assets]

        def daemons_healthy():
            statuses = _graphql(
                ui_port, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
            )["instance"]["daemonHealth"]["allDaemonStatuses"]
            required = {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}
            return required if "SENSOR" in required and all(required.values()) else None

        healthy = _wait(daemons_healthy, 120, "healthy daemons", proc)
        assert {"SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(healthy)

        # Demo files land every 3 s; the listing sensor must turn them into a materialization.
        for name, value in dagster_pg_env().items():  # what platform/dagster.yaml reads
            monkeypatch.setenv(name, value)
        instance = dg.DagsterInstance.from_config(str(var / "dagster_home"))
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # The render pool's limit row exists from the start, as dagster.yaml's default_limit sets it.
        from assets.reports.partitions import POOL

        # Its row, made by dp up once the webserver answers (the daemons may be healthy before).
        _wait(lambda: POOL in instance.event_log_storage.get_concurrency_keys(), 60, "the pool's row", proc)
        assert instance.event_log_storage.get_concurrency_info(POOL).limit == 2
        key = dg.AssetKey(["lake_ops", "landing_arrivals"])
        event = _wait(
            lambda: instance.get_latest_materialization_event(key), 240, "a sensor-run materialization", proc
        )
        assert event.asset_materialization.metadata["rows"].value > 0
        run = instance.get_run_by_id(event.run_id)
        assert run.tags.get("dagster/sensor_name") == "lake_ops_landing_listing"

        # Changes at the CDC source reach the current-state table through the capture, the CDC
        # sensors and a daemon-launched run.
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root", database=database, autocommit=True) as con:
            cur = con.cursor()
            cur.executemany(
                "INSERT INTO items VALUES (%s, %s, %s)", [(i, f"item {i}", i % 2) for i in range(50)]
            )
            cur.execute("UPDATE items SET name = 'renamed', paid = 1 WHERE id < 10")
            cur.execute("DELETE FROM items WHERE id >= 45")
        current = dg.AssetKey(["cdc", "main", "items", "current"])

        def loaded():
            event = instance.get_latest_materialization_event(current)
            if event is None:
                return None
            from resources.warehouse import DuckDBWarehouse

            rows = (
                DuckDBWarehouse(path=str(var / "warehouse.duckdb"), lock_timeout=120)
                .query(
                    "SELECT count(*) AS n, count(*) FILTER (WHERE name = 'renamed' AND paid) AS renamed"
                    " FROM cdc_main.items"
                )
                .to_pylist()[0]
            )
            return (event, rows) if rows == {"n": 45, "renamed": 10} else None

        cdc_event, _ = _wait(loaded, 240, "the CDC changes in the current-state table", proc)
        cdc_run = instance.get_run_by_id(cdc_event.run_id)
        assert cdc_run.tags.get("dagster/sensor_name") in {"cdc_change_listing", "cdc_change_events"}

        _store_sales_through_the_stack(instance, shop, api_port, proc)

        # The stores' read API is up, with its local token, and says what it can reach.
        _wait(lambda: _port_open(api_port), 60, "the store API", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health", timeout=10) as response:
            health = json.loads(response.read())
        assert health["redis"]["ok"] is True, health
        denied = urllib.request.Request(f"http://127.0.0.1:{api_port}/v1/stores/1/windows/latest")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(denied, timeout=10)
        assert refused.value.code == 401

        again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout

        started = _children(proc.pid)
        assert len(started) >= 4  # moto, dagster dev (webserver, daemon, code server), demo feed, capture
    finally:
        down = subprocess.run(
            [str(DP), "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        proc.wait(timeout=60)
        log.close()
    assert down.returncode == 0, down.stdout + down.stderr
    assert proc.returncode == 0, (tmp_path / "stack.log").read_text()[-3000:]
    time.sleep(1)
    assert not _port_open(ui_port) and not _port_open(moto_port)
    still_running = {
        p
        for p in started
        if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
    }
    assert still_running == set()
    assert not (var / "stack.pid").exists()


def _api(port: int, path: str) -> dict | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": "Bearer local-dev-token"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"body": json.loads(response.read()), "from": response.headers["X-Served-From"]}
    except (urllib.error.HTTPError, urllib.error.URLError):
        return None


def _automation_ticks(instance) -> list:
    [state] = [s for s in instance.all_instigator_state() if s.instigator_name == "store_sales_automation"]
    return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200)


def _store_sales_through_the_stack(instance, shop: str, api_port: int, proc) -> None:
    """Shop sales -> capture -> CDC loads -> the automation runs the closed windows -> Redis -> API;
    then a late refund of a closed window's sale is in the API after one automation cycle."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    import pymysql

    from assets.store_sales import serving
    from assets.store_sales.assets import KEY, partition_of
    from services.shop.traffic import late_refund, run_shop_traffic

    # An hour of sales (simulated 600 times faster) in the two windows that began 2 hours ago;
    # the rows are committed now, so the CDC watermark is past both windows once they are loaded.
    now = datetime.now(UTC)
    base = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0) - timedelta(hours=2)
    w1 = base
    t0 = time.monotonic()
    stats = run_shop_traffic(
        SHOP_URL, shop, orders_per_second=10, seconds=2 * 30 * 60 / 600 - 0.5, seed=11,
        cancel_share=0.1, refund_share=0.2, cancel_delay=(0.05, 0.3), refund_delay=(0.05, 0.3),
        clock=lambda: base + timedelta(seconds=(time.monotonic() - t0) * 600),
    )  # fmt: skip
    assert stats.orders > 20, stats.summary()
    top = f"/v1/windows/{serving.window_token(w1)}/top?n=100"

    def from_redis():  # the warehouse may answer first: the window is committed, then put in Redis
        answer = _api(api_port, top)
        return answer if answer and answer["from"] == "redis" else None

    first = _wait(from_redis, 300, "the first window in the store API, from Redis", proc)
    assert first["from"] == "redis" and first["body"]["stores"], first
    # The window is served before its run stores the materialization (the checks follow the publish).
    event = _wait(
        lambda: instance.get_latest_materialization_event(KEY), 120, "the window's materialization", proc
    )
    run = instance.get_run_by_id(event.run_id)
    assert run.tags.get("dagster/sensor_name") == "store_sales_automation", run.tags

    # The window's figures equal the shop's own (the API answers from Redis, never from MariaDB).
    with pymysql.connect(host="127.0.0.1", user="root", database=shop, autocommit=True) as con:
        cur = con.cursor()
        lo, hi = w1.replace(tzinfo=None), (w1 + serving.WINDOW).replace(tzinfo=None)
        cur.execute(
            "SELECT o.store_id, sum(p.amount) FROM orders o JOIN payments p ON p.order_id = o.id"
            " WHERE o.ordered_at >= %s AND o.ordered_at < %s AND o.status <> 'cancelled'"
            " AND p.status = 'captured' GROUP BY o.store_id",
            (lo, hi),
        )
        gross = {int(store): Decimal(amount) for store, amount in cur.fetchall()}
        cur.execute(
            "SELECT o.id, o.store_id FROM orders o WHERE o.status = 'paid' AND o.ordered_at >= %s"
            " AND o.ordered_at < %s ORDER BY o.id LIMIT 1",
            (lo, hi),
        )
        order_id, store_id = cur.fetchone()
    served = {s["store_id"]: s for s in first["body"]["stores"]}
    assert {k: Decimal(str(v["gross_sales"])) for k, v in served.items() if v["order_count"]} == gross

    def w1_materializations() -> list:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[partition_of(w1)]), limit=100
        ).records
        return sorted(records, key=lambda r: r.storage_id)

    before = w1_materializations()
    late_before = before[-1].asset_materialization.metadata["late_changes"].value
    old_net = Decimal(str(served[store_id]["net_sales"]))

    # A late refund of the closed window's sale: the API changes without anything asked of it.
    refunded_at = time.time()
    late_refund(SHOP_URL, shop, order_id, amount="2.50")
    window = f"/v1/stores/{store_id}/windows?start={serving.window_token(w1)}&end={serving.window_token(w1 + serving.WINDOW)}"

    def changed():
        answer = _api(api_port, window)
        if answer and Decimal(str(answer["body"]["windows"][0]["net_sales"])) == old_net - Decimal("2.50"):
            return answer
        return None

    answer = _wait(changed, 300, "the late refund in the store API", proc)
    delay = time.time() - refunded_at
    assert answer["from"] == "redis"
    # As for the first window, the API can answer before the run has stored its materialization.
    rerun = _wait(
        lambda: next((r for r in w1_materializations() if r.storage_id > before[-1].storage_id), None),
        120,
        "the re-run's materialization",
        proc,
    )
    rerun_run = instance.get_run_by_id(rerun.run_id)
    assert rerun_run.tags.get("dagster/sensor_name") == "store_sales_automation"
    # One automation cycle: the re-run was requested by the first tick to start after the CDC run
    # that loaded the refund had finished, or by an earlier one that read the loaded refund.
    refunds_key = dg.AssetKey(["cdc", "main", "shop_refunds", "current"])
    loads = instance.fetch_materializations(refunds_key, limit=50).records
    load = min((r for r in loads if r.timestamp >= refunded_at), key=lambda r: r.timestamp)
    load_end = instance.get_run_record_by_id(load.run_id).end_time
    ticks = sorted(_automation_ticks(instance), key=lambda t: t.timestamp)
    requesting = [t for t in ticks if rerun.run_id in t.run_ids]
    assert requesting, "no automation tick launched the re-run"
    # With no tick after the load's end yet, the requesting tick was an earlier one, as allowed.
    next_tick = next((t for t in ticks if t.timestamp >= load_end), None)
    if next_tick is not None:
        assert requesting[0].timestamp <= next_tick.timestamp, (requesting[0].timestamp, load_end)

    # The window's metadata counts the late changes it absorbed: the refund and its order's status
    # change (a second re-run follows if the two were loaded apart).
    def counted():
        latest = w1_materializations()[-1].asset_materialization.metadata
        return latest if latest["late_changes"].value == late_before + 2 else None

    _wait(counted, 120, "the re-run's late_changes to count the refund", proc)
    final = _api(api_port, window)
    assert final is not None
    assert final["body"]["windows"][0]["late_changes"] >= 1
    print(
        f"late refund to the API: {delay:.1f} s; the requesting tick started"
        f" {requesting[0].timestamp - load_end:+.1f} s from the refund's load"
    )
