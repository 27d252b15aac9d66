"""The telemetry assets with materialize() on a local lake, real Spark (local mode, through Pipes)
and DynamoDB on the moto server; the lake sensor with build_sensor_context().

Expected figures are computed here from the raw rows the test writes, not by the job's code.
"""

from __future__ import annotations

import io
import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.telemetry.assets import PROCESSED, RAW, SCRIPT, SUMMARY, processed_and_summary, raw_readings
from assets.telemetry.device_state import device_latest_state
from assets.telemetry.partitions import HOURLY
from assets.telemetry.sensors import raw_listing_sensor
from resources import settings
from resources.lake import LakePartition, LocalLake, S3Lake
from resources.lake.paths import STAGING_ROOT
from resources.spark import EmrServerlessSparkRunner, LocalSparkRunner
from resources.warehouse import DuckDBWarehouse
from services.telemetry_api.sink import parquet_bytes, raw_key

LATE_AFTER = timedelta(minutes=5)


def _hour_start(hours_ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)


def _rows(
    hour: datetime, rng: random.Random, batch: str, devices: int = 4, per_device: int = 30
) -> list[dict]:
    """Readings of one hour with late arrivals, a fault (null temperature) and one hot reading."""
    rows = []
    for d in range(devices):
        for i in range(per_device):
            ts = hour + timedelta(seconds=i * 100 + d)
            late = i % 10 == 3
            received = ts + (timedelta(minutes=70) if late else timedelta(seconds=2))
            temperature = None if i == 7 else round(20 + d + rng.gauss(0, 0.5), 3)
            if d == 0 and i == 11:
                temperature = 97.5  # outside the physical range of the sensor: an anomaly
            rows.append(
                {
                    "device_id": f"dev-{d}",
                    "timestamp": ts,
                    "temperature": temperature,
                    "humidity": 40.0,
                    "pressure": 1012.0,
                    "latitude": 37.5,
                    "longitude": 127.0,
                    "metadata_version": "1",
                    "metadata_source": "test",
                    "received_at": received,
                    "batch_id": batch,
                }
            )
    return rows


def _expected(rows: list[dict], hour: datetime) -> dict[str, dict[str, Any]]:
    """Per device: dedup keeping the earliest arrival, then the summary's figures."""
    kept: dict[tuple[str, datetime], dict] = {}
    arrivals: dict[str, int] = defaultdict(int)
    for row in rows:
        if not hour <= row["timestamp"] < hour + timedelta(hours=1):
            continue
        arrivals[row["device_id"]] += 1
        key = (row["device_id"], row["timestamp"])
        if key not in kept or row["received_at"] < kept[key]["received_at"]:
            kept[key] = row
    out: dict[str, dict[str, Any]] = {}
    for device in arrivals:
        mine = [r for (d, _), r in kept.items() if d == device]
        temps = [r["temperature"] for r in mine if r["temperature"] is not None]
        out[device] = {
            "record_count": len(mine),
            "duplicate_count": arrivals[device] - len(mine),
            "late_count": sum(r["received_at"] > hour + timedelta(hours=1) + LATE_AFTER for r in mine),
            "avg_temperature": statistics.fmean(temps),
            "max_temperature": max(temps),
            "anomaly_count": sum(not -40 <= t <= 85 for t in temps),
            "latest": max(r["timestamp"] for r in mine),
        }
    return out


