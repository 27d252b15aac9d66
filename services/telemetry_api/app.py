"""The fleet telemetry ingest API (FastAPI): readings in, durable before the 200.

    POST /v1/readings         one reading                        -> 200 {"accepted": 1}
    POST /v1/readings/batch   {"readings": [...]} (<= 500)        -> 200 {"accepted": n}
    GET  /health              whether the sink is writable (no auth)
    GET  /docs, /openapi.json

Every /v1 route needs `Authorization: Bearer <TELEMETRY_API_TOKEN>`. Every error is
`{"error": {"code", "message", "parameter"}}`, parameter naming the field (`readings[3].temperature`).
413 for a body over 1 MiB or a batch over 500; 429 with Retry-After when a device sends more than
10 readings/s (token bucket) or the API more than 50,000 readings/s; 503 when the sink failed.

Environment (read by `create_app_from_env`, i.e. `dp telemetry-api`):
    TELEMETRY_API_TOKEN            the bearer token (required)
    PLATFORM_PROFILE               aws -> the Kinesis sink; otherwise the local WAL sink
    PLATFORM_TELEMETRY_SINK        local | kinesis, overrides the profile's choice
    PLATFORM_TELEMETRY_STREAM      the Kinesis stream (default data-platform-telemetry)
    PLATFORM_TELEMETRY_WAL_DIR     the local sink's WAL (default $PLATFORM_VAR_DIR/telemetry/wal)
    PLATFORM_TELEMETRY_BUFFER_BYTES / PLATFORM_TELEMETRY_BUFFER_SECONDS   1000000 / 60
    PLATFORM_TELEMETRY_DEVICE_RATE / PLATFORM_TELEMETRY_GLOBAL_RATE       10 / 50000 readings/s
    PLATFORM_LAKE_DIR, PLATFORM_LAKE_BUCKET, PLATFORM_AWS_ENDPOINT_URL   as for the rest of the platform
    PLATFORM_TELEMETRY_ALERT_SINK  log | sns | off: anomaly alerts of the local sink's committed
                                   readings (services/telemetry_alerts; default log, sns for kinesis)
    PLATFORM_TELEMETRY_ALERT_LOG / PLATFORM_TELEMETRY_ALERTS_TOPIC   the alert log / the SNS topic
"""

from __future__ import annotations

import email.message
import gc
import hmac
import json
import math
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.http_errors import (
    HTTP_CODES,
    ApiError,
    BodyLimit,
    ErrorResponse,
    error_response,
    install_error_handlers,
)
from services.telemetry_api.sink import Sink, SinkUnavailable, new_batch_id

TOKEN_ENV = "TELEMETRY_API_TOKEN"
MAX_FUTURE = timedelta(minutes=5)
MAX_AGE = timedelta(days=7)
_MAX_FUTURE_S = MAX_FUTURE.total_seconds()
_MAX_AGE_S = MAX_AGE.total_seconds()
BEARER = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_batch: int = 500
    device_rate: float = 10.0
    global_rate: float = 50_000.0


# --- models ---------------------------------------------------------------------------
class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=32)
    source: str = Field(max_length=64)


def _example(schema: dict[str, Any]) -> None:
    """A reading stamped when the schema is made (an example must lie in the accepted window)."""
    schema["examples"] = [
        {
            "device_id": "truck-0042",
            "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "temperature": 21.5,
            "humidity": 48.0,
            "pressure": 1012.8,
            "location": {"latitude": 37.5665, "longitude": 126.978},
            "metadata": {"version": "1.4.2", "source": "gateway-7"},
        }
    ]


