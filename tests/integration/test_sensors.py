"""The sensor building blocks on real local services: a moto server (S3 with event
notifications to SQS), a local-directory lake, a DuckDB ledger and a Dagster instance.

Runs are made the way the daemon makes them: `materialize()` with the request's run
key, partition and assets, on the same instance the sensor looks at. Each asset
applies the files of its partition that the ledger has not seen and records them.
"""

import json
import time
from datetime import date

import dagster as dg
import pyarrow as pa
import pytest

from assets.shared.routes import BucketRoute, LakeRoute, day_of
from assets.shared.sensors import RUN_KEY_TAG, lake_objects_sensor, s3_event_sensor
from resources.lake import LakePartition, LakeStorage, S3Lake, Tier
from resources.ledger import FileLedger, FileRef
from resources.warehouse import DuckDBWarehouse, Warehouse
from services.aws_bootstrap import ensure_bucket_notifications, ensure_queue

DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01")
DAY = LakePartition(date(2026, 11, 23), 7)
TABLES = [f"t{i:02d}" for i in range(40)]


def _table_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(key=["cdc", table], partitions_def=DAILY)
    def _asset(context: dg.AssetExecutionContext, lake: LakeStorage, warehouse: Warehouse) -> None:
        prefix = f"landing/feeds/{table}/"
        day = LakePartition.from_key(context.partition_key, DAILY)
        refs = [
            FileRef(o.key, lake.etag(o))
            for o in lake.list_objects(prefix)
            if o.key.startswith(f"{prefix}{day.path}/")
        ]
        ledger = FileLedger(warehouse)
        pending = ledger.pending(context.asset_key.to_user_string(), refs)
        ledger.record(context.asset_key.to_user_string(), pending, run_id=context.run.run_id)

    return _asset


ASSETS = [_table_asset(t) for t in TABLES]
ROUTES = [LakeRoute.for_asset(a, Tier.LANDING, "feeds", t) for a, t in zip(ASSETS, TABLES, strict=True)]
TARGETS = [a.key.to_user_string() for a in ASSETS]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def warehouse(tmp_path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))


@pytest.fixture
def notified_lake(local_aws, s3_bucket):
    queue = f"{s3_bucket}-events"
    ensure_bucket_notifications(local_aws, s3_bucket, queue, prefix="landing/")
    sqs = local_aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    _drain_test_events(sqs, url)
    return S3Lake(aws=local_aws, bucket=s3_bucket), queue, sqs, url


def _drain_test_events(sqs, url):
    """S3 sends an s3:TestEvent when notifications are configured; take it off the queue."""
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        if "s3:TestEvent" in message["Body"]:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _write(lake: LakeStorage, table: str, value: int = 1) -> str:
    return lake.write_parquet(pa.table({"x": [value]}), Tier.LANDING, "feeds", table, DAY)


def _tick(sensor, instance, cursor=None, **resources):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def _requests(result) -> list[dg.RunRequest]:
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


def _launch(requests, instance, lake, warehouse) -> None:
    """What the daemon does with a tick's run requests."""
    for request in requests:
        outcome = dg.materialize(
            ASSETS,
            selection=request.asset_selection,
            partition_key=request.partition_key,
            instance=instance,
            tags={RUN_KEY_TAG: request.run_key, **request.tags},
            resources={"lake": lake, "warehouse": warehouse},
        )
        assert outcome.success


def _queued(sqs, url, expected: int) -> int:
    """Visible plus in-flight messages, read until they add up to `expected` (for up to 5 s): with a
    1 s visibility timeout moto can count a message turning visible in neither attribute."""
    deadline = time.monotonic() + 5
    while True:
        total = sum(_queue_counts(sqs, url))
        if total == expected or time.monotonic() > deadline:
            return total
        time.sleep(0.1)


def _queue_counts(sqs, url) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _applied(warehouse, lake) -> dict[str, set[str]]:
    ledger = FileLedger(warehouse)
    found = {}
    for table, target in zip(TABLES, TARGETS, strict=True):
        refs = [FileRef(o.key, lake.etag(o)) for o in lake.list_objects(f"landing/feeds/{table}/")]
        found[target] = ledger.applied(target, refs)
    return found


