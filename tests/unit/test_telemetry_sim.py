"""The telemetry simulator's pure parts: the daily cycle, the fleet's shares, anomaly episodes and
their ground truth, determinism, the readings' contract, Retry-After and backoff."""

from __future__ import annotations

import io
import itertools
import json
import random
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.telemetry_sim.driver import BACKOFF_CAP, MAX_RETRY_AFTER, backoff, retry_after
from services.telemetry_sim.fleet import (
    TEMPERATURE_NOISE,
    Fleet,
    FleetError,
    Generated,
    daily_cycle,
    log_uniform,
    read_truth,
    rfc3339,
)

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
FIELDS = {"device_id", "timestamp", "temperature", "humidity", "pressure", "location", "metadata"}


def _run(fleet: Fleet, readings: int, every: float) -> list[Generated]:
    """`readings` readings, one every `every` seconds of simulated time (devices in turn)."""
    return [fleet.next(START + timedelta(seconds=i * every)) for i in range(readings)]


def test_daily_cycle_peaks_mid_afternoon_utc_and_is_lowest_before_dawn() -> None:
    minutes = [START + timedelta(minutes=m) for m in range(24 * 60)]
    values = [daily_cycle(t, 20.0, 6.0) for t in minutes]
    peak = minutes[values.index(max(values))]
    low = minutes[values.index(min(values))]
    assert (peak.hour, peak.minute) == (15, 0)
    assert (low.hour, low.minute) == (3, 0)
    assert max(values) == pytest.approx(26.0)
    assert min(values) == pytest.approx(14.0)
    # The same instant in another zone is the same point of the cycle.
    seoul = datetime(2026, 11, 25, 0, 0, tzinfo=timezone(timedelta(hours=9)))  # 15:00 UTC
    assert daily_cycle(seoul, 20.0, 6.0) == pytest.approx(26.0)


def test_each_device_is_warmest_mid_afternoon_in_its_readings() -> None:
    fleet = Fleet(8, seed=11, anomaly_per_hour=0.0, null_share=0.0, stuck_share=0.0)
    generated = _run(fleet, 8 * 24 * 60, 60 / 8)  # each device once a minute for a day
    by_device: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for g in generated:
        by_device[g.device_id][g.timestamp.hour].append(g.reading["temperature"])
    assert len(by_device) == 8
    means = set()
    for hours in by_device.values():
        hourly = {h: sum(v) / len(v) for h, v in hours.items()}
        assert max(hourly, key=lambda h: hourly[h]) in (14, 15, 16)
        assert min(hourly, key=lambda h: hourly[h]) in (2, 3, 4)
        means.add(round(sum(hourly.values()) / 24, 1))
    assert len(means) == 8  # each device its own mean


def test_readings_follow_the_contract() -> None:
    fleet = Fleet(30, seed=5, anomaly_per_hour=3.0, null_share=0.05, stuck_share=0.05)
    for g in _run(fleet, 20_000, 0.5):
        r = g.reading
        assert set(r) == FIELDS
        assert DEVICE_ID.match(r["device_id"])
        when = datetime.fromisoformat(r["timestamp"])
        assert when.utcoffset() == timedelta(0)
        assert when == g.timestamp
        assert r["temperature"] is None or -60 <= r["temperature"] <= 120
        assert 0 <= r["humidity"] <= 100
        assert 300 <= r["pressure"] <= 1200
        assert -90 <= r["location"]["latitude"] <= 90
        assert -180 <= r["location"]["longitude"] <= 180
        assert set(r["location"]) == {"latitude", "longitude"}
        assert len(r["metadata"]["version"]) <= 32
        assert len(r["metadata"]["source"]) <= 64
        json.dumps(r, allow_nan=False)  # plain JSON: no NaN or infinity


