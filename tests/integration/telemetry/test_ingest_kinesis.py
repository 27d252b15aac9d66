"""The aws sink against moto Kinesis: the API puts readings on the stream, the consumer reads every
shard into the raw tier; the raw rows equal those the local sink writes for the same requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from resources.aws import AwsClients
from resources.lake import LocalLake
from services.telemetry_api.app import Limits, create_app
from services.telemetry_api.sink import KinesisConsumer, KinesisSink, LocalSink
from tests.support.waiting import wait_for

TOKEN = "kinesis-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMPARED = ["device_id", "timestamp", "temperature", "humidity", "pressure", "latitude", "longitude",
            "metadata_version", "metadata_source"]  # fmt: skip


def _batches() -> list[list[dict]]:
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for b in range(4):
        out.append(
            [
                {
                    "device_id": f"truck-{b}-{i}",
                    "timestamp": (now - timedelta(hours=i % 3, minutes=i)).isoformat(),
                    "temperature": None if i == 7 else 10.0 + i,
                    "humidity": 55.5,
                    "pressure": 1001.0,
                    "location": {"latitude": 35.0 + i / 100, "longitude": 129.0},
                    "metadata": {"version": "2", "source": f"gw-{b}"},
                }
                for i in range(40)
            ]
        )
    return out


def _raw(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("raw/telemetry/readings/**/part-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["_dir"] = str(path.parent.relative_to(root))
            rows.append(row)
    return rows


def _post_all(app, batches) -> None:
    with TestClient(app) as client:
        for batch in batches:
            response = client.post("/v1/readings/batch", json={"readings": batch}, headers=AUTH)
            assert response.status_code == 200 and response.json() == {"accepted": len(batch)}, response.text


def test_kinesis_sink_and_consumer_write_the_local_sinks_rows(local_aws: AwsClients, tmp_path: Path) -> None:
    stream = f"telemetry-{uuid.uuid4().hex[:8]}"
    kinesis = local_aws.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    wait_for(
        lambda: (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
            == "ACTIVE"
        ),
        timeout=30,
        what="the stream to be active",
    )
    batches = _batches()
    limits = Limits(device_rate=1000)

    app = create_app(KinesisSink(local_aws, stream), TOKEN, limits, sink_name="kinesis")
    with TestClient(app) as client:
        assert client.get("/health").json()["writable"] is True
    _post_all(app, batches)

    aws_lake = tmp_path / "aws-lake"
    lake = LocalLake(root=str(aws_lake))
    consumer = KinesisConsumer(local_aws, stream, LocalSink(lake, tmp_path / "consumer-wal"), lake)
    consumer.sink.start()
    assert consumer.poll() == 160
    consumer.sink.close()
    assert set(consumer.checkpoints()) == {
        s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]
    }

    again = KinesisConsumer(local_aws, stream, LocalSink(lake, tmp_path / "consumer-wal"), lake)
    again.sink.start()
    assert again.poll() == 0  # the checkpoints hold: nothing is read twice
    again.sink.close()

    local_root = tmp_path / "local-lake"
    _post_all(
        create_app(LocalSink(LocalLake(root=str(local_root)), tmp_path / "wal"), TOKEN, limits), batches
    )

    def key(row: dict) -> tuple:
        return (*(row[c] for c in COMPARED), row["_dir"])

    from_kinesis, from_local = _raw(aws_lake), _raw(local_root)
    assert len(from_kinesis) == 160
    assert sorted(map(key, from_kinesis)) == sorted(map(key, from_local))
    assert len({r["batch_id"] for r in from_kinesis}) == 4  # each request's batch id went through the stream
    assert sum(r["temperature"] is None for r in from_kinesis) == 4


def test_dp_telemetry_consumer_once_as_a_process(local_aws: AwsClients, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    stream = f"telemetry-{uuid.uuid4().hex[:8]}"
    kinesis = local_aws.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    wait_for(
        lambda: (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
            == "ACTIVE"
        ),
        timeout=30,
        what="the stream to be active",
    )
    sink = KinesisSink(local_aws, stream)
    batch = _batches()[0]
    sink.put(batch, "batch-one", datetime.now(UTC))
    env = {
        **os.environ,
        "PLATFORM_PROFILE": "local",
        "PLATFORM_TELEMETRY_STREAM": stream,
        "PLATFORM_LAKE_DIR": str(tmp_path / "lake"),
        "PLATFORM_TELEMETRY_WAL_DIR": str(tmp_path / "wal"),
    }
    cmd = [sys.executable, "-m", "services.cli", "telemetry-consumer", "--once"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"40 readings from {stream}" in done.stdout
    rows = _raw(tmp_path / "lake")
    assert sorted(r["device_id"] for r in rows) == sorted(r["device_id"] for r in batch)
    assert {r["batch_id"] for r in rows} == {"batch-one"}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"0 readings from {stream}" in again.stdout
    assert len(_raw(tmp_path / "lake")) == 40
