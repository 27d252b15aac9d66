"""The CDC flow end to end, on both MariaDB servers: source changes -> capture (SIGKILLed and
restarted) -> DMS files in an S3 lake on moto -> S3 events through SNS to SQS (one delivered
twice) -> the CDC events sensor -> Dagster runs of the load steps -> history and current state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assets.cdc.definitions import build
from assets.cdc.factory import current_key, landed_key
from assets.cdc.mapping import load_mapping
from assets.cdc.reconcile import reconcile
from assets.cdc.sensors import events_sensor
from resources.lake import S3Lake
from resources.settings import PROJECT_ROOT
from resources.warehouse import DuckDBWarehouse
from services.aws_bootstrap import ensure_bucket_fanout
from services.cdc.capture import IDLE_CHECKPOINT_SECONDS
from tests.support.waiting import wait_for

RUN_KEY_TAG = "dagster/run_key"

MAIN_DDL = [
    """CREATE TABLE accounts (
        id BIGINT PRIMARY KEY, name VARCHAR(64), active BIT(1), vip TINYINT(1), balance DECIMAL(18,4),
        opened DATETIME(6), birthday DATE, profile JSON, note TEXT NULL)""",
    """CREATE TABLE transfers (
        account_id BIGINT, seq INT, amount DECIMAL(12,2), at DATETIME(6), memo VARCHAR(40) NULL,
        PRIMARY KEY (account_id, seq))""",
]
SECOND_DDL = [
    """CREATE TABLE stock (sku VARCHAR(32) PRIMARY KEY, qty INT, price DECIMAL(10,2),
        flags BIT(1) NULL, updated DATETIME(6), attrs JSON NULL)""",
]


def _start_capture(mapping_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cdc.capture", "--mapping", str(mapping_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def _phase(sources, n: int, offset: int) -> dict[str, dict[str, int]]:
    """Inserts, updates (several per key within a second), deletes, NULLs; the ops made per table."""
    made = {
        "accounts": {"I": 0, "U": 0, "D": 0},
        "transfers": {"I": 0, "U": 0, "D": 0},
        "stock": {"I": 0, "U": 0, "D": 0},
    }
    main, second = sources["main"], sources["second"]
    with main.connect() as conn, conn.cursor() as cur:
        for i in range(offset, offset + n):
            cur.execute(
                "INSERT INTO accounts VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (i, f"name {i} é", i % 2, i % 3 == 0, f"{i}.{i % 10000:04d}", f"2026-11-2{i % 10} 10:11:12.{i:06d}"[:26],
                 "1990-02-28", json.dumps({"i": i, "tags": ["a", "b"], "nested": {"k": None}}), None if i % 4 else "memo"),
            )  # fmt: skip
            made["accounts"]["I"] += 1
            cur.execute(
                "INSERT INTO transfers VALUES (%s, 1, %s, NOW(6), NULL), (%s, 2, -5.25, NOW(6), 'x')",
                (i, i, i),
            )
            made["transfers"]["I"] += 2
        # Three updates of one key in one transaction (one second): the last one wins.
        cur.execute("BEGIN")
        for v in ("1.0000", "2.0000", "3.5000"):
            cur.execute("UPDATE accounts SET balance = %s, active = NOT active WHERE id = %s", (v, offset))
            made["accounts"]["U"] += 1
        cur.execute("COMMIT")
        cur.execute(
            "UPDATE accounts SET note = 'bulk', vip = 1 WHERE id BETWEEN %s AND %s", (offset + 1, offset + 10)
        )
        made["accounts"]["U"] += 10
        cur.execute("DELETE FROM accounts WHERE id BETWEEN %s AND %s", (offset + 11, offset + 15))
        made["accounts"]["D"] += 5
        cur.execute(
            "UPDATE transfers SET memo = NULL, amount = amount + 1 WHERE account_id = %s", (offset + 20,)
        )
        made["transfers"]["U"] += 2
        cur.execute("DELETE FROM transfers WHERE account_id = %s AND seq = 2", (offset + 21,))
        made["transfers"]["D"] += 1
    with second.connect() as conn, conn.cursor() as cur:
        rows = [
            (f"sku-{i}", i, f"{i % 500}.99", i % 2 if i % 5 else None, json.dumps([i]) if i % 3 else None)
            for i in range(offset, offset + n)
        ]
        cur.executemany("INSERT INTO stock VALUES (%s, %s, %s, %s, NOW(6), %s)", rows)
        made["stock"]["I"] += n
        cur.execute(
            "UPDATE stock SET qty = qty - 1, flags = 1 WHERE sku IN (%s, %s)",
            (f"sku-{offset}", f"sku-{offset + 1}"),
        )
        made["stock"]["U"] += 2
        cur.execute("DELETE FROM stock WHERE sku = %s", (f"sku-{offset + 2}",))
        made["stock"]["D"] += 1
    return made


def _add(total: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for table, ops in more.items():
        for op, n in ops.items():
            total.setdefault(table, {}).setdefault(op, 0)
            total[table][op] += n


@pytest.mark.timeout(600)
def test_changes_on_two_servers_reach_history_and_current_state_exactly_once(
    sources, write_mapping, local_aws, tmp_path, monkeypatch
):
    for ddl, src in ((MAIN_DDL, sources["main"]), (SECOND_DDL, sources["second"])):
        src.execute(*ddl)
    mapping_dir = write_mapping(
        sources,
        [
            {
                "cluster": "main",
                "table": "accounts",
                "primary_key": ["id"],
                "columns": {"vip": {"type": "boolean"}},
            },
            {"cluster": "main", "table": "transfers", "primary_key": ["account_id", "seq"]},
            {"cluster": "second", "table": "stock", "primary_key": ["sku"]},
        ],
    )
    mapping = load_mapping(mapping_dir)
    tables = mapping.enabled

    bucket = f"cdc-e2e-{uuid.uuid4().hex[:8]}"
    queue = f"cdc-e2e-{uuid.uuid4().hex[:8]}"
    ensure_bucket_fanout(local_aws, bucket, f"{queue}-topic", [queue])
    monkeypatch.setenv("PLATFORM_CDC_QUEUE", queue)
    lake = S3Lake(aws=local_aws, bucket=bucket)
    warehouse = DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"))
    env = dict(os.environ)
    env.update(
        PLATFORM_PROFILE="local-s3", PLATFORM_LAKE_BUCKET=bucket, PLATFORM_VAR_DIR=str(tmp_path / "var")
    )

    # The capture starts, the first changes flow, and it is killed without warning mid-stream.
    capture = _start_capture(mapping_dir, env, tmp_path / "capture.log")
    made: dict[str, dict[str, int]] = {}
    try:
        wait_for(lambda: lake.exists("landing/cdc/main/_capture_checkpoint.json")
                 and lake.exists("landing/cdc/second/_capture_checkpoint.json"), 30, "the capture's first checkpoints")  # fmt: skip
        _add(made, _phase(sources, 120, 1_000))
        wait_for(lambda: len(lake.list_objects("landing/cdc/")) >= 3, 30, "the first change files")
        _add(made, _phase(sources, 60, 2_000))
        capture.send_signal(signal.SIGKILL)
        capture.wait(10)
        _add(made, _phase(sources, 60, 3_000))  # while the capture is down
        capture = _start_capture(mapping_dir, env, tmp_path / "capture.log")
        _add(made, _phase(sources, 60, 4_000))
        with sources["main"].connect() as conn, conn.cursor() as cur:  # a position to wait for
            cur.execute("SHOW MASTER STATUS")
            main_file, main_pos = cur.fetchone()[:2]
        wait_for(
            lambda: json.loads(lake.get_bytes("landing/cdc/main/_capture_checkpoint.json"))["log_pos"] >= main_pos
            or json.loads(lake.get_bytes("landing/cdc/main/_capture_checkpoint.json"))["log_file"] != main_file,
            60, "the restarted capture to pass the last change",
        )  # fmt: skip
        time.sleep(2)  # the second server's last flush
    finally:
        capture.send_signal(signal.SIGTERM)
        capture.wait(30)
    assert capture.returncode == 0, (tmp_path / "capture.log").read_text()[-3000:]

    # One S3 event delivered twice (S3 delivers at least once).
    sqs = local_aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=0)["Messages"][0]
    sqs.send_message(QueueUrl=url, MessageBody=first["Body"])

    defs = build(str(mapping_dir))
    assets = [
        a
        for a in defs.assets or []
        if not isinstance(a, dg.AssetSpec) or a.key in {landed_key(t) for t in tables}
    ]
    sensor = events_sensor(mapping)
    resources = {"lake": lake, "warehouse": warehouse, "aws": local_aws}
    runs = 0
    landed_events: list = []
    with dg.instance_for_test() as instance:
        for _ in range(20):
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = sensor(context)
            requests = result.run_requests if isinstance(result, dg.SensorResult) else []
            if isinstance(result, dg.SensorResult):
                landed_events += result.asset_events
            for request in requests:
                outcome = dg.materialize(
                    assets,
                    selection=request.asset_selection,
                    instance=instance,
                    tags={RUN_KEY_TAG: request.run_key, **request.tags},
                    resources=resources,
                )
                assert outcome.success
                runs += 1
            attrs = sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if (
                not requests
                and int(attrs["ApproximateNumberOfMessages"]) == 0
                and int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0
            ):
                break
            time.sleep(0.5)
        # Every message was deleted once its files were applied; none went to the dead-letter queue.
        dlq = sqs.get_queue_url(QueueName=f"{queue}-dlq")["QueueUrl"]
        assert (
            sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
            == "0"
        )
    # The sensor records each table's landed files as a materialization of its daily `landed` asset.
    assert {e.asset_key for e in landed_events} == {landed_key(t) for t in tables}
    assert all(e.partition and e.metadata["files"].value >= 1 for e in landed_events)
    assert 1 <= runs <= 10  # all tables with new files in a tick load in one run

    for table in tables:
        # The current state equals the source row by row (per-row hashes joined on the key).
        # Other schemas' traffic on the same server (a running `make run`) moves the checkpoint past it
        # only every IDLE_CHECKPOINT_SECONDS: wait longer than that for the snapshot position.
        check = reconcile(lake, warehouse, table, wait_seconds=IDLE_CHECKPOINT_SECONDS + 5)
        assert check.caught_up, table.target
        assert (check.source_rows, check.differing, check.missing, check.extra) == (check.matching, 0, 0, 0), (
            table.target, check.metadata()
        )  # fmt: skip
        assert check.source_rows > 0
        # Every change is in the history exactly once, whatever the capture wrote twice.
        ops = warehouse.query(
            f"SELECT _op, count(*) AS n, count(DISTINCT _change_seq) AS d FROM {table.history_table} GROUP BY _op"
        ).to_pylist()
        by_op = {r["_op"]: r["n"] for r in ops}
        assert all(r["n"] == r["d"] for r in ops), ops
        assert by_op == {op: n for op, n in made[table.table].items() if n}, (
            table.target,
            by_op,
            made[table.table],
        )

    # Typed values arrived converted: bit and tinyint(1) as booleans, exact decimals, JSON text, NULLs.
    row = warehouse.query(f"SELECT * FROM {tables[0].current_table} WHERE id = 1000").to_pylist()[0]
    assert (
        row["balance"] == __import__("decimal").Decimal("3.5000")
        and row["active"] is True
        and row["vip"] is False  # 1000 % 3 != 0
    )
    assert json.loads(row["profile"]) == {"i": 1000, "tags": ["a", "b"], "nested": {"k": None}}
    assert (
        warehouse.query(f"SELECT count(*) AS n FROM {tables[0].current_table} WHERE note IS NULL")["n"][
            0
        ].as_py()
        > 0
    )
    assert current_key(tables[0]) in {k for a in assets if isinstance(a, dg.AssetsDefinition) for k in a.keys}
