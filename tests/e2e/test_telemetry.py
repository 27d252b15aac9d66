"""Fleet telemetry end to end: simulator -> ingest API -> raw -> processed (Spark) -> hourly_summary.

The real `dp telemetry-api` process takes the simulator's readings (late and duplicated ones
included) and flushes them to the raw Parquet tier when it is stopped (SIGTERM); the raw lake
sensor is evaluated and must ask for exactly the hours that received readings; each of those hours
is materialized (raw_readings + processed_and_summary, Spark local mode through Pipes); every
hourly_summary row is checked against a computation made here.

What is independent of the pipeline: the expected figures come only from what the simulator
generated and sent (the readings of `on_generated`, each sent once and a second time when it has a
duplicate_delay, cross-checked against the truth file and the driver's stats), never from reading
the lake back. received_at is stamped by the API at arrival, which the simulator cannot know, so
lateness is bounded from this test's own clock: a reading is received after it was generated and
before the simulator returned (all answers were in by then). A late cut-off (hour end + 5 min)
outside that window decides the reading; one inside it (the run straddling hh:05) leaves it
ambiguous and the late_count is checked between bounds.

Late readings: a 25 s run cannot hold readings back for minutes, so two devices replay a buffer
stamped two hours ago (the clock given to the simulator backdates their readings): sent now, they
are late for their hour. The fleet's own late_share (held back a few seconds) exercises the
driver's hold path; those readings stay on time for the pipeline, as the bounds above decide.
Anomalies: hours are materialized newest first, so no hour has a baseline of earlier summaries and
the anomaly flag is the physical range (-40..85 degC) alone: large anomaly episodes push readings
out of it, and anomaly_count must equal the kept temperatures outside that range.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pyarrow.parquet as pq
import pytest

from assets.telemetry.assets import RAW, processed_and_summary, raw_readings
from assets.telemetry.partitions import HOURLY
from assets.telemetry.sensors import raw_listing_sensor
from resources.lake import LakePartition, LocalLake
from resources.spark import LocalSparkRunner
from resources.warehouse import DuckDBWarehouse
from services.moto import free_port
from services.telemetry_sim.driver import run_telemetry_sim
from services.telemetry_sim.fleet import Generated, read_truth
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-telemetry-token"
DEVICES = 20
RATE = 40.0  # readings/s, all devices
SECONDS = 25.0
BACKDATED = {"dev-0000", "dev-0001"}  # replaying a buffer stamped two hours ago
BACKDATE = timedelta(hours=2)
LATE_AFTER = timedelta(minutes=5)
PHYSICAL = (-40.0, 85.0)
SLACK = timedelta(seconds=2)  # the API's clock reading vs this test's, same machine


def _start_api(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "TELEMETRY_API_TOKEN": TOKEN,
        "PLATFORM_PROFILE": "local",
        "PLATFORM_VAR_DIR": str(tmp_path / "var"),
        "PLATFORM_LAKE_DIR": str(tmp_path / "lake"),
        "PLATFORM_TELEMETRY_WAL_DIR": str(tmp_path / "wal"),
        "PLATFORM_TELEMETRY_BUFFER_SECONDS": "3600",  # everything is flushed by the shutdown
        "PLATFORM_TELEMETRY_DEVICE_RATE": "100000",
    }
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 - the process's log, closed with the test
    cmd = [sys.executable, "-m", "services.cli", "telemetry-api", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="dp telemetry-api to answer /health")
    return proc


class _Backdating:
    """The simulator's clock: the fleet's devices take turns, one clock call a reading, so call k
    is device k % DEVICES; the BACKDATED devices' readings are stamped two hours ago."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        device = f"dev-{self.calls % DEVICES:04d}"
        self.calls += 1
        now = datetime.now(UTC)
        return now - BACKDATE if device in BACKDATED else now


