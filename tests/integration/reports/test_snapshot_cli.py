"""`dp snapshot` as a subprocess against SQS and DynamoDB on the moto server: a request is one
message on the queue, a bad one is refused before sending (exit 2), status prints the items the
sensor and the render write, and --wait follows a request to READY (0), FAILED (1) or a timeout (3).

Each test has its own queue and table (PLATFORM_SNAPSHOT_QUEUE / PLATFORM_SNAPSHOT_TABLE, passed to
the subprocess in its environment with the moto endpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from resources.aws import AwsClients
from services.aws_bootstrap import ensure_queue
from services.snapshots.catalog import load_reports
from services.snapshots.messages import REQUEST_ID, parse_request
from services.snapshots.store import SnapshotStore

from .test_snapshot_api import drain, fleet_params, make_failed, make_ready, record


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


def dp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # os.environ holds the test's PLATFORM_* settings and the moto endpoint (monkeypatched)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "snapshot", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_request_sends_one_message(local_aws: AwsClients, queue_url: str) -> None:
    params = fleet_params()
    request_id = f"cli-{uuid.uuid4().hex[:8]}"
    out = dp(
        "request",
        "fleet_anomalies_daily",
        "--param",
        f"start={params['start']}",
        "--param",
        f"end={params['end']}",
        "--request-id",
        request_id,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [request_id]
    messages = drain(local_aws, queue_url)
    assert len(messages) == 1
    parsed = parse_request(messages[0]["Body"], messages[0]["MessageId"])
    assert (parsed.request_id, parsed.report_id, parsed.params) == (
        request_id,
        "fleet_anomalies_daily",
        params,
    )

    # Without --request-id one is made and printed; parameters left out are not sent (defaults).
    out = dp("request", "migration_load_summary", "--param", f"since={datetime.now(UTC).isoformat()}")
    assert out.returncode == 0, out.stderr
    made = out.stdout.strip()
    assert REQUEST_ID.fullmatch(made), out.stdout
    messages = drain(local_aws, queue_url)
    assert len(messages) == 1
    parsed = parse_request(messages[0]["Body"], messages[0]["MessageId"])
    assert (parsed.request_id, sorted(parsed.params)) == (made, ["since"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fleet_anomalies_daily", "--param", "start=2026-13-01", "--param", "end=2026-11-24"], "'start'"),
        (["fleet_anomalies_daily", "--param", "end=2026-11-24"], "'start' is required"),
        (
            [
                "fleet_anomalies_daily",
                "--param",
                "start=2026-11-01",
                "--param",
                "end=2026-11-24",
                "--param",
                "min_quality=2",
            ],
            "'min_quality'",
        ),
        (["store_sales_windows", "--param", "day=2026-11-01", "--param", "shop=3"], "'shop'"),
        (["store_sales_windows", "--param", "day"], "NAME=VALUE"),
        (["store_sales_windows", "--param", "day=2026-11-01", "--request-id", "has space"], "--request-id"),
        (["fleet_anomalies_weekly"], "known reports"),
    ],
)
def test_bad_request_exits_2_naming_it_and_sends_nothing(
    local_aws: AwsClients, queue_url: str, args: list[str], words: str
) -> None:
    out = dp("request", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert words in out.stderr, out.stderr
    assert out.stdout == ""
    if words == "known reports":
        assert all(r in out.stderr for r in load_reports())
    assert drain(local_aws, queue_url) == []


def test_status_prints_ready_and_failed_items(store: SnapshotStore) -> None:
    ready_request = f"cli-{uuid.uuid4().hex[:8]}"
    sid = record(store, ready_request, "fleet_anomalies_daily", fleet_params())
    files = make_ready(store, sid, rows=12)

    out = dp("status", ready_request)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split() == ["state", "READY"] for line in lines), out.stdout
    assert any(line.split() == ["uri", f"s3://lake/snapshots/{sid}"] for line in lines), out.stdout
    for fmt, uri in files.items():
        assert any(line.split()[-2:] == [fmt, uri] for line in lines), out.stdout
    by_snapshot = dp("status", sid, "--json")
    assert by_snapshot.returncode == 0, by_snapshot.stderr
    item = json.loads(by_snapshot.stdout)
    assert (item["snapshot_id"], item["state"], item["rows"], item["files"]) == (sid, "READY", 12, files)

    failed_request = f"cli-{uuid.uuid4().hex[:8]}"
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    failed_sid = record(store, failed_request, "cdc_table_status", {"since": since})
    reason = f"Catalog Error: Table with name files_{uuid.uuid4().hex[:6]} does not exist"
    make_failed(store, failed_sid, reason)
    out = dp("status", failed_request)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split() == ["state", "FAILED"] for line in lines), out.stdout
    assert [line.split(None, 1)[1] for line in lines if line.split()[0] == "error"] == [reason], out.stdout

    unknown = dp("status", f"cli-{uuid.uuid4().hex[:8]}")
    assert unknown.returncode == 1 and "sensor" in unknown.stderr, unknown.stderr


def test_wait_follows_the_request_to_ready(
    local_aws: AwsClients, queue_url: str, store: SnapshotStore
) -> None:
    """The test plays the sensor and the render: it reads the CLI's message off the queue, records
    it and completes the snapshot while the CLI polls."""
    params = fleet_params()
    rendered: dict[str, object] = {}

    def sensor_and_render() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = drain(local_aws, queue_url)
            if got:
                request = parse_request(got[0]["Body"], got[0]["MessageId"])
                sid = record(store, request.request_id, request.report_id, request.params)
                time.sleep(1.0)  # the CLI sees REQUESTED first
                rendered["files"] = make_ready(store, sid, rows=5)
                rendered["sid"] = sid
                return

    worker = threading.Thread(target=sensor_and_render)
    worker.start()
    try:
        out = dp(
            "request",
            "fleet_anomalies_daily",
            "--param",
            f"start={params['start']}",
            "--param",
            f"end={params['end']}",
            "--wait",
            "--timeout",
            "60",
        )
    finally:
        worker.join(timeout=70)
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    assert REQUEST_ID.fullmatch(lines[0])
    assert lines[1] == f"READY {rendered['sid']}"
    assert sorted(lines[2:]) == sorted(f"{fmt:<4} {uri}" for fmt, uri in rendered["files"].items())  # type: ignore[attr-defined]
    assert "REQUESTED" in out.stderr and "READY" in out.stderr


def test_wait_exits_1_on_failed_and_3_on_timeout(
    local_aws: AwsClients, queue_url: str, store: SnapshotStore
) -> None:
    # Nobody reads the queue: the request is never recorded.
    started = time.monotonic()
    out = dp("request", "store_sales_windows", "--param", "day=2026-11-01", "--wait", "--timeout", "2")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "timed out after 2 s" in out.stderr and "not recorded yet" in out.stderr
    assert time.monotonic() - started < 60
    assert len(drain(local_aws, queue_url)) == 1  # it was sent

    # Recorded, then failed for good while the CLI waits.
    request_id = f"cli-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC).isoformat()
    reason = f"render produced a blank image ({uuid.uuid4().hex[:6]})"

    def fail_it() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not drain(local_aws, queue_url):
            pass
        make_failed(store, record(store, request_id, "cdc_table_status", {"since": since}), reason)

    worker = threading.Thread(target=fail_it)
    worker.start()
    try:
        out = dp(
            "request",
            "cdc_table_status",
            "--param",
            f"since={since}",
            "--request-id",
            request_id,
            "--wait",
            "--timeout",
            "60",
        )
    finally:
        worker.join(timeout=70)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout.splitlines()[0] == request_id
    assert reason in out.stdout.splitlines()[1]