class Reading(BaseModel):
    """One sensor reading (the seed's raw schema); null measurements are sensor faults."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_example)
    device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    timestamp: AwareDatetime = Field(description="RFC 3339 with a UTC offset; -7 days .. +5 minutes")
    temperature: float | None = Field(default=None, ge=-60, le=120, description="°C")
    humidity: float | None = Field(default=None, ge=0, le=100, description="%")
    pressure: float | None = Field(default=None, ge=300, le=1200, description="hPa")
    location: Location | None = None
    metadata: Metadata | None = None

    @field_validator("timestamp")
    @classmethod
    def _recent(cls, value: datetime) -> datetime:
        # epoch seconds: the same window as aware datetimes, without datetime arithmetic per reading
        ts, now = value.timestamp(), time.time()
        if ts > now + _MAX_FUTURE_S:
            raise ValueError("is more than 5 minutes in the future")
        if ts < now - _MAX_AGE_S:
            raise ValueError("is older than 7 days")
        return value

    def to_json(self) -> dict[str, Any]:
        """As model_dump(mode="json"), the timestamp in UTC; built by hand (the hot path)."""
        location, metadata = self.location, self.metadata
        return {
            "device_id": self.device_id,
            "timestamp": self.timestamp.astimezone(UTC).isoformat(),
            "temperature": self.temperature,
            "humidity": self.humidity,
            "pressure": self.pressure,
            "location": None
            if location is None
            else {"latitude": location.latitude, "longitude": location.longitude},
            "metadata": None
            if metadata is None
            else {"version": metadata.version, "source": metadata.source},
        }


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    readings: list[Reading] = Field(min_length=1, max_length=500)


class Accepted(BaseModel):
    accepted: int


class Health(BaseModel):
    status: Literal["ok", "down"]
    sink: str
    writable: bool
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "the body could not be parsed",
        401: "missing or wrong bearer token",
        413: "body over 1 MiB or batch over 500 readings",
        422: "a reading is invalid (named in error.parameter)",
        429: "rate limited (see Retry-After)",
        503: "the readings could not be made durable; retry",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


def _field_path(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body",)]
    # pydantic names the member of a union or the model class: drop those that are not fields
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", part) and part not in (
            "Reading", "Batch", "Location", "Metadata", "float", "none", "function-after"):  # fmt: skip
            path += f".{part}" if path else part
    return path or None


def _batch_as_fastapi(body: bytes, content_type: str | None) -> Batch:
    """The body as FastAPI's own handling of a `batch: Batch` parameter takes it: JSON when the
    content type says so (strictly: not without one), else the bytes; RequestValidationError with
    FastAPI's locations and error types."""
    data: Any = None
    if body:
        data = body
        json_type = False
        if content_type:
            message = email.message.Message()
            message["content-type"] = content_type
            subtype = message.get_content_subtype()
            json_type = message.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            )
        if json_type:
            try:
                data = json.loads(body)
            except json.JSONDecodeError as e:
                error = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                         "input": {}, "ctx": {"error": e.msg}}  # fmt: skip
                raise RequestValidationError([error], body=e.doc) from e
            except Exception as e:  # e.g. not UTF-8: FastAPI's 400
                raise StarletteHTTPException(400, "There was an error parsing the body") from e
    if data is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return Batch.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        raise RequestValidationError(errors, body=data) from exc


# --- rate limits ------------------------------------------------------------------------
class TokenBuckets:
    """Per-device and global token buckets; a request takes all its readings or none."""

    def __init__(self, device_rate: float, global_rate: float):
        self.device_rate, self.global_rate = device_rate, global_rate
        self._devices: dict[str, tuple[float, float]] = {}
        self._global = (global_rate, time.monotonic())
        self._lock = threading.Lock()

    @staticmethod
    def _level(state: tuple[float, float], rate: float, now: float) -> float:
        tokens, at = state
        return min(rate, tokens + (now - at) * rate)

    def take(self, counts: dict[str, int]) -> tuple[str, float] | None:
        """None when taken; else (who, seconds to wait)."""
        now = time.monotonic()
        with self._lock:
            total = sum(counts.values())
            g = self._level(self._global, self.global_rate, now)
            if total > g:
                return "global", (total - g) / self.global_rate if total <= self.global_rate else 1.0
            levels = {}
            for device, n in counts.items():
                state = self._devices.get(device, (self.device_rate, now))
                level = self._level(state, self.device_rate, now)
                if n > level:
                    wait = (n - level) / self.device_rate if n <= self.device_rate else 1.0
                    return device, wait
                levels[device] = level
            self._global = (g - total, now)
            for device, n in counts.items():
                self._devices[device] = (levels[device] - n, now)
            if len(self._devices) > 200_000:  # forget the full buckets of quiet devices
                self._devices = {
                    d: s
                    for d, s in self._devices.items()
                    if self._level(s, self.device_rate, now) < self.device_rate
                }
            return None


