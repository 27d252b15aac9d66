"""The whole flow: `dp up` starts moto, Dagster (UI + daemon), the demo feed and the CDC capture;
the landing sensor turns demo files into materializations, the CDC sensors turn source changes into
current-state tables; `dp down` stops every process it started."""

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
    """A MariaDB database with one table, and a CDC mapping of it (a replica id of its own)."""
    import pymysql
    import yaml

    database = f"e2e_cdc_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(f"CREATE TABLE `{database}`.items (id INT PRIMARY KEY, name VARCHAR(20), paid BIT(1))")
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
                "tables": [{"cluster": "main", "database": database, "table": "items", "primary_key": ["id"]}],
            }
        )
    )  # fmt: skip
    try:
        yield database, mapping
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
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
    database, mapping = cdc_source
    # The sample source databases live on the machine's servers, not under var: leave them alone.
    env = {
        **os.environ,
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
