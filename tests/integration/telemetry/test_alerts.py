"""The telemetry alert path end to end, against ground truth from the simulator.

(a) `dp telemetry-api` as a real process, fed by the simulator's driver with anomaly episodes,
    late and duplicated readings: the alert log holds exactly one alert per episode the detector
    can see (none elsewhere), each written within the seed's 30 s of its reading's arrival; a
    SIGKILL and restart (WAL replay) adds no alert, and the replay alone rebuilds the same ids.
(b) the aws path on moto: KinesisSink -> KinesisConsumer -> SNS -> an SQS queue subscribed to the
    topic receives one message per episode; re-reading the stream (at least once) sends none again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from resources.aws import AwsClients
from resources.lake import LocalLake
from services.moto import free_port
from services.telemetry_alerts.detector import Detector
from services.telemetry_alerts.feed import AlertFeed
from services.telemetry_alerts.sinks import AlertLog, SnsAlerts
from services.telemetry_api.sink import KinesisConsumer, KinesisSink, LocalSink
from services.telemetry_sim.driver import run_telemetry_sim
from services.telemetry_sim.fleet import Fleet, Generated, read_truth
from tests.support.waiting import wait_for

TOKEN = "alerts-test-token"
LATENCY_TARGET = 30.0  # seconds, the seed's latency target
DEFAULTS = Detector()
# Margins over the detector's own counts: a reading overtaken by a later one (concurrent requests,
# a late or duplicated copy) is skipped by the detector, so it sees a few fewer than were made.
WARMUP_NEEDED = DEFAULTS.warmup + 5
SEPARATED_BY = DEFAULTS.quiet_readings + 3


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def expected_groups(truth: list[dict], generated: list[Generated]) -> tuple[list[list[dict]], list[dict]]:
    """The truth's episodes the detector can see, grouped: episodes of a device with fewer than
    SEPARATED_BY normal readings between them may be one episode to it (a group gets 1..n alerts,
    an isolated episode exactly one). Also the episodes it may miss (its device still warming up),
    which get at most one alert each."""
    by_device: dict[str, list[Generated]] = defaultdict(list)
    for g in generated:
        by_device[g.device_id].append(g)
    episodes: dict[str, list[dict]] = defaultdict(list)
    for line in truth:
        if line["kind"] == "anomaly":
            episodes[line["device_id"]].append(
                {**line, "start_at": _parse(line["start"]), "end_at": _parse(line["end"])}
            )
    groups, warming = [], []
    for device, eps in episodes.items():
        eps.sort(key=lambda e: e["start_at"])
        readings = sorted(by_device[device], key=lambda g: g.timestamp)
        previous_end: datetime | None = None
        for ep in eps:
            normal_before = [
                g
                for g in readings
                if g.timestamp < ep["start_at"] and g.anomaly is None and g.fault != "null"
            ]
            if len(normal_before) < WARMUP_NEEDED:
                warming.append(ep)
            elif (
                previous_end is not None
                and groups
                and groups[-1][-1]["device_id"] == device
                and (sum(1 for g in normal_before if g.timestamp >= previous_end) < SEPARATED_BY)
            ):
                groups[-1].append(ep)
            else:
                groups.append([ep])
            previous_end = ep["end_at"]
    return groups, warming


def check_alerts(alerts: list[dict], truth: list[dict], generated: list[Generated]) -> int:
    """Assert one alert per seen episode and none outside the truth; the number of episodes seen."""
    groups, warming = expected_groups(truth, generated)
    assert len({a["id"] for a in alerts}) == len(alerts), "an alert id was written twice"
    owner: dict[str, list[dict]] = defaultdict(list)  # episode start -> its alerts
    for alert in alerts:
        start = _parse(alert["episode_start"])
        hits = [
            line for line in truth
            if line["kind"] == "anomaly" and line["device_id"] == alert["device_id"]
            and _parse(line["start"]) <= start < _parse(line["end"])
        ]  # fmt: skip
        assert hits, f"a spurious alert, in no episode of the truth: {alert}"
        owner[hits[0]["start"]].append(alert)
    for group in groups:
        got = sum(len(owner[ep["start"]]) for ep in group)
        if len(group) == 1:
            assert got == 1, f"episode {group[0]}: {got} alerts, expected exactly one"
        else:
            assert 1 <= got <= len(group), f"close episodes {group}: {got} alerts"
    for ep in warming:
        assert len(owner[ep["start"]]) <= 1, f"episode {ep}: more than one alert"
    return len(groups)


# --- (a) the real API process and the simulator -------------------------------------------
def _start_api(tmp_path: Path, port: int, wal: Path, alert_log: Path, name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "TELEMETRY_API_TOKEN": TOKEN,
        "PLATFORM_PROFILE": "local",
        "PLATFORM_LAKE_DIR": str(tmp_path / f"lake-{name}"),
        "PLATFORM_TELEMETRY_WAL_DIR": str(wal),
        "PLATFORM_TELEMETRY_ALERT_LOG": str(alert_log),
        # one WAL segment for the whole run: a SIGKILL leaves every reading to replay
        "PLATFORM_TELEMETRY_BUFFER_BYTES": "500000000",
        "PLATFORM_TELEMETRY_BUFFER_SECONDS": "3600",
        "PLATFORM_TELEMETRY_DEVICE_RATE": "1000",
    }
    log = open(tmp_path / f"api-{name}.log", "wb")  # noqa: SIM115 - the process's log, closed with it
    cmd = [sys.executable, "-m", "services.cli", "telemetry-api", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / f"api-{name}.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what=f"dp telemetry-api ({name}) to answer /health")
    return proc


def _settled(log: AlertLog, quiet: float = 2.0) -> list[dict]:
    """The log's alerts once it has not grown for `quiet` seconds."""
    last, since = -1, time.monotonic()
    while True:
        n = len(log.messages())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return log.messages()
        time.sleep(0.2)