def _hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _expected(
    sent: list[tuple[Generated, datetime]], run_end: datetime
) -> dict[tuple[datetime, str], dict[str, Any]]:
    """Per (hour, device), from the readings as sent: arrivals (a duplicated reading twice), the
    unique readings (their copies are identical), temperatures, out-of-range ones, and lateness as
    [surely late, possibly late] from when each reading can have been received."""
    out: dict[tuple[datetime, str], dict[str, Any]] = {}
    for generated, generated_at in sent:
        key = (_hour(generated.timestamp), generated.device_id)
        row = out.setdefault(
            key, {"arrivals": 0, "record_count": 0, "temps": [], "late_min": 0, "late_max": 0}
        )
        row["arrivals"] += 2 if generated.duplicate_delay is not None else 1
        row["record_count"] += 1
        temperature = generated.reading["temperature"]
        if temperature is not None:
            row["temps"].append(float(temperature))
        cutoff = key[0] + timedelta(hours=1) + LATE_AFTER
        # The kept copy was received in [generated_at, run_end]: late when that is after cutoff.
        row["late_min"] += generated_at - SLACK > cutoff
        row["late_max"] += run_end + SLACK > cutoff
    for row in out.values():
        temps = row["temps"]
        row["duplicate_count"] = row["arrivals"] - row["record_count"]
        row["anomaly_count"] = sum(not PHYSICAL[0] <= t <= PHYSICAL[1] for t in temps)
        row["avg_temperature"] = statistics.fmean(temps) if temps else None
        row["min_temperature"] = min(temps) if temps else None
        row["max_temperature"] = max(temps) if temps else None
    return out


def _summary(lake: LocalLake, hour: datetime) -> dict[str, dict[str, Any]]:
    keys = lake.parquet_keys("curated", "telemetry", "hourly_summary", LakePartition(hour.date(), hour.hour))
    assert len(keys) == 1, keys
    return {r["device_id"]: r for r in pq.read_table(lake._path(keys[0])).to_pylist()}


