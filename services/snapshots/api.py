"""The report snapshot API (FastAPI): request a snapshot, poll its state (`dp snapshot-api`).

    POST /v1/snapshots                {"report", "params", "request_id"?} -> 202 {request_id, state, poll}
    GET  /v1/requests/{request_id}    the request and its snapshot's state (what a client polls)
    GET  /v1/snapshots/{snapshot_id}  one snapshot: state, attempts, uri, files, rows, error, timings
    GET  /v1/reports                  the report catalog: ids, titles, typed parameters
    GET  /health                      the request queue and the state table reachable (no auth)
    GET  /docs, /openapi.json

Every /v1 route needs `Authorization: Bearer <SNAPSHOT_API_TOKEN>`. Every error is
`{"error": {"code", "message", "parameter"}}`, parameter naming what was wrong (`report`,
`params.start`, `request_id`, `body`, `Authorization`).

The POST checks the report id and the parameters against the catalog (platform/reports/, read per
request, so a new report needs no restart) before anything is sent: an unknown report is 404
naming the known ids, a bad parameter 422 naming it and the reason. A valid request is sent to the
request queue (settings.snapshot_queue_name(), its URL resolved when first used) as
messages.request_body(...) with the parameters as the client sent them, exactly as any other SQS
client would send it; without a request_id the API makes one (messages.new_request_id) so the
answer can name what to poll. A request_id already recorded is not sent again: the answer carries
its current state (409 if it was recorded for another report or other parameters).

The API is stateless and writes nothing to DynamoDB: the platform's sensor records a request when
it reads the message from the queue, within a sensor tick (~15 s). Until then
GET /v1/requests/<id> answers 404 saying so; a client polls until it gets 200 (the request and its
snapshot: REQUESTED, RENDERING, READY with uri and files, FAILED with the error). Keeping no
"sent" table here means any number of API processes, the CLI and plain SQS clients all behave
the same way.

Environment (read by `create_app_from_env`, i.e. `dp snapshot-api`):
    SNAPSHOT_API_TOKEN        the bearer token (required; never logged)
    PLATFORM_PROFILE          which AwsClients: local/local-s3 -> the moto server, aws -> AWS
    PLATFORM_SNAPSHOT_QUEUE   the request queue (default platform-report-requests)
    PLATFORM_SNAPSHOT_TABLE   the state table (default platform-report-snapshots)
    PLATFORM_AWS_ENDPOINT_URL the moto server of the local profiles
"""

from __future__ import annotations

import email.message
import hmac
import json
import logging
import os
import re
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from services.http_errors import ApiError, BodyLimit, ErrorResponse, install_error_handlers
from services.snapshots.catalog import (
    Report,
    ReportCatalogError,
    ReportRequestError,
    load_reports,
    validate_params,
)
from services.snapshots.ids import SNAPSHOT_ID_PATTERN, canonical_params, canonical_versions
from services.snapshots.messages import MAX_BODY_BYTES, REQUEST_ID, new_request_id, request_body
from services.snapshots.store import READY, SnapshotStore, request_view

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from resources.aws import AwsClients

log = logging.getLogger(__name__)

TOKEN_ENV = "SNAPSHOT_API_TOKEN"
BEARER = HTTPBearer(auto_error=False, description=f"the token in {TOKEN_ENV}")
# The catalog's wording names the parameter: "parameter 'start' is required", "parameter 'x': ...".
_PARAM_IN_MESSAGE = re.compile(r"parameter '([a-z][a-z0-9_]*)'")


