"""The telemetry simulator's driver against a real HTTP server started here (stdlib http.server,
the telemetry API's contract): every reading arrives, 429s are waited out, 5xx and dropped
connections are retried, and the stats add up with what the server saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.telemetry_sim.driver import SimStats, run_telemetry_sim
from services.telemetry_sim.fleet import Generated, read_truth

TOKEN = "sim-test-token"
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Request:
    at: float  # monotonic, when the body was read
    path: str
    body: bytes
    readings: list[dict]
    outcome: str  # 'ok', '429', '503', 'stored-503', 'dropped', '401'


@dataclass
class Ingest:
    """What the test server saw and kept; `policy(n)` gives the outcome of the n-th request (1-based)."""

    policy: Callable[[int], str]
    requests: list[Request] = field(default_factory=list)
    stored: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


def _handler(ingest: Ingest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            payload = json.loads(body)
            readings = payload["readings"] if self.path == "/v1/readings/batch" else [payload]
            assert self.path in ("/v1/readings", "/v1/readings/batch")
            assert len(readings) <= 500
            with ingest.lock:
                n = len(ingest.requests) + 1
                outcome = ingest.policy(n)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    outcome = "401"
                ingest.requests.append(Request(time.monotonic(), self.path, body, readings, outcome))
                if outcome in ("ok", "stored-503", "dropped"):
                    ingest.stored.extend(readings)
            if outcome == "ok":
                self._answer(200, {"accepted": len(readings)})
            elif outcome == "429":
                self._answer(
                    429, {"error": {"code": "throttled", "message": "slow down"}}, {"Retry-After": "1"}
                )
            elif outcome in ("503", "stored-503"):
                self._answer(503, {"error": {"code": "unavailable", "message": "try again"}})
            elif outcome == "401":
                self._answer(401, {"error": {"code": "unauthorized", "message": "bad token"}})
            else:  # dropped: the readings were kept, the answer never comes
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int], str]], Ingest]]:
    servers: list[ThreadingHTTPServer] = []

    def start(policy: Callable[[int], str]) -> Ingest:
        ingest = Ingest(policy)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ingest))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        ingest.url = f"http://127.0.0.1:{server.server_address[1]}"
        return ingest

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _troubled(n: int) -> str:
    """Every 4th request throttled, every 7th a 503, every 9th kept then 503, every 11th kept then dropped."""
    if n % 4 == 0:
        return "429"
    if n % 7 == 0:
        return "503"
    if n % 9 == 0:
        return "stored-503"
    if n % 11 == 0:
        return "dropped"
    return "ok"


def _key(reading: dict) -> tuple[str, str]:
    return (reading["device_id"], reading["timestamp"])


def test_every_reading_arrives_429s_are_waited_out_and_the_stats_add_up(serve, tmp_path) -> None:
    ingest = serve(_troubled)
    generated: list[tuple[float, Generated]] = []
    start = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    t0 = time.monotonic()
    truth_path = tmp_path / "truth.jsonl"
    with open(truth_path, "w", encoding="utf-8") as truth:
        stats = run_telemetry_sim(
            ingest.url,
            TOKEN,
            devices=12,
            rate=60.0,
            seconds=4.0,
            seed=17,
            batch_size=15,
            linger=0.2,
            concurrency=4,
            clock=lambda: start + timedelta(seconds=time.monotonic() - t0),
            truth=truth,
            on_generated=lambda g: generated.append((time.monotonic(), g)),
            fleet_options={
                "late_share": 0.1,
                "late_delay": (0.5, 2.0),
                "duplicate_share": 0.08,
                "duplicate_delay": (0.0, 0.5),
                "anomaly_per_hour": 0.0,
            },
        )
    ended = t0 + stats.seconds

    # Every generated reading arrived at least once, as generated.
    stored_by_key: dict[tuple[str, str], list[dict]] = {}
    for reading in ingest.stored:
        stored_by_key.setdefault(_key(reading), []).append(reading)
    assert len(generated) >= 200
    for _, g in generated:
        assert g.key in stored_by_key, f"{g.key} never arrived"
        assert all(copy == g.reading for copy in stored_by_key[g.key])
    assert set(stored_by_key) == {g.key for _, g in generated}
    # Duplicated readings arrived at least twice.
    duplicated = [g for _, g in generated if g.duplicate_delay is not None]
    assert duplicated
    assert all(len(stored_by_key[g.key]) >= 2 for g in duplicated)
    # Late readings were held back their delay (or posted at the end of the run).
    late = [(at, g) for at, g in generated if g.late_delay is not None]
    assert late
    first_seen: dict[tuple[str, str], float] = {}
    for r in ingest.requests:
        for reading in r.readings:
            first_seen.setdefault(_key(reading), r.at)
    for at, g in late:
        assert g.late_delay is not None
        assert first_seen[g.key] >= min(at + g.late_delay, ended) - 0.05

    # 429s were waited out: the same body came back no sooner than Retry-After (1 s).
    throttled = [r for r in ingest.requests if r.outcome == "429"]
    assert throttled
    for r in throttled:
        again = [x for x in ingest.requests if x.body == r.body and x.at > r.at]
        assert again, "a throttled batch was never posted again"
        assert again[0].at - r.at >= 0.95
    # Failed attempts were retried with the same body until one was accepted.
    for r in ingest.requests:
        if r.outcome != "ok":
            assert any(x.body == r.body and x.outcome == "ok" for x in ingest.requests)

    # The stats add up with what the server saw.
    outcomes = Counter(r.outcome for r in ingest.requests)
    assert outcomes["503"] and outcomes["stored-503"] and outcomes["dropped"]
    assert stats.generated == len(generated)
    assert stats.duplicates == len(duplicated)
    assert stats.late == len(late)
    assert stats.requests == len(ingest.requests)
    assert stats.posted == sum(len(r.readings) for r in ingest.requests)
    assert stats.accepted == sum(len(r.readings) for r in ingest.requests if r.outcome == "ok")
    assert stats.generated + stats.duplicates == stats.accepted
    assert stats.rejected == stats.failed == stats.in_flight == 0
    assert stats.throttled == outcomes["429"]
    assert stats.throttle_wait == pytest.approx(outcomes["429"] * 1.0)
    assert stats.retries == outcomes["503"] + outcomes["stored-503"] + outcomes["dropped"]
    assert stats.resent == sum(
        len(r.readings) for r in ingest.requests if r.outcome != "ok" and r.outcome != "429"
    )
    assert stats.statuses == {
        200: outcomes["ok"],
        429: outcomes["429"],
        503: outcomes["503"] + outcomes["stored-503"],
    }
    assert len(ingest.stored) == stats.accepted + sum(
        len(r.readings) for r in ingest.requests if r.outcome in ("stored-503", "dropped")
    )
    assert len(stats.latencies) == outcomes["ok"]
    p50, p99 = stats.latency(0.5), stats.latency(0.99)
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    # The ground truth names the late and duplicated readings.
    lines = read_truth(truth_path)
    assert {(x["device_id"], x["timestamp"]) for x in lines if x["kind"] == "late"} == {
        g.key for _, g in late
    }
    assert {(x["device_id"], x["timestamp"]) for x in lines if x["kind"] == "duplicate"} == {
        g.key for g in duplicated
    }


def test_a_refused_token_rejects_everything_without_retrying(serve, caplog) -> None:
    ingest = serve(lambda n: "ok")
    stats = run_telemetry_sim(
        ingest.url,
        "not-the-token",
        devices=5,
        rate=40.0,
        seconds=1.0,
        seed=1,
        batch_size=10,
        linger=0.1,
        fleet_options={"late_share": 0.0, "duplicate_share": 0.0},
    )
    assert stats.generated >= 30
    assert stats.accepted == 0 and not ingest.stored
    assert stats.rejected == stats.generated == sum(len(r.readings) for r in ingest.requests)
    assert stats.retries == stats.throttled == stats.failed == 0
    assert stats.statuses == {401: len(ingest.requests)}
    assert "HTTP 401" in caplog.text and "bad token" in caplog.text
    assert "not-the-token" not in caplog.text


def test_dp_telemetry_sim_posts_and_prints_progress_and_a_summary(serve, tmp_path) -> None:
    ingest = serve(lambda n: "429" if n == 2 else "ok")
    truth = tmp_path / "truth.jsonl"
    env = {**os.environ, "TELEMETRY_API_TOKEN": TOKEN}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "telemetry-sim",
            "--url",
            ingest.url,
            "--devices",
            "7",
            "--rate",
            "30",
            "--seconds",
            "6",
            "--batch-size",
            "20",
            "--seed",
            "5",
            "--late-delay",
            "0.5:1",
            "--late-share",
            "0.1",
            "--anomalies-per-hour",
            "3600",
            "--truth",
            str(truth),
            "--progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    devices = {r["device_id"] for r in ingest.stored}
    assert devices == {f"dev-{i:04d}" for i in range(7)}
    assert len({_key(r) for r in ingest.stored}) == 180  # 30/s for 6 s
    assert "telemetry-sim: 180 readings generated" in done.stdout
    assert " 1 throttled" in done.stdout
    assert "0 rejected, 0 failed" in done.stdout
    assert "p50" in done.stderr  # the progress line
    assert "HTTP Request" not in done.stderr  # no log line a request
    assert TOKEN not in done.stdout + done.stderr
    kinds = Counter(x["kind"] for x in read_truth(truth))
    assert kinds["late"] >= 5
    assert kinds["anomaly"] >= 1


def test_a_server_not_up_yet_is_retried_and_nothing_counts_as_resent() -> None:
    with socket.socket() as s:  # a free port, nothing listening on it yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ingest = Ingest(lambda n: "ok")
    ingest.url = f"http://127.0.0.1:{port}"
    generated: list[Generated] = []
    result: dict[str, object] = {}

    def simulate() -> None:
        result["stats"] = run_telemetry_sim(
            ingest.url,
            TOKEN,
            devices=4,
            rate=30.0,
            seconds=2.0,
            seed=9,
            batch_size=10,
            linger=0.1,
            on_generated=generated.append,
            fleet_options={"late_share": 0.0, "duplicate_share": 0.0},
        )

    thread = threading.Thread(target=simulate)
    thread.start()
    time.sleep(1.0)  # the first batches find no server
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(ingest))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        thread.join(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    stats = result["stats"]
    assert isinstance(stats, SimStats)
    assert stats.retries > 0  # connections refused, then posted again
    assert stats.resent == 0  # a refused connection cannot have stored anything
    assert stats.accepted == stats.generated == len(generated) == 60
    assert sorted(map(_key, ingest.stored)) == sorted(g.key for g in generated)  # each exactly once
    assert stats.failed == stats.rejected == 0


def test_a_batch_is_given_up_after_max_retries_and_counted_failed(serve, caplog) -> None:
    ingest = serve(lambda n: "503")
    stats = run_telemetry_sim(
        ingest.url,
        TOKEN,
        devices=3,
        rate=20.0,
        seconds=0.5,
        seed=4,
        batch_size=100,
        linger=5.0,
        max_retries=2,
        fleet_options={"late_share": 0.0, "duplicate_share": 0.0},
    )
    assert stats.generated == 10
    assert stats.batches == 1  # the linger outlasts the run: one batch, posted at the end
    assert len(ingest.requests) == 3  # the first try and 2 retries
    assert all(r.readings == ingest.requests[0].readings for r in ingest.requests)
    assert stats.failed == 10 and stats.accepted == 0
    assert stats.retries == 2 and stats.resent == 20
    assert "3 failures, the last HTTP 503" in caplog.text
