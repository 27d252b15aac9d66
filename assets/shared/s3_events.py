"""Parse S3 event notifications as SQS delivers them (directly, or wrapped by SNS)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from assets.shared.sqs_sensor import MalformedMessage


class MalformedNotification(MalformedMessage):
    """An SQS message that is not an S3 event notification."""


@dataclass(frozen=True)
class S3Event:
    event_name: str
    bucket: str
    key: str
    size: int
    etag: str
    sequencer: str

    @property
    def is_created(self) -> bool:
        return self.event_name.startswith("ObjectCreated:")


def parse_message(body: str) -> list[S3Event]:
    """Events in one SQS message body; [] for S3's test event. Raises MalformedNotification."""
    try:
        doc: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedNotification(f"message body is not JSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        return parse_message(doc["Message"])  # SNS fan-out wraps the S3 document
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("Records"), list):
        raise MalformedNotification("message has no 'Records' list")
    events = []
    for i, record in enumerate(doc["Records"]):
        try:
            s3 = record["s3"]
            obj = s3["object"]
            events.append(
                S3Event(
                    event_name=str(record["eventName"]),
                    bucket=str(s3["bucket"]["name"]),
                    key=unquote_plus(str(obj["key"])),  # S3 URL-encodes keys in events
                    size=int(obj.get("size") or 0),
                    etag=str(obj.get("eTag", "")).strip('"'),  # as listings give it, unquoted
                    sequencer=str(obj.get("sequencer", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedNotification(f"record {i} is not an S3 event: missing or bad {exc}") from None
    return events