def test_forty_tables_with_new_files_in_one_tick_give_one_run(local_aws, notified_lake, instance, warehouse):
    lake, queue, sqs, url = notified_lake
    events = s3_event_sensor("cdc_events", ROUTES, queue_name=lambda: queue, visibility_timeout=1)
    keys = [_write(lake, t) for t in TABLES]

    first = _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse))
    assert len(first) == 1
    assert sorted(k.to_user_string() for k in first[0].asset_selection) == sorted(TARGETS)
    assert first[0].partition_key == "2026-11-23"
    assert first[0].tags["lake/objects"] == "40"
    # Not deleted in the tick that asked for the run: the run does not exist yet.
    assert _queued(sqs, url, 40) == 40

    _launch(first, instance, lake, warehouse)
    time.sleep(1.2)  # the messages come back after their visibility timeout
    second = _tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)
    assert _requests(second) == []
    assert _queue_counts(sqs, url) == (0, 0)  # now deleted: their run exists
    applied = _applied(warehouse, lake)
    assert sum(len(v) for v in applied.values()) == 40
    assert {k for v in applied.values() for k in v} == {
        f"{k}@{lake.etag(o)}" for k, o in _objects(lake, keys)
    }


def _objects(lake, keys):
    listed = {o.key: o for o in lake.list_objects("landing/")}
    return [(k, listed[k]) for k in keys]


def test_listing_and_event_sensors_together_request_each_object_once(
    local_aws, notified_lake, instance, warehouse
):
    lake, queue, sqs, url = notified_lake
    events = s3_event_sensor("cdc_events", ROUTES, queue_name=lambda: queue, visibility_timeout=1)
    listing = lake_objects_sensor("cdc_listing", ROUTES, prefix="landing/feeds/")
    requested: list[dg.RunRequest] = []
    listing_cursor = None

    for round_ in range(3):
        # New files each round; the two sensors tick in alternating order, as two daemon threads would.
        for table in TABLES[round_ * 10 : round_ * 10 + 12]:
            _write(lake, table, round_)
        order = ["events", "listing"] if round_ % 2 == 0 else ["listing", "events"]
        for name in order:
            if name == "events":
                result = _tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)
            else:
                result = _tick(listing, instance, listing_cursor, lake=lake, warehouse=warehouse)
                listing_cursor = result.cursor
            new = _requests(result)
            requested += new
            _launch(new, instance, lake, warehouse)
        time.sleep(1.2)

    final_events = _tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)
    final_listing = _tick(listing, instance, listing_cursor, lake=lake, warehouse=warehouse)
    assert _requests(final_events) == [] and _requests(final_listing) == []

    files = lake.list_objects("landing/feeds/")
    assert len(files) == 36
    assert sum(int(r.tags["lake/objects"]) for r in requested) == len(files)  # each object requested once
    assert len({r.run_key for r in requested}) == len(requested)
    assert sum(len(v) for v in _applied(warehouse, lake).values()) == len(files)
    assert _queue_counts(sqs, url) == (0, 0)


def test_daemon_killed_before_the_runs_exist_loses_no_file(local_aws, notified_lake, instance, warehouse):
    lake, queue, sqs, url = notified_lake
    events = s3_event_sensor("cdc_events", ROUTES, queue_name=lambda: queue, visibility_timeout=1)
    for table in TABLES[:5]:
        _write(lake, table)

    decided = _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse))
    assert len(decided) == 1
    # The daemon dies here: the tick's requests never become runs. Nothing was deleted.
    assert _queued(sqs, url, 5) == 5

    time.sleep(1.2)
    again = _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse))
    assert [(r.run_key, r.partition_key, sorted(map(str, r.asset_selection))) for r in again] == [
        (decided[0].run_key, decided[0].partition_key, sorted(map(str, decided[0].asset_selection)))
    ]
    _launch(again, instance, lake, warehouse)

    time.sleep(1.2)
    assert _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)) == []
    assert _queue_counts(sqs, url) == (0, 0)
    assert sum(len(v) for v in _applied(warehouse, lake).values()) == 5


def test_listing_sensor_re_requests_a_run_that_never_appeared(local_lake, instance, warehouse):
    listing = lake_objects_sensor("cdc_listing", ROUTES, prefix="landing/feeds/")
    for table in TABLES[:3]:
        _write(local_lake, table)
    first = _tick(listing, instance, lake=local_lake, warehouse=warehouse)
    assert len(_requests(first)) == 1
    # Lost: the cursor moved past the files, but their claim has no run.
    second = _tick(listing, instance, first.cursor, lake=local_lake, warehouse=warehouse)
    assert [r.run_key for r in _requests(second)] == [_requests(first)[0].run_key]
    _launch(_requests(second), instance, local_lake, warehouse)
    third = _tick(listing, instance, second.cursor, lake=local_lake, warehouse=warehouse)
    assert _requests(third) == []
    assert sum(len(v) for v in _applied(warehouse, local_lake).values()) == 3