def test_simulated_fleet_through_api_raw_processed_and_hourly_summary(tmp_path: Path) -> None:
    port = free_port()
    api = _start_api(tmp_path, port)
    sent: list[tuple[Generated, datetime]] = []
    lock = threading.Lock()

    def on_generated(generated: Generated) -> None:
        with lock:
            sent.append((generated, datetime.now(UTC)))

    truth_path = tmp_path / "truth.jsonl"
    try:
        with open(truth_path, "w", encoding="utf-8") as truth:
            stats = run_telemetry_sim(
                f"http://127.0.0.1:{port}",
                TOKEN,
                devices=DEVICES,
                rate=RATE,
                seconds=SECONDS,
                seed=2026,
                linger=0.5,
                clock=_Backdating(),
                truth=truth,
                on_generated=on_generated,
                fleet_options={
                    "late_share": 0.05,
                    "late_delay": (1.0, 8.0),
                    "duplicate_share": 0.05,
                    "duplicate_delay": (0.0, 5.0),
                    # Frequent episodes of +95..110 degC: a device's cycle stays within -5..45
                    # degC (mean 5..30, amplitude 3..10, noise 0.3), so every reading in an
                    # episode is above 85 (the API's limit is 120) and no other reading is.
                    "anomaly_per_hour": 60.0,
                    "anomaly_delta": (95.0, 110.0),
                },
            )
        run_end = datetime.now(UTC)
    finally:
        api.send_signal(signal.SIGTERM)  # the shutdown flushes the buffer to raw Parquet
        api.wait(timeout=120)
    # uvicorn shuts down cleanly, then re-raises the SIGTERM: -15 is its normal exit.
    assert api.returncode in (0, -signal.SIGTERM), (tmp_path / "api.log").read_text()[-3000:]
    assert "Application shutdown complete" in (tmp_path / "api.log").read_text()

    # What was sent and acknowledged: every reading once, each duplicated one twice, all accepted,
    # nothing re-sent (a re-send could add copies this computation does not know of).
    duplicated = sum(g.duplicate_delay is not None for g, _ in sent)
    assert stats.generated == len(sent) and stats.duplicates == duplicated, stats.line()
    assert stats.accepted == stats.generated + stats.duplicates, stats.line()
    assert stats.rejected == stats.failed == stats.resent == stats.in_flight == 0, stats.line()
    keys = Counter((g.device_id, g.reading["timestamp"]) for g, _ in sent)
    assert max(keys.values()) == 1  # (device, timestamp) identifies a generated reading
    truth = read_truth(truth_path)
    assert Counter(t["kind"] for t in truth)["duplicate"] == duplicated
    assert {(t["device_id"], t["timestamp"]) for t in truth if t["kind"] == "late"} == {
        (g.device_id, g.reading["timestamp"]) for g, _ in sent if g.late_delay is not None
    }

    expected = _expected(sent, run_end)
    # The anomalies by the episodes the simulator injected (each reading knows its episode; all of
    # them are in the truth file; no sensor fault inside one): the same counts as the out-of-range
    # temperatures, so anomaly_count checks the injected episodes.
    episodes = {(t["device_id"], t["start"]) for t in truth if t["kind"] == "anomaly"}
    in_episode: Counter[tuple[datetime, str]] = Counter()
    for g, _ in sent:
        if g.anomaly is not None:
            assert (g.device_id, g.anomaly.start.isoformat(timespec="milliseconds")) in episodes
            in_episode[(_hour(g.timestamp), g.device_id)] += 1
    assert {k: row["anomaly_count"] for k, row in expected.items()} == {k: in_episode[k] for k in expected}
    hours = sorted({hour for hour, _ in expected})
    partition_keys = sorted(HOURLY.get_partition_key_for_timestamp(h.timestamp()) for h in hours)

    lake = LocalLake(root=str(tmp_path / "lake"))
    resources = {
        "lake": lake,
        "warehouse": DuckDBWarehouse(path=str(tmp_path / "wh.duckdb")),
        "spark": LocalSparkRunner(),
    }
    with dg.instance_for_test() as instance:
        tick = raw_listing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert sorted(r.partition_key for r in tick.run_requests) == partition_keys
        assert all(r.asset_selection == [RAW] for r in tick.run_requests)

        # Newest hour first: no hour finds earlier summaries for a baseline (see the docstring).
        for hour in sorted(hours, reverse=True):
            pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
            result = dg.materialize(
                [raw_readings, processed_and_summary],
                resources=resources,
                partition_key=pk,
                instance=instance,
            )
            assert result.success, pk

    totals: Counter[str] = Counter()
    for hour in hours:
        summary = _summary(lake, hour)
        want_hour = {device: row for (h, device), row in expected.items() if h == hour}
        assert set(summary) == set(want_hour), hour
        for device, want in want_hour.items():
            got, where = summary[device], (hour.isoformat(), device)
            for name in ("record_count", "duplicate_count", "anomaly_count"):
                assert got[name] == want[name], (*where, name, got[name], want[name])
            assert want["late_min"] <= got["late_count"] <= want["late_max"], (
                *where,
                got["late_count"],
                want,
            )
            for name in ("avg_temperature", "min_temperature", "max_temperature"):
                if want[name] is None:
                    assert got[name] is None, (*where, name, got[name])
                else:
                    assert got[name] == pytest.approx(want[name], abs=1e-9), (*where, name, got[name])
            for name in ("record_count", "duplicate_count", "anomaly_count", "late_count"):
                totals[name] += got[name]
            totals["arrivals"] += want["arrivals"]
            totals["ambiguous_late"] += want["late_max"] - want["late_min"]

    # Not vacuous: the run had duplicates, late readings and out-of-range anomalies to check.
    assert totals["duplicate_count"] > 0 and totals["late_count"] > 0 and totals["anomaly_count"] > 0, totals
    assert totals["arrivals"] == stats.accepted
    print(
        f"telemetry e2e: {len(hours)} hour(s) {partition_keys}, {stats.accepted} readings accepted"
        f" ({stats.generated} generated + {stats.duplicates} duplicates), summary records"
        f" {totals['record_count']}, duplicates {totals['duplicate_count']}, late {totals['late_count']}"
        f" ({totals['ambiguous_late']} undecidable by send time), anomalies {totals['anomaly_count']};"
        f" all {len(expected)} (hour, device) rows match"
    )
