"""Posting the fleet's readings to the telemetry ingest API at a steady rate.

    stats = run_telemetry_sim("http://127.0.0.1:8700", token, devices=50, rate=20, seconds=60)

Open loop, as services/shop/traffic.py: reading k is due at start + k / rate whatever the server
did with the ones before; its timestamp is the clock at that due time. Readings are posted in
batches of `batch_size` (POST /v1/readings/batch; a batch of one goes to POST /v1/readings), a
batch leaving when it is full or its oldest reading has waited `linger` seconds, by a pool of
`concurrency` threads, so a slow server shows up as requests in flight and latency, not as a
lower offered rate.

Each batch is posted until it has an answer:
- 200 {"accepted": n}: accepted (the API answers only once the readings are durable);
- 429: waited out (Retry-After, seconds or an HTTP date; 1 s without one) and posted again;
- 5xx, a timeout or a lost connection: posted again after an exponential backoff with jitter,
  at most `max_retries` times (then the batch counts as failed). The server may have kept the
  readings of an attempt that answered 5xx or lost its answer, so the re-sent readings are counted
  (`resent`): the duplicates they may make are expected. A connection that was never made
  cannot have stored anything and is not counted there;
- any other answer (401, 413, 422, ...): rejected, the first error of each status logged.

Late readings (the fleet's late_share) are held back until their delay has passed, a duplicated
reading's second copy until its own. When the run ends, whatever is still held is posted at once
(`flushed_early`: those late ones are less late than drawn), and the batches in flight are
waited for up to `drain_seconds`; so every reading generated is posted.

The stats add up: generated + duplicates = accepted + rejected + failed (+ in_flight, only when
the drain ran out).
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import json
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx

from services.telemetry_sim.fleet import Fleet, Generated

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

PROGRESS_SECONDS = 5.0
MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is taken as this
DEFAULT_RETRY_AFTER = 1.0
BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
LATENCY_WINDOW = 20_000  # latencies kept for the percentiles (the latest)


class SimError(ValueError):
    """The simulator cannot run as asked (a rate that is not positive, a bad URL, ...)."""


@dataclass
class SimStats:
    """What a run generated and what the API did with it; readings unless said otherwise."""

    target_rate: float
    generated: int = 0  # readings made by the fleet (each once)
    duplicates: int = 0  # second copies sent on purpose (the fleet's duplicate_share)
    late: int = 0  # readings held back to be sent late
    flushed_early: int = 0  # held readings posted at the end before their delay had passed
    posted: int = 0  # readings in every request made (re-sends and 429s included)
    accepted: int = 0
    rejected: int = 0  # refused by a 4xx other than 429
    failed: int = 0  # given up after max_retries
    resent: int = 0  # re-posted after a 5xx or a lost answer: may be duplicated by the server
    batches: int = 0
    requests: int = 0
    retries: int = 0  # requests repeated after a 5xx or a connection error
    throttled: int = 0  # 429 answers
    throttle_wait: float = 0.0  # seconds waited on Retry-After
    in_flight: int = 0  # readings posted but not answered yet
    seconds: float = 0.0
    max_lag: float = 0.0  # the most the generation was behind its schedule, seconds
    statuses: dict[int, int] = field(default_factory=dict)  # status -> answers
    latencies: list[float] = field(default_factory=list)  # seconds of the 200 answers (latest)

    @property
    def achieved_rate(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def latency(self, q: float) -> float | None:
        """The q-quantile (0..1) of the 200 answers' latency, seconds; None before any."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def line(self) -> str:
        p50, p99 = self.latency(0.5), self.latency(0.99)
        latency = (
            "no answer yet"
            if p50 is None or p99 is None
            else f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )
        return (
            f"telemetry-sim: {self.generated:,} readings generated (+{self.duplicates:,} duplicates,"
            f" {self.late:,} late), {self.posted:,} posted, {self.accepted:,} accepted,"
            f" {self.rejected:,} rejected, {self.failed:,} failed, {self.retries:,} retries"
            f" ({self.resent:,} readings re-sent), {self.throttled:,} throttled"
            f" ({self.throttle_wait:.1f} s waited), {self.achieved_rate:,.1f}/s (target"
            f" {self.target_rate:g}/s), {latency}, {self.in_flight:,} in flight"
        )

    summary = line


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; 1 s when missing
    or unreadable, at most MAX_RETRY_AFTER."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds before retry `attempt` (1, 2, ...): exponential with full jitter, capped."""
    return rng.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))


