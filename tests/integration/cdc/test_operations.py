"""What an operator meets, through Dagster runs on captured MariaDB changes: a column added at the
source, a retyped column that stops only its table, a poison file quarantined while the rest
loads, reported on the dashboard and by an SNS alert, and loaded by `dp cdc replay` after a fix."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from assets.cdc.checkpoint import load_checkpoint
from assets.cdc.definitions import build
from assets.cdc.dms import cdc_file_name
from assets.cdc.factory import SCHEMA_CHECK, current_key
from assets.cdc.mapping import load_mapping
from resources.lake import LocalLake
from resources.lake.paths import dms_object_key
from resources.settings import PROJECT_ROOT
from resources.warehouse import DuckDBWarehouse
from services.cdc.capture import run_capture


class Capture:
    """The capture in a thread, run until stopped."""

    def __init__(self, mapping_dir: Path, lake: LocalLake):
        self.mapping, self.lake, self.stop = load_mapping(mapping_dir), lake, threading.Event()
        self.thread = threading.Thread(
            target=run_capture, args=(self.mapping, lake), kwargs={"stop": self.stop}
        )

    def __enter__(self) -> Capture:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not all(load_checkpoint(self.lake, c) for c in ("main",)):
            assert time.monotonic() < deadline, "the capture saved no checkpoint"
            time.sleep(0.2)
        return self

    def settle(self, source) -> None:
        """Wait until the capture has passed the server's current binlog position."""
        with source.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            file, pos = cur.fetchone()[:2]
        deadline = time.monotonic() + 30
        while True:
            cp = load_checkpoint(self.lake, "main")
            if cp and (cp.log_file, cp.log_pos) >= (file, pos):
                return
            assert time.monotonic() < deadline, f"capture at {cp}, server at {file}:{pos}"
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def _load(
    defs: dg.Definitions,
    resources: dict,
    instance: dg.DagsterInstance,
    selection: dg.AssetSelection | None = None,
) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition | dg.AssetSpec)],
        selection=selection or dg.AssetSelection.groups("cdc"),
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_drift_poison_and_replay(sources, write_mapping, local_aws, tmp_path, monkeypatch):
    main = sources["main"]
    main.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(6,2), flag BIT(1))",
        "CREATE TABLE counts (id INT PRIMARY KEY, qty INT)",
    )
    tables = [
        {"cluster": "main", "table": "items", "primary_key": ["id"]},
        {"cluster": "main", "table": "counts", "primary_key": ["id"]},
    ]
    mapping_dir = write_mapping({"main": main}, tables)
    lake = LocalLake(root=str(tmp_path / "lake"))
    warehouse_path = tmp_path / "warehouse.duckdb"
    warehouse = DuckDBWarehouse(path=str(warehouse_path))
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PLATFORM_ALERTS_TOPIC", topic)
    sns, sqs = local_aws.client("sns"), local_aws.client("sqs")
    inbox = sqs.create_queue(QueueName=f"{topic}-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=sns.create_topic(Name=topic)["TopicArn"], Protocol="sqs", Endpoint=inbox_arn)
    resources = {"lake": lake, "warehouse": warehouse, "aws": local_aws}
    defs = build(str(mapping_dir))
    mapping = load_mapping(mapping_dir)
    items, counts = mapping.by_target("main.items"), mapping.by_target("main.counts")

    with dg.instance_for_test() as instance, Capture(mapping_dir, lake) as capture:
        main.execute(
            "INSERT INTO items VALUES (1, 'a', 1.50, 1), (2, 'b', 2.50, 0), (3, 'c', NULL, NULL)",
            "INSERT INTO counts VALUES (1, 10), (2, 20)",
        )
        capture.settle(main)
        # A poison file among the items' files: a DMS writer's price that does not fit decimal(6,2).
        poison = dms_object_key(
            "main", main.database, "items", datetime.now(UTC).date(), cdc_file_name(datetime.now(UTC))
        )
        body = io.BytesIO()
        pq.write_table(
            pa.table(
                {
                    "Op": ["I"],
                    "id": pa.array([9], pa.int32()),
                    "name": ["big"],
                    "price": ["12345.67"],
                    "flag": [True],
                }
            ),
            body,
        )
        lake.put_bytes(poison, body.getvalue())
        time.sleep(0.01)
        main.execute("UPDATE items SET name = 'a2' WHERE id = 1", "UPDATE counts SET qty = 11 WHERE id = 1")
        capture.settle(main)

        first = _load(defs, resources, instance)
        assert first.success
        assert (
            warehouse.query(f"SELECT name FROM {items.current_table} WHERE id = 1")["name"][0].as_py() == "a2"
        )
        assert (
            warehouse.query(f"SELECT count(*) AS n FROM {items.current_table} WHERE id = 9")["n"][0].as_py()
            == 0
        )
        quarantine = first.asset_materializations_for_node("cdc__quarantined_files")
        assert quarantine[0].metadata["per_cause"].value == {"bad_value": 1}
        status = first.asset_materializations_for_node("cdc__table_status")[0].metadata
        assert status["quarantined_files"].value == 1
        assert (
            "| main.items |" in status["status"].value
            and Path(status["page"].value.removeprefix("file://")).exists()
        )
        alerts = [
            json.loads(m["Body"])["Message"]
            for m in sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=2).get(
                "Messages", []
            )
        ]
        assert any("main/items" in a and "bad_value" in a and poison in a for a in alerts), alerts

        # A column added at the source reaches the warehouse; a retyped one stops only its table.
        main.execute(
            "ALTER TABLE items ADD COLUMN color VARCHAR(10)", "UPDATE items SET color = 'red' WHERE id = 2"
        )
        main.execute(
            "ALTER TABLE counts MODIFY qty VARCHAR(20)", "UPDATE counts SET qty = 'many' WHERE id = 2"
        )
        main.execute("INSERT INTO items (id, name, price, flag, color) VALUES (4, 'd', 4.00, 1, 'blue')")
        capture.settle(main)
        second = _load(defs, resources, instance)
        assert not second.success  # the blocking check failed
        checks = {(e.asset_key, e.check_name): e for e in second.get_asset_check_evaluations()}
        blocked = checks[(current_key(counts), SCHEMA_CHECK)]
        assert not blocked.passed and "qty" in blocked.description, blocked
        assert checks[(current_key(items), SCHEMA_CHECK)].passed
        colors = warehouse.query(f"SELECT id, color FROM {items.current_table} ORDER BY id").to_pylist()
        assert {r["id"]: r["color"] for r in colors} == {1: None, 2: "red", 3: None, 4: "blue"}
        assert warehouse.query(f"SELECT qty FROM {counts.current_table} WHERE id = 2")["qty"][0].as_py() == 20

    # The dashboard runs on its own schedule, so a blocked table does not stop it: it shows the block.
    reports = dg.AssetSelection.assets(["cdc", "quarantined_files"], ["cdc", "table_status"])
    dashboard = _load(build(str(mapping_dir)), resources, dg.DagsterInstance.ephemeral(), reports)
    status = dashboard.asset_materializations_for_node("cdc__table_status")[0].metadata
    assert status["blocked_tables"].value == 1 and "qty" in status["status"].value

    # The fix: the column is widened (a mapping override), then `dp cdc replay` loads the file.
    doc = yaml.safe_load((mapping_dir / "test.yaml").read_text())
    doc["tables"][0]["columns"] = {"price": {"type": "decimal", "precision": 10, "scale": 2}}
    (mapping_dir / "test.yaml").write_text(yaml.safe_dump(doc))
    env = {
        **__import__("os").environ,
        "PLATFORM_LAKE_DIR": str(tmp_path / "lake"),
        "PLATFORM_WAREHOUSE_PATH": str(warehouse_path),
        "PLATFORM_VAR_DIR": str(tmp_path / "var"),
    }
    replay = subprocess.run(
        [sys.executable, "-m", "services.cli", "cdc", "replay", "main.items", "--mapping", str(mapping_dir)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "released 1 files; applied 1" in replay.stdout, replay.stdout
    row = warehouse.query(
        f"SELECT name, CAST(price AS VARCHAR) AS price FROM {items.current_table} WHERE id = 9"
    ).to_pylist()
    assert row == [{"name": "big", "price": "12345.67"}]
