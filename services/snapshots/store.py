"""The snapshot state store: one DynamoDB table holding every report snapshot and every request.

A snapshot moves through explicit states, each change one conditional write (no read-then-write
race: where a write depends on a value read, as fail() on the attempts, that value is part of
the write's condition):

    REQUESTED --claim--> RENDERING (lease_owner, lease_until) --complete--> READY
        ^                    |   \\--fail, attempts >= max_attempts--> FAILED (error, attempts)
        |                    |
        +--fail, attempts < max_attempts: REQUESTED again with retry_at = now + base * 2**(attempts-1)
        |                    |                                          and last_error
        +--------------------+ a RENDERING item whose lease expired (its worker died) is claimed
                               again by another worker ("taken over"); every claim counts an attempt

- ``record_request`` creates the snapshot in REQUESTED only if it does not exist, so concurrent
  duplicate requests create it once; a request for a READY snapshot is answered by reuse.
- ``claim`` succeeds for exactly one worker: REQUESTED (past its retry_at) or RENDERING with an
  expired lease. ``complete`` and ``fail`` succeed only for the lease's owner, so a worker that lost
  its lease to a takeover cannot overwrite the new owner's result (they raise ``LeaseLost``).
- ``due`` lists the snapshots that need a (new) run now: REQUESTED past retry_at (or, for a fresh
  request, past a grace period: its first run was requested with it) and RENDERING with an expired
  lease. The sensor re-requests runs for them keyed ``f"{snapshot_id}:{attempts}"``.

Items (partition key ``snapshot_id``, attribute ``kind`` = snapshot | request | report):

- snapshot: snapshot_id, report_id, params (canonical JSON), data_versions (JSON), state, attempts,
  created_at, updated_at; RENDERING: lease_owner, lease_until; REQUESTED after a failed attempt:
  retry_at, last_error; READY: uri, files (format -> uri), checksum, rows, render_seconds,
  ready_at; FAILED: error, failed_at.
- request, key ``request#<request_id>``: request_id, target_snapshot_id, report_id, params,
  data_versions, received_at; a request rejected before it had a snapshot (malformed, unknown
  report, bad parameter): state FAILED, error, failed_at. Clients poll it with ``get_request``,
  which merges in the snapshot's state.
- report, key ``report#<report_id>``: the asset keys the report reads (its `reads` resolved by the
  code location), published by the sweep sensor so the HTTP API can compute snapshot ids (and
  answer a READY one at once) without loading the code location.

One table rather than three: one table to provision and one setting; snapshot ids
(``ids.SNAPSHOT_ID_PATTERN``) never contain ``#``, so keys never clash.

While a snapshot needs work it carries ``pending`` and ``due_at`` (when it next needs a run), the
keys of the sparse index ``pending-by-due``; READY and FAILED items drop both and leave the index,
so ``due`` reads only the few pending items instead of scanning the table. The index is eventually
consistent, which suits a sweep the sensor repeats every tick.

Timestamps are stored as fixed-width UTC strings (``2026-01-31T09:05:00.000000Z``): they sort as
time, which the conditions (``lease_until < :now``) and the index rely on.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from services.snapshots.ids import is_snapshot_id, validate_report_id

if TYPE_CHECKING:
    from resources.aws import AwsClients

REQUESTED, RENDERING, READY, FAILED = "REQUESTED", "RENDERING", "READY", "FAILED"
STATES = (REQUESTED, RENDERING, READY, FAILED)

REQUEST_KEY_PREFIX = "request#"
REPORT_KEY_PREFIX = "report#"  # what a report reads, as the code location resolved it
PENDING_INDEX = "pending-by-due"
PENDING = "pending"  # the one value of the sparse index's partition key
MAX_ERROR_CHARS = 4000  # an error text is for people; a whole traceback would bloat every poll
MAX_REQUEST_ID_CHARS = 256
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseLost(RuntimeError):
    """The caller no longer holds the snapshot's lease (it expired and another worker took over,
    or the snapshot is no longer RENDERING); its result must not be recorded."""

    def __init__(self, snapshot_id: str, owner: str, current: Snapshot | None) -> None:
        if current is None:
            held = "the snapshot does not exist"
        else:
            held = f"it is {current.state}" + (
                f" leased by {current.lease_owner}" if current.lease_owner else ""
            )
        super().__init__(f"{owner} does not hold the lease on snapshot {snapshot_id}: {held}")
        self.snapshot_id, self.owner, self.current = snapshot_id, owner, current


# --- time and attribute (de)serialisation: the only place that knows DynamoDB's types ---------------
def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"now={now!r} must be timezone-aware (UTC)")
    return now.astimezone(UTC)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


@cache
def _serializers() -> tuple[Any, Any]:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer  # lazy: boto3 is heavy

    return TypeSerializer(), TypeDeserializer()


def _plain(value: Any) -> Any:
    """A Python value in the types TypeSerializer accepts (floats as Decimal, times as strings)."""
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _encode(values: Mapping[str, Any]) -> dict[str, Any]:
    serializer, _ = _serializers()
    return {k: serializer.serialize(_plain(v)) for k, v in values.items()}


def _decode(item: Mapping[str, Any]) -> dict[str, Any]:
    _, deserializer = _serializers()
    return {k: deserializer.deserialize(v) for k, v in item.items()}


def _expression_args(update: str | None, condition: str | None, values: Mapping[str, Any]) -> dict:
    """UpdateExpression/ConditionExpression arguments; every attribute is written #name (many,
    like state and rows, are DynamoDB reserved words) and only the names and values used are sent
    (DynamoDB rejects unused ones)."""
    text = " ".join(filter(None, (update, condition)))
    used_values = set(re.findall(r":(\w+)", text))
    missing = used_values - values.keys()
    if missing:
        raise KeyError(f"expression values missing: {sorted(missing)}")
    args: dict[str, Any] = {
        "ExpressionAttributeNames": {f"#{n}": n for n in set(re.findall(r"#(\w+)", text))},
    }
    if used_values:
        args["ExpressionAttributeValues"] = _encode({f":{k}": values[k] for k in used_values})
    if update:
        args["UpdateExpression"] = update
    if condition:
        args["ConditionExpression"] = condition
    return args


# --- the items -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    report_id: str
    state: str
    attempts: int
    params_json: str  # canonical JSON of the parameters (ids.canonical_params)
    versions_json: str  # JSON of the upstream assets' versions (ids.canonical_versions)
    created_at: datetime
    updated_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None
    retry_at: datetime | None = None
    last_error: str | None = None
    uri: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    checksum: str | None = None
    rows: int | None = None
    render_seconds: float | None = None
    ready_at: datetime | None = None
    error: str | None = None
    failed_at: datetime | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(json.loads(self.params_json))

    @property
    def data_versions(self) -> dict[str, str]:
        return dict(json.loads(self.versions_json))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO-8601 strings, absent fields left out."""
        out: dict[str, Any] = {
            "snapshot_id": self.snapshot_id,
            "report_id": self.report_id,
            "state": self.state,
            "attempts": self.attempts,
            "params": self.params,
            "data_versions": self.data_versions,
        }
        for name in (
            "created_at",
            "updated_at",
            "lease_owner",
            "lease_until",
            "retry_at",
            "last_error",
            "uri",
            "checksum",
            "rows",
            "render_seconds",
            "ready_at",
            "error",
            "failed_at",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
        if self.files:
            out["files"] = dict(self.files)
        return out

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Snapshot:
        v = _decode(item)
        rows, seconds = v.get("rows"), v.get("render_seconds")
        return cls(
            snapshot_id=v["snapshot_id"],
            report_id=v["report_id"],
            state=v["state"],
            attempts=int(v.get("attempts", 0)),
            params_json=v["params"],
            versions_json=v["data_versions"],
            created_at=_parse_ts(v["created_at"]),  # type: ignore[arg-type]
            updated_at=_parse_ts(v["updated_at"]),  # type: ignore[arg-type]
            lease_owner=v.get("lease_owner"),
            lease_until=_parse_ts(v.get("lease_until")),
            retry_at=_parse_ts(v.get("retry_at")),
            last_error=v.get("last_error"),
            uri=v.get("uri"),
            files={str(k): str(u) for k, u in (v.get("files") or {}).items()},
            checksum=v.get("checksum"),
            rows=None if rows is None else int(rows),
            render_seconds=None if seconds is None else float(seconds),
            ready_at=_parse_ts(v.get("ready_at")),
            error=v.get("error"),
            failed_at=_parse_ts(v.get("failed_at")),
        )


def request_view(
    request_id: str, report_id: str | None, received_at: datetime, snapshot: Snapshot | None
) -> dict[str, Any]:
    """A request as clients see it (JSON-ready): its own fields, then its snapshot's."""
    out: dict[str, Any] = {
        "request_id": request_id,
        "report_id": report_id,
        "received_at": _parse_ts(_ts(received_at)).isoformat().replace("+00:00", "Z"),  # type: ignore[union-attr]
        "snapshot_id": snapshot.snapshot_id if snapshot is not None else None,
    }
    if snapshot is not None:
        out.update({k: v for k, v in snapshot.to_dict().items() if k not in out})
    return out


@dataclass(frozen=True)
class RequestOutcome:
    request_id: str
    snapshot_id: str | None  # None: the request was rejected earlier (a redelivery of it)
    created: bool  # this call created the snapshot item: a run must render it
    duplicate: bool  # the request id was already recorded: a redelivered message
    state: str  # the snapshot's state now (READY: reuse; FAILED: it failed for good on this data)
    snapshot: Snapshot | None

    @property
    def reuse(self) -> bool:
        return self.state == READY


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim: won, the snapshot now RENDERING under the caller's lease; else why
    not (ready, failed, leased, retry_later, abandoned, missing) and the item as it was found."""

    reason: str  # claimed | taken_over | ready | failed | leased | retry_later | abandoned | missing
    snapshot: Snapshot | None  # the claimed snapshot if won, else the item found (None: missing)
    previous_owner: str | None = None  # the owner whose expired lease was taken over

    @property
    def won(self) -> bool:
        return self.reason in ("claimed", "taken_over")


def _check_text(name: str, value: Any, max_chars: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f"{name} is {len(value)} characters long; at most {max_chars} are allowed")
    return value


def _check_json(name: str, value: Any) -> str:
    _check_text(name, value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc}): {value[:200]!r}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object, not {type(parsed).__name__}")
    return str(value)


def _check_snapshot_id(snapshot_id: Any) -> str:
    if not is_snapshot_id(snapshot_id):
        raise ValueError(f"{snapshot_id!r} is not a snapshot id (ids.snapshot_id makes them)")
    return str(snapshot_id)


def _error_text(error: Any) -> str:
    text = _check_text("error", error if isinstance(error, str) else str(error))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 15] + " ...(truncated)"


_TABLES_SEEN: set[tuple[str, str, str]] = set()  # (endpoint, region, table) known to exist


class SnapshotStore:
    """Snapshot and request items in one DynamoDB table, over a boto3 DynamoDB client."""

    def __init__(self, client: Any, table_name: str, *, request_grace_seconds: float = 30.0) -> None:
        # A fresh request's run is requested when it is recorded; due() lists it again only if
        # no worker claimed it within the grace period (the run was lost or never started).
        self.client, self.table_name = client, _check_text("table_name", table_name)
        self.request_grace = timedelta(seconds=request_grace_seconds)

    @classmethod
    def from_resources(cls, aws: AwsClients, **kwargs: Any) -> SnapshotStore:
        """The store on the table PLATFORM_SNAPSHOT_TABLE, with the request grace of
        PLATFORM_SNAPSHOT_REQUEST_GRACE_SECONDS (both read now, not at import)."""
        from resources import settings

        kwargs.setdefault("request_grace_seconds", settings.snapshot_request_grace_seconds())
        return cls(aws.client("dynamodb"), settings.snapshot_table(), **kwargs)

    # --- the table ---
    def ensure_table(self) -> None:
        """Create the table on first use (on-demand capacity, key snapshot_id, the sparse index of
        pending snapshots) and wait until it is active. Checked once per process and table: the
        sensors call this every tick."""
        ddb = self.client
        known = (ddb.meta.endpoint_url, ddb.meta.region_name, self.table_name)
        if known in _TABLES_SEEN:
            return
        try:
            ddb.describe_table(TableName=self.table_name)
            _TABLES_SEEN.add(known)
            return
        except ddb.exceptions.ResourceNotFoundException:
            pass
        with contextlib.suppress(ddb.exceptions.ResourceInUseException):  # a concurrent caller made it
            ddb.create_table(
                TableName=self.table_name,
                KeySchema=[{"AttributeName": "snapshot_id", "KeyType": "HASH"}],
                AttributeDefinitions=[
                    {"AttributeName": "snapshot_id", "AttributeType": "S"},
                    {"AttributeName": "pending", "AttributeType": "S"},
                    {"AttributeName": "due_at", "AttributeType": "S"},
                ],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": PENDING_INDEX,
                        "KeySchema": [
                            {"AttributeName": "pending", "KeyType": "HASH"},
                            {"AttributeName": "due_at", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        ddb.get_waiter("table_exists").wait(TableName=self.table_name)
        _TABLES_SEEN.add(known)

    # --- low-level calls ---
    def _get_item(self, key: str) -> dict[str, Any] | None:
        response = self.client.get_item(
            TableName=self.table_name, Key=_encode({"snapshot_id": key}), ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _put_new(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        """Put item if its key is absent. Returns None if written, else the item already there."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_encode(item),
                ConditionExpression="attribute_not_exists(snapshot_id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            existing: dict[str, Any] = exc.response.get("Item") or {}
            return existing

    def _update(
        self, snapshot_id: str, update: str, condition: str, values: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any] | None]:
        """A conditional update. Returns (done, item): the item before the update if done, else the
        item that failed the condition (None if absent), both read atomically with the write."""
        try:
            response = self.client.update_item(
                TableName=self.table_name,
                Key=_encode({"snapshot_id": snapshot_id}),
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **_expression_args(update, condition, values),
            )
            return True, response.get("Attributes")
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            return False, exc.response.get("Item") or None

    # --- requests ---
    def record_request(
        self,
        request_id: str,
        snapshot_id: str,
        report_id: str,
        params_json: str,
        versions_json: str,
        now: datetime | None = None,
    ) -> RequestOutcome:
        """Record a valid request and create its snapshot in REQUESTED unless it exists.

        Idempotent per request id: a redelivered request (even one whose data version changed in
        between, so it would map to another snapshot) stays bound to the snapshot it was first
        recorded for, and is reported as a duplicate."""
        now = _now(now)
        _check_text("request_id", request_id, MAX_REQUEST_ID_CHARS)
        _check_snapshot_id(snapshot_id)
        validate_report_id(report_id)
        _check_json("params_json", params_json)
        _check_json("versions_json", versions_json)
        # The request first: had we crashed after creating the snapshot but before binding the
        # request, a redelivery under new data would render a second, orphaned snapshot.
        request = {
            "snapshot_id": REQUEST_KEY_PREFIX + request_id,
            "kind": "request",
            "request_id": request_id,
            "target_snapshot_id": snapshot_id,
            "report_id": report_id,
            "params": params_json,
            "data_versions": versions_json,
            "received_at": now,
        }
        existing = self._put_new(request)
        duplicate = existing is not None
        if existing is not None:
            held = _decode(existing)
            if "target_snapshot_id" not in held:  # rejected when first received
                return RequestOutcome(request_id, None, False, True, held.get("state", FAILED), None)
            snapshot_id, report_id = held["target_snapshot_id"], held["report_id"]
            params_json, versions_json = held["params"], held["data_versions"]
        # Also on a redelivery: the first delivery may have died between the two writes.
        snapshot = Snapshot(
            snapshot_id=snapshot_id,
            report_id=report_id,
            state=REQUESTED,
            attempts=0,
            params_json=params_json,
            versions_json=versions_json,
            created_at=now,
            updated_at=now,
        )
        found = self._put_new(
            {
                "snapshot_id": snapshot_id,
                "kind": "snapshot",
                "report_id": report_id,
                "params": params_json,
                "data_versions": versions_json,
                "state": REQUESTED,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "pending": PENDING,
                "due_at": now + self.request_grace,
            }
        )
        if found is not None:
            snapshot = Snapshot.from_item(found)
        return RequestOutcome(request_id, snapshot_id, found is None, duplicate, snapshot.state, snapshot)

    def reject_request(
        self, request_id: str, report_id: str | None, error: str, now: datetime | None = None
    ) -> bool:
        """Record a request that cannot be served (malformed, unknown report, bad parameter) as a
        FAILED request item saying why. Returns False if the request id was already recorded
        (a redelivery: the first answer stands)."""
        now = _now(now)
        _check_text("request_id", request_id, MAX_REQUEST_ID_CHARS)
        item: dict[str, Any] = {
            "snapshot_id": REQUEST_KEY_PREFIX + request_id,
            "kind": "request",
            "request_id": request_id,
            "state": FAILED,
            "error": _error_text(error),
            "received_at": now,
            "failed_at": now,
        }
        if report_id is not None:
            item["report_id"] = _check_text("report_id", report_id, 256)
        return self._put_new(item) is None

    # --- the lease ---
    def claim(
        self,
        snapshot_id: str,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
    ) -> Claim:
        """Take the snapshot for rendering: REQUESTED past its retry_at, or RENDERING whose lease
        expired (taken over). Counts an attempt. With max_attempts, an expired lease that has
        already used them all is not taken over: the snapshot ends FAILED (reason abandoned),
        so a report that kills its worker every time does not loop forever."""
        now = _now(now)
        _check_snapshot_id(snapshot_id)
        _check_text("owner", owner, 256)
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds!r}")
        until = now + timedelta(seconds=lease_seconds)
        takeover = "#state = :rendering AND #lease_until < :now"
        if max_attempts is not None:
            takeover += " AND #attempts < :max_attempts"
        for _ in range(3):  # again only if the item changed between a refusal and the abandon
            done, item = self._update(
                snapshot_id,
                "SET #state = :rendering, #lease_owner = :owner, #lease_until = :until, #due_at = :until,"
                " #attempts = if_not_exists(#attempts, :zero) + :one, #updated_at = :now REMOVE #retry_at",
                "(#state = :requested AND (attribute_not_exists(#retry_at) OR #retry_at <= :now))"
                f" OR ({takeover})",
                {
                    "rendering": RENDERING,
                    "requested": REQUESTED,
                    "owner": owner,
                    "until": until,
                    "now": now,
                    "zero": 0,
                    "one": 1,
                    "max_attempts": max_attempts,
                },
            )
            if item is None:
                return Claim("missing", None)
            before = Snapshot.from_item(item)
            if done:
                claimed = replace(
                    before,
                    state=RENDERING,
                    lease_owner=owner,
                    lease_until=until,
                    retry_at=None,
                    attempts=before.attempts + 1,
                    updated_at=now,
                )
                if before.state == RENDERING:
                    return Claim("taken_over", claimed, previous_owner=before.lease_owner)
                return Claim("claimed", claimed)
            reason = _refusal(before, now)
            if reason is not None:
                return Claim(reason, before)
            abandoned = self._abandon(before, now)  # expired with every attempt used
            if abandoned is not None:
                return Claim("abandoned", abandoned)
        return Claim(_refusal(before, now) or "leased", before)

    def _abandon(self, snapshot: Snapshot, now: datetime) -> Snapshot | None:
        """FAILED: its lease expired with every attempt used. None if the item changed meanwhile
        (renewed, completed, failed by its owner)."""
        error = (
            f"abandoned after {snapshot.attempts} attempts: the lease of the last worker "
            f"({snapshot.lease_owner}) expired at {_ts(snapshot.lease_until or now)} without a result"
            + (f"; last error: {snapshot.last_error}" if snapshot.last_error else "")
        )
        text = _error_text(error)
        done, _ = self._update(
            snapshot.snapshot_id,
            "SET #state = :failed, #error = :error, #failed_at = :now, #updated_at = :now"
            " REMOVE #lease_owner, #lease_until, #pending, #due_at, #retry_at",
            "#state = :rendering AND #lease_until < :now AND #attempts = :attempts",
            {
                "failed": FAILED,
                "error": text,
                "now": now,
                "rendering": RENDERING,
                "attempts": snapshot.attempts,
            },
        )
        if not done:
            return None
        return replace(
            snapshot,
            state=FAILED,
            error=text,
            failed_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
            retry_at=None,
        )

    def renew(self, snapshot_id: str, owner: str, lease_seconds: float, now: datetime | None = None) -> bool:
        """Extend the caller's lease to now + lease_seconds; False if it no longer holds it."""
        now = _now(now)
        _check_snapshot_id(snapshot_id)
        until = now + timedelta(seconds=lease_seconds)
        done, _ = self._update(
            snapshot_id,
            "SET #lease_until = :until, #due_at = :until, #updated_at = :now",
            "#state = :rendering AND #lease_owner = :owner",
            {"until": until, "now": now, "rendering": RENDERING, "owner": owner},
        )
        return done

    def complete(
        self,
        snapshot_id: str,
        owner: str,
        uri: str,
        files: Mapping[str, str],
        checksum: str,
        rows: int,
        render_seconds: float,
        now: datetime | None = None,
    ) -> Snapshot:
        """RENDERING -> READY with the render's files, only for the lease's owner (else LeaseLost,
        the item unchanged). Returns the READY snapshot."""
        now = _now(now)
        _check_snapshot_id(snapshot_id)
        _check_text("uri", uri)
        _check_text("checksum", checksum)
        if not isinstance(files, Mapping) or not files:
            raise ValueError(f"files must map each output format to its URI, got {files!r}")
        for fmt, file_uri in files.items():
            _check_text(f"files[{fmt!r}]", file_uri)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows must be a non-negative int, not {rows!r}")
        seconds = render_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ValueError(f"render_seconds must be a non-negative number, not {render_seconds!r}")
        done, item = self._update(
            snapshot_id,
            "SET #state = :ready, #uri = :uri, #files = :files, #checksum = :checksum, #rows = :rows,"
            " #render_seconds = :seconds, #ready_at = :now, #updated_at = :now"
            " REMOVE #lease_owner, #lease_until, #pending, #due_at, #retry_at",
            "#state = :rendering AND #lease_owner = :owner",
            {
                "ready": READY,
                "uri": uri,
                "files": dict(files),
                "checksum": checksum,
                "rows": rows,
                "seconds": float(render_seconds),
                "now": now,
                "rendering": RENDERING,
                "owner": owner,
            },
        )
        before = None if item is None else Snapshot.from_item(item)
        if not done or before is None:
            raise LeaseLost(snapshot_id, owner, before)
        return replace(
            before,
            state=READY,
            uri=uri,
            files=dict(files),
            checksum=checksum,
            rows=rows,
            render_seconds=float(render_seconds),
            ready_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
            retry_at=None,
        )

    def fail(
        self,
        snapshot_id: str,
        owner: str,
        error: str,
        now: datetime | None = None,
        *,
        max_attempts: int,
        backoff_base_seconds: float,
    ) -> str:
        """Record a failed attempt by the lease's owner (else LeaseLost). With attempts left the
        snapshot goes back to REQUESTED with retry_at = now + base * 2**(attempts-1) and
        last_error; else it ends FAILED with the error. Returns the new state."""
        now = _now(now)
        _check_snapshot_id(snapshot_id)
        text = _error_text(error)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        if not backoff_base_seconds >= 0:
            raise ValueError(f"backoff_base_seconds must be >= 0, not {backoff_base_seconds!r}")
        item = self._get_item(snapshot_id)
        current = None if item is None else Snapshot.from_item(item)
        if current is None or current.state != RENDERING or current.lease_owner != owner:
            raise LeaseLost(snapshot_id, owner, current)
        # The attempts read above are part of the condition: a takeover in between refuses this.
        held = "#state = :rendering AND #lease_owner = :owner AND #attempts = :attempts"
        values = {"rendering": RENDERING, "owner": owner, "attempts": current.attempts, "now": now}
        if current.attempts < max_attempts:
            retry_at = now + timedelta(seconds=backoff_base_seconds * 2 ** max(current.attempts - 1, 0))
            new_state = REQUESTED
            update = (
                "SET #state = :requested, #retry_at = :retry_at, #due_at = :retry_at,"
                " #last_error = :error, #updated_at = :now REMOVE #lease_owner, #lease_until"
            )
            values.update(requested=REQUESTED, retry_at=retry_at, error=text)
        else:
            new_state = FAILED
            update = (
                "SET #state = :failed, #error = :error, #last_error = :error, #failed_at = :now,"
                " #updated_at = :now REMOVE #lease_owner, #lease_until, #pending, #due_at, #retry_at"
            )
            values.update(failed=FAILED, error=text)
        done, found = self._update(snapshot_id, update, held, values)
        if not done:
            raise LeaseLost(snapshot_id, owner, None if found is None else Snapshot.from_item(found))
        return new_state

    # --- what each report reads (published by the sensor, read by the HTTP API's reuse path) ---
    def put_report_reads(self, report_id: str, reads: list[str], now: datetime | None = None) -> None:
        """Record the asset keys report_id reads, as the code location resolved its `reads`."""
        validate_report_id(report_id)
        item = {"snapshot_id": REPORT_KEY_PREFIX + report_id, "kind": "report", "report_id": report_id,
                "reads": json.dumps(sorted(reads)), "updated_at": _now(now)}  # fmt: skip
        self.client.put_item(TableName=self.table_name, Item=_encode(item))

    def report_reads(self, report_id: str) -> list[str] | None:
        """The asset keys report_id reads, or None if the sensor has not published them yet."""
        item = self._get_item(REPORT_KEY_PREFIX + validate_report_id(report_id))
        return None if item is None else list(json.loads(_decode(item)["reads"]))

    # --- reading ---
    def get(self, snapshot_id: str) -> Snapshot | None:
        item = self._get_item(_check_snapshot_id(snapshot_id))
        return None if item is None else Snapshot.from_item(item)

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        """What a client polls: the request with its snapshot's state and fields merged in
        (JSON-ready). A rejected request is FAILED with its error."""
        _check_text("request_id", request_id, MAX_REQUEST_ID_CHARS)
        item = self._get_item(REQUEST_KEY_PREFIX + request_id)
        if item is None:
            return None
        held = _decode(item)
        target = held.get("target_snapshot_id")
        received_at = _parse_ts(held["received_at"])
        assert received_at is not None
        if target is None:
            out = request_view(held["request_id"], held.get("report_id"), received_at, None)
            out.update(state=held.get("state", FAILED), error=held.get("error"))
            return out
        snapshot = self.get(target)
        if snapshot is None:
            # Recorded but its snapshot not yet created (the writer died between the two writes;
            # the message is redelivered and creates it).
            out = request_view(held["request_id"], held.get("report_id"), received_at, None)
            out.update(snapshot_id=target, state=REQUESTED, params=json.loads(held["params"]))
            return out
        return request_view(held["request_id"], held.get("report_id"), received_at, snapshot)

    def due(self, now: datetime | None = None) -> list[Snapshot]:
        """Snapshots that need a (new) run now, the longest-waiting first: REQUESTED past their
        retry_at (or past the grace period of a fresh request) and RENDERING with an expired lease."""
        now = _now(now)
        found: list[Snapshot] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": PENDING_INDEX,
            "KeyConditionExpression": "#pending = :pending AND #due_at <= :now",
            "ExpressionAttributeNames": {"#pending": "pending", "#due_at": "due_at"},
            "ExpressionAttributeValues": _encode({":pending": PENDING, ":now": now}),
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                snapshot = Snapshot.from_item(item)
                if _refusal(snapshot, now) is None:  # the index lags the table a little
                    found.append(snapshot)
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _refusal(snapshot: Snapshot, now: datetime) -> str | None:
    """Why a claim at now would be refused (None: it would succeed, ignoring max_attempts)."""
    if snapshot.state == READY:
        return "ready"
    if snapshot.state == FAILED:
        return "failed"
    if snapshot.state == REQUESTED:
        return None if snapshot.retry_at is None or snapshot.retry_at <= now else "retry_later"
    return None if snapshot.lease_until is not None and snapshot.lease_until < now else "leased"