def test_humidity_pressure_drift_slowly_and_position_stays_put() -> None:
    fleet = Fleet(5, seed=2, anomaly_per_hour=0.0)
    generated = _run(fleet, 5 * 600, 2.0)  # each device every 10 s for 100 minutes
    by_device: dict[str, list[Generated]] = defaultdict(list)
    for g in generated:
        by_device[g.device_id].append(g)
    for series in by_device.values():
        humidity = [g.reading["humidity"] for g in series]
        pressure = [g.reading["pressure"] for g in series]
        steps = [abs(a - b) for a, b in itertools.pairwise(humidity)]
        assert max(steps) < 5.0  # no jumps from one reading to the next
        assert max(humidity) - min(humidity) > 0.5  # but it moves
        assert max(abs(a - b) for a, b in itertools.pairwise(pressure)) < 2.0
        lats = [g.reading["location"]["latitude"] for g in series]
        lons = [g.reading["location"]["longitude"] for g in series]
        assert 0 < max(lats) - min(lats) < 0.001  # jitter of metres, not a moving device
        assert 0 < max(lons) - min(lons) < 0.001


def test_fault_late_and_duplicate_shares_are_close_to_the_asked_ones() -> None:
    truth = io.StringIO()
    fleet = Fleet(
        50,
        seed=21,
        anomaly_per_hour=0.0,
        null_share=0.04,
        stuck_share=0.06,
        late_share=0.08,
        duplicate_share=0.03,
        truth=truth,
    )
    generated = _run(fleet, 100_000, 0.2)
    n = len(generated)
    faults = Counter(g.fault for g in generated)
    assert faults["null"] / n == pytest.approx(0.04, abs=0.004)
    assert faults["stuck"] / n == pytest.approx(0.06, abs=0.012)
    late = [g for g in generated if g.late_delay is not None]
    duplicated = [g for g in generated if g.duplicate_delay is not None]
    assert len(late) / n == pytest.approx(0.08, abs=0.005)
    assert len(duplicated) / n == pytest.approx(0.03, abs=0.003)
    # Null faults carry no temperature; stuck ones repeat the device's last reported value exactly.
    last: dict[str, float] = {}
    for g in generated:
        t = g.reading["temperature"]
        if g.fault == "null":
            assert t is None
        elif g.fault == "stuck":
            assert t == last[g.device_id]
        else:
            assert t is not None
        if t is not None:
            last[g.device_id] = t
    # Late delays: minutes to hours (log-uniform 2 min .. 2 h by default), both ends drawn.
    delays = [g.late_delay for g in late if g.late_delay is not None]
    assert all(120 <= d <= 7200 for d in delays)
    assert sum(d < 600 for d in delays) > len(delays) / 5
    assert sum(d > 3600 for d in delays) > len(delays) / 20
    # The ground truth lists exactly those late and duplicated readings.
    lines = read_truth_text(truth.getvalue())
    assert {(x["device_id"], x["timestamp"]) for x in lines if x["kind"] == "late"} == {g.key for g in late}
    assert sorted(x["delay_s"] for x in lines if x["kind"] == "late") == pytest.approx(
        sorted(delays), abs=0.001
    )
    assert {(x["device_id"], x["timestamp"]) for x in lines if x["kind"] == "duplicate"} == {
        g.key for g in duplicated
    }
    assert not [x for x in lines if x["kind"] == "anomaly"]


