"""The snapshot request: the SQS message body any client sends to the request queue.

    {"report": "fleet_anomalies_daily",
     "params": {"start": "2026-11-01", "end": "2026-11-24"},
     "request_id": "my-client-0001"}

`params` is optional (the report's defaults); `request_id` is optional and is what the client
polls (`dp snapshot status`, GET /v1/requests/<id>); without one the request is known by its
SQS MessageId, which SendMessage returns. Parameters are checked against the report catalog by
the consumer, not here: a request the consumer cannot use is answered with a FAILED request item
that says why, never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.snapshots.ids import request_id_for_invalid

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
FIELDS = {"report", "params", "request_id"}
MAX_BODY_BYTES = 64 * 1024


class RequestError(ValueError):
    """A message that is not a usable request; `request_id` is where its FAILED answer goes."""

    def __init__(self, message: str, request_id: str, report_id: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.report_id = report_id


@dataclass(frozen=True)
class SnapshotRequest:
    request_id: str
    report_id: str
    params: dict[str, Any] = field(default_factory=dict)  # as sent; typed by the catalog


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def request_body(
    report_id: str, params: Mapping[str, Any] | None = None, request_id: str | None = None
) -> str:
    """The message body for a request (what the CLI and the HTTP endpoint send)."""
    body: dict[str, Any] = {"report": report_id, "params": dict(params or {})}
    if request_id is not None:
        if not REQUEST_ID.fullmatch(request_id):
            raise ValueError(f"request_id {request_id!r} must be 1-128 letters, digits, '_', '.', ':' or '-'")
        body["request_id"] = request_id
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)


def parse_request(body: str, message_id: str) -> SnapshotRequest:
    """The request in a message body, or RequestError naming what is wrong."""
    fallback = request_id_for_invalid(body)
    if len(body.encode()) > MAX_BODY_BYTES:
        raise RequestError(f"message body is {len(body.encode())} bytes; at most {MAX_BODY_BYTES}", fallback)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestError(f"message body is not JSON: {exc}", fallback) from None
    if not isinstance(data, dict):
        raise RequestError(f"message body must be a JSON object, not {type(data).__name__}", fallback)
    request_id = data.get("request_id", message_id)
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise RequestError(
            f"request_id {request_id!r} must be 1-128 letters, digits, '_', '.', ':' or '-'", fallback
        )
    report = data.get("report")
    report_id = report if isinstance(report, str) else None
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise RequestError(
            f"unknown field(s) {unknown}; a request has {sorted(FIELDS)}", request_id, report_id
        )
    if not isinstance(report, str) or not report:
        raise RequestError("field 'report' (the report id) is required and must be a string", request_id)
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(
            f"field 'params' must be an object, not {type(params).__name__}", request_id, report
        )
    return SnapshotRequest(request_id, report, params)
