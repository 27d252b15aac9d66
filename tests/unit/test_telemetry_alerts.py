"""The streaming anomaly detector and the alert log: one alert per device and episode, late and
duplicate readings ignored, replays deduplicated on the alert id, and its speed on one core."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from resources.lake import LocalLake
from services.telemetry_alerts.detector import Alert, Detector, alert_id
from services.telemetry_alerts.feed import AlertFeed
from services.telemetry_alerts.sinks import AlertLog
from services.telemetry_api.sink import LocalSink


def _t0() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _normal(k: int) -> float:
    return 20.0 + 0.3 * math.sin(k * 1.7)  # bounded noise: |score| stays well below 4


def _reading(device: str, when: datetime, temperature: float | None) -> dict:
    return {"device_id": device, "timestamp": when.isoformat(), "temperature": temperature}


class Series:
    """One device's readings, 5 s apart, fed one request at a time."""

    def __init__(self, detector: Detector, device: str = "truck-1", step: float = 5.0):
        self.detector, self.device, self.step = detector, device, step
        self.at = _t0()
        self.k = 0
        self.alerts: list[Alert] = []
        self.sent: list[dict] = []

    def send(self, *temperatures: float | None, when: datetime | None = None) -> list[Alert]:
        out = []
        for temperature in temperatures:
            stamp = when or self.at
            reading = _reading(self.device, stamp, temperature)
            self.sent.append(reading)
            out += self.detector.feed([reading], datetime.now(UTC))
            if when is None:
                self.at += timedelta(seconds=self.step)
                self.k += 1
        self.alerts += out
        return out

    def normal(self, n: int) -> list[Alert]:
        return self.send(*(_normal(self.k + i) for i in range(n)))


def test_an_episode_gives_one_alert_not_one_per_reading() -> None:
    s = Series(Detector())
    assert s.normal(30) == []
    start = s.at
    alerts = s.send(*([41.0] * 12))
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.id == alert_id("truck-1", start) == f"truck-1@{start.isoformat(timespec='microseconds')}"
    assert alert.episode_start == start and alert.temperature == 41.0 and alert.reason == "score"
    assert alert.score is not None and alert.score >= 4
    assert alert.baseline_mean is not None and abs(alert.baseline_mean - 20.0) < 0.3
    assert s.normal(20) == []  # the episode's end gives nothing
    assert s.detector.stats.episodes == 1 and s.detector.stats.anomalous == 12


def test_two_separated_episodes_give_two_alerts_a_short_dip_inside_one_does_not() -> None:
    s = Series(Detector(quiet_readings=5))
    s.normal(30)
    s.send(45.0, 45.0, 45.0)
    s.normal(4)  # fewer normal readings than quiet_readings: the same episode
    s.send(45.0, 45.0)
    assert len(s.alerts) == 1
    s.normal(5)  # closes it
    second = s.at
    s.send(44.0, 44.0)
    assert [a.episode_start for a in s.alerts][1:] == [second]
    assert len({a.id for a in s.alerts}) == 2


def test_a_long_silence_closes_an_episode() -> None:
    s = Series(Detector(quiet_seconds=300))
    s.normal(30)
    s.send(45.0, 45.0)
    s.at += timedelta(seconds=301)  # no reading for over quiet_seconds, then still anomalous
    s.send(45.0)
    s.at += timedelta(seconds=200)
    s.send(45.0)  # within quiet_seconds of the last anomaly: the same episode
    assert len(s.alerts) == 2


def test_the_episode_does_not_enter_the_baseline() -> None:
    s = Series(Detector(alpha=0.05))
    s.normal(30)
    s.send(*([40.0] * 200))  # a long episode: the baseline would drift to 40 if it took these
    assert len(s.alerts) == 1
    assert s.normal(10) == []
    s.send(*([40.0] * 5), 20.0, 20.0, 20.0, 20.0, 20.0)
    assert len(s.alerts) == 2  # back to normal, then a jump again is a new episode


def test_late_and_duplicate_readings_neither_open_nor_close_episodes() -> None:
    d = Detector(quiet_readings=2)
    s = Series(d)
    s.normal(30)
    earlier = s.at - timedelta(seconds=60)
    # a late anomalous reading (older than the device's newest) opens nothing
    assert s.send(60.0, when=earlier) == []
    # a duplicate of the last normal reading, with an anomalous value, opens nothing
    assert s.send(60.0, when=s.at - timedelta(seconds=s.step)) == []
    start = s.at
    s.send(45.0, 45.0)
    # late normal readings inside the episode do not close it
    s.send(20.0, 20.0, 20.0, when=start - timedelta(seconds=1))
    s.send(45.0, 45.0)
    # a duplicate of the episode's first reading does not alert again
    s.send(45.0, when=start)
    assert [a.episode_start for a in s.alerts] == [start]
    assert d.stats.out_of_order == 6


