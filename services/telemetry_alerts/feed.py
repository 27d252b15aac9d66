"""AlertFeed: what the ingest sink hands durably committed readings to.

`committed(readings, received_at)` only queues them (the WAL writer thread calls it after the
requests were answered, and a replay calls it before serving); one worker thread drains the
queue, runs the detector over everything waiting, and emits the alerts. Alerting never fails
or delays an ingest request: errors are logged, and alerts a sink could not take are kept and
retried (their ids make a retry safe). Readings reach the detector in commit order, which is
also the WAL's replay order, so a replay rebuilds the same episodes and ids.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime
from typing import Any

from services.telemetry_alerts.detector import Alert, Detector
from services.telemetry_alerts.sinks import AlertSink

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # alerts kept for retry while a sink is down; beyond this the oldest go
RETRY_SECONDS = 1.0


class AlertFeed:
    def __init__(self, sink: AlertSink, detector: Detector | None = None, poll_seconds: float = 0.2):
        self.sink = sink
        self.detector = detector or Detector()
        self.poll_seconds = poll_seconds
        self.emitted = 0
        self._queue: queue.SimpleQueue[tuple[list[dict[str, Any]], datetime] | None] = queue.SimpleQueue()
        self._pending: list[Alert] = []
        self._next_try = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="telemetry-alerts", daemon=True)
            self._thread.start()

    def committed(self, readings: list[dict[str, Any]], received_at: datetime) -> None:
        self._queue.put((readings, received_at))

    def close(self, timeout: float = 30.0) -> None:
        """Run the detector over what is queued, emit, and stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = []
            try:
                items.append(self._queue.get(timeout=self.poll_seconds))
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if None in items:
                stopping = True
            for item in items:
                if item is None:
                    continue
                readings, received_at = item
                try:
                    self._pending.extend(self.detector.feed(readings, received_at))
                except Exception:
                    log.exception("telemetry alert detector: a request's readings were skipped")
            if self._pending and (stopping or time.monotonic() >= self._next_try):
                self._emit()

    def _emit(self) -> None:
        try:
            self.emitted += len(self.sink.emit(self._pending))
            self._pending = []
        except Exception as exc:
            self._next_try = time.monotonic() + RETRY_SECONDS
            log.error("telemetry alerts: %d alerts not delivered yet (retried): %s", len(self._pending), exc)
            if len(self._pending) > MAX_PENDING:
                dropped = len(self._pending) - MAX_PENDING
                log.error("telemetry alerts: %d oldest undelivered alerts dropped", dropped)
                self._pending = self._pending[dropped:]