def test_api_alerts_once_per_episode_within_30_s_and_a_restart_adds_none(tmp_path: Path) -> None:
    port = free_port()
    wal, alert_path = tmp_path / "wal", tmp_path / "alerts.jsonl"
    proc = _start_api(tmp_path, port, wal, alert_path, "first")
    seen_at: dict[str, datetime] = {}  # alert id -> when the test first saw its line
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.is_set():
            if alert_path.exists():
                now = datetime.now(UTC)
                for message in AlertLog(alert_path).messages():
                    seen_at.setdefault(message["id"], now)
            stop_watch.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    generated: list[Generated] = []
    truth_path = tmp_path / "truth.jsonl"
    try:
        with open(truth_path, "w", encoding="utf-8") as truth:
            stats = run_telemetry_sim(
                f"http://127.0.0.1:{port}", TOKEN, devices=20, rate=100, seconds=45, seed=4,
                batch_size=50, linger=0.2, truth=truth, on_generated=generated.append,
                fleet_options={
                    "anomaly_per_hour": 60, "anomaly_minutes": (0.05, 0.15), "late_share": 0.02,
                    "late_delay": (3.0, 20.0), "duplicate_share": 0.02, "duplicate_delay": (0.0, 10.0),
                },
            )  # fmt: skip
        assert stats.failed == 0 and stats.rejected == 0, stats.line()
        assert stats.late > 0 and stats.duplicates > 0, "the run tested no late or duplicate reading"
        alerts = _settled(AlertLog(alert_path))
        stop_watch.set()
        watcher.join()
        truth_lines = read_truth(truth_path)
        episodes = check_alerts(alerts, truth_lines, generated)
        assert episodes >= 8, f"only {episodes} episodes to see: the run proves little"

        written = [(_parse(a["alert_time"]) - _parse(a["received_at"])).total_seconds() for a in alerts]
        appeared = [(seen_at[a["id"]] - _parse(a["received_at"])).total_seconds() for a in alerts]
        print(
            f"\n{len(alerts)} alerts for {episodes} episodes seen ({stats.generated} readings);"
            f" arrival -> alert written: median {statistics.median(written):.3f} s, max {max(written):.3f} s;"
            f" arrival -> line seen by the test: median {statistics.median(appeared):.3f} s,"
            f" max {max(appeared):.3f} s"
        )
        assert max(written) < LATENCY_TARGET and max(appeared) < LATENCY_TARGET
    finally:
        stop_watch.set()
        proc.send_signal(signal.SIGKILL)  # every reading is still in the WAL: the restart replays it
        proc.wait(timeout=30)

    segments = list(wal.glob("wal-*.jsonl"))
    assert segments, "the kill left no WAL segment: the restart would replay nothing"
    wal_copy = tmp_path / "wal-copy"
    shutil.copytree(wal, wal_copy)
    before = alert_path.read_bytes()
    proc = _start_api(tmp_path, port, wal, alert_path, "restart")  # replays before /health answers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert alert_path.read_bytes() == before, "the WAL replay wrote alerts again"
    assert not any(p.exists() for p in segments), "the replayed segments were not flushed"

    # The replay alone, into an empty log, rebuilds exactly the same alerts (ids): so the
    # unchanged log above is the dedupe at work, not a replay that saw nothing.
    fresh = tmp_path / "replayed.jsonl"
    proc = _start_api(tmp_path, port, wal_copy, fresh, "replay-only")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert [m["id"] for m in AlertLog(fresh).messages()] == [m["id"] for m in alerts]