# --- models (the OpenAPI schema) -------------------------------------------------------------
class SnapshotRequestBody(BaseModel):
    """A snapshot request: the same fields as the SQS message body (services.snapshots.messages)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "report": "fleet_anomalies_daily",
                    "params": {"start": "2026-11-01", "end": "2026-11-24"},
                    "request_id": "my-client-0001",
                }
            ]
        },
    )
    report: str = Field(min_length=1, max_length=64, description="the report id (GET /v1/reports)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the report's parameters; omitted ones take their defaults"
    )
    request_id: str | None = Field(
        default=None,
        pattern=REQUEST_ID.pattern,
        description="what to poll; made by the API when not given. Sending the same id again is idempotent.",
    )


class Accepted(BaseModel):
    request_id: str
    state: str = Field(description="REQUESTED when sent now; else the recorded request's state")
    poll: str = Field(description="the path to poll: /v1/requests/<request_id>")


class Reused(Accepted):
    """A request answered at once by a READY snapshot of the data as it is now (200)."""

    model_config = ConfigDict(extra="allow")
    snapshot_id: str
    uri: str | None = None
    files: dict[str, str] = Field(default_factory=dict, description="format -> object URI")


class SnapshotState(BaseModel):
    """A snapshot item (services.snapshots.store.Snapshot.to_dict())."""

    model_config = ConfigDict(extra="allow")
    snapshot_id: str
    report_id: str
    state: Literal["REQUESTED", "RENDERING", "READY", "FAILED"]
    attempts: int
    params: dict[str, Any]
    data_versions: dict[str, str]
    created_at: str | None = None
    updated_at: str | None = None
    lease_owner: str | None = None
    lease_until: str | None = None
    retry_at: str | None = None
    last_error: str | None = None
    uri: str | None = Field(default=None, description="READY: the snapshot's folder in the lake")
    files: dict[str, str] | None = Field(default=None, description="READY: output format -> object URI")
    checksum: str | None = None
    rows: int | None = None
    render_seconds: float | None = None
    ready_at: str | None = None
    error: str | None = Field(default=None, description="FAILED: why")
    failed_at: str | None = None


class RequestState(BaseModel):
    """A request (store.get_request): the request with its snapshot's fields merged in; a request
    rejected before it had a snapshot is FAILED with its error and no snapshot_id."""

    model_config = ConfigDict(extra="allow")
    request_id: str
    state: Literal["REQUESTED", "RENDERING", "READY", "FAILED"]
    report_id: str | None = None
    received_at: str | None = None
    snapshot_id: str | None = None
    attempts: int | None = None
    params: dict[str, Any] | None = None
    data_versions: dict[str, str] | None = None
    uri: str | None = None
    files: dict[str, str] | None = None
    rows: int | None = None
    error: str | None = None


class ParameterInfo(BaseModel):
    type: str
    required: bool
    default: Any = None
    choices: list[str] | None = None
    min: Any = None
    max: Any = None
    description: str


class ReportInfo(BaseModel):
    id: str
    title: str
    description: str
    reads: list[str]
    formats: list[str]
    parameters: dict[str, ParameterInfo]


class ReportList(BaseModel):
    reports: list[ReportInfo]


class Dependency(BaseModel):
    name: str
    ok: bool
    detail: str


class Health(BaseModel):
    status: Literal["ok", "down"]
    queue: Dependency
    table: Dependency


_ERROR_TEXT = {
    401: "missing or wrong bearer token",
    404: "unknown report, request or snapshot",
    409: "the request_id was already used for another request",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    415: "the body is not application/json",
    422: "the body or a parameter is invalid (named in error.parameter)",
    503: "the request queue or the state table is unavailable; retry",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_body(raw: bytes) -> SnapshotRequestBody:
    """The body as a request, or ApiError 422 naming the problem (JSON first, then each field)."""
    if not raw:
        raise ApiError(422, "invalid_body", "the body is empty; send a JSON object with 'report'", "body")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ApiError(422, "invalid_body", "the body is not UTF-8 text", "body") from None
    except json.JSONDecodeError as exc:
        message = f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ApiError(422, "invalid_body", message, "body") from None
    except ValueError as exc:  # NaN, Infinity
        raise ApiError(422, "invalid_body", f"the body is not JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"the body must be a JSON object, not {_json_kind(data)}", "body")
    try:
        return SnapshotRequestBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        kind = first["type"]
        if kind == "extra_forbidden":
            message = f"unknown field {field!r}; a request has 'report', 'params' and 'request_id'"
        elif kind == "missing":
            message = f"field {field!r} is required"
        elif kind == "string_pattern_mismatch" and field == "request_id":
            message = "request_id must be 1-128 letters, digits, '_', '.', ':' or '-', starting with a"
            message += " letter or digit"
        else:
            message = f"{field}: {first['msg']}"
        raise ApiError(422, "invalid_field", message, field) from None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _culprit(report: Report, raw: dict[str, Any]) -> str | None:
    """The parameter whose value makes validation raise something other than ReportRequestError
    (which names its parameter itself): each value typed on its own, as validate_params does."""
    from services.snapshots.catalog import _coerce  # the catalog's one typing function per type

    for name, value in raw.items():
        param = report.parameters.get(name)
        if param is None or value is None:
            continue
        try:
            param.check_range(_coerce(param.type, value, param.choices))
        except Exception:
            return name
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def report_info(report: Report) -> dict[str, Any]:
    """A report as GET /v1/reports lists it (defaults and bounds as JSON values)."""
    return {
        "id": report.id,
        "title": report.title,
        "description": report.description.strip(),
        "reads": list(report.reads),
        "formats": list(report.formats),
        "parameters": {
            name: {
                "type": p.type,
                "required": p.required,
                "default": _jsonable(p.default),
                "choices": p.choices,
                "min": _jsonable(p.min),
                "max": _jsonable(p.max),
                "description": p.description,
            }
            for name, p in report.parameters.items()
        },
    }


class ReadsCache:
    """What each report reads, as the sweep sensor published it, kept for `ttl` seconds: it
    changes only when a code location with other report definitions is deployed, so for at most
    `ttl` after a deploy the API answers as it would have before it."""

    def __init__(self, store: SnapshotStore, ttl: float = 30.0) -> None:
        self.store, self.ttl = store, ttl
        self._held: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, report_id: str) -> list[str] | None:
        with self._lock:
            held = self._held.get(report_id)
        if held is not None and time.monotonic() < held[0]:
            return held[1]
        reads = self.store.report_reads(report_id)
        if reads is not None:  # not yet published: asked again next time
            with self._lock:
                self._held[report_id] = (time.monotonic() + self.ttl, reads)
        return reads


# --- the app ---------------------------------------------------------------------------------
def create_app(
    aws: AwsClients,
    token: str,
    reports_dir: Path | str | None = None,
    instance: DagsterInstance | None = None,
) -> FastAPI:
    """The API over `aws` (SQS for requests, DynamoDB for state). The state store is bound to
    PLATFORM_SNAPSHOT_TABLE now; the queue name is read on each request; the catalog (default
    platform/reports/) on each request that needs it. With the platform's Dagster `instance`, a
    request whose snapshot (over the data as it is now) is READY is answered at once (200)."""
    if not token:
        raise RuntimeError(f"{TOKEN_ENV} is not set: the snapshot API refuses to run without a token")
    from botocore.exceptions import BotoCoreError, ClientError

    from resources import settings

    store = SnapshotStore.from_resources(aws)
    sqs = aws.client("sqs")
    expected = token.encode()
    queue_urls: dict[str, str] = {}
    urls_lock = threading.Lock()
    aws_errors = (BotoCoreError, ClientError)

    def unavailable(what: str, exc: Exception) -> ApiError:
        log.warning("snapshot-api: %s: %s", what, exc)
        return ApiError(503, "unavailable", f"{what}: {exc}; retry", headers={"Retry-After": "2"})

    def catalog() -> dict[str, Report]:
        try:
            return load_reports(reports_dir)
        except ReportCatalogError as exc:  # a broken file on the server: not the client's fault
            raise unavailable("the report catalog does not load", exc) from exc

    def queue_url(name: str, fresh: bool = False) -> str:
        with urls_lock:
            if not fresh and name in queue_urls:
                return queue_urls[name]
        try:
            url = str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except sqs.exceptions.QueueDoesNotExist as exc:
            raise unavailable(f"the request queue {name!r} does not exist", exc) from exc
        except aws_errors as exc:
            raise unavailable(f"the request queue {name!r} cannot be reached", exc) from exc
        with urls_lock:
            queue_urls[name] = url
        return url

    def send(body: str) -> None:
        name = settings.snapshot_queue_name()
        try:
            sqs.send_message(QueueUrl=queue_url(name), MessageBody=body)
        except sqs.exceptions.QueueDoesNotExist:
            # The queue was deleted and made again since its URL was cached: resolve once more.
            try:
                sqs.send_message(QueueUrl=queue_url(name, fresh=True), MessageBody=body)
            except aws_errors as exc:
                raise unavailable(f"the request could not be sent to {name!r}", exc) from exc
        except aws_errors as exc:
            raise unavailable(f"the request could not be sent to {name!r}", exc) from exc

    def recorded(request_id: str) -> dict[str, Any] | None:
        try:
            return store.get_request(request_id)
        except store.client.exceptions.ResourceNotFoundException:
            return None  # no table yet: the sensor has recorded nothing
        except aws_errors as exc:
            raise unavailable(f"the state table {store.table_name!r} cannot be read", exc) from exc

    async def authorize(
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        # The header is read here, so the answer says what exactly was wrong.
        header = request.headers.get("authorization")
        challenge = 'Bearer realm="snapshot-api"'
        if not header:
            raise ApiError(
                401,
                "missing_token",
                "send Authorization: Bearer <token>",
                "Authorization",
                {"WWW-Authenticate": challenge},
            )
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401,
                "invalid_authorization",
                "the Authorization header must be 'Bearer <token>'",
                "Authorization",
                {"WWW-Authenticate": challenge + ', error="invalid_request"'},
            )
        if not hmac.compare_digest(value.strip().encode(), expected):
            raise ApiError(
                401,
                "invalid_token",
                "the bearer token is not valid",
                "Authorization",
                {"WWW-Authenticate": challenge + ', error="invalid_token"'},
            )

    app = FastAPI(
        title="Report snapshot API",
        version="1.0.0",
        description=__doc__,
    )

    install_error_handlers(app, log=log, log_message="snapshot-api: unexpected error")

    v1 = APIRouter(prefix="/v1", dependencies=[Security(authorize)])

    @v1.post(
        "/snapshots",
        status_code=202,
        response_model=Accepted,
        responses={
            200: {"model": Reused, "description": "answered at once: the snapshot is READY"},
            **_errors(401, 404, 409, 413, 415, 422, 503),
        },
        summary="Request a snapshot of a report",
        # The body is read by hand (content type, JSON, then fields, each with its own error);
        # its schema is documented here.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SnapshotRequestBody.model_json_schema()}},
            }
        },
    )
    async def post_snapshot(request: Request) -> JSONResponse:
        """Check the report and parameters against the catalog, then answer at once if the
        snapshot of the data as it is now is READY (200), else send the request to the queue (202).
        Poll the answer's `poll` path for the state."""
        if not _is_json(request.headers.get("content-type")):
            got = request.headers.get("content-type") or "none"
            raise ApiError(
                415,
                "unsupported_media_type",
                f"send the request as application/json (got content type {got})",
                "Content-Type",
            )
        body = _parse_body(await request.body())
        return await run_in_threadpool(submit, body)  # the catalog and boto3 calls block

    def submit(body: SnapshotRequestBody) -> JSONResponse:
        reports = catalog()
        report = reports.get(body.report)
        if report is None:
            raise ApiError(
                404,
                "unknown_report",
                f"unknown report {body.report!r}; known reports: {sorted(reports)}",
                "report",
            )
        try:
            typed = validate_params(report, body.params)
            canonical = canonical_params(typed)
        except ReportRequestError as exc:
            unknown = sorted(set(body.params) - set(report.parameters))
            match = _PARAM_IN_MESSAGE.search(str(exc))
            name = unknown[0] if unknown else (match.group(1) if match else None)
            raise ApiError(
                422, "invalid_parameter", str(exc), f"params.{name}" if name else "params"
            ) from None
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. 1e400 as a float parameter
            name = _culprit(report, body.params)
            message = f"report {report.id!r}: parameter {name!r}: {exc}" if name else str(exc)
            raise ApiError(
                422, "invalid_parameter", message, f"params.{name}" if name else "params"
            ) from None
        request_id = body.request_id or new_request_id()
        poll = f"/v1/requests/{request_id}"
        existing = recorded(request_id) if body.request_id else None
        if existing is not None:
            same = existing.get("report_id") == report.id and (
                existing.get("params") is None or existing["params"] == json.loads(canonical)
            )
            if not same:
                raise ApiError(
                    409,
                    "request_id_in_use",
                    f"request_id {request_id!r} was already used for report "
                    f"{existing.get('report_id')!r} with params {existing.get('params')}; "
                    "choose another request_id",
                    "request_id",
                )
            # Already recorded: not sent again (the consumer would only count a duplicate).
            return JSONResponse(
                {"request_id": request_id, "state": existing["state"], "poll": poll}, status_code=202
            )
        if instance is not None:
            found = reuse(report, typed, request_id)
            if found is not None:
                answer = Reused(
                    request_id=request_id, poll=poll, **{k: v for k, v in found.items() if k != "request_id"}
                )
                return JSONResponse(answer.model_dump(), status_code=200)
        send(request_body(report.id, body.params, request_id))
        return JSONResponse({"request_id": request_id, "state": "REQUESTED", "poll": poll}, status_code=202)

    reads_of = ReadsCache(store)

    def reuse(report: Report, typed: dict[str, Any], request_id: str) -> dict[str, Any] | None:
        """The request recorded against a READY snapshot of the data as it is now, or None (not
        READY, or the sensor has not published what the report reads yet): then it is queued.
        Three DynamoDB calls and one event-log query: what the report reads is cached."""
        from assets.reports.versions import current_snapshot

        if instance is None:
            return None
        try:
            report_id = report.id
            reads = reads_of(report_id)
            if reads is None:
                return None
            snapshot, versions = current_snapshot(instance, report, typed, reads)
            held = store.get(snapshot)
            if held is None or held.state != READY:
                return None
            now = datetime.now(UTC)
            outcome = store.record_request(
                request_id,
                snapshot,
                report_id,
                canonical_params(typed),
                canonical_versions(versions),
                now=now,
            )
            if outcome.state != READY or outcome.snapshot is None:
                return None
            if outcome.duplicate:  # recorded before (a retried POST): answered as it was recorded
                return store.get_request(request_id)
            return request_view(request_id, report_id, now, outcome.snapshot)
        except store.client.exceptions.ResourceNotFoundException:
            return None  # no table yet: nothing was ever rendered
        except aws_errors as exc:
            raise unavailable(f"the state table {store.table_name!r} cannot be read", exc) from exc

    @v1.get(
        "/requests/{request_id}",
        response_model=RequestState,
        responses=_errors(401, 404, 422, 503),
        summary="A request's state (with its snapshot's)",
    )
    def get_request(
        request_id: Annotated[str, PathParam(pattern=REQUEST_ID.pattern, max_length=128)],
    ) -> JSONResponse:
        found = recorded(request_id)
        if found is None:
            raise ApiError(
                404,
                "not_found",
                f"no request {request_id} (yet): requests are recorded when the platform's sensor"
                " reads the queue, within ~15 s of being sent; poll again",
                "request_id",
            )
        return JSONResponse(found)

    @v1.get(
        "/snapshots/{snapshot_id}",
        response_model=SnapshotState,
        responses=_errors(401, 404, 422, 503),
        summary="One snapshot: state, files, rows, error, timings",
    )
    def get_snapshot(
        snapshot_id: Annotated[str, PathParam(pattern=f"^{SNAPSHOT_ID_PATTERN.pattern}$", max_length=85)],
    ) -> JSONResponse:
        try:
            snapshot = store.get(snapshot_id)
        except store.client.exceptions.ResourceNotFoundException:
            snapshot = None
        except aws_errors as exc:
            raise unavailable(f"the state table {store.table_name!r} cannot be read", exc) from exc
        if snapshot is None:
            raise ApiError(404, "not_found", f"no snapshot {snapshot_id}", "snapshot_id")
        return JSONResponse(snapshot.to_dict())

    @v1.get(
        "/reports",
        response_model=ReportList,
        responses=_errors(401, 503),
        summary="The reports that can be requested, with their parameters",
    )
    def get_reports() -> JSONResponse:
        reports = catalog()
        return JSONResponse({"reports": [report_info(reports[r]) for r in sorted(reports)]})

    app.include_router(v1)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "the queue or the table cannot be reached"}},
        summary="The request queue and the state table reachable (no auth)",
    )
    def health() -> JSONResponse:
        name = settings.snapshot_queue_name()
        try:
            queue_url(name, fresh=True)
            queue = Dependency(name=name, ok=True, detail="reachable")
        except ApiError as exc:
            queue = Dependency(name=name, ok=False, detail=exc.message)
        try:
            table_state = store.client.describe_table(TableName=store.table_name)["Table"]["TableStatus"]
            table = Dependency(name=store.table_name, ok=table_state == "ACTIVE", detail=table_state)
        except aws_errors as exc:
            table = Dependency(name=store.table_name, ok=False, detail=str(exc))
        ok = queue.ok and table.ok
        body = Health(status="ok" if ok else "down", queue=queue, table=table)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def create_app_from_env() -> FastAPI:
    """The app as `dp snapshot-api` serves it: the token from SNAPSHOT_API_TOKEN, AwsClients from
    the profile (resources.profiles: the moto server locally, AWS on the aws profile), and the
    platform's Dagster instance when DAGSTER_HOME is set (`dp up` sets it), for answering READY
    snapshots at once."""
    from resources.profiles import build_resources

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise RuntimeError(f"{TOKEN_ENV} is not set: the snapshot API refuses to run without a token")
    instance = None
    if os.environ.get("DAGSTER_HOME"):
        from dagster import DagsterInstance

        instance = DagsterInstance.get()
        # As dagster-webserver does: keep a connection to the instance's storage open (instead of one
        # per query) and bound each query, since every POST for a READY snapshot reads it.
        instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=16)
    else:
        log.warning("snapshot-api: DAGSTER_HOME is not set: every request is queued (no answer at once)")
    return create_app(build_resources()["aws"], token, instance=instance)
