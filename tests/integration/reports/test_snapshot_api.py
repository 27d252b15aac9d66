"""The snapshot HTTP API in process (FastAPI's TestClient) over SQS and DynamoDB on the moto server:
auth, catalog errors naming the report or parameter, exactly one message per accepted request,
the request and snapshot items as the sensor and the render write them, and a schemathesis run
against the API's own OpenAPI schema.

Each test has its own queue and table; the items are written through the store as the
platform's sensor and render asset would write them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from schemathesis import GenerationMode

from resources.aws import AwsClients
from services.aws_bootstrap import ensure_queue
from services.snapshots.api import create_app
from services.snapshots.catalog import get_report, load_reports, validate_params
from services.snapshots.ids import canonical_params, canonical_versions, snapshot_id
from services.snapshots.messages import REQUEST_ID, parse_request
from services.snapshots.store import SnapshotStore
from tests.support.schemathesis_api import fuzz_operations, load_operations

TOKEN = "snapshot-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHIPPED = {"fleet_anomalies_daily", "store_sales_windows", "cdc_table_status", "migration_load_summary"}


# --- shared with test_snapshot_cli.py ----------------------------------------------------------
def drain(aws: AwsClients, queue_url: str) -> list[dict[str, Any]]:
    """Every message on the queue (received and deleted), until a receive comes back empty."""
    sqs, found = aws.client("sqs"), []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not got:
            return found
        for message in got:
            found.append(message)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def record(store: SnapshotStore, request_id: str, report_id: str, raw: dict[str, Any]) -> str:
    """Record the request as the sensor does (typed, canonical parameters); its snapshot id."""
    report = get_report(report_id)
    typed = validate_params(report, raw)
    versions = {"some/upstream": f"v-{uuid.uuid4().hex[:8]}"}
    sid = snapshot_id(report_id, typed, versions, report.fingerprint)
    store.record_request(request_id, sid, report_id, canonical_params(typed), canonical_versions(versions))
    return sid


def make_ready(store: SnapshotStore, sid: str, rows: int) -> dict[str, str]:
    """Claim and complete the snapshot as the render asset does; its files."""
    owner = f"run-{uuid.uuid4().hex[:8]}"
    assert store.claim(sid, owner, lease_seconds=60).won
    uri = f"s3://lake/snapshots/{sid}"
    files = {fmt: f"{uri}/snapshot.{fmt}" for fmt in ("png", "pdf", "csv")}
    store.complete(
        sid, owner, uri=uri, files=files, checksum=uuid.uuid4().hex, rows=rows, render_seconds=1.25
    )
    return files


def make_failed(store: SnapshotStore, sid: str, error: str) -> None:
    owner = f"run-{uuid.uuid4().hex[:8]}"
    assert store.claim(sid, owner, lease_seconds=60).won
    assert store.fail(sid, owner, error, max_attempts=1, backoff_base_seconds=0) == "FAILED"


def fleet_params() -> dict[str, str]:
    end = datetime.now(UTC).date()
    return {"start": (end - timedelta(days=6)).isoformat(), "end": end.isoformat()}


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def queue_url(local_aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"test-report-requests-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PLATFORM_SNAPSHOT_QUEUE", name)
    return ensure_queue(local_aws, name)


@pytest.fixture
def store(local_aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> SnapshotStore:
    monkeypatch.setenv("PLATFORM_SNAPSHOT_TABLE", f"test-snapshots-{uuid.uuid4().hex[:10]}")
    made = SnapshotStore.from_resources(local_aws)
    made.ensure_table()
    return made


@pytest.fixture
def client(local_aws: AwsClients, queue_url: str, store: SnapshotStore):
    with TestClient(create_app(local_aws, TOKEN)) as c:
        yield c


def _error(response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --- auth --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer not-the-token"}, "invalid_token"),
        ({"Authorization": f"Basic {TOKEN}"}, "invalid_authorization"),
    ],
)
def test_v1_needs_the_token(client: TestClient, local_aws: AwsClients, queue_url: str, headers, code) -> None:
    post = client.post(
        "/v1/snapshots", json={"report": "fleet_anomalies_daily", "params": fleet_params()}, headers=headers
    )
    reports = client.get("/v1/reports", headers=headers)
    for response in (post, reports):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert _error(response)["code"] == code
        assert TOKEN not in response.text
    assert drain(local_aws, queue_url) == []  # refused before anything was sent
    assert client.get("/health").status_code == 200  # no auth


def test_refuses_to_start_without_a_token(local_aws: AwsClients, store: SnapshotStore) -> None:
    with pytest.raises(RuntimeError, match="SNAPSHOT_API_TOKEN"):
        create_app(local_aws, "")


# --- POST /v1/snapshots: refusals --------------------------------------------------------------
def test_unknown_report_is_404_naming_the_known_ones(
    client: TestClient, local_aws: AwsClients, queue_url: str
) -> None:
    response = client.post("/v1/snapshots", json={"report": "fleet_anomalies_weekly"}, headers=AUTH)
    assert response.status_code == 404, response.text
    error = _error(response)
    assert error["parameter"] == "report"
    assert "fleet_anomalies_weekly" in error["message"]
    for known in load_reports():
        assert known in error["message"]
    assert drain(local_aws, queue_url) == []


@pytest.mark.parametrize(
    ("report", "params", "parameter", "words"),
    [
        ("fleet_anomalies_daily", {"end": "2026-11-24"}, "params.start", "required"),
        ("fleet_anomalies_daily", {"start": "2026-11-01", "end": "24.11.2026"}, "params.end", "yyyy-mm-dd"),
        (
            "fleet_anomalies_daily",
            {"start": "2026-11-01", "end": "2026-11-24", "min_quality": 1.5},
            "params.min_quality",
            "above the maximum",
        ),
        (
            "fleet_anomalies_daily",
            {"start": "2026-11-01", "end": "2026-11-24", "colour": "red"},
            "params.colour",
            "unknown parameter",
        ),
        (
            "migration_load_summary",
            {"since": "2026-11-01T00:00:00Z", "stage": "cooked"},
            "params.stage",
            "not one of",
        ),
        ("cdc_table_status", {"since": "2026-11-01T00:00:00"}, "params.since", "no utc offset"),
        ("store_sales_windows", {"day": "2026-11-01", "store_id": "seven"}, "params.store_id", "integer"),
        ("store_sales_windows", {"day": "2026-11-01", "store_id": 0}, "params.store_id", "below the minimum"),
        # a number no float can hold: refused by name (float() overflows), not a 500
        (
            "fleet_anomalies_daily",
            {"start": "2026-11-01", "end": "2026-11-24", "min_quality": 10**400},
            "params.min_quality",
            "",
        ),
    ],
)
def test_bad_parameter_is_422_naming_it(
    client: TestClient, local_aws: AwsClients, queue_url: str, report, params, parameter, words
) -> None:
    response = client.post("/v1/snapshots", json={"report": report, "params": params}, headers=AUTH)
    assert response.status_code == 422, response.text
    error = _error(response)
    assert error["parameter"] == parameter, error
    assert words in error["message"].lower(), error
    assert drain(local_aws, queue_url) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status", "parameter", "words"),
    [
        (b'{"report": "fleet_anomalies_daily", "params": {', "application/json", 422, "body", "not json"),
        (b'["fleet_anomalies_daily"]', "application/json", 422, "body", "json object, not an array"),
        (b'{"report": "cdc_table_status", "params": {"since": NaN}}', "application/json", 422, "body", "nan"),
        (b"", "application/json", 422, "body", "empty"),
        (b'{"params": {}}', "application/json", 422, "report", "required"),
        (
            b'{"report": "cdc_table_status", "priority": 1}',
            "application/json",
            422,
            "priority",
            "unknown field",
        ),
        (b'{"report": "cdc_table_status", "params": [1]}', "application/json", 422, "params", "dictionary"),
        (
            b'{"report": "cdc_table_status", "request_id": "no spaces"}',
            "application/json",
            422,
            "request_id",
            "letters, digits",
        ),
        (
            b"report=cdc_table_status",
            "application/x-www-form-urlencoded",
            415,
            "Content-Type",
            "application/json",
        ),
        (b'{"report": "cdc_table_status"}', None, 415, "Content-Type", "none"),
    ],
)
def test_malformed_body_names_the_problem(
    client: TestClient, local_aws: AwsClients, queue_url: str, body, content_type, status, parameter, words
) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/v1/snapshots", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["parameter"] == parameter, error
    assert words in error["message"].lower(), error
    assert drain(local_aws, queue_url) == []


def test_body_over_the_limit_is_413(client: TestClient, local_aws: AwsClients, queue_url: str) -> None:
    from services.snapshots.messages import MAX_BODY_BYTES

    big = {"report": "store_sales_windows", "params": {"day": "2026-11-01", "note": "x" * MAX_BODY_BYTES}}
    response = client.post("/v1/snapshots", json=big, headers=AUTH)
    assert response.status_code == 413, response.text
    assert _error(response)["code"] == "payload_too_large"
    assert drain(local_aws, queue_url) == []


# --- POST /v1/snapshots: accepted --------------------------------------------------------------
def test_accepted_request_is_one_message_the_consumer_reads_back(
    client: TestClient, local_aws: AwsClients, queue_url: str
) -> None:
    params = {**fleet_params(), "min_quality": 0.25}
    request_id = f"client-{uuid.uuid4().hex[:8]}"
    response = client.post(
        "/v1/snapshots",
        json={"report": "fleet_anomalies_daily", "params": params, "request_id": request_id},
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    assert response.json() == {
        "request_id": request_id,
        "state": "REQUESTED",
        "poll": f"/v1/requests/{request_id}",
    }
    messages = drain(local_aws, queue_url)
    assert len(messages) == 1
    parsed = parse_request(messages[0]["Body"], messages[0]["MessageId"])
    assert (parsed.request_id, parsed.report_id, parsed.params) == (
        request_id,
        "fleet_anomalies_daily",
        params,
    )

    # Without a request_id the API makes one, which the message carries.
    response = client.post(
        "/v1/snapshots",
        json={"report": "store_sales_windows", "params": {"day": date.today().isoformat()}},
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    made = response.json()["request_id"]
    assert REQUEST_ID.fullmatch(made) and made != request_id
    messages = drain(local_aws, queue_url)
    assert len(messages) == 1
    parsed = parse_request(messages[0]["Body"], messages[0]["MessageId"])
    assert (parsed.request_id, parsed.report_id) == (made, "store_sales_windows")


def test_a_recorded_request_id_is_answered_with_its_state_not_sent_again(
    client: TestClient, local_aws: AwsClients, queue_url: str, store: SnapshotStore
) -> None:
    params = fleet_params()
    request_id = f"client-{uuid.uuid4().hex[:8]}"
    sid = record(store, request_id, "fleet_anomalies_daily", params)
    make_ready(store, sid, rows=7)
    again = {"report": "fleet_anomalies_daily", "params": params, "request_id": request_id}
    response = client.post("/v1/snapshots", json=again, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "READY"
    # Another report or other parameters under the same id: a conflict, named.
    other = client.post(
        "/v1/snapshots", json={**again, "params": {**params, "min_quality": 0.5}}, headers=AUTH
    )
    assert other.status_code == 409, other.text
    assert _error(other)["parameter"] == "request_id"
    assert drain(local_aws, queue_url) == []


# --- GET ---------------------------------------------------------------------------------------
def test_requests_and_snapshots_as_the_store_holds_them(
    client: TestClient, local_aws: AwsClients, store: SnapshotStore
) -> None:
    pending_id = f"req-{uuid.uuid4().hex[:8]}"
    response = client.get(f"/v1/requests/{pending_id}", headers=AUTH)
    assert response.status_code == 404, response.text
    assert "sensor" in _error(response)["message"]

    params = fleet_params()
    sid = record(store, pending_id, "fleet_anomalies_daily", params)
    body = client.get(f"/v1/requests/{pending_id}", headers=AUTH).json()
    assert (body["state"], body["snapshot_id"], body["report_id"]) == (
        "REQUESTED",
        sid,
        "fleet_anomalies_daily",
    )
    assert body["params"] == {**params, "min_quality": 0.0}

    rows = len(params) * 11
    files = make_ready(store, sid, rows=rows)
    body = client.get(f"/v1/requests/{pending_id}", headers=AUTH).json()
    assert (body["state"], body["files"], body["rows"]) == ("READY", files, rows)
    snapshot = client.get(f"/v1/snapshots/{sid}", headers=AUTH)
    assert snapshot.status_code == 200, snapshot.text
    assert snapshot.json()["uri"] == f"s3://lake/snapshots/{sid}"
    assert snapshot.json()["files"] == files
    assert snapshot.json()["attempts"] == 1

    # A request the sensor rejected: FAILED with the reason, no snapshot.
    rejected = f"req-{uuid.uuid4().hex[:8]}"
    reason = f"unknown report 'nope-{rejected}'"
    assert store.reject_request(rejected, "nope", reason)
    body = client.get(f"/v1/requests/{rejected}", headers=AUTH).json()
    assert (body["state"], body["error"], body["snapshot_id"]) == ("FAILED", reason, None)

    # A snapshot that failed for good.
    failing = f"req-{uuid.uuid4().hex[:8]}"
    failed_sid = record(store, failing, "cdc_table_status", {"since": datetime.now(UTC).isoformat()})
    make_failed(store, failed_sid, "Binder Error: table cdc_state.files does not exist")
    body = client.get(f"/v1/snapshots/{failed_sid}", headers=AUTH).json()
    assert body["state"] == "FAILED" and "cdc_state.files" in body["error"]

    missing = client.get(f"/v1/snapshots/fleet_anomalies_daily-{'0' * 20}", headers=AUTH)
    assert missing.status_code == 404 and _error(missing)["parameter"] == "snapshot_id"
    malformed = client.get("/v1/snapshots/not a snapshot id", headers=AUTH)
    assert malformed.status_code == 422 and _error(malformed)["parameter"] == "snapshot_id"


def test_reports_lists_the_catalog(client: TestClient) -> None:
    response = client.get("/v1/reports", headers=AUTH)
    assert response.status_code == 200, response.text
    listed = {r["id"]: r for r in response.json()["reports"]}
    assert set(listed) == SHIPPED == set(load_reports())
    fleet = listed["fleet_anomalies_daily"]["parameters"]
    assert fleet["start"]["type"] == "date" and fleet["start"]["required"] is True
    assert fleet["min_quality"]["max"] == 1.0 and fleet["min_quality"]["required"] is False
    stage = listed["migration_load_summary"]["parameters"]["stage"]
    assert stage["type"] == "enum" and "raw" in stage["choices"]


def test_health_says_which_dependency_is_missing(
    local_aws: AwsClients, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLATFORM_SNAPSHOT_QUEUE", f"never-made-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(local_aws, TOKEN)) as c:
        response = c.get("/health")
        assert response.status_code == 503, response.text
        assert response.json()["queue"]["ok"] is False and response.json()["table"]["ok"] is True
        # and a request that cannot be sent is 503 with the reason, not a 500
        post = c.post(
            "/v1/snapshots", json={"report": "fleet_anomalies_daily", "params": fleet_params()}, headers=AUTH
        )
        assert post.status_code == 503, post.text
        assert "does not exist" in _error(post)["message"]


# --- schemathesis ------------------------------------------------------------------------------
EXAMPLES = 60
# The schema cannot say which report ids exist or what their parameters are, so a schema-valid
# request may rightly get 404 or 422 (see CHECKS in the helper).


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz(
    local_aws: AwsClients, queue_url: str, store: SnapshotStore, mode: GenerationMode
) -> None:
    record(store, "fuzz-0001", "fleet_anomalies_daily", fleet_params())
    app = create_app(local_aws, TOKEN)
    operations = load_operations(app)
    assert {op.path for op in operations} == {
        "/v1/snapshots",
        "/v1/requests/{request_id}",
        "/v1/snapshots/{snapshot_id}",
        "/v1/reports",
        "/health",
    }
    statuses = fuzz_operations(
        operations,
        mode=mode,
        headers=AUTH,
        max_examples=EXAMPLES,
        skip_negative=("/health", "/v1/reports"),  # no parameters: nothing to get wrong
    )
    assert not any(code >= 500 for code in statuses), statuses
    assert any(code < 300 for code in statuses) or mode is GenerationMode.NEGATIVE, statuses
    # Whatever was accepted is on the queue, each a message the consumer can read.
    for message in drain(local_aws, queue_url):
        assert json.loads(message["Body"])["report"] in SHIPPED
        parse_request(message["Body"], message["MessageId"])


# --- the real server ---------------------------------------------------------------------------
def test_dp_snapshot_api_serves_from_the_profile(
    local_aws: AwsClients, queue_url: str, store: SnapshotStore
) -> None:
    """`dp snapshot-api` under uvicorn: create_app_from_env takes the token from the environment
    and the AWS clients from the local profile (the moto server), and never prints the token."""
    import os
    import subprocess
    import sys

    import httpx

    from services.moto import free_port, wait_for_http

    port = free_port()
    token = f"served-{uuid.uuid4().hex}"
    env = {**os.environ, "SNAPSHOT_API_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "snapshot-api", "--port", str(port), "--access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", timeout=60, proc=proc)
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        auth = {"Authorization": f"Bearer {token}"}
        sent = httpx.post(
            f"{base}/v1/snapshots",
            json={"report": "cdc_table_status", "params": {"since": datetime.now(UTC).isoformat()}},
            headers=auth,
        )
        assert sent.status_code == 202, sent.text
        poll = httpx.get(f"{base}{sent.json()['poll']}", headers=auth)
        assert poll.status_code == 404 and "sensor" in _error(poll)["message"]
        assert httpx.get(f"{base}/v1/reports", headers={"Authorization": "Bearer wrong"}).status_code == 401
        messages = drain(local_aws, queue_url)
        assert [parse_request(m["Body"], m["MessageId"]).request_id for m in messages] == [
            sent.json()["request_id"]
        ]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert token not in output
    assert "POST /v1/snapshots" in output  # the access log was on: the token would have shown here