def test_physical_range_without_a_baseline_and_null_temperatures() -> None:
    d = Detector()
    t = _t0()
    alerts = d.feed(
        [
            _reading("new-1", t, 90.0),
            _reading("new-2", t, -45.0),
            _reading("new-3", t, 85.0),  # the range is inclusive: 85 is not an anomaly
            _reading("new-4", t, -40.0),
            _reading("new-5", t, None),  # a null is a sensor fault, never an anomaly
            _reading("new-1", t + timedelta(seconds=5), 91.0),  # the same episode
        ],
        datetime.now(UTC),
    )
    assert [(a.device_id, a.reason, a.score, a.baseline_mean) for a in alerts] == [
        ("new-1", "range", None, None),
        ("new-2", "range", None, None),
    ]
    assert d.stats.no_temperature == 1


def test_null_temperatures_inside_an_episode_do_not_close_it() -> None:
    s = Series(Detector(quiet_readings=2))
    s.normal(30)
    s.send(45.0, None, None, None, 45.0)
    assert len(s.alerts) == 1


def test_bad_input_names_what_was_wrong() -> None:
    d = Detector()
    with pytest.raises(ValueError, match=r"reading 1 \(x\): timestamp 'yesterday' is not RFC 3339"):
        d.feed([_reading("x", _t0(), 1.0), {"device_id": "x", "timestamp": "yesterday"}], datetime.now(UTC))
    with pytest.raises(ValueError, match="has no UTC offset"):
        d.feed([{"device_id": "x", "timestamp": "2026-01-01T00:00:00"}], datetime.now(UTC))
    with pytest.raises(ValueError, match="temperature 'hot' is not a number"):
        d.feed([{"device_id": "x", "timestamp": _t0().isoformat(), "temperature": "hot"}], datetime.now(UTC))
    with pytest.raises(ValueError, match="needs device_id and timestamp"):
        d.feed([{"timestamp": _t0().isoformat()}], datetime.now(UTC))
    with pytest.raises(ValueError, match="alpha must be in"):
        Detector(alpha=0)
    with pytest.raises(ValueError, match="quiet_readings must be at least 1"):
        Detector(quiet_readings=0)


def _episodes(detector: Detector, devices: int = 3) -> tuple[list[list[dict]], list[Alert]]:
    """Requests of several devices with two episodes each; the alerts the detector gave."""
    t = _t0()
    requests = []
    for k in range(80):
        jump = 30 <= k < 36 or 50 <= k < 53
        requests.append(
            [
                _reading(f"dev-{d}", t + timedelta(seconds=5 * k), 45.0 if jump else _normal(k + d))
                for d in range(devices)
            ]
        )
    alerts = []
    for request in requests:
        alerts += detector.feed(request, datetime.now(UTC))
    return requests, alerts


def test_a_replay_is_written_once(tmp_path: Path) -> None:
    _, alerts = _episodes(Detector())
    assert len(alerts) == 6
    log = AlertLog(tmp_path / "alerts.jsonl")
    assert len(log.emit(alerts)) == 6
    assert log.emit(alerts) == []  # the same alerts again: nothing written
    # a restart: a new detector replays the same readings; a new log reads the ids written
    _, replayed = _episodes(Detector())
    assert [a.id for a in replayed] == [a.id for a in alerts]
    again = AlertLog(tmp_path / "alerts.jsonl")
    assert again.emit(replayed) == []
    lines = again.messages()
    assert [m["id"] for m in lines] == [a.id for a in alerts]
    first = lines[0]
    assert set(first) >= {"device_id", "episode_start", "temperature", "score", "received_at", "alert_time"}
    assert first["alert_time"] >= first["received_at"]


def test_the_alert_log_ignores_a_torn_last_line_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    _, alerts = _episodes(Detector())
    path = tmp_path / "alerts.jsonl"
    AlertLog(path).emit(alerts[:2])
    with open(path, "ab") as fh:
        fh.write(json.dumps(alerts[2].message(datetime.now(UTC))).encode()[:40])  # no newline: torn
    log = AlertLog(path)
    assert log.ids() == {alerts[0].id, alerts[1].id}
    foreign = tmp_path / "other.jsonl"
    foreign.write_text('{"not": "an alert"}\n')
    with pytest.raises(ValueError, match=r"other.jsonl, line 1: not an alert"):
        AlertLog(foreign).ids()