def read_truth_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_anomaly_episodes_in_the_ground_truth_are_the_generated_ones(tmp_path) -> None:
    path = tmp_path / "truth.jsonl"
    with open(path, "w", encoding="utf-8") as truth:
        fleet = Fleet(20, seed=8, anomaly_per_hour=2.0, null_share=0.02, stuck_share=0.02, truth=truth)
        generated = _run(fleet, 20 * 6 * 360, 0.5)  # each device every 10 s for 6 hours
    episodes = [x for x in read_truth(path) if x["kind"] == "anomaly"]
    assert 120 <= len(episodes) <= 360  # about 2 per device-hour: 240 expected
    assert [(e["device_id"], e["start"], e["end"], e["delta_c"]) for e in episodes] == [
        (e.device_id, rfc3339(e.start), rfc3339(e.end), e.delta_c) for e in fleet.episodes
    ]
    spans: dict[str, list[tuple[datetime, datetime, float]]] = defaultdict(list)
    for e in episodes:
        start, end = datetime.fromisoformat(e["start"]), datetime.fromisoformat(e["end"])
        assert timedelta(minutes=2) <= end - start <= timedelta(minutes=8)
        assert 15 <= e["delta_c"] <= 30
        spans[e["device_id"]].append((start, end, e["delta_c"]))
    inside: Counter[tuple[str, datetime]] = Counter()
    for g in generated:
        covering = [s for s in spans[g.device_id] if s[0] <= g.timestamp < s[1]]
        assert len(covering) <= 1  # a device's episodes do not overlap
        expected = fleet.baseline(g.device_id, g.timestamp)
        t = g.reading["temperature"]
        if covering:
            start, _, delta = covering[0]
            inside[(g.device_id, start)] += 1
            assert g.anomaly is not None and g.fault is None
            assert t - expected == pytest.approx(delta, abs=6 * TEMPERATURE_NOISE)
        else:
            assert g.anomaly is None
            if g.fault is None:
                assert abs(t - expected) < 6 * TEMPERATURE_NOISE
    # Every episode has readings; one that ended within the run has one every 10 s for 2+ minutes.
    assert len(inside) == len(episodes)
    last = generated[-1].timestamp
    ended = [k for k in inside if any(s[0] == k[1] and s[1] <= last for s in spans[k[0]])]
    assert len(ended) >= len(episodes) - 20
    assert min(inside[k] for k in ended) >= 12


def test_a_seed_gives_the_same_readings_and_truth() -> None:
    def run(seed: int) -> tuple[list[dict], str]:
        truth = io.StringIO()
        fleet = Fleet(10, seed=seed, anomaly_per_hour=1.0, late_share=0.1, duplicate_share=0.1, truth=truth)
        return [g.reading for g in _run(fleet, 5_000, 1.0)], truth.getvalue()

    first, again, other = run(42), run(42), run(43)
    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]
    assert first[0][:10] != other[0][:10]


def test_bad_fleet_settings_are_refused_by_name() -> None:
    with pytest.raises(FleetError, match="late_share"):
        Fleet(5, late_share=1.5)
    with pytest.raises(FleetError, match="late_delay"):
        Fleet(5, late_delay=(60.0, 8 * 86_400.0))
    with pytest.raises(FleetError, match="devices"):
        Fleet(0)
    with pytest.raises(FleetError, match="prefix"):
        Fleet(5, prefix="bad prefix!")
    with pytest.raises(FleetError, match="time zone"):
        Fleet(5).next(datetime(2026, 11, 24, 12, 0))
    with pytest.raises(FleetError, match="low <= high"):
        log_uniform(10, 1)
    draw = log_uniform(60, 3600)
    rng = random.Random(1)
    assert all(60 <= draw(rng) <= 3600 for _ in range(1000))


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert retry_after("3", now) == 3.0
    assert retry_after(" 0.5 ", now) == 0.5
    assert retry_after("Tue, 24 Nov 2026 12:00:07 GMT", now) == pytest.approx(7.0)
    assert retry_after("Tue, 24 Nov 2026 11:59:00 GMT", now) == 0.0  # already past
    assert retry_after(None, now) == 1.0
    assert retry_after("soon", now) == 1.0
    assert retry_after("-4", now) == 0.0
    assert retry_after("86400", now) == MAX_RETRY_AFTER


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(3)
    firsts = [backoff(1, rng) for _ in range(200)]
    fourths = [backoff(4, rng) for _ in range(200)]
    late = [backoff(30, rng) for _ in range(200)]
    assert max(firsts) <= 0.25 and min(firsts) >= 0.125
    assert min(fourths) >= 1.0 and max(fourths) <= 2.0
    assert max(late) <= BACKOFF_CAP and min(late) >= BACKOFF_CAP / 2
