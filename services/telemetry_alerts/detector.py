"""The streaming anomaly detector: one alert per device and anomaly episode.

Per device it keeps an online baseline of temperature (an exponentially weighted mean and
variance; the first `warmup` readings average equally, then each new reading weighs `alpha`) and
scores a reading as the Spark job does: score = |t - M| / max(S, 0.5), anomalous at score >= 4,
or, with or without a baseline, a temperature outside -40..85 degC. A null temperature is never
an anomaly. Anomalous readings never enter the baseline (an episode must not teach the device
that its jump is normal).

Episodes: the first anomalous reading opens one and gives the alert; it closes after
`quiet_readings` normal readings in a row, or when the device's next reading comes more than
`quiet_seconds` after its last anomalous one. Everything is decided in event time (the
readings' timestamps) and arrival order, never the wall clock, so replaying the same readings
(a WAL replay, a re-read Kinesis shard) yields the same alerts with the same ids.

Out-of-order readings: a reading not newer than the newest one seen for its device (late, or a
duplicate) is counted and otherwise ignored: it cannot open, extend or close an episode, nor move
the baseline. The Spark job still scores it in the lake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The lake's anomaly model (assets/telemetry/spark/process_hour.py); the job file imports only
# the standard library at module level, so this import costs nothing.
from assets.telemetry.spark.process_hour import MIN_STDDEV, PHYSICAL_MAX_C, PHYSICAL_MIN_C, SCORE_THRESHOLD


def alert_id(device_id: str, episode_start: datetime) -> str:
    """The alert's id: the device and its episode's first anomalous reading's time (UTC, us).
    '@' cannot occur in a device id, so the id is unambiguous."""
    return f"{device_id}@{episode_start.astimezone(UTC).isoformat(timespec='microseconds')}"


@dataclass(frozen=True)
class Alert:
    """One anomaly episode of one device, as first seen."""

    id: str
    device_id: str
    episode_start: datetime  # the first anomalous reading's timestamp
    temperature: float
    score: float | None  # None when the device had no baseline yet (a physical-range alert)
    reason: str  # 'score' or 'range'
    baseline_mean: float | None
    baseline_stddev: float | None
    received_at: datetime  # when the API accepted the reading (its arrival)

    def message(self, alert_time: datetime) -> dict[str, Any]:
        """The alert as the sinks write and publish it (JSON-ready)."""
        return {
            "id": self.id,
            "kind": "telemetry_anomaly",
            "device_id": self.device_id,
            "episode_start": self.episode_start.astimezone(UTC).isoformat(timespec="microseconds"),
            "temperature": self.temperature,
            "score": self.score,
            "reason": self.reason,
            "baseline_mean": self.baseline_mean,
            "baseline_stddev": self.baseline_stddev,
            "received_at": self.received_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "alert_time": alert_time.astimezone(UTC).isoformat(timespec="microseconds"),
        }


class _Device:
    __slots__ = ("count", "last_anomaly", "mean", "newest", "open", "quiet", "var")

    def __init__(self) -> None:
        self.count = 0  # readings in the baseline
        self.mean = 0.0
        self.var = 0.0
        self.newest = -math.inf  # the newest timestamp seen (epoch seconds)
        self.open = False  # an episode is open
        self.last_anomaly = -math.inf
        self.quiet = 0  # normal readings since the last anomalous one


@dataclass
class DetectorStats:
    readings: int = 0
    out_of_order: int = 0  # late or duplicate: ignored
    no_temperature: int = 0
    anomalous: int = 0
    episodes: int = 0


@dataclass
class Detector:
    """Feed it readings in arrival order; it answers the alerts of episodes they open."""

    alpha: float = 0.05
    warmup: int = 20
    quiet_readings: int = 5
    quiet_seconds: float = 300.0
    stats: DetectorStats = field(default_factory=DetectorStats)

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.warmup < 2:
            raise ValueError(f"warmup must be at least 2 readings (a variance needs two), got {self.warmup}")
        if self.quiet_readings < 1:
            raise ValueError(f"quiet_readings must be at least 1, got {self.quiet_readings}")
        if not self.quiet_seconds > 0:
            raise ValueError(f"quiet_seconds must be positive, got {self.quiet_seconds}")
        self._devices: dict[str, _Device] = {}

    @property
    def devices(self) -> int:
        return len(self._devices)

    def feed(self, readings: list[dict[str, Any]], received_at: datetime) -> list[Alert]:
        """The alerts opened by `readings` (dicts with device_id, timestamp as RFC 3339 text or an
        aware datetime, temperature as a number or None), all received at `received_at`.
        ValueError naming the reading and field when one is malformed; the readings before it
        have been taken."""
        alerts: list[Alert] = []
        devices = self._devices
        stats = self.stats
        alpha, warmup = self.alpha, self.warmup
        for i, reading in enumerate(readings):
            device_id, when, temperature = _fields(reading, i)
            stats.readings += 1
            state = devices.get(device_id)
            if state is None:
                state = devices[device_id] = _Device()
            ts = when.timestamp()
            if ts <= state.newest:
                stats.out_of_order += 1
                continue
            state.newest = ts
            if temperature is None:
                stats.no_temperature += 1
                continue
            if state.open and ts - state.last_anomaly > self.quiet_seconds:
                state.open = False
            score: float | None = None
            stddev: float | None = None
            if state.count >= warmup:
                stddev = math.sqrt(state.var)
                score = abs(temperature - state.mean) / max(stddev, MIN_STDDEV)
            out_of_range = temperature < PHYSICAL_MIN_C or temperature > PHYSICAL_MAX_C
            if out_of_range or (score is not None and score >= SCORE_THRESHOLD):
                stats.anomalous += 1
                state.last_anomaly = ts
                state.quiet = 0
                if not state.open:
                    state.open = True
                    stats.episodes += 1
                    alerts.append(
                        Alert(
                            id=alert_id(device_id, when),
                            device_id=device_id,
                            episode_start=when,
                            temperature=temperature,
                            score=None if score is None else round(score, 3),
                            reason="range" if out_of_range else "score",
                            baseline_mean=None if stddev is None else round(state.mean, 3),
                            baseline_stddev=None if stddev is None else round(stddev, 3),
                            received_at=received_at,
                        )
                    )
                continue
            if state.open:
                state.quiet += 1
                if state.quiet >= self.quiet_readings:
                    state.open = False
            # Welford while warming up (an equal average), then an exponentially weighted one.
            state.count += 1
            weight = max(alpha, 1.0 / state.count)
            diff = temperature - state.mean
            step = weight * diff
            state.mean += step
            state.var = (1.0 - weight) * (state.var + diff * step)
        return alerts


def _fields(reading: dict[str, Any], i: int) -> tuple[str, datetime, float | None]:
    try:
        device_id = reading["device_id"]
        stamp = reading["timestamp"]
    except (KeyError, TypeError):
        raise ValueError(f"reading {i}: needs device_id and timestamp, got {reading!r:.200}") from None
    if not isinstance(device_id, str) or not device_id:
        raise ValueError(f"reading {i}: device_id must be a non-empty string, got {device_id!r}")
    if isinstance(stamp, datetime):
        when = stamp
    else:
        try:
            when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"reading {i} ({device_id}): timestamp {stamp!r} is not RFC 3339") from None
    if when.tzinfo is None:
        raise ValueError(f"reading {i} ({device_id}): timestamp {stamp!r} has no UTC offset")
    temperature = reading.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ValueError(f"reading {i} ({device_id}): temperature {temperature!r} is not a number")
        temperature = float(temperature)
        if math.isnan(temperature):
            temperature = None  # a NaN is a missing value, as a null
    return device_id, when, temperature
