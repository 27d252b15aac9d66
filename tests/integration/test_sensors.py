"""The two sensor building blocks on real local services (moto server, local directory)."""

import json
from datetime import date
from urllib.parse import unquote_plus

import dagster as dg
import pyarrow as pa
import pytest

from assets.shared.sensors import LakeRoute, day_of, lake_objects_sensor, s3_event_sensor
from resources.lake import LakePartition, S3Lake, Tier
from services.aws_bootstrap import ensure_bucket_notifications

HOURLY = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00")


@dg.asset(key=["demo", "events_hourly"], partitions_def=HOURLY)
def events_hourly() -> None: ...


@dg.asset(key=["demo", "events_daily"], partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
def events_daily() -> None: ...


def _tick(sensor, cursor, **resources):
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        return sensor(context)


@pytest.fixture
def notified_lake(local_aws, s3_bucket):
    queue = f"{s3_bucket}-events"
    ensure_bucket_notifications(local_aws, s3_bucket, queue, prefix="landing/")
    lake = S3Lake(aws=local_aws, bucket=s3_bucket)
    sqs = local_aws.client("sqs")
    return lake, queue, sqs, sqs.get_queue_url(QueueName=queue)["QueueUrl"]


def test_s3_event_on_sqs_requests_the_right_partition_once(local_aws, notified_lake):
    lake, queue, sqs, queue_url = notified_lake
    sensor = s3_event_sensor(
        "demo_events",
        [LakeRoute(events_daily.key, Tier.LANDING, "demo", "events", partition_key=day_of)],
        queue_name=lambda: queue,
    )
    key = lake.write_parquet(
        pa.table({"x": [1]}), Tier.LANDING, "demo", "events", LakePartition(date(2026, 11, 23), 7)
    )
    # Peek at the notification S3 delivered (beside S3's test event), to deliver it again later.
    peeked = sqs.receive_message(
        QueueUrl=queue_url, VisibilityTimeout=0, WaitTimeSeconds=1, MaxNumberOfMessages=10
    )["Messages"]
    delivered = next(m for m in peeked if "Records" in json.loads(m["Body"]))
    assert unquote_plus(json.loads(delivered["Body"])["Records"][0]["s3"]["object"]["key"]) == key

    first = _tick(sensor, None, aws=local_aws, lake=lake)
    assert isinstance(first, dg.SensorResult)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.asset_selection == [events_daily.key]
    assert request.partition_key == "2026-11-23"
    assert request.tags["lake/first_key"] == key
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)

    sqs.send_message(QueueUrl=queue_url, MessageBody=delivered["Body"])  # SQS redelivers the event
    second = _tick(sensor, first.cursor, aws=local_aws, lake=lake)
    assert isinstance(second, dg.SensorResult)
    assert second.run_requests == []
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)


def test_malformed_message_stays_for_the_dead_letter_queue(local_aws, notified_lake):
    lake, queue, sqs, queue_url = notified_lake
    sensor = s3_event_sensor(
        "demo_events",
        [LakeRoute(events_hourly.key, Tier.LANDING, "demo", "events")],
        queue_name=lambda: queue,
    )
    sqs.send_message(QueueUrl=queue_url, MessageBody="not an s3 event")
    key = lake.write_parquet(
        pa.table({"x": [1]}), Tier.LANDING, "demo", "events", LakePartition(date(2026, 11, 23), 9)
    )
    result = _tick(sensor, None, aws=local_aws, lake=lake)
    assert [(r.partition_key, r.tags["lake/first_key"]) for r in result.run_requests] == [
        ("2026-11-23-09:00", key)
    ]
    # Not deleted: in flight until its visibility timeout, then back, until the redrive policy moves it.
    counts = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "1"}


def test_listing_sensor_requests_each_partition_once(lake):
    sensor = lake_objects_sensor(
        "demo_listing", [LakeRoute(events_hourly.key, Tier.LANDING, "demo", "events")]
    )
    h7, h8 = LakePartition(date(2026, 11, 23), 7), LakePartition(date(2026, 11, 23), 8)
    for partition in (h7, h7, h8):
        lake.write_parquet(pa.table({"x": [1]}), Tier.LANDING, "demo", "events", partition)
    lake.put_bytes("landing/demo/events/not-a-partition/x.parquet", b"junk")  # breaks the conventions

    first = _tick(sensor, None, lake=lake)
    assert sorted((r.partition_key, r.tags["lake/objects"]) for r in first.run_requests) == [
        ("2026-11-23-07:00", "2"),
        ("2026-11-23-08:00", "1"),
    ]
    assert isinstance(_tick(sensor, first.cursor, lake=lake), dg.SkipReason)

    lake.write_parquet(pa.table({"x": [2]}), Tier.LANDING, "demo", "events", h8)
    third = _tick(sensor, first.cursor, lake=lake)
    assert [r.partition_key for r in third.run_requests] == ["2026-11-23-08:00"]
    assert third.run_requests[0].run_key != first.run_requests[1].run_key


def test_run_keys_are_deterministic(local_lake):
    sensor = lake_objects_sensor("demo_listing", [LakeRoute(events_hourly.key, Tier.LANDING, "demo")])
    local_lake.write_parquet(
        pa.table({"x": [1]}), Tier.LANDING, "demo", "events", LakePartition(date(2026, 11, 23), 7)
    )
    keys = [r.run_key for r in _tick(sensor, None, lake=local_lake).run_requests]
    again = [r.run_key for r in _tick(sensor, None, lake=local_lake).run_requests]
    assert keys == again and len(keys) == 1