def test_the_feed_retries_alerts_its_sink_could_not_take(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.mkdir()  # a directory where the log should be: every append fails
    feed = AlertFeed(AlertLog(path), poll_seconds=0.05)
    feed.start()
    requests, _ = _episodes(Detector())
    for request in requests:
        feed.committed(request, datetime.now(UTC))
    deadline = time.monotonic() + 10
    while not feed._pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(feed._pending) == 6 and feed.emitted == 0
    path.rmdir()  # the sink recovers
    feed.close()
    assert feed.emitted == 6
    assert len(AlertLog(path).messages()) == 6


def test_the_wal_sink_answers_even_when_alerting_fails(tmp_path: Path) -> None:
    log_path = tmp_path / "alerts.jsonl"
    log_path.mkdir()  # alerting cannot write
    sink = LocalSink(LocalLake(root=str(tmp_path / "lake")), tmp_path / "wal",
                     listener=AlertFeed(AlertLog(log_path)))  # fmt: skip
    sink.start()
    requests, _ = _episodes(Detector())
    futures = [sink.write_future(r, f"b{i}", datetime.now(UTC)) for i, r in enumerate(requests)]
    for fut in futures:
        assert fut.result(timeout=10) is None
    sink.close()
    assert list((tmp_path / "lake").glob("raw/telemetry/readings/**/*.parquet"))


def test_the_wal_sink_feeds_its_commits_and_its_replay_to_the_detector(tmp_path: Path) -> None:
    lake = LocalLake(root=str(tmp_path / "lake"))
    log_path = tmp_path / "alerts.jsonl"
    sink = LocalSink(lake, tmp_path / "wal", buffer_seconds=3600, listener=AlertFeed(AlertLog(log_path)))
    sink.start()
    requests, alerts = _episodes(Detector())
    for i, request in enumerate(requests):
        sink.write_future(request, f"b{i}", datetime.now(UTC)).result(timeout=10)
    feed = sink.listener
    assert isinstance(feed, AlertFeed)
    deadline = time.monotonic() + 10
    while feed.emitted < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["id"] for m in AlertLog(log_path).messages()] == [a.id for a in alerts]
    # a crash: the WAL stays; a new sink replays it through a new detector before serving
    segments = list((tmp_path / "wal").glob("wal-*.jsonl"))
    assert segments
    copy = tmp_path / "wal-copy"
    copy.mkdir()
    for seg in segments:
        (copy / seg.name).write_bytes(seg.read_bytes())
    fresh_log = tmp_path / "replayed.jsonl"
    replay = LocalSink(LocalLake(root=str(tmp_path / "lake2")), copy, listener=AlertFeed(AlertLog(fresh_log)))
    replay.start()
    replay.close()
    assert [m["id"] for m in AlertLog(fresh_log).messages()] == [a.id for a in alerts]
    sink.close()


def test_the_detector_keeps_up_with_20000_readings_a_second() -> None:
    devices, per_device = 2000, 100
    t = _t0()
    requests = []
    for k in range(per_device):
        when = (t + timedelta(seconds=10 * k)).isoformat()
        temps = [45.0 if k % 40 == 35 else _normal(k + d) for d in range(devices)]
        requests.append(
            [
                {"device_id": f"dev-{d:05d}", "timestamp": when, "temperature": temps[d]}
                for d in range(devices)
            ]
        )
    # in requests of 100 readings, as the API commits them
    chunks = [r[i : i + 100] for r in requests for i in range(0, devices, 100)]
    detector = Detector()
    received = datetime.now(UTC)
    started = time.process_time()
    alerts = 0
    for chunk in chunks:
        alerts += len(detector.feed(chunk, received))
    cpu = time.process_time() - started
    rate = devices * per_device / cpu
    print(f"\ndetector: {devices * per_device:,} readings in {cpu:.2f} CPU-s = {rate:,.0f} readings/s")
    assert alerts == devices * 2  # episodes at k=35 and k=75 (k=115 is past the end)
    assert rate >= 20_000


def test_the_alert_sink_is_chosen_in_one_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from resources import settings
    from resources.aws import AwsClients
    from services.telemetry_alerts.sinks import SnsAlerts, build_alert_sink

    aws = AwsClients(use_local_endpoint=True)
    monkeypatch.delenv("PLATFORM_TELEMETRY_ALERT_SINK", raising=False)
    monkeypatch.delenv("PLATFORM_TELEMETRY_SINK", raising=False)
    assert settings.telemetry_alert_log() == tmp_path / "var" / "telemetry" / "alerts.jsonl"
    assert isinstance(build_alert_sink(aws), AlertLog)
    monkeypatch.setenv("PLATFORM_TELEMETRY_SINK", "kinesis")  # the aws path publishes to SNS
    sink = build_alert_sink(aws)
    assert isinstance(sink, SnsAlerts) and sink.topic == "data-platform-telemetry-alerts"
    monkeypatch.setenv("PLATFORM_TELEMETRY_ALERT_SINK", "off")
    assert build_alert_sink(aws) is None
    monkeypatch.setenv("PLATFORM_TELEMETRY_ALERT_SINK", "pager")
    with pytest.raises(ValueError, match="PLATFORM_TELEMETRY_ALERT_SINK='pager': expected log, sns or off"):
        build_alert_sink(aws)