# --- the app ----------------------------------------------------------------------------
def create_app(
    sink: Sink, token: str, limits: Limits | None = None, sink_name: str = "local", manage_sink: bool = True
) -> FastAPI:
    """The API over `sink`; with manage_sink the app's lifespan starts the sink (replaying its WAL)
    and closes it (flushing every buffer), else the caller does."""
    if not token:
        raise ValueError(f"the API needs a bearer token (set {TOKEN_ENV})")
    limits = limits or Limits()
    buckets = TokenBuckets(limits.device_rate, limits.global_rate)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not manage_sink:
            yield
            return
        sink.start()  # replays what a crash left in the WAL before serving
        try:
            yield
        finally:
            sink.close()  # flushes every buffer

    app = FastAPI(title="Fleet telemetry ingest API", version="1.0.0", lifespan=lifespan)

    def check_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token", "Authorization",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip

    async def accept(readings: list[Reading]) -> Accepted:
        if len(readings) > limits.max_batch:
            raise ApiError(413, "batch_too_large", f"at most {limits.max_batch} readings a batch", "readings")
        counts: dict[str, int] = {}
        for r in readings:
            counts[r.device_id] = counts.get(r.device_id, 0) + 1
        limited = buckets.take(counts)
        if limited is not None:
            who, wait = limited
            after = str(max(1, math.ceil(wait)))
            where = "the API's global rate" if who == "global" else f"device {who}'s rate"
            parameter = "readings" if who == "global" else "device_id"
            message = f"over {where}; retry after {after} s"
            raise ApiError(429, "rate_limited", message, parameter, {"Retry-After": after})
        try:
            await sink.write([r.to_json() for r in readings], new_batch_id(), datetime.now(UTC))
        except SinkUnavailable as exc:
            raise ApiError(503, "sink_unavailable", str(exc), None, {"Retry-After": "1"}) from exc
        return Accepted(accepted=len(readings))

    router = APIRouter(prefix="/v1", dependencies=[Security(check_token)])

    # The batch route's hot path: the raw body validated by pydantic in one pass (validate_json),
    # not json.loads then validate_python. Registered before the documented route of the same
    # path, which it shadows (Starlette takes the first match) and which keeps the OpenAPI schema.
    # Anything but a valid JSON batch is parsed again the way FastAPI does, so errors are the same.
    @router.post("/readings/batch", include_in_schema=False)
    async def post_batch_fast(request: Request) -> Accepted:
        body = await request.body()
        batch: Batch | None = None
        if body and request.headers.get("content-type") == "application/json":
            try:
                batch = Batch.model_validate_json(body)
            except ValidationError:
                batch = None
        if batch is None:
            batch = _batch_as_fastapi(body, request.headers.get("content-type"))
        return await accept(batch.readings)

    @router.post("/readings", response_model=Accepted, responses=_errors(400, 401, 413, 422, 429, 503))
    async def post_reading(reading: Reading) -> Accepted:
        """One reading; answered once it is durable."""
        return await accept([reading])

    @router.post("/readings/batch", response_model=Accepted, responses=_errors(400, 401, 413, 422, 429, 503))
    async def post_batch(batch: Batch) -> Accepted:
        """Up to 500 readings; all are accepted or none."""
        return await accept(batch.readings)

    app.include_router(router)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        ok, detail = sink.health()
        body = Health(status="ok" if ok else "down", sink=sink_name, writable=ok, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    def invalid(exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        loc = tuple(first.get("loc", ()))
        parameter = _field_path(loc)
        kind = first.get("type", "")
        if kind == "too_long" and parameter == "readings":
            return error_response(
                413, "batch_too_large", f"at most {limits.max_batch} readings a batch", parameter
            )
        if kind == "extra_forbidden":
            message = f"unknown field {parameter}"
        elif kind == "missing":
            message = f"{parameter} is required"
        elif kind in ("json_invalid", "model_attributes_type", "dict_type") and not parameter:
            message = f"the body must be a JSON object: {first.get('msg')}"
        else:
            message = (
                f"{parameter or 'body'}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"
            )
        return error_response(422, "invalid_reading", message, parameter or "body")

    # No log= (as before): Starlette re-raises an unexpected error after its 500, for the server to log.
    install_error_handlers(
        app,
        validation_error=invalid,
        # FastAPI's 400 is a body it could not parse (e.g. not UTF-8): named as the body here.
        http_codes={**HTTP_CODES, 400: ("invalid_body", "body")},
    )

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """The app as `dp telemetry-api` serves it: token, sink and limits from the environment."""
    import os

    from resources import settings
    from services.telemetry_api.sink import build_sink

    token = os.environ.get(TOKEN_ENV, "").strip()
    limits = Limits(
        device_rate=settings.telemetry_device_rate(), global_rate=settings.telemetry_global_rate()
    )
    sink, name = build_sink()
    app = create_app(sink, token, limits, sink_name=name)
    # The server's heap is mostly long-lived (modules, the alert detector's device states) and its
    # requests allocate many short-lived objects: full collections of the whole heap stalled
    # requests for tens of ms. Move what exists now out of the collector's view; collect the young
    # generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return app
