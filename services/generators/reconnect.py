"""Re-open a lost database connection: retry with backoff until it opens or a stop comes.

Shared by the change traffic (cdc_traffic.py) and the shop traffic (services/shop/traffic.py):

    conn = reconnect(connect, stopped.wait, stats, name=database, log=log, retry_on=TrafficError)

Before each attempt it waits the next of `delays` (the last one repeats for ever); an attempt
that raises `retry_on` is logged and retried, any other error propagates. The first connection
that opens adds one to `stats.reconnects` and is returned; None when `wait` reports a stop first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

RECONNECT_SECONDS: tuple[float, ...] = (1, 2, 5, 10, 30)  # the wait before each attempt

T = TypeVar("T")


class CountsReconnects(Protocol):
    """Stats with a reconnect counter (TrafficStats, ShopStats)."""

    reconnects: int


def reconnect(
    connect: Callable[[], T],
    wait: Callable[[float], bool],
    stats: CountsReconnects,
    *,
    name: str,
    log: logging.Logger,
    retry_on: type[Exception] | tuple[type[Exception], ...],
    delays: Sequence[float] = RECONNECT_SECONDS,
) -> T | None:
    """`connect()`'s connection once it opens; None when stopped first.

    `wait(seconds)` sleeps up to `seconds` and is True when a stop came meanwhile (_Stop.wait);
    `name` (the database) starts the log lines, written to `log`.
    """
    for attempt, seconds in enumerate(itertools.chain(delays, itertools.repeat(delays[-1]))):
        if wait(seconds):
            return None
        try:
            conn = connect()
        except retry_on as exc:
            log.warning("%s: still unreachable (%s); retrying", name, exc)
            continue
        stats.reconnects += 1
        log.warning("%s: reconnected after %d attempts", name, attempt + 1)
        return conn
    return None  # pragma: no cover  (the loop ends only by a stop)
