"""The snapshot state store against DynamoDB on the moto server: concurrent duplicate requests,
claim races, lease expiry and takeover, retries with backoff, rejected requests and reuse.

Each test has its own table; times are built from the clock at test time and passed as `now`.
"""

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pytest

from resources.aws import AwsClients
from services.snapshots.ids import canonical_params, canonical_versions, request_id_for_invalid, snapshot_id
from services.snapshots.store import (
    FAILED,
    READY,
    RENDERING,
    REQUESTED,
    LeaseLost,
    Snapshot,
    SnapshotStore,
)

T = TypeVar("T")
VERSIONS = {"fleet/anomalies_daily": "41"}
GRACE = 30.0


@pytest.fixture
def store(local_aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> SnapshotStore:
    monkeypatch.setenv("PLATFORM_SNAPSHOT_TABLE", f"test-snapshots-{uuid.uuid4().hex[:12]}")
    made = SnapshotStore.from_resources(local_aws, request_grace_seconds=GRACE)
    made.ensure_table()
    made.ensure_table()  # a second call finds it
    return made


def _request(store: SnapshotStore, request_id: str, day: date, now: datetime, versions=VERSIONS) -> Any:
    params = {"day": day}
    sid = snapshot_id("fleet_anomalies", params, versions)
    return store.record_request(
        request_id, sid, "fleet_anomalies", canonical_params(params), canonical_versions(versions), now
    )


def _items(store: SnapshotStore, kind: str) -> list[dict[str, Any]]:
    client, items, kwargs = store.client, [], {"TableName": store.table_name}
    while True:
        page = client.scan(**kwargs)
        items += [i for i in page["Items"] if i["kind"]["S"] == kind]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _all_at_once(n: int, call: Callable[[int], T]) -> list[T]:
    """call(0..n-1) from n threads released together, so the calls really overlap."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _ready(store: SnapshotStore, sid: str, owner: str, now: datetime) -> Snapshot:
    assert store.claim(sid, owner, 60, now).won
    return store.complete(sid, owner, f"s3://lake/snapshots/{sid}/chart.png",
                          {"png": f"s3://lake/snapshots/{sid}/chart.png", "csv": f"s3://lake/snapshots/{sid}/data.csv"},
                          "sha256:" + "ab" * 32, 17, 1.25, now)  # fmt: skip


def test_concurrent_duplicate_requests_create_each_snapshot_once(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    day = date(2026, 3, 1)
    outcomes = _all_at_once(50, lambda i: _request(store, f"client-{i}", day, now))
    assert sum(o.created for o in outcomes) == 1
    assert {o.snapshot_id for o in outcomes} == {outcomes[0].snapshot_id}
    assert {o.state for o in outcomes} == {REQUESTED}
    assert not any(o.duplicate for o in outcomes)  # 50 different requests for one snapshot
    assert len(_items(store, "snapshot")) == 1
    assert len(_items(store, "request")) == 50

    # 200 requests for 50 other snapshots, 4 requests each, shuffled over a thread pool; some
    # of them delivered twice (SQS is at-least-once).
    days = [date(2025, 1, 1) + timedelta(days=d) for d in range(50)]
    calls = [(f"r-{d}-{k}", day) for d, day in enumerate(days) for k in range(4)]
    calls += random.sample(calls, 20)
    random.shuffle(calls)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda c: _request(store, c[0], c[1], now), calls))
    created = Counter(o.snapshot_id for o in results if o.created)
    assert len(created) == 50 and set(created.values()) == {1}
    assert sum(o.duplicate for o in results) == 20
    snapshot_items = _items(store, "snapshot")
    assert len(snapshot_items) == 51
    assert {i["state"]["S"] for i in snapshot_items} == {REQUESTED}
    assert len(_items(store, "request")) == 50 + 200
    # A redelivered request reports the same snapshot as its first delivery.
    by_request: dict[str, set[str | None]] = {}
    for (request_id, _), outcome in zip(calls, results, strict=True):
        by_request.setdefault(request_id, set()).add(outcome.snapshot_id)
    assert all(len(s) == 1 for s in by_request.values())


def test_a_redelivered_request_stays_bound_to_its_first_snapshot(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    first = _request(store, "req-1", date(2026, 3, 1), now)
    # Upstream data changed before the message came back: it would map to another snapshot.
    again = _request(
        store, "req-1", date(2026, 3, 1), now + timedelta(minutes=1), {"fleet/anomalies_daily": "42"}
    )
    assert again.duplicate and not again.created
    assert again.snapshot_id == first.snapshot_id
    assert len(_items(store, "snapshot")) == 1  # no orphan snapshot for the second mapping
    # A new request under the new data renders a new snapshot.
    fresh = _request(store, "req-2", date(2026, 3, 1), now, {"fleet/anomalies_daily": "42"})
    assert fresh.created and fresh.snapshot_id != first.snapshot_id


def test_only_one_of_many_concurrent_claims_wins(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    sid = _request(store, "req", date(2026, 3, 1), now).snapshot_id
    claims = _all_at_once(30, lambda i: store.claim(sid, f"worker-{i}", 60, now))
    winners = [c for c in claims if c.won]
    assert len(winners) == 1
    assert Counter(c.reason for c in claims) == {"claimed": 1, "leased": 29}
    held = store.get(sid)
    assert held is not None and held.state == RENDERING and held.attempts == 1
    assert held.lease_owner == winners[0].snapshot.lease_owner  # type: ignore[union-attr]
    assert held.lease_until == now + timedelta(seconds=60)


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_refused(store: SnapshotStore) -> None:
    t0 = datetime.now(UTC)
    sid = _request(store, "req", date(2026, 3, 1), t0).snapshot_id
    assert store.claim(sid, "A", 30, t0).reason == "claimed"
    assert store.renew(sid, "A", 30, t0 + timedelta(seconds=10))  # lease now until t0+40s

    early = store.claim(sid, "B", 30, t0 + timedelta(seconds=35))
    assert early.reason == "leased" and not early.won and early.snapshot.lease_owner == "A"  # type: ignore[union-attr]
    assert store.due(t0 + timedelta(seconds=35)) == []  # A is alive: nothing to re-run

    after = t0 + timedelta(seconds=41)  # A died: its lease ran out
    assert [s.snapshot_id for s in store.due(after)] == [sid]
    taken = store.claim(sid, "B", 30, after)
    assert taken.reason == "taken_over" and taken.previous_owner == "A"
    assert taken.snapshot is not None and taken.snapshot.attempts == 2 and taken.snapshot.lease_owner == "B"

    # A wakes up late: it can neither complete, fail nor renew.
    with pytest.raises(
        LeaseLost, match=f"A does not hold the lease on snapshot {sid}: it is RENDERING leased by B"
    ):
        store.complete(sid, "A", "s3://x/a.png", {"png": "s3://x/a.png"}, "sha256:aa", 3, 1.0, after)
    with pytest.raises(LeaseLost):
        store.fail(sid, "A", "boom", after, max_attempts=5, backoff_base_seconds=1)
    assert not store.renew(sid, "A", 30, after)

    done_at = after + timedelta(seconds=5)
    files = {"png": f"s3://lake/snapshots/{sid}/chart.png", "pdf": f"s3://lake/snapshots/{sid}/report.pdf"}
    ready = store.complete(sid, "B", files["png"], files, "sha256:" + "cd" * 32, 42, 3.5, done_at)
    stored = store.get(sid)
    assert stored == ready
    assert stored.state == READY and stored.uri == files["png"] and stored.files == files
    assert stored.checksum == "sha256:" + "cd" * 32 and stored.rows == 42 and stored.render_seconds == 3.5
    assert stored.ready_at == done_at and stored.attempts == 2
    assert stored.lease_owner is None and stored.lease_until is None
    assert store.due(done_at + timedelta(days=1)) == []
    with pytest.raises(LeaseLost, match="it is READY"):  # B's double completion is refused too
        store.complete(sid, "B", files["png"], files, "sha256:ee", 1, 1.0, done_at)


def test_failures_retry_with_growing_backoff_then_stay_failed(store: SnapshotStore) -> None:
    t = datetime.now(UTC)
    sid = _request(store, "req", date(2026, 3, 1), t).snapshot_id
    base, max_attempts = 10.0, 4
    gaps = []
    for attempt in range(1, max_attempts):
        assert store.claim(sid, f"w{attempt}", 60, t).won
        state = store.fail(sid, f"w{attempt}", f"Binder Error: column x{attempt} not found", t,
                           max_attempts=max_attempts, backoff_base_seconds=base)  # fmt: skip
        assert state == REQUESTED
        held = store.get(sid)
        assert held is not None and held.state == REQUESTED and held.attempts == attempt
        assert held.last_error == f"Binder Error: column x{attempt} not found"
        assert held.retry_at is not None and held.lease_owner is None
        gaps.append((held.retry_at - t).total_seconds())
        # Not claimable and not due before retry_at; both at retry_at.
        before = held.retry_at - timedelta(microseconds=1)
        assert store.claim(sid, "early", 60, before).reason == "retry_later"
        assert store.due(before) == []
        assert [s.snapshot_id for s in store.due(held.retry_at)] == [sid]
        t = held.retry_at
    assert gaps == [base, 2 * base, 4 * base]  # doubling: base * 2**(attempts-1)

    assert store.claim(sid, "last", 60, t).won
    assert store.fail(sid, "last", "Binder Error: column x4 not found", t,
                      max_attempts=max_attempts, backoff_base_seconds=base) == FAILED  # fmt: skip
    failed = store.get(sid)
    assert failed is not None and failed.state == FAILED and failed.attempts == max_attempts
    assert failed.error == "Binder Error: column x4 not found" and failed.failed_at == t
    assert failed.retry_at is None and failed.lease_owner is None
    refused = store.claim(sid, "later", 60, t + timedelta(days=1))
    assert refused.reason == "failed" and not refused.won
    assert store.due(t + timedelta(days=1)) == []
    polled = store.get_request("req")
    assert polled is not None and polled["state"] == FAILED and "x4 not found" in polled["error"]


def test_a_worker_dying_on_every_attempt_ends_failed(store: SnapshotStore) -> None:
    t = datetime.now(UTC)
    sid = _request(store, "req", date(2026, 3, 1), t).snapshot_id
    assert store.claim(sid, "A", 10, t, max_attempts=2).reason == "claimed"
    t += timedelta(seconds=11)
    assert store.claim(sid, "B", 10, t, max_attempts=2).reason == "taken_over"
    t += timedelta(seconds=11)
    ended = store.claim(sid, "C", 10, t, max_attempts=2)
    assert ended.reason == "abandoned" and not ended.won
    stored = store.get(sid)
    assert stored == ended.snapshot
    assert stored is not None and stored.state == FAILED and stored.attempts == 2
    assert stored.error is not None and stored.error.startswith("abandoned after 2 attempts")
    assert "(B)" in stored.error
    assert store.due(t + timedelta(days=1)) == []


def test_due_lists_fresh_requests_only_after_the_grace_period(store: SnapshotStore) -> None:
    t = datetime.now(UTC)
    sid = _request(store, "req", date(2026, 3, 1), t).snapshot_id
    other = _request(store, "req-2", date(2026, 3, 2), t + timedelta(seconds=1)).snapshot_id
    assert store.due(t + timedelta(seconds=GRACE - 1)) == []  # its first run was just requested
    assert [s.snapshot_id for s in store.due(t + timedelta(seconds=GRACE + 5))] == [sid, other]
    assert store.claim(sid, "A", 120, t + timedelta(seconds=GRACE + 5)).won
    assert [s.snapshot_id for s in store.due(t + timedelta(seconds=GRACE + 6))] == [other]


def test_rejected_requests_are_failed_items_with_the_reason(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    body = '{"report_id": "fleet_anomalies", "params": '
    request_id = request_id_for_invalid(body)
    assert store.reject_request(request_id, None, "malformed JSON: Expecting value at char 44", now)
    # Redelivered: the first answer stands, nothing is added.
    assert not store.reject_request(request_id, None, "another reason", now + timedelta(minutes=1))
    polled = store.get_request(request_id)
    assert polled is not None
    assert polled["state"] == FAILED and polled["error"] == "malformed JSON: Expecting value at char 44"
    assert polled["snapshot_id"] is None and polled["received_at"] == now.isoformat().replace("+00:00", "Z")

    assert store.reject_request("client-7", "no_such_report", "unknown report 'no_such_report'", now)
    polled = store.get_request("client-7")
    assert polled is not None and polled["report_id"] == "no_such_report" and polled["state"] == FAILED
    # A valid-looking redelivery of a rejected request keeps its answer and creates nothing.
    again = _request(store, "client-7", date(2026, 3, 1), now)
    assert again.duplicate and again.snapshot is None and again.state == FAILED and not again.created
    assert _items(store, "snapshot") == []
    assert len(_items(store, "request")) == 2
    assert store.get_request("never-sent") is None


def test_a_ready_snapshot_is_reused_and_not_claimable(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    first = _request(store, "req-1", date(2026, 3, 1), now)
    assert first.created and not first.reuse
    sid = first.snapshot_id
    assert sid is not None
    ready = _ready(store, sid, "A", now)

    later = now + timedelta(minutes=5)
    second = _request(store, "req-2", date(2026, 3, 1), later)
    assert not second.created and second.state == READY and second.reuse
    assert second.snapshot == ready
    refused = store.claim(sid, "B", 60, later)
    assert refused.reason == "ready" and not refused.won and refused.snapshot == ready
    polled = store.get_request("req-2")
    assert polled is not None
    assert polled["state"] == READY and polled["snapshot_id"] == sid and polled["uri"] == ready.uri
    assert polled["files"] == ready.files and polled["params"] == {"day": "2026-03-01"}
    assert polled["received_at"] == later.isoformat().replace("+00:00", "Z")
    assert store.get(sid) == ready


def test_bad_arguments_are_refused_with_what_was_wrong(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    sid = snapshot_id("fleet_anomalies", {"day": date(2026, 3, 1)}, VERSIONS)
    params, versions = canonical_params({"day": date(2026, 3, 1)}), canonical_versions(VERSIONS)
    with pytest.raises(ValueError, match="'request#x' is not a snapshot id"):
        store.record_request("r", "request#x", "fleet_anomalies", params, versions, now)
    with pytest.raises(ValueError, match="params_json is not valid JSON"):
        store.record_request("r", sid, "fleet_anomalies", "{day:", versions, now)
    with pytest.raises(ValueError, match="request_id must be a non-empty string"):
        store.record_request("", sid, "fleet_anomalies", params, versions, now)
    with pytest.raises(ValueError, match="must be timezone-aware"):
        store.record_request("r", sid, "fleet_anomalies", params, versions, datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="is not a snapshot id"):
        store.get("../../etc/passwd")
    assert store.get(sid) is None
    assert store.claim(sid, "A", 60, now).reason == "missing"
    store.record_request("r", sid, "fleet_anomalies", params, versions, now)
    assert store.claim(sid, "A", 60, now).won
    with pytest.raises(ValueError, match="files must map each output format to its URI"):
        store.complete(sid, "A", "s3://x/a.png", {}, "sha256:aa", 3, 1.0, now)
    with pytest.raises(ValueError, match="rows must be a non-negative int, not -1"):
        store.complete(sid, "A", "s3://x/a.png", {"png": "s3://x/a.png"}, "sha256:aa", -1, 1.0, now)
    assert store.get(sid).state == RENDERING  # type: ignore[union-attr]


def test_a_redelivery_creates_the_snapshot_a_crashed_first_delivery_did_not(store: SnapshotStore) -> None:
    now = datetime.now(UTC)
    first = _request(store, "req", date(2026, 3, 1), now)
    # What a writer killed between the request's write and the snapshot's leaves behind.
    store.client.delete_item(TableName=store.table_name, Key={"snapshot_id": {"S": first.snapshot_id}})
    polled = store.get_request("req")
    assert polled is not None and polled["state"] == REQUESTED and polled["snapshot_id"] == first.snapshot_id
    again = _request(store, "req", date(2026, 3, 1), now + timedelta(seconds=30))
    assert again.duplicate and again.created and again.snapshot_id == first.snapshot_id
    assert again.state == REQUESTED and len(_items(store, "snapshot")) == 1
