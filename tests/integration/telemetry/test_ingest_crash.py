"""`dp telemetry-api` as a real process, killed with SIGKILL right after a 200: after a restart
(which replays the write-ahead log) every acknowledged reading is in the raw Parquet files, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from services.moto import free_port
from tests.support.waiting import wait_for

TOKEN = "crash-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _start(tmp_path: Path, port: int, log_name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "TELEMETRY_API_TOKEN": TOKEN,
        "PLATFORM_PROFILE": "local",
        "PLATFORM_LAKE_DIR": str(tmp_path / "lake"),
        "PLATFORM_TELEMETRY_WAL_DIR": str(tmp_path / "wal"),
        "PLATFORM_TELEMETRY_BUFFER_BYTES": "40000",  # some segments are flushed before the kill, some not
        "PLATFORM_TELEMETRY_BUFFER_SECONDS": "3600",
        "PLATFORM_TELEMETRY_DEVICE_RATE": "100000",
    }
    log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - the process's log, closed with the test
    cmd = [sys.executable, "-m", "services.cli", "telemetry-api", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/health"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / log_name).read_text()
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="dp telemetry-api to answer /health")
    return proc


def _raw(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.glob("raw/telemetry/readings/**/part-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["_dir"] = str(path.parent.relative_to(root))
            rows.append(row)
    return rows


def test_sigkill_after_a_200_loses_no_acknowledged_reading(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port, "first.log")
    base = f"http://127.0.0.1:{port}"
    acked: list[tuple[str, datetime]] = []
    lock = threading.Lock()
    stop = threading.Event()
    now = datetime.now(UTC).replace(microsecond=0)

    def sender(name: str) -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
            n = 0
            while not stop.is_set():
                batch = [
                    {
                        "device_id": f"{name}-{n}-{i}",
                        "timestamp": (now - timedelta(minutes=i % 90)).isoformat(),
                        "temperature": 20.0 + i % 7,
                        "humidity": 50.0,
                        "pressure": 1000.0,
                    }
                    for i in range(50)
                ]
                n += 1
                try:
                    response = client.post("/v1/readings/batch", json={"readings": batch})
                except httpx.HTTPError:
                    return  # the server was killed while this one was in flight: not acknowledged
                if response.status_code == 200:
                    assert response.json() == {"accepted": 50}
                    with lock:
                        acked.extend((r["device_id"], datetime.fromisoformat(r["timestamp"])) for r in batch)

    threads = [threading.Thread(target=sender, args=(f"s{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 3000, timeout=120, what="3000 acknowledged readings")
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        last = [{"device_id": "last-one", "timestamp": now.isoformat(), "temperature": 1.0}]
        response = client.post("/v1/readings/batch", json={"readings": last})
        assert response.status_code == 200
        proc.send_signal(signal.SIGKILL)  # right after the 200
        acked.append(("last-one", now))
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    acknowledged = set(acked)
    before = {(r["device_id"], r["timestamp"]) for r in _raw(tmp_path / "lake")}
    left = list((tmp_path / "wal").glob("wal-*.jsonl"))
    assert left, "the kill left no WAL segment to replay: the test would prove nothing"
    assert not acknowledged <= before, "everything was flushed before the kill: nothing to replay"

    proc = _start(tmp_path, port, "second.log")  # replays the WAL before answering /health
    try:
        rows = _raw(tmp_path / "lake")
        seen = {(r["device_id"], r["timestamp"]) for r in rows}
        missing = acknowledged - seen
        assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
        triples = Counter((r["device_id"], r["timestamp"], r["batch_id"]) for r in rows)
        assert max(triples.values()) == 1, [k for k, v in triples.items() if v > 1][:3]
        assert len(seen) == len(rows)  # each reading was sent once: no duplicate at all
        for path in left:
            assert not path.exists(), f"{path.name} was replayed but not deleted"
        for row in rows:  # partitioned by the reading's own hour
            assert row["_dir"].endswith(row["timestamp"].strftime("year=%Y/month=%m/day=%d/hour=%H")), row
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert len(_raw(tmp_path / "lake")) == len(rows)  # a clean stop with nothing new adds nothing
