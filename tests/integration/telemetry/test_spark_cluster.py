"""The Spark runners: one Pipes job in local mode and on a standalone cluster started by
services.spark_cluster gives the same rows, and the asset gets the job's metadata and logs."""

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.aws import AwsClients
from resources.spark import (
    EmrServerlessSparkRunner,
    LocalSparkRunner,
    SparkJobRunner,
    StandaloneSparkRunner,
    spark_runner,
)
from services import spark_cluster
from tests.support.waiting import wait_for

JOB = Path(__file__).with_name("pipes_job.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[spark_cluster.SparkCluster]:
    var = tmp_path_factory.mktemp("spark_var")
    started = spark_cluster.start(var, cores=2, memory="2g")
    try:
        yield started
    finally:
        spark_cluster.stop(var)
        assert spark_cluster.status(var) is None


def _readings(directory: Path) -> dict[str, tuple[int, float | None]]:
    """Write 3 devices' readings (one null temperature) and return the expected summary."""
    directory.mkdir(parents=True)
    devices, temps = [], []
    for i in range(30):
        devices.append(f"truck-{i % 3}")
        temps.append(None if i == 4 else 20.0 + i * 0.5)
    for part in range(2):  # two files, as the raw tier has
        sl = slice(part * 15, part * 15 + 15)
        pq.write_table(
            pa.table({"device_id": devices[sl], "temperature": pa.array(temps[sl], pa.float64())}),
            directory / f"part-{part}.parquet",
        )
    expected: dict[str, tuple[int, float | None]] = {}
    for dev in sorted(set(devices)):
        vals = [t for d, t in zip(devices, temps, strict=True) if d == dev]
        known = [t for t in vals if t is not None]
        expected[dev] = (len(vals), round(sum(known) / len(known), 6))
    return expected


def _rows(directory: Path) -> list[tuple[Any, ...]]:
    table = pq.read_table(directory)
    return sorted(
        zip(
            *(table.column(c).to_pylist() for c in ("device_id", "record_count", "avg_temperature")),
            strict=True,
        )
    )


def _materialize(
    runner: SparkJobRunner, source: Path, out: Path
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    @dg.asset
    def device_summary(context: dg.AssetExecutionContext, spark: SparkJobRunner) -> dg.MaterializeResult:
        return spark.run(
            context, JOB, ["--input", str(source), "--output", str(out)]
        ).get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([device_summary], resources={"spark": runner}, instance=instance)
    return result, instance


def _check_run(
    result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance, master: str
) -> dict[str, Any]:
    assert result.success
    [mat] = result.asset_materializations_for_node("device_summary")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["rows_in"] == 30
    assert meta["devices"] == 3
    assert meta["spark_master"] == master
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("pipes_job: read 30 rows from" in m for m in messages), messages
    return meta


def test_same_rows_local_and_on_the_standalone_cluster(
    cluster: spark_cluster.SparkCluster, tmp_path: Path
) -> None:
    source = tmp_path / "readings"
    expected = _readings(source)

    local_out = tmp_path / "local_out"
    result, instance = _materialize(LocalSparkRunner(), source, local_out)
    _check_run(result, instance, "local[2]")
    local_rows = _rows(local_out)
    assert [(d, n) for d, n, _ in local_rows] == [(d, n) for d, (n, _) in expected.items()]
    for (_, _, avg), (_, want) in zip(local_rows, expected.values(), strict=True):
        assert want is not None and math.isclose(avg, want)

    cluster_out = tmp_path / "cluster_out"
    result, instance = _materialize(StandaloneSparkRunner(master_url=cluster.master_url), source, cluster_out)
    meta = _check_run(result, instance, cluster.master_url)
    assert _rows(cluster_out) == local_rows

    # It ran on the cluster: the master lists the application (by the id the job reported) as finished.
    def finished() -> dict[str, Any] | None:
        apps = cluster.master_json().get("completedapps", [])
        return next((a for a in apps if a["id"] == meta["spark_app_id"]), None)

    app = wait_for(finished, timeout=30, what="the application among the master's completed apps")
    assert app["state"] == "FINISHED"
    assert app["name"] == "pipes_job"
    assert cluster.alive_workers(), "the worker stays registered after the job"


def test_status_and_second_start(cluster: spark_cluster.SparkCluster) -> None:
    var = Path(cluster.directory).parent
    assert spark_cluster.status(var) == cluster
    assert (Path(cluster.directory) / "master.pid").read_text().strip() == str(cluster.master_pid)
    with pytest.raises(RuntimeError, match="already running"):
        spark_cluster.start(var)


def test_runner_chosen_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLATFORM_SPARK_MODE", raising=False)
    assert isinstance(spark_runner(), LocalSparkRunner)
    monkeypatch.setenv("PLATFORM_SPARK_MODE", "standalone")
    monkeypatch.setenv("PLATFORM_SPARK_MASTER", "spark://10.0.0.5:7077")
    runner = spark_runner()
    assert isinstance(runner, StandaloneSparkRunner) and runner.master_url == "spark://10.0.0.5:7077"
    monkeypatch.delenv("PLATFORM_SPARK_MASTER")
    with pytest.raises(RuntimeError, match="dp spark-cluster up"):
        spark_runner()  # no cluster recorded in this test's var dir
    monkeypatch.setenv("PLATFORM_SPARK_MODE", "emr-serverless")
    monkeypatch.setenv("PLATFORM_EMR_SERVERLESS_APP_ID", "00abc")
    with pytest.raises(RuntimeError, match="PLATFORM_EMR_SERVERLESS_ROLE_ARN, PLATFORM_SPARK_SCRIPTS_S3_URI"):
        spark_runner()
    monkeypatch.setenv("PLATFORM_SPARK_MODE", "yarn")
    with pytest.raises(ValueError, match="yarn"):
        spark_runner()


def test_emr_serverless_request(local_aws: AwsClients, s3_bucket: str) -> None:
    """The start_job_run request the runner hands PipesEMRServerlessClient (not run on AWS here);
    boto3 validates its shape and the moto server accepts it for an application it created."""
    import hashlib

    emr = local_aws.client("emr-serverless")
    app_id = emr.create_application(name="telemetry", releaseLabel="emr-7.1.0", type="SPARK")["applicationId"]
    runner = EmrServerlessSparkRunner(
        aws=local_aws,
        application_id=app_id,
        execution_role_arn="arn:aws:iam::123456789012:role/emr-telemetry",
        scripts_s3_uri=f"s3://{s3_bucket}/jobs/telemetry/",
        spark_submit_parameters="--conf spark.executor.cores=2",
        cloudwatch_log_group="/emr/telemetry",
    )
    digest = hashlib.sha256(Path(JOB).read_bytes()).hexdigest()[:12]
    uri = runner.upload_script(JOB)
    assert uri == f"s3://{s3_bucket}/jobs/telemetry/pipes_job-{digest}.py"
    uploaded = local_aws.client("s3").get_object(
        Bucket=s3_bucket, Key=f"jobs/telemetry/pipes_job-{digest}.py"
    )
    assert uploaded["Body"].read() == Path(JOB).read_bytes()
    params = runner.start_job_run_params(JOB, ["--hour", "2026-11-24T10:00:00Z"], name="r1-pipes_job")
    assert params == {
        "applicationId": app_id,
        "executionRoleArn": "arn:aws:iam::123456789012:role/emr-telemetry",
        "name": "r1-pipes_job",
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": uri,
                "entryPointArguments": ["--hour", "2026-11-24T10:00:00Z"],
                "sparkSubmitParameters": "--conf spark.executor.cores=2",
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {
                "cloudWatchLoggingConfiguration": {"enabled": True, "logGroupName": "/emr/telemetry"}
            }
        },
    }
    run = emr.start_job_run(clientToken="t1", **params)
    assert run["applicationId"] == app_id and run["jobRunId"]
    with pytest.raises(ValueError, match="s3://"):
        EmrServerlessSparkRunner(
            aws=local_aws, application_id=app_id, execution_role_arn="arn:x", scripts_s3_uri="/local/dir"
        ).entry_point(JOB)


def test_dp_spark_cluster_status(cluster: spark_cluster.SparkCluster) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PLATFORM_VAR_DIR": str(Path(cluster.directory).parent)}
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "spark-cluster", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"master {cluster.master_url} (ALIVE)" in out.stdout
    assert ": ALIVE, 2 cores, 2048 MB" in out.stdout


def test_telemetry_hour_same_summary_on_the_cluster_as_locally(
    cluster: spark_cluster.SparkCluster, tmp_path: Path, local_aws: AwsClients
) -> None:
    """The real processing asset (process_hour.py through Pipes) on both runners: equal hourly_summary."""
    import random

    from assets.telemetry.assets import SUMMARY, processed_and_summary, raw_readings
    from assets.telemetry.partitions import HOURLY
    from resources.lake import LocalLake
    from resources.warehouse import DuckDBWarehouse
    from services.telemetry_api.sink import parquet_bytes, raw_key
    from tests.integration.telemetry.test_assets import _hour_start, _metadata, hour_partition
    from tests.integration.telemetry.test_assets import _rows as hour_rows

    hour = _hour_start(2)
    pk = HOURLY.get_partition_key_for_timestamp(hour.timestamp())
    rows = hour_rows(hour, random.Random(21), "b1", devices=5, per_device=40)
    summaries, metadata = {}, {}
    apps_before = {a["id"] for a in cluster.master_json().get("completedapps", [])}
    for name, runner in (
        ("local", LocalSparkRunner()),
        ("cluster", StandaloneSparkRunner(master_url=cluster.master_url)),
    ):
        lake = LocalLake(root=str(tmp_path / name / "lake"))
        lake.put_bytes(raw_key(hour, "part-a.parquet"), parquet_bytes(rows))
        lake.put_bytes(raw_key(hour, "part-b.parquet"), parquet_bytes(rows[:25]))  # duplicates
        resources = {
            "lake": lake,
            "warehouse": DuckDBWarehouse(path=str(tmp_path / name / "wh.duckdb")),
            "spark": runner,
        }
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [raw_readings, processed_and_summary], resources=resources, partition_key=pk, instance=instance
        )
        assert result.success
        [key] = lake.parquet_keys("curated", "telemetry", "hourly_summary", hour_partition(hour))
        summaries[name] = pq.read_table(io.BytesIO(lake.get_bytes(key))).to_pylist()
        metadata[name] = _metadata(result, SUMMARY)
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("processing telemetry hour" in m for m in messages), "the job's Pipes log reached the run"

    # The cluster's run really ran there: the master lists one more finished telemetry application.
    def new_apps() -> list[dict[str, Any]] | None:
        apps = [a for a in cluster.master_json().get("completedapps", []) if a["id"] not in apps_before]
        return apps if apps and all(a.get("state") == "FINISHED" for a in apps) else None

    apps = wait_for(new_apps, timeout=30, what="the telemetry job among the master's completed apps")
    assert len(apps) == 1, apps
    assert len(summaries["local"]) == 5 and sum(r["duplicate_count"] for r in summaries["local"]) == 25
    assert len(summaries["cluster"]) == len(summaries["local"])
    for local, remote in zip(summaries["local"], summaries["cluster"], strict=True):
        assert local.keys() == remote.keys()
        for column, value in local.items():
            if isinstance(value, float):
                assert math.isclose(value, remote[column], rel_tol=1e-12, abs_tol=1e-9), column
            else:
                assert value == remote[column], column
    for name in ("rows_in", "rows_out", "late_count", "duplicate_count", "anomalies", "devices"):
        assert metadata["local"][name] == metadata["cluster"][name], name