@pytest.fixture
def resources(tmp_path, local_aws, monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("PLATFORM_TELEMETRY_DEVICE_TABLE", f"devices-{tmp_path.name}"[:60])
    return {
        "lake": LocalLake(root=str(tmp_path / "lake")),
        "warehouse": DuckDBWarehouse(path=str(tmp_path / "wh.duckdb")),
        "aws": local_aws,
        "spark": LocalSparkRunner(),
    }


def _summary(lake: LocalLake, hour: datetime) -> dict[str, dict[str, Any]]:
    keys = lake.parquet_keys("curated", "telemetry", "hourly_summary", hour_partition(hour))
    assert len(keys) == 1, keys
    return {r["device_id"]: r for r in pq.read_table(io.BytesIO(lake.get_bytes(keys[0]))).to_pylist()}


def hour_partition(hour: datetime) -> LakePartition:
    return LakePartition(hour.date(), hour.hour)


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_hour_through_raw_processed_summary_and_device_state(resources):
    lake, rng = resources["lake"], random.Random(11)
    hour = _hour_start(3)
    pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
    first = _rows(hour, rng, "b1")
    # The same readings again (a client's retry), arriving later: duplicates.
    retried = [dict(r, received_at=r["received_at"] + timedelta(minutes=1), batch_id="b2") for r in first[:9]]
    lake.put_bytes(raw_key(hour, "part-a.parquet"), parquet_bytes(first))
    lake.put_bytes(raw_key(hour, "part-b.parquet"), parquet_bytes(retried))

    result = dg.materialize(
        [raw_readings, processed_and_summary, device_latest_state], resources=resources, partition_key=pk
    )
    assert result.success
    raw_meta = _metadata(result, RAW)
    assert raw_meta["files"] == 2 and raw_meta["rows"] == len(first) + len(retried)

    expected = _expected(first + retried, hour)
    summary = _summary(lake, hour)
    assert set(summary) == set(expected)
    for device, want in expected.items():
        got = summary[device]
        for name in ("record_count", "duplicate_count", "late_count", "anomaly_count"):
            assert got[name] == want[name], (device, name, got[name], want[name])
        assert got["avg_temperature"] == pytest.approx(want["avg_temperature"], abs=1e-9)
        assert got["max_temperature"] == pytest.approx(want["max_temperature"], abs=1e-9)
        assert 0 < got["data_quality_score"] < 1  # faults, late readings: never a perfect score

    # Each partition's metadata counts its late and duplicate readings.
    for key in (PROCESSED, SUMMARY):
        meta = _metadata(result, key)
        assert meta["late_count"] == sum(e["late_count"] for e in expected.values())
        assert meta["duplicate_count"] == sum(e["duplicate_count"] for e in expected.values()) == len(retried)

    dynamodb = resources["aws"].client("dynamodb")
    table = settings.telemetry_device_table()
    items = {i["device_id"]["S"]: i for i in dynamodb.scan(TableName=table)["Items"]}
    assert set(items) == set(expected)
    for device, want in expected.items():
        assert items[device]["timestamp"]["S"].startswith(want["latest"].strftime("%Y-%m-%dT%H:%M:%S"))

    # An older hour processed afterwards never moves a device's state back in time.
    older = _hour_start(5)
    lake.put_bytes(raw_key(older, "part-a.parquet"), parquet_bytes(_rows(older, rng, "b0")))
    older_pk = HOURLY.get_partition_key_for_timestamp(older.timestamp())
    again = dg.materialize(
        [raw_readings, processed_and_summary, device_latest_state],
        resources=resources,
        partition_key=older_pk,
    )
    assert again.success
    state_meta = _metadata(again, device_latest_state.key)
    assert state_meta["kept_newer"] == len(expected) and state_meta["updated"] == 0
    after = {i["device_id"]["S"]: i for i in dynamodb.scan(TableName=table)["Items"]}
    assert {d: i["timestamp"] for d, i in after.items()} == {d: i["timestamp"] for d, i in items.items()}


def test_a_late_file_reprocesses_its_hour_and_replaces_the_output(resources):
    lake, rng = resources["lake"], random.Random(5)
    hour = _hour_start(2)
    pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
    rows = _rows(hour, rng, "b1", devices=2)
    lake.put_bytes(raw_key(hour, "part-a.parquet"), parquet_bytes(rows))
    assert dg.materialize(
        [raw_readings, processed_and_summary], resources=resources, partition_key=pk
    ).success
    before = _summary(lake, hour)

    # A device that was offline uploads its buffer an hour later: new readings in the old hour.
    late = [
        dict(r, device_id="dev-9", received_at=hour + timedelta(hours=2), batch_id="late")
        for r in _rows(hour, rng, "late", devices=1, per_device=12)
    ]
    lake.put_bytes(raw_key(hour, "part-z.parquet"), parquet_bytes(late))
    result = dg.materialize([raw_readings, processed_and_summary], resources=resources, partition_key=pk)
    assert result.success
    after = _summary(lake, hour)
    assert {d: after[d]["record_count"] for d in before} == {d: before[d]["record_count"] for d in before}
    assert after["dev-9"]["record_count"] == 12 and after["dev-9"]["late_count"] == 12
    # The hour holds one output file per tier, replaced, not added to.
    assert len(lake.parquet_keys("processed", "telemetry", "readings", hour_partition(hour))) == 1
    processed = lake.read_parquet("processed", "telemetry", "readings", hour_partition(hour))
    assert processed.num_rows == sum(r["record_count"] for r in after.values())
    assert _metadata(result, PROCESSED)["late_count"] == sum(r["late_count"] for r in after.values())


def test_the_lake_sensor_asks_for_each_hour_that_received_files(resources):
    lake, rng = resources["lake"], random.Random(3)
    hours = [_hour_start(1), _hour_start(4)]
    for hour in hours:
        lake.put_bytes(
            raw_key(hour, "part-a.parquet"), parquet_bytes(_rows(hour, rng, "s", devices=1, per_device=3))
        )
    future = _hour_start(-1)  # a device clock running ahead: the hour has not begun
    lake.put_bytes(raw_key(future, "part-a.parquet"), parquet_bytes(_rows(future, rng, "f", 1, 2)))

    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        result = raw_listing_sensor(context)
        keys = sorted(r.partition_key for r in result.run_requests)
        assert keys == sorted(HOURLY.get_partition_key_for_timestamp(h.timestamp()) for h in hours)
        assert all(r.asset_selection == [RAW] for r in result.run_requests)
        # The next tick claims nothing new; the claimed hours whose runs never started (no daemon
        # here) are asked for again under the same run keys, which Dagster runs once.
        again = raw_listing_sensor(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor)
        )
        assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in result.run_requests)


