"""Where alerts go, behind one interface: `emit(alerts) -> the ones newly delivered`.

AlertLog   an append-only JSON-lines file, one alert a line, fsynced before emit returns. The
           ids already in the file are read when it is opened, so an alert emitted again (a WAL
           replay, a re-read Kinesis record) is skipped: the log holds each id once.
SnsAlerts  one SNS message per alert (the aws path), and the AlertLog as its record of what was
           published: an id in the log is not published again. The line is written after the
           publish, so a crash between the two can repeat one message (at least once), never
           lose one.

`build_alert_sink()` picks one from settings.telemetry_alert_sink(): log | sns | off.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from services.telemetry_alerts.detector import Alert

if TYPE_CHECKING:
    from resources.aws import AwsClients

log = logging.getLogger(__name__)
SUBJECT_CHARS = 100  # SNS refuses longer subjects


class AlertSink(Protocol):
    def emit(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        """Deliver the alerts not delivered before; their messages. Raises when delivery failed
        (the caller keeps and retries them: ids make a retry safe)."""
        ...


class AlertLog:
    """The local alert log (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ids: set[str] | None = None

    def ids(self) -> set[str]:
        """The ids in the file (read once, then kept up to date)."""
        if self._ids is None:
            ids = set()
            if self.path.exists():
                with open(self.path, "rb") as fh:
                    for number, line in enumerate(fh, 1):
                        if not line.endswith(b"\n"):
                            break  # a torn last line: never fsynced, so never reported as written
                        try:
                            ids.add(json.loads(line)["id"])
                        except (ValueError, KeyError, TypeError):
                            raise ValueError(f"alert log {self.path}, line {number}: not an alert") from None
            self._ids = ids
        return self._ids

    def messages(self) -> list[dict[str, Any]]:
        """Every alert in the log, in order."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            return [json.loads(line) for line in fh if line.endswith(b"\n")]

    def fresh(self, alerts: Sequence[Alert]) -> list[Alert]:
        """The alerts whose ids are not in the log (nor repeated earlier in `alerts`)."""
        seen = set(self.ids())
        out = []
        for alert in alerts:
            if alert.id not in seen:
                seen.add(alert.id)
                out.append(alert)
        return out

    def append(self, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        ids = self.ids()
        data = b"".join(json.dumps(m, separators=(",", ":")).encode() + b"\n" for m in messages)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            ids.update(m["id"] for m in messages)

    def emit(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        messages = [a.message(now) for a in self.fresh(alerts)]
        self.append(messages)
        return messages


class SnsAlerts:
    """SNS publish per alert, recorded in an AlertLog (see the module docstring)."""

    def __init__(self, aws: AwsClients, topic: str, record: AlertLog):
        self.aws, self.topic, self.record = aws, topic, record
        self._arn: str | None = None

    def topic_arn(self) -> str:
        if self._arn is None:  # CreateTopic is idempotent: the existing topic's ARN
            self._arn = str(self.aws.client("sns").create_topic(Name=self.topic)["TopicArn"])
        return self._arn

    def emit(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        sent = []
        client = self.aws.client("sns")
        for alert in self.record.fresh(alerts):
            message = alert.message(datetime.now(UTC))
            subject = f"Telemetry anomaly: {alert.device_id} at {message['episode_start']}"
            client.publish(
                TopicArn=self.topic_arn(),
                Subject=subject[:SUBJECT_CHARS],
                Message=json.dumps(message),
                MessageAttributes={
                    "device_id": {"DataType": "String", "StringValue": alert.device_id},
                    "alert_id": {"DataType": "String", "StringValue": alert.id},
                },
            )
            self.record.append([message])  # one at a time: a failed publish leaves the rest to retry
            sent.append(message)
        return sent


def build_alert_sink(aws: AwsClients) -> AlertSink | None:
    """The sink the settings choose (None: alerts off); `aws` is the profile's AwsClients."""
    from resources import settings

    kind = settings.telemetry_alert_sink()
    if kind == "off":
        return None
    record = AlertLog(settings.telemetry_alert_log())
    if kind == "log":
        return record
    if kind == "sns":
        return SnsAlerts(aws, settings.telemetry_alerts_topic_name(), record)
    raise ValueError(f"PLATFORM_TELEMETRY_ALERT_SINK={kind!r}: expected log, sns or off")
