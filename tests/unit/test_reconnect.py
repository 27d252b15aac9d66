"""services.generators.reconnect: retries with backoff until a connection opens or a stop comes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pytest

from services.generators.cdc_traffic import TrafficError, _Stop
from services.generators.reconnect import RECONNECT_SECONDS, reconnect

log = logging.getLogger("test_reconnect")


@dataclass
class Stats:
    reconnects: int = 0


class Flaky:
    """A connect callable: raises `error` on the first `failures` calls, then returns a connection."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TrafficError("MySQL/MariaDB at 127.0.0.1:1 is not reachable: refused")
        self.calls = 0
        self.connection = object()

    def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.connection


class Waits:
    """A wait callable: records the backoff asked, never sleeps; a stop after `stop_after` waits."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return self.stop_after is not None and len(self.asked) > self.stop_after


def test_fails_n_times_then_returns_the_connection_and_counts_one_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connect, wait, stats = Flaky(failures=3), Waits(), Stats()
    with caplog.at_level(logging.WARNING, logger=log.name):
        conn = reconnect(connect, wait, stats, name="shop", log=log, retry_on=TrafficError)
    assert conn is connect.connection
    assert connect.calls == 4
    assert stats.reconnects == 1
    assert wait.asked == [1, 2, 5, 10]  # a wait before every attempt, the first one too
    assert [r.getMessage() for r in caplog.records] == [
        "shop: still unreachable (MySQL/MariaDB at 127.0.0.1:1 is not reachable: refused); retrying"
    ] * 3 + ["shop: reconnected after 4 attempts"]


def test_the_last_delay_repeats_once_the_backoff_is_used_up() -> None:
    connect, wait, stats = Flaky(failures=7), Waits(), Stats()
    assert reconnect(connect, wait, stats, name="db", log=log, retry_on=TrafficError) is connect.connection
    assert wait.asked == [*RECONNECT_SECONDS, 30, 30, 30]
    assert stats.reconnects == 1


def test_own_delays() -> None:
    connect, wait = Flaky(failures=2), Waits()
    reconnect(connect, wait, Stats(), name="db", log=log, retry_on=TrafficError, delays=(0.1, 0.5))
    assert wait.asked == [0.1, 0.5, 0.5]


def test_a_stop_during_the_backoff_returns_none_and_counts_nothing() -> None:
    connect, wait, stats = Flaky(failures=100), Waits(stop_after=3), Stats()
    assert reconnect(connect, wait, stats, name="db", log=log, retry_on=TrafficError) is None
    assert connect.calls == 3  # no attempt after the stop
    assert stats.reconnects == 0


def test_a_stop_before_the_first_attempt_never_connects() -> None:
    connect, stats = Flaky(failures=0), Stats()
    assert reconnect(connect, Waits(stop_after=0), stats, name="db", log=log, retry_on=TrafficError) is None
    assert connect.calls == 0
    assert stats.reconnects == 0


@pytest.mark.parametrize("flag", ["event", "callable"])
def test_a_set_stop_flag_returns_at_once(flag: str) -> None:
    event = threading.Event()
    event.set()
    stopped = _Stop(event if flag == "event" else event.is_set)
    connect, stats = Flaky(failures=0), Stats()
    # RECONNECT_SECONDS starts with 1 s: a stop seen only after the wait would take that long
    assert reconnect(connect, stopped.wait, stats, name="db", log=log, retry_on=TrafficError) is None
    assert connect.calls == 0
    assert stats.reconnects == 0


def test_a_stop_set_while_retrying_ends_the_loop() -> None:
    event = threading.Event()
    stopped = _Stop(event)
    stats = Stats()

    def connect() -> object:
        event.set()  # e.g. the run is stopped while the server is still down
        raise TrafficError("still down")

    assert (
        reconnect(connect, stopped.wait, stats, name="db", log=log, retry_on=TrafficError, delays=(0.01,))
        is None
    )
    assert stats.reconnects == 0


def test_an_error_not_retried_propagates() -> None:
    connect, stats = Flaky(failures=1, error=ValueError("bad schema")), Stats()
    with pytest.raises(ValueError, match="bad schema"):
        reconnect(connect, Waits(), stats, name="db", log=log, retry_on=TrafficError)
    assert stats.reconnects == 0