# --- (b) the aws path: Kinesis -> consumer -> SNS -> SQS ------------------------------------
def _fleet_readings(truth_path: Path) -> tuple[list[Generated], list[dict[str, Any]]]:
    """20 minutes of 10 devices (one reading each 2 s), with episodes, late and duplicated readings;
    the generated readings and the order they are sent in (late ones and second copies later)."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    with open(truth_path, "w", encoding="utf-8") as truth:
        fleet = Fleet(devices=10, seed=11, anomaly_per_hour=12, anomaly_minutes=(0.2, 0.5), late_share=0.02,
                      late_delay=(5.0, 60.0), duplicate_share=0.02, duplicate_delay=(0.0, 30.0), truth=truth)  # fmt: skip
        generated = [fleet.next(t0 + timedelta(seconds=0.2 * k)) for k in range(6000)]
    sends: list[tuple[datetime, int, dict[str, Any]]] = []
    for n, g in enumerate(generated):
        due = g.timestamp + timedelta(seconds=g.late_delay or 0.0)
        sends.append((due, n, g.reading))
        if g.duplicate_delay is not None:
            sends.append((due + timedelta(seconds=g.duplicate_delay), n, dict(g.reading)))
    return generated, [reading for _, _, reading in sorted(sends, key=lambda s: (s[0], s[1]))]


def _drain(sqs: Any, url: str, quiet: float = 3.0) -> list[dict]:
    """Every message on the queue, read until none came for `quiet` seconds."""
    out, since = [], time.monotonic()
    while time.monotonic() - since < quiet:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for m in got:
            out.append(json.loads(json.loads(m["Body"])["Message"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if got:
            since = time.monotonic()
    return out


def test_kinesis_consumer_publishes_one_sns_message_per_episode(
    local_aws: AwsClients, tmp_path: Path
) -> None:
    name = f"alerts-{uuid.uuid4().hex[:8]}"
    kinesis, sns, sqs = (local_aws.client(s) for s in ("kinesis", "sns", "sqs"))
    kinesis.create_stream(StreamName=name, ShardCount=2)
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    wait_for(
        lambda: (
            kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
            == "ACTIVE"
        ),
        timeout=30,
        what="the stream to be active",
    )
    generated, sends = _fleet_readings(tmp_path / "truth.jsonl")
    sink = KinesisSink(local_aws, name)
    for i in range(0, len(sends), 500):
        sink.put(sends[i : i + 500], f"batch-{i}", datetime.now(UTC))

    lake = LocalLake(root=str(tmp_path / "lake"))
    record = tmp_path / "published.jsonl"

    def consume() -> tuple[int, AlertFeed]:
        feed = AlertFeed(SnsAlerts(local_aws, name, AlertLog(record)))
        consumer = KinesisConsumer(local_aws, name, LocalSink(lake, tmp_path / "wal", listener=feed), lake)
        consumer.sink.start()
        try:
            return consumer.poll(), feed
        finally:
            consumer.sink.close()  # flushes, and lets the feed emit what it holds

    started = time.monotonic()
    taken, feed = consume()
    assert taken == len(sends)
    messages = _drain(sqs, queue_url)
    print(f"\n{taken} records consumed, {len(messages)} SNS messages in {time.monotonic() - started:.1f} s")
    episodes = check_alerts(messages, read_truth(tmp_path / "truth.jsonl"), generated)
    assert episodes >= 15, f"only {episodes} episodes to see: the run proves little"
    assert len(messages) == feed.emitted
    for m in messages:
        assert set(m) >= {"device_id", "episode_start", "temperature", "score", "received_at", "alert_time"}
        assert m["score"] is None or m["score"] >= 4

    # At least once: the checkpoints are lost, the stream is read again by a fresh detector; the
    # alerts it rebuilds are in the published record, so SNS gets nothing new.
    lake.delete(KinesisConsumer(local_aws, name, LocalSink(lake, tmp_path / "wal"), lake).checkpoint_key)
    taken, feed = consume()
    assert taken == len(sends)
    assert feed.detector.stats.episodes == len(messages)  # it did find them all again
    assert feed.emitted == 0 and _drain(sqs, queue_url) == []