class _Poster:
    """Posts one batch until it has an answer; counts into the shared stats."""

    def __init__(
        self,
        url: str,
        token: str,
        stats: SimStats,
        lock: threading.Lock,
        abort: threading.Event,
        max_retries: int,
        timeout: float,
        seed: int | None,
    ) -> None:
        self.base = url.rstrip("/")
        self.client = httpx.Client(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        self.stats = stats
        self.lock = lock
        self.abort = abort
        self.max_retries = max_retries
        self.rng = random.Random(seed)
        self.logged: set[int] = set()

    def close(self) -> None:
        self.client.close()

    def post(self, readings: list[dict[str, Any]]) -> None:
        n = len(readings)
        if n == 1:
            path, body = "/v1/readings", json.dumps(readings[0])
        else:
            path, body = "/v1/readings/batch", json.dumps({"readings": readings})
        failures = 0
        try:
            while True:
                with self.lock:
                    self.stats.requests += 1
                    self.stats.posted += n
                started = time.monotonic()
                try:
                    response = self.client.post(self.base + path, content=body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    # Never reached the server: nothing can have been stored.
                    error, maybe_stored = f"{type(exc).__name__}: {exc}", False
                except httpx.TransportError as exc:
                    # Sent, answer lost: the server may have kept the readings.
                    error, maybe_stored = f"{type(exc).__name__}: {exc}", True
                else:
                    elapsed = time.monotonic() - started
                    status = response.status_code
                    with self.lock:
                        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
                    if status == 200:
                        accepted = _accepted(response, n)
                        with self.lock:
                            self.stats.accepted += accepted
                            self.stats.rejected += n - accepted
                            self.stats.latencies.append(elapsed)
                            if len(self.stats.latencies) > LATENCY_WINDOW:
                                del self.stats.latencies[: len(self.stats.latencies) - LATENCY_WINDOW]
                        return
                    if status == 429:
                        wait = retry_after(response.headers.get("Retry-After"))
                        with self.lock:
                            self.stats.throttled += 1
                            self.stats.throttle_wait += wait
                        if self.abort.wait(wait):
                            self._give_up(n, "the run was aborted while throttled")
                            return
                        continue
                    if status < 500:
                        self._reject(n, status, response)
                        return
                    error, maybe_stored = f"HTTP {status}: {response.text[:200]}", True
                failures += 1
                if failures > self.max_retries:
                    self._give_up(n, f"{failures} failures, the last {error}")
                    return
                with self.lock:
                    self.stats.retries += 1
                    if maybe_stored:
                        self.stats.resent += n
                log.debug("batch of %d: %s; retry %d", n, error, failures)
                if self.abort.wait(backoff(failures, self.rng)):
                    self._give_up(n, "the run was aborted while retrying")
                    return
        finally:
            with self.lock:
                self.stats.in_flight -= n

    def _reject(self, n: int, status: int, response: httpx.Response) -> None:
        with self.lock:
            self.stats.rejected += n
            first = status not in self.logged
            self.logged.add(status)
        if first:
            log.warning("batch of %d rejected: HTTP %d %s", n, status, response.text[:500])

    def _give_up(self, n: int, why: str) -> None:
        with self.lock:
            self.stats.failed += n
        log.error("batch of %d not delivered: %s", n, why)


def _accepted(response: httpx.Response, n: int) -> int:
    try:
        accepted = response.json()["accepted"]
    except (ValueError, KeyError, TypeError):
        log.warning(
            "a 200 answer without {'accepted': n}: %s; counted as all %d accepted", response.text[:200], n
        )
        return n
    if not isinstance(accepted, int) or not 0 <= accepted <= n:
        log.warning("a 200 answer accepting %r of %d readings; counted as all accepted", accepted, n)
        return n
    return accepted


def run_telemetry_sim(
    url: str,
    token: str,
    devices: int = 50,
    rate: float = 20.0,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    progress: bool = False,
    seed: int | None = None,
    *,
    batch_size: int = 100,
    linger: float = 1.0,
    concurrency: int = 8,
    max_retries: int = 8,
    timeout: float = 30.0,
    drain_seconds: float = 120.0,
    clock: Clock | None = None,
    truth: TextIO | None = None,
    on_generated: Callable[[Generated], None] | None = None,
    fleet_options: dict[str, Any] | None = None,
    progress_out: TextIO | None = None,
) -> SimStats:
    """Generate `rate` readings/s from `devices` devices and post them until `seconds` have passed
    or `stop` is set (forever when neither is given); the run's stats.

    `clock` gives the readings' timestamps (default: now, UTC); `truth` receives the ground truth
    (fleet.py); `on_generated` sees every reading as generated; `fleet_options` go to Fleet.
    """
    if not rate > 0 or math.isinf(rate):
        raise SimError(f"rate must be a positive number of readings per second, got {rate}")
    if not 1 <= batch_size <= 500:
        raise SimError(f"batch_size must be 1..500 (the API's batch limit), got {batch_size}")
    if concurrency < 1:
        raise SimError(f"concurrency must be at least 1, got {concurrency}")
    if linger < 0 or max_retries < 0 or drain_seconds < 0:
        raise SimError("linger, max_retries and drain_seconds must not be negative")
    if not url.startswith(("http://", "https://")):
        raise SimError(f"url must be http:// or https://, got {url!r}")
    if not token:
        raise SimError("no API token: give --token or set TELEMETRY_API_TOKEN")
    clock = clock or (lambda: datetime.now(UTC))
    stop = stop or threading.Event()
    out = progress_out or sys.stderr
    fleet = Fleet(devices, seed, truth=truth, **(fleet_options or {}))
    stats = SimStats(target_rate=rate)
    lock = threading.Lock()
    abort = threading.Event()
    poster = _Poster(url, token, stats, lock, abort, max_retries, timeout, seed)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="telemetry-sim")
    futures: list[Any] = []
    held: list[tuple[float, int, dict[str, Any]]] = []  # (due, order, reading): late and second copies
    order = itertools.count()
    batch: list[dict[str, Any]] = []
    batch_opened = 0.0

    def submit(readings: list[dict[str, Any]]) -> None:
        with lock:
            stats.batches += 1
            stats.in_flight += len(readings)
        futures.append(pool.submit(poster.post, readings))
        futures[:] = [f for f in futures if not f.done()]

    start = time.monotonic()
    end = start + seconds if seconds is not None else math.inf
    next_progress = start + PROGRESS_SECONDS
    k = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            while start + k / rate <= now and start + k / rate < end:
                due = start + k / rate
                generated = fleet.next(clock() - timedelta(seconds=now - due))
                k += 1
                with lock:
                    stats.generated += 1
                    stats.max_lag = max(stats.max_lag, now - due)
                if on_generated is not None:
                    on_generated(generated)
                if generated.late_delay is not None:
                    with lock:
                        stats.late += 1
                    heapq.heappush(held, (due + generated.late_delay, next(order), generated.reading))
                else:
                    if not batch:
                        batch_opened = now
                    batch.append(generated.reading)
                if generated.duplicate_delay is not None:
                    first_sent = due + (generated.late_delay or 0.0)
                    copy = json.loads(json.dumps(generated.reading))
                    heapq.heappush(held, (first_sent + generated.duplicate_delay, next(order), copy))
                    with lock:
                        stats.duplicates += 1
            while held and held[0][0] <= now:
                if not batch:
                    batch_opened = now
                batch.append(heapq.heappop(held)[2])
            while len(batch) >= batch_size:
                submit(batch[:batch_size])
                batch = batch[batch_size:]
                batch_opened = now
            if batch and now - batch_opened >= linger:
                submit(batch)
                batch = []
            if progress and now >= next_progress:
                with lock:
                    stats.seconds = now - start
                    print(stats.line(), file=out, flush=True)
                next_progress = now + PROGRESS_SECONDS
            wake = min(start + k / rate, end, next_progress if progress else end)
            if held:
                wake = min(wake, held[0][0])
            if batch:
                wake = min(wake, batch_opened + linger)
            stop.wait(max(0.0, min(wake - time.monotonic(), 0.5)))
        # The end: post whatever is held, then wait for the answers.
        flushed = 0
        now = time.monotonic()
        while held:
            due, _, reading = heapq.heappop(held)
            flushed += due > now
            batch.append(reading)
        with lock:
            stats.flushed_early += flushed
            stats.seconds = time.monotonic() - start
        for i in range(0, len(batch), batch_size):
            submit(batch[i : i + batch_size])
        batch = []
        drain_end = time.monotonic() + drain_seconds
        for future in list(futures):
            remaining = drain_end - time.monotonic()
            if remaining <= 0:
                break
            try:
                future.result(timeout=remaining)
            except TimeoutError:
                break
        if any(not f.done() for f in futures):
            log.error("the drain ran out after %.0f s with readings in flight; aborting them", drain_seconds)
            abort.set()
    finally:
        abort.set()  # a retry or a Retry-After wait still going gives up now
        pool.shutdown(wait=True)
        poster.close()
    if progress:
        print(stats.line(), file=out, flush=True)
    return stats
