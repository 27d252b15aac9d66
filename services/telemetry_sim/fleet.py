"""The simulated fleet: N devices whose readings follow the telemetry contract (seed 004's raw schema).

    fleet = Fleet(devices=50, seed=7, truth=open("truth.jsonl", "w"))
    g = fleet.next(when)        # the next device's reading stamped `when` (devices in turn)
    g.reading                   # the JSON body: device_id, timestamp, temperature, humidity, ...
    g.anomaly, g.fault, g.late_delay, g.duplicate_delay

Each device has its own daily temperature cycle (a mean and an amplitude, the peak at 15:00 UTC,
daily_cycle), humidity and pressure drifting slowly (mean-reverting random walks), a fixed position
with a few metres of jitter, and gaussian noise on every value.

What the tests and benchmarks look for, each drawn from the fleet's one random.Random (so a seed
and the same timestamps give the same readings):
- sensor faults: `null_share` of readings with a null temperature, `stuck_share` of readings in
  runs (mean `stuck_run` readings) that repeat the device's last temperature exactly;
- anomaly episodes: on average `anomaly_per_hour` per device-hour a device's temperature jumps by
  `anomaly_delta` (+15..30 °C) for `anomaly_minutes` (2..8 min); no sensor fault inside an
  episode, so every reading in it shows the jump;
- late readings: `late_share` of readings are to be sent `late_delay` seconds after their
  timestamp (default log-uniform, 2 minutes to 2 hours);
- duplicates: `duplicate_share` of readings are to be sent a second time, `duplicate_delay`
  seconds after the first copy.

The ground truth, one JSON object a line in `truth` (read_truth): every anomaly episode when it
starts ({"kind": "anomaly", "device_id", "start", "end", "delta_c"}; a reading is in it when
start <= timestamp < end), every late reading ({"kind": "late", "device_id", "timestamp",
"delay_s"}) and every duplicated one ({"kind": "duplicate", "device_id", "timestamp"}).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

Delay = float | tuple[float, float] | Callable[[random.Random], float]

PEAK_HOUR_UTC = 15.0  # mid-afternoon
TEMPERATURE_NOISE = 0.3  # °C, one sigma
HUMIDITY_NOISE = 0.5  # %
PRESSURE_NOISE = 0.2  # hPa
GPS_JITTER = 0.00005  # degrees, one sigma (about 5 m)
FIRMWARE = ("1.4.2", "1.5.0", "2.0.1")
TEMPERATURE_RANGE = (-60.0, 120.0)
HUMIDITY_RANGE = (0.0, 100.0)
PRESSURE_RANGE = (300.0, 1200.0)
MAX_LATE_SECONDS = 6 * 86_400.0  # the API refuses readings older than 7 days


class FleetError(ValueError):
    """A fleet that cannot be built as asked (a share outside 0..1, no devices, ...)."""


def daily_cycle(when: datetime, mean: float, amplitude: float) -> float:
    """A device's temperature without noise at `when`: a cosine over the UTC day, `mean +
    amplitude` at 15:00 UTC and `mean - amplitude` at 03:00 UTC."""
    utc = when.astimezone(UTC)
    hour = utc.hour + utc.minute / 60 + (utc.second + utc.microsecond / 1e6) / 3600
    return mean + amplitude * math.cos(2 * math.pi * (hour - PEAK_HOUR_UTC) / 24)


def log_uniform(low: float, high: float) -> Callable[[random.Random], float]:
    """A delay drawn log-uniformly between `low` and `high` seconds (as many minutes-late readings
    as hours-late ones per decade)."""
    if not 0 < low <= high:
        raise FleetError(f"log_uniform needs 0 < low <= high, got {low}, {high}")

    def draw(rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    return draw


def draw_delay(delay: Delay, rng: random.Random) -> float:
    """Seconds from a Delay: a number, a (low, high) uniform range or a function of the rng."""
    if callable(delay):
        return max(0.0, float(delay(rng)))
    if isinstance(delay, tuple):
        low, high = delay
        return max(0.0, rng.uniform(low, high))
    return max(0.0, float(delay))


def rfc3339(when: datetime) -> str:
    """`when` in UTC with milliseconds and an explicit offset: 2026-11-24T14:05:09.123+00:00."""
    if when.tzinfo is None:
        raise FleetError(f"timestamp {when!r} has no time zone")
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def read_truth(path: str | Path) -> list[dict[str, Any]]:
    """The ground-truth lines of a run (anomaly episodes, late and duplicated readings)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class Episode:
    device_id: str
    start: datetime
    end: datetime
    delta_c: float

    def covers(self, when: datetime) -> bool:
        return self.start <= when < self.end


@dataclass(frozen=True)
class Generated:
    """One reading as generated, with what was done to it (for the driver and the tests)."""

    reading: dict[str, Any]  # the JSON body as sent
    device_id: str
    timestamp: datetime
    anomaly: Episode | None  # the episode the reading is in
    fault: str | None  # None, 'null' (no temperature) or 'stuck' (the last value repeated)
    late_delay: float | None  # seconds after its timestamp it is to be sent, when late
    duplicate_delay: float | None  # seconds after the first copy a second is sent, when duplicated

    @property
    def key(self) -> tuple[str, str]:
        return (self.device_id, self.reading["timestamp"])


@dataclass
class _Device:
    device_id: str
    mean: float
    amplitude: float
    humidity_base: float
    humidity: float
    pressure_base: float
    pressure: float
    latitude: float
    longitude: float
    version: str
    source: str
    last_at: datetime | None = None
    last_temperature: float | None = None
    stuck_left: int = 0
    episode: Episode | None = None


def _check_share(name: str, share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise FleetError(f"{name} must be between 0 and 1, got {share}")


class Fleet:
    """N devices taking turns: next(when) is the reading of the next device in line at `when`."""

    def __init__(
        self,
        devices: int = 50,
        seed: int | None = None,
        *,
        prefix: str = "dev",
        null_share: float = 0.01,
        stuck_share: float = 0.01,
        stuck_run: float = 8.0,
        anomaly_per_hour: float = 0.2,
        anomaly_minutes: tuple[float, float] = (2.0, 8.0),
        anomaly_delta: tuple[float, float] = (15.0, 30.0),
        late_share: float = 0.02,
        late_delay: Delay | None = None,
        duplicate_share: float = 0.01,
        duplicate_delay: Delay = (0.0, 30.0),
        truth: TextIO | None = None,
    ) -> None:
        if devices < 1:
            raise FleetError(f"devices must be at least 1, got {devices}")
        for name, share in (
            ("null_share", null_share),
            ("stuck_share", stuck_share),
            ("late_share", late_share),
            ("duplicate_share", duplicate_share),
        ):
            _check_share(name, share)
        if null_share + stuck_share >= 1.0:
            raise FleetError(f"null_share + stuck_share must be below 1, got {null_share + stuck_share}")
        if stuck_run < 1:
            raise FleetError(f"stuck_run must be at least 1 reading, got {stuck_run}")
        if anomaly_per_hour < 0:
            raise FleetError(f"anomaly_per_hour must not be negative, got {anomaly_per_hour}")
        if not 0 < anomaly_minutes[0] <= anomaly_minutes[1]:
            raise FleetError(f"anomaly_minutes must be 0 < low <= high, got {anomaly_minutes}")
        fixed_late = [late_delay] if isinstance(late_delay, int | float) else []
        if isinstance(late_delay, tuple):
            fixed_late = list(late_delay)
        if any(not 0 <= d <= MAX_LATE_SECONDS for d in fixed_late):
            raise FleetError(
                f"late_delay must be 0..{MAX_LATE_SECONDS:.0f} s (the API refuses readings older than"
                f" 7 days), got {late_delay}"
            )
        if len(prefix) + 6 > 64 or not prefix.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise FleetError(f"prefix {prefix!r}: letters, digits, '_', '-', '.' and at most 58 characters")
        self.rng = random.Random(seed)
        self.null_share = null_share
        self.stuck_share = stuck_share
        # A run of mean m starting with probability p at a reading not stuck covers
        # p*m / (p*m + 1 - p) of the readings: p from the share asked.
        self._stuck_start = stuck_share / (stuck_run * (1.0 - stuck_share) + stuck_share)
        self._stuck_run = stuck_run
        # Nulls are drawn among the readings that are not stuck.
        self._null_p = null_share / (1.0 - stuck_share)
        self.anomaly_per_hour = anomaly_per_hour
        self.anomaly_minutes = anomaly_minutes
        self.anomaly_delta = anomaly_delta
        self.late_share = late_share
        self.late_delay: Delay = late_delay if late_delay is not None else log_uniform(120.0, 7200.0)
        self.duplicate_share = duplicate_share
        self.duplicate_delay = duplicate_delay
        self.truth = truth
        self.devices = [self._new_device(f"{prefix}-{i:04d}", i) for i in range(devices)]
        self._turn = 0
        self.episodes: list[Episode] = []

    def _new_device(self, device_id: str, index: int) -> _Device:
        rng = self.rng
        humidity = rng.uniform(35.0, 75.0)
        pressure = rng.gauss(1013.0, 8.0)
        return _Device(
            device_id=device_id,
            mean=rng.uniform(5.0, 30.0),
            amplitude=rng.uniform(3.0, 10.0),
            humidity_base=humidity,
            humidity=humidity,
            pressure_base=pressure,
            pressure=pressure,
            # Around Seoul (the seed's fleet), within about 50 km.
            latitude=37.55 + rng.uniform(-0.45, 0.45),
            longitude=126.98 + rng.uniform(-0.55, 0.55),
            version=rng.choice(FIRMWARE),
            source=f"gateway-{index % 8:02d}",
        )

    def baseline(self, device_id: str, when: datetime) -> float:
        """The device's temperature without noise, anomaly or fault at `when`."""
        device = self._device(device_id)
        return daily_cycle(when, device.mean, device.amplitude)

    def _device(self, device_id: str) -> _Device:
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise FleetError(f"no device {device_id!r} in this fleet")

    def next(self, when: datetime) -> Generated:
        """The reading of the next device in turn, stamped `when` (an aware datetime)."""
        device = self.devices[self._turn]
        self._turn = (self._turn + 1) % len(self.devices)
        return self.reading(device, when)

    def reading(self, device: _Device, when: datetime) -> Generated:
        rng = self.rng
        timestamp = rfc3339(when)
        when = datetime.fromisoformat(timestamp)  # as sent: milliseconds
        dt_hours = 0.0
        if device.last_at is not None:
            dt_hours = max(0.0, (when - device.last_at).total_seconds() / 3600)
        device.last_at = when

        # Slow drift: mean-reverting walks (half-life about 1.4 h), a few units an hour.
        if dt_hours > 0:
            device.humidity += 0.5 * (device.humidity_base - device.humidity) * dt_hours
            device.humidity += rng.gauss(0.0, 3.0 * math.sqrt(dt_hours))
            device.pressure += 0.5 * (device.pressure_base - device.pressure) * dt_hours
            device.pressure += rng.gauss(0.0, 1.5 * math.sqrt(dt_hours))

        if device.episode is not None and not device.episode.covers(when):
            device.episode = None
        starts = device.episode is None and dt_hours > 0 and self.anomaly_per_hour > 0
        if starts and rng.random() < 1.0 - math.exp(-self.anomaly_per_hour * dt_hours):
            minutes = rng.uniform(*self.anomaly_minutes)
            episode = Episode(
                device.device_id,
                when,
                when + timedelta(minutes=minutes),
                round(rng.uniform(*self.anomaly_delta), 2),
            )
            device.episode = episode
            self.episodes.append(episode)
            self._record(
                {
                    "kind": "anomaly",
                    "device_id": episode.device_id,
                    "start": rfc3339(episode.start),
                    "end": rfc3339(episode.end),
                    "delta_c": episode.delta_c,
                }
            )

        measured = daily_cycle(when, device.mean, device.amplitude) + rng.gauss(0.0, TEMPERATURE_NOISE)
        temperature: float | None = measured
        fault: str | None = None
        if device.episode is not None:
            temperature = measured + device.episode.delta_c
            device.stuck_left = 0  # an episode ends a stuck run: the jump must show
        elif device.stuck_left > 0 and device.last_temperature is not None:
            device.stuck_left -= 1
            temperature, fault = device.last_temperature, "stuck"
        elif device.last_temperature is not None and rng.random() < self._stuck_start:
            # This reading and a geometric number more (mean stuck_run) repeat the last value.
            device.stuck_left = self._geometric(self._stuck_run) - 1
            temperature, fault = device.last_temperature, "stuck"
        elif rng.random() < self._null_p:
            temperature, fault = None, "null"
        if temperature is not None:
            temperature = round(min(max(temperature, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]), 2)
            device.last_temperature = temperature

        humidity = min(max(device.humidity + rng.gauss(0.0, HUMIDITY_NOISE), 0.0), 100.0)
        pressure = min(max(device.pressure + rng.gauss(0.0, PRESSURE_NOISE), 300.0), 1200.0)
        reading: dict[str, Any] = {
            "device_id": device.device_id,
            "timestamp": timestamp,
            "temperature": temperature,
            "humidity": round(humidity, 1),
            "pressure": round(pressure, 1),
            "location": {
                "latitude": round(device.latitude + rng.gauss(0.0, GPS_JITTER), 6),
                "longitude": round(device.longitude + rng.gauss(0.0, GPS_JITTER), 6),
            },
            "metadata": {"version": device.version, "source": device.source},
        }

        late_delay = None
        if rng.random() < self.late_share:
            late_delay = min(draw_delay(self.late_delay, rng), MAX_LATE_SECONDS)
            self._record(
                {
                    "kind": "late",
                    "device_id": device.device_id,
                    "timestamp": timestamp,
                    "delay_s": round(late_delay, 3),
                }
            )
        duplicate_delay = None
        if rng.random() < self.duplicate_share:
            duplicate_delay = draw_delay(self.duplicate_delay, rng)
            self._record({"kind": "duplicate", "device_id": device.device_id, "timestamp": timestamp})
        return Generated(
            reading=reading,
            device_id=device.device_id,
            timestamp=when,
            anomaly=device.episode,
            fault=fault,
            late_delay=late_delay,
            duplicate_delay=duplicate_delay,
        )

    def _geometric(self, mean: float) -> int:
        """A run length >= 1 with the given mean."""
        if mean <= 1:
            return 1
        p = 1.0 / mean
        return 1 + int(math.log(1.0 - self.rng.random()) / math.log(1.0 - p))

    def _record(self, line: dict[str, Any]) -> None:
        if self.truth is not None:
            self.truth.write(json.dumps(line) + "\n")
            self.truth.flush()