def test_listing_backstop_requests_files_the_ledger_never_saw(local_lake, instance, warehouse):
    listing = lake_objects_sensor("cdc_listing", ROUTES, prefix="landing/feeds/", reconcile_every_seconds=0)
    _write(local_lake, "t00")
    first = _tick(listing, instance, lake=local_lake, warehouse=warehouse)
    _launch(_requests(first), instance, local_lake, warehouse)
    # A file whose notification and listing were both missed: the cursor is already past its time.
    state = json.loads(first.cursor)
    state["listing"] = {"last_modified": "2999-01-01T00:00:00+00:00", "keys": []}
    missed = _write(local_lake, "t01")
    second = _tick(listing, instance, json.dumps(state), lake=local_lake, warehouse=warehouse)
    assert [(r.tags["lake/first_key"], r.tags["lake/objects"]) for r in _requests(second)] == [(missed, "1")]


def test_redelivered_event_requests_nothing(local_aws, notified_lake, instance, warehouse):
    lake, queue, sqs, url = notified_lake
    events = s3_event_sensor("cdc_events", ROUTES[:1], queue_name=lambda: queue, visibility_timeout=1)
    _write(lake, "t00")
    peeked = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=1)["Messages"]
    body = peeked[0]["Body"]
    first = _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse))
    _launch(first, instance, lake, warehouse)
    sqs.send_message(QueueUrl=url, MessageBody=body)  # SQS delivers the same event again
    time.sleep(1.2)
    assert _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)) == []
    assert _queue_counts(sqs, url) == (0, 0)


def _s3_event(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": "abc"}},
                }
            ]
        }
    )


def test_message_from_an_unrouted_bucket_stays_for_the_dead_letter_queue(
    local_aws, instance, warehouse, tmp_path
):
    from resources.lake import LocalLake

    queue = f"q-{tmp_path.name[-12:]}".replace("_", "-")
    url = ensure_queue(local_aws, queue)
    sqs = local_aws.client("sqs")
    dlq_url = sqs.get_queue_url(QueueName=f"{queue}-dlq")["QueueUrl"]
    lake = LocalLake(root=str(tmp_path / "lake"))
    events = s3_event_sensor("cdc_events", ROUTES, queue_name=lambda: queue, visibility_timeout=1)
    sqs.send_message(QueueUrl=url, MessageBody=_s3_event("someone-elses-bucket", "x/y.parquet"))
    sqs.send_message(QueueUrl=url, MessageBody="not an s3 event")

    for _ in range(7):  # beyond the redrive policy's maxReceiveCount (5)
        assert _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse)) == []
        time.sleep(1.1)
    assert _queue_counts(sqs, url) == (0, 0)
    dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"][:20] for m in dead) == sorted(
        [_s3_event("someone-elses-bucket", "x/y.parquet")[:20], "not an s3 event"]
    )


def test_routed_other_bucket_requests_its_asset(local_aws, notified_lake, instance, warehouse):
    lake, queue, sqs, url = notified_lake
    dms_bucket = f"{lake.bucket_name}-dms"
    route = BucketRoute(
        dms_bucket, "cdc/shop/", ASSETS[0].key, partition_key=lambda key: "2026-11-23", partitions_def=DAILY
    )
    events = s3_event_sensor(
        "cdc_events", ROUTES, queue_name=lambda: queue, bucket_routes=[route], visibility_timeout=1
    )
    sqs.send_message(QueueUrl=url, MessageBody=_s3_event(dms_bucket, "cdc/shop/orders/20261123-0700.parquet"))
    requests = _requests(_tick(events, instance, aws=local_aws, lake=lake, warehouse=warehouse))
    assert [(r.asset_selection, r.partition_key, r.tags["lake/first_key"]) for r in requests] == [
        ([ASSETS[0].key], "2026-11-23", f"s3://{dms_bucket}/cdc/shop/orders/20261123-0700.parquet")
    ]


def test_listing_groups_hourly_files_into_their_day_and_keys_are_deterministic(
    local_lake, instance, warehouse
):
    route = LakeRoute(ASSETS[0].key, Tier.LANDING, "feeds", "t00", partition_key=day_of)
    listing = lake_objects_sensor("cdc_listing", [route])
    for hour in (7, 8):
        local_lake.write_parquet(
            pa.table({"x": [1]}), Tier.LANDING, "feeds", "t00", LakePartition(date(2026, 11, 23), hour)
        )
    local_lake.put_bytes("landing/feeds/t00/not-a-partition/x.parquet", b"junk")  # breaks the conventions
    first = _requests(_tick(listing, instance, lake=local_lake, warehouse=warehouse))
    assert [(r.partition_key, r.tags["lake/objects"]) for r in first] == [("2026-11-23", "2")]
    other = DuckDBWarehouse(path=str(warehouse.database_path()) + ".2")
    assert [r.run_key for r in _requests(_tick(listing, instance, lake=local_lake, warehouse=other))] == [
        first[0].run_key
    ]
