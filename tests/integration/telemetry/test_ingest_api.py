"""The telemetry ingest API in process: validation errors naming the field, auth, limits, and the
local sink's raw files (flush by size and by time into the readings' event hours)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from resources.lake import LocalLake
from services.telemetry_api.app import Limits, create_app
from services.telemetry_api.sink import LocalSink
from tests.support.waiting import wait_for

TOKEN = "ingest-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _ts(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) - delta).isoformat()


def reading(device: str = "truck-1", **over):
    r = {"device_id": device, "timestamp": _ts(), "temperature": 21.5, "humidity": 40.0, "pressure": 1013.0,
         "location": {"latitude": 37.5, "longitude": 127.0}, "metadata": {"version": "1.0", "source": "gw"}}  # fmt: skip
    r.update(over)
    return r


def raw_rows(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("raw/telemetry/readings/**/part-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["_path"] = str(path.relative_to(root))
            rows.append(row)
    return rows


@pytest.fixture
def client(tmp_path: Path):
    sink = LocalSink(LocalLake(root=str(tmp_path / "lake")), tmp_path / "wal", buffer_seconds=3600)
    app = create_app(sink, TOKEN, Limits(device_rate=1000))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    ("make", "parameter", "words"),
    # Bodies are built when the test runs: a timestamp made at collection is stale minutes later.
    [
        (lambda: {k: v for k, v in reading().items() if k != "device_id"}, "device_id", "required"),
        (lambda: reading(timestamp="yesterday"), "timestamp", "datetime"),
        (lambda: reading(timestamp="2026-01-01T10:00:00"), "timestamp", "timezone"),
        (lambda: reading(timestamp=_ts(timedelta(days=8))), "timestamp", "older than 7 days"),
        (lambda: reading(timestamp=_ts(timedelta(minutes=-10))), "timestamp", "future"),
        (lambda: reading(temperature=150), "temperature", "less than or equal to 120"),
        (lambda: reading(humidity="wet"), "humidity", "number"),
        (lambda: reading(location={"latitude": 91, "longitude": 0}), "location.latitude", "90"),
        (lambda: reading(colour="red"), "colour", "unknown field"),
        (lambda: reading(device_id="bad id!"), "device_id", "pattern"),
    ],
)
def test_malformed_reading_names_the_field(client: TestClient, make, parameter: str, words: str) -> None:
    response = client.post("/v1/readings", json=make(), headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["parameter"] == parameter
    assert words.lower() in error["message"].lower(), error


def test_batch_errors_name_the_index_and_limits(client: TestClient) -> None:
    batch = [reading(f"d{i}") for i in range(5)]
    batch[3]["temperature"] = "hot"
    response = client.post("/v1/readings/batch", json={"readings": batch}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["parameter"] == "readings[3].temperature"

    too_many = {"readings": [reading(f"d{i}") for i in range(501)]}
    response = client.post("/v1/readings/batch", json=too_many, headers=AUTH)
    assert response.status_code == 413 and response.json()["error"]["parameter"] == "readings"

    big = b'{"readings": [' + b" " * (1024 * 1024) + b"]}"
    response = client.post(
        "/v1/readings/batch", content=big, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_token_required(client: TestClient) -> None:
    assert client.post("/v1/readings", json=reading()).status_code == 401
    response = client.post("/v1/readings", json=reading(), headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert client.get("/health").json()["writable"] is True


def test_device_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    sink = LocalSink(LocalLake(root=str(tmp_path / "lake")), tmp_path / "wal", buffer_seconds=3600)
    with TestClient(create_app(sink, TOKEN, Limits(device_rate=10))) as c:
        statuses = [c.post("/v1/readings", json=reading("fast"), headers=AUTH).status_code for _ in range(15)]
        assert statuses.count(200) >= 10 and 429 in statuses
        limited = c.post("/v1/readings/batch", json={"readings": [reading("fast")] * 10}, headers=AUTH)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["parameter"] == "device_id"
        assert c.post("/v1/readings", json=reading("other"), headers=AUTH).status_code == 200
    accepted = statuses.count(200) + 1
    assert len(raw_rows(tmp_path / "lake")) == accepted  # shutdown flushed every accepted reading


def test_flush_by_size_into_event_hours(tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    sink = LocalSink(
        LocalLake(root=str(lake_root)), tmp_path / "wal", buffer_bytes=20_000, buffer_seconds=3600
    )
    now = datetime.now(UTC)
    late_ts = (now - timedelta(hours=3)).replace(minute=10)
    with TestClient(create_app(sink, TOKEN, Limits(device_rate=10_000))) as c:
        late = c.post("/v1/readings", json=reading("late-1", timestamp=late_ts.isoformat()), headers=AUTH)
        assert late.status_code == 200
        for k in range(4):
            batch = [reading(f"dev-{k}-{i}", timestamp=now.isoformat()) for i in range(100)]
            assert c.post("/v1/readings/batch", json={"readings": batch}, headers=AUTH).status_code == 200
        # ~25 kB of readings passed the 20 kB buffer: files appear without shutdown or a timeout
        wait_for(lambda: len(raw_rows(lake_root)) > 0, timeout=30, what="a size-triggered flush")
        files_before_close = {r["_path"] for r in raw_rows(lake_root)}
    rows = raw_rows(lake_root)
    assert len(rows) == 401
    hour = f"day={now.day:02d}/hour={now.hour:02d}/"
    late_hour = f"day={late_ts.day:02d}/hour={late_ts.hour:02d}/"
    for row in rows:
        expected = late_hour if row["device_id"] == "late-1" else hour
        assert expected in row["_path"], row
    assert any(late_hour in p for p in files_before_close)  # the late reading's hour flushed with its segment
    assert not list((tmp_path / "wal").glob("wal-*.jsonl"))


def test_flush_by_time(tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    sink = LocalSink(LocalLake(root=str(lake_root)), tmp_path / "wal", buffer_seconds=1.0)
    with TestClient(create_app(sink, TOKEN)) as c:
        sent = reading("slow-1")
        assert c.post("/v1/readings", json=sent, headers=AUTH).json() == {"accepted": 1}
        rows = wait_for(lambda: raw_rows(lake_root), timeout=30, what="a time-triggered flush")
        assert [r["device_id"] for r in rows] == ["slow-1"]
        assert rows[0]["temperature"] == 21.5 and rows[0]["latitude"] == 37.5
        assert rows[0]["metadata_source"] == "gw" and rows[0]["batch_id"]
        ts = datetime.fromisoformat(sent["timestamp"])
        assert rows[0]["timestamp"] == ts and f"hour={ts.hour:02d}" in rows[0]["_path"]