def test_staged_in_the_lake_the_hour_comes_out_the_same(resources):
    """A runner that stages in the lake (EMR Serverless, a cluster on other hosts) gives the job
    lake URIs of a staging prefix; Spark local reads them here and the hour's summary is the same."""
    lake, rng = resources["lake"], random.Random(17)
    hour = _hour_start(3)
    pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
    rows = _rows(hour, rng, "b1", devices=3)
    lake.put_bytes(raw_key(hour, "part-a.parquet"), parquet_bytes(rows))
    lake.put_bytes(raw_key(hour, "part-b.parquet"), parquet_bytes(rows[:7]))  # a client's retry
    assert dg.materialize([processed_and_summary], resources=resources, partition_key=pk).success
    local = _summary(lake, hour)

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [processed_and_summary],
            resources={**resources, "spark": LocalSparkRunner(stage_in_lake=True)},
            partition_key=pk,
            instance=instance,
        )
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    staged = lake.uri(f"{STAGING_ROOT}/telemetry-")
    assert any(m.startswith("processing telemetry hour") and staged in m for m in logs), logs
    assert _metadata(result, SUMMARY)["staged_in"] == "lake"
    in_lake = _summary(lake, hour)
    assert in_lake.keys() == local.keys()
    for device, row in local.items():
        for name, value in row.items():
            want = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
            assert in_lake[device][name] == want, (device, name)
    assert in_lake["dev-0"]["duplicate_count"] == 7
    assert lake.list_objects(f"{STAGING_ROOT}/") == []  # the staging prefix is removed


def test_emr_serverless_run_of_the_asset_stages_the_hour_in_s3(local_aws, s3_bucket):
    """EMR Serverless through the asset, against the moto server: the job is started with the S3
    URIs of a staging prefix holding the hour's raw files, its script is uploaded, Pipes' bootstrap
    rides in the request. moto never runs the job, so it reports nothing: the run fails saying so,
    publishes nothing and removes its staging prefix (kept in the versioned bucket's history)."""
    s3 = local_aws.client("s3")
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    lake = S3Lake(aws=local_aws, bucket=s3_bucket)
    rng, hour = random.Random(23), _hour_start(2)
    pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
    raw = {
        raw_key(hour, name): parquet_bytes(_rows(hour, rng, name, devices=2, per_device=5))
        for name in ("part-a.parquet", "part-b.parquet")
    }
    for key, body in raw.items():
        lake.put_bytes(key, body)
    emr = local_aws.client("emr-serverless")
    app_id = emr.create_application(name="telemetry", releaseLabel="emr-7.1.0", type="SPARK")["applicationId"]
    runner = EmrServerlessSparkRunner(
        aws=local_aws,
        application_id=app_id,
        execution_role_arn="arn:aws:iam::123456789012:role/emr-telemetry",
        scripts_s3_uri=f"s3://{s3_bucket}/jobs/",
        cloudwatch_log_group="/emr/telemetry",
        poll_interval=0.2,
    )

    result = dg.materialize(
        [processed_and_summary],
        resources={"lake": lake, "spark": runner},
        partition_key=pk,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    error = failure.step_failure_data.error
    assert error is not None
    assert "reported no materialization of telemetry/hourly_summary" in error.to_string()

    [listed] = emr.list_job_runs(applicationId=app_id)["jobRuns"]
    submit = emr.get_job_run(applicationId=app_id, jobRunId=listed["id"])["jobRun"]["jobDriver"][
        "sparkSubmit"
    ]
    argv = submit["entryPointArguments"]
    args = dict(zip(argv[::2], argv[1::2], strict=True))
    staging = f"s3://{s3_bucket}/{STAGING_ROOT}/telemetry-"
    assert args["--raw"].startswith(staging) and args["--raw"].endswith("/raw")
    for name in ("--baseline", "--processed-out", "--summary-out"):
        assert args[name].startswith(staging), (name, args[name])
    assert args["--hour"] == hour.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "spark.emr-serverless.driverEnv.DAGSTER_PIPES_CONTEXT=" in submit["sparkSubmitParameters"]
    script_key = submit["entryPoint"].removeprefix(f"s3://{s3_bucket}/")
    assert s3.get_object(Bucket=s3_bucket, Key=script_key)["Body"].read() == SCRIPT.read_bytes()

    # The job was given a copy of exactly the hour's raw files; the copies are gone now.
    raw_prefix = args["--raw"].removeprefix(f"s3://{s3_bucket}/") + "/"
    versions = s3.list_object_versions(Bucket=s3_bucket, Prefix=raw_prefix)
    staged = {
        v["Key"]: s3.get_object(Bucket=s3_bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        for v in versions.get("Versions", [])
    }
    assert sorted(staged.values()) == sorted(raw.values())
    assert len(versions.get("DeleteMarkers", [])) == len(raw)
    assert s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"{STAGING_ROOT}/").get("KeyCount") == 0
    assert lake.parquet_keys("curated", "telemetry", "hourly_summary", hour_partition(hour)) == []
